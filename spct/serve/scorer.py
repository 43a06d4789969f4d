"""The scorer behind the HTTP layer: a GRM reward pool and an optional meta RM actor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from spct.chat import chat_prompt_ids
from spct.config import engine_kwargs
from spct.data import Item
from spct.grm import build_prompt, vote
from spct.serve.batching import content_id
from spct.serve.config import ServeConfig


class Scorer(Protocol):
    """What the HTTP layer needs from a reward model.

    `score` returns one dict per item: "rewards" (voted per-response totals, input order),
    "scores" (per sample: the parsed scores in input order, or None on a parse failure) and
    "meta_scores" (one per sample when the meta RM chose the samples, else None).
    `check` says why an item cannot be scored (e.g. its prompt overflows the context), or None.
    `health` (optional) lists what cannot score now, e.g. a dead engine; `recover` (optional)
    restarts it after a request failed on it.
    """

    model: str
    has_meta: bool
    template: str  # the GRM prompt template's name (a built-in) or file
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
        start_meta_rm: Callable[[], Any] | None = None,
        max_restarts: int = 3,
    ) -> None:
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model)
        self.pool, self.model, self.seed = pool, model, seed
        self.tokenizer = tokenizer
        self.meta_rm, self.start_meta_rm = meta_rm, start_meta_rm
        self.restarts_left = max_restarts
        self.has_meta = meta_rm is not None
        self.template = pool.template.name
        self.low, self.high = pool.template.low, pool.template.high
        self.budget = max_model_len - pool.max_new_tokens
        self._max_model_len = max_model_len

    def prompt_tokens(self, item: Item) -> int:
        prompt = build_prompt(item, list(range(item.n)), template=self.pool.template)
        return len(chat_prompt_ids(self.tokenizer, prompt))

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
        # Seeds keyed by content: an item scores the same whatever else shares its batch.
        items = [it if it.id is not None else replace(it, id=content_id(it)) for it in items]
        k_meta = k_meta if use_meta else None
        sampled = self.pool.sample(items, k, temperature, self.seed, keyed=True, meta_score=meta_score)
        out = []
        for item, samples in zip(items, sampled, strict=True):
            scores = [t.scores for t in samples]
            meta = [t.meta_score for t in samples] if use_meta else None
            out.append({"rewards": vote(scores, item.n, k_meta=k_meta, meta_scores=meta), "scores": scores,
                        "meta_scores": meta})
        return out

    def health(self) -> list[str]:
        """What cannot score: each engine or the meta RM whose actor has died (a busy one, which
        answers after its current call, is alive)."""
        return [f"{name} has stopped" for name, _ in self._dead()]

    def recover(self) -> list[str]:
        """Restart every engine (and the meta RM, when built by `build_scorer`) whose actor has
        died, at most `max_restarts` times in the server's life; returns what was restarted.
        Raises when one cannot be restarted."""
        import ray

        dead = self._dead()
        if dead and self.restarts_left <= 0:
            raise RuntimeError(f"{', '.join(name for name, _ in dead)} stopped again after the last allowed restart")
        self.restarts_left -= bool(dead)
        for _, which in dead:
            if which == "meta":
                if self.start_meta_rm is None:
                    raise RuntimeError("the meta RM has stopped and this scorer cannot restart it")
                self.meta_rm = self.start_meta_rm()
                ray.get(self.meta_rm.score.remote([]))
            else:
                self.pool.group.restart(which)
        return [name for name, _ in dead]

    def _dead(self) -> list[tuple[str, int | str]]:
        import ray

        actors: list[tuple[str, int | str, Any]] = [(f"GRM engine {i}", i, e)
                                                    for i, e in enumerate(self.pool.group.engines)]
        actors += [("meta RM", "meta", self.meta_rm)] if self.meta_rm is not None else []
        probes = [a.__ray_ready__.remote() for _, _, a in actors]
        done, _ = ray.wait(probes, num_returns=len(probes), timeout=2.0)
        dead = []
        for (name, which, _), probe in zip(actors, probes, strict=True):
            if probe in done:
                try:
                    ray.get(probe)
                except ray.exceptions.RayError:
                    dead.append((name, which))
        return dead

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

    init_ray(c.cluster.address, c.cluster.num_cpus, c.cluster.num_gpus)
    m, r = c.model, c.rollout
    pool = GRMRewardPool.start(
        m.path,
        r.num_engines,
        engine_kwargs(m, r, c.seed),
        template=m.template,
        max_new_tokens=m.max_new_tokens,
        num_cpus_per_engine=r.num_cpus_per_engine,
        num_gpus_per_engine=c.cluster.gpus(r.tensor_parallel_size),
        wait=False,  # the meta RM loads while the engines start
        with_reference=True,  # a request's `reference`, when it has one
    )

    def start_meta_rm() -> Any:
        from spct.meta_rm import MetaRM

        return (ray.remote(MetaRM).options(num_cpus=1, num_gpus=c.cluster.gpus(1))
                .remote(model=c.meta_rm.path, dtype=c.meta_rm.dtype, max_length=c.meta_rm.max_length, seed=c.seed,
                         input_template=c.meta_rm.input_template))

    meta = None
    try:
        if c.meta_rm.path is not None:
            meta = start_meta_rm()
        pool.group.ready()
        if meta is not None:
            ray.get(meta.score.remote([]))  # a bad path fails here, not at the first request
        return GRMScorer(pool, m.path, m.max_model_len, meta_rm=meta, seed=c.seed,
                         start_meta_rm=start_meta_rm if meta is not None else None, max_restarts=c.max_restarts)
    except BaseException:
        pool.shutdown()
        if meta is not None:
            ray.kill(meta)
        raise
