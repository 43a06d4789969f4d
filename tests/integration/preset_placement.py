"""Driver for test_preset_placement: every shipped GPU preset placed on a Ray that declares GPUs.

    python tests/integration/preset_placement.py NODES OVERRIDES_JSON

Starts NODES Ray nodes on this machine (`ray.cluster_utils.Cluster`), each declaring 8 GPUs and
64 CPUs, then for each preset (a list of Hydra overrides) reserves the run's placement group with
`spct.placement.reserve` and puts an actor at every place the plan (`actor_plan`) names, with the
Ray options the run computes for it: `engine_options` for an engine (a tensor-parallel one sits
on the first bundle of its own group holding no GPU, and one GPU worker starts in each bundle
VLLM_RAY_BUNDLE_INDICES names, chosen by vLLM's own Ray executor code in the first engine),
`in_bundle` for a learner rank and the meta RM, and nothing for the actors beside the group. The actors hold what
the run's hold, in the waves the run holds them at once: the GRM's engines with the learner
ranks (and, in a policy run, the policy's engines, learner and reward beside them); the GRM's
engines with the meta RM; an RFT teacher's or the RL pre-filter's engines alone. Each actor
reports where it runs (`spct.placement.here`). Prints one JSON line per preset.

The actors are small stand-ins (no model): the tiny model's vLLM engines and DeepSpeed ranks
cannot run at these counts on a CPU machine, and vLLM's CPU build has no Ray executor for
tensor parallelism; what runs is the placement code of the run and vLLM's own worker placement.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import ray
from hydra import compose, initialize_config_dir
from ray.cluster_utils import Cluster

from spct.config import register_schema, to_config
from spct.placement import (
    actor_plan,
    here,
    in_bundle,
    layout,
    meta_rm_bundle,
    misplaced,
    placement_report,
    reserve,
)
from spct.rollout import engine_options

CONF = Path(__file__).resolve().parents[2] / "conf"


@ray.remote
class Engine:
    """Where an engine actor runs and, tensor-parallel, where its workers go: by vLLM's own Ray
    executor code in the first engine (its check of the group, its choice of the bundles from
    VLLM_RAY_BUNDLE_INDICES; seconds of vLLM import, so once per preset), at the bundles that
    variable names in the others."""

    def __init__(self, tp: int, with_vllm: bool) -> None:
        self.tp, self.with_vllm, self.seen = tp, with_vllm, None

    def where(self) -> dict:
        if self.seen is None:
            self.seen = here()
            if self.tp > 1:
                self.seen["workers"] = self._workers()
        return self.seen

    def _workers(self) -> list[dict]:
        group = ray.util.get_current_placement_group()
        mine = [int(b) for b in os.environ["VLLM_RAY_BUNDLE_INDICES"].split(",")]
        if self.with_vllm:
            from vllm.config import ParallelConfig
            from vllm.platforms import current_platform
            from vllm.v1.executor.ray_utils import get_bundles_for_indices, initialize_ray_cluster

            current_platform.ray_device_key = "GPU"  # the CPU build has no Ray executor; this is the GPU one's code
            pc = ParallelConfig(tensor_parallel_size=self.tp, distributed_executor_backend="ray")
            initialize_ray_cluster(pc, require_gpu_on_driver=False)  # refuses a bundle of more than one GPU
            assert pc.placement_group.id == group.id
            mine = [b for b, _, _ in get_bundles_for_indices(group, mine, self.tp)]
        worker = ray.remote(num_cpus=0, num_gpus=1)(here)
        return ray.get([worker.options(**in_bundle(group, b)).remote() for b in mine])


@ray.remote
class Actor:
    def where(self) -> dict:
        return here()


def place(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = to_config(compose(config_name="config", overrides=overrides))
    c, r, lc = cfg.cluster, cfg.rollout, cfg.learner
    lay = layout(cfg)
    plan = actor_plan(cfg, lay)
    pg = reserve(lay, timeout_s=60)  # a spct.placement.Placement: its groups, bundles numbered as the layout's
    shared = r.colocate
    engine_base = dict(num_cpus=r.num_cpus_per_engine, num_gpus=c.gpus(r.tensor_parallel_size, shared=shared),
                       runtime_env={"env_vars": {}})
    report: dict = {"overrides": overrides, "plan": plan, "waves": []}

    def engines(name: str) -> list:
        return [(f"{name} engine {i}", Engine.options(**engine_options(engine_base, pg, i, lay.workers)[0])
                 .remote(r.tensor_parallel_size, with_vllm=i == 0)) for i in range(lay.engines)]

    def learner() -> list:
        return [(f"learner rank {k}", Actor.options(num_cpus=lc.num_cpus_per_rank, num_gpus=c.gpus(1, shared=shared),
                                                     **in_bundle(pg, b)).remote())
                for k, b in enumerate(lay.rank_indices)]

    def wave(phase: str, actors: list) -> None:
        seen = ray.get([a.where.remote() for _, a in actors], timeout=120)
        for s in seen:  # the run's bundle numbers, as spct.placement.Whereabouts reads them
            for one in [s, *s.get("workers", [])]:
                one["bundle"] = pg.index(one["placement_group"], one["bundle"])
        rows = [{"role": role, **s} for (role, _), s in zip(actors, seen, strict=True)]
        report["waves"].append({"phase": phase, "actors": rows,
                                "misplaced": [m for row in rows if (m := misplaced(plan, phase, row["role"], row))]})

    def stop(actors: list) -> None:
        for _, a in actors:
            ray.kill(a)

    if cfg.phases == ["policy_rl"]:  # the policy's engines, learner and reward beside them, at once
        beside = [(role, Actor.options(num_cpus=res.get("CPU", 0), num_gpus=res.get("GPU", 0)).remote())
                  for role, res in lay.extras]
        everyone = engines("policy_rollout") + learner() + beside
        wave("policy_rl", everyone)
        stop(everyone)
    else:
        grm, ranks = engines("rollout"), learner()
        wave(cfg.phases[0], grm + ranks)  # training: the GRM's engines and the learner
        stop(ranks)
        for phase in ("meta_rm", "eval"):  # scoring: the GRM's engines and the meta RM in rank 0's place
            if phase in cfg.phases:
                meta = [("meta RM", Actor.options(num_gpus=c.gpus(1, shared=shared), **in_bundle(pg, meta_rm_bundle(lay, phase)))
                         .remote())]
                wave(phase, grm + meta)
                stop(meta)
        stop(grm)
        for phase, name, on in (("rft", "RFT teacher", cfg.rft.teacher), ("rl", "RL pre-filter", cfg.rl.prefilter_model)):
            if on:  # sampling alone, in the engines' bundles
                samplers = engines(name)
                wave(phase, samplers)
                stop(samplers)
    report["bundle_nodes"] = [b["node_id"] for b in placement_report(lay, pg)["bundles"]]
    report["engine_bundles"] = [lay.engine_indices(i) for i in range(lay.engines)]
    report["rank_bundles"] = lay.rank_indices
    pg.remove()
    return report


def main() -> None:
    nodes, presets = int(sys.argv[1]), json.loads(sys.argv[2])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 64, "num_gpus": 8})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=64, num_gpus=8)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    register_schema()
    try:
        for overrides in presets:
            print(json.dumps(place(overrides)), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
