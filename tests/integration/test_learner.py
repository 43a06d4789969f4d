"""The DeepSpeed learner on real Ray actors (gloo on CPU), checked against plain transformers.

Three learners share the module: one rank with ZeRO-0, and two ranks with ZeRO-2 and ZeRO-3.
`first_steps` drives all three through the same steps from the same initial weights before any
other test changes them: a GRPO step on 7 rollouts (shares of 4 and 3 over two ranks, so one rank
runs a micro-batch fewer), an SFT step on 8 sequences, and an SFT step on one sequence (one of
two ranks holds nothing).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytestmark = pytest.mark.integration

LEARNER_KWARGS = dict(
    lr=1e-3,
    weight_decay=0.01,
    warmup_steps=2,
    total_steps=50,
    lr_schedule="cosine",
    grad_clip=1.0,
    dtype="float32",
    with_reference=True,
    micro_batch_size=3,
    seed=0,
)
SETUPS = {"one_rank_zero0": (1, 0), "two_ranks_zero2": (2, 2), "two_ranks_zero3": (2, 3)}


def random_batch(seed: int, n: int, vocab: int) -> dict[str, list]:
    """Sequences of uneven lengths and prompt lengths, so padding and token weighting matter."""
    rng = random.Random(seed)
    ids = [[rng.randrange(vocab) for _ in range(rng.randrange(6, 20))] for _ in range(n)]
    return {"input_ids": ids, "prompt_lens": [rng.randrange(2, 6) for _ in ids]}


def as_rollouts(batch: dict[str, list], old_logprobs: list[list[float]], advantages: list[float]) -> dict[str, list]:
    """The sequences of an SFT batch as a GRPO batch, each its own group."""
    pairs = list(zip(batch["input_ids"], batch["prompt_lens"], strict=True))
    return {"prompt_ids": [ids[:p] for ids, p in pairs], "group": list(range(len(pairs))),
            "completion_ids": [ids[p:] for ids, p in pairs], "old_logprobs": old_logprobs, "advantages": advantages}


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from spct.models import load_causal_lm

    return load_causal_lm(tiny_model_dir, dtype="float32").eval()


def model_with(hf_model, state: dict[str, torch.Tensor]):
    import copy

    model = copy.deepcopy(hf_model)
    model.load_state_dict(state, strict=True)
    return model.eval()


@torch.no_grad()
def completion_logprobs(model, batch: dict[str, list]) -> list[list[float]]:
    """Log-prob of each completion token, one unpadded sequence at a time."""
    out = []
    for ids, p in zip(batch["input_ids"], batch["prompt_lens"], strict=True):
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(ids[1:])[:, None])
        out.append(logp[p - 1 :, 0].tolist())
    return out


@pytest.fixture(scope="module")
def vocab(tiny_model_dir) -> int:
    from spct.models import load_tokenizer

    return len(load_tokenizer(tiny_model_dir))


@pytest.fixture(scope="module")
def learners(ray_cluster, tiny_model_dir):
    from spct.learner import LearnerGroup, LearnerSpec

    def start(setup):
        ranks, stage = setup
        spec = LearnerSpec(**LEARNER_KWARGS, model=str(tiny_model_dir), zero_stage=stage)
        return LearnerGroup(ranks, spec, num_cpus_per_rank=0.5)

    with ThreadPoolExecutor(len(SETUPS)) as pool:
        groups = dict(zip(SETUPS, pool.map(start, SETUPS.values()), strict=True))
    yield groups
    for g in groups.values():
        g.shutdown()


@pytest.fixture(scope="module")
def first_steps(learners, hf_model, vocab):
    """Initial weights, then a GRPO step (on-policy, beta > 0) and two SFT steps on every learner."""
    sequences = random_batch(seed=1, n=7, vocab=vocab)
    grpo_batch = as_rollouts(sequences, completion_logprobs(hf_model, sequences),
                             [1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.25])
    sft_batch, lone = random_batch(seed=2, n=8, vocab=vocab), random_batch(seed=7, n=1, vocab=vocab)
    out = {}
    for name, group in learners.items():
        initial = group.state_for_sync()
        grpo = group.grpo_step(grpo_batch, clip_eps=0.2, beta=0.1, kl_kind="k3")
        sft = group.sft_step(sft_batch)
        out[name] = {"initial": initial, "grpo": grpo, "sft": sft, "lone": group.sft_step(lone),
                     "state": group.state_for_sync()}
    return out


def test_first_grpo_step_is_on_policy_and_at_the_reference(first_steps, hf_model):
    m = first_steps["one_rank_zero0"]["grpo"]
    # The rollout log-probs came from transformers with the same weights: no gap, ratio 1.
    assert m["logprob_gap"] < 1e-5 and m["logprob_gap_max"] < 1e-4
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert m["clip_fraction"] == 0.0
    # Policy == reference before the first update.
    assert abs(m["kl"]) < 1e-7
    assert m["sequences"] == 7 and m["tokens"] > 7
    assert m["grad_norm"] > 0 and m["lr"] == pytest.approx(LEARNER_KWARGS["lr"] / 2)
    for key, value in hf_model.state_dict().items():
        torch.testing.assert_close(first_steps["one_rank_zero0"]["initial"][key], value)


def test_zero3_ranks_load_their_models_partitioned(learners):
    """No ZeRO-3 rank holds a full copy of the model on its way to partitioning it (host RAM
    for a 27B model at 8 ranks a node: about 430 GB otherwise)."""
    assert [i["loaded_partitioned"] for i in learners["two_ranks_zero3"].info] == [True, True]
    assert [i["loaded_partitioned"] for i in learners["two_ranks_zero2"].info] == [False, False]


@pytest.mark.parametrize("name", ["two_ranks_zero2", "two_ranks_zero3"])
def test_two_ranks_match_one_rank(first_steps, name):
    one, two = first_steps["one_rank_zero0"], first_steps[name]
    for step in ("grpo", "sft", "lone"):
        for key in ("loss", "grad_norm", "lr", "tokens", "forward_tokens", "sequences"):
            # float32 sums in another order: a grad norm of 6 may move in its 6th digit
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-5, abs=1e-5), (step, key)
    for key in ("kl", "entropy", "logprob_gap", "clip_fraction"):
        assert two["grpo"][key] == pytest.approx(one["grpo"][key], abs=1e-5), key
    assert one["state"].keys() == two["state"].keys()
    moved = max((one["state"][k] - one["initial"][k]).abs().max().item() for k in one["state"])
    assert moved > 1e-4, "the steps did not change the weights; the comparison would be vacuous"
    for key in one["state"]:
        torch.testing.assert_close(two["state"][key], one["state"][key], atol=1e-5, rtol=0)


def completion_mean_nll(model, batch) -> float:
    nll = [-x for row in completion_logprobs(model, batch) for x in row]
    return sum(nll) / len(nll)


def test_sft_loss_counts_completion_tokens_only(learners, first_steps, hf_model, vocab):
    group = learners["one_rank_zero0"]
    batch = random_batch(seed=3, n=5, vocab=vocab)
    model = model_with(hf_model, group.state_for_sync())
    expected = completion_mean_nll(model, batch)
    whole_sequence = completion_mean_nll(model, dict(batch, prompt_lens=[1] * 5))
    assert abs(expected - whole_sequence) > 1e-3  # the prompt boundary changes the number
    result = group.sft_step(batch)
    assert result["loss"] == pytest.approx(expected, abs=1e-5)
    # MFU counts every token the forward pass ran, prompts included; the loss only completions.
    assert result["forward_tokens"] == sum(map(len, batch["input_ids"])) > result["tokens"]

    # Moving the boundary moves the loss with it.
    shifted = dict(batch, prompt_lens=[p + 2 for p in batch["prompt_lens"]])
    model = model_with(hf_model, group.state_for_sync())
    assert group.sft_step(shifted)["loss"] == pytest.approx(
        completion_mean_nll(model, shifted), abs=1e-5
    )


def test_sft_lowers_the_loss_on_a_repeated_batch(learners, first_steps, vocab):
    group = learners["one_rank_zero0"]
    batch = random_batch(seed=4, n=6, vocab=vocab)
    losses = [group.sft_step(batch)["loss"] for _ in range(6)]
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("name", ["one_rank_zero0", "two_ranks_zero3"])
def test_save_writes_a_folder_transformers_loads(learners, first_steps, hf_model, tmp_path, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    group = learners[name]
    state = group.state_for_sync()
    group.save(tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").pad_token_id is not None
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
        want = model_with(hf_model, state)(input_ids=ids).logits
        before = hf_model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert (got - before).abs().max() > 1e-4  # trained weights were saved, not the initial ones


def test_resume_restores_weights_optimizer_and_schedule(learners, first_steps, tmp_path, vocab):
    group = learners["two_ranks_zero3"]
    batch = random_batch(seed=5, n=4, vocab=vocab)
    group.save_state(tmp_path / "ckpt")
    first = group.sft_step(batch)
    after_first = group.state_for_sync()
    group.load_state(tmp_path / "ckpt")
    again = group.sft_step(batch)
    assert again["loss"] == pytest.approx(first["loss"], abs=1e-6)
    assert again["lr"] == pytest.approx(first["lr"], rel=1e-9)
    # Equal only if Adam's moments came back too: fresh moments would move weights differently.
    for key, value in group.state_for_sync().items():
        torch.testing.assert_close(value, after_first[key], atol=1e-6, rtol=0)


def test_a_bad_batch_is_refused_naming_the_field(learners, first_steps, vocab):
    group = learners["two_ranks_zero2"]
    bad = random_batch(seed=6, n=4, vocab=vocab)
    bad["prompt_lens"][2] = len(bad["input_ids"][2])
    with pytest.raises(ValueError, match=r"prompt_lens\[2\]"):
        group.sft_step(bad)
    assert group.sft_step(random_batch(seed=6, n=5, vocab=vocab))["sequences"] == 5
