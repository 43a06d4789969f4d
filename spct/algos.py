"""Training math: group advantages, the GRPO objective, KL estimators and the SFT loss.

Pure torch, so the learner, the tests and any notebook share one definition of every number
that drives an update.

Shapes: B sequences (for GRPO, B = prompts x G rollouts, laid out group by group), T tokens,
V vocabulary entries. A `mask` is 1 (or True) on tokens that count and 0 on prompt and padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

KL_KINDS = ("k1", "k2", "k3")


# ---------------------------------------------------------------------------------------------
# Advantages


def group_advantages(
    rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> Tensor:
    """Advantage of each rollout relative to the other rollouts of the same prompt.

    `rewards` is either 1-D with the G = `group_size` rollouts of each prompt contiguous, or
    [B, G]; the result has the same shape. The baseline is the group mean; with `scale` the
    difference is divided by (group std + eps), the std being the sample (Bessel-corrected,
    divide by G - 1) standard deviation, which is what TRL's GRPOTrainer uses (`nanstd` in
    trl/trainer/utils.py). `scale=False` keeps r - mean (the Dr. GRPO choice, which does not
    up-weight groups that barely disagree).

    A group whose rewards are all equal carries no signal about which rollout was better, so
    its advantage is exactly zero; that includes G = 1, where the std is undefined.
    """
    if not isinstance(rewards, Tensor):
        raise TypeError(f"rewards: expected a torch.Tensor, got {type(rewards).__name__}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected an int >= 1, got {group_size!r}")
    if rewards.dim() == 2:
        if rewards.shape[1] != group_size:
            raise ValueError(
                f"rewards: a [B, G] tensor needs G == group_size ({group_size}), "
                f"got shape {tuple(rewards.shape)}"
            )
    elif rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards: expected a 1-D tensor whose length is a multiple of group_size "
            f"({group_size}) or a [B, {group_size}] tensor, got shape {tuple(rewards.shape)}"
        )
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards: expected finite values, found NaN or inf")

    grouped = rewards.reshape(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    advantages = grouped - mean
    if scale and group_size > 1:
        std = grouped.std(dim=1, keepdim=True)
        advantages = advantages / (std + eps)
    spread = grouped.amax(dim=1, keepdim=True) - grouped.amin(dim=1, keepdim=True)
    advantages = torch.where(spread == 0, torch.zeros_like(advantages), advantages)
    return advantages.reshape(rewards.shape)


# ---------------------------------------------------------------------------------------------
# Reductions and KL


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the positions where `mask` is nonzero.

    Masked positions are selected out rather than multiplied by zero, so a -inf or NaN there
    (a log-prob of padding, say) cannot leak in. A slice with no valid position gives 0.
    """
    if mask.shape != x.shape:
        raise ValueError(f"mask: expected shape {tuple(x.shape)}, got {tuple(mask.shape)}")
    valid = mask.bool()
    total = torch.where(valid, x, torch.zeros_like(x))
    if dim is None:
        return total.sum() / valid.sum().clamp(min=1)
    return total.sum(dim) / valid.sum(dim).clamp(min=1)


