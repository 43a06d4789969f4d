"""Where a run's actors go: one placement group holds the rollout engines and the learner ranks.

The group is reserved once, before any actor starts, with the strategy of the cluster preset
(`cluster.placement_strategy`: PACK fills as few nodes as possible, SPREAD puts bundles on as
many nodes as it can, STRICT_PACK / STRICT_SPREAD insist). A bundle holds at most one GPU, as
vLLM's Ray executor requires of the group its workers join: an engine of tensor-parallel size t
takes t consecutive bundles, one per TP worker (engine i: bundles i*t .. i*t+t-1; the engine actor
itself sits on the first with its CPUs and no GPU). Learner rank r takes the bundle after the
engines' (`rank_indices[r]`), and the learner's rendezvous address is rank 0's node.
The policy phase's GRM reward pool and meta RM run beside the group, on what the cluster has
left. Engines that only sample before a learner starts (an RFT teacher, the RL pre-filter)
take the rollout engines' bundles while the GRM's own engines step aside; the meta RM of the
meta_rm and eval phases, when no learner runs, takes learner rank 0's place
(`meta_rm_bundle`). Before anything starts, the run checks that the whole of it fits the
cluster's live nodes and names what is missing.

Every actor of the run that goes into the group takes its place in a `Bundles` ledger first:
one engine and one learner place per bundle, one holder each. Taking a place another actor of
the run holds raises at once, so a run can never wait on a bundle one of its own actors holds.

Every actor reports where it runs (`here`: its node, its bundle, its GPUs); `Whereabouts`
checks that against the bundle the plan gave it and lists it in output_dir/placement.json.

`Layout`, `shortfall`, `Bundles` and `bundle_of` are plain logic (tested without Ray);
`reserve`, `here` and `Whereabouts` talk to Ray.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger("spct")

Bundle = Mapping[str, float]


class ClusterError(RuntimeError):
    """The cluster cannot hold what the run asks for."""


class BundleTaken(RuntimeError):
    """An actor of the run asked for a place in the placement group that another actor of the
    same run holds: it would wait forever, so the run stops at once, naming both."""


class PlacementLost(RuntimeError):
    """A node holding bundles of the run's placement group died: actors waiting for those
    bundles would wait forever. A fault, like an actor's death (spct.cluster.actor_fault)."""


class Placement:
    """The run's placement groups, their bundles numbered as `Layout` numbers them: one group
    when every engine has one GPU; with tensor-parallel engines, one STRICT_PACK group per
    engine (its workers' bundles on one node, which Ray's PACK over one large group does not
    keep together) and one for the learner ranks, with the preset's strategy."""

    def __init__(self, groups: Sequence[Any], sizes: Sequence[int]) -> None:
        self.groups = list(groups)
        self.starts = [sum(sizes[:g]) for g in range(len(sizes))]
        self.sizes = list(sizes)

    def locate(self, index: int) -> tuple[Any, int]:
        """(the group, the bundle's index in it) of the run's bundle `index`."""
        for pg, start, size in zip(self.groups, self.starts, self.sizes, strict=True):
            if start <= index < start + size:
                return pg, index - start
        raise IndexError(f"bundle {index}: the run has {sum(self.sizes)}")

    def index(self, group_id: str | None, bundle: int | None) -> int | None:
        """The run's number of bundle `bundle` of the group with id `group_id` (None: not ours)."""
        starts = {pg.id.hex(): start for pg, start in zip(self.groups, self.starts, strict=True)}
        return None if bundle is None or group_id not in starts else starts[group_id] + bundle

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for pg in self.groups:
            remove_placement_group(pg)


def locate(placement, index: int) -> tuple[Any, int]:
    """(placement group, index in it) of bundle `index` of a `Placement` or of one group."""
    return placement.locate(index) if isinstance(placement, Placement) else (placement, index)


def placed(placement) -> bool:
    """Whether every bundle of `placement` (a `Placement` or one group) is on a live node (Ray
    reschedules those of a dead one)."""
    from ray.util.placement_group import placement_group_table

    groups = placement.groups if isinstance(placement, Placement) else [placement]
    return all(placement_group_table(pg).get("state") == "CREATED" for pg in groups)


