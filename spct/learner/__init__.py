"""The learner: one DeepSpeed engine per data-parallel rank, each rank a Ray actor (SPMD).

`LearnerGroup` (group.py) is what the driver holds, built from one `LearnerSpec` (spec.py). It
splits every global batch contiguously across the ranks (shares differ by at most one sequence),
runs the same call on all of them and returns the metrics. Each `LearnerWorker` (worker.py:
process group and engine set-up) owns the policy (a DeepSpeed engine over a Hugging Face causal
LM, ZeRO 0-3, or a scalar head for the meta RM) and, when asked, a frozen reference model for
the KL term. Its step kinds are in steps.py, its
checkpoints in checkpoints.py, and the batch formats, padding and the prompt-sharing forward
pass in batches.py.
"""

import importlib

# Imported on first use (PEP 562), so that the pure spec (spct.learner.spec, which the config
# checks read) loads without torch and DeepSpeed.
_HOMES = {"ROLLOUT_KEYS": "batches", "SEQUENCE_KEYS": "batches", "SFT_KEYS": "batches", "shard_batch": "batches",
          "validate_batch": "batches", "LearnerGroup": "group", "LearnerSpec": "spec", "LearnerWorker": "worker",
          "lr_factor": "worker"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'spct.learner' has no attribute {name!r}")
    return getattr(importlib.import_module(f"spct.learner.{_HOMES[name]}"), name)


__all__ = [
    "ROLLOUT_KEYS",
    "SEQUENCE_KEYS",
    "SFT_KEYS",
    "LearnerGroup",
    "LearnerSpec",
    "LearnerWorker",
    "lr_factor",
    "shard_batch",
    "validate_batch",
]
