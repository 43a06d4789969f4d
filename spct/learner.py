"""The learner: one DeepSpeed engine per data-parallel rank, each rank a Ray actor (SPMD).

`LearnerGroup` is what the driver holds. It splits every global batch contiguously and evenly
across the ranks, runs the same call on all of them and returns the metrics. Each
`LearnerWorker` owns the policy (a DeepSpeed engine over a Hugging Face causal LM, ZeRO 0-3)
and, when asked, a frozen reference model for the KL term.

Batches arrive over Ray as plain dicts of per-sequence lists:

- `input_ids`: list of token id lists (prompt followed by completion), no padding;
- `prompt_lens`: number of prompt tokens of each sequence (>= 1, less than its length);
- GRPO only: `old_logprobs`, one list per sequence with the rollout log-prob of every
  completion token, and `advantages`, one float per sequence.

One call is one optimizer step, whatever the number of micro-batches, and its loss and update
do not depend on how the batch is split over ranks and micro-batches:

- GRPO: the loss is the mean over all sequences of each sequence's token mean. A micro-batch
  of b sequences on a rank holding n is back-propagated with weight b / n; DeepSpeed then
  averages gradients over the R ranks, which all hold n = N / R sequences.
- SFT: the loss is the mean over all completion tokens of the global batch. A micro-batch
  with t completion tokens is weighted R * t / T, T being the global token count (one small
  all-reduce), so that DeepSpeed's average over ranks gives sum / T.

Metrics are reduced over all ranks inside the step (token- or sequence-weighted as the loss
is), so every rank returns the same global numbers.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from numbers import Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from spct.algos import (
    completion_labels,
    grpo_policy_loss,
    sft_loss,
    token_entropy,
    token_logprobs,
)

IGNORE_INDEX = -100
LR_SCHEDULES = ("constant", "cosine")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# causal_lm: the GRM (SFT and GRPO); classification: a scalar head, the meta RM (BCE).
TASKS = ("causal_lm", "classification")
SFT_KEYS = ("input_ids", "prompt_lens")
ROLLOUT_KEYS = (*SFT_KEYS, "old_logprobs", "advantages")
# Every per-sequence list a step may carry (BCE batches add "labels"); shard_batch splits these.
SEQUENCE_KEYS = (*ROLLOUT_KEYS, "labels")
CHECKPOINT_TAG = "learner"


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


# ---------------------------------------------------------------------------------------------
# Batches: validation, sharding, padding


def validate_batch(batch: Mapping[str, Any], rollout: bool, where: str = "batch") -> int:
    """Check the per-sequence lists of a batch; return the number of sequences.

    `rollout` asks for the GRPO fields too. Errors name the field and the sequence index.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"{where}: expected a dict of per-sequence lists, got {type(batch).__name__}"
        )
    keys = ROLLOUT_KEYS if rollout else SFT_KEYS
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; a batch needs {list(keys)}")
    ids, prompt_lens = batch["input_ids"], batch["prompt_lens"]
    n = len(ids)
    if n == 0:
        raise ValueError(f"{where}.input_ids: expected at least one sequence, got none")
    for key in keys:
        if len(batch[key]) != n:
            raise ValueError(
                f"{where}.{key}: expected {n} entries (one per sequence, like input_ids), "
                f"got {len(batch[key])}"
            )
    for i, (seq, p) in enumerate(zip(ids, prompt_lens, strict=True)):
        if isinstance(p, bool) or not isinstance(p, int):
            raise ValueError(f"{where}.prompt_lens[{i}]: expected an int, got {p!r}")
        if not 1 <= p < len(seq):
            raise ValueError(
                f"{where}.prompt_lens[{i}]: expected 1..{len(seq) - 1} (at least one prompt and "
                f"one completion token in a sequence of {len(seq)}), got {p}"
            )
        if rollout:
            old = batch["old_logprobs"][i]
            if len(old) != len(seq) - p:
                raise ValueError(
                    f"{where}.old_logprobs[{i}]: expected {len(seq) - p} values (one per "
                    f"completion token), got {len(old)}"
                )
            if not all(math.isfinite(x) for x in old):
                raise ValueError(f"{where}.old_logprobs[{i}]: expected finite values")
            if not math.isfinite(batch["advantages"][i]):
                raise ValueError(
                    f"{where}.advantages[{i}]: expected a finite float, got {batch['advantages'][i]}"
                )
    return n


def _rank_mean(results: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in results) / len(results) for k in results[0]}


