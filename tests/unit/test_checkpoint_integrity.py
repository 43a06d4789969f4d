"""A broken checkpoint is found before any actor starts: the run resumes from the newest whole
one, with a warning, or stops naming what is broken; never trains on garbage."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spct.run_state import CheckpointError, RunState, RunStore, checkpoint_problem


def hf_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    save_file({"w": torch.arange(64, dtype=torch.float32)}, path / "model.safetensors")
    return path


def learner_folder(path: Path) -> Path:
    """A DeepSpeed `save_state` folder's shape: torch.save archives in the tagged folder."""
    (path / "learner").mkdir(parents=True)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save({"state": torch.arange(4096, dtype=torch.float32)}, path / "learner" / name)
    return path


def test_a_whole_folder_passes_and_each_damage_is_named(tmp_path):
    good = hf_folder(tmp_path / "good")
    assert checkpoint_problem(good) is None
    assert checkpoint_problem(tmp_path / "absent") == "missing"

    cut = hf_folder(tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:-10])
    assert "model.safetensors is truncated" in checkpoint_problem(cut)
    (cut / "model.safetensors").write_bytes(data[:5])
    assert "no whole header" in checkpoint_problem(cut)

    bad_config = hf_folder(tmp_path / "config")
    (bad_config / "config.json").write_text("{")
    assert "config.json unreadable" in checkpoint_problem(bad_config)
    no_weights = hf_folder(tmp_path / "noweights")
    (no_weights / "model.safetensors").unlink()
    assert checkpoint_problem(no_weights) == "no *.safetensors weights"

    state = learner_folder(tmp_path / "state")
    assert checkpoint_problem(state, "learner") is None
    (state / "learner" / "mp_rank_00_model_states.pt").write_bytes(b"")
    assert "is empty" in checkpoint_problem(state, "learner")
    assert "no DeepSpeed state" in checkpoint_problem(tmp_path / "good", "learner")
    # Cut short (a crash or a full disk mid-write): torch.load would fail on it.
    cut = learner_folder(tmp_path / "cut_state") / "learner" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    whole = cut.read_bytes()
    for keep in (len(whole) - 10, len(whole) // 2, 100):
        cut.write_bytes(whole[:keep])
        assert "zero_pp_rank_0_mp_rank_00_optim_states.pt is not a whole archive" in checkpoint_problem(
            cut.parent.parent, "learner")
        with pytest.raises((RuntimeError, OSError)):
            torch.load(cut)


def run_with_checkpoints(tmp_path: Path) -> tuple[RunStore, Path]:
    """A run dir as `Pipeline.checkpoint` leaves it: rl-step000010 and, newer, rl-step000020."""
    out = tmp_path / "run"
    ckpt = out / "checkpoints"
    for step in (10, 20):
        folder = ckpt / f"rl-step{step:06d}"
        hf_folder(folder / "model")
        learner_folder(folder / "learner")
        state = RunState(completed=["warmup"], phase="rl", phase_step=step, global_step=100 + step,
                         weight_version=step, model=str(folder / "model"), learner_state=str(folder / "learner"))
        (folder / "run_state.json").write_text(json.dumps(dataclasses.asdict(state)))
    (ckpt / "state.json").write_text((ckpt / "rl-step000020" / "run_state.json").read_text())
    return RunStore(ckpt), ckpt


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    store, ckpt = run_with_checkpoints(tmp_path)
    weights = ckpt / "rl-step000020" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="spct"):
        state = store.load()
    assert (state.phase_step, state.weight_version) == (10, 10)
    assert state.model.endswith("rl-step000010/model")
    assert "rl-step000020" in caplog.text and "truncated" in caplog.text
    assert json.loads((ckpt / "state.json").read_text())["phase_step"] == 10


def test_a_missing_learner_state_falls_back_too(tmp_path):
    store, ckpt = run_with_checkpoints(tmp_path)
    import shutil

    shutil.rmtree(ckpt / "rl-step000020" / "learner")
    assert store.load().learner_state.endswith("rl-step000010/learner")


def test_with_no_whole_checkpoint_the_run_stops_naming_them(tmp_path):
    store, ckpt = run_with_checkpoints(tmp_path)
    for step in (10, 20):
        (ckpt / f"rl-step{step:06d}" / "model" / "config.json").write_text("")
    with pytest.raises(CheckpointError) as err:
        store.load()
    assert "rl-step000020/model: config.json unreadable" in str(err.value)
    assert "start over" in str(err.value)


def test_a_whole_run_resumes_as_recorded(tmp_path):
    store, _ = run_with_checkpoints(tmp_path)
    assert store.load().phase_step == 20


def test_a_state_file_written_before_rft_progress_was_typed_still_resumes(tmp_path):
    store, ckpt = run_with_checkpoints(tmp_path)
    old = json.loads((ckpt / "state.json").read_text())
    old.pop("rft")
    old["extra"] = {"items_done": 48, "lines": 144, "counts": {"samples": 96}}
    (ckpt / "state.json").write_text(json.dumps(old))
    state = store.load()
    assert (state.rft.items_done, state.rft.lines, state.rft.counts, state.rft.sampling_done) == (
        48, 144, {"samples": 96}, False)


