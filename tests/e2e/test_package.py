"""spct installed like the libraries beside it: a built wheel, away from the clone.

The wheel is built from the repository, installed without dependencies into a fresh virtual
environment that sees the project's installed stack (torch, vLLM, Ray, ... through a path entry,
not the editable install), and its commands run from a folder that is not the clone.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def sh(*argv, cwd: Path, timeout: int = 300) -> str:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"$ {' '.join(map(str, argv))}\n{out[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the new environment's bin folder, a folder away from the clone)."""
    root = tmp_path_factory.mktemp("package")
    sh(sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "-q", "-w", root / "dist", cwd=root)
    (wheel,) = (root / "dist").glob("spct-*.whl")
    sh(sys.executable, "-m", "venv", root / "venv", cwd=root)
    py = root / "venv" / "bin" / "python"
    site = sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).strip()
    # The stack this project installed, as a plain path: its packages import, the editable spct does not.
    (Path(site) / "project-stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh(py, "-m", "pip", "install", "--no-deps", "-q", wheel, cwd=root)
    away = root / "elsewhere"
    away.mkdir()
    return root / "venv" / "bin", away


def test_the_wheel_imports_from_its_own_install(installed):
    bin_dir, away = installed
    where = sh(bin_dir / "python", "-c", "import spct, spct.serve, spct.evaluate.command, spct.memory as m; "
               "print(spct.__file__, sorted(p.name for p in m.SHAPES.glob('*.json')))", cwd=away)
    assert str(bin_dir.parent) in where and str(REPO) not in where
    assert "'Qwen--Qwen2.5-7B-Instruct.json'" in where  # the memory estimate's model shapes ship too


@pytest.mark.parametrize("script", ["spct-train", "spct-evaluate", "spct-serve"])
def test_each_console_script_answers_help(installed, script):
    bin_dir, away = installed
    assert "== Config ==" in sh(bin_dir / script, "--help", cwd=away)


def test_the_installed_commands_find_their_configs(installed):
    bin_dir, away = installed
    out = sh(bin_dir / "spct-train", "experiment=quick", "dry_run=true", cwd=away)
    assert "spct.train plan (dry_run: nothing started)" in out and "outputs/quick: a new run" in out
    sh(bin_dir / "python", "-m", "spct.train", "experiment=grm-qwen2.5-7b", "--cfg", "job", cwd=away)
    out = sh(bin_dir / "spct-serve", "model=Qwen/Qwen2.5-7B-Instruct", "dry_run=true", cwd=away)
    assert "spct.serve plan" in out
    out = sh(bin_dir / "spct-evaluate", "model=Qwen/Qwen2.5-7B-Instruct", "dry_run=true", cwd=away)
    assert "spct.evaluate plan" in out and "synthetic" in out
