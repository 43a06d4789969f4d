"""Shared fixtures: one tiny model per test session, one Ray cluster per test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# In-process vLLM engines start in seconds; W&B never reaches the network in tests.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The 'test' preset model and tokenizer, in Hugging Face format, built once per session."""
    from spct.models import ensure_tiny_model

    return Path(ensure_tiny_model(tmp_path_factory.mktemp("tiny") / "test", preset="test"))


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster per test module (starting Ray costs seconds)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=True, ignore_reinit_error=True)
    yield ray
    ray.shutdown()
