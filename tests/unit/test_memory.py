"""The plan's GPU memory estimates: exact parameter counts, every shipped GPU preset fitting its
cluster, and runs that cannot fit refused before anything starts, naming actor, parts and limit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from spct.config import ConfigError, register_schema, to_config
from spct.memory import SHAPES, GiB, estimate, problems, shape_of

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DATA = ("data.train=/d.jsonl", "data.test=/t.jsonl")
PRESETS = {  # each shipped GPU experiment on the cluster its header names
    "grm-qwen2.5-7b": ("experiment=grm-qwen2.5-7b", "cluster=gpu_8x", *DATA),
    "grm-gemma-2-27b": ("experiment=grm-gemma-2-27b", "cluster=multi_node", "cluster.nodes=4", *DATA),
    "policy-qwen2.5-7b": ("experiment=policy-qwen2.5-7b", "policy.model=Qwen/Qwen2.5-1.5B-Instruct",
                          "policy.grm=Qwen/Qwen2.5-7B-Instruct", *DATA),
}


def _config(*overrides: str):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return to_config(compose("config", overrides=list(overrides)))


@pytest.mark.parametrize("model,params", [("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512),
                                          ("Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304),
                                          ("google/gemma-2-27b-it", 27_227_128_320)])
def test_a_shipped_shape_counts_the_models_published_parameters(model, params):
    """The counts on the models' cards (safetensors totals), from the shipped architecture fields."""
    assert shape_of(model).params == params


def test_a_local_model_is_counted_from_its_own_config(tiny_model_dir):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    shape = shape_of(str(tiny_model_dir))
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.largest == max(p.numel() for p in model.parameters())
    assert shape_of("someone/unknown-model") is None


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_shipped_gpu_preset_fits_its_cluster(preset):
    c = _config(*PRESETS[preset])
    needs, unestimated = estimate(c)
    assert unestimated == [] and problems(needs, c.cluster.gpu_memory_gib) == []
    actors = {n.actor.split(" (")[0] for n in needs}
    assert {"learner rank"} <= actors and any(a.startswith("rollout engine of") for a in actors)
    assert all(0 < n.total < 80 * GiB for n in needs)


def test_a_capped_attention_model_counts_its_eager_attention():
    """Gemma-2 trains (and its meta RM scores) with eager attention unless FlashAttention-2 is
    installed: heads x length² per sequence, which the Qwen presets' fused kernel never holds."""
    gemma = {n.actor: n for n in estimate(_config(*PRESETS["grm-gemma-2-27b"]))[0]}
    assert gemma["learner rank (rft)"].parts["eager attention"] == 2 * 2.0 * 1 * 32 * 8192**2
    assert gemma["meta RM (scoring)"].parts["eager attention"] == 8192 * 8192 * 32 * 6.0
    qwen = estimate(_config(*PRESETS["grm-qwen2.5-7b"]))[0]
    assert not any("eager attention" in n.parts for n in qwen)


@pytest.mark.parametrize("model", ["Qwen/Qwen2.5-1.5B-Instruct", "google/gemma-2-27b-it"])
@pytest.mark.parametrize("ranks", [1, 4, 16, 64])
def test_model_states_are_deepspeeds_own_estimates(model, ranks):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from spct.memory import model_states

    shape = shape_of(model)
    assert model_states(shape, 3, ranks) == estimate_zero3_model_states_mem_needs(
        shape.params, shape.largest, num_gpus_per_node=ranks, cpu_offload=False, cpu_offload_params=False)[1]
    for stage in (1, 2):
        assert model_states(shape, stage, ranks) == estimate_zero2_model_states_mem_needs(
            shape.params, num_gpus_per_node=ranks, cpu_offload=False)[1]


def test_a_counted_shape_is_kept_for_the_next_command(tmp_path, monkeypatch):
    from spct.memory import _count, cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _count.cache_clear()
    first = shape_of("Qwen/Qwen2.5-1.5B-Instruct")
    kept = list(cache_dir().glob("*.json"))
    assert cache_dir() == tmp_path / "spct" / "shapes" and len(kept) == 1
    _count.cache_clear()
    monkeypatch.setattr("spct.memory._build", lambda text: pytest.fail("counted again"))
    assert shape_of("Qwen/Qwen2.5-1.5B-Instruct") == first
    kept[0].write_text("{not json")  # a damaged entry is counted again, not trusted
    _count.cache_clear()
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert shape_of("Qwen/Qwen2.5-1.5B-Instruct") == first
    _count.cache_clear()


def test_zero3_states_and_the_reference_of_the_7b_preset():
    c = _config(*PRESETS["grm-qwen2.5-7b"])
    shape = shape_of("Qwen/Qwen2.5-7B-Instruct")
    rl = next(n for n in estimate(c)[0] if n.actor == "learner rank (rl)")
    assert rl.parts["model states (ZeRO-3 over 4 ranks)"] == int(18 * shape.params / 4) + 4 * shape.largest
    assert rl.parts["reference"] == 2 * (shape.params / 4 + shape.largest)


