"""Learner batches: validation, sharding over ranks, padding, micro-batches, completion logits.

Batches arrive over Ray as plain dicts of per-sequence lists:

- `input_ids`: list of token id lists (prompt followed by completion), no padding;
- `prompt_lens`: number of prompt tokens of each sequence (>= 1, less than its length);
- GRPO only: `old_logprobs`, one list per sequence with the rollout log-prob of every
  completion token, and `advantages`, one float per sequence;
- BCE only: `labels`, a target in [0, 1] per sequence.

GRPO batches hold groups: the G rollouts of one prompt are consecutive and share its tokens.
`rollout_micro_batches` finds those groups, and `completion_logits` runs each group's prompt
once and its G completions on the prompt's key/value cache, instead of running the prompt G
times. The result equals a forward pass over every whole sequence (to float rounding), gradient
included; for a GRM prompt (a query and its responses) that is often longer than the critique,
it removes most of the learner's work.

Only torch and transformers here: no Ray, DeepSpeed or vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from spct.algos import completion_labels

IGNORE_INDEX = -100
SFT_KEYS = ("input_ids", "prompt_lens")
ROLLOUT_KEYS = (*SFT_KEYS, "old_logprobs", "advantages")
# Every per-sequence list a step may carry (BCE batches add "labels"); shard_batch splits these.
SEQUENCE_KEYS = (*ROLLOUT_KEYS, "labels")


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


def rank_mean(results: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in results) / len(results) for k in results[0]}


def pad_rows(
    rows: Sequence[Sequence[float]], value: float, dtype: torch.dtype = torch.long, left: bool = False
) -> tuple[Tensor, Tensor]:
    """Rows of unequal length as one [n, max_len] tensor (right- or left-padded with `value`)
    and its 0/1 mask (long)."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            cols = slice(width - len(r), width) if left else slice(0, len(r))
            out[i, cols] = torch.as_tensor(r, dtype=dtype)
            mask[i, cols] = 1
    return out, mask


# ---------------------------------------------------------------------------------------------
# SFT and BCE: whole sequences, right-padded


