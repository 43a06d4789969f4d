"""Inference-time scaling read off one set of samples per item: Greedy, Voting@k, MetaRM@k.

Every k <= k_max uses the first k of the same k_max samples rather than fresh draws, as the
paper does: one generation run yields the whole curve, and neighbouring points differ only by
the votes added, not by the noise of independent runs.

Each (method, k) gives every item an `Outcome`: correct, wrong, or tie (the best response
shares the top total with others). Ties are kept rather than resolved at once because
benchmarks disagree on them: RewardBench credits 0.5, while the paper's rule "shuffle, then
argmax" credits 1/#tied in expectation; `Outcome.credit` gives either.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from numbers import Integral, Real
from pathlib import Path
from statistics import NormalDist
from typing import Any

from spct.grm import best_index, single_verdict, vote
from spct.item import Item

CORRECT, WRONG, TIE = "correct", "wrong", "tie"
GREEDY, VOTING, METARM = "Greedy", "Voting", "MetaRM"
# The LLM-as-a-judge baseline (spct.evaluate's `judge`): its greedy pick, and the majority
# vote over k picks (Voting@k over one-hot picks).
JUDGE, JUDGE_VOTING = "Judge", "Judge voting"
METHODS = (GREEDY, VOTING, METARM, JUDGE, JUDGE_VOTING)

# A share of the k samples (0.5: the paper's k/2) or a function k -> how many to keep.
KMeta = float | Callable[[int], int]


@dataclass
class SampleSet:
    """One item's samples: dicts with "scores" (original response order, None for a parse
    failure) and, for MetaRM@k, "meta_score"; `greedy` is the one greedy sample, if drawn."""

    item: Item
    samples: list[dict[str, Any]]
    greedy: dict[str, Any] | None = None
    # The template's score range (low, high): a single response is judged on it (`judge`).
    scale: tuple[float, float] | None = None


@dataclass(frozen=True)
class Outcome:
    """One item judged by one method: the verdict, the summed scores and how many samples
    were summed (`counted`). `tied` is how many candidates share the top with the right
    answer (1 when correct, 0 when wrong; with several right answers, the candidates at the
    top per right one among them)."""

    verdict: str
    totals: tuple[float, ...]
    best: int
    counted: int
    tied: float

    def credit(self, tie: float | None = None) -> float:
        """1 if correct, 0 if wrong; a tie earns `tie`, or by default 1/#tied, which is the
        expected credit of the paper's random tie-break (so no seed moves the result)."""
        if self.verdict == CORRECT:
            return 1.0
        if self.verdict == WRONG:
            return 0.0
        return 1.0 / self.tied if tie is None else float(tie)

    def mean_scores(self) -> list[float] | None:
        """Per-response mean over the summed samples (comparable across items whose number of
        parsed samples differs); None when no sample parsed."""
        if not self.counted:
            return None
        return [t / self.counted for t in self.totals]


def judge(
    samples: Sequence[Sequence[float] | None], rewards: Sequence[float], scale: tuple[float, float] | None = None
) -> Outcome:
    """Eq. 10 on the vote of `samples` (score lists in original order; None adds nothing).

    n >= 2: the best response must have the strictly highest total; sharing the top is a tie
    (all-failed samples tie every response at 0). n = 1: Eq. 10 asks S_1 == r_1, so each
    sample votes for the label its score states (on the template's `scale` (low, high): 1
    above the middle, else 0; with no scale, the score itself) and the most voted label must
    be the reward; sharing the most votes is a tie, and with no parsed sample there is nothing
    to compare: wrong.
    """
    n = len(rewards)
    best = best_index(rewards, several=True)
    totals = tuple(vote(samples, n))
    parsed = [s for s in samples if s is not None]
    if n == 1:
        counts = Counter(single_verdict(s[0], scale) for s in parsed)
        top = max(counts.values(), default=0)
        winners = [v for v, c in counts.items() if c == top]
        target = float(rewards[0]) if scale is None else single_verdict(rewards[0], (0, 1))
        return _verdict(totals, best, len(parsed), winners, target)
    top = max(totals)
    winners = [i for i, t in enumerate(totals) if t == top]
    right = [i for i, r in enumerate(rewards) if r == rewards[best]]
    if len(right) > 1:  # several right answers (RewardBench 2's Ties): credit is the share of right winners
        hits = [w for w in winners if w in right]
        if not hits:
            return Outcome(WRONG, totals, best, len(parsed), 0)
        if len(hits) == len(winners):
            return Outcome(CORRECT, totals, best, len(parsed), 1)
        return Outcome(TIE, totals, best, len(parsed), len(winners) / len(hits))
    return _verdict(totals, best, len(parsed), winners, best)


def _verdict(
    totals: tuple[float, ...], best: int, counted: int, winners: list[Any], target: Any
) -> Outcome:
    if target not in winners:
        return Outcome(WRONG, totals, best, counted, 0)
    if len(winners) == 1:
        return Outcome(CORRECT, totals, best, counted, 1)
    return Outcome(TIE, totals, best, counted, len(winners))


