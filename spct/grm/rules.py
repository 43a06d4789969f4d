"""Response orders and the SPCT correctness rules (Eq. 10 and 11) and the RFT filter.

Responses are shuffled before every sample so the model cannot learn a position bias; the
ground-truth label must move with them. An `order` is a permutation of range(n): prompt
position p shows response order[p]. Every function here that takes one validates it, because
a wrong order silently relabels the data.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from numbers import Integral, Real


def check_order(order: Sequence[int], n: int) -> list[int]:
    """Return `order` as a list of ints, or raise ValueError saying how it is not a permutation."""
    try:
        items = list(order)
    except TypeError:
        raise ValueError(f"order: expected a permutation of range({n}), got {order!r}") from None
    for p, o in enumerate(items):
        if isinstance(o, bool) or not isinstance(o, Integral):
            raise ValueError(f"order[{p}]: expected an integer, got {o!r}")
    items = [int(o) for o in items]
    if len(items) != n:
        raise ValueError(f"order: has {len(items)} entries for {n} responses, expected {n}")
    seen: set[int] = set()
    for p, o in enumerate(items):
        if not 0 <= o < n:
            raise ValueError(f"order[{p}] = {o} is out of range(0, {n}) for {n} responses")
        if o in seen:
            raise ValueError(
                f"order[{p}] = {o} repeats an earlier entry; order {items} is not a permutation"
            )
        seen.add(o)
    return items


def random_order(n: int, rng: random.Random) -> list[int]:
    """A uniformly random order of n responses drawn from `rng` (seeded by the caller)."""
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"random_order: n must be an integer >= 1, got {n!r}")
    order = list(range(n))
    rng.shuffle(order)
    return order


def map_back(prompt_scores: Sequence[int] | None, order: Sequence[int]) -> list[int] | None:
    """Scores in prompt order to the original response order (original[order[p]] = score p)."""
    if prompt_scores is None:
        return None
    order = check_order(order, len(order))
    if len(prompt_scores) != len(order):
        raise ValueError(
            f"map_back: {len(prompt_scores)} scores for an order of {len(order)} responses"
        )
    original = [0] * len(order)
    for p, o in enumerate(order):
        original[o] = prompt_scores[p]
    return original


def best_index(rewards: Sequence[float], several: bool = False) -> int:
    """Index of the unique maximum reward; ValueError when there is none (the label is ambiguous),
    unless `several` (several right answers: the first of them)."""
    if not rewards:
        raise ValueError("rewards: expected at least one reward")
    for i, r in enumerate(rewards):
        if isinstance(r, bool) or not isinstance(r, Real):
            raise ValueError(f"rewards[{i}]: expected a number, got {r!r}")
    top = max(rewards)
    winners = [i for i, r in enumerate(rewards) if r == top]
    if len(winners) != 1 and not several:
        raise ValueError(f"rewards: expected one unique maximum, got {list(rewards)}")
    return winners[0]


def hint_position(rewards: Sequence[float], order: Sequence[int]) -> int:
    """1-based prompt position of the best response once the responses are put in `order`."""
    best = best_index(rewards)
    return check_order(order, len(rewards)).index(best) + 1


def single_verdict(score: float, scale: tuple[float, float] | None = None) -> float:
    """A single response's score as the 0/1 label it claims: on a template's (low, high) range,
    1 above the middle and 0 at or below it; with no scale, the score itself."""
    if scale is None:
        return float(score)
    low, high = scale
    return 1.0 if (float(score) - low) / (high - low) > 0.5 else 0.0


def is_correct(
    scores: Sequence[float] | None, rewards: Sequence[float], scale: tuple[float, float] | None = None
) -> bool:
    """Eq. 10: did this trajectory rank the ground-truth best response strictly first?

    For n >= 2 the best response's score must beat every other score (a tie at the top is
    wrong, otherwise a model could score everything equal and be right). For n = 1 there is
    nothing to rank, so the score must state the reward (the 0/1 verifiable label): read on the
    template's `scale` (low, high), a score above the middle says 1 (a 9 of 10 on a correct
    answer is right); with no scale the score must equal the reward. A parse failure (None) or a
    score list of the wrong length is simply wrong. Rewards without a unique maximum are bad
    data, not a model error: ValueError.
    """
    if scores is None or len(scores) != len(rewards) or not rewards:
        return False
    if len(rewards) == 1:
        if scale is None:
            return scores[0] == rewards[0]
        return single_verdict(scores[0], scale) == single_verdict(rewards[0], (0, 1))
    j = best_index(rewards)
    return all(scores[j] > s for i, s in enumerate(scores) if i != j)


def is_neutral(scores: Sequence[float] | None) -> bool:
    """Does this trajectory give every response the same score (n >= 2)?

    Such a verdict adds the same to every response's vote, so it can never change which one
    voting picks; Eq. 10 still counts it as wrong (a tie at the top). A parse failure is not
    neutral: it is simply wrong.
    """
    return scores is not None and len(scores) >= 2 and all(s == scores[0] for s in scores)


def meta_target(correct: bool, neutral: bool, neutral_label: float = 0.0) -> float:
    """The meta RM's BCE target: 1 for a correct trajectory, `neutral_label` for a neutral one,
    0 for the rest. With neutral_label 0 it is Eq. 10's label; 0.5 stops the meta RM ranking a
    neutral verdict, which cannot move a vote, below every misleading one."""
    if not 0 <= neutral_label <= 1:
        raise ValueError(f"neutral_label: expected a target in [0, 1], got {neutral_label!r}")
    if correct and neutral:
        raise ValueError("a trajectory cannot be both correct and neutral (a tie at the top is wrong)")
    return 1.0 if correct else float(neutral_label) if neutral else 0.0


def rule_reward(
    scores: Sequence[float] | None, rewards: Sequence[float], scale: tuple[float, float] | None = None
) -> float:
    """Eq. 11: +1 for a correct trajectory, -1 otherwise. No format term: the KL keeps the format."""
    return 1.0 if is_correct(scores, rewards, scale) else -1.0


def rft_accept(correct: Sequence[bool], hinted: bool = False) -> list[bool]:
    """Which of one item's sampled trajectories rejective fine-tuning keeps.

    Non-hinted: only correct ones, and none at all when every sample is correct, because an
    item the sampler always gets right teaches nothing. Hinted samples were given the answer,
    so their being correct says nothing about difficulty: each correct one is kept.
    """
    flags = [bool(c) for c in correct]
    if not hinted and flags and all(flags):
        return [False] * len(flags)
    return flags


def prefilter_keep(verdicts: Sequence[Sequence[bool]]) -> list[bool]:
    """RL's pre-filter: per item, the correctness of each of a weaker GRM's samples; an item
    judged right in every sample is left out (it teaches RL nothing), any other is kept."""
    return [not (v and all(v)) for v in verdicts]
