"""The run's placement: what it reserves, and every reason a cluster cannot hold it, named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from spct.config import register_schema, to_config
from spct.placement import Layout, layout, shortfall

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GPU_NODE = {"CPU": 64.0, "GPU": 8.0, "memory": 1e12}
CPU_NODE = {"CPU": 4.0}


def _config(*overrides: str):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return to_config(compose("config", overrides=list(overrides)))


def test_the_default_cpu_run_reserves_one_engine_and_one_rank_beside_the_meta_rm():
    lay = layout(_config())
    assert lay.bundles == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert (lay.rank_indices, lay.strategy) == ([1], "PACK")
    assert shortfall(lay, [CPU_NODE]) == []


def test_the_8_gpu_preset_fits_one_8_gpu_node_and_not_less():
    lay = layout(_config("experiment=grm-qwen2.5-7b", "cluster=gpu_8x", "data.train=/d.jsonl", "data.test=/t.jsonl",
                         "phases=[rft,rl,meta_rm,eval]"))
    assert sum(b.get("GPU", 0) for b in lay.bundles) == 8
    assert shortfall(lay, [GPU_NODE]) == []
    problems = shortfall(lay, [{**GPU_NODE, "GPU": 4.0}])
    assert problems and problems[0].startswith("GPU: the run needs 8 (learner rank, rollout engine), the cluster has 4")


def test_a_teacher_and_the_policy_reward_pool_are_counted_beside_the_group():
    lay = layout(_config("experiment=grm-qwen2.5-7b", "cluster=gpu_8x", "data.train=/d.jsonl",
                         "phases=[rft,rl]", "rft.teacher=/models/teacher"))
    assert [role for role, _ in lay.extras][:1] == ["RFT teacher engine 0"]
    assert any("RFT teacher engine" in p for p in shortfall(lay, [GPU_NODE]))
    assert shortfall(lay, [GPU_NODE, GPU_NODE]) == []


@pytest.mark.parametrize("strategy,nodes,expected", [
    ("STRICT_SPREAD", [CPU_NODE], "STRICT_SPREAD: 2 bundles need as many nodes, the cluster has 1"),
    ("STRICT_PACK", [{"CPU": 1.0}, {"CPU": 1.0}], "STRICT_PACK: no single node holds all 2 bundles"),
])
def test_strict_strategies_name_what_they_lack(strategy, nodes, expected):
    lay = Layout(engines=1, engine_bundle={"CPU": 1.0}, ranks=1, rank_bundle={"CPU": 1.0}, strategy=strategy)
    assert any(expected in p for p in shortfall(lay, nodes))
    assert shortfall(Layout(1, {"CPU": 1.0}, 1, {"CPU": 1.0}, strategy), [CPU_NODE, CPU_NODE]) == []


def test_a_bundle_no_node_can_hold_and_too_few_nodes_are_named():
    lay = Layout(engines=1, engine_bundle={"CPU": 1.0, "GPU": 4.0}, ranks=2, rank_bundle={"CPU": 1.0, "GPU": 1.0},
                 nodes=3)
    nodes = [{"CPU": 8.0, "GPU": 3.0}, {"CPU": 8.0, "GPU": 3.0}]
    problems = shortfall(lay, nodes)
    assert "cluster.nodes: expected 3 live nodes, found 2" in problems
    assert ("rollout engine 0 needs 1 CPU, 4 GPU on one node (its 4 tensor-parallel workers); "
            "no node has that much") in problems


def test_colocated_engines_share_the_learner_ranks_bundles():
    lay = layout(_config("experiment=grm-qwen2.5-7b", "cluster=gpu_8x", "data.train=/d.jsonl",
                         "phases=[rft,rl]", "rollout.colocate=true", "learner.num_ranks=8", "rollout.num_engines=8"))
    assert lay.bundles == [{"CPU": 4.0, "GPU": 1.0}] * 8  # a rank's 2 CPUs + an engine's 2, one GPU
    assert lay.rank_indices == list(range(8))
    assert shortfall(lay, [GPU_NODE]) == []
    assert [r for r, _ in lay.roles()][0] == "learner rank 0 + rollout engine 0"


def test_colocation_needs_gpus_and_one_engine_per_learner_gpu():
    from spct.config import ConfigError

    with pytest.raises(ConfigError, match="rollout.colocate: expected a GPU cluster"):
        _config("rollout.colocate=true")
    with pytest.raises(ConfigError, match="rl.async_generation: expected false with rollout.colocate"):
        _config("rollout.colocate=true", "cluster=gpu_8x", "rl.async_generation=true", "learner.num_ranks=4",
                "rollout.num_engines=4")


def test_a_held_place_is_refused_at_once_naming_its_holder_and_freed_when_given_back():
    from spct.placement import Bundles, BundleTaken

    bundles = Bundles()
    give_back = bundles.take("learner", [1], "the meta RM")
    engines = bundles.take("engine", [0, 1], "rollout engines")  # another place of the same bundles
    with pytest.raises(BundleTaken, match=r"the learner needs the learner place of bundle 1 \(the meta RM\)"):
        bundles.take("learner", [1, 2], "the learner")
    assert (2, "learner") not in bundles.holders  # a refused take holds nothing
    give_back()
    learner = bundles.take("learner", [1, 2], "the learner")
    give_back()  # giving back twice does not free what another holds now
    with pytest.raises(BundleTaken):
        bundles.take("learner", [2], "the meta RM")
    learner()
    engines()
    assert bundles.holders == {}


def test_the_meta_rm_takes_rank_0s_place_only_where_no_learner_trains_beside_it():
    from spct.placement import meta_rm_bundle

    lay = layout(_config())
    assert meta_rm_bundle(lay, "meta_rm") == meta_rm_bundle(lay, "eval") == lay.rank_indices[0]
    assert meta_rm_bundle(lay, "policy_rl") is None
    policy = layout(_config("experiment=policy", "policy.grm=/g", "policy.meta_rm=/m"))
    assert ("policy meta RM", {"CPU": 1.0}) in policy.extras  # counted beside the group


@pytest.mark.integration
def test_the_single_node_gpu_preset_starts_its_own_ray():
    """`python -m spct.train ... cluster=gpu_8x`, as the README writes it, with no Ray running
    and no RAY_ADDRESS: spct starts a Ray on this machine declaring the preset's 8 GPUs (the
    launch script's RAY_ADDRESS still makes it join the head the script started)."""
    import subprocess
    import sys

    c = _config("experiment=grm-qwen2.5-7b", "cluster=gpu_8x", "data.train=/d.jsonl", "data.test=/t.jsonl").cluster
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = ("import ray; from spct.cluster import init_ray; "
            f"init_ray({c.address!r}, 1, {c.num_gpus}); print('GPUs', ray.cluster_resources().get('GPU'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "GPUs 8.0" in out.stdout


@pytest.mark.parametrize("preset", ["grm-qwen2.5-7b", "grm-gemma-2-27b", "policy-qwen2.5-7b"])
def test_the_gpu_presets_checkpoint_within_a_phase(preset):
    """A phase of `rl=paper` runs 18-20 h: a fault must not cost all of it."""
    c = _config(f"experiment={preset}", "data.train=/d.jsonl", "data.test=/t.jsonl", "policy.grm=/g")
    steps = {"rft": c.rft.sft_steps, "rl": c.rl.steps, "policy_rl": c.policy.steps}
    assert 0 < c.checkpoint.every_steps <= 50
    assert all(c.checkpoint.every_steps < steps[p] for p in c.phases if p in steps)


TP_PRESET = ("experiment=grm-gemma-2-27b", "data.train=/d.jsonl", "data.test=/t.jsonl")


def test_a_tensor_parallel_engine_takes_a_one_gpu_bundle_per_worker():
    """vLLM's Ray executor refuses a placement group with a bundle of more than one GPU: the 27B
    preset's engines (tensor parallel 2) take two bundles each, the learner ranks follow."""
    lay = layout(_config(*TP_PRESET))
    assert lay.workers == 2 and len(lay.bundles) == 8 * 2 + 16
    assert max(b.get("GPU", 0) for b in lay.bundles) == 1 and sum(b.get("GPU", 0) for b in lay.bundles) == 32
    assert lay.engine_indices(3) == [6, 7] and lay.rank_indices == list(range(16, 32))
    assert lay.bundles[6] == {"CPU": 2.0, "GPU": 1.0} and lay.bundles[7] == {"GPU": 1.0}
    assert [r for r, _ in lay.roles()][6:8] == ["rollout engine 3 TP worker 0", "rollout engine 3 TP worker 1"]
    assert shortfall(lay, [GPU_NODE] * 4) == []
    assert any(p.startswith("GPU: the run needs 32 (learner rank, rollout engine TP worker)")
               for p in shortfall(lay, [GPU_NODE] * 3))


def test_an_engine_actor_holds_no_gpu_and_names_its_workers_bundles():
    from spct.rollout import engine_options

    base = {"num_cpus": 2, "num_gpus": 2, "runtime_env": {"env_vars": {"A": "1"}}}
    pg = object()
    options, extra = engine_options(base, pg, 3, workers=2)
    assert options["num_gpus"] == 0 and extra == {"ray_workers": True}
    assert options["scheduling_strategy"].placement_group_bundle_index == 6
    assert options["runtime_env"]["env_vars"] == {"A": "1", "VLLM_RAY_BUNDLE_INDICES": "6,7"}
    one, extra = engine_options({**base, "num_gpus": 1}, pg, 3, workers=1)
    assert (one["num_gpus"], extra, one["scheduling_strategy"].placement_group_bundle_index) == (1, {}, 3)
    assert "VLLM_RAY_BUNDLE_INDICES" not in one["runtime_env"]["env_vars"]
    assert engine_options(base, None, 3, workers=2) == (base, {})  # beside the group: vLLM's own processes


def test_spreading_tensor_parallel_workers_over_nodes_is_refused_and_reported():
    from spct.config import ConfigError
    from spct.placement import split_engines

    with pytest.raises(ConfigError, match="cluster.placement_strategy: expected PACK or STRICT_PACK with "
                                          "rollout.tensor_parallel_size 2"):
        _config(*TP_PRESET, "cluster.placement_strategy=SPREAD")
    lay = layout(_config(*TP_PRESET))
    nodes = {b: f"node{b // 8}" for b in range(len(lay.bundles))}
    assert split_engines(lay, nodes) == []
    nodes[7] = "node1"
    assert split_engines(lay, nodes) == [3]


@pytest.mark.integration
def test_vllms_ray_executor_accepts_the_groups_tensor_parallel_engines():
    """On a Ray that declares the 27B preset's 32 GPUs (and 2 more): the run's placement group,
    an engine actor placed as RolloutGroup places it, and inside it vLLM 0.32's own check of the
    group and its choice of the workers' bundles; one vLLM worker per bundle then gets a GPU of
    its own. A group with a two-GPU bundle (the engine's shape before) fails the same check."""
    import subprocess
    import sys

    lay = layout(_config(*TP_PRESET))
    shape = dict(engines=lay.engines, engine_bundle=lay.engine_bundle, ranks=lay.ranks, rank_bundle=lay.rank_bundle)
    code = f"""
import os, ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from spct.placement import Layout
from spct.rollout import engine_options

lay = Layout(**{shape!r})
ray.init(address="local", num_cpus=64, num_gpus=34, include_dashboard=False, log_to_driver=False)

@ray.remote
def vllm_check(tp, two_gpu_bundle):
    from vllm.platforms import current_platform
    current_platform.ray_device_key = "GPU"  # vLLM's CPU build has no Ray executor; the check is the GPU one
    from vllm.config import ParallelConfig
    from vllm.v1.executor.ray_utils import get_bundles_for_indices, initialize_ray_cluster
    pc = ParallelConfig(tensor_parallel_size=tp, distributed_executor_backend="ray")
    initialize_ray_cluster(pc, require_gpu_on_driver=False)  # the group this actor was placed in
    mine = [int(b) for b in os.environ["VLLM_RAY_BUNDLE_INDICES"].split(",")]
    bundles = [b for b, _, _ in get_bundles_for_indices(pc.placement_group, mine, tp)]
    worker = ray.remote(num_cpus=0, num_gpus=1)(lambda: ray.get_gpu_ids())
    gpus = ray.get([worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=pc.placement_group, placement_group_bundle_index=b)).remote() for b in bundles], timeout=60)
    before = ParallelConfig(tensor_parallel_size=tp, distributed_executor_backend="ray")
    before.placement_group = two_gpu_bundle
    try:
        initialize_ray_cluster(before, require_gpu_on_driver=False)
        refused = None
    except ValueError as e:
        refused = str(e)
    return bundles, gpus, refused

pg = placement_group(lay.bundles, strategy="PACK")
before = placement_group([{{"GPU": 2.0}}])
ray.get([pg.ready(), before.ready()], timeout=60)
i = lay.engines - 1
options, extra = engine_options(dict(num_cpus=2, num_gpus=2, runtime_env={{"env_vars": {{}}}}), pg, i, lay.workers)
bundles, gpus, refused = ray.get(vllm_check.options(**options).remote(lay.workers, before), timeout=120)
assert extra == {{"ray_workers": True}} and bundles == lay.engine_indices(i), (i, bundles)
assert all(len(g) == 1 for g in gpus) and len({{g[0] for g in gpus}}) == 2, gpus
print("OK", bundles, refused)
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK [14, 15] Placement group bundle cannot have more than 1 GPU." in out.stdout, out.stdout[-2000:]
