"""How spct's RL step time grows with prompts per step and with model size.

    python benchmarks/rl_scaling.py                                 # 8, 16, 32, 64 prompts; demo and ~20M
    python benchmarks/rl_scaling.py --sizes demo --model outputs/bench/demo-warmup/checkpoints/warmup-final/model

Each point is the real RL phase (`python -m spct.train phases=[rl] ...`, as in
benchmarks/grpo_vs_trl.py, whose settings it shares), the median step after the first. Prints
step time, samples/s and the per-step breakdown, and plots step time against prompts per step
(OUT/rl_scaling.png).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_settings(steps: int, spct_args: list[str]) -> argparse.Namespace:
    """benchmarks/grpo_vs_trl.py's settings at their defaults, but for the steps and overrides."""
    from benchmarks.grpo_vs_trl import parser

    return parser().parse_args(["--steps", str(steps), "--quiet", "--spct-args", *spct_args])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="demo,20m")
    ap.add_argument("--prompts", default="8,16,32,64")
    ap.add_argument("--model", default=None, help="a model folder to use for every size instead of building one")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "rl_scaling")
    ap.add_argument("--spct-args", nargs="*", default=[])
    ap.add_argument("--dry-run", action="store_true", help="check every configuration it would run; start nothing")
    a = ap.parse_args()

    from benchmarks.grpo_vs_trl import build_model, common_overrides, dry_run, run_spct

    settings = run_settings(a.steps, a.spct_args)
    if a.dry_run:
        configs = {}
        for size in a.sizes.split(","):
            for prompts in (int(p) for p in a.prompts.split(",")):
                settings.prompts = prompts
                model = Path(a.model) if a.model else REPO / "outputs" / "bench" / f"model-{size}"
                configs[f"{size} {prompts} prompts"] = [*common_overrides(settings, model), *a.spct_args]
        dry_run(configs, [a.model])
        return
    results: dict[str, dict[int, dict]] = {}
    for size in a.sizes.split(","):
        model = Path(a.model) if a.model else build_model(size, REPO / "outputs" / "bench", 0)
        results[size] = {}
        for prompts in (int(p) for p in a.prompts.split(",")):
            settings.prompts = prompts
            out = a.out / size / str(prompts)
            out.mkdir(parents=True, exist_ok=True)
            results[size][prompts] = run_spct(settings, model, out)
            r = results[size][prompts]
            print(f"{size} {prompts} prompts: {r['step_s']:.2f} s/step, {r['samples_per_s']:.1f} samples/s",
                  flush=True)
    (a.out / "rl_scaling.json").write_text(json.dumps(results, indent=1))

    print("\n| size | prompts/step | step (s) | samples/s | generate / reward / train / sync / idle (s) |")
    print("|---|---|---|---|---|")
    for size, by_p in results.items():
        for prompts, r in by_p.items():
            b = r["breakdown_s"]
            parts = " / ".join(f"{b[k]:.2f}" for k in ("generate", "reward", "train", "weight_sync", "idle"))
            print(f"| {size} | {prompts} | {r['step_s']:.2f} | {r['samples_per_s']:.1f} | {parts} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for size, by_p in results.items():
        ps = sorted(by_p)
        ax.plot(ps, [by_p[p]["step_s"] for p in ps], "o-", label=f"{size}: step")
        ax.plot(ps, [by_p[p]["breakdown_s"]["generate"] for p in ps], "x--", label=f"{size}: generate")
        ax.plot(ps, [by_p[p]["breakdown_s"]["train"] for p in ps], "s:", label=f"{size}: train")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompts per step (G = 4)")
    ax.set_ylabel("seconds")
    ax.set_title("spct RL step time")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(a.out / "rl_scaling.png", dpi=120)
    print(f"plot: {a.out / 'rl_scaling.png'}")


if __name__ == "__main__":
    main()
