"""What a run records to resume, and where: `RunState` and the checkpoint folder it points into.

`RunStore` keeps output_dir/checkpoints/: state.json (the run's state, replaced atomically, its
paths inside output_dir relative to it, so a run folder can be copied or moved),
one folder per checkpoint (weights, optimizer state unless final, and a `run_state.json`
snapshot of the state that resuming from it needs), the check that what state.json points at
is whole, the fall-back to the newest whole snapshot, and the pruning of old step checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from spct.files import write_atomic

log = logging.getLogger("spct")
# The folder, inside a learner state checkpoint, that DeepSpeed's save_checkpoint writes (its tag).
CHECKPOINT_TAG = "learner"


def _counts() -> dict[str, int]:
    return dict.fromkeys(("samples", "kept", "too_easy", "all_wrong", "hinted", "hinted_kept", "parse_failures"), 0)


@dataclasses.dataclass
class RFTProgress:
    """How far RFT's sampling got: every sample before `lines` is on disk and counted."""

    items_done: int = 0
    lines: int = 0  # lines of rft/trajectories.jsonl recorded (a crash may leave more)
    sampling_done: bool = False
    counts: dict[str, int] = dataclasses.field(default_factory=_counts)


@dataclasses.dataclass
class RunState:
    """What a checkpoint records besides the weights, enough to resume the run."""

    completed: list[str] = dataclasses.field(default_factory=list)
    phase: str | None = None
    phase_step: int = 0
    global_step: int = 0
    weight_version: int = 0
    model: str | None = None  # HF folder of the latest weights
    learner_state: str | None = None  # DeepSpeed checkpoint of an unfinished phase
    meta_rm: str | None = None  # HF folder of the trained meta RM
    policy: str | None = None  # HF folder of the latest policy weights (policy phases)
    policy_version: int = 0
    phase_start: str | None = None  # HF folder the running phase's learner started from: its KL reference
    wandb_run_id: str | None = None
    results: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    timings: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    rft: RFTProgress = dataclasses.field(default_factory=RFTProgress)

    def start_phase(self, phase: str | None) -> None:
        """At step 0 of `phase` (None: between phases), with nothing of another phase's."""
        self.phase, self.phase_step, self.learner_state, self.phase_start = phase, 0, None, None
        self.rft = RFTProgress()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        d = dict(d)
        rft = d.pop("rft", None) or d.pop("extra", None) or {}  # "extra": state files before RFTProgress
        return cls(**d, rft=RFTProgress(**rft))


# The fields that name a checkpoint or model folder. One inside output_dir is stored relative to
# it ("./checkpoints/rl-final/model"), so a copied or moved run reads its own files; a local
# folder outside it is stored absolute, a hub id as given.
PATH_FIELDS = ("model", "learner_state", "meta_rm", "policy", "phase_start")
_HERE = "./"


class CheckpointError(RuntimeError):
    """A run cannot resume: the checkpoints it points at are broken and none is whole."""


