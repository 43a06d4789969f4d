"""`python -m spct.train`: SPCT training, configured by Hydra (conf/), tracked in W&B.

    python -m spct.train                                   # the embedded default on CPU
    python -m spct.train experiment=quick output_dir=DIR   # the same path in a few minutes
    python -m spct.train experiment=grm-qwen2.5-7b cluster=gpu_8x data.train=... output_dir=...
    python -m spct.train -m rl.beta=0.02,0.08              # a Hydra sweep

The phases listed in `phases` run in order; rerunning with the same output_dir resumes.
"""

from __future__ import annotations

import json
import logging
import os
import time

import hydra
from omegaconf import DictConfig

from spct.config import check_paths, register_schema, to_config

log = logging.getLogger("spct")

register_schema()


def summary_table(state, wall: float) -> str:
    """The end-of-run report (Markdown): held-out greedy accuracy and time per phase, the meta
    RM's held-out ROC-AUC, and the inference-time scaling table of the eval phase."""
    lines = ["| phase | held-out accuracy | 95% CI | parse failures | items | time (s) |",
             "|---|---|---|---|---|---|"]
    for phase, res in state.results.items():
        t = state.timings.get(phase, {}).get("time/total", float("nan"))
        if "accuracy" in res:  # the GRM's greedy accuracy; for policy_rl the policy's checked accuracy
            failures = f"{res['parse_failure_rate']:.3f}" if "parse_failure_rate" in res else ""
            lines.append(f"| {phase} | {res['accuracy']:.3f} | [{res['ci_low']:.3f}, {res['ci_high']:.3f}] | "
                         f"{failures} | {res['n']} | {t:.0f} |")
        else:
            lines.append(f"| {phase} | | | | | {t:.0f} |")
    if "accuracy" in state.results.get("policy_rl", {}):
        lines.append("\npolicy_rl: the policy's held-out checked accuracy (answers with every sum right)")
    meta = state.results.get("meta_rm", {})
    if "validation_roc_auc" in meta:
        lines.append(f"\nmeta RM: held-out ROC-AUC {meta['validation_roc_auc']:.3f} on "
                     f"{meta['validation_trajectories']} trajectories "
                     f"({meta['validation_positive_rate']:.0%} correct)"
                     + (f"; on the decisive ones {meta['validation_decisive_roc_auc']:.3f}"
                        if "validation_decisive_roc_auc" in meta else ""))
    rows = state.results.get("eval", {}).get("scaling")
    if rows:
        lines += ["", "| method | k | accuracy | 95% CI | items |", "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['k']} | {r['accuracy']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
                  f"| {r['n']} |" for r in rows]
    lines.append(f"\nwall time {wall:.0f} s")
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict:
    from spct.pipeline import Pipeline

    config = to_config(cfg)
    check_paths(config)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    start = time.perf_counter()
    pipe = Pipeline(config)
    try:
        pipe.setup()
        state = pipe.run()
    finally:
        pipe.cleanup()
    wall = time.perf_counter() - start
    table = summary_table(state, wall)
    (pipe.out / "summary.md").write_text(table + "\n")
    (pipe.out / "results.json").write_text(json.dumps({"results": state.results, "timings": state.timings,
                                                       "wall_s": wall}, indent=1))
    try:
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(table))
    except ImportError:
        print(table)
    return state.results


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
