"""The GRM reward pool: vLLM engines serving a frozen GRM, sampled item by item.

`sample(items, k, temperature)` shows each item's responses in a fresh random order for every
one of its k samples and reads each sample back as a `Trajectory` (scores parsed and mapped
back to the input order), rated by the meta RM when one is given (`spct.sampler.GRMSampler.draw`).
It is the engine behind the RL pre-filter, an RFT teacher, evaluation, the HTTP reward endpoint
and a policy's reward; each votes its own way: Voting@k (`spct.grm.vote`) for the reward
server, a rescaled vote for a policy's reward (`spct.grm.reward.rollout_rewards`), the scaling
tables for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from spct.grm import load_template
from spct.grm.trajectory import Trajectory
from spct.item import Item
from spct.rollout import RolloutGroup
from spct.sampler import GRMSampler


class GRMRewardPool:
    """Item-level sampling (`sample`, `submit`) over `group`, judging with `template`; `start`
    starts a pool on engines of its own, while a pool over engines that already exist (e.g. the
    training run's rollout group) is built directly."""

    def __init__(self, group: RolloutGroup, template: str = "default", max_new_tokens: int = 1024,
                 with_reference: bool = False) -> None:
        """`with_reference`: prompts show an item's reference answer (meta.reference) when it has one."""
        self.group = group
        self.sampler = GRMSampler(group, template, max_new_tokens=max_new_tokens, with_reference=with_reference)
        self.template, self.max_new_tokens = self.sampler.template, max_new_tokens

    @classmethod
    def start(
        cls,
        model: str,
        num_engines: int = 1,
        engine_kwargs: dict[str, Any] | None = None,
        template: str = "default",
        max_new_tokens: int = 1024,
        num_cpus_per_engine: float = 1,
        num_gpus_per_engine: float = 0,
        placement_group=None,
        wait: bool = True,
        with_reference: bool = False,
        on_shutdown: Callable[[], None] | None = None,
        colocated: bool = False,
    ) -> GRMRewardPool:
        """A pool on `num_engines` new engines serving `model`. `wait=False`: return while the
        engines start (`self.group.ready()` waits); `on_shutdown` is called once its engines are
        stopped; `colocated`: its engines share learner GPUs (spct.rollout.RolloutGroup)."""
        load_template(template)  # a bad name fails before any engine starts
        group = RolloutGroup(model, num_engines, engine_kwargs, num_cpus_per_engine=num_cpus_per_engine,
                             num_gpus_per_engine=num_gpus_per_engine, placement_group=placement_group,
                             name="reward_pool", on_shutdown=on_shutdown, colocated=colocated, wait=wait)
        return cls(group, template, max_new_tokens, with_reference)

    def sample(self, items: Sequence[Item], k: int, *args: Any, **kwargs: Any) -> list[list[Trajectory]]:
        """k samples per item: `submit` with the same arguments, waited for."""
        return self.submit(items, k, *args, **kwargs)()

    def submit(self, items: Sequence[Item], k: int, *args: Any, **kwargs: Any) -> Callable[[], list[list[Trajectory]]]:
        """Start k samples per item and return at once: `spct.sampler.GRMSampler.draw`."""
        return self.sampler.draw(items, k, *args, **kwargs)

    def shutdown(self) -> None:
        self.group.shutdown()
