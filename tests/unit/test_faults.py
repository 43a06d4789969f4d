"""What a run keeps when it resumes after a fault: metrics logged once, faults told apart from bugs."""

from __future__ import annotations

import json

import pytest

from spct.tracking import Tracker


def _steps(path):
    return [json.loads(line)["step"] for line in path.open()]


def test_a_resume_moves_the_metrics_logged_after_its_checkpoint_aside(tmp_path):
    t = Tracker(tmp_path, kind="none")
    for step in range(1, 8):
        t.log({"loss": float(step)}, step=step, phase="rl", phase_step=step)
    t.finish()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 8, "phase": "rl", "lo')  # the crash cut the last line short

    t = Tracker(tmp_path, kind="none", resume_step=4)  # the checkpoint was at step 4
    for step in range(5, 9):  # the resumed run logs steps 5.. again
        t.log({"loss": float(step)}, step=step, phase="rl", phase_step=step)
    t.finish()
    assert _steps(tmp_path / "metrics.jsonl") == list(range(1, 9))  # each step once, in order
    rolled = (tmp_path / "metrics.rolled_back.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in rolled[:-1]] == [5, 6, 7] and rolled[-1].startswith('{"step": 8')


def test_a_fall_back_to_a_phase_final_checkpoint_runs_its_evaluation_again_logged_once(tmp_path):
    """A phase-final checkpoint is saved before the phase's held-out evaluation is logged at the
    same step; resuming from it (the state names the phase as running) evaluates again."""
    t = Tracker(tmp_path, kind="none")
    for step in range(1, 4):
        t.log({"loss": float(step)}, step=step, phase="rl", phase_step=step)
    t.log({"eval/accuracy": 0.5}, step=3, phase="rl")  # after the rl-final checkpoint at step 3
    t.log({"loss": 9.0}, step=4, phase="meta_rm", phase_step=1)
    t.finish()

    t = Tracker(tmp_path, kind="none", resume_step=3, resume_phase="rl")
    t.log({"eval/accuracy": 0.5}, step=3, phase="rl")
    t.finish()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [(r["step"], "eval/accuracy" in r) for r in records] == [(1, False), (2, False), (3, False), (3, True)]
    rolled = [json.loads(x) for x in (tmp_path / "metrics.rolled_back.jsonl").read_text().splitlines()]
    assert [(r["step"], r["phase"]) for r in rolled] == [(3, "rl"), (4, "meta_rm")]


def test_a_fresh_or_caught_up_tracker_keeps_every_line(tmp_path):
    t = Tracker(tmp_path, kind="none")
    t.log({"loss": 1.0}, step=1, phase="warmup")
    t.finish()
    Tracker(tmp_path, kind="none", resume_step=1).finish()
    assert _steps(tmp_path / "metrics.jsonl") == [1]
    assert not (tmp_path / "metrics.rolled_back.jsonl").exists()


def test_actor_faults_are_told_apart_from_errors():
    ray_exceptions = pytest.importorskip("ray.exceptions")
    from spct.cluster import actor_fault

    died = ray_exceptions.ActorDiedError()
    assert actor_fault(died) is died
    assert actor_fault(ray_exceptions.NodeDiedError("node gone")) is not None
    # Seen through another actor's call, or re-raised by the driver's own code.
    wrapped = ray_exceptions.RayTaskError("generate", "traceback", died)
    assert actor_fault(wrapped) is died
    try:
        try:
            raise died
        except Exception as e:
            raise RuntimeError("weight sync failed") from e
    except RuntimeError as e:
        assert actor_fault(e) is died
    assert actor_fault(ValueError("bad batch")) is None
    assert actor_fault(ray_exceptions.RayTaskError("step", "traceback", ValueError("bad batch"))) is None


def test_an_actor_that_cannot_start_is_a_failure_named_not_a_fault():
    """Its constructor raised: the same inputs would fail again, so it is not a fault to restart
    from, and the driver names the constructor's error (Ray's own shape of it, from a real actor)."""
    ray = pytest.importorskip("ray")
    from spct.cluster import actor_fault, start_failure

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        @ray.remote
        class Engine:
            def __init__(self, path):
                raise FileNotFoundError(f"model folder not found: {path}")

            def version(self):
                return 0

        with pytest.raises(ray.exceptions.RayActorError) as died:
            ray.get(Engine.remote("/ckpt/none").version.remote())
    finally:
        ray.shutdown()
    assert start_failure(died.value) == "Engine: FileNotFoundError: model folder not found: /ckpt/none"
    assert actor_fault(died.value) is None
    assert start_failure(ray.exceptions.ActorDiedError()) is None  # died mid-run: a fault
    assert actor_fault(ray.exceptions.ActorDiedError()) is not None
