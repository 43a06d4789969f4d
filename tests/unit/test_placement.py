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


def test_a_teacher_and_the_pre_filter_sample_in_the_engines_bundles_the_policy_reward_pool_beside_them():
    """An RFT teacher and the RL pre-filter sample while no learner runs: they take the rollout
    engines' bundles (one 8-GPU node holds the 7B preset with both); the policy's GRM reward
    pool runs beside its learner and engines, so the layout counts it."""
    lay = layout(_config("experiment=grm-qwen2.5-7b", "cluster=gpu_8x", "data.train=/d.jsonl",
                         "phases=[rft,rl]", "rft.teacher=/models/teacher", "rl.prefilter_model=/models/weak"))
    assert lay.extras == () and shortfall(lay, [GPU_NODE]) == []
    lay = layout(_config("experiment=policy-qwen2.5-7b", "data.train=/d.jsonl", "policy.grm=/g", "policy.grm_engines=4",
                         "policy.meta_rm=/m"))
    assert [role for role, _ in lay.extras] == [f"policy GRM reward engine {i}" for i in range(4)] + ["policy meta RM"]
    assert any(p.startswith("GPU: the run needs 11") for p in shortfall(lay, [GPU_NODE]))
    assert shortfall(lay, [GPU_NODE, GPU_NODE]) == []


def test_an_actor_reports_its_bundle_from_the_names_of_what_it_holds():
    from spct.placement import bundle_of, misplaced

    gid = "edc3213f47589eda165bc5cf8c3001000000"
    held = [f"CPU_group_{gid}", f"CPU_group_2_{gid}", f"GPU_group_{gid}", f"GPU_group_2_{gid}", f"bundle_group_2_{gid}"]
    assert bundle_of(held) == 2
    assert bundle_of(["CPU", "GPU", "memory"]) is None and bundle_of([f"CPU_group_{gid}"]) is None
    with pytest.raises(ValueError, match=r"several bundles: \[0, 2\]"):
        bundle_of(held + [f"CPU_group_0_{gid}"])
    plan = {"meta_rm": {"learner rank 0": 5, "meta RM": 5}, "policy_rl": {"policy meta RM": None}}
    assert misplaced(plan, "meta_rm", "meta RM", {"bundle": 5}) is None
    assert misplaced(plan, "policy_rl", "policy meta RM", {"bundle": None}) is None
    assert misplaced(plan, "meta_rm", "learner rank 0", {"bundle": 0}) == (
        "meta_rm: learner rank 0: the plan puts it in bundle 5, Ray placed it in bundle 0")
    assert misplaced(plan, "policy_rl", "policy meta RM", {"bundle": 3}).endswith(
        "the plan puts it beside the placement group, Ray placed it in bundle 3")
    assert misplaced(plan, "meta_rm", "RL pre-filter engine 0", {"bundle": None}) == (
        "meta_rm: RL pre-filter engine 0 is not in the plan for this phase; Ray placed it beside the placement group")


@pytest.mark.parametrize("overrides", [
    ("experiment=grm-qwen2.5-7b", "cluster=gpu_8x", "data.train=/d.jsonl", "data.test=/t.jsonl",
     "rft.teacher=/models/teacher", "rl.prefilter_model=/models/weak"),
    ("experiment=grm-gemma-2-27b", "cluster=multi_node", "data.train=/d.jsonl", "data.test=/t.jsonl"),
    ("experiment=policy-qwen2.5-7b", "data.train=/d.jsonl", "policy.grm=/g", "policy.meta_rm=/m"),
    ("experiment=quick", "phases=[warmup,rft,rl,meta_rm,eval,policy_sft,policy_rl]", "policy.grm=/g",
     "policy.max_new_tokens=32"),
])
def test_the_plan_gives_every_actor_of_every_phase_one_place(overrides):
    """Each phase's actors by the names the run gives them: the GRM's engines on their first
    bundle, learner ranks after the engines, the meta RM on rank 0's bundle when no learner
    runs, a teacher and the pre-filter on the engines' bundles, the policy's reward beside; no
    two actors of a phase share a bundle except the meta RM and the learner (never at once)."""
    from spct.placement import actor_plan

    cfg = _config(*overrides)
    lay = layout(cfg)
    plan = actor_plan(cfg, lay)
    assert list(plan) == list(cfg.phases)
    first = [lay.engine_indices(i)[0] for i in range(lay.engines)]
    for phase, actors in plan.items():
        engines = "policy_rollout" if phase == "policy_rl" else "rollout"
        if phase != "policy_sft":
            assert [actors[f"{engines} engine {i}"] for i in range(lay.engines)] == first
        if phase != "eval":
            assert [actors[f"learner rank {r}"] for r in range(lay.ranks)] == lay.rank_indices
        for sampler in ("RFT teacher", "RL pre-filter"):
            if f"{sampler} engine 0" in actors:
                assert [actors[f"{sampler} engine {i}"] for i in range(lay.engines)] == first
        if phase in ("meta_rm", "eval"):
            assert actors["meta RM"] == lay.rank_indices[0]
        beside = sorted(role for role, b in actors.items() if b is None)
        assert beside == sorted(role for role, _ in lay.extras if phase == "policy_rl")
        kinds = {}
        for role, b in actors.items():
            kinds.setdefault(b, set()).add(role.split(" engine")[0] if " engine " in role else role)
        assert all(len(k) == 1 or k in ({"learner rank 0", "meta RM"}, {"rollout", "RFT teacher"},
                                        {"rollout", "RL pre-filter"}) for b, k in kinds.items() if b is not None), kinds


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


def test_each_tensor_parallel_engine_has_a_strict_pack_group_of_its_own():
    """Ray's PACK over one large group does not keep an engine's consecutive bundles on one node
    (it orders bundles by their resources first; tests/integration/test_preset_placement.py saw
    every engine of the 27B preset split): each TP engine gets a STRICT_PACK group, the learner
    ranks one with the preset's strategy, numbered on as one layout. SPREAD is then fine for the
    ranks; one-GPU engines keep the single group."""
    from spct.placement import Placement, locate
    from spct.rollout import engine_options

    lay = layout(_config(*TP_PRESET, "cluster.placement_strategy=SPREAD"))
    groups = lay.groups()
    assert [(len(b), strategy) for b, strategy in groups] == [(2, "STRICT_PACK")] * 8 + [(16, "SPREAD")]
    assert [b for bundles, _ in groups for b in bundles] == lay.bundles
    placement = Placement([f"engine{i}" for i in range(8)] + ["ranks"], [2] * 8 + [16])
    assert locate(placement, 7) == ("engine3", 1) and locate(placement, 16) == ("ranks", 0)
    assert locate("one group", 7) == ("one group", 7)
    with pytest.raises(IndexError, match="bundle 32: the run has 32"):
        placement.locate(32)
    options, _ = engine_options({"num_cpus": 2, "num_gpus": 2, "runtime_env": {"env_vars": {}}}, placement, 3, 2)
    strategy = options["scheduling_strategy"]
    assert (strategy.placement_group, strategy.placement_group_bundle_index) == ("engine3", 0)
    assert options["runtime_env"]["env_vars"]["VLLM_RAY_BUNDLE_INDICES"] == "0,1"  # in its own group
    one = layout(_config("experiment=grm-qwen2.5-7b", "data.train=/d.jsonl", "data.test=/t.jsonl"))
    assert len(one.groups()) == 1 and one.reservation() == "one placement group, PACK"
    assert lay.reservation() == ("8 STRICT_PACK groups, one per tensor-parallel engine (its 2 workers on one node), "
                                 "and the learner ranks' group, SPREAD")


