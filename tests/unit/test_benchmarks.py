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
