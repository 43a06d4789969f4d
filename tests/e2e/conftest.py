"""The end-to-end tests' shared GRM run: `python -m spct.train experiment=quick`, once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> tuple[Path, str]:
    """(output_dir, log) of the quick preset's every phase, W&B offline: the checkpoints the
    evaluation, serving, policy and documentation tests start from."""
    out = tmp_path_factory.mktemp("quick") / "run"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "spct.train", "experiment=quick", f"output_dir={out}", "logger=wandb"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return out, log
