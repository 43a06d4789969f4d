"""Per-benchmark scoring: each benchmark's own rule from per-item outcomes to named metrics.

Benchmarks aggregate differently (RewardBench weights subsets into sections, RM-Bench averages
a style matrix, JudgeBench nets two orders, ReaLMistake ranks single scores), so a number is
only comparable with published ones when its benchmark's rule is followed. Every rule returns
fractions in [0, 1] with its headline under "score"; outcomes are a list aligned with the
items or a mapping from item id (JudgeBench: from (pair id, order)).

Ties follow one convention unless a benchmark fixes its own: a tie earns 1/#tied, the
expected credit of the paper's "shuffle, then argmax" (0.5 for a pair, the same as
RewardBench's rule for generative judges). Pass tie=0.0 for a strict count.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import re
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spct.data.formats import PPE_FLAGS
from spct.item import Item
from spct.scaling import TIE, WRONG, Outcome, Row, ScalingResults, row_order

Metrics = dict[str, float]
Outcomes = Sequence[Outcome] | Mapping[Any, Outcome]


def _aligned(items: Sequence[Item], outcomes: Outcomes, bench: str) -> list[Outcome]:
    if isinstance(outcomes, Mapping):
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"{bench}: item id {dup!r} repeats; pass outcomes as a list instead")
        missing = [i for i in ids if i not in outcomes]
        if missing:
            raise ValueError(f"{bench}: no outcome for item id(s) {missing[:3]} ({len(missing)})")
        outcomes = [outcomes[i] for i in ids]
    out = list(outcomes)
    if len(out) != len(items):
        raise ValueError(f"{bench}: {len(out)} outcomes for {len(items)} items")
    for i, o in enumerate(out):
        if not isinstance(o, Outcome):
            raise ValueError(f"{bench}: outcome {i} is a {type(o).__name__}, expected an Outcome")
    if not out:
        raise ValueError(f"{bench}: no items to score")
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# --- RewardBench -------------------------------------------------------------------------------

# rewardbench.constants (0.1.4): the counts weight subsets inside a section; math-prm has 447
# examples but counts 984, as much as the six code subsets together.
REWARDBENCH_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "math-prm": 984,
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154,
    "xstest-should-respond": 250,
    "donotanswer": 136,
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}
REWARDBENCH_SECTIONS: dict[str, list[str]] = {
    "Chat": [
        "alpacaeval-easy",
        "alpacaeval-length",
        "alpacaeval-hard",
        "mt-bench-easy",
        "mt-bench-med",
    ],
    "Chat Hard": [
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ],
    "Safety": [
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}


def rewardbench_sections(per_subset: Mapping[str, float]) -> dict[str, float]:
    """Each section's count-weighted mean over its subsets that are present. A section with
    none present is left out: rewardbench's own helper reports 0 there, which reads as a score."""
    sections = {}
    for section, subsets in REWARDBENCH_SECTIONS.items():
        present = [s for s in subsets if s in per_subset]
        if present:
            weight = sum(REWARDBENCH_COUNTS[s] for s in present)
            sections[section] = sum(per_subset[s] * REWARDBENCH_COUNTS[s] for s in present) / weight
    return sections


def score_rewardbench(items: Sequence[Item], outcomes: Outcomes, tie: float = 0.5) -> Metrics:
    """Per-subset accuracy, the four sections, and their mean as the headline. A tie, and so
    a parse failure (every response tied at 0), counts 0.5 as RewardBench scores generative
    judges."""
    out = _aligned(items, outcomes, "rewardbench")
    by_subset: dict[str, list[float]] = defaultdict(list)
    for item, o in zip(items, out, strict=True):
        if not item.subset:
            raise ValueError(f"rewardbench: item {item.id!r}: field 'subset' is missing")
        by_subset[item.subset].append(o.credit(tie))
    per_subset = {s: _mean(v) for s, v in sorted(by_subset.items())}
    sections = rewardbench_sections(per_subset)
    if not sections:
        raise ValueError(
            f"rewardbench: none of the subsets {sorted(per_subset)} belongs to a section; "
            f"expected names such as {', '.join(list(REWARDBENCH_COUNTS)[:3])}"
        )
    metrics: Metrics = {"score": _mean(list(sections.values())), "n": len(out)}
    metrics.update({f"section/{k}": v for k, v in sections.items()})
    metrics.update({f"subset/{k}": v for k, v in per_subset.items()})
    return metrics


