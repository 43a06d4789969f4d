"""The learner: one DeepSpeed engine per data-parallel rank, each rank a Ray actor (SPMD).

`LearnerGroup` (group.py) is what the driver holds, built from one `LearnerSpec` (spec.py). It splits every global batch contiguously
and evenly across the ranks, runs the same call on all of them and returns the metrics. Each
`LearnerWorker` (worker.py: process group and engine set-up) owns the policy (a DeepSpeed
engine over a Hugging Face causal LM, ZeRO 0-3, or a scalar head for the meta RM) and, when
asked, a frozen reference model for the KL term. Its step kinds are in steps.py, its
checkpoints in checkpoints.py, and the batch formats, padding and the prompt-sharing forward
pass in batches.py.
"""

from spct.learner.batches import (
    ROLLOUT_KEYS,
    SEQUENCE_KEYS,
    SFT_KEYS,
    shard_batch,
    validate_batch,
)
from spct.learner.group import LearnerGroup
from spct.learner.spec import LearnerSpec
from spct.learner.worker import LearnerWorker, lr_factor

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
