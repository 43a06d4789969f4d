"""Learner batches without Ray or DeepSpeed: groups, micro-batches, padding, and the forward pass
that runs each prompt once for its group (it must equal running every sequence whole)."""

from __future__ import annotations

import random

import pytest
import torch

from spct.algos import gather_logprobs
from spct.learner.batches import (
    completion_logits,
    pad_rows,
    prompt_groups,
    rollout_micro_batches,
    sequence_micro_batches,
    shard_batch,
    validate_batch,
)

CPU = torch.device("cpu")


def grouped_batch(seed: int, group_sizes: list[int], vocab: int) -> dict[str, list]:
    """Prompts of different lengths, each followed by its group of completions of uneven lengths."""
    rng = random.Random(seed)
    batch = {"prompt_ids": [], "group": [], "completion_ids": [], "old_logprobs": [], "advantages": []}
    for j, size in enumerate(group_sizes):
        batch["prompt_ids"].append([rng.randrange(vocab) for _ in range(rng.randrange(3, 12))])
        for _ in range(size):
            completion = [rng.randrange(vocab) for _ in range(rng.randrange(1, 9))]
            batch["group"].append(j)
            batch["completion_ids"].append(completion)
            batch["old_logprobs"].append([-1.0] * len(completion))
            batch["advantages"].append(rng.gauss(0, 1))
    return batch


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from spct.models import load_causal_lm

    m = load_causal_lm(tiny_model_dir, dtype="float32")
    m.config.use_cache = False
    return m


def whole_sequence_logprobs(model, batch) -> list[torch.Tensor]:
    """Reference: each sequence alone, unpadded, the plain way."""
    out = []
    for g, completion in zip(batch["group"], batch["completion_ids"], strict=True):
        prompt = batch["prompt_ids"][g]
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
        out.append(gather_logprobs(logits[len(prompt) - 1 : -1][None], torch.tensor([completion]))[0])
    return out


def test_pad_rows_right_and_left():
    ids, mask = pad_rows([[1, 2], [3], []], 0)
    assert ids.tolist() == [[1, 2], [3, 0], [0, 0]] and mask.tolist() == [[1, 1], [1, 0], [0, 0]]
    ids, mask = pad_rows([[1, 2], [3]], 9, left=True)
    assert ids.tolist() == [[1, 2], [9, 3]] and mask.tolist() == [[1, 1], [0, 1]]
    vals, _ = pad_rows([[0.5], [1.5, 2.5]], 0.0, torch.float32)
    assert vals.dtype == torch.float32 and vals.tolist() == [[0.5, 0.0], [1.5, 2.5]]


def test_prompt_groups_are_runs_of_one_prompts_rollouts():
    batch = grouped_batch(0, [2, 3, 1], vocab=50)
    assert [list(g) for g in prompt_groups(batch["group"])] == [[0, 1], [2, 3, 4], [5]]


def test_micro_batches_keep_groups_whole_when_they_fit_and_cover_every_sequence():
    batch = grouped_batch(1, [4, 4, 4, 2, 6], vocab=50)
    micro = rollout_micro_batches(batch, 8, 0, CPU)
    assert [mb.size for mb in micro] == [8, 6, 6]  # 4+4 | 4+2 | 6 (a 4 would not fit after 4+2)
    assert [mb.prompt_ids.shape[0] for mb in micro] == [2, 2, 1]
    # A group larger than the micro-batch is split; its prompt runs once per piece.
    micro = rollout_micro_batches(batch, 3, 0, CPU)
    assert sum(mb.size for mb in micro) == 20 and max(mb.size for mb in micro) <= 3
    completions = [row[m].tolist() for mb in micro for row, m in zip(mb.completion_ids, mb.mask, strict=True)]
    assert completions == batch["completion_ids"]
    prompts = [row[m.bool()].tolist() for mb in micro for row, m in zip(mb.prompt_ids, mb.prompt_mask, strict=True)]
    assert prompts == [batch["prompt_ids"][g] for g in (0, 0, 1, 1, 2, 2, 3, 4, 4)]  # a group of 4 runs its prompt twice (3 + 1), of 6 too


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("micro_size", [3, 16])
def test_completion_logprobs_and_gradients_equal_whole_sequences(model, share_prefix, micro_size):
    batch = grouped_batch(2, [3, 1, 4, 2], vocab=model.config.vocab_size)
    expected = whole_sequence_logprobs(model, batch)
    sum(e.sum() for e in expected).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    got, total = [], 0.0
    for mb in rollout_micro_batches(batch, micro_size, 0, CPU):
        logp = gather_logprobs(completion_logits(model, mb, share_prefix), mb.completion_ids)
        got += [row[m] for row, m in zip(logp, mb.mask, strict=True)]
        total = total + (logp * mb.mask).sum()
    total.backward()
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-4, rtol=1e-4, msg=name)
    model.zero_grad()


def test_sequence_micro_batches_label_completions_only():
    micro = sequence_micro_batches([[5, 6, 7, 8], [5, 6]], [2, 1], 8, 0, CPU)
    (mb,) = micro
    assert mb.labels.tolist() == [[-100, -100, 7, 8], [-100, 6, -100, -100]]
    assert mb.num_tokens == 3
    (mb,) = sequence_micro_batches([[5, 6]], None, 8, 0, CPU)
    assert mb.num_tokens == 0


