"""Learner batches: the GRPO batch of a step's samples, validation, sharding over ranks,
padding, micro-batches, completion logits.

Batches arrive over Ray as plain dicts of lists, with no padding; `grpo_batch` builds a GRPO one
from the step's sample records (spct.sample) and their rewards.

SFT and BCE batches, one entry per sequence:

- `input_ids`: token id lists (prompt followed by completion);
- SFT: `prompt_lens`, the number of prompt tokens of each sequence (>= 1, less than its
  length); the loss counts the tokens after them;
- BCE: `labels`, a target in [0, 1] per sequence.

GRPO batches hold the groups the sampler drew, the G rollouts of each prompt, as they came:

- `prompt_ids`: one token id list per prompt;
- `group`: per rollout, the index of its prompt in `prompt_ids`; a prompt's rollouts are
  consecutive and prompts come in order (0, 0, 1, 1, 1, 2, ...);
- `completion_ids`: per rollout, the sampled token ids;
- `old_logprobs`: per rollout, the rollout log-prob of every completion token;
- `advantages`: per rollout, one float.

`rollout_micro_batches` cuts micro-batches between groups, and `completion_logits` runs each
group's prompt once and its G completions on the prompt's key/value cache, instead of running
the prompt G times. The result equals a forward pass over every whole sequence (to float
rounding), gradient included; for a GRM prompt (a query and its responses) that is often longer
than the critique, it removes most of the learner's work.

Only torch and transformers here: no Ray, DeepSpeed or vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from spct.algos import completion_labels, group_advantages
from spct.sample import Sample

IGNORE_INDEX = -100
SFT_KEYS = ("input_ids", "prompt_lens")
ROLLOUT_KEYS = ("prompt_ids", "group", "completion_ids", "old_logprobs", "advantages")
# Every per-sequence list a step may carry; shard_batch splits these (and a GRPO batch's prompts
# along with them).
SEQUENCE_KEYS = ("input_ids", "prompt_lens", "labels", "group", "completion_ids", "old_logprobs", "advantages")


def validate_batch(batch: Mapping[str, Any], rollout: bool, where: str = "batch") -> int:
    """Check an SFT batch, or with `rollout` a GRPO batch; return the number of sequences.

    Errors name the field and the sequence (or prompt) index.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"{where}: expected a dict of per-sequence lists, got {type(batch).__name__}"
        )
    keys = ROLLOUT_KEYS if rollout else SFT_KEYS
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; a batch needs {list(keys)}")
    first = "completion_ids" if rollout else "input_ids"
    n = len(batch[first])
    if n == 0:
        raise ValueError(f"{where}.{first}: expected at least one sequence, got none")
    for key in keys:
        if key != "prompt_ids" and len(batch[key]) != n:
            raise ValueError(
                f"{where}.{key}: expected {n} entries (one per sequence, like {first}), "
                f"got {len(batch[key])}"
            )
    (_check_rollouts if rollout else _check_sequences)(batch, where)
    return n


def _check_sequences(batch: Mapping[str, Any], where: str) -> None:
    for i, (seq, p) in enumerate(zip(batch["input_ids"], batch["prompt_lens"], strict=True)):
        if isinstance(p, bool) or not isinstance(p, int):
            raise ValueError(f"{where}.prompt_lens[{i}]: expected an int, got {p!r}")
        if not 1 <= p < len(seq):
            raise ValueError(
                f"{where}.prompt_lens[{i}]: expected 1..{len(seq) - 1} (at least one prompt and "
                f"one completion token in a sequence of {len(seq)}), got {p}"
            )


def _check_rollouts(batch: Mapping[str, Any], where: str) -> None:
    prompts, group = batch["prompt_ids"], batch["group"]
    for i, g in enumerate(group):
        allowed = (0,) if i == 0 else (group[i - 1], group[i - 1] + 1)
        if isinstance(g, bool) or not isinstance(g, int) or g not in allowed:
            raise ValueError(
                f"{where}.group[{i}]: expected {' or '.join(map(str, allowed))} (a prompt's rollouts "
                f"are consecutive and prompts come in order), got {g!r}"
            )
    if len(prompts) != group[-1] + 1:
        raise ValueError(
            f"{where}.prompt_ids: expected {group[-1] + 1} prompts (one per group), got {len(prompts)}"
        )
    for j, prompt in enumerate(prompts):
        if not len(prompt):
            raise ValueError(f"{where}.prompt_ids[{j}]: expected at least one token, got none")
    for i, completion in enumerate(batch["completion_ids"]):
        if not len(completion):
            raise ValueError(f"{where}.completion_ids[{i}]: expected at least one token, got none")
        old = batch["old_logprobs"][i]
        if len(old) != len(completion):
            raise ValueError(
                f"{where}.old_logprobs[{i}]: expected {len(completion)} values (one per "
                f"completion token), got {len(old)}"
            )
        if not all(math.isfinite(x) for x in old):
            raise ValueError(f"{where}.old_logprobs[{i}]: expected finite values")
        if not math.isfinite(batch["advantages"][i]):
            raise ValueError(
                f"{where}.advantages[{i}]: expected a finite float, got {batch['advantages'][i]}"
            )


