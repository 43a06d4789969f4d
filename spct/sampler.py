"""Sampling a GRM: its prompts, seeded samples from an engine group, each read back.

A `GRMSampler` holds what sampling a GRM needs, the engine group, its templates, the run's seed
and the critique length, and nothing of the run around it. The training phases sample the GRM
being trained through one over the run's rollout group, an RFT teacher through one over the
teacher's engines (`on`), the reward pool through one over its own engines (`draw`), and the
per-phase evaluation measures greedy accuracy with it (`greedy_accuracy`).

Seeds: `submit(prompts, key)` samples prompt j with a seed from (seed, key, j) (spct.rollout), so
the same run draws the same samples, also after a resume; `draw` seeds by its own key and, with
`keyed`, by each item's id.

It drives an engine group it is given and imports no Ray itself, so the driver loads it
before Ray starts.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from spct.grm import build_prompt, load_template, random_order
from spct.grm.trajectory import Shown, Trajectory, read
from spct.item import Item
from spct.scaling import judge, wilson_interval

if TYPE_CHECKING:
    from spct.rollout import RolloutGroup

MetaScore = Callable[[list[dict[str, str]]], list[float]]  # {prompt, completion} -> meta-RM score


class GRMSampler:
    """Samples a GRM served by `engines` (a RolloutGroup, or a function returning it, for a group
    started on first use): items shown in `template` (a single response in `single_template`
    while training), `max_new_tokens` per critique, seeds from `seed`; `with_reference`: prompts
    show an item's reference answer (meta.reference) when it has one; `timings` (a
    spct.tracking.Timings) times the waits as "generate"."""

    def __init__(self, engines: RolloutGroup | Callable[[], RolloutGroup], template: str = "default",
                 single_template: str | None = None, max_new_tokens: int = 1024, seed: int | str = 0,
                 with_reference: bool = False, timings: Any = None) -> None:
        self._engines = engines
        self.template = load_template(template)
        self.single_template = load_template(single_template) if single_template else self.template
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.with_reference, self.timings = with_reference, timings

    @property
    def group(self) -> RolloutGroup:
        return self._engines() if callable(self._engines) else self._engines

    def on(self, group: RolloutGroup) -> GRMSampler:
        """The same sampler over other engines (e.g. an RFT teacher's)."""
        other = copy.copy(self)
        other._engines = group
        return other

    def _timed(self):
        return self.timings("generate") if self.timings is not None else nullcontext()

    # ------------------------------------------------------------ prompts chosen by the caller
    def show(self, item: Item, order: list[int], hint: bool = False, training: bool = True) -> Shown:
        """The GRM prompt of `item` in `order`, with the template the item's size calls for; a
        hinted one is sent with the hint and recorded (trained on) without it."""
        template = self.single_template if training and item.n == 1 else self.template
        prompt = build_prompt(item, order, template=template, with_reference=self.with_reference)
        sent = build_prompt(item, order, hint=True, template=template, with_reference=self.with_reference) \
            if hint else None
        return Shown(item, order, prompt, (template.low, template.high), sent, template.choice)

    def submit(self, prompts: list[str], key: str, n: int = 1, temperature: float = 1.0):
        """Sampling without waiting or reading back: a handle whose `.result()` waits for the
        engine results (with the sampled tokens' log-probs). `key` names the draw (e.g. "rl:3",
        the step's rollouts): with the seed it seeds each prompt's sampling."""
        sampling = dict(n=n, temperature=temperature, max_tokens=self.max_new_tokens, logprobs=0)
        return self.group.submit(prompts, sampling, seed=f"{self.seed}:{key}")

    def sample(self, shown: list[Shown], key: str, n: int = 1, temperature: float = 1.0) -> list[list[Trajectory]]:
        """n samples of each shown prompt, read back (`spct.grm.trajectory.read`)."""
        pending = self.submit([s.text for s in shown], key, n, temperature)
        with self._timed():
            results = pending.result()
        return [read(s, r) for s, r in zip(shown, results, strict=True)]

    def greedy_accuracy(self, items: Sequence[Item], key: str, rng: random.Random) -> dict[str, float]:
        """Greedy accuracy (Eq. 10) on `items`, each shown in an order drawn from `rng`, with a
        95% interval. A tie earns 1/#tied, the same rule as the eval phase's Greedy and
        Voting@k rows, so the per-phase accuracies and the scaling table are comparable."""
        shown = [self.show(it, random_order(it.n, rng), training=False) for it in items]
        correct, failures = 0.0, 0
        for (t,) in self.sample(shown, key, n=1, temperature=0.0):
            failures += t.scores is None
            correct += judge([t.scores], t.item.rewards, t.shown.scale).credit()
        lo, hi = wilson_interval(correct, len(items))
        return {"accuracy": correct / len(items), "ci_low": lo, "ci_high": hi,
                "parse_failure_rate": failures / len(items), "n": len(items)}

    # ------------------------------------------------------------ items in fresh random orders
    def draw(self, items: Sequence[Item], k: int, temperature: float = 0.5, seed: int | str = 0,
             stream: str = "pool", keyed: bool = False,
             meta_score: MetaScore | None = None) -> Callable[[], list[list[Trajectory]]]:
        """Start k samples of each item and return at once; calling the result waits for them,
        read back. Each sample shows the responses in a fresh random order, drawn from a
        generator seeded by (seed, stream, item); another `stream` gives other orders (e.g. the
        greedy sample's). Never the order as given: loaders often put the labelled-best response
        first. `keyed` (every item has an id): sample j of an item also draws its tokens with a
        seed from (seed, stream, id, j), so an item's samples do not depend on what else is in
        the batch (the reward server's coalesced batches); else from (seed, stream, position).
        `meta_score`, when given, rates every sample (one call for the whole batch): each comes
        back with its `meta_score`."""
        if k < 1:
            raise ValueError(f"k: expected >= 1, got {k}")
        shown = []
        for i, item in enumerate(items):
            rng = random.Random(f"{seed}:{stream}:{item.id if item.id is not None else i}")
            shown += [self.show(item, random_order(item.n, rng), training=False) for _ in range(k)]
        sampling = dict(n=1, temperature=temperature, max_tokens=self.max_new_tokens)
        seeds: str | list[int] = f"{seed}:{stream}"
        if keyed:
            from spct.rollout import seed_of

            if any(item.id is None for item in items):
                raise ValueError("keyed: every item needs an id")
            seeds = [seed_of(f"{seed}:{stream}:{item.id}:{j}") for item in items for j in range(k)]
        pending = self.group.submit([s.text for s in shown], sampling, seed=seeds)

        def result() -> list[list[Trajectory]]:
            samples = [t for s, r in zip(shown, pending.result(), strict=True) for t in read(s, r)]
            if meta_score is not None:
                rated = meta_score([{"prompt": t.shown.prompt, "completion": t.text} for t in samples])
                samples = [replace(t, meta_score=m) for t, m in zip(samples, rated, strict=True)]
            return [samples[i * k : (i + 1) * k] for i in range(len(items))]

        return result
