"""Metrics: a JSONL file always, W&B when enabled (offline automatically without an API key).

One global step counts across phases so W&B charts stay monotonic; every record also carries
its phase and the phase's own step.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spct.files import write_atomic

log = logging.getLogger("spct")


def _wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class Tracker:
    def __init__(
        self,
        output_dir: str | Path,
        kind: str = "wandb",
        project: str = "spct",
        entity: str | None = None,
        run_name: str | None = None,
        mode: str = "auto",
        config: dict[str, Any] | None = None,
        run_id: str | None = None,
        resume_step: int | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        resume_phase: str | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._roll_back(resume_step, resume_phase)
        self._jsonl = open(self.output_dir / "metrics.jsonl", "a", buffering=1)
        self._wandb = None
        self.run_id = run_id
        if kind == "wandb":
            import wandb

            resolved = _wandb_mode(mode)
            self._wandb = wandb.init(
                project=project,
                entity=entity,
                name=run_name,
                group=group,
                tags=tags,
                dir=str(self.output_dir),
                mode=resolved,
                id=run_id,
                resume="allow",
                config=config,
            )
            self.run_id = self._wandb.id
            log.info("W&B run %s (%s mode) in %s", self.run_id, resolved, self.output_dir / "wandb")

    def _roll_back(self, step: int, phase: str | None = None) -> None:
        """Resuming from a checkpoint at global `step`: records logged after it (their steps
        run again) move from metrics.jsonl to metrics.rolled_back.jsonl, so each step appears
        once in metrics.jsonl and nothing logged is lost. (W&B keeps its first record of a step.)
        With `phase`, the phase the checkpoint is in: its held-out evaluation (`eval/*`) at
        `step` came after a phase-final checkpoint and runs again too."""
        path = self.output_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep, later = [], []
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                record = json.loads(line)
                after = record["step"] > step or (
                    phase is not None and record["step"] == step and record["phase"] == phase
                    and any(k.startswith("eval/") for k in record))
            except (ValueError, KeyError, TypeError):  # a line cut short by the crash
                after = True
            (later if after else keep).append(line)
        if later:
            with open(self.output_dir / "metrics.rolled_back.jsonl", "a", encoding="utf-8") as f:
                f.write("".join(x if x.endswith("\n") else x + "\n" for x in later))
            write_atomic(path, "".join(keep))
            log.info("resuming at step %d: %d metrics records logged after it moved to %s", step, len(later),
                     self.output_dir / "metrics.rolled_back.jsonl")

    def log(self, metrics: dict[str, Any], step: int, phase: str, phase_step: int | None = None) -> None:
        record = {"step": step, "phase": phase, "phase_step": phase_step, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(record, default=float) + "\n")
        if self._wandb is not None:
            self._wandb.log({f"{phase}/{k}": v for k, v in metrics.items()}, step=step)

    def log_image(self, key: str, path: str | Path, step: int) -> None:
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Image(str(path))}, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def finish(self) -> None:
        self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()


class Timings:
    """Wall time per named section (generate, reward, train, weight_sync), summed per phase."""

    def __init__(self) -> None:
        self.phase: dict[str, float] = defaultdict(float)
        self.since_lap: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - start
            self.phase[name] += took
            self.since_lap[name] += took

    def lap(self) -> dict[str, float]:
        """Seconds per section since the previous lap (one training step, say)."""
        out = {f"time/{k}": round(v, 4) for k, v in self.since_lap.items()}
        self.since_lap.clear()
        return out

    def pop(self) -> dict[str, float]:
        """Seconds per section over the whole phase; starts the next phase at zero."""
        out = {f"time/{k}": round(v, 4) for k, v in self.phase.items()}
        self.phase.clear()
        self.since_lap.clear()
        return out