def ks(k_max: int) -> list[int]:
    """[1, 2, 4, ..., k_max]: powers of two below k_max, then k_max itself."""
    if isinstance(k_max, bool) or not isinstance(k_max, Integral) or k_max < 1:
        raise ValueError(f"ks: k_max must be an integer >= 1, got {k_max!r}")
    k_max = int(k_max)
    out = []
    k = 1
    while k < k_max:
        out.append(k)
        k *= 2
    return [*out, k_max]


def meta_keep(k: int, k_meta: KMeta = 0.5) -> int:
    """How many of k samples MetaRM@k keeps: max(1, floor(k * share)) or k_meta(k)."""
    if callable(k_meta):
        kept = k_meta(k)
    else:
        if isinstance(k_meta, bool) or not isinstance(k_meta, Real) or not 0 < k_meta <= 1:
            raise ValueError(f"k_meta: expected a share in (0, 1] or a function, got {k_meta!r}")
        kept = max(1, math.floor(k * k_meta + 1e-9))
    if isinstance(kept, bool) or not isinstance(kept, Integral) or not 1 <= kept <= k:
        raise ValueError(f"k_meta({k}) must be an integer in [1, {k}], got {kept!r}")
    return kept


def greedy_outcome(s: SampleSet) -> Outcome:
    if s.greedy is None:
        raise ValueError(f"item {s.item.id!r}: no greedy sample")
    return judge([_scores(s.greedy, s.item, "greedy")], s.item.rewards, s.scale)


def voting_outcome(s: SampleSet, k: int) -> Outcome:
    """Voting@k: the sum over the first k samples."""
    return judge([_scores(x, s.item, f"samples[{i}]") for i, x in _first(s, k)], s.item.rewards, s.scale)


def metarm_outcome(s: SampleSet, k: int, k_meta: KMeta = 0.5) -> Outcome:
    """MetaRM@k: of the first k samples, only the meta_keep(k) with the highest meta score
    (the earlier sample first on equal scores, as in `vote`); a parse failure it keeps still
    takes a slot and adds nothing."""
    first = _first(s, k)
    meta = [_meta(x, s.item, f"samples[{i}]") for i, x in first]
    ranked = sorted(range(k), key=lambda i: -meta[i])[: meta_keep(k, k_meta)]
    return judge(
        [_scores(first[i][1], s.item, f"samples[{i}]") for i in sorted(ranked)], s.item.rewards, s.scale
    )


def _first(s: SampleSet, k: int) -> list[tuple[int, dict[str, Any]]]:
    if len(s.samples) < k:
        raise ValueError(f"item {s.item.id!r}: {len(s.samples)} samples, need k = {k}")
    return list(enumerate(s.samples[:k]))


def _scores(sample: Any, item: Item, where: str) -> list[float] | None:
    if not isinstance(sample, Mapping) or "scores" not in sample:
        raise ValueError(f"item {item.id!r}, {where}: expected a dict with 'scores'")
    scores = sample["scores"]
    if scores is None:
        return None
    if not isinstance(scores, Sequence) or len(scores) != item.n:
        raise ValueError(
            f"item {item.id!r}, {where}.scores: expected {item.n} scores or None, got {scores!r}"
        )
    for r, v in enumerate(scores):
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v):
            raise ValueError(f"item {item.id!r}, {where}.scores[{r}]: expected a number, got {v!r}")
    return [float(v) for v in scores]


def _meta(sample: Mapping[str, Any], item: Item, where: str) -> float:
    m = sample.get("meta_score")
    if isinstance(m, bool) or not isinstance(m, Real) or not math.isfinite(m):
        raise ValueError(f"item {item.id!r}, {where}.meta_score: expected a number, got {m!r}")
    return float(m)


@dataclass
class ScalingResults:
    """Outcomes aligned with `items`, keyed by (method, k); Greedy is keyed k = 1."""

    items: list[Item]
    outcomes: dict[tuple[str, int], list[Outcome]]

    def verdicts(self) -> dict[tuple[str, int], list[str]]:
        return {key: [o.verdict for o in out] for key, out in self.outcomes.items()}


def evaluate(
    sample_sets: Sequence[SampleSet], k_max: int | None = None, k_meta: KMeta = 0.5
) -> ScalingResults:
    """Every method at every k in ks(k_max) for every item.

    k_max defaults to the fewest samples any item has. Greedy is included when every item
    has a greedy sample, MetaRM when every one of the first k_max samples has a meta score;
    a mix of present and missing is an error, since the rows would cover different items.
    """
    if not sample_sets:
        raise ValueError("evaluate: no sample sets")
    if k_max is None:
        k_max = min(len(s.samples) for s in sample_sets)
    elif isinstance(k_max, bool) or not isinstance(k_max, Integral) or k_max < 0:
        raise ValueError(f"evaluate: k_max must be an integer >= 0, got {k_max!r}")
    out: dict[tuple[str, int], list[Outcome]] = {}
    if _all_or_none(sample_sets, lambda s: s.greedy is not None, "a greedy sample"):
        out[(GREEDY, 1)] = [greedy_outcome(s) for s in sample_sets]
    if k_max < 1:
        return ScalingResults([s.item for s in sample_sets], out)
    for s in sample_sets:
        _first(s, k_max)
    has_meta = _all_or_none(
        sample_sets,
        lambda s: all(isinstance(x, Mapping) and "meta_score" in x for x in s.samples[:k_max]),
        "meta scores on its first k_max samples",
    )
    for k in ks(k_max):
        out[(VOTING, k)] = [voting_outcome(s, k) for s in sample_sets]
    if has_meta:
        for k in ks(k_max):
            out[(METARM, k)] = [metarm_outcome(s, k, k_meta) for s in sample_sets]
    return ScalingResults([s.item for s in sample_sets], out)


