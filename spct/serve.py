"""`python -m spct.serve`: the GRM as an HTTP reward model for other trainers.

    python -m spct.serve model=PATH                            # http://127.0.0.1:8000
    python -m spct.serve model=PATH meta_rm=PATH port=9000 token=SECRET

Endpoints (docs/serving.md has the request and response shapes):
    POST /score        one query and n responses -> voted per-response rewards
    POST /batch_score  many of those in one call
    POST /openrlhf     OpenRLHF's `--remote_rm_url` contract: prompt+response strings -> [0, 1]
    GET  /health

The HTTP layer (`make_app`) only validates and reshapes; scoring goes through any object with
the `Scorer` interface, in production a `GRMScorer` over a `GRMRewardPool` and, optionally, a
meta RM actor. Every request is checked before it reaches the engines: a bad field costs a 4xx
naming it, never engine time, and an oversized body is refused before it is read.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import hydra
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from omegaconf import MISSING, DictConfig, OmegaConf
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from spct.config import ConfigError
from spct.data import Item
from spct.grm import build_prompt, load_template, pick_best, vote

log = logging.getLogger("spct.serve")

TOKEN_ENV = "SPCT_SERVE_TOKEN"
CONF_FILE = Path(__file__).resolve().parent.parent / "conf" / "serve.yaml"

# Text a policy's chat template leaves after a response (end-of-turn, eos and pad markers).
END_MARKERS = [
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "<eos>",
    "</s>",
    "<|pad|>",
]


@dataclass
class ServeConfig:
    """Every default of the reward server; conf/serve.yaml only composes it."""

    # The GRM: a local folder or a hub id. The meta RM (optional) enables MetaRM@k.
    model: str = MISSING
    meta_rm: str | None = None
    # Loopback by default: exposing the server is a decision, made with host=0.0.0.0.
    host: str = "127.0.0.1"
    port: int = 8000
    # Bearer token; null = the SPCT_SERVE_TOKEN environment variable, unset = no auth.
    token: str | None = None

    # Scoring: a request may set k (up to max_k), temperature and meta; these are the defaults.
    template: str = "default"
    default_k: int = 1
    max_k: int = 32
    temperature: float = 0.5
    k_meta: int | None = None  # samples the meta RM keeps; null = half of k (at least 1)
    seed: int = 0

    # Request limits.
    max_body_bytes: int = 8 * 2**20
    max_items: int = 256  # items per /batch_score, queries per /openrlhf
    max_responses: int = 16
    max_chars_per_text: int = 32_000
    # /openrlhf: stripped from the end of each response before scoring.
    end_markers: list[str] = field(default_factory=lambda: list(END_MARKERS))

    # GRM engines.
    num_engines: int = 1
    dtype: str = "bfloat16"
    max_model_len: int = 4096
    max_new_tokens: int = 1024
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    kv_cache_gib: float = 1.0  # CPU engines only
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    num_cpus_per_engine: float = 1.0

    # Meta RM actor.
    meta_rm_dtype: str = "bfloat16"
    meta_rm_max_length: int = 4096
    meta_rm_num_gpus: float = 0.0

    # Ray: null address = a fresh local cluster; "auto" joins a running one.
    ray_address: str | None = None
    num_cpus: int | None = None
    num_gpus: int = 0


def register_schema() -> None:
    """Make conf/serve.yaml, merged onto the schema, Hydra's primary config "serve".

    It goes through the config store rather than a config path: conf/ also holds the training
    config groups (model/, data/, ...), and composed from there `model=PATH` would select a
    group instead of setting the field.
    """
    from hydra.core.config_store import ConfigStore

    node = OmegaConf.merge(OmegaConf.structured(ServeConfig), OmegaConf.load(CONF_FILE))
    ConfigStore.instance().store(name="serve", node=node)


def to_serve_config(cfg: DictConfig | Mapping[str, Any]) -> ServeConfig:
    """Merge onto the schema (key and type checks), then check values and their relations."""
    merged = OmegaConf.merge(OmegaConf.structured(ServeConfig), cfg)
    config: ServeConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(config)
    return config


def validate(c: ServeConfig) -> None:
    errors = []

    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            errors.append(f"{key}: expected {expected}")

    need(bool(c.model), "model", "a local folder or hub id of a GRM")
    for key in ("model", "meta_rm"):
        path = getattr(c, key)
        if path and _looks_local(path):
            need(Path(path).expanduser().is_dir(), key, f"an existing folder, got {path!r}")
    need(0 <= c.port <= 65535, "port", f"0..65535, got {c.port}")
    need(c.max_k >= 1, "max_k", f">= 1, got {c.max_k}")
    need(1 <= c.default_k <= c.max_k, "default_k", f"1..max_k ({c.max_k}), got {c.default_k}")
    need(c.k_meta is None or c.k_meta >= 1, "k_meta", f"null or >= 1, got {c.k_meta}")
    need(math.isfinite(c.temperature) and c.temperature >= 0, "temperature", ">= 0")
    for key in (
        "max_body_bytes",
        "max_items",
        "max_responses",
        "max_chars_per_text",
        "num_engines",
        "max_model_len",
        "max_new_tokens",
        "tensor_parallel_size",
    ):
        need(getattr(c, key) >= 1, key, f">= 1, got {getattr(c, key)}")
    need(
        c.max_new_tokens < c.max_model_len,
        "max_new_tokens",
        f"below max_model_len ({c.max_model_len}), got {c.max_new_tokens}",
    )
    for key in ("dtype", "meta_rm_dtype"):
        need(
            getattr(c, key) in ("float32", "bfloat16", "float16"),
            key,
            f"float32, bfloat16 or float16, got {getattr(c, key)!r}",
        )
    need(c.meta_rm_num_gpus >= 0, "meta_rm_num_gpus", ">= 0")
    need(c.num_gpus >= 0, "num_gpus", ">= 0")
    try:
        load_template(c.template)
    except (OSError, ValueError) as e:
        errors.append(f"template: {e}")
    if errors:
        raise ConfigError("invalid serve configuration:\n  " + "\n  ".join(errors))


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or os.path.exists(name)


def app_options(c: ServeConfig) -> dict[str, Any]:
    """The keyword arguments of `make_app` that come from the configuration (not the token)."""
    keys = (
        "max_body_bytes",
        "max_items",
        "max_responses",
        "max_chars_per_text",
        "default_k",
        "max_k",
        "temperature",
        "k_meta",
        "end_markers",
    )
    return {key: getattr(c, key) for key in keys}


# ---------------------------------------------------------------------------- the scorer


class Scorer(Protocol):
    """What the HTTP layer needs from a reward model.

    `score` returns one dict per item: "rewards" (voted per-response totals, input order),
    "scores" (per sample: the parsed scores in input order, or None on a parse failure) and
    "meta_scores" (one per sample when the meta RM chose the samples, else None).
    `check` says why an item cannot be scored (e.g. its prompt overflows the context), or None.
    """

    model: str
    has_meta: bool
    low: int
    high: int

    def check(self, item: Item) -> str | None: ...

    def score(
        self, items: Sequence[Item], k: int, temperature: float, k_meta: int | None, use_meta: bool
    ) -> list[dict[str, Any]]: ...


class GRMScorer:
    """A `GRMRewardPool` behind the `Scorer` interface, with an optional MetaRM Ray actor.

    Prompts are measured with the GRM's own tokenizer and chat template before any engine sees
    them: one that leaves less than `max_new_tokens` of the context for the critique would be
    truncated into a parse failure (or refused by vLLM), so it is rejected with its size.
    """

    def __init__(
        self,
        pool: Any,
        model: str,
        max_model_len: int,
        meta_rm: Any = None,
        seed: int = 0,
        tokenizer: Any = None,
    ) -> None:
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model)
        self.pool, self.model, self.seed = pool, model, seed
        self.tokenizer = tokenizer
        self.meta_rm = meta_rm
        self.has_meta = meta_rm is not None
        self.low, self.high = pool.template.low, pool.template.high
        self.budget = max_model_len - pool.max_new_tokens
        self._max_model_len = max_model_len

    def prompt_tokens(self, item: Item) -> int:
        prompt = build_prompt(item, list(range(item.n)), template=self.pool.template)
        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return len(ids)

    def check(self, item: Item) -> str | None:
        n = self.prompt_tokens(item)
        if n <= self.budget:
            return None
        return (
            f"the GRM prompt is {n} tokens; at most {self.budget} fit (max_model_len "
            f"{self._max_model_len} minus max_new_tokens {self.pool.max_new_tokens})"
        )

    def score(
        self, items: Sequence[Item], k: int, temperature: float, k_meta: int | None, use_meta: bool
    ) -> list[dict[str, Any]]:
        if use_meta and not self.has_meta:
            raise ValueError("use_meta: no meta RM is loaded")
        meta_score = self._meta_score if use_meta else None
        results = self.pool.score(
            items, k, temperature, self.seed, k_meta if use_meta else None, meta_score
        )
        return [
            {
                "rewards": r["rewards"],
                "scores": [s["scores"] for s in r["samples"]],
                "meta_scores": [s["meta_score"] for s in r["samples"]] if use_meta else None,
            }
            for r in results
        ]

    def _meta_score(self, trajectories: list[dict[str, Any]]) -> list[float]:
        import ray

        return ray.get(self.meta_rm.score.remote(trajectories))

    def shutdown(self) -> None:
        self.pool.shutdown()
        if self.meta_rm is not None:
            import ray

            ray.kill(self.meta_rm)


def build_scorer(c: ServeConfig) -> GRMScorer:
    """Start Ray (unless running), the GRM engines and the meta RM actor."""
    import ray

    from spct.cluster import init_ray
    from spct.reward_pool import GRMRewardPool

    init_ray(c.ray_address, c.num_cpus, c.num_gpus)
    engine_kwargs = dict(
        dtype=c.dtype,
        max_model_len=c.max_model_len,
        seed=c.seed,
        tensor_parallel_size=c.tensor_parallel_size,
        gpu_memory_utilization=c.gpu_memory_utilization,
        kv_cache_gib=c.kv_cache_gib,
        enforce_eager=c.enforce_eager,
        enable_prefix_caching=c.enable_prefix_caching,
    )
    pool = GRMRewardPool(
        c.model,
        c.num_engines,
        engine_kwargs,
        template=c.template,
        max_new_tokens=c.max_new_tokens,
        num_cpus_per_engine=c.num_cpus_per_engine,
        num_gpus_per_engine=c.tensor_parallel_size if c.num_gpus else 0,
    )
    meta = None
    try:
        if c.meta_rm is not None:
            from spct.meta_rm import MetaRM

            meta = (
                ray.remote(MetaRM)
                .options(num_cpus=1, num_gpus=c.meta_rm_num_gpus)
                .remote(
                    model=c.meta_rm,
                    dtype=c.meta_rm_dtype,
                    max_length=c.meta_rm_max_length,
                    seed=c.seed,
                )
            )
            ray.get(meta.score.remote([]))  # a bad path fails here, not at the first request
        return GRMScorer(pool, c.model, c.max_model_len, meta_rm=meta, seed=c.seed)
    except BaseException:
        pool.shutdown()
        raise


# ---------------------------------------------------------------------------- requests


class RequestError(Exception):
    """A request the server refuses; becomes {"error": message, "field": field} with `status`."""

    def __init__(self, status: int, field_name: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field_name, message


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_items: int
    max_responses: int
    max_chars_per_text: int
    default_k: int
    max_k: int
    temperature: float
    k_meta: int | None


@dataclass
class ScoreJob:
    """One validated /score request."""

    item: Item
    k: int
    temperature: float
    meta: bool


SCORE_FIELDS = ("conversation", "query", "responses", "k", "temperature", "meta")
_ABSENT = object()


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _text(value: Any, name: str, limits: Limits, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RequestError(422, name, f"expected a string, got {_type_name(value)}")
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
    elif not (math.isfinite(temperature) and temperature >= 0):
        raise RequestError(422, prefix + "temperature", f"expected >= 0, got {temperature}")
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
    item = Item(conversation=conversation, responses=responses, rewards=[0.0] * len(responses))
    return ScoreJob(item, k, temperature, meta)


def parse_query_options(
    request: Request, limits: Limits, has_meta: bool
) -> tuple[int, float, bool]:
    """k, temperature and meta from the URL (OpenRLHF's client sends only the body it builds)."""
    params = request.query_params
    unknown = sorted(set(params) - {"k", "temperature", "meta"})
    if unknown:
        raise RequestError(422, unknown[0], "unknown URL parameter; expected k, temperature, meta")

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

    return parse_options(
        convert("k", int),
        convert("temperature", float),
        convert("meta", boolean),
        "",
        limits,
        has_meta,
    )


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


def counted(result: Mapping[str, Any]) -> tuple[float, float]:
    """(samples the vote counts, how many of them parsed): all k, or the k_meta the meta RM kept.

    `vote` itself makes the selection, over indicator scores, so the two cannot disagree.
    """
    scores, meta = result["scores"], result.get("meta_scores")
    kept = result.get("k_meta") if meta is not None else None
    slots = vote([[1.0]] * len(scores), 1, k_meta=kept, meta_scores=meta)[0]
    parsed = vote([None if s is None else [1.0] for s in scores], 1, k_meta=kept, meta_scores=meta)
    return slots, parsed[0]


def rescaled(result: Mapping[str, Any], low: int, high: int) -> float:
    """A pointwise vote on [0, 1]: each counted sample contributes (s - low) / (high - low) if it
    parsed and 0 if not, averaged over the counted samples."""
    slots, parsed = counted(result)
    return (float(result["rewards"][0]) - parsed * low) / (slots * (high - low))


def score_response(result: Mapping[str, Any], k: int) -> dict[str, Any]:
    """The JSON of one scored item. `best` is the first highest total, or null when no counted
    sample parsed (the totals are then all zero and say nothing)."""
    rewards = [float(r) for r in result["rewards"]]
    scores = [None if s is None else [float(x) for x in s] for s in result["scores"]]
    return {
        "rewards": rewards,
        "scores": scores,
        "best": pick_best(rewards) if counted(result)[1] > 0 else None,
        "k": k,
        "parse_failures": sum(s is None for s in scores),
        "meta_scores": result.get("meta_scores"),
    }


# ---------------------------------------------------------------------------- the app


def make_app(
    scorer: Scorer,
    *,
    token: str | None = None,
    max_body_bytes: int,
    max_responses: int,
    max_chars_per_text: int,
    default_k: int,
    max_k: int,
    max_items: int,
    temperature: float,
    k_meta: int | None,
    end_markers: Sequence[str],
) -> FastAPI:
    """The FastAPI app. With a `token`, every endpoint wants `Authorization: Bearer <token>`."""
    limits = Limits(
        max_body_bytes,
        max_items,
        max_responses,
        max_chars_per_text,
        default_k,
        max_k,
        temperature,
        k_meta,
    )
    secret = token.encode() if token else None
    markers = list(end_markers)
    # The schema pages would answer without the token; the endpoints are documented in docs/.
    app = FastAPI(title="spct reward server", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message, "field": exc.field}, exc.status, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "field": None}, exc.status_code, exc.headers)

    def authorize(request: Request) -> None:
        if secret is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise RequestError(401, "Authorization", "expected 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(value.strip().encode(), secret):
            raise RequestError(401, "Authorization", "wrong token")

    async def read_json(request: Request) -> Any:
        authorize(request)
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError(400, "Content-Length", f"not a byte count: {declared!r}")
            if int(declared) > limits.max_body_bytes:
                raise RequestError(
                    413, "body", f"{declared} bytes; the limit is {limits.max_body_bytes}"
                )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise RequestError(
                    413, "body", f"more than the limit of {limits.max_body_bytes} bytes"
                )
        try:
            return json.loads(bytes(body), parse_constant=_reject_constant)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
            raise RequestError(400, "body", f"malformed JSON: {e}") from None

    def checked(job: ScoreJob, field_name: str) -> ScoreJob:
        reason = scorer.check(job.item)
        if reason is not None:
            raise RequestError(413, field_name, reason)
        return job

    async def run(jobs: list[ScoreJob]) -> list[dict[str, Any]]:
        """Score jobs sharing (k, temperature, meta) in one call each; results in input order."""
        groups: dict[tuple[int, float, bool], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.k, job.temperature, job.meta), []).append(i)
        out: list[dict[str, Any]] = [{} for _ in jobs]
        for (k, temp, meta), members in groups.items():
            kept = min(limits.k_meta, k) if meta and limits.k_meta is not None else None
            try:
                results = await run_in_threadpool(
                    scorer.score, [jobs[i].item for i in members], k, temp, kept, meta
                )
            except Exception as e:
                log.exception("scoring failed")
                raise RequestError(500, None, f"scoring failed: {type(e).__name__}: {e}") from None
            for i, result in zip(members, results, strict=True):
                out[i] = dict(result, k_meta=kept)
        return out

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        authorize(request)
        return {
            "status": "ok",
            "model": scorer.model,
            "meta_rm": scorer.has_meta,
            "score_range": [scorer.low, scorer.high],
            "default_k": limits.default_k,
        }

    @app.post("/score")
    async def score(request: Request) -> dict[str, Any]:
        body = await read_json(request)
        job = checked(parse_score_request(body, "", limits, scorer.has_meta), "responses")
        (result,) = await run([job])
        return score_response(result, job.k)

    @app.post("/batch_score")
    async def batch_score(request: Request) -> dict[str, Any]:
        body = await read_json(request)
        if not isinstance(body, dict) or "items" not in body:
            raise RequestError(422, "items", 'missing: expected {"items": [score requests]}')
        extra = sorted(set(body) - {"items"})
        if extra:
            raise RequestError(422, extra[0], "unknown field; expected only 'items'")
        items = body["items"]
        if not isinstance(items, list) or not items:
            raise RequestError(422, "items", "expected a non-empty list of score requests")
        if len(items) > limits.max_items:
            raise RequestError(413, "items", f"{len(items)} items; the limit is {limits.max_items}")
        jobs = [
            checked(
                parse_score_request(it, f"items[{i}].", limits, scorer.has_meta),
                f"items[{i}].responses",
            )
            for i, it in enumerate(items)
        ]
        results = await run(jobs)
        return {"results": [score_response(r, j.k) for r, j in zip(results, jobs, strict=True)]}

    @app.post("/openrlhf")
    async def openrlhf(request: Request) -> dict[str, Any]:
        body = await read_json(request)
        k, temp, meta = parse_query_options(request, limits, scorer.has_meta)
        queries, prompts = _openrlhf_lists(body, limits)
        jobs: dict[int, ScoreJob] = {}
        unscored: dict[int, str] = {}
        for i, (query, prompt) in enumerate(zip(queries, prompts, strict=True)):
            response = response_of(query, prompt)
            if response is None:
                raise RequestError(
                    422, f"prompts[{i}]", f"query[{i}] does not contain prompts[{i}]"
                )
            response = strip_end_markers(response, markers)
            if not response:
                unscored[i] = "empty response"
            elif (
                len(response) > limits.max_chars_per_text or len(prompt) > limits.max_chars_per_text
            ):
                unscored[i] = f"a text over {limits.max_chars_per_text} characters"
            else:
                conversation = [{"role": "user", "content": prompt}]
                item = Item(conversation=conversation, responses=[response], rewards=[0.0])
                unscored_reason = scorer.check(item)
                if unscored_reason is None:
                    jobs[i] = ScoreJob(item, k, temp, meta)
                else:
                    unscored[i] = unscored_reason
        for i, reason in unscored.items():
            log.warning("/openrlhf: query %d gets reward 0 unscored: %s", i, reason)
        results = dict(zip(jobs, await run(list(jobs.values())), strict=True))
        rewards, failures = [], []
        for i in range(len(queries)):
            if i in results:
                rewards.append(rescaled(results[i], scorer.low, scorer.high))
                failures.append(float(sum(s is None for s in results[i]["scores"])))
            else:
                rewards.append(0.0)
                failures.append(0.0)
        unscored_flags = [1.0 if i in unscored else 0.0 for i in range(len(queries))]
        return {
            "rewards": rewards,
            "extra_logs": {"grm_parse_failures": failures, "grm_unscored": unscored_flags},
        }

    return app


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _openrlhf_lists(body: Any, limits: Limits) -> tuple[list[str], list[str]]:
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
                raise RequestError(
                    422, f"{name}[{i}]", f"expected a string, got {_type_name(text)}"
                )
        lists.append(value)
    queries, prompts = lists
    if len(queries) != len(prompts):
        raise RequestError(422, "prompts", f"{len(prompts)} prompts for {len(queries)} queries")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise RequestError(422, f"prompts[{i}]", "expected a non-empty string")
    return queries, prompts


