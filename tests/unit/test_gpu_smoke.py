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


def test_rates_and_mfu():
    smoke = _smoke()
    records = [{"phase": "warmup", "tokens": 1000.0, "step_time_s": 9.0}]  # the first step is left out
    records += [{"phase": "warmup", "tokens": 1000.0, "step_time_s": 0.5}] * 4
    records += [{"phase": "rl", "tokens_per_s": 300.0}, {"phase": "rl", "tokens_per_s": 500.0}]
    rates = smoke.learner_rates(records, params=1e9, device="NVIDIA H200")
    assert rates["learner_tokens_per_s"] == pytest.approx(2000.0)
    assert rates["learner_mfu"] == pytest.approx(6 * 1e9 * 1000 / 0.5 / 989e12)
    assert rates["rollout_tokens_per_s"] == pytest.approx(400.0)
    assert smoke.mfu(1e9, 1000, 0.5, "an unknown GPU") is None


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
