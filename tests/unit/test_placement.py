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
    assert "rollout engine 0 needs 1 CPU, 4 GPU on one node; no node has that much" in problems


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