def per_sequence_token_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over each sequence's valid tokens, then over sequences ([B, T] -> scalar).

    Every sequence weighs the same whatever its length. A sequence with no valid token
    contributes 0 and still counts in the denominator B, as in TRL, so the scale of the loss
    does not depend on how many rows of a micro-batch happen to be empty.
    """
    if x.dim() != 2:
        raise ValueError(f"x: expected a [B, T] tensor, got shape {tuple(x.shape)}")
    return masked_mean(x, mask, dim=-1).mean()


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman's k1/k2/k3).

    k1 = log(pi/pi_ref) is unbiased but noisy and can be negative; k2 = 0.5 log^2 is low
    variance but biased; k3 = pi_ref/pi - log(pi_ref/pi) - 1 is unbiased, never negative and
    low variance, which is why GRPO uses it.
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"ref_logp: expected shape {tuple(logp.shape)} like logp, got {tuple(ref_logp.shape)}"
        )
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if kind == "k3":
        log_ratio = ref_logp - logp
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"kl kind: unknown '{kind}'; expected one of {', '.join(KL_KINDS)}")


# ---------------------------------------------------------------------------------------------
# Policy losses


def grpo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    ref_logp: Tensor | None = None,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.0,
    kl_kind: str = "k3",
    kl_ratio_correction: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO loss: clipped ratio surrogate per token plus beta * KL, averaged per sequence.

    Per token, with ratio = exp(logp - old_logp) and A the sequence's advantage:
    -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps_high) * A) + beta * KL(pi || pi_ref).
    `clip_eps_high` defaults to `clip_eps` (symmetric); a larger one is DAPO's clip-higher.
    `kl_ratio_correction` multiplies the per-token KL by the (differentiable) ratio: the tokens
    come from the old policy, and the weighted estimate has the unbiased reverse-KL gradient
    (DeepSeek-V3.2). Off by default, as in the DeepSeekMath GRPO the paper follows; TRL 1.16
    turns it on by default (`use_bias_correction_kl`).
    The per-token loss is averaged over each sequence's valid tokens, then over sequences,
    as in the paper and TRL's "grpo" loss type.

    Metrics (floats, token means over valid tokens): `clip_fraction`, the share of tokens
    whose gradient the clip removed; `ratio_mean`; and `kl`, the penalty's per-token term,
    when `ref_logp` is given (also with beta = 0, to watch the drift). old_logp, ref_logp and
    the advantages are constants of the objective and are detached.
    """
    if logp.dim() != 2:
        raise ValueError(f"logp: expected a [B, T] tensor, got shape {tuple(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name}: expected shape {tuple(logp.shape)}, got {tuple(t.shape)}")
    if advantages.dim() == 1 and advantages.shape[0] == logp.shape[0]:
        advantages = advantages.unsqueeze(-1)
    elif advantages.shape not in (logp.shape, (logp.shape[0], 1)):
        raise ValueError(
            f"advantages: expected shape ({logp.shape[0]},), ({logp.shape[0]}, 1) or "
            f"{tuple(logp.shape)}, "
            f"got {tuple(advantages.shape)}"
        )
    eps_low = clip_eps
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip_eps: expected >= 0, got low={eps_low}, high={eps_high}")
    if beta < 0:
        raise ValueError(f"beta: expected >= 0, got {beta}")
    if kl_kind not in KL_KINDS:
        raise ValueError(f"kl_kind: unknown '{kl_kind}'; expected one of {', '.join(KL_KINDS)}")
    if beta > 0 and ref_logp is None:
        raise ValueError("ref_logp: required when beta > 0 (the KL penalty needs the reference)")

    # Padding may hold -inf or garbage log-probs; zeroing them first keeps exp() and its
    # gradient finite there (a masked inf would otherwise turn into a NaN gradient).
    valid = mask.bool()
    logp = torch.where(valid, logp, torch.zeros_like(logp))
    old_logp = torch.where(valid, old_logp.detach(), torch.zeros_like(logp))
    if ref_logp is not None:
        ref_logp = torch.where(valid, ref_logp.detach(), torch.zeros_like(logp))
    advantages = advantages.detach()
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)

    metrics: dict[str, float] = {}
    if ref_logp is not None:
        kl = kl_estimate(logp, ref_logp, kl_kind)
        if kl_ratio_correction:
            kl = kl * ratio
        if beta > 0:
            per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl.detach(), mask).item()

    with torch.no_grad():
        was_clipped = ((ratio < 1 - eps_low) & (advantages < 0)) | (
            (ratio > 1 + eps_high) & (advantages > 0)
        )
        metrics["clip_fraction"] = masked_mean(was_clipped.to(ratio.dtype), mask).item()
        metrics["ratio_mean"] = masked_mean(ratio, mask).item()
    return per_sequence_token_mean(per_token, mask), metrics