def wait_ready(refs: list, pg=None, what: str = "actors", poll_s: float = 5.0) -> list:
    """`ray.get(refs)`; while they are pending, raise PlacementLost if `pg` loses a node."""
    import ray

    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
        if pending and pg is not None and not placed(pg):
            raise PlacementLost(f"{what}: a node of the run's placement group died while they were starting")
    return ray.get(refs)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The run's placement group (engines, then learner ranks) and the actors beside it."""

    engines: int
    engine_bundle: dict[str, float]
    ranks: int
    rank_bundle: dict[str, float]
    strategy: str = "PACK"
    extras: tuple[tuple[str, dict[str, float]], ...] = ()  # (role, resources) outside the group
    nodes: int = 1
    colocate: bool = False  # engine i shares learner rank i's bundle (and GPU)

    @property
    def workers(self) -> int:
        """Bundles per engine: one per GPU of a tensor-parallel engine, else one."""
        return max(1, int(self.engine_bundle.get("GPU", 0)))

    def worker_bundles(self) -> list[dict[str, float]]:
        """The bundles of one engine: its CPUs and first GPU, then one GPU per further TP worker."""
        first = {k: (min(v, 1.0) if k == "GPU" else v) for k, v in self.engine_bundle.items()}
        return [first] + [{"GPU": 1.0}] * (self.workers - 1)

    def groups(self) -> list[tuple[list[dict[str, float]], str]]:
        """The placement groups to reserve, as (bundles, strategy), in bundle order: tensor-parallel
        engines (not colocated) each get a STRICT_PACK group of their own, the ranks another."""
        if self.workers == 1 or self.colocate:
            return [(self.bundles, self.strategy)]
        return [(self.worker_bundles(), "STRICT_PACK")] * self.engines + [([dict(self.rank_bundle)] * self.ranks,
                                                                           self.strategy)]

    def reservation(self) -> str:
        """How the group is reserved, in words (the dry-run plan)."""
        if len(self.groups()) == 1:
            return f"one placement group, {self.strategy}"
        return (f"{self.engines} STRICT_PACK groups, one per tensor-parallel engine (its {self.workers} workers on "
                f"one node), and the learner ranks' group, {self.strategy}")

    def engine_indices(self, i: int) -> list[int]:
        """The bundles engine i's TP workers take (the engine actor sits on the first)."""
        return list(range(i * self.workers, (i + 1) * self.workers))

    @property
    def bundles(self) -> list[dict[str, float]]:
        if self.colocate:
            shared = {k: self.rank_bundle.get(k, 0.0) + (v if k != "GPU" else 0.0)
                      for k, v in {**self.rank_bundle, **self.engine_bundle}.items()}
            return [shared] * self.ranks
        return self.worker_bundles() * self.engines + [dict(self.rank_bundle)] * self.ranks

    @property
    def rank_indices(self) -> list[int]:
        first = 0 if self.colocate else self.engines * self.workers
        return list(range(first, first + self.ranks))

    def roles(self) -> list[tuple[str, dict[str, float]]]:
        """Every actor the run may hold at once, with its resources, for messages (a colocated
        engine and learner rank count as one bundle); the group's come first, one per bundle."""
        if self.colocate:
            group = [(f"learner rank {r}" + (f" + rollout engine {r}" if r < self.engines else ""), b)
                     for r, b in enumerate(self.bundles)]
        else:
            group = [(f"rollout engine {i}" + (f" TP worker {j}" if self.workers > 1 else ""), b)
                     for i in range(self.engines) for j, b in enumerate(self.worker_bundles())]
            group += [(f"learner rank {r}", dict(self.rank_bundle)) for r in range(self.ranks)]
        return group + list(self.extras)


# The places of a bundle: a rollout engine's and a learner rank's (both in one bundle when colocated).
PLACES = ("engine", "learner")


class Bundles:
    """Who holds each place of the run's placement group: `take` before an actor starts there,
    the returned function when it stops."""

    def __init__(self) -> None:
        self.holders: dict[tuple[int, str], str] = {}

    def take(self, place: str, indices: Sequence[int], who: str):
        """Hold `place` ("engine" or "learner") of bundles `indices` for `who`; returns the
        function that gives them back. Raises BundleTaken, holding nothing, when one is held."""
        if place not in PLACES:
            raise ValueError(f"place: expected one of {PLACES}, got {place!r}")
        keys = [(i, place) for i in indices]
        held = [f"bundle {i} ({self.holders[(i, place)]})" for i, _ in keys if (i, place) in self.holders]
        if held:
            raise BundleTaken(f"{who} needs the {place} place of {', '.join(held)}, which another actor of this run "
                              f"holds; it would wait for it forever. Stop that actor first.")
        for key in keys:
            self.holders[key] = who

        def give_back() -> None:
            for key in keys:
                if self.holders.get(key) == who:
                    del self.holders[key]

        return give_back


