"""`python -m spct.evaluate` end to end on a tiny checkpoint, every benchmark sample file."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import layouts
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
FILES = sorted(p for p in BENCH.iterdir() if p.suffix in (".json", ".jsonl"))


def _evaluate(out: Path, *overrides: str) -> str:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    cmd = [sys.executable, "-m", "spct.evaluate", f"output_dir={out}", "logger=none", "bootstrap=50", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


# Benchmarks read from a local copy in their hub layout (name:PATH), written by layouts.py.
COPIES = ("rewardbench2", "ppe_preference", "ppe_correctness")


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    data = tmp_path_factory.mktemp("copies")
    copies = {"rewardbench2": layouts.rewardbench2(data / "reward-bench-2", per_subset=1, ties=1, subsets=("Factuality",)),
              "ppe_preference": layouts.ppe_preference(data / "PPE-Human-Preference-V1", n=5),
              "ppe_correctness": layouts.ppe_correctness(data / "ppe", n=1)}
    specs = ["synthetic", *(str(p) for p in FILES), *(f"{name}:{path}" for name, path in copies.items())]
    # A model spct did not train has no card: its settings are given.
    log = _evaluate(out, f"model={tiny_model_dir}", "model.template=compact", "model.max_model_len=512",
                    "model.dtype=float32", "model.max_new_tokens=24", f"benchmarks=[{','.join(specs)}]", "k_max=2",
                    "max_items=3", "data.test_size=6", "with_reference=true", "judge=judge")
    return out, log


def test_every_benchmark_gets_a_table_a_plot_and_its_generations(evaluated):
    out, _ = evaluated
    labels = ["synthetic", *(p.stem for p in FILES), *COPIES]
    greedy_orders = []
    for label in labels:
        folder = out / label
        rows = list(csv.DictReader((folder / "table.csv").open()))
        # judge=judge: the LLM-as-a-judge baseline on the same items, beside the GRM's rows
        # (not where an item has a single response: a judge picks among several).
        judged = (folder / "judge_generations.jsonl").exists()
        assert judged or label == "synthetic"
        assert [(r["method"], int(r["k"])) for r in rows] == [("Greedy", 1), ("Voting", 1), ("Voting", 2)] + \
            [("Judge", 1), ("Judge voting", 1), ("Judge voting", 2)] * judged
        assert (folder / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "| Voting | 2 |" in (folder / "table.md").read_text()
        gens = [json.loads(line) for line in (folder / "generations.jsonl").open()]
        # 3 samples per item (greedy + k_max = 2); JudgeBench items are judged in both orders.
        assert len(gens) % 3 == 0 and {g["sample"] for g in gens} == {"greedy", 0, 1}
        for g in gens:
            assert sorted(g["order"]) == list(range(len(g["order"])))
            assert set(g) >= {"item", "order", "text", "scores", "meta_score"}
        greedy_orders += [g["order"] for g in gens if g["sample"] == "greedy"]
        if not judged:
            assert any(len(g["order"]) == 1 for g in gens)
            continue
        picks = [json.loads(line) for line in (folder / "judge_generations.jsonl").open()]
        assert [(p["item"], p["sample"]) for p in picks] == [(g["item"], g["sample"]) for g in gens]
        assert all(p["prompt"].endswith("Best: \\boxed{j}") for p in picks)
        # A pick reads as one vote for the picked response, 0 for the others.
        assert all(p["scores"] is None or sorted(p["scores"]) == [0] * (len(p["order"]) - 1) + [1] for p in picks)
    # The greedy sample is shuffled too: the loaders put the labelled-best response first.
    assert any(o != sorted(o) for o in greedy_orders) and any(o == sorted(o) for o in greedy_orders)
    summary = (out / "summary.md").read_text()
    assert all(label in summary for label in labels) and f"mean of {len(labels)}" in summary
    assert "Overall" not in summary  # the paper's needs RewardBench, PPE and one RMB set
    assert "| Judge voting | 2 |" in summary
    metrics = json.loads((out / "rewardbench2" / "metrics.json").read_text())["Voting@2"]
    assert {k for k in metrics if k.startswith("subset/")} == {"subset/Factuality", "subset/Ties"}
    metrics = json.loads((out / "ppe_correctness" / "metrics.json").read_text())["Greedy@1"]
    assert len([k for k in metrics if k.startswith("set/")]) == 5
    # with_reference=true: the sets with a ground truth show it (compact template: "Ref: ..."),
    # IFEval has none; items without a reference elsewhere are prompted as before.
    prompts = [json.loads(line)["prompt"] for line in (out / "ppe_correctness" / "generations.jsonl").open()]
    assert sum("\nRef: " in x for x in prompts) == len(prompts) * 4 // 5
    assert not any("Ref: " in json.loads(line)["prompt"] for line in (out / "synthetic" / "generations.jsonl").open())


def test_judgebench_is_judged_in_both_orders(evaluated):
    out, _ = evaluated
    jb = next(p.stem for p in FILES if p.stem.startswith("judgebench"))
    gens = [json.loads(line) for line in (out / jb / "generations.jsonl").open()]
    greedy = [g for g in gens if g["sample"] == "greedy"]
    assert len(greedy) == 2 * 3  # 3 pairs, each as given and swapped
    assert len({g["item"] for g in greedy}) == 3


def test_rescore_reads_saved_generations_without_generating(evaluated):
    """`output_dir=DIR rescore=true` alone: the benchmarks, items and samples come from DIR."""
    out, _ = evaluated
    before = {p.parent.name: p.read_text() for p in out.glob("*/table.csv")}
    log = _evaluate(out, "rescore=true")
    assert "Started a local Ray instance" not in log
    assert {p.parent.name: p.read_text() for p in out.glob("*/table.csv")} == before
