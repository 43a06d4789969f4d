"""Does scaling the GRM pay off downstream? A policy trained by GRPO with the GRM as its reward.

For each policy seed: one policy warm-up (`phases=[policy_sft]`), then, from that same policy,
one `policy_rl` run per GRM run and reward kind: the GRM greedy (k = 1), Voting@8 and MetaRM@8,
and one run rewarded by the program checker (oracle, the ceiling, the same for every GRM run).
Every run is the documented command `python -m spct.train experiment=policy ...`; the policy's
held-out checked accuracy before RL is the floor.

The unit is one (GRM run, policy seed): each claim is a rule on the paired difference of two
rewards' final accuracies over the units, with a 95% t-interval across them, so it speaks for
other GRM runs and seeds, not only for the queries drawn. The report prints the rules and their
verdicts, the accuracies per GRM run beside that GRM's own accuracy, a diagnosis (how often
each reward orders the policy's own answers as the checker does early and late in training,
where the answers moved, and what each reward paid each kind of answer: right, one dropped
carry, one other slip, worse, out of format), and saves a plot of accuracy per step.

    for s in 0 1 2; do python -m spct.train seed=$s output_dir=outputs/grm-seed$s; done
    python benchmarks/policy_reward.py --grm-run outputs/grm-seed0 outputs/grm-seed1 outputs/grm-seed2 \
        --seeds 0 1

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

from spct.data.synthetic import ANSWER_KINDS, SLIPS, sum_slips  # noqa: E402

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
SLIP_LABELS = {"right": "right", "+1": "one too many", "-1": "one too few", "carry": "carry dropped",
               "other": "other", "format": "out of format"}
FLOOR = "floor"
# The claims: (rule, a, b) reads "a's final accuracy minus b's is above 0" (b = FLOOR: the
# untrained policy's).
CLAIMS = [
    ("the GRM greedy reward raises the policy above its floor", "greedy", FLOOR),
    ("Voting@8 ends above greedy", "voting8", "greedy"),
    ("MetaRM@8 ends above Voting@8", "metarm8", "voting8"),
    ("MetaRM@8 raises the policy above its floor", "metarm8", FLOOR),
    ("the oracle ends above MetaRM@8 (a better reward would still buy more)", "oracle", "metarm8"),
]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grm-run", required=True, nargs="+",
                    help="output_dir of one or more finished GRM runs (rl-final and meta_rm-final)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
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


def grm_runs(paths: list[str]) -> dict[str, tuple[Path, Path]]:
    """{name: (GRM, meta RM)} of each --grm-run, named by its folder."""
    runs = {}
    for path in map(Path, paths):
        grm = path / "checkpoints" / "rl-final" / "model"
        meta_rm = path / "checkpoints" / "meta_rm-final" / "model"
        for need in (grm, meta_rm):
            if not need.exists():
                sys.exit(f"--grm-run: {need} not found (expected a finished `python -m spct.train` run)")
        if path.name in runs:
            sys.exit(f"--grm-run: two runs named {path.name!r}; their policy runs would share a folder")
        runs[path.name] = (grm, meta_rm)
    return runs


def folder(out: Path, seed: int, grm: str, kind: str) -> Path:
    """Where a policy run lives: the oracle's is shared by every GRM run."""
    return out / f"seed{seed}" / kind if kind == "oracle" else out / f"seed{seed}" / grm / kind


