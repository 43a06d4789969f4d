"""Tests for spct.algos: hand-computed values, edge cases, gradients, and TRL's GRPOTrainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from spct.algos import (
    completion_labels,
    gather_logprobs,
    group_advantages,
    grpo_policy_loss,
    kl_estimate,
    masked_mean,
    per_sequence_token_mean,
    sft_loss,
    token_entropy,
)

# ------------------------------------------------------------------------------- advantages


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    adv = group_advantages(rewards, group_size=4)
    # Group 1: mean 0, sample std sqrt(4/3). Group 2: mean -0.5, sample std 1.
    a = 1 / (math.sqrt(4 / 3) + 1e-4)
    b = 1 / (1 + 1e-4)
    expected = torch.tensor([a, -a, -a, a, 1.5 * b, -0.5 * b, -0.5 * b, -0.5 * b])
    torch.testing.assert_close(adv, expected)


def test_group_advantages_unscaled_is_reward_minus_group_mean():
    rewards = torch.tensor([1.0, -1.0, -1.0, -1.0, 3.0, 5.0, 4.0, 4.0])
    adv = group_advantages(rewards, group_size=4, scale=False)
    torch.testing.assert_close(adv, torch.tensor([1.5, -0.5, -0.5, -0.5, -1.0, 1.0, 0.0, 0.0]))


def test_group_advantages_accepts_b_by_g_and_keeps_its_shape():
    flat = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    grid = group_advantages(flat.reshape(2, 4), group_size=4)
    assert grid.shape == (2, 4)
    torch.testing.assert_close(grid.reshape(-1), group_advantages(flat, group_size=4))


def test_group_advantages_integer_rewards_become_float():
    adv = group_advantages(torch.tensor([1, -1]), group_size=2)
    assert adv.dtype == torch.float32
    assert adv[0] > 0 > adv[1]


@pytest.mark.parametrize("value", [0.1, 1.0, -1.0, 0.3])
@pytest.mark.parametrize("scale", [True, False])
def test_zero_spread_group_gets_exactly_zero(value, scale):
    # 0.1 * 3 / 3 != 0.1 in float32 arithmetic; the result must still be exactly zero.
    rewards = torch.tensor([value] * 3 + [1.0, 0.0, 0.5])
    adv = group_advantages(rewards, group_size=3, scale=scale)
    assert torch.equal(adv[:3], torch.zeros(3))
    assert adv[3:].abs().sum() > 0


def test_group_of_one_gets_zero_not_nan():
    adv = group_advantages(torch.tensor([1.0, -1.0, 0.5]), group_size=1)
    assert torch.equal(adv, torch.zeros(3))


@given(g=st.integers(1, 6), n_groups=st.integers(1, 5), data=st.data())
@settings(max_examples=50, deadline=None)
def test_group_advantages_are_finite_and_centred(g, n_groups, data):
    values = data.draw(
        st.lists(st.sampled_from([-1.0, 0.0, 1.0]), min_size=g * n_groups, max_size=g * n_groups)
    )
    adv = group_advantages(torch.tensor(values), group_size=g).reshape(-1, g)
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(n_groups), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "rewards, group_size, message",
    [
        (torch.ones(5), 4, "multiple of group_size"),
        (torch.ones(2, 3), 4, "G == group_size"),
        (torch.ones(4), 0, "group_size"),
        (torch.tensor([1.0, float("nan")]), 2, "finite"),
        (torch.ones(2, 2, 2), 2, "1-D"),
    ],
)
def test_group_advantages_rejects_bad_input(rewards, group_size, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, group_size=group_size)


# ------------------------------------------------------------------------------- reductions


def test_masked_mean_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(13 / 3)
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor([1.5, 10.0]))
    torch.testing.assert_close(masked_mean(x, mask, dim=0), torch.tensor([5.5, 2.0, 0.0]))


def test_masked_mean_ignores_inf_and_nan_under_the_mask():
    x = torch.tensor([[1.0, float("-inf"), float("nan")]])
    mask = torch.tensor([[True, False, False]])
    assert masked_mean(x, mask).item() == 1.0


def test_masked_mean_all_masked_is_zero():
    assert masked_mean(torch.ones(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_masked_mean_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="mask"):
        masked_mean(torch.ones(2, 3), torch.ones(2, 2))


def test_per_sequence_token_mean_weighs_sequences_equally():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert per_sequence_token_mean(x, mask).item() == pytest.approx((2 + 10) / 2)
    assert masked_mean(x, mask).item() == pytest.approx(16 / 4)


def test_per_sequence_token_mean_empty_row_counts_as_zero_without_nan():
    x = torch.tensor([[1.0, 2.0], [5.0, 5.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [0, 0]])
    out = per_sequence_token_mean(x, mask)
    assert out.item() == pytest.approx(0.75)
    out.backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.25, 0.25], [0.0, 0.0]]))


# ------------------------------------------------------------------------------- KL


def test_kl_estimators_by_hand():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)
    assert kl_estimate(logp, ref).item() == kl_estimate(logp, ref, "k3").item()


def test_k1_and_k3_are_unbiased_for_kl_under_samples_from_pi():
    pi = torch.tensor([0.5, 0.3, 0.15, 0.05])
    ref = torch.tensor([0.25, 0.25, 0.25, 0.25])
    true_kl = (pi * (pi / ref).log()).sum()
    for kind in ("k1", "k3"):
        expectation = (pi * kl_estimate(pi.log(), ref.log(), kind)).sum()
        torch.testing.assert_close(expectation, true_kl)


def test_k3_is_nonnegative_and_zero_at_equality():
    torch.manual_seed(0)
    logp, ref = torch.randn(100), torch.randn(100)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert torch.equal(kl_estimate(logp, logp, "k3"), torch.zeros(100))


def test_kl_unknown_kind_lists_kinds():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


# ------------------------------------------------------------------------------- GRPO loss


def _one_token(ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    return logp, torch.zeros(1, 1), torch.ones(1, 1)


@pytest.mark.parametrize(
    "ratio, advantage, expected_loss, clipped",
    [
        (1.5, 2.0, -1.2 * 2.0, True),  # A > 0, ratio above 1 + eps: capped, no gradient
        (0.5, 2.0, -0.5 * 2.0, False),  # A > 0, ratio below 1 - eps: the unclipped term is smaller
        (0.5, -2.0, 0.8 * 2.0, True),  # A < 0, ratio below 1 - eps: floored, no gradient
        (1.5, -2.0, 1.5 * 2.0, False),  # A < 0, ratio above 1 + eps: pessimistic term, gradient
        (1.1, 2.0, -1.1 * 2.0, False),  # inside the trust region
    ],
)
def test_clipping_on_both_sides(ratio, advantage, expected_loss, clipped):
    logp, old, mask = _one_token(ratio)
    loss, metrics = grpo_policy_loss(logp, old, torch.tensor([advantage]), mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    loss.backward()
    if clipped:
        assert logp.grad.item() == 0.0
        assert metrics["clip_fraction"] == 1.0
    else:
        # d/dlogp of -ratio * A = -ratio * A
        assert logp.grad.item() == pytest.approx(-ratio * advantage, rel=1e-6)
        assert metrics["clip_fraction"] == 0.0
    assert metrics["ratio_mean"] == pytest.approx(ratio, rel=1e-6)


def test_clip_eps_high_widens_only_the_upper_side():
    logp, old, mask = _one_token(1.25)
    sym, _ = grpo_policy_loss(logp, old, torch.tensor([1.0]), mask, clip_eps=0.2)
    wide, _ = grpo_policy_loss(
        logp, old, torch.tensor([1.0]), mask, clip_eps=0.2, clip_eps_high=0.28
    )
    assert sym.item() == pytest.approx(-1.2)
    assert wide.item() == pytest.approx(-1.25)
    logp, old, mask = _one_token(0.7)
    low, _ = grpo_policy_loss(
        logp, old, torch.tensor([-1.0]), mask, clip_eps=0.2, clip_eps_high=0.28
    )
    assert low.item() == pytest.approx(0.8)


def test_on_policy_loss_and_gradient_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    old = logp.detach().clone().requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, metrics = grpo_policy_loss(logp, old, torch.tensor([2.0, -1.0]), mask)
    # ratio = 1: per-token loss = -A; per-sequence means -2 and 1; batch mean -0.5.
    assert loss.item() == pytest.approx(-0.5)
    loss.backward()
    expected = torch.tensor([[-2 / 3 / 2] * 3, [1 / 2, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, expected)
    assert old.grad is None
    assert metrics == {"clip_fraction": 0.0, "ratio_mean": 1.0}


def test_kl_penalty_by_hand_and_its_metric():
    logp = torch.tensor([[math.log(0.5), math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    loss, metrics = grpo_policy_loss(
        logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), ref_logp=ref, beta=0.1
    )
    k3 = 0.5 + math.log(2) - 1
    assert loss.item() == pytest.approx(0.1 * k3 / 2)
    assert metrics["kl"] == pytest.approx(k3 / 2)
    loss.backward()
    assert logp.grad[0, 0].item() != 0.0 and logp.grad[0, 1].item() == 0.0


def test_kl_metric_is_reported_with_beta_zero_but_not_added():
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    loss, metrics = grpo_policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 1), ref_logp=ref)
    assert loss.item() == 0.0
    assert metrics["kl"] > 0


def test_kl_ratio_correction_keeps_the_on_policy_value_and_changes_the_gradient():
    ref = torch.tensor([[math.log(0.25)]])
    grads, losses = [], []
    for correction in (False, True):
        logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
        loss, _ = grpo_policy_loss(
            logp,
            logp.detach(),
            torch.zeros(1),
            torch.ones(1, 1),
            ref_logp=ref,
            beta=1.0,
            kl_ratio_correction=correction,
        )
        loss.backward()
        losses.append(loss.item())
        grads.append(logp.grad.item())
    assert losses[0] == pytest.approx(losses[1])
    # d/dlogp of k3 is 1 - ref/pi = 0.5; with the ratio it gains + k3 (ratio = 1 here).
    assert grads[0] == pytest.approx(0.5)
    assert grads[1] == pytest.approx(0.5 + (0.5 + math.log(2) - 1))


def test_beta_without_reference_is_an_error():
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_policy_loss(
            torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), beta=0.1
        )


def test_policy_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="advantages"):
        grpo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="old_logp"):
        grpo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="kl_kind"):
        grpo_policy_loss(
            torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), kl_kind="k9"
        )


def test_all_masked_row_gives_finite_loss_and_gradient():
    logp = torch.tensor([[-1.0, -2.0], [float("-inf"), float("-inf")]], requires_grad=True)
    old = torch.tensor([[-1.2, -1.5], [0.0, 0.0]])
    ref = torch.tensor([[-1.0, -1.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    loss, metrics = grpo_policy_loss(logp, old, torch.tensor([1.0, -1.0]), mask, ref_logp=ref, beta=0.1)
    assert torch.isfinite(loss)
    assert all(math.isfinite(v) for v in metrics.values())
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[1], torch.zeros(2))


def test_grpo_averages_per_sequence_not_over_tokens():
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    per_seq, _ = grpo_policy_loss(logp, logp, torch.tensor([1.0, -1.0]), mask)
    assert per_seq.item() == pytest.approx(0.0)  # (-1 + 1) / 2; a token mean would be (-1 + 3) / 4


def test_metrics_are_detached_python_floats():
    logp = torch.randn(2, 3, requires_grad=True)
    _, metrics = grpo_policy_loss(
        logp, torch.randn(2, 3), torch.ones(2), torch.ones(2, 3), ref_logp=torch.randn(2, 3)
    )
    assert set(metrics) == {"clip_fraction", "ratio_mean", "kl"}
    assert all(type(v) is float for v in metrics.values())


def test_per_token_advantages_are_accepted():
    logp = torch.zeros(1, 2)
    loss, _ = grpo_policy_loss(logp, logp, torch.tensor([[1.0, 3.0]]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(-2.0)
    column, _ = grpo_policy_loss(logp, logp, torch.tensor([[3.0]]), torch.ones(1, 2))
    assert column.item() == pytest.approx(-3.0)


# ------------------------------------------------------------------------------- log-probs, SFT


def test_gathered_logprobs_match_log_softmax_gather():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    ids = torch.randint(0, 11, (3, 5))
    out = gather_logprobs(logits[:, :-1], ids[:, 1:])  # each next token's log-prob
    assert out.shape == (3, 4)
    naive = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(out, naive)
    out.sum().backward()
    assert logits.grad[:, :-1].abs().sum() > 0
    assert torch.equal(logits.grad[:, -1], torch.zeros(3, 11))


def test_gathered_logprobs_uniform_by_hand_and_bf16_upcast():
    out = gather_logprobs(torch.zeros(1, 2, 4, dtype=torch.bfloat16), torch.tensor([[1, 2]]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full((1, 2), math.log(1 / 4)))


def test_token_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 300, 7)
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(token_entropy(logits), expected)
    assert token_entropy(torch.zeros(5)).item() == pytest.approx(math.log(5))
    assert token_entropy(torch.tensor([100.0, 0.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_completion_labels_right_and_left_padding():
    right = completion_labels(
        torch.tensor([[5, 6, 7, 8, 0]]), [2], attention_mask=torch.tensor([[1, 1, 1, 1, 0]])
    )
    assert right.tolist() == [[-100, -100, 7, 8, -100]]
    left = completion_labels(
        torch.tensor([[0, 5, 6, 7, 8]]), torch.tensor([2]), torch.tensor([[0, 1, 1, 1, 1]])
    )
    assert left.tolist() == [[-100, -100, -100, 7, 8]]
    plain = completion_labels(torch.tensor([[5, 6, 7], [1, 2, 3]]), [1, 3], ignore_index=-1)
    assert plain.tolist() == [[-1, 6, 7], [-1, -1, -1]]


def test_completion_labels_rejects_bad_prompt_lengths():
    ids = torch.ones(2, 4, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with pytest.raises(ValueError, match=r"prompt_lengths\[1\].*0\.\.2"):
        completion_labels(ids, [1, 3], attention_mask=mask)
    with pytest.raises(ValueError, match="one per row"):
        completion_labels(ids, [1])


def test_sft_loss_uniform_logits_by_hand():
    labels = completion_labels(torch.tensor([[1, 2, 3, 0]]), [2])
    assert sft_loss(torch.zeros(1, 4, 6), labels).item() == pytest.approx(math.log(6))


def test_sft_loss_only_completion_tokens_count():
    torch.manual_seed(0)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]])
    labels = completion_labels(ids, [3, 2], attention_mask=(ids != 0).long())
    logits = torch.randn(2, 5, 10, requires_grad=True)
    loss = sft_loss(logits, labels)
    # Predicted tokens: row 0 positions 3, 4 (from logits 2, 3); row 1 positions 2, 3.
    picked = torch.stack([logits[0, 2], logits[0, 3], logits[1, 1], logits[1, 2]])
    torch.testing.assert_close(loss, F.cross_entropy(picked, torch.tensor([4, 5, 8, 9])))
    loss.backward()
    assert torch.equal(logits.grad[0, :2], torch.zeros(2, 10))
    assert torch.equal(logits.grad[1, 3:], torch.zeros(2, 10))


def test_sft_loss_without_completion_tokens_is_zero_not_nan():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    loss = sft_loss(logits, torch.full((1, 3), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(1, 3, 5))


def test_sft_loss_in_pieces_equals_the_whole_and_keeps_no_float32_copy(monkeypatch):
    """bf16 logits of 2 x 256 positions x 4096 tokens with 112 labelled: the loss and gradient in
    pieces of 16 positions equal one float32 cross-entropy; backward keeps only the labelled rows
    in bf16 (0.9 MB here), not a float32 copy of every position (8 MB; 20 GB at 4 x 8192 x 152K)."""
    import spct.algos

    monkeypatch.setattr(spct.algos, "SFT_LOSS_CHUNK", 16)
    torch.manual_seed(0)
    logits = torch.randn(2, 256, 4096, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.full((2, 256), -100)
    labels[:, 200:] = torch.randint(0, 4096, (2, 56))
    saved: dict = {}

    def pack(t):
        saved[(t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = sft_loss(logits, labels)
    assert sum(saved.values()) <= 112 * 4096 * 2
    loss.backward()

    whole = logits.detach().clone().requires_grad_(True)
    expected = F.cross_entropy(whole[:, :-1].float().reshape(-1, 4096), labels[:, 1:].reshape(-1), ignore_index=-100)
    expected.backward()
    torch.testing.assert_close(loss, expected.to(loss.dtype), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits.grad, whole.grad)


# ------------------------------------------------------------------------------- TRL cross-check

# Rewards per rollout, G = 4 per prompt: a split group, a zero-spread group, a 1-vs-3 group.
TRL_REWARDS = [1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
TRL_BETA, TRL_EPS, TRL_EPS_HIGH = 0.04, 0.2, 0.28


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    """A real TRL GRPOTrainer around a randomly initialised one-layer Llama and a word tokenizer."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(29)]
    word_tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    word_tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    out_dir = tmp_path_factory.mktemp("trl")
    LlamaForCausalLM(config).save_pretrained(out_dir / "model")  # beta > 0 reloads it as reference

    def preset_reward(completions, **_):
        assert len(completions) == len(TRL_REWARDS)
        return list(TRL_REWARDS)

    args = GRPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=len(TRL_REWARDS),
        num_generations=4,
        max_completion_length=5,
        loss_type="grpo",
        scale_rewards="group",
        beta=TRL_BETA,
        epsilon=TRL_EPS,
        epsilon_high=TRL_EPS_HIGH,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
    )
    dataset = Dataset.from_dict({"prompt": ["w3 w4 w5", "w6 w7", "w8 w9 w10 w11"]})
    trainer = GRPOTrainer(
        model=str(out_dir / "model"),
        reward_funcs=preset_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    batch = [dataset[i // 4] for i in range(len(TRL_REWARDS))]
    return trainer, batch


@pytest.mark.parametrize("scale_rewards, scale", [("group", True), ("none", False)])
def test_advantages_match_trl(trl_trainer, scale_rewards, scale):
    trainer, batch = trl_trainer
    trainer.scale_rewards = scale_rewards
    try:
        trl_adv = trainer._generate_and_score_completions(batch)["advantages"]
    finally:
        trainer.scale_rewards = "group"
    ours = group_advantages(torch.tensor(TRL_REWARDS), group_size=4, scale=scale)
    torch.testing.assert_close(ours, trl_adv, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kl_ratio_correction", [False, True])
def test_policy_loss_and_gradient_match_trl(trl_trainer, kl_ratio_correction):
    """TRL's own _compute_loss on its own rollouts, with off-policy old log-probs so both clip
    sides are active, against ours on log-probs from gather_logprobs; values, metrics, grads."""
    trainer, batch = trl_trainer
    model = trainer.model
    inputs = trainer._generate_and_score_completions(batch)
    mask = inputs["completion_mask"]
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], mask], dim=1)
    n_completion = mask.shape[1]

    def our_logp() -> torch.Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return gather_logprobs(logits[:, :-1], input_ids[:, 1:])[:, -n_completion:]

    with torch.no_grad():
        current = our_logp()
    generator = torch.Generator().manual_seed(1)
    old = current + (torch.rand(current.shape, generator=generator) - 0.5)
    ref = current + 0.3 * torch.randn(current.shape, generator=generator)
    inputs["old_per_token_logps"] = old
    inputs["ref_per_token_logps"] = ref

    trainer.args.use_bias_correction_kl = kl_ratio_correction
    try:
        model.zero_grad()
        trl_loss = trainer._compute_loss(model, inputs)
        trl_loss.backward()
        trl_grads = [p.grad.clone() for p in model.parameters()]
    finally:
        trainer.args.use_bias_correction_kl = True
    mode = "train" if model.training else "eval"
    trl_metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}

    model.zero_grad()
    loss, metrics = grpo_policy_loss(
        our_logp(),
        old,
        inputs["advantages"],
        mask,
        ref_logp=ref,
        clip_eps=TRL_EPS,
        clip_eps_high=TRL_EPS_HIGH,
        beta=TRL_BETA,
        kl_ratio_correction=kl_ratio_correction,
    )
    loss.backward()

    torch.testing.assert_close(loss, trl_loss, atol=1e-6, rtol=0)
    for ours_grad, trl_grad in zip((p.grad for p in model.parameters()), trl_grads, strict=True):
        torch.testing.assert_close(ours_grad, trl_grad, atol=1e-6, rtol=1e-5)
    assert metrics["clip_fraction"] > 0
    assert metrics["clip_fraction"] == pytest.approx(
        trl_metrics["clip_ratio/region_mean"], abs=1e-6
    )
    assert metrics["kl"] == pytest.approx(trl_metrics["kl"], abs=1e-6)

