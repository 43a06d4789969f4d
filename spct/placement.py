"""Where a run's actors go: one placement group holds the rollout engines and the learner ranks.

The group is reserved once, before any actor starts, with the strategy of the cluster preset
(`cluster.placement_strategy`: PACK fills as few nodes as possible, SPREAD puts bundles on as
many nodes as it can, STRICT_PACK / STRICT_SPREAD insist). A bundle holds at most one GPU, as
vLLM's Ray executor requires of the group its workers join: an engine of tensor-parallel size t
takes t consecutive bundles, one per TP worker (engine i: bundles i*t .. i*t+t-1; the engine actor
itself sits on the first with its CPUs and no GPU). Learner rank r takes the bundle after the
engines' (`rank_indices[r]`), and the learner's rendezvous address is rank 0's node.
The GRM reward pool, an RFT teacher and the policy phase's meta RM run beside the group, on
what the cluster has left; the meta RM of the meta_rm and eval phases, when no learner runs,
takes learner rank 0's place (`meta_rm_bundle`). Before anything starts, the run checks that
the whole of it fits the cluster's live nodes and names what is missing.

Every actor of the run that goes into the group takes its place in a `Bundles` ledger first:
one engine and one learner place per bundle, one holder each. Taking a place another actor of
the run holds raises at once, so a run can never wait on a bundle one of its own actors holds.

`Layout`, `shortfall` and `Bundles` are plain logic (tested without Ray); `reserve` talks to Ray.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
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


def placed(pg) -> bool:
    """Whether every bundle of `pg` is on a live node (Ray reschedules those of a dead one)."""
    from ray.util.placement_group import placement_group_table

    return placement_group_table(pg).get("state") == "CREATED"


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
    if "rft" in cfg.phases and cfg.rft.teacher:
        extras += [(f"RFT teacher engine {i}", dict(engine)) for i in range(r.num_engines)]
    if "policy_rl" in cfg.phases and cfg.policy.reward.kind == "grm":
        extras += [(f"policy GRM reward engine {i}", dict(engine)) for i in range(cfg.policy.grm_engines)]
    if "policy_rl" in cfg.phases and cfg.policy.meta_rm:
        extras.append(("policy meta RM", bundle(1, 1)))
    return Layout(engines=r.num_engines, engine_bundle=engine, ranks=lc.num_ranks,
                  rank_bundle=bundle(lc.num_cpus_per_rank, 1), strategy=c.placement_strategy,
                  extras=tuple(extras), nodes=c.nodes, colocate=r.colocate)


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


def reserve(lay: Layout, timeout_s: float = 120.0) -> Any:
    """Check `lay` against the live nodes, then reserve its placement group and wait for it.

    Raises ClusterError naming what is missing, before any actor starts; a group that the
    check passes but Ray cannot place within `timeout_s` (resources held by someone else)
    is removed and reported the same way."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    problems = shortfall(lay, live_nodes())
    if problems:
        raise ClusterError("the cluster cannot hold this run:\n  " + "\n  ".join(problems)
                           + f"\n  (asked for: {'; '.join(f'{r}: {_show(res)}' for r, res in lay.roles())})")
    pg = placement_group(lay.bundles, strategy=lay.strategy, name="spct")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise ClusterError(
            f"the placement group ({len(lay.bundles)} bundles, {lay.strategy}) was not placed within "
            f"{timeout_s:.0f} s although the live nodes have the resources: other jobs hold them "
            "(see `ray status`)") from None
    log.info("placement group: %d engine and %d learner bundles, %s", lay.engines, lay.ranks, lay.strategy)
    return pg


def split_engines(lay: Layout, bundle_nodes: Mapping[int, str]) -> list[int]:
    """The tensor-parallel engines whose workers' bundles landed on more than one node (they
    still run, but every layer's all-reduce then crosses the network)."""
    if lay.colocate or lay.workers == 1:
        return []
    return [i for i in range(lay.engines) if len({bundle_nodes[b] for b in lay.engine_indices(i)}) > 1]


def placement_report(lay: Layout, pg) -> dict[str, Any]:
    """Which node (id and address) holds each bundle of a placed group: written to
    output_dir/placement.json at start, for the user and the tests."""
    import ray
    from ray.util.placement_group import placement_group_table

    table = placement_group_table(pg)
    address = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    split = split_engines(lay, table["bundles_to_node_id"])
    if split:
        log.warning("rollout engines %s: their tensor-parallel workers were placed on more than one node "
                    "(output_dir/placement.json); they run, with every all-reduce across the network", split)
    roles = [role for role, _ in lay.roles()][: len(lay.bundles)]  # the group's come first
    return {"strategy": lay.strategy,
            "bundles": [{"role": role, "resources": res, "node_id": table["bundles_to_node_id"][i],
                         "node_address": address.get(table["bundles_to_node_id"][i])}
                        for i, (role, res) in enumerate(zip(roles, lay.bundles, strict=True))],
            "beside": [{"role": role, "resources": res} for role, res in lay.extras],
            "engines_across_nodes": split}
