"""Run the embedded default over several seeds and write docs/results.md with its plots.

    python benchmarks/demo_seeds.py                      # seeds 0 1 2, outputs/seeds/<seed>
    python benchmarks/demo_seeds.py --seeds 0 --skip-run # only re-collect finished runs

Each seed is the exact `python -m spct.train seed=S output_dir=outputs/seeds/S` command (the
embedded default, `make train` with a seed), timed. The report: a Table-3-style table per seed
(method, k, accuracy with its 95% CI on the held-out test split), the checks of the paper's
shape, the scaling plot and the RL learning curves of the first seed, and the wall times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_seed(seed: int, out: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "spct.train", f"seed={seed}", f"output_dir={out}", *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - start


POLICY_SECTION = "## A policy rewarded by the GRM"


def write_report(path: Path, lines: list[str]) -> None:
    """Write the GRM's report to `path`, keeping the policy section (written from
    benchmarks/policy_reward.py's report) that an earlier version of the file holds."""
    old = path.read_text() if path.exists() else ""
    kept = old[old.index(POLICY_SECTION):] if POLICY_SECTION in old else ""
    path.write_text("\n".join(lines) + "\n" + kept)


def table_rows(results: dict) -> list[tuple[str, str, float, float, float]]:
    rows = []
    for phase, label in (("warmup", "Warmup greedy"), ("rft", "RFT greedy"), ("rl", "RL greedy")):
        r = results[phase]
        rows.append((label, "1", r["accuracy"], r["ci_low"], r["ci_high"]))
    for r in results["eval"]["scaling"]:
        label = "Greedy (shuffled)" if r["method"] == "Greedy" else f"{r['method']}@k"
        rows.append((label, str(r["k"]), r["accuracy"], r["ci_low"], r["ci_high"]))
    return rows


def checks(results: dict) -> list[tuple[str, bool]]:
    """The paper's shape, each with the rule it is judged by."""
    w, f, r = (results[p] for p in ("warmup", "rft", "rl"))
    scaling = {(x["method"], x["k"]): x for x in results["eval"]["scaling"]}
    vote = [scaling[("Voting", k)]["accuracy"] for k in sorted(k for m, k in scaling if m == "Voting")]
    greedy = scaling[("Greedy", 1)]["accuracy"]
    return [
        ("RFT greedy above warmup by more than the CI (RFT's CI low > warmup's CI high)",
         f["ci_low"] > w["ci_high"]),
        ("RL greedy above RFT by more than the CI (RL's CI low > RFT's CI high)", r["ci_low"] > f["ci_high"]),
        ("Voting@k non-decreasing from k=1 to 8", all(b >= a for a, b in zip(vote, vote[1:], strict=False))),
        ("Voting@8 above greedy", scaling[("Voting", 8)]["accuracy"] > greedy),
        ("MetaRM@8 above Voting@8", scaling.get(("MetaRM", 8), {"accuracy": -1})["accuracy"]
         > scaling[("Voting", 8)]["accuracy"]),
    ]


def median_step_time(metrics: Path, phase: str = "warmup") -> float:
    """Median learner step time of a phase: how fast the machine trains, to compare wall times."""
    times = [r["step_time_s"] for r in map(json.loads, metrics.open()) if r.get("phase") == phase and "step_time_s" in r]
    return statistics.median(times) if times else float("nan")


def learning_curves(metrics: Path, png: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rl = [json.loads(line) for line in metrics.open()]
    rl = [r for r in rl if r["phase"] == "rl" and "reward_mean" in r]
    fig = Figure(figsize=(6, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [r["phase_step"] for r in rl]
    ax.plot(steps, [r["reward_mean"] for r in rl], "o-", label="reward (mean, Eq. 11)")
    ax.plot(steps, [r["accuracy"] for r in rl], "s-", label="accuracy of rollouts (Eq. 10)")
    ax.set_xlabel("RL step")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("GRPO learning curves (training rollouts)")
    fig.tight_layout()
    fig.savefig(png)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", default="outputs/seeds")
    ap.add_argument("--report", default="docs/results.md")
    ap.add_argument("--skip-run", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every seed")
    args = ap.parse_args()
    root = REPO / args.root
    walls = {}
    for seed in args.seeds:
        if not args.skip_run:
            walls[seed] = run_seed(seed, root / str(seed), args.overrides)
    lines = ["# Results of the embedded default", "",
             "Measured with `python benchmarks/demo_seeds.py` (each seed runs "
             "`python -m spct.train seed=S output_dir=outputs/seeds/S`, the command `make train` runs "
             "with seed 0) on a machine with 2 CPU cores and no GPU. Accuracy is Eq. 10 on the "
             "held-out synthetic test split (ties earn 1/#tied); intervals are 95% Wilson intervals.", ""]
    results = {seed: json.loads((root / str(seed) / "results.json").read_text()) for seed in args.seeds}
    verdicts = {seed: checks(data["results"]) for seed, data in results.items()}
    claims = [name for name, _ in verdicts[args.seeds[0]]]
    lines += ["## Summary", "", "| the paper's shape | " + " | ".join(f"seed {s}" for s in args.seeds) + " |",
              "|---|" + "---|" * len(args.seeds)]
    lines += [f"| {name} | " + " | ".join("yes" if verdicts[s][i][1] else "no" for s in args.seeds) + " |"
              for i, name in enumerate(claims)]
    lines += ["", "How this configuration was chosen (on the validation split only): [tuning.md](tuning.md).", ""]
    for seed, data in results.items():
        res = data["results"]
        wall = walls.get(seed, data.get("wall_s", float("nan")))
        lines += [f"## Seed {seed} (wall time {wall / 60:.1f} min)", "",
                  "| method | k | accuracy (%) | 95% CI (%) |", "|---|---:|---:|---|"]
        lines += [f"| {m} | {k} | {100 * a:.1f} | {100 * lo:.1f} - {100 * hi:.1f} |"
                  for m, k, a, lo, hi in table_rows(res)]
        meta = res.get("meta_rm", {})
        if "validation_roc_auc" in meta:
            decisive = meta.get("validation_decisive_roc_auc")
            lines += ["", f"Meta RM held-out ROC-AUC: {meta['validation_roc_auc']:.3f}"
                      + (f"; on the decisive trajectories (not every response scored the same): {decisive:.3f}"
                         if decisive is not None else "") + "."]
        times = {p: t.get("time/total", 0) for p, t in data["timings"].items()}
        step = median_step_time(root / str(seed) / "metrics.jsonl")
        lines += ["", "Phase wall times (s): " + ", ".join(f"{p} {t:.0f}" for p, t in times.items())
                  + f"; median warm-up learner step {step:.2f} s (a measure of the machine's speed).", "",
                  "| the paper's shape | holds |", "|---|---|"]
        lines += [f"| {name} | {'yes' if ok else 'no'} |" for name, ok in verdicts[seed]]
        lines.append("")
    first = root / str(args.seeds[0])
    docs = REPO / Path(args.report).parent
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "scaling.png").write_bytes((first / "eval" / "test" / "scaling.png").read_bytes())
    learning_curves(first / "metrics.jsonl", docs / "rl_curves.png")
    lines += [f"![scaling, seed {args.seeds[0]}](scaling.png)", "",
              f"![RL learning curves, seed {args.seeds[0]}](rl_curves.png)", ""]
    write_report(REPO / args.report, lines)
    print((REPO / args.report).read_text())


if __name__ == "__main__":
    main()