# ---------------------------------------------------------------------------- serving


class _Server(uvicorn.Server):
    """uvicorn's server, telling where it listens once the socket is bound (port 0 included)."""

    @property
    def url(self) -> str:
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info("listening on %s", self.url)


class BackgroundServer:
    """Serve an app from a daemon thread: for tests, or a trainer embedding the reward server.

    `start()` returns the URL once the socket accepts connections; `stop()` (or leaving the
    `with` block) shuts uvicorn down and joins the thread.
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ) -> None:
        self.server = _Server(
            uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, name="spct-serve", daemon=True)

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread exited before listening (see its log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server did not start listening within {timeout} s")
            time.sleep(0.01)
        return self.server.url

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(c: ServeConfig) -> None:
    """Start the scorer and serve until interrupted."""
    token = c.token or os.environ.get(TOKEN_ENV) or None
    if token is None and not _is_loopback(c.host):
        log.warning(
            "listening on %s without a token: anyone who reaches it can use the GRM "
            "(set token=... or %s)",
            c.host,
            TOKEN_ENV,
        )
    scorer = build_scorer(c)
    # uvicorn re-raises the signal that stopped it; as an exception it lets the engines stop too.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        app = make_app(scorer, token=token, **app_options(c))
        _Server(uvicorn.Config(app, host=c.host, port=c.port, log_level="info")).run()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        scorer.shutdown()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


register_schema()


@hydra.main(config_path=None, config_name="serve", version_base=None)
def main(cfg: DictConfig) -> None:
    serve(to_serve_config(cfg))


if __name__ == "__main__":
    main()
