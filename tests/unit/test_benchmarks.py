"""The benchmarks' plumbing (the runs themselves take minutes and live in benchmarks/): both sides
of grpo_vs_trl get the settings they claim, and its prompts (drawn by the RL phase's own
`rl_prompts`) come step by step with what the rule reward needs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


grpo = load("grpo_vs_trl")
scaling = load("rl_scaling")


@pytest.mark.parametrize("dtype, stage", [("float32", 0), ("bfloat16", 1)])
def test_both_sides_compose_one_valid_config_with_the_settings_given(tmp_path, dtype, stage):
    a = scaling.run_settings(steps=3, spct_args=[])
    a.prompts, a.dtype = 8, dtype
    cfg = grpo.compose(grpo.common_overrides(a, tmp_path / "model"))
    assert cfg.phases == ["rl"] and cfg.model.path == str(tmp_path / "model")
    assert (cfg.rl.steps, cfg.rl.prompts_per_step, cfg.rl.group_size) == (3, 8, 4)
    assert (cfg.rl.beta, cfg.rl.lr, cfg.rl.temperature, cfg.model.max_new_tokens) == (0.02, 5e-5, 1.0, 160)
    assert (cfg.model.dtype, cfg.learner.zero_stage, cfg.learner.num_threads) == (dtype, stage, 2)


def test_benchmark_prompts_come_step_by_step_with_what_the_reward_needs(tmp_path):
    a = scaling.run_settings(steps=2, spct_args=[])
    a.prompts = 5
    rows = grpo.rl_prompts(grpo.compose(grpo.common_overrides(a, tmp_path / "model")))
    assert len(rows) == 10
    for text, rewards, order, low, high in rows:
        assert "Solve:" in text and sorted(order) == list(range(len(rewards))) and low < high
    assert rows[:5] != rows[5:]  # each step draws its own items


def test_policy_reward_reads_runs_and_judges_its_claims_over_units(tmp_path):
    """policy_reward's report from run folders as `spct.train` leaves them: two GRM runs x two
    policy seeds, each claim judged by the t-interval of its paired differences over the four."""
    import json

    policy = load("policy_reward")
    grms = {}
    for g in ("g0", "g1"):
        grm = tmp_path / g / "checkpoints" / "rl-final" / "model"
        grm.mkdir(parents=True)
        grms[g] = (grm, tmp_path / g / "checkpoints" / "meta_rm-final" / "model")
    (tmp_path / "g0" / "results.json").write_text(json.dumps({"results": {"rl": {"accuracy": 0.6}, "eval": {
        "scaling": [{"method": "Voting", "k": 8, "accuracy": 0.7}, {"method": "MetaRM", "k": 8, "accuracy": 0.75}]}}}))
    floor = [0.0, 0.5, 0.0, 1.0]
    answers = {0.0: "3+4=6 ; 8+9=7", 0.5: "3+4=8 ; 8+9=17", 1.0: "3+4=7 ; 8+9=17"}  # -1 and carry; +1; right
    finals = {"greedy": {0: [0.0, 0.5, 0.5, 1.0], 1: [0.0, 0.0, 0.0, 1.0]},  # +12.5 and -12.5 points
              "voting8": {0: [1.0, 0.5, 0.5, 1.0], 1: [1.0, 0.5, 0.5, 1.0]}}  # +25 points over greedy, or +50
    runs = {}
    for g in grms:
        for seed in (0, 1):
            for kind, final in finals.items():
                folder = policy.folder(tmp_path / "bench", seed, g, kind)
                (folder / "policy_eval").mkdir(parents=True)
                for step, credits in ((0, floor), (3, final[seed])):
                    (folder / "policy_eval" / f"step{step:06d}.jsonl").write_text("".join(json.dumps(
                        {"query": "Solve: 3+4 ; 8+9", "answers": [answers[c]], "credit": c}) + "\n" for c in credits))
                metrics = [{"phase": "policy_rl", "phase_step": 0, "policy_eval/accuracy": 0.375}]
                for step, right, agree in ((1, 0.5, 0.8), (2, 0.5, None), (3, 0.25, 0.6)):
                    metrics.append({"phase": "policy_rl", "phase_step": step, "time/step": 2.0, "time/reward": 1.0,
                                    "grm_time_share": 0.5, "grm_parse_failure_rate": 0.0,
                                    "reward_checker_agreement": agree, "answers/right": right,
                                    "reward_by_answer/right": 0.9 if step == 1 else 0.6, "answers/carry": 0.25,
                                    "reward_by_answer/carry": 0.7, "answers/slip": 0.75 - right,
                                    "reward_by_answer/slip": 0.2 if step == 1 else 0.5,
                                    "answers/worse": 0.0, "answers/format": 0.0})
                metrics.append({"phase": "policy_rl", "phase_step": 3, "policy_eval/accuracy": sum(final[seed]) / 4})
                (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
                runs.setdefault(kind, {})[(g, seed)] = policy.read_run(folder)
    run = runs["greedy"][("g0", 0)]
    assert run["curve"] == {0: 0.375, 3: 0.5} and run["agreement"] == pytest.approx(0.7)
    assert run["moved"]["early"]["right"] == 0.5 and run["moved"]["late"] == pytest.approx(
        {"agreement": 0.6, "right": 0.25, "carry": 0.25, "slip": 0.5, "worse": 0.0, "format": 0.0})
    args = policy.parser().parse_args(["--grm-run", "g0", "g1", "--seeds", "0", "1", "--kinds", "greedy", "voting8"])
    results = policy.report(args, grms, runs, tmp_path, wall=60.0)
    claims = {c["rule"]: c for c in results["claims"]}
    # greedy - floor: +12.5, -12.5, +12.5, -12.5 points: mean 0, not established either way.
    above_floor = claims["the GRM greedy reward raises the policy above its floor"]
    assert above_floor["mean"] == pytest.approx(0) and above_floor["verdict"] == "not established"
    assert above_floor["above"] == 2 and above_floor["units"] == 4
    # voting8 - greedy: +25, +50, +25, +50: mean 37.5, t(3) = 3.182, sem = 14.43 / 2 -> +/- 22.97.
    better = claims["Voting@8 ends above greedy"]
    assert better["mean"] == pytest.approx(0.375) and better["low"] == pytest.approx(0.375 - 0.2297, abs=1e-3)
    assert better["verdict"] == "holds"
    assert not any("MetaRM" in rule for rule in claims)  # a claim on a reward not run is not judged
    summary = (tmp_path / "summary.md").read_text()
    assert "| Voting@8 ends above greedy | +37.5 | +14.5 to +60.5 | 4/4 | holds |" in summary
    assert "| untrained policy (floor) | 37.5 | 37.5 - 37.5 | 37.5, 37.5 |" in summary
    assert "| GRM Voting@8 | 75.0 | 75.0 - 75.0 | 75.0, 75.0 | 70% |" in summary
    # The GRM's own accuracy where its run has results, its rewards' gains over the floor.
    assert "| g0 | 60.0 | 70.0 | 75.0 | +0.0 | +37.5 |" in summary and "| g1 |  |  |  | +0.0 | +37.5 |" in summary
    # Early (step 1) -> late (step 3): the agreement and the shares of each kind of answer.
    assert "| GRM greedy (k=1) | 80% -> 60% | 50% -> 25% | 25% -> 25% | 25% -> 50% | 0% -> 0% | 0% -> 0% |" in summary
    # Each held-out sum before -> after: the floor's 8 sums hold 3 right, one +1, two -1 and two dropped carries.
    assert "| GRM Voting@8 | 38% -> 75% | 12% -> 25% | 25% -> 0% | 25% -> 0% | 0% -> 0% | 0% -> 0% |" in summary
    # Weighted by each step's share: right (0.5 * 0.9 + 0.5 * 0.6 + 0.25 * 0.6) / 1.25 = 0.72, in 42% of the answers.
    assert run["paid"]["carry"] == pytest.approx((0.7, 0.25))
    assert "| GRM Voting@8 | 0.72 (42%) | 0.70 (25%) |" in summary
    assert json.loads((tmp_path / "results.json").read_text())["claims"][1]["verdict"] == "holds"
    assert (tmp_path / "policy_reward.png").stat().st_size > 0


def test_policy_reward_refuses_grm_runs_it_cannot_use(tmp_path):
    policy = load("policy_reward")
    with pytest.raises(SystemExit, match="rl-final"):
        policy.grm_runs([str(tmp_path / "missing")])
    for parent in ("a", "b"):
        for model in ("rl-final", "meta_rm-final"):
            (tmp_path / parent / "run" / "checkpoints" / model / "model").mkdir(parents=True)
    with pytest.raises(SystemExit, match="two runs named 'run'"):
        policy.grm_runs([str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")])


def test_trl_runs_once_with_its_defaults_and_once_with_checkpointing_off(tmp_path, monkeypatch):
    """TRL's GRPOConfig checkpoints gradients by default; spct's CPU learner does not. Both TRL
    rows are run, each worker told which."""
    import dataclasses
    import json

    from trl import GRPOConfig

    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    assert defaults["gradient_checkpointing"] is True  # what "defaults" means
    commands = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        (tmp_path / "trl.json").write_text(json.dumps({"samples_per_s": 1.0}))

    monkeypatch.setattr(grpo.subprocess, "run", fake_run)
    a = grpo.parser().parse_args([])
    for on in grpo.TRL_RUNS.values():
        grpo.run_trl(a, tmp_path / "model", tmp_path, on)
    flags = [("--trl-checkpointing" in cmd) for cmd in commands]
    assert dict(zip(grpo.TRL_RUNS, flags, strict=True)) == {"TRL, checkpointing off": False, "TRL defaults": True}
    worker = grpo.parser().parse_args(commands[1][2:])
    assert worker.trl_checkpointing and worker.trl_worker == str(tmp_path / "model")
