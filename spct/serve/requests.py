"""Request limits and validation: every field checked before a request reaches the engines,
each refusal a 4xx naming the field; and the shapes of the replies."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from spct.data import Item
from spct.grm import pick_best
from spct.grm.voting import counted, rescaled_vote
from spct.serve.batching import ScoreJob
from spct.serve.config import MAX_TEMPERATURE


class RequestError(Exception):
    """A request the server refuses; becomes {"error": message, "field": field} with `status`
    (and `headers`, e.g. Retry-After)."""

    def __init__(self, status: int, field_name: str | None, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.field, self.message, self.headers = status, field_name, message, headers


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_items: int
    max_responses: int
    max_chars_per_text: int
    default_k: int
    max_k: int
    temperature: float


SCORE_FIELDS = ("conversation", "query", "responses", "reference", "k", "temperature", "meta", "group",
                "group_size")
MAX_GROUP_ID = 256
_ABSENT = object()


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _unicode(value: str, name: str) -> str:
    """JSON may escape a lone surrogate (\\ud800); it is not text any tokenizer can take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(422, name, f"a lone surrogate at character {e.start} is not Unicode text") from None
    return value


def _text(value: Any, name: str, limits: Limits, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RequestError(422, name, f"expected a string, got {_type_name(value)}")
    _unicode(value, name)
    if not allow_empty and not value.strip():
        raise RequestError(422, name, "expected a non-empty string")
    if len(value) > limits.max_chars_per_text:
        raise RequestError(
            413, name, f"{len(value)} characters; the limit is {limits.max_chars_per_text}"
        )
    return value


def parse_options(
    k: Any, temperature: Any, meta: Any, prefix: str, limits: Limits, has_meta: bool
) -> tuple[int, float, bool]:
    """k, temperature and meta of a request, defaults filled in, each checked."""
    if k is _ABSENT or k is None:
        k = limits.default_k
    elif isinstance(k, bool) or not isinstance(k, int):
        raise RequestError(422, prefix + "k", f"expected an integer, got {_type_name(k)}")
    elif not 1 <= k <= limits.max_k:
        raise RequestError(422, prefix + "k", f"expected 1..{limits.max_k}, got {k}")
    if temperature is _ABSENT or temperature is None:
        temperature = limits.temperature
    elif isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise RequestError(
            422, prefix + "temperature", f"expected a number, got {_type_name(temperature)}"
        )
    elif not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
        raise RequestError(422, prefix + "temperature", f"expected 0..{MAX_TEMPERATURE:g}, got {temperature}")
    if meta is _ABSENT or meta is None:
        meta = has_meta
    elif not isinstance(meta, bool):
        raise RequestError(422, prefix + "meta", f"expected true or false, got {_type_name(meta)}")
    elif meta and not has_meta:
        raise RequestError(
            422, prefix + "meta", "no meta RM is loaded (start the server with meta_rm=PATH)"
        )
    return k, float(temperature), meta


def parse_conversation(value: Any, name: str, limits: Limits) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RequestError(422, name, "expected a non-empty list of {role, content}")
    turns = []
    for i, turn in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(turn, dict):
            raise RequestError(422, where, f"expected {{role, content}}, got {_type_name(turn)}")
        extra = sorted(set(turn) - {"role", "content"})
        if extra:
            raise RequestError(422, f"{where}.{extra[0]}", "unknown field; expected role, content")
        role = _text(turn.get("role"), f"{where}.role", limits)
        content = _text(turn.get("content"), f"{where}.content", limits, allow_empty=True)
        turns.append({"role": role, "content": content})
    return turns


def parse_score_request(body: Any, prefix: str, limits: Limits, has_meta: bool) -> ScoreJob:
    """Validate one /score request; `prefix` (e.g. "items[2].") goes before field names."""
    if not isinstance(body, dict):
        raise RequestError(
            422, prefix.rstrip(".") or "body", f"expected a JSON object, got {_type_name(body)}"
        )
    unknown = sorted(set(body) - set(SCORE_FIELDS))
    if unknown:
        raise RequestError(
            422, prefix + unknown[0], f"unknown field; expected {list(SCORE_FIELDS)}"
        )
    if "conversation" in body and "query" in body:
        raise RequestError(422, prefix + "query", "give either 'conversation' or 'query', not both")
    if "conversation" in body:
        conversation = parse_conversation(body["conversation"], prefix + "conversation", limits)
    elif "query" in body:
        conversation = [{"role": "user", "content": _text(body["query"], prefix + "query", limits)}]
    else:
        raise RequestError(
            422,
            prefix + "conversation",
            "missing: give 'conversation' (a list of {role, content}) or 'query' (a string)",
        )
    if "responses" not in body:
        raise RequestError(422, prefix + "responses", "missing: expected a list of strings")
    responses = body["responses"]
    if not isinstance(responses, list) or not responses:
        raise RequestError(422, prefix + "responses", "expected a non-empty list of strings")
    if len(responses) > limits.max_responses:
        raise RequestError(
            413,
            prefix + "responses",
            f"{len(responses)} responses; the limit is {limits.max_responses}",
        )
    responses = [_text(r, f"{prefix}responses[{i}]", limits) for i, r in enumerate(responses)]
    k, temperature, meta = parse_options(
        body.get("k", _ABSENT),
        body.get("temperature", _ABSENT),
        body.get("meta", _ABSENT),
        prefix,
        limits,
        has_meta,
    )
    group, group_size = parse_group(body.get("group"), body.get("group_size"), prefix, limits)
    # A reference answer the GRM judges against (the templates show it after the query).
    reference = body.get("reference")
    shown = {} if reference is None else {"reference": _text(reference, prefix + "reference", limits)}
    item = Item(conversation=conversation, responses=responses, rewards=[0.0] * len(responses), meta=shown)
    key = None if group is None else json.dumps([group, conversation, reference], ensure_ascii=False)
    return ScoreJob(item, k, temperature, meta, key, group_size)


def parse_group(group: Any, size: Any, prefix: str, limits: Limits) -> tuple[str | bool | None, int | None]:
    """`group` (true: with the requests of the same conversation; a string: of the same id and
    conversation) and `group_size` (the responses the group will have in all)."""
    if group is None or group is False:
        group = None
    elif isinstance(group, str):
        if not 0 < len(group) <= MAX_GROUP_ID:
            raise RequestError(422, prefix + "group", f"expected 1..{MAX_GROUP_ID} characters, got {len(group)}")
        _unicode(group, prefix + "group")
    elif group is not True:
        raise RequestError(422, prefix + "group", f"expected true, false or a group id string, got {_type_name(group)}")
    if size is None:
        return group, None
    if group is None:
        raise RequestError(422, prefix + "group_size", "only with 'group'")
    return group, _group_size(size, prefix + "group_size", limits)


def _group_size(size: Any, name: str, limits: Limits) -> int:
    most = limits.max_items * limits.max_responses
    if isinstance(size, bool) or not isinstance(size, int):
        raise RequestError(422, name, f"expected an integer, got {_type_name(size)}")
    if not 1 <= size <= most:
        raise RequestError(422, name, f"expected 1..{most}, got {size}")
    return size


@dataclass(frozen=True)
class QueryOptions:
    """The settings /openrlhf takes from its URL (OpenRLHF's client sends only the body it builds)."""

    k: int
    temperature: float
    meta: bool
    group: bool
    group_size: int | None


def parse_query_options(request: Request, limits: Limits, has_meta: bool, group: bool = False) -> QueryOptions:
    """k, temperature, meta, group and group_size from the URL; `group` is the default of group."""
    params = request.query_params
    names = ("k", "temperature", "meta", "group", "group_size")
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise RequestError(422, unknown[0], f"unknown URL parameter; expected {', '.join(names)}")

    def convert(name: str, cast: Callable[[str], Any]) -> Any:
        if name not in params:
            return _ABSENT
        try:
            return cast(params[name])
        except ValueError:
            raise RequestError(422, name, f"cannot read {params[name]!r}") from None

    def boolean(text: str) -> bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(text)

    k, temperature, meta = parse_options(
        convert("k", int),
        convert("temperature", float),
        convert("meta", boolean),
        "",
        limits,
        has_meta,
    )
    grouped = convert("group", boolean)
    size = convert("group_size", int)
    size = None if size is _ABSENT else _group_size(size, "group_size", limits)
    return QueryOptions(k, temperature, meta, group if grouped is _ABSENT else grouped, size)


def response_of(query: str, prompt: str) -> str | None:
    """What follows the prompt in an OpenRLHF query (prompt + response), or None.

    The prompt is searched for, not only matched as a prefix: decoding the policy's tokens may
    put a BOS marker in front that the prompt string lacks.
    """
    at = query.find(prompt)
    return None if at < 0 else query[at + len(prompt) :]


def strip_end_markers(text: str, markers: Sequence[str]) -> str:
    while True:
        text = text.rstrip()
        for marker in markers:
            if marker and text.endswith(marker):
                text = text[: -len(marker)]
                break
        else:
            return text


def score_response(result: Mapping[str, Any], k: int, low: float, high: float) -> dict[str, Any]:
    """The JSON of one scored item. `best` is the first highest total, or null when no counted
    sample parsed (the totals are then all zero and say nothing). `unit_rewards` are the totals
    on [0, 1] as /openrlhf returns them (`spct.grm.voting.rescaled_vote`). A grouped request's
    reply covers its own responses, with the size of the group they were judged in."""
    rewards = [float(r) for r in result["rewards"]]
    scores = [None if s is None else [float(x) for x in s] for s in result["scores"]]
    meta = result.get("meta_scores")
    kept = result.get("k_meta") if meta is not None else None
    return {
        "rewards": rewards,
        "unit_rewards": rescaled_vote(result["scores"], len(rewards), low, high, kept, meta),
        "scores": scores,
        "best": pick_best(rewards) if parsed(result) > 0 else None,
        "k": k,
        "parse_failures": sum(s is None for s in scores),
        "meta_scores": meta,
    } | ({"group_size": result["group_size"]} if "group_size" in result else {})


def parsed(result: Mapping[str, Any]) -> int:
    """How many of the samples the vote counts (all k, or the k_meta the meta RM kept) parsed."""
    meta = result.get("meta_scores")
    return counted(result["scores"], result.get("k_meta") if meta is not None else None, meta)[1]


def read_json_bytes(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise RequestError(400, "body", f"malformed JSON: {e}") from None
    except RecursionError:
        raise RequestError(400, "body", "JSON nested too deeply") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def openrlhf_lists(body: Any, limits: Limits) -> tuple[list[str], list[str]]:
    """`query` and `prompts` of an OpenRLHF request; other keys (labels, ...) are ignored."""
    if not isinstance(body, dict):
        raise RequestError(422, "body", f"expected a JSON object, got {_type_name(body)}")
    lists = []
    for name in ("query", "prompts"):
        if name not in body:
            raise RequestError(422, name, "missing: expected a list of strings")
        value = body[name]
        if not isinstance(value, list):
            raise RequestError(422, name, f"expected a list of strings, got {_type_name(value)}")
        if len(value) > limits.max_items:
            raise RequestError(413, name, f"{len(value)} entries; the limit is {limits.max_items}")
        for i, text in enumerate(value):
            if not isinstance(text, str):
                raise RequestError(422, f"{name}[{i}]", f"expected a string, got {_type_name(text)}")
            _unicode(text, f"{name}[{i}]")
        lists.append(value)
    queries, prompts = lists
    if len(queries) != len(prompts):
        raise RequestError(422, "prompts", f"{len(prompts)} prompts for {len(queries)} queries")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise RequestError(422, f"prompts[{i}]", "expected a non-empty string")
    return queries, prompts


class OpenRLHFBatch:
    """One /openrlhf request: a scoring job per query, and the rewards of their results.

    Per-response mode (the default) makes one GRM item per response (n = 1). In group mode every
    response joins the group of its prompt string, which the server's batcher judges in one GRM
    prompt (n = the group, SPCT's native pointwise mode) together with the same prompt's
    responses from other requests that arrive in time (`spct.serve.batching`). A response that
    cannot be scored (empty, over the size limit, or a GRM prompt too long for the context) gets
    reward 0 and is flagged in `grm_unscored`; in group mode it is left out of its group. Each
    reward is the response's vote rescaled to [0, 1] (`spct.grm.voting.rescaled_vote`).
    """

    def __init__(self, queries: Sequence[str], prompts: Sequence[str], markers: Sequence[str], limits: Limits,
                 options: QueryOptions) -> None:
        self.n = len(queries)
        self.rewards = [0.0] * self.n
        self.failures = [0.0] * self.n
        self.unscored: dict[int, str] = {}
        self.jobs: list[tuple[int, ScoreJob]] = []
        o = options
        for i, (query, prompt) in enumerate(zip(queries, prompts, strict=True)):
            response = response_of(query, prompt)
            if response is None:
                raise RequestError(422, f"prompts[{i}]", f"query[{i}] does not contain prompts[{i}]")
            response = strip_end_markers(response, markers)
            if not response:
                self.unscored[i] = "empty response"
            elif len(response) > limits.max_chars_per_text or len(prompt) > limits.max_chars_per_text:
                self.unscored[i] = f"a text over {limits.max_chars_per_text} characters"
            else:
                item = Item([{"role": "user", "content": prompt}], [response], [0.0])
                group = json.dumps(["openrlhf", prompt]) if o.group else None
                self.jobs.append((i, ScoreJob(item, o.k, o.temperature, o.meta, group, o.group_size)))

    def unscore(self, i: int, reason: str) -> None:
        self.unscored[i] = reason

    def reward(self, i: int, result: Mapping[str, Any], low: float, high: float) -> None:
        meta = result.get("meta_scores")
        kept = result.get("k_meta") if meta is not None else None
        (self.rewards[i],) = rescaled_vote(result["scores"], 1, low, high, kept, meta)
        self.failures[i] = float(sum(s is None for s in result["scores"]))

    def reply(self) -> dict[str, Any]:
        flags = [1.0 if i in self.unscored else 0.0 for i in range(self.n)]
        return {"rewards": self.rewards,
                "extra_logs": {"grm_parse_failures": self.failures, "grm_unscored": flags}}