# ---------------------------------------------------------------------------------------------
# Token log-probs, entropy and SFT


def _check_logits(logits: Tensor, ids: Tensor, ids_name: str) -> None:
    if logits.dim() != 3 or ids.dim() != 2 or logits.shape[:2] != ids.shape:
        raise ValueError(
            f"logits/{ids_name}: expected logits [B, T, V] and {ids_name} [B, T], "
            f"got {tuple(logits.shape)} and {tuple(ids.shape)}"
        )


def gather_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """log p(ids[b, t]) under logits[b, t, :]: [B, T, V], [B, T] -> [B, T].

    Computed as gathered logit minus logsumexp, one row at a time in float32, so the full
    [B, T, V] log-softmax is never materialised (V is ~100k+ for real models).
    """
    rows = []
    for row_logits, row_ids in zip(logits, ids, strict=True):
        row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_ids.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy (nats) of the next-token distribution at every position: [..., V] -> [...]."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    for chunk in flat.split(256):
        logp = F.log_softmax(chunk.float(), dim=-1)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out).reshape(logits.shape[:-1])


def completion_labels(
    input_ids: Tensor,
    prompt_lengths: Tensor | Sequence[int],
    attention_mask: Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """Labels for SFT on completions only: `input_ids` with prompt and padding set to ignore.

    `prompt_lengths[b]` counts the prompt tokens of row b. Positions are counted over valid
    (attention_mask = 1) tokens, so left- and right-padded batches both work.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected [B, T], got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        valid = torch.ones_like(input_ids, dtype=torch.bool)
    elif attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask: expected shape {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    else:
        valid = attention_mask.bool()
    lengths = torch.as_tensor(prompt_lengths, device=input_ids.device).reshape(-1)
    if lengths.numel() != input_ids.shape[0]:
        raise ValueError(
            f"prompt_lengths: expected {input_ids.shape[0]} values (one per row), "
            f"got {lengths.numel()}"
        )
    n_valid = valid.sum(-1)
    bad = (lengths < 0) | (lengths > n_valid)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"prompt_lengths[{row}]: expected 0..{int(n_valid[row])} (the row's valid tokens), "
            f"got {int(lengths[row])}"
        )
    position = valid.long().cumsum(-1)
    is_completion = valid & (position > lengths.unsqueeze(-1))
    return input_ids.masked_fill(~is_completion, ignore_index)


SFT_LOSS_CHUNK = 1024  # labelled positions per float32 log-softmax in sft_loss


def _cross_entropy_sum(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def sft_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Next-token cross-entropy, mean over the labelled (completion) tokens of the batch.

    logits[:, t] predicts labels[:, t + 1]. Only labelled positions are computed, in float32
    pieces of SFT_LOSS_CHUNK positions that backward recomputes rather than keeps: a float32
    copy of the whole [B, T, V] logits (20 GB at 4 x 8192 tokens x 152K vocabulary) is never
    made. A batch with no labelled token gives 0 (with a graph), not NaN, so one empty
    micro-batch cannot poison an accumulated step.
    """
    from torch.utils.checkpoint import checkpoint

    _check_logits(logits, labels, "labels")
    shift_labels = labels[:, 1:].reshape(-1)
    keep = shift_labels != ignore_index
    if not bool(keep.any()):
        return logits.sum() * 0.0
    rows = logits[:, :-1].reshape(-1, logits.shape[-1])[keep]
    targets = shift_labels[keep]
    total = sum(checkpoint(_cross_entropy_sum, r, t, use_reentrant=False)
                for r, t in zip(rows.split(SFT_LOSS_CHUNK), targets.split(SFT_LOSS_CHUNK), strict=True))
    return total / keep.sum()

