"""One learner rank: a DeepSpeed engine over a Hugging Face model, and its frozen reference.

`LearnerWorker` sets up the process group and the engine; its step kinds live in
spct/learner/steps.py and its checkpoints in spct/learner/checkpoints.py.
"""

from __future__ import annotations

import math
import os
from functools import partial
from typing import Any

import torch

from spct.learner.checkpoints import Checkpoints
from spct.learner.spec import LearnerSpec
from spct.learner.steps import Steps

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based).

    Linear warmup reaches the peak at step warmup_steps - 1 (the first step already learns,
    unlike a warmup that starts at exactly 0); "cosine" then decays to 0 at total_steps.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _skip_cpu_shm_kernel() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce (~30 s on a fresh machine).

    DeepSpeed builds that kernel whenever its CPU comm backend starts, but only inference
    tensor parallelism calls it; training collectives go through gloo. DeepSpeed keeps the
    op-compatibility table as one module dict that it reads before building, so marking the
    op incompatible there makes the backend skip it.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weight matrices only: decay would pull norm gains (which start at 1) and biases
    towards 0, a prior nobody wants for them."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class LearnerWorker(Steps, Checkpoints):
    """One data-parallel rank: the policy's DeepSpeed engine and the frozen reference model.

    Plain class; `LearnerGroup` wraps it with ray.remote. Every method that touches weights is
    collective: call it on all ranks with equally sized shards.
    """

    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, spec: LearnerSpec) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0..{world_size - 1}, got {rank}")

        # torch.distributed's env:// rendezvous, which DeepSpeed uses, reads these. A Ray actor
        # is not started by torchrun or the deepspeed launcher, so nothing else sets them. Ray
        # shows each actor only its own GPU, hence local rank 0.
        os.environ.update(
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK="0",
            MASTER_ADDR=str(master_addr),
            MASTER_PORT=str(master_port),
        )
        from spct.versions import check_versions

        self.versions = check_versions(("torch", "transformers", "deepspeed"), role="learner")

        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from spct.models import attention_kwargs

        hf_logging.disable_progress_bar()

        self.spec = spec
        self.rank, self.world_size, self.zero_stage = rank, world_size, spec.zero_stage
        self.micro_batch_size = spec.micro_batch_size
        self.on_cuda = torch.cuda.is_available()
        if self.on_cuda:
            torch.cuda.set_device(0)
        else:
            _skip_cpu_shm_kernel()
        deepspeed.init_distributed(dist_backend="nccl" if self.on_cuda else "gloo")
        self.device = torch.device("cuda", 0) if self.on_cuda else torch.device("cpu")
        if spec.num_threads:
            # Ray caps an actor's OpenMP threads at its CPU reservation; on a small CPU node the
            # learner and the rollout engines take turns, so a step may use every core.
            torch.set_num_threads(spec.num_threads)
        torch.manual_seed(spec.seed)

        torch_dtype = DTYPES[spec.dtype]
        model = spec.model
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        pad = self.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        self.task = spec.task
        # With ZeRO-3 every rank builds and loads its models partitioned (transformers reads the
        # live HfDeepSpeedConfig and loads under deepspeed.zero.Init), instead of each rank
        # holding full copies of the policy and the reference in host RAM first (about 430 GB
        # per node for a 27B model at 8 ranks).
        self._unwrapped = spec.zero_stage == 0
        config = self._ds_config(
            spec.zero_stage, spec.micro_batch_size, 0.0 if self._unwrapped else spec.grad_clip, spec.dtype
        )
        if spec.zero_stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(config)  # must stay referenced while loading
        if spec.task == "classification":
            # A scalar head (the meta RM); on a causal-LM checkpoint it starts fresh, seeded.
            from transformers import AutoModelForSequenceClassification

            policy = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1, dtype=torch_dtype,
                                                                        **attention_kwargs(model))
            policy.config.pad_token_id = self.pad_id
        else:
            policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, **attention_kwargs(model))
        policy.config.use_cache = False
        self.loaded_partitioned = all(hasattr(p, "ds_id") for p in policy.parameters())
        # GRPO runs each prompt once for its whole group (batches.completion_logits), except under
        # gradient checkpointing, whose recomputation would write the prompt's cache twice.
        self.share_prefix = spec.share_prefix and not spec.gradient_checkpointing
        if spec.gradient_checkpointing:
            policy.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )

        optimizer = torch.optim.AdamW(
            _param_groups(policy, spec.weight_decay), lr=spec.lr, betas=spec.betas
        )
        # With ZeRO, DeepSpeed wraps the optimizer and clips and measures gradients itself.
        # Stage 0 hands the torch optimizer the all-reduced gradients
        # without reporting their norm, so there we clip in a hook run just before its step.
        self._grad_clip = spec.grad_clip
        self._hook_norm: float | None = None
        if self._unwrapped:
            optimizer.register_step_pre_hook(self._clip_and_measure)
        schedule = partial(
            lr_factor, warmup_steps=spec.warmup_steps, total_steps=spec.total_steps, schedule=spec.lr_schedule
        )
        self.engine, *_ = deepspeed.initialize(
            model=policy,
            optimizer=optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            config=config,
        )
        self.engine.train()

        self.reference: Any = None
        if spec.with_reference:
            reference = spec.reference_model or model
            ref = AutoModelForCausalLM.from_pretrained(reference, dtype=torch_dtype, **attention_kwargs(reference))
            ref.config.use_cache = False
            ref.requires_grad_(False)
            ref.eval()
            if spec.zero_stage == 3:
                # Partitioned like the policy, gathered layer by layer in forward.
                ref_config = {k: v for k, v in config.items() if k != "gradient_clipping"}
                self.reference, *_ = deepspeed.initialize(model=ref, config=ref_config)
                self.reference.eval()
            else:
                self.reference = ref.to(self.device)

    @staticmethod
    def _ds_config(stage: int, micro_batch_size: int, grad_clip: float, dtype: str) -> dict:
        return {
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": 1,
            # The caller owns the accumulation boundary: backward() only accumulates and each
            # step() reduces and updates, however many micro-batches this call had.
            "managed_gradient_accumulation": False,
            "gradient_clipping": grad_clip,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": dtype == "bfloat16"},
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }

    def _clip_and_measure(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        max_norm = self._grad_clip if self._grad_clip > 0 else float("inf")
        self._hook_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def where(self) -> dict[str, Any]:
        """Its node, placement group bundle and GPUs (spct.placement.here)."""
        from spct.placement import here

        return here()

    def ready(self) -> dict[str, Any]:
        """Who this rank is; returning at all means the process group and engines are up."""
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters())
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "device": str(self.device),
            "zero_stage": self.zero_stage,
            "loaded_partitioned": self.loaded_partitioned,
            "num_parameters": int(n_params),
            "versions": self.versions,
        }

    # -- collectives on small vectors ------------------------------------------------------

    def _all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        if self.world_size == 1:
            return values
        import deepspeed.comm as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()

    def _shard_sizes(self, n_seqs: int, n_tokens: int) -> tuple[int, int]:
        """Global sequence and completion-token counts (a padding shard counts 0 and 0)."""
        n, tokens = self._all_reduce([float(n_seqs), float(n_tokens)])
        return int(n), int(tokens)

    def _optimizer_step(self) -> tuple[float, float]:
        """Reduce the accumulated gradients, clip, update; return (grad norm, lr applied)."""
        lr = float(self.engine.get_lr()[0])
        self._hook_norm = None
        self.engine.step()
        norm = self._hook_norm if self._unwrapped else self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return norm, lr