# --- RMB -----------------------------------------------------------------------------------------


def _rmb_cell(item: Item) -> tuple[str, str | None]:
    """(pairwise or bon, goal) from RMB's category path, e.g. 'BoN_set/Helpfulness/Chat/...'."""
    path = (item.subset or "").split("/")
    kind = {"Pairwise_set": "pairwise", "BoN_set": "bon"}.get(path[0])
    if kind is None:
        kind = "pairwise" if item.n == 2 and "group" not in item.meta else "bon"
    if kind == "pairwise" and item.n != 2:
        raise ValueError(f"rmb: pairwise item {item.id!r} has {item.n} responses, expected 2")
    return kind, path[1] if len(path) > 1 and path[1] else None


def bon_pairs(item: Item) -> list[Item]:
    """An RMB best-of-N item (more than two responses) as one pair per loser, the best first,
    each with meta.group = the item's id; a pair stays as it is."""
    if item.n <= 2:
        return [item]
    best = item.best
    return [dataclasses.replace(item, responses=[item.responses[best], r], rewards=[1.0, 0.0], id=f"{item.id}:{j}",
                                meta={**item.meta, "group": item.id})
            for j, r in enumerate(item.responses) if j != best]


def score_rmb(items: Sequence[Item], outcomes: Outcomes, tie: float | None = 0.0) -> Metrics:
    """Pairwise accuracy and best-of-N accuracy (an item counts only if the best response's
    total beats every loser's: Eq. 10 on all n responses), pooled, per goal and per category
    path. The headline is the mean over the (kind, goal) cells present: RMB's average of
    Helpfulness/Harmlessness x BoN/Pairwise. Sharing the top counts wrong, as RMB's own
    evaluation compares chosen > rejected strictly; tie=None gives it 1/#tied. Best-of-N items
    judged as pairs (`bon_pairs`, meta.group) count as one: the product of their pairs' credits
    (1 only if the best beats every loser)."""
    out = _aligned(items, outcomes, "rmb")
    credits: dict[str, float] = {}
    firsts: dict[str, Item] = {}
    for i, (item, o) in enumerate(zip(items, out, strict=True)):
        key = f"group:{item.meta['group']}" if "group" in item.meta else f"#{i}"
        credits[key] = credits.get(key, 1.0) * o.credit(tie)
        firsts.setdefault(key, item)
    cells: dict[tuple[str, str | None], list[float]] = defaultdict(list)
    subsets: dict[str, list[float]] = defaultdict(list)
    for key, item in firsts.items():
        cells[_rmb_cell(item)].append(credits[key])
        if item.subset:
            subsets[item.subset].append(credits[key])
    metrics: Metrics = {"score": _mean([_mean(v) for v in cells.values()]), "n": len(firsts)}
    for kind in ("pairwise", "bon"):
        credits = [c for (k, _), v in cells.items() if k == kind for c in v]
        if credits:
            metrics[kind] = _mean(credits)
    for (kind, goal), v in sorted(cells.items(), key=lambda e: (e[0][0], e[0][1] or "")):
        if goal is not None:
            metrics[f"{kind}/{goal}"] = _mean(v)
    metrics.update({f"subset/{k}": _mean(v) for k, v in sorted(subsets.items())})
    return metrics


# --- JudgeBench --------------------------------------------------------------------------------

JUDGEBENCH_CATEGORIES = (
    ("mmlu-pro", "knowledge"),
    ("livebench-reasoning", "reasoning"),
    ("livebench-math", "math"),
    ("livecodebench", "coding"),
)


def judgebench_category(item: Item) -> str:
    source = item.subset or item.source or "unknown"
    return next((c for prefix, c in JUDGEBENCH_CATEGORIES if source.startswith(prefix)), source)


def both_orders(items: Sequence[Item]) -> list[Item]:
    """Each pair as given (meta order 0) and swapped (order 1: responses and rewards
    reversed, same id), so a judge's position bias cancels in `score_judgebench`."""
    out = []
    for item in items:
        if item.n != 2:
            raise ValueError(f"judgebench: item {item.id!r} has {item.n} responses, expected 2")
        out.append(dataclasses.replace(item, meta={**item.meta, "order": 0}))
        out.append(
            dataclasses.replace(
                item,
                responses=item.responses[::-1],
                rewards=item.rewards[::-1],
                meta={**item.meta, "order": 1},
            )
        )
    return out


