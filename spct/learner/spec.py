"""What a learner is built from: one typed spec, checked once, shared by every rank."""

from __future__ import annotations

from dataclasses import dataclass

LR_SCHEDULES = ("constant", "cosine")
DTYPES = ("float32", "bfloat16")
# causal_lm: the GRM or a policy (SFT and GRPO); classification: a scalar head, the meta RM (BCE).
TASKS = ("causal_lm", "classification")


def refusals(zero_stage: int, dtype: str, lr_schedule: str) -> list[tuple[str, str]]:
    """(field, what is expected) for each setting the learner would refuse; the config checks it
    before anything starts, the spec again when a learner is built."""
    out = []
    if zero_stage not in (0, 1, 2, 3):
        out.append(("zero_stage", f"0, 1, 2 or 3, got {zero_stage}"))
    if dtype not in DTYPES:
        out.append(("dtype", f"one of {', '.join(DTYPES)} to train, got {dtype!r}"))
    elif dtype == "bfloat16" and zero_stage == 0:
        out.append(("zero_stage", "1, 2 or 3 with dtype bfloat16: DeepSpeed keeps fp32 master weights only in "
                    "its ZeRO optimizers; stage 0 would update bf16 weights directly (or use float32)"))
    if lr_schedule not in LR_SCHEDULES:
        out.append(("lr_schedule", f"one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}"))
    return out


@dataclass(frozen=True)
class LearnerSpec:
    model: str  # a local folder or hub id: the weights the learner starts from
    task: str = "causal_lm"
    zero_stage: int = 2
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    total_steps: int = 1000
    lr_schedule: str = "constant"
    micro_batch_size: int = 4
    grad_clip: float = 1.0  # 0 = none
    dtype: str = "bfloat16"
    # A frozen reference for the KL term (GRPO): `reference_model`, or the start weights.
    with_reference: bool = False
    reference_model: str | None = None
    seed: int = 0
    gradient_checkpointing: bool = False
    num_threads: int | None = None  # CPU torch threads per rank (None: Ray's default)
    share_prefix: bool = True  # GRPO: each prompt runs once for its group of rollouts

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {self.task!r}")
        if self.task == "classification" and self.with_reference:
            raise ValueError("task classification: a reference model is only for GRPO (with_reference=False)")
        for name, expected in refusals(self.zero_stage, self.dtype, self.lr_schedule):
            raise ValueError(f"{name}: expected {expected}")
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size: expected >= 1, got {self.micro_batch_size}")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError(
                f"warmup_steps/total_steps: expected >= 0 and >= 1, got {self.warmup_steps}, {self.total_steps}"
            )
        object.__setattr__(self, "betas", tuple(self.betas))