def test_a_saved_checkpoint_is_named_in_state_json_and_resumes(tmp_path):
    store, ckpt = run_with_checkpoints(tmp_path)
    state = store.load()
    state.phase_step = 30

    def write_weights(folder: Path, with_optimizer: bool) -> None:
        hf_folder(folder / "model")
        if with_optimizer:
            learner_folder(folder / "learner")

    store.save("rl-step000030", state, write_weights, "model", final=False)
    assert not list(ckpt.glob(".partial-*"))
    again = store.load()
    assert again.phase_step == 30
    assert again.model == str(ckpt / "rl-step000030" / "model")
    assert again.learner_state == str(ckpt / "rl-step000030" / "learner")
    assert store.read() == again


def test_a_truncated_learner_state_falls_back_to_the_previous_checkpoint(tmp_path, caplog):
    store, ckpt = run_with_checkpoints(tmp_path)
    optim = ckpt / "rl-step000020" / "learner" / "learner" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    optim.write_bytes(optim.read_bytes()[:-50])
    with caplog.at_level(logging.WARNING, logger="spct"):
        state = store.load()
    assert state.learner_state.endswith("rl-step000010/learner")
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt is not a whole archive" in caplog.text


def test_an_unreadable_state_json_falls_back_to_the_newest_snapshot(tmp_path, caplog):
    store, ckpt = run_with_checkpoints(tmp_path)
    whole = (ckpt / "state.json").read_text()
    (ckpt / "state.json").write_text(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING, logger="spct"):
        assert store.read().phase_step == 20  # what a dry run and the rerun check see
        state = store.load()
    assert state.phase_step == 20 and state.model.endswith("rl-step000020/model")
    assert "state.json is unreadable" in caplog.text and "rl-step000020/run_state.json" in caplog.text
    assert json.loads((ckpt / "state.json").read_text())["phase_step"] == 20  # written back whole

    (ckpt / "state.json").write_text("{")
    for step in (10, 20):
        (ckpt / f"rl-step{step:06d}" / "run_state.json").write_text("")
    with pytest.raises(CheckpointError, match="state.json is unreadable .* no checkpoint folder"):
        store.read()


def test_a_copied_or_moved_run_reads_its_own_checkpoints(tmp_path):
    """state.json and every snapshot store paths inside output_dir relative to it; a local folder
    outside it stays absolute and a hub id as given."""
    import shutil

    store, ckpt = run_with_checkpoints(tmp_path)
    state = store.load()
    state.phase_start = str(hf_folder(tmp_path / "base_model"))  # outside output_dir
    store.write(state)
    stored = json.loads((ckpt / "state.json").read_text())
    assert stored["model"] == "./checkpoints/rl-step000020/model"
    assert stored["learner_state"] == "./checkpoints/rl-step000020/learner"
    assert stored["phase_start"] == str(tmp_path / "base_model")

    def write_weights(folder: Path, with_optimizer: bool) -> None:
        hf_folder(folder / "model")
        learner_folder(folder / "learner")

    state.phase_step = 30
    store.save("rl-step000030", state, write_weights, "model", final=False)
    snapshot = json.loads((ckpt / "rl-step000030" / "run_state.json").read_text())
    assert snapshot["model"] == "./checkpoints/rl-step000030/model"

    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(ckpt.parent), str(moved))
    again = RunStore(moved / "checkpoints").load()
    assert again.model == str(moved / "checkpoints" / "rl-step000030" / "model")
    assert again.learner_state == str(moved / "checkpoints" / "rl-step000030" / "learner")
    assert not (tmp_path / "run").exists() and Path(again.model).is_dir()

    hub = RunState(model="Qwen/Qwen2.5-7B-Instruct")
    store = RunStore(moved / "checkpoints")
    store.write(hub)
    assert json.loads((moved / "checkpoints" / "state.json").read_text())["model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert store.read().model == "Qwen/Qwen2.5-7B-Instruct"


def test_a_stored_folder_outside_the_run_that_is_gone_is_named(tmp_path):
    """A local base model or GRM outside output_dir is stored absolute; when it is gone the
    resume stops naming it (no snapshot would help), before any actor starts."""
    import shutil

    store, ckpt = run_with_checkpoints(tmp_path)
    base = hf_folder(tmp_path / "my-base-model")
    state = store.load()
    state.phase_start = str(base)
    store.write(state)
    assert store.load().phase_start == str(base)
    shutil.rmtree(base)
    with pytest.raises(CheckpointError) as err:
        store.load()
    assert f"phase_start {base}" in str(err.value) and "outside the run folder" in str(err.value)


def test_a_write_that_fails_leaves_the_old_file_whole(tmp_path):
    """state.json, config.yaml, a card, the pre-filter's list and a rolled-back metrics file are
    all written by spct.files.write_atomic."""
    from spct.files import write_atomic

    path = write_atomic(tmp_path / "state.json", '{"phase": "rl"}')
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, '{"phase": "\ud800"}')  # fails while writing: nothing replaced
    assert path.read_text() == '{"phase": "rl"}'
    write_atomic(path, '{"phase": "eval"}')
    assert path.read_text() == '{"phase": "eval"}' and [p.name for p in tmp_path.iterdir()] == ["state.json"]
