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

from collections.abc import Sequence

from spct.grm.trajectory import Trajectory
from spct.grm.voting import consensus, rescaled_vote
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
    sampled: Sequence[Sequence[Trajectory]], low: float, high: float, k_meta: int | None = None,
    abstain: float = 0.0,
) -> tuple[list[float], int, int, int]:
    """(one reward in [0, 1] per judged response in order, GRM samples that failed to parse,
    GRM samples drawn, items whose vote abstained) from the reward pool's samples of
    `judged_items` (one list per item).

    Samples carrying a meta RM rating were chosen by the meta RM: only the k_meta best count.
    An item judging several responses whose counted samples agree on its winner less often than
    `abstain` (`consensus`) abstains: its responses all get their mean reward, so the vote adds
    no advantage between them."""
    rewards: list[float] = []
    failures = drawn = abstained = 0
    for samples in sampled:
        scores = [t.scores for t in samples]
        meta = [t.meta_score for t in samples] if samples and samples[0].meta_score is not None else None
        n, kept = samples[0].item.n, k_meta if meta else None
        voted = rescaled_vote(scores, n, low, high, kept, meta)
        if abstain > 0 and n > 1 and consensus(scores, n, kept, meta) < abstain:
            voted = [sum(voted) / n] * n
            abstained += 1
        rewards.extend(voted)
        failures += sum(s is None for s in scores)
        drawn += len(scores)
    return rewards, failures, drawn, abstained


def agreement(rewards: Sequence[Sequence[float]], truth: Sequence[Sequence[float]]) -> float | None:
    """How often the reward orders two rollouts of a query as the checker does (`truth`), over
    the pairs the checker tells apart (1: always, 0.5: chance; a tie in the reward counts half).
    Both hold one list per query."""
    agree = pairs = 0.0
    for rs, ts in zip(rewards, truth, strict=True):
        for i in range(len(rs)):
            for j in range(i + 1, len(rs)):
                if ts[i] != ts[j]:
                    pairs += 1
                    diff = (rs[i] - rs[j]) * (ts[i] - ts[j])
                    agree += 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0
    return agree / pairs if pairs else None