class RunStore:
    def __init__(self, ckpt_dir: Path) -> None:
        self.dir = ckpt_dir
        self.path = ckpt_dir / "state.json"
        self.fell_back = False  # the last read() took a snapshot for an unreadable state.json

    def write(self, state: RunState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, self.encode(state))

    def encode(self, state: RunState) -> str:
        """`state` as state.json holds it, with portable paths (PATH_FIELDS)."""
        d = dataclasses.asdict(state)
        root = self.dir.parent.resolve()
        for key in PATH_FIELDS:
            path = d[key]
            if path and (os.path.isabs(path) or os.path.exists(path)):
                full = Path(path).resolve()
                d[key] = _HERE + full.relative_to(root).as_posix() if full.is_relative_to(root) else str(full)
        return json.dumps(d, indent=1)

    def _parse(self, file: Path) -> RunState:
        d = json.loads(file.read_text())
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        for key in PATH_FIELDS:
            if isinstance(d.get(key), str) and d[key].startswith(_HERE):
                d[key] = os.path.abspath(self.dir.parent / d[key][len(_HERE):])
        return RunState.from_dict(d)

    def read(self) -> RunState | None:
        """The recorded state (None for a new run), its checkpoints unchecked. A state.json that
        does not parse gives the newest snapshot that does (every checkpoint folder holds one),
        with a warning naming both; CheckpointError when none does."""
        self.fell_back = False
        if not self.path.exists():
            return None
        try:
            return self._parse(self.path)
        except (ValueError, TypeError) as e:
            damage = f"{self.path} is unreadable ({type(e).__name__}: {e})"
        for snapshot in self._snapshots():
            try:
                state = self._parse(snapshot)
            except (ValueError, TypeError):
                continue
            log.warning("%s; using the newest readable snapshot, %s", damage, snapshot)
            self.fell_back = True
            return state
        raise CheckpointError(f"{damage} and no checkpoint folder in {self.dir} holds a readable run_state.json."
                              f"\nDelete {self.dir.parent} (or choose another output_dir) to start over.")

    def _snapshots(self) -> list[Path]:
        return sorted(self.dir.glob("*/run_state.json"), key=lambda p: p.stat().st_mtime, reverse=True)

    def load(self) -> RunState | None:
        """The recorded state (None for a new run), or the newest whole snapshot when what it
        points at is broken; CheckpointError when none is whole. What it resumes from is
        written back to state.json."""
        state = self.read()
        if state is None:
            return None
        missing = self.missing_outside(state)
        if missing:
            raise CheckpointError(
                f"{self.path} names local folders outside the run folder that do not exist (moved or deleted?):\n  "
                + "\n  ".join(missing) + "\nPut them back where they were to resume this run.")
        problems = self.problems(state)
        if not problems:
            if self.fell_back:  # from an unreadable state.json
                self.write(state)
            return state
        for snapshot in self._snapshots():
            try:
                earlier = self._parse(snapshot)
            except (ValueError, TypeError):
                continue
            if not self.problems(earlier):
                log.warning("the latest checkpoint is broken (%s); resuming from %s instead", "; ".join(problems),
                            snapshot.parent)
                self.write(earlier)
                return earlier
        raise CheckpointError(
            f"{self.path} points at broken checkpoints and no earlier one is whole:\n  " + "\n  ".join(problems)
            + f"\nDelete {self.dir.parent} (or choose another output_dir) to start over.")

    def save(self, name: str, state: RunState, write_weights, role: str, final: bool) -> None:
        """Checkpoint `name`: `write_weights(folder, with_optimizer)` fills it, the state points at
        it as the latest `role` ("model", "policy" or "meta_rm"). Atomic: written under a
        temporary name with its run_state.json, renamed, and only then named in state.json; a
        crash mid-save leaves the previous checkpoint in use."""
        folder = self.dir / name
        partial = self.dir / f".partial-{name}"
        shutil.rmtree(partial, ignore_errors=True)
        write_weights(partial, not final)
        setattr(state, role, str(folder / "model"))
        state.learner_state = None if final else str(folder / "learner")
        (partial / "run_state.json").write_text(self.encode(state))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
        self.write(state)

    def problems(self, state: RunState) -> list[str]:
        """What is broken among the checkpoints `state` points at (paths outside the folder,
        such as a base model or a hub id, are not the run's to check)."""
        found = []
        for key, kind in (("model", "hf"), ("policy", "hf"), ("meta_rm", "hf"), ("phase_start", "hf"),
                          ("learner_state", "learner")):
            path = getattr(state, key)
            if path and Path(path).resolve().is_relative_to(self.dir.resolve()):
                problem = checkpoint_problem(path, kind)
                if problem:
                    found.append(f"{key} {path}: {problem}")
        return found

    def missing_outside(self, state: RunState) -> list[str]:
        """Stored local paths outside the run folder (a base model, a GRM from another run) that
        are gone; a hub id (not an absolute path) is not checked here."""
        inside = self.dir.parent.resolve()
        return [f"{key} {path}" for key in PATH_FIELDS
                if (path := getattr(state, key)) and Path(path).is_absolute()
                and not Path(path).resolve().is_relative_to(inside) and not Path(path).exists()]

    def prune(self, state: RunState, keep: int) -> None:
        """Drop old step checkpoints; phase-final ones and the ones in use stay."""
        in_use = {Path(p).parent for p in (state.model, state.policy, state.learner_state, state.phase_start) if p}
        steps = sorted(p for p in self.dir.glob("*-step*") if p.is_dir() and p not in in_use)
        for old in steps[: max(0, len(steps) - keep)]:
            shutil.rmtree(old, ignore_errors=True)


def checkpoint_problem(path: str | os.PathLike[str], kind: str = "hf") -> str | None:
    """What is wrong with a saved checkpoint folder, or None when it looks whole.

    kind "hf": a Hugging Face folder (config.json that parses; every *.safetensors file as long
    as its header says). kind "learner": a `save_state` folder (the tagged folder, no empty
    file, every *.pt file a whole archive, as torch.load needs: its directory at the end reads
    and every entry lies inside the file). Reads headers and directories only, so it is quick
    even for large models."""
    import json
    import struct

    folder = os.fspath(path)
    if not os.path.isdir(folder):
        return "missing"
    if kind == "learner":
        tagged = os.path.join(folder, CHECKPOINT_TAG)
        files = [os.path.join(tagged, f) for f in os.listdir(tagged)] if os.path.isdir(tagged) else []
        if not files:
            return f"no DeepSpeed state in {CHECKPOINT_TAG}/"
        empty = [f for f in files if os.path.isfile(f) and os.path.getsize(f) == 0]
        if empty:
            return f"{os.path.basename(empty[0])} is empty"
        return next(filter(None, (_archive_problem(f) for f in sorted(files) if f.endswith(".pt"))), None)
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as e:
        return f"config.json unreadable ({type(e).__name__})"
    weights = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not weights:
        return "no *.safetensors weights"
    for name in weights:
        file = os.path.join(folder, name)
        size = os.path.getsize(file)
        try:
            with open(file, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length)) if 8 + length <= size else None
        except (OSError, ValueError, struct.error):
            header = None
        if header is None:
            return f"{name} is truncated (no whole header)"
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if size < 8 + length + end:
            return f"{name} is truncated ({size} of {8 + length + end} bytes)"
    return None


def _archive_problem(file: str) -> str | None:
    """What keeps torch.load from reading a torch.save file (a zip archive), or None."""
    import zipfile

    name, size = os.path.basename(file), os.path.getsize(file)
    try:
        with zipfile.ZipFile(file) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return f"{name} is not a whole archive (truncated?)"
    if any(e.header_offset + e.compress_size > size for e in entries):
        return f"{name} is truncated"
    return None
