"""Does scaling the GRM pay off downstream? A policy trained by GRPO with the GRM as its reward.

For each seed: one policy warm-up (`phases=[policy_sft]`), then one `policy_rl` run per reward
kind from that same policy: the GRM greedy (k = 1), Voting@8, MetaRM@8, and the program
checker (oracle, the ceiling). Every run is the documented command
`python -m spct.train experiment=policy ...`; the policy's held-out checked accuracy before RL
is the floor. Prints the final accuracies with 95% intervals, the paired differences between
kinds, the GRM's share of each step's time, what each reward paid each kind of the policy's
answers (right, one dropped carry, one other slip, worse, out of format: which errors it
favours), and saves a plot of accuracy per step.

    make train                                     # the GRM: outputs/spct-default
    python benchmarks/policy_reward.py --grm-run outputs/spct-default

Finished runs are kept and reused: rerunning the command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spct.data.synthetic import ANSWER_KINDS  # noqa: E402
from spct.scaling import mean_interval  # noqa: E402

KINDS = {  # short name: (label, overrides)
    "greedy": ("GRM greedy (k=1)", ["policy.reward.k=1"]),
    "voting8": ("GRM Voting@8", ["policy.reward.k=8"]),
    "metarm8": ("GRM MetaRM@8", ["policy.reward.k=8", "policy.meta_rm={meta_rm}"]),
    "oracle": ("oracle (checker)", ["policy.reward.kind=oracle"]),
    # Opt-in (--kinds): Voting@8 with each quarter of a step's prompts judged as soon as its
    # rollouts are done, GRM sampling overlapping the rest of generation.
    "voting8-stream": ("GRM Voting@8, streamed", ["policy.reward.k=8", "policy.reward.stream_chunks=4"]),
}
DEFAULT_KINDS = ["greedy", "voting8", "metarm8", "oracle"]
KIND_LABELS = {"right": "right", "carry": "one dropped carry", "slip": "one other slip", "worse": "2+ wrong sums",
               "format": "out of format"}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grm-run", required=True, help="output_dir of a finished GRM run (rl-final and meta_rm-final)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kinds", nargs="+", default=DEFAULT_KINDS, choices=list(KINDS))
    ap.add_argument("--split", default="test", help="held-out split (tune on validation)")
    ap.add_argument("--out", default="outputs/bench/policy_reward")
    ap.add_argument("--dry-run", action="store_true", help="check every run's configuration; start nothing")
    ap.add_argument("overrides", nargs="*", help="more spct.train overrides for every run")
    return ap


def train(overrides: list[str], out: Path) -> float:
    """Run one `python -m spct.train` unless its results exist; returns its wall time."""
    if (out / "results.json").exists():
        return json.loads((out / "results.json").read_text())["wall_s"]
    cmd = [sys.executable, "-m", "spct.train", "experiment=policy", f"output_dir={out}", "logger=none", *overrides]
    print("+", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def read_run(out: Path) -> dict:
    """Accuracy per evaluated step, the final per-query credits, and the mean step times."""
    curve, steps = {}, []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m.get("phase") != "policy_rl":
            continue
        if "policy_eval/accuracy" in m:
            curve[m["phase_step"]] = m["policy_eval/accuracy"]
        elif "time/step" in m:
            steps.append(m)
    evals = sorted((out / "policy_eval").glob("step*.jsonl"))
    final = credits(evals[-1])
    def mean(key: str) -> float:
        return sum(s.get(key, 0.0) for s in steps) / len(steps)

    # What the reward paid each kind of answer, over all steps: each step's mean weighted by its
    # share (every step has the same number of rollouts).
    paid = {}
    for kind in ANSWER_KINDS:
        shares = [(s[f"answers/{kind}"], s.get(f"reward_by_answer/{kind}", 0.0)) for s in steps
                  if f"answers/{kind}" in s]
        weight = sum(w for w, _ in shares)
        paid[kind] = (sum(w * r for w, r in shares) / weight if weight else None,
                      weight / len(shares) if shares else None)
    return {"curve": curve, "final": final, "time_step": mean("time/step"), "time_reward": mean("time/reward"),
            "grm_share": mean("grm_time_share"), "parse_failures": mean("grm_parse_failure_rate"),
            "agreement": mean("reward_checker_agreement"), "paid": paid}


def credits(path: Path) -> list[float]:
    return [json.loads(line)["credit"] for line in path.read_text().splitlines()]


def main() -> None:
    args = parser().parse_args()
    run = Path(args.grm_run) / "checkpoints"
    grm, meta_rm = run / "rl-final" / "model", run / "meta_rm-final" / "model"
    for path in (grm, meta_rm):
        if not path.exists():
            sys.exit(f"--grm-run: {path} not found (expected a finished `make train` run)")
    out = Path(args.out)
    if args.dry_run:
        from benchmarks.grpo_vs_trl import dry_run

        def policy(s: int) -> Path:
            return out / f"seed{s}" / "sft" / "checkpoints" / "policy_sft-final" / "model"

        configs = {f"seed{s} sft": ["experiment=policy", "phases=[policy_sft]", f"seed={s}", *args.overrides]
                   for s in args.seeds}
        configs |= {f"seed{s} {kind}": ["experiment=policy", "phases=[policy_rl]", f"seed={s}",
                                        f"policy.model={policy(s)}", f"policy.grm={grm}",
                                        f"policy.eval_split={args.split}",
                                        *[o.format(meta_rm=meta_rm) for o in KINDS[kind][1]], *args.overrides]
                    for s in args.seeds for kind in args.kinds}
        dry_run(configs)
        return
    wall = 0.0  # the runs' own wall times, also for runs an earlier invocation finished
    runs: dict[str, dict[int, dict]] = {k: {} for k in args.kinds}
    floor: dict[int, list[float]] = {}
    for seed in args.seeds:
        sft = out / f"seed{seed}" / "sft"
        wall += train(["phases=[policy_sft]", f"seed={seed}", *args.overrides], sft)
        policy = sft / "checkpoints" / "policy_sft-final" / "model"
        for kind in args.kinds:
            extra = [o.format(meta_rm=meta_rm) for o in KINDS[kind][1]]
            folder = out / f"seed{seed}" / kind
            wall += train(["phases=[policy_rl]", f"seed={seed}", f"policy.model={policy}", f"policy.grm={grm}",
                   f"policy.eval_split={args.split}", *extra, *args.overrides], folder)
            runs[kind][seed] = read_run(folder)
            floor.setdefault(seed, credits(folder / "policy_eval" / "step000000.jsonl"))
    report(args, runs, floor, out, wall)


def report(args, runs, floor, out: Path, wall: float) -> None:
    seeds = args.seeds
    lines = [f"Held-out checked accuracy of the policy on {len(floor[seeds[0]])} {args.split} queries per seed "
             f"(seeds {seeds}); 95% intervals over queries x seeds.", "",
             "| reward | final accuracy (%) | 95% CI (%) | per seed (%) | agrees with the checker | "
             "reward time per step (s) | share of step time | step (s) | GRM parse failures |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    pooled_floor = [v for s in seeds for v in floor[s]]
    m, lo, hi = mean_interval(pooled_floor)
    per_seed = ", ".join(f"{100 * sum(floor[s]) / len(floor[s]):.1f}" for s in seeds)
    lines.append(f"| untrained policy (floor) | {100 * m:.1f} | {100 * lo:.1f} - {100 * hi:.1f} | {per_seed} "
                 "| | | | | |")
    for kind, by_seed in runs.items():
        label = KINDS[kind][0]
        pooled = [v for s in seeds for v in by_seed[s]["final"]]
        m, lo, hi = mean_interval(pooled)
        per_seed = ", ".join(f"{100 * sum(by_seed[s]['final']) / len(by_seed[s]['final']):.1f}" for s in seeds)
        def mean(key: str, by_seed=by_seed) -> float:
            return sum(by_seed[s][key] for s in seeds) / len(seeds)

        lines.append(f"| {label} | {100 * m:.1f} | {100 * lo:.1f} - {100 * hi:.1f} | {per_seed} | "
                     f"{100 * mean('agreement'):.0f}% | {mean('time_reward'):.2f} | {100 * mean('grm_share'):.0f}% | "
                     f"{mean('time_step'):.2f} | {100 * mean('parse_failures'):.1f}% |")
    lines += ["", "Paired differences (same queries and seeds; 95% CI, points):", ""]
    pairs = [("voting8", "greedy"), ("metarm8", "voting8"), ("oracle", "voting8"), ("greedy", None)]
    for a, b in pairs:
        if a not in runs or (b is not None and b not in runs):
            continue
        base = [v for s in seeds for v in (runs[b][s]["final"] if b else floor[s])]
        diff = [x - y for x, y in zip([v for s in seeds for v in runs[a][s]["final"]], base, strict=True)]
        m, lo, hi = mean_interval(diff)
        lines.append(f"- {KINDS[a][0]} - {KINDS[b][0] if b else 'untrained policy'}: {100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    lines.append("\n'agrees with the checker': over a step's pairs of rollouts the checker tells apart, how "
                 "often the reward orders them the same way (a tie counts half; 50% is chance).")
    lines += ["", "What each reward paid each kind of the policy's training answers, over all steps and seeds: "
              "mean reward (share of the answers). One dropped carry and one other slip have the same "
              "checked reward; a reward that pays more for one favours that error.", "",
              "| reward | " + " | ".join(KIND_LABELS[k] for k in ANSWER_KINDS) + " |",
              "|---|" + "---:|" * len(ANSWER_KINDS)]
    for kind, by_seed in runs.items():
        cells = []
        for answer in ANSWER_KINDS:
            got = [by_seed[s].get("paid", {}).get(answer, (None, None)) for s in seeds]
            shares = [w for _, w in got if w is not None]
            weight = sum(w for _, w in got if w)
            value = sum(r * w for r, w in got if r is not None and w) / weight if weight else None
            cells.append("" if not shares else
                         f"{'-' if value is None else f'{value:.2f}'} ({100 * sum(shares) / len(shares):.0f}%)")
        lines.append(f"| {KINDS[kind][0]} | " + " | ".join(cells) + " |")
    lines.append(f"\nwall time of the runs {wall / 60:.1f} min")
    text = "\n".join(lines)
    print(text)
    (out / "summary.md").write_text(text + "\n")
    plot(runs, floor, seeds, out / "policy_reward.png")


def plot(runs, floor, seeds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for kind, by_seed in runs.items():
        steps = sorted(set.intersection(*(set(by_seed[s]["curve"]) for s in seeds)))
        curves = [[by_seed[s]["curve"][t] for t in steps] for s in seeds]
        mean = [100 * sum(c[i] for c in curves) / len(curves) for i in range(len(steps))]
        low = [100 * min(c[i] for c in curves) for i in range(len(steps))]
        high = [100 * max(c[i] for c in curves) for i in range(len(steps))]
        (line,) = ax.plot(steps, mean, marker="o", label=KINDS[kind][0])
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15)
    floor_mean = 100 * sum(sum(floor[s]) / len(floor[s]) for s in seeds) / len(seeds)
    ax.axhline(floor_mean, color="gray", linestyle="--", linewidth=1, label="untrained policy (floor)")
    ax.set_xlabel("policy RL step")
    ax.set_ylabel("held-out checked accuracy (%)")
    ax.set_title(f"Policy accuracy by reward (mean and range over seeds {seeds})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