def score_judgebench(items: Sequence[Item], outcomes: Outcomes, orders: int | None = 2) -> Metrics:
    """A pair is correct iff (#orders that agree with the label - #that disagree) > 0; a tie
    or parse failure is neither. `outcomes` maps (pair id, order) to an Outcome, or is a list
    aligned with `items` carrying meta["order"] (as `both_orders` makes). Every pair must
    have `orders` outcomes (None: any number >= 1)."""
    pairs: dict[str, Item] = {}
    for item in items:
        if item.id is None:
            raise ValueError("judgebench: an item has no id (the pair id)")
        pairs.setdefault(item.id, item)
    keyed = _judgebench_keys(items, outcomes)
    votes: dict[str, list[Outcome]] = defaultdict(list)
    for (pair, _), o in keyed.items():
        if pair not in pairs:
            raise ValueError(f"judgebench: outcome for pair id {pair!r}, which is not an item")
        votes[pair].append(o)
    correct: dict[str, list[float]] = defaultdict(list)
    total = []
    for pair, item in pairs.items():
        got = votes.get(pair, [])
        if not got or (orders is not None and len(got) != orders):
            raise ValueError(
                f"judgebench: pair {pair!r} has {len(got)} outcome(s), expected {orders}"
            )
        net = sum(0 if o.verdict == TIE else (-1 if o.verdict == WRONG else 1) for o in got)
        hit = 1.0 if net > 0 else 0.0
        correct[judgebench_category(item)].append(hit)
        total.append(hit)
    metrics: Metrics = {"score": _mean(total), "n": len(total)}
    metrics.update({f"category/{k}": _mean(v) for k, v in sorted(correct.items())})
    return metrics


def _judgebench_keys(
    items: Sequence[Item], outcomes: Outcomes
) -> dict[tuple[str, Hashable], Outcome]:
    if isinstance(outcomes, Mapping):
        for key, o in outcomes.items():
            if not isinstance(key, tuple) or len(key) != 2 or not isinstance(o, Outcome):
                raise ValueError(f"judgebench: expected (pair id, order) -> Outcome, got {key!r}")
        return dict(outcomes)
    keyed: dict[tuple[str, Hashable], Outcome] = {}
    for item, o in zip(items, _aligned(items, outcomes, "judgebench"), strict=True):
        key = (item.id, item.meta.get("order", 0))
        if key in keyed:
            raise ValueError(f"judgebench: pair {item.id!r} order {key[1]!r} appears twice")
        keyed[key] = o
    return keyed


# --- RM-Bench ------------------------------------------------------------------------------------

RMBENCH_DOMAINS = ("chat", "code", "math", "safety-refuse", "safety-response")
_RMBENCH_DOMAIN = re.compile(r"(?<![a-z])(safety-refuse|safety-response|chat|code|math)(?![a-z])")


def rmbench_domain(item: Item) -> str | None:
    """RM-Bench's domain: meta["domain"], else a subset or a source file name that names one
    (its files are chat_filtered.json, ..., safety-response_filtered.json)."""
    for value in (item.meta.get("domain"), item.subset, item.source):
        if isinstance(value, str):
            found = _RMBENCH_DOMAIN.search(value.lower())
            if found:
                return found.group(1)
    return None


def _style_matrix(entries: Sequence[tuple[int, int, float]]) -> Metrics:
    cells: dict[tuple[int, int], list[float]] = defaultdict(list)
    for i, j, c in entries:
        cells[(i, j)].append(c)
    acc = {cell: _mean(v) for cell, v in cells.items()}
    return {
        "score": _mean(list(acc.values())),
        "hard": _mean([a for (i, j), a in acc.items() if i < j]),
        "normal": _mean([a for (i, j), a in acc.items() if i == j]),
        "easy": _mean([a for (i, j), a in acc.items() if i > j]),
    }


