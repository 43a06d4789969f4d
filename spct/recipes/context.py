"""What a recipe may use of the run: the `Context` each `run_<phase>(p)` receives.

The `Pipeline` implements it (its methods say what each does); a recipe sees only these
members, and tests/unit/test_layers.py checks that the recipes use nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from spct.config import Config
from spct.item import Item
from spct.run_state import RunState
from spct.sampler import GRMSampler
from spct.tracking import Timings, Tracker

if TYPE_CHECKING:
    from spct.actors import Actors
    from spct.learner import LearnerGroup

StepDone = Callable[..., None]  # done(metrics, **postfix) records a step (Pipeline.steps)


class Context(Protocol):
    # What the run holds.
    cfg: Config
    data: dict[str, list[Item]]  # the splits, by name
    general: list[Item]  # rft.general_data's items (empty without it)
    out: Path  # output_dir
    state: RunState  # what a checkpoint records; a recipe updates its own phase's part
    timings: Timings  # `with p.timings("train"): ...` sums wall time per section
    tracker: Tracker

    @property
    def tokenizer(self) -> Any: ...  # the GRM's

    # The phase loop.
    def steps(self, total: int, role: str = "model", resume: bool = True,
              desc: str | None = None) -> Iterator[tuple[int, StepDone]]: ...
    def log(self, metrics: dict[str, Any], phase: str) -> None: ...
    def checkpoint(self, final: bool, role: str = "model") -> None: ...
    def save_progress(self) -> None: ...

    # The GRM being trained: its prompts and samples (on the run's rollout group, started on
    # first use), and the push of the learner's weights to its engines.
    grm: GRMSampler
    def sync_weights(self) -> int: ...

    # Actors a phase starts: its learner (from the latest weights, with their optimizer state on
    # resume), and the rest (engine groups, GRM reward pools, meta-RM actors, weight syncs).
    def new_learner(self, lr: float, warmup_steps: int, total_steps: int, with_reference: bool,
                    task: str = "causal_lm", model: str | None = None) -> LearnerGroup: ...
    def close_learner(self) -> None: ...
    actors: Actors