def in_bundle(placement, index: int, capture: bool = False) -> dict[str, Any]:
    """Ray options placing an actor in bundle `index` of `placement` (a `Placement` or one
    group; `capture`: the tasks and actors it starts go into the group too, as a
    tensor-parallel engine's vLLM workers must)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg, index = locate(placement, index)
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=index, placement_group_capture_child_tasks=capture)}


def meta_rm_bundle(lay: Layout, phase: str | None) -> int | None:
    """Where the meta RM scores in `phase`: learner rank 0's bundle in the meta_rm and eval phases
    (no learner runs while it scores), beside the group in the policy phases (the policy's learner
    trains while it scores; `layout` counts it as an extra)."""
    return None if phase in ("policy_sft", "policy_rl") else lay.rank_indices[0]


def layout(cfg) -> Layout:
    """The layout a training config asks for (a `spct.config.Config`)."""
    c, r, lc = cfg.cluster, cfg.rollout, cfg.learner

    def bundle(cpus: float, gpus: float) -> dict[str, float]:
        return {"CPU": float(cpus), **({"GPU": float(c.gpus(gpus))} if c.gpus(gpus) else {})}

    engine = bundle(r.num_cpus_per_engine, r.tensor_parallel_size)
    extras: list[tuple[str, dict[str, float]]] = []
    if "policy_rl" in cfg.phases and cfg.policy.reward.kind == "grm":
        extras += [(f"policy GRM reward engine {i}", dict(engine)) for i in range(cfg.policy.grm_engines)]
    if "policy_rl" in cfg.phases and cfg.policy.meta_rm:
        extras.append(("policy meta RM", bundle(1, 1)))
    return Layout(engines=r.num_engines, engine_bundle=engine, ranks=lc.num_ranks,
                  rank_bundle=bundle(lc.num_cpus_per_rank, 1), strategy=c.placement_strategy,
                  extras=tuple(extras), nodes=c.nodes, colocate=r.colocate)


def actor_plan(cfg, lay: Layout) -> dict[str, dict[str, int | None]]:
    """Which bundle each actor of each phase of a training config takes (None: beside the
    group), by the role the run names it by: the plan every actor's report is checked against
    (`Whereabouts`). The GRM's engines may start in any phase but the policy's."""
    def engines(name: str) -> dict[str, int | None]:  # every engine group sits on the same first bundles
        return {f"{name} engine {i}": lay.engine_indices(i)[0] for i in range(lay.engines)}

    ranks = {f"learner rank {r}": b for r, b in enumerate(lay.rank_indices)}
    plan: dict[str, dict[str, int | None]] = {}
    for phase in cfg.phases:
        if phase == "policy_rl":
            plan[phase] = {**engines("policy_rollout"), **ranks, **{role: None for role, _ in lay.extras}}
            continue
        if phase == "policy_sft":
            plan[phase] = dict(ranks)
            continue
        plan[phase] = engines("rollout")
        if phase == "rft" and cfg.rft.teacher:
            plan[phase].update(engines("RFT teacher"))
        if phase == "rl" and cfg.rl.prefilter_model:
            plan[phase].update(engines("RL pre-filter"))
        if phase != "eval":
            plan[phase].update(ranks)
        if phase in ("meta_rm", "eval"):
            plan[phase]["meta RM"] = meta_rm_bundle(lay, phase)
    return plan


def _fits(need: Bundle, have: Mapping[str, float]) -> bool:
    return all(have.get(k, 0.0) + 1e-9 >= v for k, v in need.items() if v)


def shortfall(lay: Layout, nodes: Sequence[Mapping[str, float]]) -> list[str]:
    """Why the live `nodes` (each a resource dict) cannot hold `lay`; empty when they can.

    Checks what Ray would otherwise leave pending forever: totals per resource, each bundle
    against the largest node, a tensor-parallel engine's GPUs against one node, STRICT_PACK's
    one node, STRICT_SPREAD's one node per bundle, and the node count the preset expects
    (`cluster.nodes`)."""
    problems = []
    if len(nodes) < lay.nodes:
        problems.append(f"cluster.nodes: expected {lay.nodes} live nodes, found {len(nodes)}")
    total: Counter[str] = Counter()
    for node in nodes:
        total.update({k: float(v) for k, v in node.items()})
    need: Counter[str] = Counter()
    for _, res in lay.roles():
        need.update(res)
    for key, amount in sorted(need.items()):
        if amount > total.get(key, 0.0) + 1e-9:
            who = ", ".join(sorted({re.sub(r" \d+", "", role) for role, res in lay.roles() if res.get(key)}))
            problems.append(f"{key}: the run needs {amount:g} ({who}), the cluster has {total.get(key, 0.0):g}")
    if lay.workers > 1 and not lay.colocate and not any(_fits(lay.engine_bundle, node) for node in nodes):
        problems.append(f"rollout engine 0 needs {_show(lay.engine_bundle)} on one node (its {lay.workers} "
                        "tensor-parallel workers); no node has that much")
    for role, res in lay.roles():
        if not any(_fits(res, node) for node in nodes):
            problems.append(f"{role} needs {_show(res)} on one node; no node has that much")
            break
    if lay.strategy == "STRICT_PACK" and not any(_fits(_sum(lay.bundles), n) for n in nodes):
        problems.append(f"cluster.placement_strategy STRICT_PACK: no single node holds all {len(lay.bundles)} "
                        f"bundles ({_show(_sum(lay.bundles))})")
    if lay.strategy == "STRICT_SPREAD" and len(nodes) < len(lay.bundles):
        problems.append(f"cluster.placement_strategy STRICT_SPREAD: {len(lay.bundles)} bundles need as many nodes, "
                        f"the cluster has {len(nodes)}")
    return problems


def _sum(bundles: Sequence[Bundle]) -> dict[str, float]:
    out: Counter[str] = Counter()
    for b in bundles:
        out.update(b)
    return dict(out)


def _show(res: Bundle) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in res.items() if v)


def live_nodes() -> list[dict[str, float]]:
    """The resources of each live node of the Ray cluster this process is connected to."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def reserve(lay: Layout, timeout_s: float = 120.0) -> Placement:
    """Check `lay` against the live nodes, then reserve its placement groups and wait for them.

    Raises ClusterError naming what is missing, before any actor starts; groups that the
    check passes but Ray cannot place within `timeout_s` (resources held by someone else)
    are removed and reported the same way."""
    import ray
    from ray.util.placement_group import placement_group

    problems = shortfall(lay, live_nodes())
    if problems:
        raise ClusterError("the cluster cannot hold this run:\n  " + "\n  ".join(problems)
                           + f"\n  (asked for: {'; '.join(f'{r}: {_show(res)}' for r, res in lay.roles())})")
    groups = lay.groups()
    placement = Placement([placement_group(bundles, strategy=strategy, name="spct" if len(groups) == 1 else f"spct-{g}")
                           for g, (bundles, strategy) in enumerate(groups)], [len(b) for b, _ in groups])
    try:
        ray.get([pg.ready() for pg in placement.groups], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        placement.remove()
        raise ClusterError(
            f"the placement group ({len(lay.bundles)} bundles, {lay.strategy}) was not placed within "
            f"{timeout_s:.0f} s although the live nodes have the resources: other jobs hold them "
            "(see `ray status`)") from None
    log.info("placement: %d engine and %d learner bundles in %d group(s), %s", lay.engines * lay.workers, lay.ranks,
             len(groups), lay.strategy)
    return placement


def placement_report(lay: Layout, placement: Placement) -> dict[str, Any]:
    """Which node (id and address) holds each bundle of the placed groups: written to
    output_dir/placement.json at start, for the user and the tests."""
    import ray
    from ray.util.placement_group import placement_group_table

    address = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    nodes = {}
    for pg, start in zip(placement.groups, placement.starts, strict=True):
        nodes.update({start + b: node for b, node in placement_group_table(pg)["bundles_to_node_id"].items()})
    roles = [role for role, _ in lay.roles()][: len(lay.bundles)]  # the group's come first
    return {"strategy": lay.strategy,
            "groups": [{"bundles": list(range(start, start + size)), "strategy": strategy}
                       for start, size, (_, strategy) in zip(placement.starts, placement.sizes, lay.groups(),
                                                             strict=True)],
            "bundles": [{"role": role, "resources": res, "node_id": nodes[i], "node_address": address.get(nodes[i])}
                        for i, (role, res) in enumerate(zip(roles, lay.bundles, strict=True))],
            "beside": [{"role": role, "resources": res} for role, res in lay.extras]}


# Ray's name for a resource of bundle i of a placement group: CPU_group_<i>_<group id>, ...
_BUNDLE_RESOURCE = re.compile(r"\w+?_group_(\d+)_[0-9a-f]+")


def bundle_of(resource_names: Iterable[str]) -> int | None:
    """The placement group bundle whose resources an actor holds, read from their names in
    Ray (`CPU_group_2_<group id>`: bundle 2); None for an actor outside any group."""
    found = {int(m[1]) for name in resource_names if (m := _BUNDLE_RESOURCE.fullmatch(name))}
    if len(found) > 1:
        raise ValueError(f"resources of several bundles: {sorted(found)}")
    return found.pop() if found else None


def here() -> dict[str, Any]:
    """Where the calling actor runs: its node, its bundle of the run's placement group (None
    beside it) and the GPUs Ray gave it (what every spct actor's `where()` returns)."""
    import ray
    from ray._private.worker import global_worker

    names = global_worker.core_worker.resource_ids()  # the bundle-qualified names of what it holds
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "placement_group": ctx.get_placement_group_id(),
            "bundle": bundle_of(names), "gpus": sorted(str(g) for g in ray.get_gpu_ids())}