def grpo_batch(
    groups: Sequence[Sequence[Sample]], rewards: Sequence[Sequence[float]], scale: bool = True
) -> tuple[dict[str, list] | None, int]:
    """The GRPO batch of a step's rollouts: `groups` holds each prompt's samples, `rewards` one
    reward per sample, nested alike. Each prompt's tokens go in once, each rollout's completion
    tokens and log-probs, and group advantages (`spct.algos.group_advantages`, std-scaled with
    `scale`).

    A group with an empty sample (its prompt left no room in the context: the engine's
    "prompt_too_long") is left out whole, since it has nothing to train on and its advantages
    need every member. Returns (the batch, or None when every group was left out; how many
    groups were left out)."""
    if len(rewards) != len(groups):
        raise ValueError(f"grpo_batch: rewards for {len(rewards)} groups, samples for {len(groups)}")
    batch: dict[str, list] = {k: [] for k in ROLLOUT_KEYS}
    dropped = 0
    for g, (samples, group) in enumerate(zip(groups, rewards, strict=True)):
        if len(group) != len(samples):
            raise ValueError(f"grpo_batch: group {g}: {len(group)} rewards for {len(samples)} samples")
        if any(not s.token_ids for s in samples):
            dropped += 1
            continue
        batch["advantages"] += group_advantages(torch.tensor([float(r) for r in group]), len(group),
                                                scale=scale).tolist()
        batch["group"] += [len(batch["prompt_ids"])] * len(samples)
        batch["prompt_ids"].append(list(samples[0].prompt_ids))
        batch["completion_ids"] += [s.token_ids for s in samples]
        batch["old_logprobs"] += [s.logprobs for s in samples]
    return (batch if batch["completion_ids"] else None), dropped


def shard_batch(batch: Mapping[str, Sequence[Any]], num_ranks: int) -> list[dict[str, Any]]:
    """Contiguous slices of every per-sequence list, one per rank, their sizes differing by at
    most one (an RL batch that lost an overflowing group rarely divides by the rank count); a
    GRPO shard carries the prompts of its rollouts (a group cut at a shard boundary sends its
    prompt to both).

    A rank left without a sequence (fewer sequences than ranks) gets a copy of the first one
    marked `padding`: it runs the same passes as the others at weight 0, since under ZeRO-3 every
    rank must run the same forward and backward passes or the collectives wait forever
    (`Steps._update` evens out the micro-batch counts the same way).
    """
    rollout = "group" in batch
    n = len(batch["completion_ids" if rollout else "input_ids"])
    size, extra = divmod(n, num_ranks)
    shards, lo = [], 0
    for r in range(num_ranks):
        hi = lo + size + (r < extra)
        a, b = (lo, hi) if hi > lo else (0, 1)
        shard: dict[str, Any] = {k: list(v[a:b]) for k, v in batch.items() if k in SEQUENCE_KEYS}
        if rollout:
            first, last = shard["group"][0], shard["group"][-1]
            shard["group"] = [g - first for g in shard["group"]]
            shard["prompt_ids"] = list(batch["prompt_ids"][first : last + 1])
        if hi == lo:
            shard["padding"] = True
        shards.append(shard)
        lo = hi
    return shards


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

    def forward_tokens(self, share_prefix: bool) -> int:
        """Tokens a policy forward pass runs: each prompt once when the group shares it (else
        once per completion), plus every completion token."""
        prompt_lens = self.prompt_mask.sum(1)
        prompts = prompt_lens.sum() if share_prefix else prompt_lens[self.group].sum()
        return int(prompts) + self.num_tokens


def prompt_groups(group: Sequence[int]) -> list[range]:
    """The runs of one prompt's rollouts: consecutive equal entries of a batch's `group`."""
    runs, start = [], 0
    for i in range(1, len(group) + 1):
        if i == len(group) or group[i] != group[start]:
            runs.append(range(start, i))
            start = i
    return runs


def rollout_micro_batches(
    batch: Mapping[str, Sequence[Any]], size: int, pad_id: int, device: torch.device
) -> list[RolloutBatch]:
    """Micro-batches of at most `size` rollouts, cut between groups where a group fits (a
    group larger than `size` is split, and its prompt then runs once per piece)."""
    pieces: list[range] = []
    for g in prompt_groups(batch["group"]):
        pieces += [g[i : i + size] for i in range(0, len(g), size)]
    chunks: list[list[range]] = [[]]
    for piece in pieces:
        if chunks[-1] and sum(map(len, chunks[-1])) + len(piece) > size:
            chunks.append([])
        chunks[-1].append(piece)

    out = []
    for chunk in chunks:
        rows = [i for piece in chunk for i in piece]
        prompts = [batch["prompt_ids"][batch["group"][piece[0]]] for piece in chunk]
        group = [j for j, piece in enumerate(chunk) for _ in piece]
        prompt_ids, prompt_mask = pad_rows(prompts, pad_id, left=True)
        completion_ids, mask = pad_rows([batch["completion_ids"][i] for i in rows], pad_id)
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

