"""The GRM as a policy's reward: which GRM prompts judge a group of rollouts, and how the
voted scores become one reward per rollout.

SPCT's GRM is pointwise, so it can judge the G rollouts of one prompt together: "group" mode
puts all G in one GRM prompt (n = G, shown in a fresh random order in every GRM sample), and
"single" mode judges each rollout alone (n = 1). Either way each rollout's reward is its vote
rescaled to [0, 1] (`rescaled_vote`): the mean over the counted samples of
(score - low) / (high - low), where a sample that failed to parse counts 0 for every response
it judged. In group mode such a failure lowers the whole group alike and so moves no
advantage; in single mode it marks down the one rollout the GRM could not judge, as the
reward server does. Rollouts whose votes tie get equal rewards and hence equal advantages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from spct.grm.voting import rescaled_vote
from spct.item import Item

MODES = ("group", "single")


def judged_items(query: Item, rollouts: Sequence[str], mode: str, tag: str) -> list[Item]:
    """The GRM items that judge `rollouts` (answers to `query`'s conversation): one with all of
    them in group mode, one per rollout in single mode. `tag` makes their ids (which seed each
    item's response orders) unique per step."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if not rollouts:
        raise ValueError("rollouts: expected at least one")
    base = f"{query.id if query.id is not None else 'query'}:{tag}"
    if mode == "group":
        return [Item(list(query.conversation), list(rollouts), [0.0] * len(rollouts), id=base)]
    return [Item(list(query.conversation), [r], [0.0], id=f"{base}:{j}") for j, r in enumerate(rollouts)]


def rollout_rewards(
    scored: Sequence[Mapping[str, Any]], low: float, high: float, k_meta: int | None = None
) -> tuple[list[float], int, int]:
    """(one reward in [0, 1] per judged response in order, GRM samples that failed to parse,
    GRM samples drawn) from `GRMRewardPool.score` results of `judged_items`.

    A sample carrying "meta_score" was chosen by the meta RM: only the k_meta best count."""
    rewards: list[float] = []
    failures = drawn = 0
    for result in scored:
        samples = result["samples"]
        scores = [s["scores"] for s in samples]
        n = len(result["rewards"])
        meta = [s["meta_score"] for s in samples] if samples and "meta_score" in samples[0] else None
        rewards.extend(rescaled_vote(scores, n, low, high, k_meta if meta else None, meta))
        failures += sum(s is None for s in scores)
        drawn += len(scores)
    return rewards, failures, drawn
