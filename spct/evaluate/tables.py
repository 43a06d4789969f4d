"""Evaluation runs: k sampled and one greedy GRM sample per item (or the saved ones, re-scored),
scored by each benchmark's own rule, with a scaling table, plot and generations written per
benchmark. The eval phase (spct.recipes.eval) and `python -m spct.evaluate` both run this.

With a judge pool (a choice template: spct.grm.template), the same items are also judged by
the LLM-as-a-judge baseline: k sampled picks and a greedy one, the majority vote over picks
beside the GRM's rows (Judge, Judge voting@k), its samples in judge_generations.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spct.item import Item
from spct.scaling import (
    METHODS,
    Row,
    SampleSet,
    ScalingResults,
    as_judge,
    evaluate,
    plot_scaling,
    write_table_csv,
    write_table_markdown,
)
from spct.scoring import benchmark_table, bon_pairs, both_orders, score_benchmark

log = logging.getLogger("spct")

# A file whose detected format is a benchmark's own layout is scored by that benchmark's rule.
FORMAT_RULES = {"judgebench": "judgebench", "rmbench": "rm-bench", "rmb_pairwise": "rmb", "rmb_bon": "rmb",
                "rewardbench2": "rewardbench2", "ppe_preference": "ppe_preference",
                "ppe_correctness": "ppe_correctness", "realmistake": "realmistake"}


def rule_of(format: str | None) -> str:
    """The scoring rule of items read in `format` (plain accuracy unless a benchmark's layout)."""
    return FORMAT_RULES.get(format or "", "generic")


RMB_MODES = ("list", "pairs")


def judged(rule: str, items: Sequence[Item], rmb_mode: str = "list") -> list[Item]:
    """The items as the rule judges them: JudgeBench's pairs twice, the second time swapped;
    with rmb_mode="pairs", an RMB best-of-N item as one pair per loser (best against it, each
    its own GRM prompt), which `score_rmb` joins back: right only if every pair is."""
    if rule == "judgebench":
        return both_orders(items)
    if rule == "rmb" and rmb_mode == "pairs":
        return [pair for item in items for pair in bon_pairs(item)]
    return list(items)


# ------------------------------------------------------------------------------ generation
def draw_samples(pool, items: Sequence[Item], k_max: int, temperature: float,
                 meta_score: Callable[[list[dict]], list[float]] | None, seed: int) -> list[SampleSet]:
    """k_max sampled and one greedy sample per item, each in its own random response order."""
    sampled = pool.sample(items, k_max, temperature=temperature, seed=seed)
    greedy = pool.sample(items, 1, temperature=0.0, seed=seed, stream="greedy")
    scale = (pool.template.low, pool.template.high)
    # In the form the generations file holds, which a rescore reads back.
    sets = [SampleSet(item, [t.record() for t in s], g[0].record(), scale)
            for item, s, g in zip(items, sampled, greedy, strict=True)]
    if meta_score is not None:
        flat = [x for st in sets for x in (*st.samples, st.greedy)]
        for x, m in zip(flat, meta_score([{"prompt": x["prompt"], "completion": x["text"]} for x in flat]),
                        strict=True):
            x["meta_score"] = m
    return sets


def save_generations(sets: Sequence[SampleSet], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for index, st in enumerate(sets):
            for i, x in enumerate([st.greedy, *st.samples]):
                f.write(json.dumps({"index": index, "item": st.item.id, "sample": "greedy" if i == 0 else i - 1,
                                    **{k: x.get(k) for k in ("order", "text", "scores", "meta_score")},
                                    "prompt": x.get("prompt"), "scale": st.scale}) + "\n")


def load_generations(path: Path, items: Sequence[Item]) -> list[SampleSet]:
    """The SampleSets of a generations.jsonl, matched to `items` by position and id."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no saved generations to re-score (run without rescore first)")
    sets = [SampleSet(item, []) for item in items]
    for line_no, line in enumerate(path.open(), 1):
        rec = json.loads(line)
        index = rec["index"]
        if index >= len(items) or rec["item"] != items[index].id:
            raise ValueError(f"{path}, line {line_no}: item {rec['item']!r} at index {index} does not match "
                             "the benchmark's items (was it generated with other data or max_items?)")
        x = {k: rec[k] for k in ("order", "text", "scores", "prompt")}
        if rec.get("scale") is not None:  # files written before the scale was recorded have none
            sets[index].scale = tuple(rec["scale"])
        if rec.get("meta_score") is not None:
            x["meta_score"] = rec["meta_score"]
        if rec["sample"] == "greedy":
            sets[index].greedy = x
        else:
            sets[index].samples.append(x)
    return sets


# ------------------------------------------------------------------------------- reporting
def report(label: str, rule: str, sets: Sequence[SampleSet], out: Path, k_max: int, k_meta_ratio: float,
           bootstrap: int, seed: int, judge_sets: Sequence[SampleSet] | None = None) -> tuple[list[Row], dict[str, Any]]:
    """Scaling table (the benchmark's headline per method and k), plot and per-method metrics;
    with `judge_sets`, the judge baseline's rows too."""
    results = evaluate(sets, k_max=k_max, k_meta=k_meta_ratio)
    if judge_sets:
        judge = as_judge(evaluate(judge_sets, k_max=k_max))
        results = ScalingResults(results.items, {**results.outcomes, **judge.outcomes})
    rows = benchmark_table(rule, results, n_boot=bootstrap, seed=seed)
    write_table_markdown(rows, out / "table.md")
    write_table_csv(rows, out / "table.csv")
    plot_scaling(rows, out / "scaling.png", title=f"{label}: inference-time scaling")
    details = {f"{m}@{k}": score_benchmark(rule, results.items, o) for (m, k), o in results.outcomes.items()}
    (out / "metrics.json").write_text(json.dumps(details, indent=1))
    return rows, details


# The paper's Overall (Tables 2-3): the mean of these four benchmarks' headlines.
PAPER_OVERALL = ("rewardbench", "ppe_preference", "ppe_correctness", "rmb")


def summary_markdown(tables: dict[str, list[Row]], rules: dict[str, str] | None = None) -> str:
    """Rows: method and k; columns: each benchmark's headline (%), their mean when several ran,
    and the paper's Overall (the mean of RewardBench, PPE Preference, PPE Correctness and RMB)
    when each of those four ran once (by scoring rule: `rules` maps a label to its rule)."""
    keys = sorted({(r.method, r.k) for rows in tables.values() for r in rows},
                  key=lambda mk: (METHODS.index(mk[0]), mk[1]))
    names = list(tables)
    labels_of = {r: [label for label in names if (rules or {}).get(label) == r] for r in PAPER_OVERALL}
    paper = [labels_of[r][0] for r in PAPER_OVERALL] if all(len(v) == 1 for v in labels_of.values()) else None
    extra = ([f"mean of {len(names)}"] if len(names) > 1 else []) + (["Overall (paper)"] if paper else [])
    lines = ["| method | k | " + " | ".join([*names, *extra]) + " |", "|---|---:|" + "---:|" * (len(names) + len(extra))]

    def mean(labels: list[str], method: str, k: int) -> str:
        got = [r.accuracy for n in labels for r in tables[n] if (r.method, r.k) == (method, k)]
        return f"{100 * sum(got) / len(got):.1f}" if len(got) == len(labels) else "-"

    for method, k in keys:
        cells = [next((r for r in tables[n] if (r.method, r.k) == (method, k)), None) for n in names]
        vals = [f"{100 * r.accuracy:.1f} ({100 * r.ci_low:.1f}-{100 * r.ci_high:.1f})" if r else "-" for r in cells]
        vals += [mean(names, method, k)] if len(names) > 1 else []
        vals += [mean(paper, method, k)] if paper else []
        lines.append(f"| {method} | {k} | " + " | ".join(vals) + " |")
    note = ("\nOverall (paper): the mean of RewardBench, PPE Preference, PPE Correctness and RMB, as the "
            "paper's Tables 2-3 report it.\n" if paper else "")
    return "\n".join(lines) + "\n" + note


def run_benchmarks(pool, benchmarks: list[tuple[str, str, list[Item]]], out: Path, *, k_max: int,
                   temperature: float, k_meta_ratio: float, meta_score=None, rescore: bool = False,
                   bootstrap: int = 1000, seed: int = 0, tracker=None, step: int = 0,
                   judge_pool=None, judge: bool = False) -> dict[str, list[Row]]:
    """Sample (or reload), score, and write every benchmark's report; returns the tables.
    `judge`: also the LLM-as-a-judge baseline, sampled from `judge_pool` (or reloaded)."""
    tables, rules = {}, {label: rule for label, rule, _ in benchmarks}
    for label, rule, items in benchmarks:
        folder = out / label
        path, judge_path = folder / "generations.jsonl", folder / "judge_generations.jsonl"
        judge_here = judge and all(item.n >= 2 for item in items)
        if judge and not judge_here:
            log.warning("%s: single-response items; a judge picks among several responses, so this benchmark "
                        "has no Judge rows", label)
        judge_sets = None
        if rescore:
            sets = load_generations(path, items)
            judge_sets = load_generations(judge_path, items) if judge_here else None
        else:
            log.info("%s: %d items x (%d samples + greedy)", label, len(items), k_max)
            sets = draw_samples(pool, items, k_max, temperature, meta_score, seed)
            save_generations(sets, path)
            if judge_here:
                log.info("%s: the judge baseline, %d items x (%d picks + greedy)", label, len(items), k_max)
                judge_sets = draw_samples(judge_pool, items, k_max, temperature, None, seed)
                save_generations(judge_sets, judge_path)
        rows, _ = report(label, rule, sets, folder, k_max, k_meta_ratio, bootstrap, seed, judge_sets)
        tables[label] = rows
        if tracker is not None:
            tracker.log({f"{r.method}@{r.k}": r.accuracy for r in rows}, step=step, phase=f"eval/{label}")
            tracker.log_table(f"eval/{label}/table", ["method", "k", "accuracy", "ci_low", "ci_high", "n"],
                              [list(dataclasses.astuple(r)) for r in rows], step=step)
            tracker.log_image(f"eval/{label}/scaling", folder / "scaling.png", step=step)
    (out / "summary.md").write_text(summary_markdown(tables, rules))
    return tables
