"""The run's actors: engine groups, GRM reward pools, meta-RM actors and learner groups, started
on the run's placement group.

`Actors` turns config sections into each actor's arguments and Ray options, and keeps the
books: which places of the placement group an actor holds (`spct.placement.Bundles`, so that
no actor waits on a place another one holds), where each actor reports it runs
(`spct.placement.Whereabouts`, checked against the plan at each phase end), and which actors a
phase started for the rest of the run (`owned`: stopped at `close`). It knows nothing of
the run's phases or checkpoints; `spct.pipeline.Pipeline` holds one and the recipes reach it as
`p.actors`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spct.config import Config, engine_kwargs, grm_settings

if TYPE_CHECKING:
    from spct.learner import LearnerGroup, LearnerSpec
    from spct.reward_pool import GRMRewardPool
    from spct.rollout import RolloutGroup
    from spct.weight_sync import WeightSync

log = logging.getLogger("spct")


class Actors:
    """Starts the run's actors. `phase()` names the running phase (each actor's report is filed
    under it); `make_room()` is called before a pool takes the rollout engines' places (the run
    stops its own engines then). Without `reserve`, actors start with no placement group."""

    def __init__(self, config: Config, phase: Callable[[], str | None],
                 make_room: Callable[[str], None] = lambda who: None) -> None:
        self.cfg, self.phase, self.make_room = config, phase, make_room
        self.layout = None  # where the engines and learner ranks go (spct.placement.layout)
        self.placement = None  # their placement group, reserved by `reserve`
        self.bundles = None  # who holds which place of it (spct.placement.Bundles)
        self.whereabouts = None  # where each actor runs, as it reports it (spct.placement.Whereabouts)
        self._owned: list[Callable[[], None]] = []

    def reserve(self, report: Path) -> None:
        """Reserve the placement group of the config's layout, warn when the live nodes' host
        memory looks short (GPU clusters), and write each actor's whereabouts to `report`."""
        from spct.placement import (
            Bundles,
            Whereabouts,
            actor_plan,
            layout,
            placement_report,
            reserve,
        )

        cfg = self.cfg
        self.layout = layout(cfg)
        self.placement = reserve(self.layout)
        self.bundles = Bundles()
        if cfg.cluster.num_gpus:
            from spct.memory import host_check, host_need
            from spct.placement import live_nodes

            warning = host_check(host_need(cfg), live_nodes())
            if warning:
                log.warning("%s", warning)
        self.whereabouts = Whereabouts(report, placement_report(self.layout, self.placement),
                                       actor_plan(cfg, self.layout), self.placement)

    # ---------------------------------------------------------------- the books
    def _take(self, place: str, indices, who: str) -> Callable[[], None]:
        """Hold a place in the placement group for `who` (spct.placement.Bundles); returns the
        function that gives it back (nothing to hold without a placement group, or for no bundles:
        an actor beside the group)."""
        if self.bundles is None:
            return lambda: None
        return self.bundles.take(place, list(indices), who)

    def _started(self, build: Callable[[Callable[[], None]], Any], give_back: Callable[[], None]) -> Any:
        """`build(give_back)`, giving the places back when it fails."""
        try:
            return build(give_back)
        except BaseException:
            give_back()
            raise

    def _watch(self, roles: list[str], actors) -> None:
        """Ask `actors` where they run, to check against the plan (spct.placement.actor_plan)."""
        if self.whereabouts is not None:
            self.whereabouts.watch(self.phase(), roles, actors)

    def _gpus(self, n: int) -> float:
        """GPUs an engine or a learner rank of the placement group asks Ray for."""
        return self.cfg.cluster.gpus(n, shared=self.cfg.rollout.colocate)

    def _engine_places(self, n: int) -> list[int]:
        return [b for i in range(n) for b in self.layout.engine_indices(i)] if self.bundles is not None else []

    def own(self, close: Callable[[], None]) -> None:
        """Call `close()` at `close` (actors a phase started for the rest of the run)."""
        self._owned.append(close)

    # ---------------------------------------------------------------- actors
    def engines(self, model: str, name: str = "rollout", owned: bool = False, wait: bool = True) -> RolloutGroup:
        """A vLLM engine group serving `model` with the run's rollout settings; `owned` ones
        are shut down with the run. `wait=False` returns while the engines start, unless they
        share GPUs with the learner (rollout.colocate: they must be asleep before it loads)."""
        from spct.rollout import RolloutGroup

        r = self.cfg.rollout
        group = self._started(lambda give_back: RolloutGroup(
            model, num_engines=r.num_engines, engine_kwargs=engine_kwargs(self.cfg.model, r, self.cfg.seed),
            num_cpus_per_engine=r.num_cpus_per_engine, num_gpus_per_engine=self._gpus(r.tensor_parallel_size),
            name=name, placement_group=self.placement, colocated=r.colocate, on_shutdown=give_back,
            wait=wait or r.colocate), self._take("engine", self._engine_places(r.num_engines), f"{name} engines"))
        self._watch([f"{name} engine {i}" for i in range(r.num_engines)], group.engines)
        if owned:
            self.own(group.shutdown)
        return group

    def weight_sync(self, group: RolloutGroup) -> WeightSync:
        """How a learner's weights reach `group`: NCCL from learner rank 0's GPU on a GPU
        cluster, else the Ray object store."""
        from spct.weight_sync import make_weight_sync

        broadcast = self.cfg.cluster.gpus(1) and not self.cfg.rollout.colocate
        return make_weight_sync("broadcast" if broadcast else "ray", group)

    def grm_pool(self, model: str, role: str, single: bool = False, num_engines: int | None = None,
                 owned: bool = False, wait: bool = True, in_group: bool = False) -> GRMRewardPool:
        """A GRM reward pool (`role` names it) serving the frozen GRM `model` with the run's engine
        settings and the GRM's own (what its checkpoint's card records: spct.config.grm_settings),
        judging with its template (its single-response one if `single`); an `owned` one is shut
        down with the run; `wait=False` returns while its engines start.

        `in_group`: its engines take the rollout engines' bundles, for a pool that samples while
        no learner runs (an RFT teacher, the RL pre-filter); `make_room` stops the GRM's own
        engines first (they start again, with the latest weights, at their next use). Else it
        runs beside the group (the layout counts it: spct.placement.layout)."""
        from spct.reward_pool import GRMRewardPool

        r, m = self.cfg.rollout, grm_settings(model, self.cfg.model)
        n = r.num_engines if in_group else (num_engines or r.num_engines)
        placement = self.placement if in_group else None
        if placement is not None:
            self.make_room(role)
        give_back = self._take("engine", self._engine_places(n) if placement is not None else [], f"{role} engines")
        pool = self._started(lambda give_back: GRMRewardPool.start(
            model, n, engine_kwargs(m, r, self.cfg.seed), template=m.single_template if single else m.template,
            max_new_tokens=m.max_new_tokens, num_cpus_per_engine=r.num_cpus_per_engine,
            num_gpus_per_engine=(self._gpus if placement else self.cfg.cluster.gpus)(r.tensor_parallel_size),
            placement_group=placement, on_shutdown=give_back, colocated=placement is not None and r.colocate,
            wait=wait), give_back)
        self._watch([f"{role} engine {i}" for i in range(n)], pool.group.engines)
        if owned:
            self.own(pool.shutdown)
        return pool

    def meta_scorer(self, path: str, owned: bool = False) -> tuple[Callable, Callable[[], None]]:
        """A meta-RM actor on `path` with the input length, dtype and input template its card
        records (else meta_rm.max_length, the run's dtype and the default framing), the run's
        threads and a GPU of its own on a GPU cluster: (a function scoring trajectories, the
        function that stops the actor; an `owned` one is stopped with the run). Where it runs is
        the plan's (spct.placement.meta_rm_bundle): learner rank 0's place in the meta_rm and
        eval phases, beside the group in the policy phases."""
        import ray

        from spct.config import MetaRMRef, resolve_meta_rm
        from spct.meta_rm import meta_scorer
        from spct.placement import in_bundle, meta_rm_bundle

        ref = MetaRMRef(path=path)
        resolve_meta_rm(ref, self.cfg.model.dtype, self.cfg.meta_rm.max_length)
        bundle = meta_rm_bundle(self.layout, self.phase()) if self.placement is not None else None
        options = in_bundle(self.placement, bundle) if bundle is not None else {}
        give_back = self._take("learner", [bundle] if bundle is not None else [], "the meta RM")
        score, actor = self._started(lambda _: meta_scorer(
            path, ref.dtype, ref.max_length, self.cfg.learner.num_threads, num_gpus=self._gpus(1),
            input_template=ref.input_template, **options), give_back)
        self._watch(["meta RM" if bundle is not None else "policy meta RM"], [actor])

        def stop() -> None:
            ray.kill(actor)
            give_back()

        if owned:
            self.own(stop)
        return score, stop

    def learner(self, spec: LearnerSpec) -> LearnerGroup:
        """A learner group of `learner.num_ranks` ranks built from `spec`, on the layout's ranks."""
        from spct.learner import LearnerGroup

        lc = self.cfg.learner
        ranks = self.layout.rank_indices if self.placement is not None else None
        group = self._started(lambda give_back: LearnerGroup(
            lc.num_ranks, spec, num_cpus_per_rank=lc.num_cpus_per_rank, num_gpus_per_rank=self._gpus(1),
            placement_group=self.placement, bundle_indices=ranks, on_shutdown=give_back),
            self._take("learner", ranks or [], "the learner"))
        self._watch([f"learner rank {r}" for r in range(lc.num_ranks)], group.workers)
        return group

    # ---------------------------------------------------------------- the end
    def flush(self) -> None:
        """Write where each actor started so far runs (placement.json)."""
        if self.whereabouts is not None:
            self.whereabouts.flush()

    def closers(self) -> list[Callable[[], None]]:
        """What stops the owned actors, newest first, then removes the placement group (the
        books are emptied now; `flush` still writes the whereabouts)."""
        out = list(reversed(self._owned))
        if self.placement is not None:
            out.append(self.placement.remove)
        self._owned, self.placement, self.bundles = [], None, None
        return out
