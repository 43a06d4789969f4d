"""The three step kinds of a learner rank: SFT (cross-entropy on completions), GRPO (the clipped
objective plus KL) and BCE (a scalar head, the meta RM).

One call is one optimizer step, whatever the number of micro-batches, and its loss and update
do not depend on how the batch is split over ranks and micro-batches:

- GRPO: the loss is the mean over all sequences of each sequence's token mean. A micro-batch
  of b sequences is back-propagated with weight R * b / N, N being the global sequence count;
  DeepSpeed then averages gradients over the R ranks. Ranks may hold unequal shares.
- SFT: the loss is the mean over all completion tokens of the global batch. A micro-batch
  with t completion tokens is weighted R * t / T, T being the global token count (one small
  all-reduce), so that DeepSpeed's average over ranks gives sum / T.
- BCE: the mean over the global batch's sequences, weighted like GRPO.

Every rank runs as many micro-batches as the busiest one (ZeRO-3 gathers parameters
collectively in each pass): a rank with fewer repeats its first at weight 0, and a `padding`
shard (a rank left without sequences) runs its copy at weight 0. Neither counts in a metric.

Metrics are reduced over all ranks inside the step (token- or sequence-weighted as the loss
is), so every rank returns the same global numbers. `tokens` counts the completion tokens the
loss covers, `forward_tokens` every token the policy's forward pass ran (prompts included: the
count MFU is measured over). Batches arrive checked: `LearnerGroup`
validates each global batch once, before sharding it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from spct.algos import gather_logprobs, grpo_policy_loss, sft_loss, token_entropy
from spct.learner.batches import (
    IGNORE_INDEX,
    completion_logits,
    rollout_micro_batches,
    sequence_micro_batches,
)


class Steps:
    """Mixed into `LearnerWorker`, which provides the engine, the reference model and the
    collectives (`_all_reduce`, `_shard_sizes`, `_optimizer_step`)."""

    def _update(self, micro: Sequence[Any], forward: Callable[[Any], tuple[Tensor, float, dict[str, float]]],
                padding: bool = False) -> tuple[dict[str, float], float, float]:
        """The one micro-batch loop of every step kind: `forward(mb)` gives the micro-batch's
        loss, the weight its gradient gets, and metric sums; each is back-propagated, then one
        optimizer step. Returns the metric sums over every rank, the grad norm and the lr."""
        self.engine.train()
        (count,) = self._all_reduce([float(len(micro))], op="max")
        sums: dict[str, float] = {}
        for i in range(int(count)):
            live = i < len(micro) and not padding
            loss, weight, got = forward(micro[i] if i < len(micro) else micro[0])
            self.engine.backward(loss * (weight if live else 0.0), scale_wrt_gas=False)
            for key, value in got.items():
                sums[key] = sums.get(key, 0.0) + (value if live else 0.0)
        grad_norm, lr = self._optimizer_step()
        keys = list(sums)
        return dict(zip(keys, self._all_reduce([sums[k] for k in keys]), strict=True)), grad_norm, lr

    def sft_step(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, float]:
        """One optimizer step of cross-entropy on completion tokens (prompts are context only)."""
        start = time.perf_counter()
        padding = bool(batch.get("padding"))
        micro = sequence_micro_batches(batch["input_ids"], batch["prompt_lens"],
                                       self.micro_batch_size, self.pad_id, self.device)
        n_global, tokens_global = self._shard_sizes(0 if padding else len(batch["input_ids"]),
                                                    0 if padding else sum(mb.num_tokens for mb in micro))

        def forward(mb):
            logits = self.engine(input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                                 use_cache=False).logits
            loss = sft_loss(logits, mb.labels, ignore_index=IGNORE_INDEX)
            return loss, self.world_size * mb.num_tokens / tokens_global, {
                "loss": loss.item() * mb.num_tokens, "forward_tokens": float(mb.attention_mask.sum())}

        totals, grad_norm, lr = self._update(micro, forward, padding)
        return {
            "loss": totals["loss"] / tokens_global,
            "grad_norm": grad_norm,
            "lr": lr,
            "tokens": float(tokens_global),
            "forward_tokens": totals["forward_tokens"],
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
        padding = bool(batch.get("padding"))
        micro = rollout_micro_batches(batch, self.micro_batch_size, self.pad_id, self.device)
        n_global, tokens_global = self._shard_sizes(0 if padding else len(batch["completion_ids"]),
                                                    0 if padding else sum(mb.num_tokens for mb in micro))
        gap_max = 0.0

        def forward(mb):
            nonlocal gap_max
            logits = completion_logits(self.engine, mb, self.share_prefix)
            logp = gather_logprobs(logits, mb.completion_ids)
            ref_logp = None
            if self.reference is not None:
                with torch.no_grad():
                    ref_logits = completion_logits(self.reference, mb, self.share_prefix)
                    ref_logp = gather_logprobs(ref_logits, mb.completion_ids)
            loss, m = grpo_policy_loss(logp, mb.old_logp, mb.advantages, mb.mask, ref_logp=ref_logp,
                                       clip_eps=clip_eps, clip_eps_high=clip_eps_high, beta=beta, kl_kind=kl_kind)
            with torch.no_grad():
                gap = (mb.old_logp - logp.detach()).abs()[mb.mask]
                entropy = token_entropy(logits.detach()[mb.mask])
            gap_max = max(gap_max, float(gap.max()) if gap.numel() else 0.0)
            # Sequence-weighted: loss. Token-weighted: the rest.
            sums = {"loss": loss.item() * mb.size}
            sums |= {key: m.get(key, 0.0) * mb.num_tokens for key in ("kl", "clip_fraction", "ratio_mean")}
            sums |= {"entropy": float(entropy.sum()), "logprob_gap": float(gap.sum()),
                     "forward_tokens": float(mb.forward_tokens(self.share_prefix))}
            return loss, self.world_size * mb.size / n_global, sums

        totals, grad_norm, lr = self._update(micro, forward, padding)
        (gap_max,) = self._all_reduce([gap_max], op="max")
        metrics = {"loss": totals.pop("loss") / n_global, "forward_tokens": totals.pop("forward_tokens")}
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
        padding = bool(batch.get("padding"))
        n_global, _ = self._shard_sizes(0 if padding else len(ids), 0)
        starts = range(0, len(ids), self.micro_batch_size)
        micro = list(zip(sequence_micro_batches(ids, None, self.micro_batch_size, self.pad_id, self.device),
                         starts, strict=True))

        def forward(piece):
            mb, lo = piece
            y = torch.tensor(labels[lo : lo + mb.size], device=self.device)
            logits = self.engine(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
            logits = logits.view(-1).float()
            loss = F.binary_cross_entropy_with_logits(logits, y)
            correct = float(((torch.sigmoid(logits) - y).abs() < 0.5).sum())
            return loss, self.world_size * mb.size / n_global, {"loss": loss.item() * mb.size, "correct": correct}

        totals, grad_norm, lr = self._update(micro, forward, padding)
        return {
            "loss": totals["loss"] / n_global,
            "accuracy": totals["correct"] / n_global,
            "grad_norm": grad_norm,
            "lr": lr,
            "sequences": float(n_global),
            "step_time_s": time.perf_counter() - start,
        }
