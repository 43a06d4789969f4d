"""What spct.train decides before Ray starts: a rerun's resume or refusal, sweep folders, warnings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from spct import preflight
from spct.config import ConfigError, register_schema, to_config
from spct.run_state import RunState

CONF = Path(__file__).resolve().parents[2] / "conf"


def _config(*overrides: str):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return to_config(compose("config", overrides=list(overrides)))


SAVED = dataclasses.asdict(_config())


def _changes(now, started):
    return preflight.config_changes(SAVED, dataclasses.asdict(now), started)


def test_keys_that_change_results_are_named_and_neutral_ones_pass():
    now = _config("rl.beta=0.5", "seed=3", "logger=none", "checkpoint.every_steps=5", "checkpoint.max_restarts=2",
                  "cluster.num_cpus=8", "output_dir=elsewhere")
    assert _changes(now, ["warmup", "rft", "rl"]) == ["rl.beta: 0.02 -> 0.5", "seed: 0 -> 3"]


def test_settings_of_phases_not_started_may_change():
    now = _config("rl.beta=0.5", "meta_rm.lr=0.1", "eval.k_max=2", "policy.lr=0.1")
    assert _changes(now, ["warmup", "rft"]) == []  # rl, meta_rm, eval, policy_rl: not started
    assert _changes(now, ["warmup", "rft", "rl"]) == ["rl.beta: 0.02 -> 0.5"]
    # eval.split decides the held-out accuracy after every GRM phase, not only the eval phase
    assert _changes(_config("eval.split=validation"), ["warmup"]) == ["eval.split: 'test' -> 'validation'"]
    policy = _config("policy.sft_lr=0.1", "policy.lr=0.5")
    assert _changes(policy, ["policy_sft"]) == ["policy.sft_lr: 0.002 -> 0.1"]


def test_phases_may_go_on_after_the_started_ones_only():
    more = _config("phases=[warmup,rft,rl,meta_rm,eval,policy_sft,policy_rl]", "policy.max_new_tokens=32")
    assert _changes(more, ["warmup", "rft", "rl", "meta_rm", "eval"]) == []
    other = _config("phases=[warmup,rl]")
    assert _changes(other, ["warmup", "rft"]) == ["phases: ['warmup', 'rft', 'rl', 'meta_rm', 'eval'] -> "
                                                 "['warmup', 'rl']"]
    assert _changes(other, ["warmup"]) == []


def test_a_refused_rerun_names_the_keys_and_the_ways_out():
    state = RunState(completed=["warmup", "rft", "rl"], phase="meta_rm", phase_step=2)
    with pytest.raises(ConfigError) as err:
        preflight.check_rerun(_config("rl.lr=1e-3"), state, SAVED)
    assert "rl.lr: 5e-05 -> 0.001" in str(err.value)
    assert "checkpoint.resume=force" in str(err.value) and "checkpoint.resume=fresh" in str(err.value)
    forced = preflight.check_rerun(_config("rl.lr=1e-3", "checkpoint.resume=force"), state, SAVED)
    assert forced == ["rl.lr: 5e-05 -> 0.001"]  # resumed anyway, the change said
    assert "although these keys differ (checkpoint.resume=force): rl.lr" in preflight.resume_note(
        _config("rl.lr=1e-3", "checkpoint.resume=force"), state, SAVED, forced)
    assert preflight.check_rerun(_config("rl.lr=1e-3"), None, SAVED) == []  # nothing to resume
    assert preflight.check_rerun(_config("rl.lr=1e-3"), state, None) == []  # a run from before config.yaml


def test_save_config_keeps_the_earlier_one_and_fresh_moves_the_run_aside(tmp_path):
    out = tmp_path / "run"
    preflight.save_config(_config(), out, None)
    saved = preflight.read_saved_config(out)
    assert saved["rl"]["beta"] == 0.02
    preflight.save_config(_config("rl.beta=0.5"), out, saved)
    assert preflight.read_saved_config(out)["rl"]["beta"] == 0.5
    assert len(list(out.glob("config.before-*.yaml"))) == 1
    (out / "metrics.jsonl").write_text("{}\n")
    aside = preflight.move_aside(out)
    assert not out.exists() and (aside / "metrics.jsonl").exists() and aside.name.startswith("run.old-")


def test_a_sweep_job_gets_a_folder_a_group_and_a_run_name():
    assert preflight.job_folder(["rl.beta=0.02", "data.train=/data/x y.jsonl"], 3) == \
        "rl.beta=0.02,data.train=_data_x_y.jsonl"
    assert preflight.job_folder(["model.path=" + "a" * 200], 7).endswith("-job7")
    job = preflight.SweepJob(folder="rl.beta=0.02", overrides=("rl.beta=0.02",), group="rl.beta")
    config = preflight.place_sweep_job(_config("output_dir=outputs/b"), job)
    assert config.output_dir == str(Path("outputs/b/rl.beta=0.02"))
    assert (config.logger.group, config.logger.run_name) == ("b:rl.beta", "b/rl.beta=0.02")
    assert config.logger.tags == ["rl.beta=0.02"]
    assert preflight.place_sweep_job(_config(), None) == _config()


def test_a_real_model_without_a_preset_is_warned_about_the_demo_settings_it_keeps():
    choices = {"model": "qwen2.5-7b-instruct", "rft": "tiny", "rl": "tiny", "meta_rm": "tiny", "learner": "cpu",
               "experiment": None}
    config = _config("model=qwen2.5-7b-instruct", "data=files", "data.train=/d.jsonl", "data.test=/t.jsonl",
                     "phases=[rft,rl]", "learner.zero_stage=1")
    (warning,) = preflight.toy_defaults(config, choices)
    assert "(rft=tiny, rl=tiny, learner=cpu:" in warning  # not meta_rm: this run has no meta_rm phase
    assert preflight.toy_defaults(config, {**choices, "experiment": "grm-qwen2.5-7b"}) == []
    assert preflight.toy_defaults(_config(), {"rl": "tiny"}) == []  # the tiny model itself


def test_a_policy_phase_without_a_grm_is_refused_unless_the_run_trained_one():
    config = _config("experiment=policy", "phases=[policy_rl]")
    with pytest.raises(ConfigError, match="policy.grm: expected the GRM"):
        preflight.run_inputs(config, None)
    preflight.run_inputs(config, RunState(completed=["warmup", "rft", "rl"]))
