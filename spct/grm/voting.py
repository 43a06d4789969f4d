"""Inference-time scaling: sum k sampled score lists (Voting@k), optionally only the k_meta
that the meta RM trusts most (MetaRM@k), then pick the winner.

Summing rather than averaging is the paper's choice: it widens the reward range from 1..10
to k..10k, so finer distinctions survive. Samples must already be mapped back to the
original response order (`map_back`), since each one saw its own shuffle.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from numbers import Integral, Real


def vote(
    samples: Sequence[Sequence[float] | None],
    n: int,
    k_meta: int | None = None,
    meta_scores: Sequence[float] | None = None,
) -> list[float]:
    """Per-response score sums over `samples` (each a score list in original order, or None).

    With `meta_scores` (one per sample) only the `k_meta` samples with the highest meta score
    count, ties going to the earlier sample; `k_meta` defaults to half the samples (at least
    one), the paper's setting. Selection runs over all samples, so a parse failure that the
    meta RM ranks high still takes a slot and adds nothing. Raises ValueError on lengths
    that do not match.
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"vote: n must be an integer >= 1, got {n!r}")
    for i, sample in enumerate(samples):
        if sample is not None and len(sample) != n:
            raise ValueError(f"vote: samples[{i}] has {len(sample)} scores, expected n = {n}")
    chosen = range(len(samples))
    if meta_scores is not None:
        chosen = _top_by_meta(len(samples), k_meta, meta_scores)
    elif k_meta is not None:
        raise ValueError("vote: k_meta needs meta_scores (one meta-RM score per sample)")
    totals = [0.0] * n
    for i in chosen:
        sample = samples[i]
        if sample is None:
            continue
        for r, score in enumerate(sample):
            totals[r] += float(score)
    return totals


def counted(
    samples: Sequence[Sequence[float] | None],
    k_meta: int | None = None,
    meta_scores: Sequence[float] | None = None,
) -> tuple[int, int]:
    """(samples the vote counts, how many of those parsed): all of them, or the k_meta that
    the meta RM kept, chosen by the same rule as `vote`."""
    chosen = _chosen(samples, k_meta, meta_scores)
    return len(chosen), sum(samples[i] is not None for i in chosen)


def rescaled_vote(
    samples: Sequence[Sequence[float] | None],
    n: int,
    low: float,
    high: float,
    k_meta: int | None = None,
    meta_scores: Sequence[float] | None = None,
) -> list[float]:
    """The vote of `vote` on [0, 1], one value per response: the mean over the counted samples
    of (score - low) / (high - low), a sample that failed to parse contributing 0.

    A parse failure thus counts as the lowest score for every response its sample judged: when
    a sample judges a whole group at once it lowers them all alike and changes no ranking, and
    when every counted sample failed every response gets 0. Responses whose votes tie get equal
    rewards. With no samples at all, every response gets 0.
    """
    if not high > low:
        raise ValueError(f"rescaled_vote: expected low < high, got {low} and {high}")
    totals = vote(samples, n, k_meta, meta_scores)
    slots, parsed = counted(samples, k_meta, meta_scores)
    if not slots:
        return [0.0] * n
    return [(t - parsed * low) / (slots * (high - low)) for t in totals]


def consensus(
    samples: Sequence[Sequence[float] | None],
    n: int,
    k_meta: int | None = None,
    meta_scores: Sequence[float] | None = None,
) -> float:
    """The share of the counted samples (as `vote` counts them) whose own strict best response
    is the vote's strict best: 1 when every sample prefers the winner, 0 when the vote ties at
    the top. A sample that failed to parse, or ties at its top, prefers nothing."""
    totals = vote(samples, n, k_meta, meta_scores)
    top = max(totals)
    if totals.count(top) > 1:
        return 0.0
    best = totals.index(top)
    chosen = _chosen(samples, k_meta, meta_scores)
    if not chosen:
        return 0.0
    agree = 0
    for i in chosen:
        sample = samples[i]
        if sample is not None and max(sample) == sample[best] and list(sample).count(sample[best]) == 1:
            agree += 1
    return agree / len(chosen)


def _chosen(samples: Sequence, k_meta: int | None, meta_scores: Sequence[float] | None) -> Sequence[int]:
    """The samples a vote counts: all of them, or the k_meta the meta RM rates best."""
    return range(len(samples)) if meta_scores is None else _top_by_meta(len(samples), k_meta, meta_scores)


def _top_by_meta(k: int, k_meta: int | None, meta_scores: Sequence[float]) -> list[int]:
    if len(meta_scores) != k:
        raise ValueError(f"vote: {len(meta_scores)} meta scores for {k} samples")
    for i, m in enumerate(meta_scores):
        if isinstance(m, bool) or not isinstance(m, Real) or not math.isfinite(m):
            raise ValueError(f"vote: meta_scores[{i}] must be a finite number, got {m!r}")
    if k_meta is None:
        k_meta = max(1, k // 2)
    if isinstance(k_meta, bool) or not isinstance(k_meta, Integral) or not 1 <= k_meta <= k:
        raise ValueError(f"vote: k_meta must be an integer in [1, {k}], got {k_meta!r}")
    ranked = sorted(range(k), key=lambda i: -meta_scores[i])
    return sorted(ranked[:k_meta])


def pick_best(totals: Sequence[float], rng: random.Random | None = None) -> int:
    """Index of the highest total; a tie is broken uniformly at random by `rng`.

    A fixed tie-break would credit a model that scores everything equal whenever the best
    response happens to come first. Without `rng` the first maximum wins (deterministic).
    """
    if not totals:
        raise ValueError("pick_best: expected at least one total")
    top = max(totals)
    ties = [i for i, t in enumerate(totals) if t == top]
    if rng is None or len(ties) == 1:
        return ties[0]
    return rng.choice(ties)
