"""The GRM reward pool: vLLM engines serving a frozen GRM, scoring items by voting.

`score(items, k, temperature)` shows each item's responses in a fresh random order for every
one of its k samples, parses each sample's scores, maps them back to the input order and sums
them (Voting@k; with a meta RM, only the top k_meta samples count). It is the engine behind
RFT sampling from a teacher, evaluation and the HTTP reward endpoint.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from spct.grm import build_prompt, load_template, random_order, vote
from spct.grm.trajectory import Shown, read
from spct.item import Item
from spct.rollout import RolloutGroup, seed_of


class GRMRewardPool:
    def __init__(
        self,
        model: str,
        num_engines: int = 1,
        engine_kwargs: dict[str, Any] | None = None,
        template: str = "default",
        max_new_tokens: int = 1024,
        num_cpus_per_engine: float = 1,
        num_gpus_per_engine: float = 0,
        placement_group=None,
        wait: bool = True,
        with_reference: bool = False,
        on_shutdown: Callable[[], None] | None = None,
        colocated: bool = False,
    ) -> None:
        """`wait=False`: return while the engines start (`self.group.ready()` waits);
        `with_reference`: prompts show an item's reference answer (meta.reference) when it has one;
        `on_shutdown` is called once its engines are stopped; `colocated`: its engines share
        learner GPUs (spct.rollout.RolloutGroup)."""
        self.template = load_template(template)
        self.with_reference = with_reference
        self.max_new_tokens = max_new_tokens
        self.group = RolloutGroup(
            model,
            num_engines,
            engine_kwargs,
            num_cpus_per_engine=num_cpus_per_engine,
            num_gpus_per_engine=num_gpus_per_engine,
            placement_group=placement_group,
            name="reward_pool",
            on_shutdown=on_shutdown,
            colocated=colocated,
            wait=wait,
        )

    def sample(self, items: Sequence[Item], k: int, *args: Any, **kwargs: Any) -> list[list[dict[str, Any]]]:
        """k samples per item: `submit` with the same arguments, waited for."""
        return self.submit(items, k, *args, **kwargs)()

    def submit(
        self,
        items: Sequence[Item],
        k: int,
        temperature: float = 0.5,
        seed: int | str = 0,
        stream: str = "pool",
        keyed: bool = False,
    ) -> Callable[[], list[list[dict[str, Any]]]]:
        """Start sampling and return at once; calling the result waits for the k samples per
        item: {order, prompt, text, scores (input order, None on a parse failure)}.

        Each sample shows the responses in a fresh random order, drawn from a generator seeded
        by (seed, stream, item); another `stream` gives other orders (e.g. the greedy sample's).
        Never the order as given: loaders often put the labelled-best response first.
        `keyed` (every item has an id): sample j of an item also draws its tokens with a seed
        from (seed, stream, id, j), so an item's samples do not depend on what else is in the
        batch (the reward server's coalesced batches); else from (seed, stream, position).
        """
        if k < 1:
            raise ValueError(f"k: expected >= 1, got {k}")
        scale = (self.template.low, self.template.high)
        shown = []
        for i, item in enumerate(items):
            rng = random.Random(f"{seed}:{stream}:{item.id if item.id is not None else i}")
            for _ in range(k):
                order = random_order(item.n, rng)
                prompt = build_prompt(item, order, template=self.template, with_reference=self.with_reference)
                shown.append(Shown(item, order, prompt, scale, choice=self.template.choice))
        sampling = dict(n=1, temperature=temperature, max_tokens=self.max_new_tokens)
        seeds: str | list[int] = f"{seed}:{stream}"
        if keyed:
            if any(item.id is None for item in items):
                raise ValueError("keyed: every item needs an id")
            seeds = [seed_of(f"{seed}:{stream}:{item.id}:{j}") for item in items for j in range(k)]
        pending = self.group.submit([s.text for s in shown], sampling, seed=seeds)

        def result() -> list[list[dict[str, Any]]]:
            records = [t.record() for s, r in zip(shown, pending.result(), strict=True) for t in read(s, r)]
            return [records[i * k : (i + 1) * k] for i in range(len(items))]

        return result

    def score(self, items: Sequence[Item], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """`submit_score` with the same arguments, waited for."""
        return self.submit_score(items, *args, **kwargs)()

    def submit_score(
        self,
        items: Sequence[Item],
        k: int = 1,
        temperature: float = 0.5,
        seed: int | str = 0,
        k_meta: int | None = None,
        meta_score: Callable[[list[dict[str, Any]]], list[float]] | None = None,
        keyed: bool = False,
    ) -> Callable[[], list[dict[str, Any]]]:
        """Start scoring and return at once: the GRM samples are generated while the caller goes
        on; calling the result waits for them, asks the meta RM and votes. Per item:
        {"rewards": voted per-response totals in input order, "samples": [...]}.

        `meta_score`, when given, maps a list of {prompt, completion} trajectories to meta-RM
        scores; then only the k_meta best-rated samples of each item count. `keyed` as in `submit`.
        """
        sampled = self.submit(items, k, temperature, seed, keyed=keyed)
        return lambda: self._voted(items, sampled(), k_meta, meta_score)

    def _voted(self, items: Sequence[Item], samples: list[list[dict[str, Any]]], k_meta: int | None,
               meta_score: Callable[[list[dict[str, Any]]], list[float]] | None) -> list[dict[str, Any]]:
        if meta_score is not None:  # one call for the whole batch
            rated = meta_score([{"prompt": s["prompt"], "completion": s["text"]} for its in samples for s in its])
            for s, m in zip((s for its in samples for s in its), rated, strict=True):
                s["meta_score"] = m
        out = []
        for item, its in zip(items, samples, strict=True):
            meta = [s["meta_score"] for s in its] if meta_score is not None else None
            totals = vote([s["scores"] for s in its], item.n, k_meta=k_meta if meta else None, meta_scores=meta)
            out.append({"rewards": totals, "samples": its})
        return out

    @classmethod
    def from_group(cls, group: RolloutGroup, template: str, max_new_tokens: int,
                   with_reference: bool = False) -> GRMRewardPool:
        """A pool over engines that already exist (e.g. the training run's rollout group)."""
        pool = cls.__new__(cls)
        pool.template, pool.max_new_tokens, pool.group = load_template(template), max_new_tokens, group
        pool.with_reference = with_reference
        return pool

    def shutdown(self) -> None:
        self.group.shutdown()