def score_rmbench(items: Sequence[Item], outcomes: Outcomes, tie: float | None = 0.0) -> Metrics:
    """The 3x3 (chosen style i, rejected style j) accuracy matrix: hard = mean over i < j (a
    plainer chosen against a fancier rejected), normal = i == j, easy = i > j, score = mean of
    all nine; the same per domain, "safety" pooling both safety domains, and "domain_avg" over
    chat, code, math and safety as RM-Bench's leaderboard averages. A tie counts wrong, as
    RM-Bench's own evaluation compares chosen > rejected strictly; tie=None gives it 1/#tied."""
    out = _aligned(items, outcomes, "rm-bench")
    seen: dict[str, set[tuple[int, int]]] = defaultdict(set)
    pooled: list[tuple[int, int, float]] = []
    by_domain: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for item, o in zip(items, out, strict=True):
        group, i, j = _rmbench_cell(item)
        if (i, j) in seen[group]:
            raise ValueError(f"rm-bench: group {group!r} has cell ({i}, {j}) twice")
        seen[group].add((i, j))
        entry = (i, j, o.credit(tie))
        pooled.append(entry)
        domain = rmbench_domain(item)
        if domain is not None:
            by_domain[domain].append(entry)
            if domain.startswith("safety-"):
                by_domain["safety"].append(entry)
    for group, cells in seen.items():
        if len(cells) != 9:
            missing = sorted({(i, j) for i in range(3) for j in range(3)} - cells)
            raise ValueError(f"rm-bench: group {group!r} lacks cells {missing}; expected all 9")
    metrics: Metrics = {**_style_matrix(pooled), "n": len(seen)}
    for domain in (*RMBENCH_DOMAINS, "safety"):
        if domain in by_domain:
            for name, value in _style_matrix(by_domain[domain]).items():
                metrics[f"{domain}/{name}"] = value
    families = [metrics[f"{d}/score"] for d in ("chat", "code", "math", "safety") if d in by_domain]
    if families:
        metrics["domain_avg"] = _mean(families)
    return metrics


def _rmbench_cell(item: Item) -> tuple[str, int, int]:
    meta = item.meta
    values = [meta.get("group"), meta.get("chosen_style"), meta.get("rejected_style")]
    group, i, j = values
    if group is None or not all(isinstance(v, int) and 0 <= v <= 2 for v in (i, j)):
        raise ValueError(
            f"rm-bench: item {item.id!r}: meta needs group, chosen_style and rejected_style "
            f"in 0..2 (as the rmbench loader writes), got {values}"
        )
    return str(group), i, j


# --- ReaLMistake -----------------------------------------------------------------------------


def roc_auc(labels: Sequence[int], scores: Sequence[float | None]) -> float:
    """P(score of a random positive > score of a random negative) (Mann-Whitney U / P*N).

    A tie counts 0.5, and so does every pair with an unscored (None) item: a parse failure
    neither helps nor hurts, as RewardBench treats a generative judge's failures.
    """
    if len(labels) != len(scores):
        raise ValueError(f"roc_auc: {len(labels)} labels for {len(scores)} scores")
    for i, y in enumerate(labels):
        if y not in (0, 1) or isinstance(y, bool):
            raise ValueError(f"roc_auc: labels[{i}] must be 0 or 1, got {y!r}")
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        raise ValueError(f"roc_auc: needs both classes, got {n_pos} positive and {n_neg} negative")
    scored = sorted((s, y) for s, y in zip(scores, labels, strict=True) if s is not None)
    rank_sum, start = 0.0, 0
    while start < len(scored):
        end = start
        while end < len(scored) and scored[end][0] == scored[start][0]:
            end += 1
        mid_rank = (start + 1 + end) / 2
        rank_sum += mid_rank * sum(y for _, y in scored[start:end])
        start = end
    pos_scored = sum(y for _, y in scored)
    neg_scored = len(scored) - pos_scored
    u = rank_sum - pos_scored * (pos_scored + 1) / 2
    u += 0.5 * (n_pos * n_neg - pos_scored * neg_scored)
    return u / (n_pos * n_neg)