@dataclass
class SequenceBatch:
    input_ids: Tensor  # [b, T], right-padded
    attention_mask: Tensor  # [b, T]
    labels: Tensor  # [b, T], IGNORE_INDEX outside completions

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        """Completion tokens the loss counts (each labels[:, t + 1] is predicted at t)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def sequence_micro_batches(
    input_ids: Sequence[Sequence[int]],
    prompt_lens: Sequence[int] | None,
    size: int,
    pad_id: int,
    device: torch.device,
) -> list[SequenceBatch]:
    """Micro-batches of at most `size` sequences; without prompt_lens every label is ignored
    (classification batches take their targets separately)."""
    out = []
    for start in range(0, len(input_ids), size):
        ids, attn = pad_rows(input_ids[start : start + size], pad_id)
        if prompt_lens is None:
            labels = torch.full_like(ids, IGNORE_INDEX)
        else:
            labels = completion_labels(ids, prompt_lens[start : start + size], attn, IGNORE_INDEX)
        out.append(SequenceBatch(ids.to(device), attn.to(device), labels.to(device)))
    return out


# ---------------------------------------------------------------------------------------------
# GRPO: groups of completions sharing a prompt


@dataclass
class RolloutBatch:
    """One micro-batch of rollouts, held as distinct prompts and the completions of each."""

    prompt_ids: Tensor  # [g, P], left-padded: every prompt ends at column P - 1
    prompt_mask: Tensor  # [g, P]
    group: Tensor  # [b], the prompt row of each completion
    completion_ids: Tensor  # [b, C], right-padded
    mask: Tensor  # [b, C], 1 on completion tokens (bool)
    old_logp: Tensor  # [b, C], rollout log-probs, 0 on padding
    advantages: Tensor  # [b]

    @property
    def size(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())


def prompt_groups(batch: Mapping[str, Sequence[Any]]) -> list[range]:
    """Runs of consecutive sequences with identical prompt tokens (the G rollouts of a prompt)."""
    ids, plens = batch["input_ids"], batch["prompt_lens"]
    groups, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or plens[i] != plens[start] or ids[i][: plens[i]] != ids[start][: plens[start]]:
            groups.append(range(start, i))
            start = i
    return groups


def rollout_micro_batches(
    batch: Mapping[str, Sequence[Any]], size: int, pad_id: int, device: torch.device
) -> list[RolloutBatch]:
    """Micro-batches of at most `size` sequences, cut between groups where a group fits (a
    group larger than `size` is split, and its prompt then runs once per piece)."""
    pieces: list[range] = []
    for g in prompt_groups(batch):
        pieces += [g[i : i + size] for i in range(0, len(g), size)]
    chunks: list[list[range]] = [[]]
    for piece in pieces:
        if chunks[-1] and sum(map(len, chunks[-1])) + len(piece) > size:
            chunks.append([])
        chunks[-1].append(piece)

    out = []
    for chunk in chunks:
        rows = [i for piece in chunk for i in piece]
        plens = [batch["prompt_lens"][piece[0]] for piece in chunk]
        prompts = [batch["input_ids"][piece[0]][:p] for piece, p in zip(chunk, plens, strict=True)]
        group = [j for j, piece in enumerate(chunk) for _ in piece]
        completions = [batch["input_ids"][i][batch["prompt_lens"][i]:] for i in rows]
        prompt_ids, prompt_mask = pad_rows(prompts, pad_id, left=True)
        completion_ids, mask = pad_rows(completions, pad_id)
        old, _ = pad_rows([batch["old_logprobs"][i] for i in rows], 0.0, torch.float32)
        adv = torch.tensor([float(batch["advantages"][i]) for i in rows], dtype=torch.float32)
        out.append(RolloutBatch(
            prompt_ids.to(device), prompt_mask.to(device), torch.tensor(group, device=device),
            completion_ids.to(device), mask.bool().to(device), old.to(device), adv.to(device),
        ))
    return out


def completion_logits(model: Any, mb: RolloutBatch, share_prefix: bool = True) -> Tensor:
    """[b, C, V]: the logits that predict each completion token (row i, column t predicts
    completion_ids[i, t]).

    With `share_prefix`, each distinct prompt runs once and its completions run on its
    key/value cache (gradients flow back through the cache into the prompt). Without it (under
    gradient checkpointing, whose recomputation would write the cache twice), every sequence
    runs whole. `model` is a Hugging Face causal LM or an engine wrapping one.
    """
    c_width = mb.completion_ids.shape[1]
    prompt_pos = (mb.prompt_mask.cumsum(1) - 1).clamp(min=0)
    prompt_len = mb.prompt_mask.sum(1)[mb.group]
    completion_pos = prompt_len[:, None] + torch.arange(c_width, device=prompt_len.device)
    attention = torch.cat([mb.prompt_mask[mb.group], mb.mask.long()], dim=1)
    if not share_prefix:
        ids = torch.cat([mb.prompt_ids[mb.group], mb.completion_ids], dim=1)
        pos = torch.cat([prompt_pos[mb.group], completion_pos], dim=1)
        logits = model(input_ids=ids, attention_mask=attention, position_ids=pos, use_cache=False,
                       logits_to_keep=c_width + 1).logits
        return logits[:, :-1]
    from transformers import DynamicCache

    config = model.module.config if hasattr(model, "module") else model.config
    cache = DynamicCache(config=config)
    head = model(input_ids=mb.prompt_ids, attention_mask=mb.prompt_mask, position_ids=prompt_pos,
                 past_key_values=cache, use_cache=True, logits_to_keep=1).logits  # [g, 1, V]
    cache.reorder_cache(mb.group)
    tail = model(input_ids=mb.completion_ids, attention_mask=attention, position_ids=completion_pos,
                 past_key_values=cache, use_cache=True).logits  # [b, C, V]
    return torch.cat([head[mb.group], tail[:, :-1]], dim=1)