def shard_batch(batch: Mapping[str, Sequence[Any]], num_ranks: int) -> list[dict[str, list]]:
    """Contiguous equal slices of every per-sequence list, one per rank.

    Equal shards are required, not just tidy: every rank must run the same number of
    micro-batches, or the collectives of ZeRO-3's forward pass would wait forever.
    """
    n = len(batch["input_ids"])
    if n % num_ranks:
        raise ValueError(
            f"global batch of {n} sequences does not split evenly across {num_ranks} learner "
            f"ranks; use a multiple of {num_ranks}"
        )
    size = n // num_ranks
    return [
        {k: list(v[r * size : (r + 1) * size]) for k, v in batch.items() if k in SEQUENCE_KEYS}
        for r in range(num_ranks)
    ]


@dataclass
class _MicroBatch:
    input_ids: Tensor  # [b, T], right-padded
    attention_mask: Tensor  # [b, T]
    labels: Tensor  # [b, T], IGNORE_INDEX outside completions
    old_logp: Tensor | None  # [b, T-1], aligned with token_logprobs
    advantages: Tensor | None  # [b]

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def mask(self) -> Tensor:
        """[b, T-1]: 1 where token_logprobs scores a completion token."""
        return self.labels[:, 1:] != IGNORE_INDEX


def _micro_batches(
    batch: Mapping[str, Sequence[Any]],
    size: int,
    pad_id: int,
    device: torch.device,
    rollout: bool,
) -> list[_MicroBatch]:
    n = len(batch["input_ids"])
    out = []
    for start in range(0, n, size):
        rows = range(start, min(n, start + size))
        seqs = [batch["input_ids"][i] for i in rows]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s, dtype=torch.long)
            attn[j, : len(s)] = 1
        prompt_lens = [batch["prompt_lens"][i] for i in rows]
        labels = completion_labels(ids, prompt_lens, attn, ignore_index=IGNORE_INDEX)
        old = adv = None
        if rollout:
            old = torch.zeros((len(seqs), width - 1), dtype=torch.float32)
            for j, i in enumerate(rows):
                p, n_tok = prompt_lens[j], len(seqs[j])
                old[j, p - 1 : n_tok - 1] = torch.tensor(
                    batch["old_logprobs"][i], dtype=torch.float32
                )
            adv = torch.tensor([float(batch["advantages"][i]) for i in rows], dtype=torch.float32)
            old, adv = old.to(device), adv.to(device)
        out.append(_MicroBatch(ids.to(device), attn.to(device), labels.to(device), old, adv))
    return out


# ---------------------------------------------------------------------------------------------
# One rank


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