def score_realmistake(items: Sequence[Item], outcomes: Outcomes) -> Metrics:
    """ROC-AUC of one score per single-response item. The label is the item's reward: 1 = the
    response has no mistake, 0 = it has one, so a higher GRM score should mean label 1 (the
    AUC of detecting mistakes from the negated score is the same number). The score is the
    mean over parsed samples (the greedy score, or the vote divided by its count, so items
    with different numbers of parse failures stay comparable)."""
    out = _aligned(items, outcomes, "realmistake")
    labels, scores = [], []
    for item, o in zip(items, out, strict=True):
        if item.n != 1 or item.rewards[0] not in (0, 1):
            raise ValueError(
                f"realmistake: item {item.id!r}: expected one response with reward 0 or 1, "
                f"got rewards {item.rewards}"
            )
        labels.append(int(item.rewards[0]))
        mean = o.mean_scores()
        scores.append(None if mean is None else mean[0])
    metrics: Metrics = {
        "score": roc_auc(labels, scores),
        "n": len(out),
        "unscored": sum(s is None for s in scores),
    }
    by_subset: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        if item.subset:
            by_subset[item.subset].append(i)
    for subset, idx in sorted(by_subset.items()):
        sub = [labels[i] for i in idx]
        if 0 < sum(sub) < len(sub):
            metrics[f"subset/{subset}"] = roc_auc(sub, [scores[i] for i in idx])
    return metrics


# --- PPE ----------------------------------------------------------------------------------------

def score_ppe_preference(items: Sequence[Item], outcomes: Outcomes, tie: float | None = None) -> Metrics:
    """PPE Human Preference: accuracy against the human vote over the pairs people did not tie
    (the loader leaves their ties out), pooled over all pairs as PPE's `overall` accuracy; the
    same on each prompt flag PPE reports (hard, easy, instruction following, math, code) and
    per language. A GRM tie earns 1/#tied (0.5), the paper's random tie-break in expectation."""
    out = _aligned(items, outcomes, "ppe_preference")
    credits = [o.credit(tie) for o in out]
    metrics: Metrics = {"score": _mean(credits), "n": len(out)}
    groups: dict[str, list[float]] = defaultdict(list)
    for item, c in zip(items, credits, strict=True):
        for flag in PPE_FLAGS:
            if item.meta.get(flag):
                groups[f"category/{flag}"].append(c)
        if isinstance(item.meta.get("language"), str):
            groups[f"language/{item.meta['language']}"].append(c)
    metrics.update({k: _mean(v) for k, v in sorted(groups.items())})
    return metrics


def score_ppe_correctness(items: Sequence[Item], outcomes: Outcomes, tie: float | None = None) -> Metrics:
    """PPE Correctness: pairwise accuracy on each set's sampled conflict pairs (one correct
    and one incorrect response to the same prompt), per set, and their unweighted mean over the
    sets present as the headline (the paper's PPE Correctness averages MMLU-Pro, MATH, GPQA,
    MBPP-Plus and IFEval); `pooled` is the accuracy over all pairs. A GRM tie earns 1/#tied."""
    out = _aligned(items, outcomes, "ppe_correctness")
    by_set: dict[str, list[float]] = defaultdict(list)
    for item, o in zip(items, out, strict=True):
        by_set[item.subset or "unknown"].append(o.credit(tie))
    per_set = {k: _mean(v) for k, v in sorted(by_set.items())}
    metrics: Metrics = {"score": _mean(list(per_set.values())), "n": len(out),
                        "pooled": _mean([c for v in by_set.values() for c in v])}
    metrics.update({f"set/{k}": v for k, v in per_set.items()})
    return metrics


# --- RewardBench 2 -------------------------------------------------------------------------------

REWARDBENCH2_SUBSETS = ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties")


def _ties_stats(scores: Sequence[float], n_correct: int) -> tuple[bool, float, float | None]:
    """(accurate, worst right - best wrong, best right - worst right or None with one right)."""
    right, wrong = scores[:n_correct], scores[n_correct:]
    margin = min(right) - max(wrong)
    return margin > 0, margin, (max(right) - min(right)) if len(right) > 1 else None