def misplaced(plan: Mapping[str, Mapping[str, int | None]], phase: str | None, role: str,
              seen: Mapping[str, Any]) -> str | None:
    """Why an actor is not where the plan (`actor_plan`) puts it in `phase`, or None when it is."""
    def place(bundle: int | None) -> str:
        return "beside the placement group" if bundle is None else f"in bundle {bundle}"

    planned = plan.get(phase or "", {})
    if role not in planned:
        return f"{phase}: {role} is not in the plan for this phase; Ray placed it {place(seen['bundle'])}"
    if seen["bundle"] != planned[role]:
        return f"{phase}: {role}: the plan puts it {place(planned[role])}, Ray placed it {place(seen['bundle'])}"
    return None


class Whereabouts:
    """Where each actor of the run runs, as it reports it (`here`), checked against the plan
    (`actor_plan`) and listed under "actors" in output_dir/placement.json with its phase, node
    and GPUs, beside the plan itself. `watch` asks actors as they start, without waiting for
    them; `flush` reads the answers that have come. An actor the plan puts elsewhere is logged
    as an error and listed under "misplaced" (the run goes on: the bundle ledger, spct.placement.Bundles,
    already keeps two actors of the run from waiting on one place)."""

    def __init__(self, path, report: dict[str, Any], plan: dict[str, dict[str, int | None]],
                 placement: Placement) -> None:
        import ray

        self.path, self.plan, self.placement = path, plan, placement
        self.report = {**report, "plan": plan, "actors": [], "misplaced": []}
        self.address = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
        self.pending: list[tuple[str | None, str, Any]] = []
        self.write()

    def watch(self, phase: str | None, roles: Sequence[str], actors: Sequence[Any]) -> None:
        """Ask each of `actors` (named by its role in the plan) where it runs."""
        self.pending += [(phase, role, actor.where.remote()) for role, actor in zip(roles, actors, strict=True)]

    def flush(self) -> None:
        import ray

        if not self.pending:
            return
        done, _ = ray.wait([ref for *_, ref in self.pending], num_returns=len(self.pending), timeout=0)
        ready, left = set(done), []
        for phase, role, ref in self.pending:
            if ref not in ready:
                left.append((phase, role, ref))
                continue
            try:
                seen = ray.get(ref)
            except ray.exceptions.RayError:  # it died starting: that error is the run's to report
                continue
            seen = {**seen, "bundle": self.placement.index(seen["placement_group"], seen["bundle"])}
            self.report["actors"].append({"phase": phase, "role": role, "bundle": seen["bundle"],
                                          "node_id": seen["node_id"],
                                          "node_address": self.address.get(seen["node_id"]), "gpus": seen["gpus"]})
            problem = misplaced(self.plan, phase, role, seen)
            if problem:
                log.error("an actor is not where the plan put it: %s", problem)
                self.report["misplaced"].append(problem)
        self.pending = left
        self.write()

    def write(self) -> None:
        from spct.files import write_atomic

        write_atomic(self.path, json.dumps(self.report, indent=1))
