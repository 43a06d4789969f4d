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


def test_policy_reward_reads_runs_and_reports_paired_differences(tmp_path):
    """policy_reward's report from run folders as `spct.train` leaves them."""
    import json

    policy = load("policy_reward")
    runs, floor = {}, {}
    for seed in (0, 1):
        floor[seed] = [0.0, 0.5, 0.0, 1.0]
        for kind, final in (("greedy", [0.0, 0.5, 0.5, 1.0]), ("voting8", [1.0, 0.5, 0.5, 1.0])):
            folder = tmp_path / f"seed{seed}" / kind
            (folder / "policy_eval").mkdir(parents=True)
            for step, credits in ((0, floor[seed]), (2, final)):
                (folder / "policy_eval" / f"step{step:06d}.jsonl").write_text(
                    "".join(json.dumps({"credit": c}) + "\n" for c in credits))
            metrics = [{"phase": "policy_rl", "phase_step": 0, "policy_eval/accuracy": 0.375},
                       {"phase": "policy_rl", "phase_step": 1, "time/step": 2.0, "time/reward": 1.0,
                        "grm_time_share": 0.5, "grm_parse_failure_rate": 0.0, "reward_checker_agreement": 0.7,
                        "answers/right": 0.5, "reward_by_answer/right": 0.9, "answers/carry": 0.25,
                        "reward_by_answer/carry": 0.6, "answers/slip": 0.25, "reward_by_answer/slip": 0.2,
                        "answers/worse": 0.0, "answers/format": 0.0},
                       {"phase": "policy_rl", "phase_step": 2, "time/step": 2.0, "time/reward": 1.0,
                        "grm_time_share": 0.5, "grm_parse_failure_rate": 0.0, "reward_checker_agreement": 0.7,
                        "answers/right": 0.25, "reward_by_answer/right": 0.6, "answers/carry": 0.25,
                        "reward_by_answer/carry": 0.8, "answers/slip": 0.5, "reward_by_answer/slip": 0.5,
                        "answers/worse": 0.0, "answers/format": 0.0},
                       {"phase": "policy_rl", "phase_step": 2, "policy_eval/accuracy": sum(final) / 4}]
            (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
            runs.setdefault(kind, {})[seed] = policy.read_run(folder)
    assert runs["greedy"][0]["curve"] == {0: 0.375, 2: 0.5}
    assert runs["voting8"][1]["agreement"] == 0.7
    args = policy.parser().parse_args(["--grm-run", "x", "--seeds", "0", "1", "--kinds", "greedy", "voting8"])
    policy.report(args, runs, floor, tmp_path, wall=60.0)
    summary = (tmp_path / "summary.md").read_text()
    assert "| GRM Voting@8 | 75.0 |" in summary and "| untrained policy (floor) | 37.5 |" in summary
    assert "GRM Voting@8 - GRM greedy (k=1): +25.0" in summary
    # Weighted by each step's share: right (0.5 * 0.9 + 0.25 * 0.6) / 0.75 = 0.8, in 37.5% of the answers;
    # slip (0.25 * 0.2 + 0.5 * 0.5) / 0.75 = 0.4; no answer of two wrong sums.
    assert runs["greedy"][0]["paid"]["carry"] == pytest.approx((0.7, 0.25))
    assert "| GRM Voting@8 | 0.80 (38%) | 0.70 (25%) | 0.40 (38%) | - (0%) | - (0%) |" in summary
    assert (tmp_path / "policy_reward.png").stat().st_size > 0


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
