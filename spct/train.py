"""`python -m spct.train`: SPCT training, configured by Hydra (conf/), tracked in W&B.

    python -m spct.train                                   # the embedded default on CPU
    python -m spct.train experiment=quick                  # the same path in a few minutes
    python -m spct.train experiment=grm-qwen2.5-7b cluster=gpu_8x data.train=... output_dir=...
    python -m spct.train -m rl.beta=0.02,0.08              # a sweep: one folder per job
    python -m spct.train experiment=quick dry_run=true     # check the command, print the plan

The phases listed in `phases` run in order; rerunning with the same output_dir resumes (when
the configuration agrees with the run's config.yaml: spct.preflight).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from spct.config import CONF_DIR, ConfigError, load_config, register_schema

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


class RunStopped(RuntimeError):
    """An actor or a node died, or an actor could not start; the run stopped with its last
    checkpoint intact."""


def train(config) -> tuple:
    """Run the phases; on an actor fault (an engine, a learner rank, the meta RM or a node
    died) stop every actor and resume from the last checkpoint, up to
    `checkpoint.max_restarts` times, then stop cleanly saying how to resume."""
    from spct.cluster import actor_fault, start_failure
    from spct.pipeline import Pipeline

    restarts = 0
    while True:
        pipe = Pipeline(config)
        try:
            pipe.setup()
            return pipe, pipe.run()
        except Exception as e:
            fault = actor_fault(e)
            failed = start_failure(e)
            if failed:
                raise RunStopped(f"could not start {failed}\nThe same command fails the same way until "
                                 "that is fixed (no restart was tried); its checkpoints and metrics are intact in "
                                 f"{pipe.out}.") from e
            if fault is None:
                raise
            where = pipe.resume_point()
            if restarts >= config.checkpoint.max_restarts:
                raise RunStopped(
                    f"{type(fault).__name__}: {str(fault).splitlines()[0] if str(fault) else 'an actor died'}\n"
                    f"The run stopped cleanly; its checkpoints and metrics are intact in {pipe.out}. "
                    f"Rerun the same command to resume from {where} (or set checkpoint.max_restarts "
                    "to restart by itself).") from e
            restarts += 1
            log.warning("%s: an actor died; restarting from %s (restart %d of %d)", type(fault).__name__, where,
                        restarts, config.checkpoint.max_restarts)
        finally:
            pipe.cleanup()


def run(cfg: DictConfig, choices: dict | None = None, job=None) -> dict:
    """Check everything that can be checked before Ray starts (spct.config, spct.preflight),
    then train, or with dry_run=true print the plan. `choices` are Hydra's group choices and
    `job` the sweep job (spct.preflight.sweep_job), when the command has them."""
    from spct.preflight import Preflight

    pre = Preflight.check(*load_config(cfg), choices or {}, job)
    if pre.config.dry_run:
        print(pre.plan())
        return {}
    pre.begin()
    config = pre.config
    if pre.state is not None and config.checkpoint.resume != "fresh" and set(config.phases) <= set(pre.state.completed):
        # A finished run asked again: its results, without starting Ray or a single actor.
        out = Path(config.output_dir)
        log.info("%s: every phase of this command is already complete (%s); nothing to run", out,
                 ", ".join(config.phases))
        if (out / "summary.md").exists():
            show((out / "summary.md").read_text())
        return pre.state.results
    start = time.perf_counter()
    pipe, state = train(config)
    wall = time.perf_counter() - start
    table = summary_table(state, wall)
    (pipe.out / "summary.md").write_text(table + "\n")
    (pipe.out / "results.json").write_text(json.dumps({"results": state.results, "timings": state.timings,
                                                       "wall_s": wall}, indent=1))
    show(table)
    return state.results


def show(table: str) -> None:
    """A Markdown summary on the terminal (rendered where rich is installed)."""
    try:
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(table))
    except ImportError:
        print(table)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from spct.preflight import sweep_job

    try:
        run(cfg, dict(HydraConfig.get().runtime.choices), sweep_job(sys.argv[1:]))
    except (ConfigError, RunStopped) as e:
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