def read_run(out: Path) -> dict:
    """Accuracy per evaluated step, the final per-query credits, the mean step times, and the
    per-step diagnosis: agreement with the checker and the shares of each kind of answer."""
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

    def mean(key: str, rows=steps) -> float:
        return sum(s.get(key, 0.0) for s in rows) / len(rows)

    # What the reward paid each kind of answer, over all steps: each step's mean weighted by its
    # share (every step has the same number of rollouts).
    paid = {}
    for kind in ANSWER_KINDS:
        shares = [(s[f"answers/{kind}"], s.get(f"reward_by_answer/{kind}", 0.0)) for s in steps
                  if f"answers/{kind}" in s]
        weight = sum(w for w, _ in shares)
        paid[kind] = (sum(w * r for w, r in shares) / weight if weight else None,
                      weight / len(shares) if shares else None)
    # Early and late: the first and last third of the steps.
    third = max(1, len(steps) // 3)
    phases = {"early": steps[:third], "late": steps[-third:]}
    moved = {when: {"agreement": _mean_known(rows, "reward_checker_agreement"),
                    **{kind: _mean_known(rows, f"answers/{kind}") for kind in ANSWER_KINDS}}
             for when, rows in phases.items()}
    return {"curve": curve, "start": credits(evals[0]), "final": credits(evals[-1]),
            "slips": {"start": slip_shares(evals[0]), "end": slip_shares(evals[-1])}, "time_step": mean("time/step"),
            "time_reward": mean("time/reward"), "grm_share": mean("grm_time_share"),
            "parse_failures": mean("grm_parse_failure_rate"), "agreement": _mean_known(steps, "reward_checker_agreement"),
            "paid": paid, "moved": moved}


def _mean_known(rows: list[dict], key: str) -> float | None:
    known = [r[key] for r in rows if r.get(key) is not None]
    return sum(known) / len(known) if known else None


def slip_shares(path: Path) -> dict[str, float]:
    """How the held-out answers in a policy_eval file answer each sum (`sum_slips`): the share
    of all sums per kind, "format" for the sums of an answer out of format."""
    counts = dict.fromkeys((*SLIPS, "format"), 0)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        for answer in row["answers"]:
            slips = sum_slips(row["query"], answer)
            if slips is None:
                counts["format"] += row["query"].count("+")
            for slip in slips or []:
                counts[slip] += 1
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else counts


def credits(path: Path) -> list[float]:
    return [json.loads(line)["credit"] for line in path.read_text().splitlines()]


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean over independent units; one unit
    gives no interval (low and high are the mean)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * stats.sem(values)
    return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    return "holds" if low > 0 else "reversed" if high < 0 else "not established"


def main() -> None:
    args = parser().parse_args()
    grms = grm_runs(args.grm_run)
    out = Path(args.out)
    plans = []  # (label, folder, overrides)
    for seed in args.seeds:
        sft = out / f"seed{seed}" / "sft"
        plans.append((f"seed{seed} sft", sft, ["phases=[policy_sft]", f"seed={seed}", *args.overrides]))
        policy = sft / "checkpoints" / "policy_sft-final" / "model"
        for name, (grm, meta_rm) in grms.items():
            for kind in args.kinds:
                if kind == "oracle" and name != next(iter(grms)):
                    continue
                extra = [o.format(meta_rm=meta_rm) for o in KINDS[kind][1]]
                where = folder(out, seed, name, kind)
                plans.append((f"seed{seed} {'' if kind == 'oracle' else name + ' '}{kind}", where,
                              ["phases=[policy_rl]", f"seed={seed}", f"policy.model={policy}", f"policy.grm={grm}",
                               f"policy.eval_split={args.split}", *extra, *args.overrides]))
    if args.dry_run:
        from benchmarks.grpo_vs_trl import dry_run

        dry_run({label: ["experiment=policy", *overrides] for label, _, overrides in plans})
        return
    wall = sum(train(overrides, where) for _, where, overrides in plans)
    runs = {kind: {(name, seed): read_run(folder(out, seed, name, kind)) for name in grms for seed in args.seeds}
            for kind in args.kinds}
    report(args, grms, runs, out, wall)


def report(args, grms: dict, runs: dict[str, dict], out: Path, wall: float) -> dict:
    """Write summary.md, results.json and the plot; returns the results."""
    units = [(name, seed) for name in grms for seed in args.seeds]
    first = next(iter(runs.values()))
    accuracy = {kind: {u: sum(r["final"]) / len(r["final"]) for u, r in by_unit.items()} for kind, by_unit in runs.items()}
    accuracy[FLOOR] = {u: sum(r["start"]) / len(r["start"]) for u, r in first.items()}
    n_queries = len(first[units[0]]["final"])
    label = {FLOOR: "untrained policy (floor)", **{k: KINDS[k][0] for k in runs}}
    lines = [f"Held-out checked accuracy of the policy (the share of its sampled answers with every sum right, on "
             f"{n_queries} {args.split} queries per run) over "
             f"{len(grms)} GRM run(s) x {len(args.seeds)} policy seed(s) = {len(units)} units; "
             "95% t-intervals over the units.", "",
             "## Claims", "", "| rule | difference (points) | 95% CI | units above 0 | verdict |", "|---|---:|---|---:|---|"]
    claims = []
    for rule, a, b in CLAIMS:
        if a not in accuracy or b not in accuracy:
            continue
        diffs = [accuracy[a][u] - accuracy[b][u] for u in units]
        m, lo, hi = t_interval(diffs)
        above = sum(d > 0 for d in diffs)
        claims.append({"rule": rule, "a": a, "b": b, "mean": m, "low": lo, "high": hi, "above": above,
                       "units": len(units), "verdict": verdict(lo, hi)})
        lines.append(f"| {rule} | {100 * m:+.1f} | {100 * lo:+.1f} to {100 * hi:+.1f} | {above}/{len(units)} | "
                     f"{verdict(lo, hi)} |")
    lines += ["", "## Accuracy", "",
              "| reward | final accuracy (%) | 95% CI (%) | per GRM run, mean of seeds (%) | agrees with the checker | "
              "reward time per step (s) | share of step time | step (s) | GRM parse failures |",
              "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    table = {}
    for kind in [FLOOR, *runs]:
        m, lo, hi = t_interval([accuracy[kind][u] for u in units])
        per_grm = ", ".join(f"{100 * sum(accuracy[kind][(g, s)] for s in args.seeds) / len(args.seeds):.1f}"
                            for g in grms)
        table[kind] = {"mean": m, "low": lo, "high": hi,
                       "units": {f"{g}/seed{s}": accuracy[kind][(g, s)] for g, s in units}}
        row = f"| {label[kind]} | {100 * m:.1f} | {100 * lo:.1f} - {100 * hi:.1f} | {per_grm} |"
        if kind == FLOOR:
            lines.append(row + " | | | | |")
            continue
        rows = [runs[kind][u] for u in units]

        def mean(key: str, rows=rows) -> float:
            value = _mean_known(rows, key)
            return float("nan") if value is None else value

        lines.append(row + f" {100 * mean('agreement'):.0f}% | {mean('time_reward'):.2f} | "
                     f"{100 * mean('grm_share'):.0f}% | {mean('time_step'):.2f} | {100 * mean('parse_failures'):.1f}% |")
    lines += ["", "'agrees with the checker': over a step's pairs of rollouts the checker tells apart, how often "
              "the reward orders them the same way (a tie counts half; 50% is chance).", "",
              "## By GRM run", "", "Each GRM's own held-out greedy accuracy (RL phase) and Voting@8 / MetaRM@8 on "
              "its pairs, beside what its rewards did to the policy (final minus floor, mean over seeds, points).", "",
              "| GRM run | GRM greedy (%) | GRM Voting@8 (%) | GRM MetaRM@8 (%) | "
              + " | ".join(f"{KINDS[k][0]} - floor" for k in runs) + " |",
              "|---|---:|---:|---:|" + "---:|" * len(runs)]
    for g, (grm, _) in grms.items():
        own = grm_accuracy(grm.parents[2])
        gains = [sum(accuracy[k][(g, s)] - accuracy[FLOOR][(g, s)] for s in args.seeds) / len(args.seeds) for k in runs]
        lines.append(f"| {g} | " + " | ".join("" if own.get(x) is None else f"{100 * own[x]:.1f}"
                                               for x in ("greedy", "voting8", "metarm8"))
                     + " | " + " | ".join(f"{100 * d:+.1f}" for d in gains) + " |")
    lines += ["", "## Diagnosis", "", "How the policy's training answers moved, first third of the steps -> last "
              "third (share of the step's rollouts, mean over units), and how often the reward ordered them as "
              "the checker does:", "",
              "| reward | agrees with the checker | " + " | ".join(KIND_LABELS[k] for k in ANSWER_KINDS) + " |",
              "|---|---|" + "---|" * len(ANSWER_KINDS)]
    for kind, by_unit in runs.items():
        cells = []
        for key in ("agreement", *ANSWER_KINDS):
            early, late = (_mean_known([by_unit[u]["moved"][when] for u in units], key) for when in ("early", "late"))
            cells.append("" if early is None or late is None else f"{100 * early:.0f}% -> {100 * late:.0f}%")
        lines.append(f"| {KINDS[kind][0]} | " + " | ".join(cells) + " |")
    lines += ["", "How the policy's held-out answers answer each sum, before RL -> after (share of the sums, mean "
              "over units): which values the reward taught it.", "",
              "| reward | " + " | ".join(SLIP_LABELS[k] for k in (*SLIPS, "format")) + " |",
              "|---|" + "---|" * (len(SLIPS) + 1)]
    for kind, by_unit in runs.items():
        def share(when: str, slip: str, by_unit=by_unit) -> float:
            return sum(by_unit[u]["slips"][when][slip] for u in units) / len(units)

        lines.append(f"| {KINDS[kind][0]} | " + " | ".join(
            f"{100 * share('start', k):.0f}% -> {100 * share('end', k):.0f}%" for k in (*SLIPS, "format")) + " |")
    lines += ["", "What each reward paid each kind of the policy's training answers, over all steps and units: "
              "mean reward (share of the answers). One dropped carry and one other slip have the same "
              "checked reward; a reward that pays more for one favours that error.", "",
              "| reward | " + " | ".join(KIND_LABELS[k] for k in ANSWER_KINDS) + " |",
              "|---|" + "---:|" * len(ANSWER_KINDS)]
    for kind, by_unit in runs.items():
        cells = []
        for answer in ANSWER_KINDS:
            got = [by_unit[u]["paid"].get(answer, (None, None)) for u in units]
            shares = [w for _, w in got if w is not None]
            weight = sum(w for _, w in got if w)
            value = sum(r * w for r, w in got if r is not None and w) / weight if weight else None
            cells.append("" if not shares else
                         f"{'-' if value is None else f'{value:.2f}'} ({100 * sum(shares) / len(shares):.0f}%)")
        lines.append(f"| {KINDS[kind][0]} | " + " | ".join(cells) + " |")
    lines.append(f"\nwall time of the runs {wall / 60:.1f} min")
    text = "\n".join(lines)
    print(text)
    results = {"split": args.split, "grm_runs": list(grms), "seeds": list(args.seeds), "claims": claims,
               "accuracy": table}
    (out / "summary.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(runs, accuracy[FLOOR], units, out / "policy_reward.png")
    return results


def grm_accuracy(run: Path) -> dict[str, float]:
    """A GRM run's own held-out accuracies from its results.json (empty when it has none)."""
    path = run / "results.json"
    if not path.exists():
        return {}
    res = json.loads(path.read_text())["results"]
    scaling = {(x["method"], x["k"]): x["accuracy"] for x in res.get("eval", {}).get("scaling", [])}
    return {"greedy": res.get("rl", {}).get("accuracy"), "voting8": scaling.get(("Voting", 8)),
            "metarm8": scaling.get(("MetaRM", 8))}


def plot(runs, floor: dict, units: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for kind, by_unit in runs.items():
        steps = sorted(set.intersection(*(set(by_unit[u]["curve"]) for u in units)))
        curves = [[by_unit[u]["curve"][t] for t in steps] for u in units]
        mean = [100 * sum(c[i] for c in curves) / len(curves) for i in range(len(steps))]
        low = [100 * min(c[i] for c in curves) for i in range(len(steps))]
        high = [100 * max(c[i] for c in curves) for i in range(len(steps))]
        (line,) = ax.plot(steps, mean, marker="o", label=KINDS[kind][0])
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15)
    ax.axhline(100 * sum(floor.values()) / len(floor), color="gray", linestyle="--", linewidth=1,
               label="untrained policy (floor)")
    ax.set_xlabel("policy RL step")
    ax.set_ylabel("held-out checked accuracy (%)")
    ax.set_title(f"Policy accuracy by reward (mean and range over {len(units)} GRM run x seed units)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
