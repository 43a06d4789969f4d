"""A TRL `reward_funcs` entry backed by the spct GRM.

    from spct.integrations.trl import GRMReward
    reward = GRMReward("http://127.0.0.1:8000", num_generations=8)   # a running spct.serve
    trainer = GRPOTrainer(model=..., reward_funcs=reward, args=GRPOConfig(num_generations=8, ...), ...)

TRL hands a reward function each process's share of a generation batch, the completions of a
prompt side by side (its RepeatSampler). `GRMReward` judges each such run of one prompt's
completions together, in one GRM prompt, as SPCT's pointwise GRM is trained to: every response
gets its own score, on [0, 1] (the server's `unit_rewards`). With `num_generations`, a run cut
short at the edge of a process's share is sent as part of its group, and the server judges it
with the rest of the group when that arrives from the other process (docs/serving.md,
"Groups"). Runs are sent concurrently; the server coalesces them into engine batches.

`scorer=` instead of a URL scores in this process (a `spct.serve.GRMScorer` over a reward pool),
without HTTP. An empty completion, or a group the GRM's context cannot hold, gets
`failure_reward`; other server errors stop the step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from spct.client import Client, ServerError

log = logging.getLogger(__name__)


def as_conversation(prompt: Any) -> list[dict[str, str]]:
    """TRL's prompt, standard (a string) or conversational (a list of messages)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": text_of(m["content"])} for m in prompt]


def text_of(completion: Any) -> str:
    """TRL's completion: a string, or the assistant messages of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):  # content parts ([{"type": "text", "text": ...}]) or messages
        return "".join(text_of(part.get("content", part.get("text", ""))) for part in completion)
    return str(completion)


def runs(prompts: Sequence[Any]) -> list[range]:
    """Maximal runs of equal consecutive prompts."""
    out: list[range] = []
    start = 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or prompts[i] != prompts[start]:
            out.append(range(start, i))
            start = i
    return out


class GRMReward:
    """Callable as TRL calls reward functions: `(prompts, completions, **kwargs) -> list[float]`."""

    def __init__(self, url: str | None = None, *, scorer: Any = None, k: int | None = None,
                 temperature: float | None = None, meta: bool | None = None, num_generations: int | None = None,
                 token: str | None = None, timeout: float = 600.0, failure_reward: float = 0.0,
                 name: str = "spct_grm") -> None:
        if (url is None) == (scorer is None):
            raise ValueError("GRMReward: give either url (a running spct.serve) or scorer (in this process)")
        self.scorer = scorer
        self.client = Client(url, token=token, timeout=timeout) if url is not None else None
        self.k, self.temperature, self.meta = k, temperature, meta
        self.num_generations, self.failure_reward = num_generations, failure_reward
        self.__name__ = name  # TRL logs rewards/<name>/mean
        self._limits: dict[str, Any] | None = None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        texts = [text_of(c).strip() for c in completions]
        rewards = [self.failure_reward] * len(texts)
        work = []  # (conversation, indices of the responses, partial group?)
        for run in runs(prompts):
            members = [i for i in run if texts[i]]
            if members:
                partial = self.num_generations is not None and len(run) < self.num_generations
                work.append((as_conversation(prompts[run.start]), members, partial))
        replies = self._remote(work, texts) if self.client is not None else self._local(work, texts)
        failures = drawn = 0
        for (_, members, _), reply in zip(work, replies, strict=True):
            if reply is None:
                continue
            for i, r in zip(members, reply["unit_rewards"], strict=True):
                rewards[i] = float(r)
            failures += reply["parse_failures"]
            drawn += len(reply["scores"])
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and drawn:
            log_metric(f"{self.__name__}/parse_failure_rate", failures / drawn)
        return rewards

    def _remote(self, work: list, texts: list[str]) -> list[dict[str, Any] | None]:
        if self._limits is None:
            self._limits = self.client.health()
        most = self._limits["max_responses"]
        requests = []  # (index in work, the part's responses, conversation, grouped?, group size)
        for w, (conversation, members, partial) in enumerate(work):
            parts = [members[at : at + most] for at in range(0, len(members), most)]
            grouped = partial or len(parts) > 1  # the server joins the parts (and the other halves)
            size = self.num_generations if partial else len(members)
            requests += [(w, part, conversation, grouped, size) for part in parts]

        def send(request: tuple) -> dict[str, Any] | None:
            _, part, conversation, grouped, size = request
            try:
                return self.client.score(conversation=conversation, responses=[texts[i] for i in part], k=self.k,
                                         temperature=self.temperature, meta=self.meta,
                                         group=True if grouped else None, group_size=size if grouped else None)
            except ServerError as e:
                if e.status != 413:
                    raise
                log.warning("%s: a group gets %s unscored: %s", self.__name__, self.failure_reward, e.message)
                return None

        if not requests:
            return []
        # All at once: a group's parts must reach the server together to be judged as one.
        with ThreadPoolExecutor(min(len(requests), 64)) as pool:
            answers = list(pool.map(send, requests))
        replies: list[dict[str, Any] | None] = []
        for w in range(len(work)):
            parts = [a for (i, *_), a in zip(requests, answers, strict=True) if i == w]
            if any(a is None for a in parts):
                replies.append(None)
                continue
            replies.append({"unit_rewards": [r for a in parts for r in a["unit_rewards"]],
                            "parse_failures": sum(a["parse_failures"] for a in parts),
                            "scores": [s for a in parts for s in a["scores"]]})
        return replies

    def _local(self, work: list, texts: list[str]) -> list[dict[str, Any] | None]:
        """Score in this process, replies shaped as the server's (`score_response`), with the
        server's defaults for what was not given."""
        from spct.item import Item
        from spct.serve.config import ServeConfig
        from spct.serve.requests import score_response

        items, at = [], []
        for conversation, members, _ in work:
            item = Item(conversation, [texts[i] for i in members], [0.0] * len(members))
            reason = self.scorer.check(item)
            if reason is None:
                at.append(len(items))
                items.append(item)
            else:
                log.warning("%s: a group gets %s unscored: %s", self.__name__, self.failure_reward, reason)
                at.append(None)
        defaults = ServeConfig()
        k = self.k or defaults.default_k
        temperature = defaults.temperature if self.temperature is None else self.temperature
        meta = self.scorer.has_meta if self.meta is None else self.meta
        results = self.scorer.score(items, k, temperature, None, meta) if items else []
        return [None if j is None else score_response(results[j], k, self.scorer.low, self.scorer.high) for j in at]
