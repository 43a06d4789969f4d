"""What a recipe may use of the run: the `Context` each `run_<phase>(p)` receives.

The `Pipeline` implements it; a recipe sees only these members (tests/unit/test_layers.py
checks that the recipes use nothing else), so a phase can be read, and a new one written,
against this page alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from spct.config import Config
from spct.grm.trajectory import Shown, Trajectory
from spct.item import Item
from spct.run_state import RunState
from spct.tracking import Timings, Tracker

if TYPE_CHECKING:
    from spct.learner import LearnerGroup
    from spct.reward_pool import GRMRewardPool
    from spct.rollout import Pending, RolloutGroup
    from spct.weight_sync import WeightSync

StepDone = Callable[..., None]  # done(metrics, **postfix): records the step (see Context.steps)


class Context(Protocol):
    # ------------------------------------------------------------ what the run holds
    cfg: Config
    data: dict[str, list[Item]]  # the splits, by name
    out: Path  # output_dir
    state: RunState  # what a checkpoint records; a recipe updates its own phase's part
    timings: Timings  # `with p.timings("train"): ...` sums wall time per section
    tracker: Tracker

    @property
    def tokenizer(self) -> Any:
        """The GRM's tokenizer."""

    # ------------------------------------------------------------ the phase loop
    def steps(self, total: int, role: str = "model", resume: bool = True,
              desc: str | None = None) -> Iterator[tuple[int, StepDone]]:
        """The phase's steps from where a resumed run stopped, each with its `done`."""

    def log(self, metrics: dict[str, Any], phase: str) -> None:
        """One metrics line outside the step loop."""

    def checkpoint(self, final: bool, role: str = "model") -> None:
        """Save the learner's weights as the run's latest `role` ("model", "policy", "meta_rm")."""

    def save_progress(self) -> None:
        """Record `state` now (progress that is not a checkpoint)."""

    # ------------------------------------------------------------ the GRM's rollout
    @property
    def rollout(self) -> RolloutGroup:
        """The GRM's engines, holding the latest GRM weights."""

    def show(self, item: Item, order: list[int], hint: bool = False, training: bool = True) -> Shown:
        """The GRM prompt of `item` with its responses in `order`."""

    def sample(self, shown: list[Shown], key: str, n: int = 1, temperature: float = 1.0,
               group: RolloutGroup | None = None) -> list[list[Trajectory]]:
        """n GRM samples of each prompt, read back; `key` names the draw (its seed)."""

    def submit(self, prompts: list[str], key: str, n: int = 1, temperature: float = 1.0,
               group: RolloutGroup | None = None) -> Pending:
        """Sampling without waiting: `.result()` waits."""

    def sync_weights(self) -> int:
        """Push the learner's weights to the GRM's engines; returns the new version."""

    # ------------------------------------------------------------ actors a phase starts
    def new_learner(self, lr: float, warmup_steps: int, total_steps: int, with_reference: bool,
                    task: str = "causal_lm", model: str | None = None) -> LearnerGroup:
        """The phase's learner group (replacing any earlier one), resumed if the phase was."""

    def close_learner(self) -> None:
        """Stop the learner group."""

    def engines(self, model: str, name: str = "rollout", owned: bool = False) -> RolloutGroup:
        """Another vLLM engine group (e.g. the policy's); `owned` ones stop with the run."""

    def weight_sync(self, group: RolloutGroup) -> WeightSync:
        """How a learner's weights reach `group`."""

    def grm_pool(self, model: str, template: str, num_engines: int | None = None,
                 owned: bool = False) -> GRMRewardPool:
        """A reward pool serving the frozen GRM `model`."""

    def meta_scorer(self, path: str, max_length: int, owned: bool = False) -> tuple[Callable, Any]:
        """(a function scoring trajectories, its actor) for the meta RM at `path`."""