class LearnerWorker:
    """One data-parallel rank: the policy's DeepSpeed engine and the frozen reference model.

    Plain class; `LearnerGroup` wraps it with ray.remote. Every method that touches weights is
    collective: call it on all ranks with equally sized shards.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        model: str,
        zero_stage: int = 2,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        betas: Sequence[float] = (0.9, 0.95),
        warmup_steps: int = 0,
        total_steps: int = 1000,
        lr_schedule: str = "constant",
        micro_batch_size: int = 4,
        grad_clip: float = 1.0,
        dtype: str = "bfloat16",
        with_reference: bool = False,
        seed: int = 0,
        gradient_checkpointing: bool = False,
        num_threads: int | None = None,
        task: str = "causal_lm",
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
        if task == "classification" and with_reference:
            raise ValueError("task classification: a reference model is only for GRPO (with_reference=False)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0..{world_size - 1}, got {rank}")
        if zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage: expected 0, 1, 2 or 3, got {zero_stage}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
        if dtype == "bfloat16" and zero_stage == 0:
            raise ValueError(
                "dtype bfloat16 needs zero_stage >= 1: DeepSpeed keeps fp32 master weights "
                "only in its ZeRO optimizers; stage 0 would update bf16 weights directly"
            )
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: expected one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size: expected >= 1, got {micro_batch_size}")
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError(
                f"warmup_steps/total_steps: expected >= 0 and >= 1, got {warmup_steps}, {total_steps}"
            )

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

        hf_logging.disable_progress_bar()

        self.rank, self.world_size, self.zero_stage = rank, world_size, zero_stage
        self.micro_batch_size = micro_batch_size
        self.on_cuda = torch.cuda.is_available()
        if self.on_cuda:
            torch.cuda.set_device(0)
        else:
            _skip_cpu_shm_kernel()
        deepspeed.init_distributed(dist_backend="nccl" if self.on_cuda else "gloo")
        self.device = torch.device("cuda", 0) if self.on_cuda else torch.device("cpu")
        if num_threads:
            # Ray caps an actor's OpenMP threads at its CPU reservation; on a small CPU node the
            # learner and the rollout engines take turns, so a step may use every core.
            torch.set_num_threads(num_threads)
        torch.manual_seed(seed)

        torch_dtype = DTYPES[dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        pad = self.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        self.task = task
        if task == "classification":
            # A scalar head (the meta RM); on a causal-LM checkpoint it starts fresh, seeded.
            from transformers import AutoModelForSequenceClassification

            policy = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1, dtype=torch_dtype)
            policy.config.pad_token_id = self.pad_id
        else:
            policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
        policy.config.use_cache = False
        if gradient_checkpointing:
            policy.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )

        optimizer = torch.optim.AdamW(
            _param_groups(policy, weight_decay), lr=lr, betas=tuple(betas)
        )
        # With ZeRO, DeepSpeed wraps the optimizer and clips and measures gradients itself.
        # Stage 0 hands the torch optimizer the all-reduced gradients
        # without reporting their norm, so there we clip in a hook run just before its step.
        self._unwrapped = zero_stage == 0
        self._grad_clip = grad_clip
        self._hook_norm: float | None = None
        if self._unwrapped:
            optimizer.register_step_pre_hook(self._clip_and_measure)
        config = self._ds_config(
            zero_stage, micro_batch_size, 0.0 if self._unwrapped else grad_clip, dtype
        )
        schedule = partial(
            lr_factor, warmup_steps=warmup_steps, total_steps=total_steps, schedule=lr_schedule
        )
        self.engine, *_ = deepspeed.initialize(
            model=policy,
            optimizer=optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            config=config,
        )
        self.engine.train()

        self.reference: Any = None
        if with_reference:
            ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
            ref.config.use_cache = False
            ref.requires_grad_(False)
            ref.eval()
            if zero_stage == 3:
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

    def ready(self) -> dict[str, Any]:
        """Who this rank is; returning at all means the process group and engines are up."""
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters())
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "device": str(self.device),
            "zero_stage": self.zero_stage,
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
        """Global sequence and completion-token counts; fails on every rank alike if shards differ."""
        row = [0.0] * (2 * self.world_size)
        row[2 * self.rank], row[2 * self.rank + 1] = float(n_seqs), float(n_tokens)
        table = self._all_reduce(row)
        seqs = [int(x) for x in table[0::2]]
        if len(set(seqs)) != 1:
            raise ValueError(
                f"learner ranks hold different numbers of sequences {seqs}; every rank needs "
                "an equal shard (LearnerGroup splits global batches this way)"
            )
        return sum(seqs), int(sum(table[1::2]))

    # -- steps -----------------------------------------------------------------------------

    def _forward(self, module: Any, mb: _MicroBatch) -> Tensor:
        return module(
            input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False
        ).logits

    def _optimizer_step(self) -> tuple[float, float]:
        """Reduce the accumulated gradients, clip, update; return (grad norm, lr applied)."""
        lr = float(self.engine.get_lr()[0])
        self._hook_norm = None
        self.engine.step()
        norm = self._hook_norm if self._unwrapped else self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return norm, lr

    def sft_step(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, float]:
        """One optimizer step of cross-entropy on completion tokens (prompts are context only)."""
        start = time.perf_counter()
        n = validate_batch(batch, rollout=False, where=f"sft batch (rank {self.rank})")
        micro = _micro_batches(batch, self.micro_batch_size, self.pad_id, self.device, False)
        local_tokens = sum(int(mb.mask.sum()) for mb in micro)
        n_global, tokens_global = self._shard_sizes(n, local_tokens)

        self.engine.train()
        loss_sum = 0.0
        for mb in micro:
            logits = self._forward(self.engine, mb)
            loss = sft_loss(logits, mb.labels, ignore_index=IGNORE_INDEX)
            mb_tokens = int(mb.mask.sum())
            self.engine.backward(
                loss * (self.world_size * mb_tokens / tokens_global), scale_wrt_gas=False
            )
            loss_sum += loss.item() * mb_tokens
        grad_norm, lr = self._optimizer_step()
        (loss_total,) = self._all_reduce([loss_sum])
        return {
            "loss": loss_total / tokens_global,
            "grad_norm": grad_norm,
            "lr": lr,
            "tokens": float(tokens_global),
            "sequences": float(n_global),
            "step_time_s": time.perf_counter() - start,
        }

    def grpo_step(
        self,
        batch: Mapping[str, Sequence[Any]],
        clip_eps: float = 0.2,
        beta: float = 0.0,
        kl_kind: str = "k3",
        clip_eps_high: float | None = None,
    ) -> dict[str, float]:
        """One optimizer step of the GRPO objective (spct.algos.grpo_policy_loss).

        All forward passes of the call run before the single update, so `logprob_gap` (mean and
        max |rollout log-prob - learner log-prob| over completion tokens) measures how far the
        rollout engine's numbers are from the learner's for the same weights; it should be ~0
        for an on-policy batch and grows if a weight sync was missed.
        """
        start = time.perf_counter()
        if beta > 0 and self.reference is None:
            raise ValueError("grpo_step: beta > 0 needs a reference model (with_reference=True)")
        n = validate_batch(batch, rollout=True, where=f"grpo batch (rank {self.rank})")
        micro = _micro_batches(batch, self.micro_batch_size, self.pad_id, self.device, True)
        local_tokens = sum(int(mb.mask.sum()) for mb in micro)
        n_global, tokens_global = self._shard_sizes(n, local_tokens)

        self.engine.train()
        # Sequence-weighted: loss. Token-weighted: the rest.
        sums = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "ratio_mean": 0.0}
        sums |= {"entropy": 0.0, "logprob_gap": 0.0}
        gap_max = 0.0
        for mb in micro:
            logits = self._forward(self.engine, mb)
            logp = token_logprobs(logits, mb.input_ids)
            ref_logp = None
            if self.reference is not None:
                with torch.no_grad():
                    ref_logp = token_logprobs(self._forward(self.reference, mb), mb.input_ids)
            loss, m = grpo_policy_loss(
                logp,
                mb.old_logp,
                mb.advantages,
                mb.mask,
                ref_logp=ref_logp,
                clip_eps=clip_eps,
                clip_eps_high=clip_eps_high,
                beta=beta,
                kl_kind=kl_kind,
            )
            self.engine.backward(loss * (mb.size / n), scale_wrt_gas=False)

            mask = mb.mask
            mb_tokens = int(mask.sum())
            with torch.no_grad():
                gap = (mb.old_logp - logp.detach()).abs()[mask]
                entropy = token_entropy(logits.detach()[:, :-1])[mask]
            sums["loss"] += loss.item() * mb.size
            for key in ("kl", "clip_fraction", "ratio_mean"):
                sums[key] += m.get(key, 0.0) * mb_tokens
            sums["entropy"] += float(entropy.sum())
            sums["logprob_gap"] += float(gap.sum())
            gap_max = max(gap_max, float(gap.max()) if gap.numel() else 0.0)

        grad_norm, lr = self._optimizer_step()
        keys = list(sums)
        totals = dict(zip(keys, self._all_reduce([sums[k] for k in keys]), strict=True))
        (gap_max,) = self._all_reduce([gap_max], op="max")
        metrics = {"loss": totals.pop("loss") / n_global}
        metrics |= {k: v / max(1, tokens_global) for k, v in totals.items()}
        if self.reference is None:
            metrics.pop("kl")
        metrics |= {
            "logprob_gap_max": gap_max,
            "grad_norm": grad_norm,
            "lr": lr,
            "tokens": float(tokens_global),
            "sequences": float(n_global),
            "step_time_s": time.perf_counter() - start,
        }
        return metrics

    def bce_step(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, float]:
        """One optimizer step of binary cross-entropy on a scalar head (task="classification").

        `batch` holds `input_ids` (token lists) and `labels` (a target in [0, 1] per sequence,
        usually 0 or 1). The loss is the mean over the global batch's sequences, whatever the
        micro-batching and ranks; "accuracy" counts predictions within 0.5 of their target.
        """
        if self.task != "classification":
            raise ValueError('bce_step needs a learner built with task="classification"')
        start = time.perf_counter()
        ids, labels = list(batch["input_ids"]), [float(y) for y in batch["labels"]]
        n_global, _ = self._shard_sizes(len(ids), 0)
        self.engine.train()
        loss_sum = correct = 0.0
        for lo in range(0, len(ids), self.micro_batch_size):
            rows = ids[lo : lo + self.micro_batch_size]
            width = max(len(r) for r in rows)
            x = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            attn = torch.zeros_like(x)
            for j, r in enumerate(rows):
                x[j, : len(r)] = torch.tensor(r, dtype=torch.long)
                attn[j, : len(r)] = 1
            y = torch.tensor(labels[lo : lo + len(rows)], device=self.device)
            logits = self.engine(input_ids=x.to(self.device), attention_mask=attn.to(self.device)).logits
            logits = logits.view(-1).float()
            loss = F.binary_cross_entropy_with_logits(logits, y)
            # Ranks hold equal shares and DeepSpeed averages over them: weight by the local share.
            self.engine.backward(loss * (len(rows) / len(ids)), scale_wrt_gas=False)
            loss_sum += loss.item() * len(rows)
            correct += float(((torch.sigmoid(logits) - y).abs() < 0.5).sum())
        grad_norm, lr = self._optimizer_step()
        loss_total, correct_total = self._all_reduce([loss_sum, correct])
        return {
            "loss": loss_total / n_global,
            "accuracy": correct_total / n_global,
            "grad_norm": grad_norm,
            "lr": lr,
            "sequences": float(n_global),
            "step_time_s": time.perf_counter() - start,
        }

    # -- weights out -----------------------------------------------------------------------

    def state_for_sync(self) -> dict[str, Tensor] | None:
        """Full weights under their Hugging Face names on rank 0 (contiguous CPU copies in the
        training dtype), else None.

        Collective under ZeRO-3: each partitioned tensor is gathered on every rank, one at a
        time, so no rank ever holds more than one full tensor beyond its shard.
        """
        module = self.engine.module
        out: dict[str, Tensor] | None = {} if self.rank == 0 else None
        if self.zero_stage == 3:
            import deepspeed

            for name, t in module.state_dict(keep_vars=True).items():
                if hasattr(t, "ds_id"):
                    with deepspeed.zero.GatheredParameters([t], modifier_rank=None):
                        if out is not None:
                            out[name] = t.data.detach().to("cpu", copy=True).contiguous()
                elif out is not None:
                    out[name] = t.detach().to("cpu", copy=True).contiguous()
            return out
        if out is not None:
            for name, t in module.state_dict().items():
                out[name] = t.detach().to("cpu", copy=True).contiguous()
        return out

    def save(self, path: str | os.PathLike[str]) -> str:
        """Model and tokenizer in Hugging Face format (safetensors), written by rank 0."""
        import deepspeed.comm as dist

        state = self.state_for_sync()
        if state is not None:
            self.engine.module.save_pretrained(str(path), state_dict=state)
            self.tokenizer.save_pretrained(str(path))
        if self.world_size > 1:
            dist.barrier()
        return str(path)

    def save_state(self, path: str | os.PathLike[str]) -> str:
        """DeepSpeed checkpoint (weights, optimizer, scheduler) for resuming; every rank writes
        its partitions, so `path` must be on storage all ranks share."""
        self.engine.save_checkpoint(str(path), tag=CHECKPOINT_TAG, save_latest=False)
        return str(path)

    def load_state(self, path: str | os.PathLike[str]) -> None:
        if not os.path.isdir(os.path.join(str(path), CHECKPOINT_TAG)):
            raise FileNotFoundError(
                f"learner checkpoint not found: expected the folder {path}/{CHECKPOINT_TAG} "
                "written by save_state"
            )
        loaded, _ = self.engine.load_checkpoint(
            str(path), tag=CHECKPOINT_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the learner checkpoint in {path}")


# ---------------------------------------------------------------------------------------------
# The group of ranks, seen from the driver


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _rendezvous_address() -> tuple[str, int]:
    import ray

    return ray.util.get_node_ip_address(), _free_port()


class LearnerGroup:
    """`num_ranks` LearnerWorker actors forming one data-parallel group.

    With a placement group, rank r goes to bundle `bundle_indices[r]` (default r) and the
    rendezvous port is picked on rank 0's node; without one, on the driver's node. If any rank
    fails, every rank is killed: the others would otherwise wait in a collective forever.
    """

    def __init__(
        self,
        num_ranks: int,
        worker_kwargs: Mapping[str, Any],
        num_cpus_per_rank: float = 1,
        num_gpus_per_rank: float = 0,
        placement_group: Any = None,
        bundle_indices: Sequence[int] | None = None,
    ) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.with_reference = bool(worker_kwargs.get("with_reference", False))

        if num_ranks < 1:
            raise ValueError(f"num_ranks: expected >= 1, got {num_ranks}")
        reserved = {"rank", "world_size", "master_addr", "master_port"} & set(worker_kwargs)
        if reserved:
            raise ValueError(f"worker_kwargs: {sorted(reserved)} are set by LearnerGroup")
        bundles = list(bundle_indices) if bundle_indices is not None else list(range(num_ranks))
        if len(bundles) != num_ranks:
            raise ValueError(f"bundle_indices: expected {num_ranks} entries, got {len(bundles)}")

        def placement(rank: int) -> dict[str, Any]:
            if placement_group is None:
                return {}
            return {
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=bundles[rank]
                )
            }

        if placement_group is None:
            addr, port = _rendezvous_address()
        else:
            probe = ray.remote(num_cpus=0)(_rendezvous_address).options(**placement(0))
            addr, port = ray.get(probe.remote())

        actor = ray.remote(LearnerWorker)
        self.num_ranks = num_ranks
        self.workers = [
            actor.options(
                num_cpus=num_cpus_per_rank, num_gpus=num_gpus_per_rank, **placement(r)
            ).remote(
                rank=r, world_size=num_ranks, master_addr=addr, master_port=port, **worker_kwargs
            )
            for r in range(num_ranks)
        ]
        self.info = self._call("ready")

    def _call(self, method: str, *per_rank_args: Sequence[Any], **kwargs: Any) -> list[Any]:
        """Run `method` on every rank (rank r gets per_rank_args[i][r]); fail fast on any error."""
        import ray

        if not self.workers:
            raise RuntimeError("the learner group is shut down (a rank failed or shutdown() ran)")
        refs = [
            getattr(w, method).remote(*(a[r] for a in per_rank_args), **kwargs)
            for r, w in enumerate(self.workers)
        ]
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done[0])
        except Exception:
            self.shutdown()
            raise
        return ray.get(refs)

    def _step(
        self, method: str, batch: Mapping[str, Sequence[Any]], rollout: bool, **kw: Any
    ) -> dict[str, float]:
        validate_batch(batch, rollout=rollout)
        results = self._call(method, shard_batch(batch, self.num_ranks), **kw)
        return _rank_mean(results)

    def sft_step(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, float]:
        return self._step("sft_step", batch, rollout=False)

    def grpo_step(
        self,
        batch: Mapping[str, Sequence[Any]],
        clip_eps: float = 0.2,
        beta: float = 0.0,
        kl_kind: str = "k3",
        clip_eps_high: float | None = None,
    ) -> dict[str, float]:
        if beta > 0 and not self.with_reference:
            raise ValueError("grpo_step: beta > 0 needs a reference model (with_reference=True)")
        return self._step(
            "grpo_step",
            batch,
            rollout=True,
            clip_eps=clip_eps,
            beta=beta,
            kl_kind=kl_kind,
            clip_eps_high=clip_eps_high,
        )

    def bce_step(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, float]:
        """Meta-RM training step: `input_ids` token lists and `labels` (targets in [0, 1]), split
        over ranks."""
        ids, labels = batch.get("input_ids"), batch.get("labels")
        if ids is None or labels is None or len(ids) != len(labels) or not ids:
            raise ValueError("bce batch: expected equal, non-empty lists 'input_ids' and 'labels'")
        for i, y in enumerate(labels):
            if not isinstance(y, Real) or not 0 <= y <= 1:
                raise ValueError(f"bce batch.labels[{i}]: expected a target in [0, 1], got {y!r}")
        results = self._call("bce_step", shard_batch(batch, self.num_ranks))
        return _rank_mean(results)

    def state_for_sync(self, as_ref: bool = False) -> Any:
        """Rank 0's full state dict (or, with `as_ref`, its ObjectRef, to hand on without
        copying through the driver). All ranks take part: ZeRO-3 gathers collectively."""
        import ray

        if not self.workers:
            raise RuntimeError("the learner group is shut down (a rank failed or shutdown() ran)")
        refs = [w.state_for_sync.remote() for w in self.workers]
        try:
            ray.get(refs[1:])
            if as_ref:
                ray.wait(refs[:1])
                return refs[0]
            return ray.get(refs[0])
        except Exception:
            self.shutdown()
            raise

    def save(self, path: str | os.PathLike[str]) -> str:
        return self._call("save", [str(path)] * self.num_ranks)[0]

    def save_state(self, path: str | os.PathLike[str]) -> str:
        return self._call("save_state", [str(path)] * self.num_ranks)[0]

    def load_state(self, path: str | os.PathLike[str]) -> None:
        self._call("load_state", [str(path)] * self.num_ranks)

    def shutdown(self) -> None:
        import ray

        for w in getattr(self, "workers", []):
            ray.kill(w, no_restart=True)
        self.workers = []