@pytest.mark.parametrize("overrides,expected", [
    (("learner.gradient_checkpointing=false",),
     "memory: learner rank (rft): 231.0 GiB (model states (ZeRO-3 over 4 ranks) 33.9, activations (4 x 8192 "
     "tokens) 178.5, logits 18.6) does not fit in 80.0 GiB (cluster.gpu_memory_gib 80); try a "
     "learner.micro_batch_size below 4, more learner.num_ranks than 4, learner.gradient_checkpointing=true"),
    (("learner.zero_stage=2", "cluster.gpu_memory_gib=40"), "memory: learner rank (rl):"),
    (("rollout.colocate=true", "learner.num_ranks=4", "rl.async_generation=false"),
     "memory: Qwen/Qwen2.5-7B-Instruct engine + learner rank, colocated: 86.5 GiB"),
    (("model=gemma-2-27b", "rollout.gpu_memory_utilization=0.5"),
     "memory: rollout engine of google/gemma-2-27b-it (per GPU of 1): 55.0 GiB (weights 50.7, forward of 8192 "
     "tokens 1.4, KV cache of one 8192-token sequence 2.9) does not fit in 40.0 GiB (rollout.gpu_memory_utilization "
     "0.5 of cluster.gpu_memory_gib 80); try a larger rollout.gpu_memory_utilization"),
])
def test_a_run_that_cannot_fit_is_refused_naming_the_actor_and_the_numbers(overrides, expected):
    c = _config(*PRESETS["grm-qwen2.5-7b"], *overrides)
    found = problems(*estimate(c)[:1], c.cluster.gpu_memory_gib)
    assert any(p.startswith(expected) for p in found), found


def test_colocation_fits_once_the_engines_share_leaves_the_learner_room():
    c = _config(*PRESETS["grm-qwen2.5-7b"], "rollout.colocate=true", "rl.async_generation=false",
                "rollout.gpu_memory_utilization=0.4")
    assert problems(estimate(c)[0], 80) == []


def test_a_model_without_a_shape_is_named_not_guessed():
    c = _config(*PRESETS["policy-qwen2.5-7b"][:1], "policy.model=someone/policy-1b", "policy.grm=/no/grm", *DATA)
    notes = estimate(c)[1]
    assert any("someone/policy-1b (the policy_rl phase)" in n for n in notes)
    assert any(n.startswith("memory: not estimated for /no/grm (a rollout engine)") for n in notes)
    assert estimate(_config()) == ([], [])  # a CPU run holds no GPU


def test_a_bad_gpu_memory_is_refused():
    with pytest.raises(ConfigError, match="cluster.gpu_memory_gib: expected each GPU's memory in GiB"):
        _config("cluster.gpu_memory_gib=0")


def test_the_real_command_stops_before_ray_on_a_run_the_gpus_cannot_hold(tmp_path):
    """A joined cluster (no local check of its GPUs): the memory estimate still stops the run."""
    model = tmp_path / "grm"
    model.mkdir()
    shutil.copy(SHAPES / "Qwen--Qwen2.5-7B-Instruct.json", model / "config.json")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+{i}?", "chosen": str(2 * i), "rejected": "0"}) + "\n"
                            for i in range(200)))
    out = subprocess.run([sys.executable, "-m", "spct.train", "experiment=grm-qwen2.5-7b", "cluster=gpu_8x",
                          "cluster.address=auto", f"model.path={model}", f"data.train={data}", f"data.test={data}",
                          "rl.prompts_per_step=64", "learner.micro_batch_size=16", "logger=none",
                          f"output_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-2000:]
    assert "the GPUs cannot hold the run" in text and "learner.micro_batch_size below 16" in text, text[-2000:]
    assert "Ray instance" not in text and not (tmp_path / "run" / "placement.json").exists()


def test_host_ram_while_loading_is_a_whole_copy_per_rank_below_zero3_and_a_shard_at_zero3():
    from spct.memory import SHARD, host_check

    shape = shape_of("Qwen/Qwen2.5-7B-Instruct")
    below = next(n for n in estimate(_config(*PRESETS["grm-qwen2.5-7b"], "learner.zero_stage=2"))[0] if n.host)
    assert below.total == 4 * 2 * 2.0 * shape.params  # 4 ranks on the node, policy + reference of rl
    assert "4 ranks x 2 models of rl, a whole bf16 copy each" in below.describe()
    zero3 = next(n for n in estimate(_config(*PRESETS["grm-qwen2.5-7b"]))[0] if n.host)
    assert zero3.total == 4 * 2 * SHARD
    assert problems([below], 80) == []  # a host need is not a GPU's
    small, large = {"GPU": 8.0, "memory": 64 * GiB}, {"GPU": 8.0, "memory": 512 * GiB}
    assert host_check(below, [large]) is None and host_check(zero3, [small]) is None
    assert "is more than the 64.0 GiB Ray gives the smallest node" in host_check(below, [large, small])
