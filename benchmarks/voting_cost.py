"""What Voting@k costs: k shuffled GRM samples per item through the reward pool, as time(k) / time(1).

    python benchmarks/voting_cost.py --model outputs/spct-default/checkpoints/rl-final/model
    python benchmarks/voting_cost.py --model M --overrides rollout.block_size=128 rollout.num_threads=1   # vLLM's CPU defaults

The items are the synthetic task's test split, sent as `spct.evaluate` sends a benchmark: all
items times k samples in one `GRMRewardPool.sample` call (each sample shows the responses in a
fresh random order), through a real Ray actor running the vLLM engine with the embedded
default's engine settings (conf/rollout/cpu.yaml) and any spct.train overrides given. Each k
is timed twice after a warm-up call and the faster run kept. Prints the table and writes
OUT/voting_cost.json and OUT/voting_cost.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOALS = {8: 2.5, 32: 6.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a GRM folder (a checkpoint's model/ folder)")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--ks", default="1,2,4,8,16,32")
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--overrides", nargs="*", default=[], help="spct.train overrides, e.g. rollout.block_size=128")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "voting_cost")
    ap.add_argument("--dry-run", action="store_true", help="check the configuration and the model; start nothing")
    a = ap.parse_args()

    from benchmarks.grpo_vs_trl import compose, dry_run

    if a.dry_run:
        dry_run({"pool": [f"model.path={a.model}", f"data.test_size={a.items}", *a.overrides]}, [a.model])
        return
    from spct.cluster import init_ray
    from spct.config import engine_kwargs
    from spct.data import load_splits
    from spct.reward_pool import GRMRewardPool

    cfg = compose([f"model.path={a.model}", f"data.test_size={a.items}", *a.overrides])
    items = load_splits(seed=cfg.seed, splits=("test",), **dataclasses.asdict(cfg.data))["test"]
    kwargs = engine_kwargs(cfg.model, cfg.rollout, cfg.seed)
    init_ray(None, cfg.cluster.num_cpus, 0)
    pool = GRMRewardPool.start(a.model, 1, kwargs, template=cfg.model.template,
                         max_new_tokens=cfg.model.max_new_tokens, num_cpus_per_engine=1)
    pool.sample(items[:32], 2, temperature=a.temperature)  # warm-up

    ks = [int(k) for k in a.ks.split(",")]
    times = {}
    for k in ks:
        runs = []
        for rep in range(2):
            start = time.perf_counter()
            pool.sample(items, k, temperature=a.temperature, seed=rep)
            runs.append(time.perf_counter() - start)
        times[k] = min(runs)
        print(f"k={k:>2}: {times[k]:.2f} s ({len(items) * k} samples)", flush=True)
    pool.shutdown()

    base = times[ks[0]]
    a.out.mkdir(parents=True, exist_ok=True)
    rows = [{"k": k, "seconds": times[k], "ratio": times[k] / base, "goal": GOALS.get(k)} for k in ks]
    (a.out / "voting_cost.json").write_text(json.dumps(
        {"items": len(items), "engine": kwargs, "rows": rows}, indent=1, default=str))
    print(f"\nVoting@k through the reward pool, {len(items)} items, engine {kwargs}")
    print("| k | wall (s) | time(k) / time(1) | goal |")
    print("|---|---|---|---|")
    for r in rows:
        goal = f"<= {r['goal']}x" if r["goal"] else ""
        print(f"| {r['k']} | {r['seconds']:.2f} | {r['ratio']:.2f}x | {goal} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, [r["ratio"] for r in rows], "o-", label="spct reward pool")
    ax.plot(ks, ks, ":", color="grey", label="linear in k")
    ax.scatter(list(GOALS), list(GOALS.values()), marker="v", color="red", label="goal")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("k (samples per item)")
    ax.set_ylabel("time(k) / time(1)")
    ax.set_title(f"Voting@k cost, {len(items)} items")
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.out / "voting_cost.png", dpi=120)
    print(f"plot: {a.out / 'voting_cost.png'}")


if __name__ == "__main__":
    main()