def as_judge(results: ScalingResults) -> ScalingResults:
    """A judge's results under the judge's method names: its Greedy as Judge, its Voting@k
    (the majority vote over picks) as Judge voting@k."""
    names = {GREEDY: JUDGE, VOTING: JUDGE_VOTING}
    return ScalingResults(results.items, {(names[m], k): o for (m, k), o in results.outcomes.items() if m in names})


def _all_or_none(sets: Sequence[SampleSet], has: Callable[[SampleSet], bool], what: str) -> bool:
    flags = [has(s) for s in sets]
    if any(flags) and not all(flags):
        yes, no = sets[flags.index(True)].item.id, sets[flags.index(False)].item.id
        raise ValueError(
            f"item {yes!r} has {what} but item {no!r} does not; all items or none must"
        )
    return all(flags)


def accuracy(outcomes: Sequence[Outcome], tie: float | None = None) -> float:
    if not outcomes:
        raise ValueError("accuracy: no outcomes")
    return sum(o.credit(tie) for o in outcomes) / len(outcomes)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion; sound at 0% and 100%, unlike the normal one.
    Fractional successes (tie credits) are allowed."""
    if n < 1:
        raise ValueError(f"wilson_interval: n must be >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes must be in [0, {n}], got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"wilson_interval: confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# --- tables and the plot ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    method: str
    k: int
    accuracy: float
    ci_low: float
    ci_high: float
    n: int


COLUMNS = tuple(f.name for f in fields(Row))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the normal interval of a mean over independent units (e.g. per-query
    credits, or paired differences of them)."""
    n = len(values)
    if n < 1:
        raise ValueError("mean_interval: expected at least one value")
    mean = sum(values) / n
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * math.sqrt(sum((v - mean) ** 2 for v in values) / max(n - 1, 1) / n)
    return mean, mean - half, mean + half


def row_order(entry: tuple[tuple[str, int], Any]) -> tuple[int, int]:
    method, k = entry[0]
    return (METHODS.index(method) if method in METHODS else len(METHODS), k)


def write_table_markdown(rows: Sequence[Row], path: str | Path) -> Path:
    path = Path(path)
    lines = ["| method | k | accuracy (%) | CI (%) | n |", "|---|---:|---:|---|---:|"]
    for r in rows:
        ci = f"{100 * r.ci_low:.1f} – {100 * r.ci_high:.1f}"
        lines.append(f"| {r.method} | {r.k} | {100 * r.accuracy:.1f} | {ci} | {r.n} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_table_csv(rows: Sequence[Row], path: str | Path) -> Path:
    """Floats written with repr: a reader gets exactly the same numbers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r.method, r.k, repr(r.accuracy), repr(r.ci_low), repr(r.ci_high), r.n])
    return path


def plot_scaling(rows: Sequence[Row], path: str | Path, title: str = "") -> Path:
    """Accuracy (%) against k on a log2 axis: a line with a CI band per scaled method, greedy
    as one marked point with error bars at k = 1. Drawn on an Agg canvas directly, so no
    global matplotlib backend is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    all_k: set[int] = set()
    for method, colour, style in ((VOTING, "tab:blue", "o-"), (METARM, "tab:orange", "o-"),
                                  (JUDGE_VOTING, "tab:gray", "s--")):
        line = sorted((r for r in rows if r.method == method), key=lambda r: r.k)
        if not line:
            continue
        k = [r.k for r in line]
        all_k.update(k)
        ax.plot(k, [100 * r.accuracy for r in line], style, color=colour, label=f"{method}@k")
        low, high = [100 * r.ci_low for r in line], [100 * r.ci_high for r in line]
        ax.fill_between(k, low, high, color=colour, alpha=0.2, linewidth=0)
    for r in (r for r in rows if r.method in (GREEDY, JUDGE)):
        all_k.add(1)
        err = [[100 * (r.accuracy - r.ci_low)], [100 * (r.ci_high - r.accuracy)]]
        ax.errorbar(
            [1], [100 * r.accuracy], yerr=err, fmt="*" if r.method == GREEDY else "x",
            color="tab:green" if r.method == GREEDY else "tab:gray", markersize=12, capsize=4, label=r.method,
        )  # fmt: skip
    if not all_k:
        raise ValueError("plot_scaling: no Greedy, Voting, MetaRM or Judge rows to plot")
    ax.set_xscale("log", base=2)
    ticks = sorted(all_k)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