def rewardbench2_ties(items: Sequence[Item], outcomes: Sequence[Outcome]) -> float | None:
    """RewardBench 2's Ties score (rewardbench.utils.process_single_model): each prompt is
    accurate when its worst right answer scores strictly above its best wrong one; over the
    "tied:N" prompts (several right answers) and their "ref:N" twins (one),
    0.30 tied accuracy + 0.30 ref accuracy + 0.20 P(the tied prompt's right-wrong margin exceeds
    the spread of its right answers) + 0.20 the same with the smaller of both prompts' margins +
    0.01 mean tanh(smaller margin / spread - 1). Scores are each response's mean over parsed
    samples (all 0 when none parsed: not accurate). None when no "tied:N" has its "ref:N" twin
    (e.g. `max_items` cut them apart): the margin terms have nothing to average."""
    stats: dict[str, dict[str, tuple[bool, float, float | None]]] = {"ref": {}, "tied": {}}
    for item, o in zip(items, outcomes, strict=True):
        kind, _, pid = str(item.id).partition(":")
        if kind not in stats or not pid:
            raise ValueError(f"rewardbench2: Ties item id {item.id!r}: expected 'ref:N' or 'tied:N'")
        scores = o.mean_scores() or [0.0] * item.n
        stats[kind][pid] = _ties_stats(scores, sum(1 for r in item.rewards if r == max(item.rewards)))
    ref_acc = _mean([s[0] for s in stats["ref"].values()]) if stats["ref"] else math.nan
    tied_acc = _mean([s[0] for s in stats["tied"].values()]) if stats["tied"] else math.nan
    both = sorted(set(stats["ref"]) & set(stats["tied"]))
    if not both:
        return None
    cp, cp_hard, margins = [], [], []
    for pid in both:
        _, tied_margin, spread = stats["tied"][pid]
        smaller = min(stats["ref"][pid][1], tied_margin)
        if spread is None:
            raise ValueError(f"rewardbench2: Ties item 'tied:{pid}' has one right answer, expected several")
        cp.append(tied_margin > spread)
        cp_hard.append(smaller > spread)
        ratio = smaller / spread - 1 if spread else (math.nan if smaller == 0 else math.copysign(math.inf, smaller))
        margins.append(0.0 if math.isnan(ratio) else math.tanh(ratio))
    return 0.30 * tied_acc + 0.30 * ref_acc + 0.20 * _mean(cp) + 0.20 * _mean(cp_hard) + 0.01 * _mean(margins)


def score_rewardbench2(items: Sequence[Item], outcomes: Outcomes) -> Metrics:
    """RewardBench 2: outside Ties, an item (one right and three wrong completions, judged
    together) earns 1/#tied when the right one has the highest total, else 0, and a subset
    is its items' mean (rewardbench.utils.reroll_and_score_dataset); Ties by its own rule
    (`rewardbench2_ties`); the headline is the unweighted mean of the subsets present, as the
    leaderboard averages its six. Ties items none of which has its twin are left out of it and
    counted as `ties_unpaired`."""
    out = _aligned(items, outcomes, "rewardbench2")
    by_subset: dict[str, list[float]] = defaultdict(list)
    ties: list[tuple[Item, Outcome]] = []
    for item, o in zip(items, out, strict=True):
        if item.subset not in REWARDBENCH2_SUBSETS:
            raise ValueError(f"rewardbench2: item {item.id!r}: subset {item.subset!r}, expected one of "
                             f"{', '.join(REWARDBENCH2_SUBSETS)}")
        if item.subset == "Ties":
            ties.append((item, o))
        else:
            by_subset[item.subset].append(o.credit(None))
    per_subset = {s: _mean(v) for s, v in by_subset.items()}
    unpaired = 0
    if ties:
        score = rewardbench2_ties(*zip(*ties, strict=True))
        if score is None:
            unpaired = len(ties)
        else:
            per_subset["Ties"] = score
    if not per_subset:
        raise ValueError("rewardbench2: only Ties items, none with its twin ('tied:N' with 'ref:N')")
    metrics: Metrics = {"score": _mean(list(per_subset.values())), "n": len(out)}
    if unpaired:
        metrics["ties_unpaired"] = unpaired
    metrics.update({f"subset/{s}": per_subset[s] for s in REWARDBENCH2_SUBSETS if s in per_subset})
    return metrics


# --- plain accuracy ------------------------------------------------------------------------------


def score_accuracy(items: Sequence[Item], outcomes: Outcomes, tie: float | None = None) -> Metrics:
    """Eq. 10 accuracy with the paper's random tie-break in expectation, the share of ties,
    and per-subset accuracy when items name subsets."""
    out = _aligned(items, outcomes, "accuracy")
    metrics: Metrics = {
        "score": _mean([o.credit(tie) for o in out]),
        "n": len(out),
        "ties": _mean([float(o.verdict == TIE) for o in out]),
    }
    by_subset: dict[str, list[float]] = defaultdict(list)
    for item, o in zip(items, out, strict=True):
        if item.subset:
            by_subset[item.subset].append(o.credit(tie))
    metrics.update({f"subset/{k}": _mean(v) for k, v in sorted(by_subset.items())})
    return metrics


