"""The whole pipeline through `python -m spct.train experiment=quick`, as a user runs it."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import layouts
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
VOLATILE = ("time", "tokens_per_s")  # wall-clock measures differ between any two runs


def _train(out: Path, *overrides: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "spct.train", "experiment=quick", f"output_dir={out}", *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_quick_experiment_runs_every_phase(quick_run):
    out, log = quick_run
    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results) == ["warmup", "rft", "rl", "meta_rm", "eval"]
    for phase in ("warmup", "rft", "rl"):
        res = results[phase]
        assert 0.0 <= res["ci_low"] <= res["accuracy"] <= res["ci_high"] <= 1.0
        assert res["n"] == 32
    assert results["meta_rm"]["validation_trajectories"] == 16 * 2
    methods = {(r["method"], r["k"]) for r in results["eval"]["scaling"]}
    assert methods == {("Greedy", 1), ("Voting", 1), ("Voting", 2), ("Voting", 4), ("MetaRM", 1),
                       ("MetaRM", 2), ("MetaRM", 4)}
    assert (out / "eval" / "test" / "scaling.png").exists()
    assert (out / "checkpoints" / "meta_rm-final" / "model" / "config.json").exists()
    assert "held-out accuracy" in (out / "summary.md").read_text()
    assert "held-out accuracy" in log

    records = _records(out)
    rl = [r for r in records if r["phase"] == "rl" and "reward_mean" in r]
    assert len(rl) == 2
    for key in ("reward_mean", "accuracy", "parse_failure_rate", "kl", "entropy", "response_length",
                "logprob_gap", "time/generate", "time/reward", "time/train", "time/weight_sync",
                "tokens_per_s", "weight_version"):
        assert key in rl[0], key
    # On-policy: the learner recomputes the rollout engine's log-probs on the same weights.
    assert rl[0]["logprob_gap"] < 1e-3
    assert [r["weight_version"] for r in rl] == sorted({r["weight_version"] for r in rl})
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)

    samples = [json.loads(line) for line in (out / "rft" / "trajectories.jsonl").read_text().splitlines()]
    assert len(samples) == 16 * 3  # 16 items x (2 non-hinted + 1 hinted)
    assert all(not s["prompt"].rstrip().endswith(("Response 1", "Response 2", "Response 3", "Response 4"))
               or "The best response is" not in s["prompt"] for s in samples)
    assert any((out / "wandb").glob("offline-run-*"))
    # Every actor of every phase, as it reported itself, sat where the plan put it.
    placement = json.loads((out / "placement.json").read_text())
    assert placement["misplaced"] == []
    seen = {(a["phase"], a["role"]): a["bundle"] for a in placement["actors"]}
    assert all(placement["plan"][phase][role] == bundle for (phase, role), bundle in seen.items())
    assert {("warmup", "rollout engine 0"): 0, ("warmup", "learner rank 0"): 1, ("rl", "learner rank 0"): 1,
            ("meta_rm", "learner rank 0"): 1, ("meta_rm", "meta RM"): 1, ("eval", "meta RM"): 1}.items() <= seen.items()


def test_checkpoints_load_in_transformers(quick_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = quick_run
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["completed"] == ["warmup", "rft", "rl", "meta_rm", "eval"]
    assert state["model"] == "./checkpoints/rl-final/model"  # relative to output_dir: the folder can move
    model = AutoModelForCausalLM.from_pretrained(out / state["model"])
    tok = AutoTokenizer.from_pretrained(out / state["model"])
    assert model.config.vocab_size >= len(tok)


def test_rerun_of_a_finished_run_does_no_work(quick_run):
    """The same command again: the saved results, in seconds, with nothing started or rewritten."""
    out, _ = quick_run
    before = len(_records(out)), (out / "results.json").read_text()
    log = _finish(_train(out))
    assert "already complete" in log and "held-out accuracy" in log
    assert "Ray instance" not in log
    assert (len(_records(out)), (out / "results.json").read_text()) == before


def _wait_for_step(proc: subprocess.Popen, out: Path, phase: str, step: int) -> None:
    deadline = time.time() + 300
    while not any(r["phase"] == phase and (r.get("phase_step") or 0) >= step for r in _records(out)):
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"the run never reached {phase} step {step}")
        time.sleep(0.2)


def _kill_actor(proc: subprocess.Popen, actor: str) -> None:
    """SIGKILL the run's one `actor` process (found among the driver's descendants)."""
    import psutil

    def cmdline(p: psutil.Process) -> list[str]:
        try:
            return p.cmdline()
        except psutil.Error:  # gone, or a zombie not reaped yet (a worker that just exited)
            return []

    deadline = time.time() + 60
    while not (victims := [c for c in psutil.Process(proc.pid).children(recursive=True)
                           if any(part.startswith(f"ray::{actor}") for part in cmdline(c))]):
        assert time.time() < deadline and proc.poll() is None, f"no {actor} process"
        time.sleep(0.1)
    assert len(victims) == 1, [cmdline(c) for c in victims]
    victims[0].kill()


def _outcome(out: Path) -> tuple[list[dict], dict, str, dict]:
    """Everything a run's seed decides: its metrics (without wall-clock measures), held-out
    results, eval generations and final weights."""
    from safetensors.torch import load_file

    metrics = [{k: v for k, v in r.items() if not any(w in k for w in VOLATILE)} for r in _records(out)]
    results = json.loads((out / "results.json").read_text())["results"]
    generations = (out / "eval" / "test" / "generations.jsonl").read_text()
    weights = {ck: load_file(str(out / "checkpoints" / ck / "model" / "model.safetensors"))
               for ck in ("rl-final", "meta_rm-final")}
    return metrics, results, generations, weights


def test_a_run_killed_three_ways_ends_as_the_uninterrupted_run(quick_run, tmp_path):
    """The quick run again, checkpointed every step, and stopped three times: the whole run
    SIGKILLed mid-warm-up, then a vLLM engine killed mid-RL (the run stops cleanly), then a
    learner rank killed after the resume (`checkpoint.max_restarts=1` restarts it). Each rerun is
    the same command; the end is the uninterrupted run's, bitwise: every metric logged once, the
    held-out results, the eval samples and the final weights (seeded sampling, data order,
    optimizer state and the KL reference all resume). Being the same seed's second run, it also
    checks that a rerun from scratch repeats itself."""
    out = tmp_path / "run"
    every = "checkpoint.every_steps=1"
    proc = _train(out, every, start_new_session=True)
    _wait_for_step(proc, out, "warmup", 7)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["phase"] == "warmup" and state["phase_step"] >= 6
    saved = state["phase_step"]
    logged = [r["phase_step"] for r in _records(out) if r["phase"] == "warmup" and "loss" in r]

    proc = _train(out, every)
    _wait_for_step(proc, out, "rl", 1)
    _kill_actor(proc, "VLLMEngine")
    log, _ = proc.communicate(timeout=300)
    assert f"at warmup step {saved}" in log
    # Steps logged after the checkpoint before the kill are set aside, whole lines only.
    aside = out / "metrics.rolled_back.jsonl"
    lines = aside.read_text().splitlines() if aside.exists() else []
    assert [json.loads(x)["phase_step"] for x in lines if x.endswith("}") and '"loss"' in x] == \
        [s for s in logged if s > saved]
    assert proc.returncode == 1, log[-3000:]
    assert "stopped cleanly" in log and "Rerun the same command to resume from rl step" in log
    assert "Traceback" not in log.split("stopped cleanly")[-1]
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["phase"] == "rl" and state["phase_step"] >= 1

    proc = _train(out, every, "checkpoint.max_restarts=1")
    head = []
    for line in proc.stdout:
        head.append(line)
        if f"at rl step {state['phase_step']}" in line:
            _kill_actor(proc, "LearnerWorker")
            break
    log = "".join(head) + _finish(proc)
    assert "an actor died; restarting from rl step" in log

    (metrics, results, generations, weights), expected = _outcome(out), _outcome(quick_run[0])
    assert [(r["phase"], r["step"]) for r in metrics] == [(r["phase"], r["step"]) for r in expected[0]]
    assert metrics == expected[0] and results == expected[1] and generations == expected[2]
    for ck, tensors in expected[3].items():
        assert tensors.keys() == weights[ck].keys() and all(weights[ck][k].equal(t) for k, t in tensors.items()), ck


def test_a_missing_model_path_fails_in_seconds_before_ray_starts(tmp_path):
    start = time.time()
    proc = _train(tmp_path / "run", "model.path=/nonexistent/grm")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "model.path: expected an existing file or folder" in out
    assert "Ray instance" not in out
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    assert time.time() - start < 60


POLICY_QUICK = ("policy.tiny_preset=test", "policy.sft_steps=4", "policy.sft_batch_size=8", "policy.steps=2",
                "policy.prompts_per_step=4", "policy.group_size=2", "policy.eval_items=8", "policy.eval_every=1",
                "policy.beta=0.02")


def test_policy_trained_with_the_runs_grm_as_its_reward(quick_run, tmp_path):
    """Policy phases appended to a finished GRM run: the GRM defaults to the run's rl-final, the
    group of rollouts is judged in one GRM prompt by Voting@2 guided by the run's meta RM."""
    import shutil

    src, _ = quick_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    meta_rm = out / "checkpoints" / "meta_rm-final" / "model"
    # The run's own settings (experiment=quick) with the policy phases appended: the rerun check
    # lets settings of phases that have not started change.
    _finish(_train(out, "phases=[warmup,rft,rl,meta_rm,eval,policy_sft,policy_rl]", *POLICY_QUICK,
                   "policy.lr=2e-4", "policy.max_new_tokens=32", "policy.reward.k=2", f"policy.meta_rm={meta_rm}"))
    results = json.loads((out / "results.json").read_text())["results"]
    assert 0.0 <= results["policy_rl"]["ci_low"] <= results["policy_rl"]["accuracy"] <= 1.0
    assert results["policy_rl"]["n"] == 8
    steps = [r for r in _records(out) if r["phase"] == "policy_rl" and "reward_mean" in r]
    for key in ("reward_mean", "grm_parse_failure_rate", "grm_time_share", "kl", "train_accuracy",
                "time/reward", "eval_accuracy", "answers/right", "answers/format"):
        assert key in steps[0], key
    assert all(0.0 <= r["reward_mean"] <= 1.0 for r in steps)
    assert steps[0]["grm_samples"] == 4 * 2  # 4 prompts, one GRM prompt each, k = 2
    # Each step's rollouts come from the weights the previous step pushed.
    assert [(r["weight_version"], r["rollout_version"]) for r in steps] == [(1, 0), (2, 1)]
    evals = sorted((out / "policy_eval").glob("step*.jsonl"))
    assert [p.name for p in evals] == ["step000000.jsonl", "step000001.jsonl", "step000002.jsonl"]
    assert len(evals[0].read_text().splitlines()) == 8
    placement = json.loads((out / "placement.json").read_text())
    assert placement["misplaced"] == []
    assert {(a["phase"], a["role"]): a["bundle"] for a in placement["actors"]} == {
        ("policy_sft", "learner rank 0"): 1, ("policy_rl", "policy_rollout engine 0"): 0,
        ("policy_rl", "learner rank 0"): 1, ("policy_rl", "policy GRM reward engine 0"): None,
        ("policy_rl", "policy meta RM"): None}

    from safetensors.torch import load_file

    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert Path(state["policy"]).parent.name == "policy_rl-final"
    assert Path(state["model"]).parent.name == "rl-final"  # the GRM is untouched
    before = load_file(out / "checkpoints" / "policy_sft-final" / "model" / "model.safetensors")
    after = load_file(out / state["policy"] / "model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before)


def test_policy_on_a_prompts_file_judged_one_rollout_at_a_time(quick_run, tmp_path):
    """A prompts-only file (text and message lists, one multi-turn) for policy_rl, with a GRM from
    elsewhere judging each rollout alone (n = 1), MetaRM-guided, each half of a step's prompts
    judged as soon as its rollouts are done (stream_chunks=2). The meta RM starts before the
    policy's learner and scores beside the placement group, so the learner gets its bundle: a
    run that waited forever when the meta RM took it."""
    src, _ = quick_run
    out = tmp_path / "policy"
    prompts = layouts.prompts(tmp_path / "prompts.jsonl", n=8)
    with prompts.open("a") as f:
        f.write(json.dumps({"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                       {"role": "user", "content": "Solve: 2+2"}]}) + "\n")
    grm, meta_rm = src / "checkpoints" / "rl-final" / "model", src / "checkpoints" / "meta_rm-final" / "model"
    log = _finish(_train(out, "experiment=policy", f"output_dir={out}", "data=files", f"data.train={prompts}",
                         "phases=[policy_rl]", *POLICY_QUICK, f"policy.grm={grm}", "policy.reward.mode=single",
                         "policy.reward.stream_chunks=2",
                         "policy.reward.k=2", f"policy.meta_rm={meta_rm}"), timeout=300)
    assert "no held-out accuracy is measured" in log
    steps = [r for r in _records(out) if r["phase"] == "policy_rl" and "reward_mean" in r]
    assert [r["grm_samples"] for r in steps] == [4 * 2 * 2, 4 * 2 * 2]  # one GRM prompt per rollout, k = 2
    assert all("train_accuracy" not in r for r in steps)  # nothing to check answers against
    assert not (out / "base_model").exists()  # no GRM engines were started for this run


def test_a_grm_trained_on_helpsteer3_and_evaluated_on_ultrafeedback(tmp_path):
    """The user's path with two of the sets reward models are trained on, each a copy in its hub
    layout: RFT and RL on HelpSteer3 (its config by name, the preference strength gating the
    hinted sample), a meta RM reading its own framing of the trajectories, eval on
    UltraFeedback's test_prefs, then policy_sft on the chosen answers."""
    hs3, uf = layouts.helpsteer3(tmp_path / "HelpSteer3"), layouts.ultrafeedback(tmp_path / "ultrafeedback")
    framing = tmp_path / "framing.j2"
    framing.write_text("Judged:\n{{ prompt }}\nVerdict:\n{{ completion }}\n")
    out = tmp_path / "run"
    log = _finish(_train(out, "data=files", f"data.train={{path:{hs3},subset:preference}}", "data.format=helpsteer3",
                   f"data.test={{path:{uf},format:ultrafeedback}}", "phases=[rft,rl,meta_rm,eval,policy_sft]",
                   "rft.hint_min_strength=2", "eval.k_max=2", *POLICY_QUICK[:3],
                   # General instruction data in RFT's batches: UltraFeedback's SFT split.
                   f"rft.general_data={{path:{uf},split:train_sft}}", "rft.general_mix=0.5",
                   f"meta_rm.input_template={framing}"))
    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results) == ["rft", "rl", "meta_rm", "eval", "policy_sft"]
    assert results["eval"]["scaling"]
    # The framing travels in the saved meta RM, and the eval phase scored through it (MetaRM@k).
    meta = out / "checkpoints" / "meta_rm-final" / "model"
    assert (meta / "spct_meta_rm_input.j2").read_text() == framing.read_text()
    assert json.loads((meta / "spct.json").read_text())["settings"]["input_template"] == str(framing)
    assert [r["method"] for r in results["eval"]["scaling"]].count("MetaRM") == 2
    judged = {json.loads(line)["item"] for line in (out / "eval" / "test" / "generations.jsonl").read_text().splitlines()}
    assert len(judged) == 7  # test_prefs' 8 pairs, one tie left out
    rows = [json.loads(line) for line in (out / "rft" / "trajectories.jsonl").read_text().splitlines()]
    strength = {str(k): abs(r["overall_preference"]) for k, r in enumerate(layouts.helpsteer3_rows(21))}
    hinted = {r["id"] for r in rows if r["hinted"]}
    assert hinted and all(strength[i.rsplit(":", 1)[1]] >= 2 for i in hinted)
    assert {r["id"] for r in rows} - hinted  # items of strength 1 were sampled, not hinted
    assert (out / "checkpoints" / "policy_sft-final" / "model" / "spct.json").exists()
    # Read with the data before Ray (how the batches mix it: tests/unit/test_rft_general.py).
    assert log.index("rft.general_data: 2 items") < log.index("Started a local Ray instance")


def test_a_policy_run_without_a_grm_fails_before_ray_starts(tmp_path):
    proc = _train(tmp_path / "run", "experiment=policy", f"output_dir={tmp_path / 'run'}", "phases=[policy_rl]")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "policy.grm: expected the GRM" in out
    assert "Ray instance" not in out


def test_async_rl_leaves_out_a_prompt_longer_than_the_context_not_a_crash(tmp_path, tiny_model_dir):
    """RL with generation one step ahead (`rl.async_generation=true`), after the RL pre-filter,
    on an HH-RLHF file, one of whose prompts leaves no room to generate: the engine gives it empty samples, each step trains
    on the other groups and counts the one it left out, and each step's rollouts come from the
    weights before the previous update (one step off-policy), never older."""
    layout = layouts.hh_rlhf(tmp_path / "hh-rlhf", n_train=3)  # Anthropic/hh-rlhf's train.jsonl.gz, named as a file
    long = "\n\nHuman: Explain. " + "word " * 2000 + "\n\nAssistant:"
    with gzip.open(layout / "helpful-base" / "train.jsonl.gz", "at") as f:
        f.write(json.dumps({"chosen": long + " a", "rejected": long + " b"}) + "\n")
    out = tmp_path / "run"
    # The RL pre-filter first: an untrained GRM judges no item right, so it keeps all four.
    log = _finish(_train(out, "data=files", f"data.train={layout / 'helpful-base' / 'train.jsonl.gz'}", "phases=[rl]",
                         "rl.steps=3", "rl.prompts_per_step=4", "rl.group_size=2", "rl.async_generation=true",
                         f"rl.prefilter_model={tiny_model_dir}", "rl.prefilter_samples=2"))
    prefilter = json.loads((out / "rl" / "prefilter.json").read_text())
    assert (prefilter["prefilter_items"], prefilter["prefilter_dropped"], len(prefilter["kept"])) == (4, 0, 4)
    assert "judged 0 of 4 train items right in all 2 samples" in log
    # The pre-filter's engine sampled in the rollout engine's bundle, the GRM's engine after it.
    placement = json.loads((out / "placement.json").read_text())
    assert [(a["role"], a["bundle"]) for a in placement["actors"]] == [
        ("RL pre-filter engine 0", 0), ("rollout engine 0", 0), ("learner rank 0", 1)]
    assert placement["misplaced"] == []
    steps = [r for r in _records(out) if r["phase"] == "rl" and "skipped_prompts" in r]
    assert [r["phase_step"] for r in steps] == [1, 2, 3]
    assert all(r["skipped_prompts"] == 1 and "loss" in r for r in steps)  # all 4 items in every step
    # Step 1's rollouts come from the starting weights; each later step's from the weights
    # before the previous update (the one it overlapped).
    assert [r["rollout_version_lag"] for r in steps] == [0, 1, 1]
    assert [r["weight_version"] for r in steps] == [1, 2, 3]
    assert all(r["time/step"] >= r["time/train"] for r in steps)


def test_a_sweep_runs_each_job_in_its_own_folder_with_its_own_results(tmp_path):
    """`-m` over two values: one folder per job, named by its swept override, each with its own
    results and config, and one W&B group for the sweep."""
    base = tmp_path / "sweep"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "spct.train", "-m", "experiment=quick", f"output_dir={base}",
                           "phases=[warmup]", "warmup.steps=4", "eval.max_items=8", "warmup.lr=0.002,0.02"],
                          cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    jobs = {p.name: p for p in base.iterdir() if p.is_dir()}
    assert sorted(jobs) == ["warmup.lr=0.002", "warmup.lr=0.02"]
    losses = {name: [r["loss"] for r in _records(out) if "loss" in r] for name, out in jobs.items()}
    assert all(len(v) == 4 for v in losses.values())
    assert losses["warmup.lr=0.002"] != losses["warmup.lr=0.02"]
    from omegaconf import OmegaConf

    saved = {name: OmegaConf.load(out / "config.yaml") for name, out in jobs.items()}
    assert {name: c.warmup.lr for name, c in saved.items()} == {"warmup.lr=0.002": 0.002, "warmup.lr=0.02": 0.02}
    assert {c.logger.group for c in saved.values()} == {"sweep:warmup.lr"}
    assert {c.logger.run_name for c in saved.values()} == {"sweep/warmup.lr=0.002", "sweep/warmup.lr=0.02"}
    assert [c.logger.tags for c in saved.values()] == [[name] for name in jobs]


def test_a_rerun_with_another_config_is_refused_before_ray_naming_the_keys(quick_run, tmp_path):
    """A finished run rerun with other settings: refused in seconds, naming each key that would
    change its results (and not the settings of phases it has not run); checkpoint.resume=force
    resumes it anyway and keeps the earlier config beside the new one."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(quick_run[0], out)
    start = time.time()
    log, _ = _train(out, "rl.beta=0.5", "eval.k_max=2", "policy.lr=0.1").communicate(timeout=120)
    assert time.time() - start < 60
    assert "holds a run made with another configuration" in log
    assert "rl.beta: 0.02 -> 0.5" in log and "eval.k_max: 4 -> 2" in log
    assert "policy.lr" not in log  # the policy phases have not run
    assert "checkpoint.resume=force" in log and "Ray instance" not in log

    earlier = set(out.glob("config.before-*.yaml"))
    log = _finish(_train(out, "rl.beta=0.5", "checkpoint.resume=force"))
    assert "already complete" in log
    assert "beta: 0.5" in (out / "config.yaml").read_text()
    (before,) = set(out.glob("config.before-*.yaml")) - earlier
    assert "beta: 0.02" in before.read_text()