def _set(field, index, value):
    def mutate(batch):
        batch[field][index] = value
    return mutate


@pytest.mark.parametrize("mutate, message", [
    (_set("group", 2, 2), r"group\[2\]: expected 0 or 1 \(a prompt's rollouts are consecutive"),
    (_set("group", 3, 0), r"group\[3\]: expected 1 or 2"),
    (_set("group", 0, 1), r"group\[0\]: expected 0 "),
    (_set("group", 5, 1), r"prompt_ids: expected 2 prompts \(one per group\), got 3"),
    (lambda b: b["group"].pop(), r"group: expected 6 entries \(one per sequence, like completion_ids\), got 5"),
    (_set("prompt_ids", 1, []), r"prompt_ids\[1\]: expected at least one token"),
    (_set("completion_ids", 1, []), r"completion_ids\[1\]: expected at least one token"),
    (_set("old_logprobs", 3, []), r"old_logprobs\[3\]: expected \d+ values \(one per completion token\), got 0"),
    (_set("advantages", 3, float("nan")), r"advantages\[3\]: expected a finite float"),
])
def test_a_bad_grpo_batch_is_refused_naming_the_field_and_index(mutate, message):
    batch = grouped_batch(3, [2, 3, 1], vocab=50)
    assert validate_batch(batch, rollout=True) == 6
    mutate(batch)
    with pytest.raises(ValueError, match=message):
        validate_batch(batch, rollout=True)


def test_an_sft_batch_is_not_a_grpo_batch():
    with pytest.raises(ValueError, match=r"missing field\(s\) \['prompt_ids', 'group', 'completion_ids'"):
        validate_batch({"input_ids": [[1, 2]], "prompt_lens": [1]}, rollout=True)


def _rebuilt(shards: list[dict]) -> list[tuple]:
    return [(s["prompt_ids"][g], c) for s in shards if not s.get("padding")
            for g, c in zip(s["group"], s["completion_ids"], strict=True)]


@pytest.mark.parametrize("ranks, sizes", [(4, [2, 2, 2, 2]), (3, [3, 3, 2]), (5, [2, 2, 2, 1, 1])])
def test_shards_differ_by_at_most_one_and_carry_the_prompts_of_their_rollouts(ranks, sizes):
    batch = grouped_batch(4, [3, 2, 3], vocab=50)  # 8 rollouts: every split cuts groups
    shards = shard_batch(batch, ranks)
    assert [len(s["completion_ids"]) for s in shards] == sizes
    if ranks == 4:
        assert [s["group"] for s in shards] == [[0, 0], [0, 1], [0, 1], [0, 0]]
    for shard in shards:
        validate_batch(shard, rollout=True)
        assert "padding" not in shard
    assert _rebuilt(shards) == [(batch["prompt_ids"][g], c)
                                for g, c in zip(batch["group"], batch["completion_ids"], strict=True)]


def test_an_rl_batch_that_lost_a_group_still_shards_over_16_ranks():
    """The 27B preset's RL batch (128 prompts x G = 4 over 16 learner ranks) after one prompt
    overflowed the context: 508 rollouts, every one trained on exactly once."""
    batch = grouped_batch(127, [4] * 127, vocab=50)
    shards = shard_batch(batch, 16)
    assert sorted({len(s["completion_ids"]) for s in shards}) == [31, 32]
    assert sum(len(s["completion_ids"]) for s in shards) == 508
    assert len(_rebuilt(shards)) == 508


def test_ranks_left_without_a_sequence_get_a_padding_copy():
    batch = {"input_ids": [[1, 2, 3], [4, 5, 6]], "prompt_lens": [1, 2]}
    shards = shard_batch(batch, 3)
    assert [s.get("padding", False) for s in shards] == [False, False, True]
    assert shards[2]["input_ids"] == [[1, 2, 3]]  # something to run the same passes on, at weight 0


def test_grpo_batch_leaves_out_groups_whose_prompt_overflowed():
    from spct.learner.batches import grpo_batch
    from spct.sample import samples_of

    def group(prompt, completions):
        return samples_of({"prompt_token_ids": prompt, "version": 0, "samples": [
            {"text": "", "token_ids": c, "logprobs": [-0.5] * len(c)} for c in completions]})

    groups = [group([1, 2], [[3], [4, 5]]), group([9] * 8, [[], []]), group([6], [[7], [8]])]
    batch, dropped = grpo_batch(groups, [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], scale=False)
    assert dropped == 1
    assert batch["prompt_ids"] == [[1, 2], [6]] and batch["group"] == [0, 0, 1, 1]
    assert batch["completion_ids"] == [[3], [4, 5], [7], [8]]
    assert batch["old_logprobs"] == [[-0.5], [-0.5, -0.5], [-0.5], [-0.5]]
    assert batch["advantages"] == pytest.approx([0.5, -0.5, -0.5, 0.5])
    assert validate_batch(batch, rollout=True) == 4
    assert grpo_batch([groups[1]], [[0.5, 0.5]]) == (None, 1)
    with pytest.raises(ValueError, match="group 0: 3 rewards for 2 samples"):
        grpo_batch([groups[0]], [[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="rewards for 1 groups, samples for 2"):
        grpo_batch(groups[:2], [[1.0, 0.0]])