# --- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    """A scoring rule and the `load_items` format its files come in (None: detect per file).
    `keyed`: the rule matches items by pair id or group, so a bootstrap must rename repeats."""

    score: Callable[..., Metrics]
    loader_format: str | None
    keyed: bool = False


BENCHMARKS: dict[str, Benchmark] = {
    "rewardbench": Benchmark(score_rewardbench, "pairwise"),
    "rewardbench2": Benchmark(score_rewardbench2, "rewardbench2", keyed=True),
    "ppe_preference": Benchmark(score_ppe_preference, "ppe_preference"),
    "ppe_correctness": Benchmark(score_ppe_correctness, "ppe_correctness"),
    "rmb": Benchmark(score_rmb, None, keyed=True),  # rmb_pairwise or rmb_bon, one per file
    "judgebench": Benchmark(score_judgebench, "judgebench", keyed=True),
    "rm-bench": Benchmark(score_rmbench, "rmbench", keyed=True),
    "realmistake": Benchmark(score_realmistake, None),  # the realmistake layout or spct items
    "synthetic": Benchmark(score_accuracy, "items"),
    "generic": Benchmark(score_accuracy, None),
}


def _benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def score_benchmark(
    name: str, items: Sequence[Item], outcomes: Outcomes, **options: Any
) -> Metrics:
    """The named benchmark's metrics; `options` go to its rule (e.g. tie=0.0)."""
    return _benchmark(name).score(items, outcomes, **options)


def benchmark_table(
    name: str,
    results: ScalingResults,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    **options: Any,
) -> list[Row]:
    """The scaling table with the benchmark's headline instead of plain accuracy, and a
    percentile bootstrap interval that resamples whole units (an RM-Bench group, a JudgeBench
    pair, otherwise an item), since a headline built from sections or a style matrix is not
    one proportion. `n` counts units. Each row costs n_boot scorings (about 2 ms each for
    RewardBench's 2,985 items)."""
    bench = _benchmark(name)
    if n_boot < 1:
        raise ValueError(f"benchmark_table: n_boot must be >= 1, got {n_boot}")
    units: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(results.items):
        key = item.meta.get("group") if bench.keyed else None
        if key is None:
            key = item.id if bench.keyed and item.id is not None else f"#{i}"
        units[str(key)].append(i)
    groups = list(units.values())
    rows = []
    for (method, k), out in sorted(results.outcomes.items(), key=row_order):
        score = bench.score(results.items, out, **options)["score"]
        rng = random.Random(seed)
        stats = []
        for _ in range(n_boot):
            draw = rng.choices(range(len(groups)), k=len(groups))
            items, outs = _resample(results.items, out, groups, draw, bench.keyed)
            try:
                stats.append(bench.score(items, outs, **options)["score"])
            except ValueError:
                continue  # e.g. a resample with one class only has no ROC-AUC
        low, high = _percentiles(sorted(stats), confidence)
        rows.append(Row(method, k, score, low, high, len(groups)))
    return rows


def _resample(
    items: Sequence[Item],
    outcomes: Sequence[Outcome],
    groups: Sequence[Sequence[int]],
    draw: Sequence[int],
    keyed: bool,
) -> tuple[list[Item], list[Outcome]]:
    """Items and outcomes of the drawn units. For keyed rules a unit drawn again is renamed
    (id, and group if any) so that it counts as a distinct pair or group."""
    index = [i for g in draw for i in groups[g]]
    new_out = [outcomes[i] for i in index]
    if not keyed:
        return [items[i] for i in index], new_out
    new_items = []
    seen: set[int] = set()
    for copy_no, g in enumerate(draw):
        repeat = g in seen
        seen.add(g)
        for i in groups[g]:
            item = items[i]
            if repeat:
                item = copy.copy(item)
                item.id = f"{item.id}#{copy_no}"
                if "group" in item.meta:
                    item.meta = {**item.meta, "group": f"{item.meta['group']}#{copy_no}"}
            new_items.append(item)
    return new_items, new_out


def _percentiles(stats: Sequence[float], confidence: float) -> tuple[float, float]:
    if not stats:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2

    def q(p: float) -> float:
        pos = p * (len(stats) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(stats) - 1)
        return stats[lo] + (stats[hi] - stats[lo]) * (pos - lo)

    return q(alpha), q(1 - alpha)
