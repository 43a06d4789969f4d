"""benchmarks/gpu_smoke.sh, the parts that can be checked without a GPU: its training overrides
compose into a valid colocated one-GPU run, its rates arithmetic, shellcheck and --dry-run."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from spct.config import register_schema, to_config
from spct.placement import layout, shortfall

REPO = Path(__file__).resolve().parents[2]


def _smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", REPO / "benchmarks" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smoke_run_is_a_valid_colocated_run_that_fits_one_gpu(tmp_path):
    smoke = _smoke()
    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = to_config(compose("config", overrides=smoke.train_overrides(tmp_path / "m", tmp_path / "run")))
    assert cfg.rollout.colocate and cfg.cluster.num_gpus == 1 and cfg.rl.steps == 3
    lay = layout(cfg)
    assert lay.bundles == [{"CPU": 4.0, "GPU": 1.0}]
    assert shortfall(lay, [{"CPU": 16.0, "GPU": 1.0}]) == []


def test_rates_and_mfu_count_every_token_the_forward_passes_ran():
    smoke = _smoke()
    # the first step is left out (compilation); `tokens` (the loss's completion tokens) is not the count
    records = [{"phase": "warmup", "tokens": 100.0, "forward_tokens": 1000.0, "step_time_s": 9.0}]
    records += [{"phase": "warmup", "tokens": 100.0, "forward_tokens": 1000.0, "step_time_s": 0.5}] * 4
    records += [{"phase": "rl", "tokens_per_s": 300.0}, {"phase": "rl", "tokens_per_s": 500.0}]
    rates = smoke.learner_rates(records, params=1e9, device="NVIDIA H200")
    assert rates["learner_tokens_per_s"] == pytest.approx(2000.0)
    assert rates["learner_mfu"] == pytest.approx(6 * 1e9 * 1000 / 0.5 / 989e12)
    assert rates["rollout_tokens_per_s"] == pytest.approx(400.0)
    assert smoke.mfu(1e9, 1000, 0.5, "an unknown GPU") is None


def test_the_sync_check_compares_log_probs_within_a_tolerance_and_sums_up_in_one_line():
    smoke = _smoke()
    engine = [[-0.5, -1.25], [-2.0]]
    assert smoke.agreement(engine, [[-0.51, -1.24], [-2.02]]) == pytest.approx(0.02)
    assert smoke.agreement(engine, [[-0.5, -1.25], [-2.0]]) == 0.0
    with pytest.raises(ValueError):  # a token missing on one side is not agreement
        smoke.agreement(engine, [[-0.5], [-2.0]])
    report = {"device": "NVIDIA H100 80GB HBM3", "learner_tokens_per_s": 51234.5, "learner_mfu": 0.412,
              "rollout_tokens_per_s": 8000.0, "sync_s": 1.25, "sync_logprob_gap": 0.003,
              "sync_logprob_gap_to_old_weights": 1.7, "total_s": 301.0}
    line = smoke.summary(True, report)
    assert "\n" not in line and line.startswith("gpu_smoke: PASS on NVIDIA H100")
    assert "51,234 tokens/s, MFU 41.2%" in line and "log-prob gap 0.003 nats (old weights 1.7, tolerance 0.05)" in line
    assert "MFU n/a" in smoke.summary(False, {**report, "learner_mfu": None})


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt install shellcheck)")
def test_the_script_passes_shellcheck():
    proc = subprocess.run(["shellcheck", str(REPO / "benchmarks" / "gpu_smoke.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_dry_run_prints_the_steps_without_a_gpu(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_smoke.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                            "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("build: ") and "preset='1b'" in lines[0]
    assert "-m spct.train experiment=quick" in lines[1] and "rollout.colocate=true" in lines[1]
    assert not (tmp_path / "run").exists()
