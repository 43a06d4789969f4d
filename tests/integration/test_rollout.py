"""The rollout group on real Ray actors and in-process vLLM engines, checked against transformers."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.integration

ENGINE_KWARGS = dict(
    dtype="float32", max_model_len=512, kv_cache_gib=0.0625, enforce_eager=True, seed=0
)
PROMPTS = ["Solve: 3+4 ; 7+8", "hello there", "Which response is best?"]
GREEDY = {"temperature": 0.0, "max_tokens": 16}


@pytest.fixture(scope="module")
def group(ray_cluster, tiny_model_dir):
    from spct.rollout import RolloutGroup

    g = RolloutGroup(str(tiny_model_dir), num_engines=2, engine_kwargs=ENGINE_KWARGS)
    yield g
    g.shutdown()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from spct.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from spct.models import load_causal_lm

    return load_causal_lm(tiny_model_dir, dtype="float32").eval()


def chat_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )


@torch.no_grad()
def hf_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([chat_ids(tokenizer, prompt)])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )[0, ids.shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    return out[: out.index(eos) + 1] if eos in out else out


def random_model(config, seed: int):
    """Fresh weights whose greedy output is varied and far from ties.

    At the default init scale (0.02) a tiny model with tied embeddings echoes its last prompt
    token whatever the seed, so two such models would decode alike.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    config.initializer_range = 0.3
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def greedy_tokens(group, prompts) -> list[list[int]]:
    return [r["samples"][0]["token_ids"] for r in group.generate(prompts, GREEDY)]


def test_generate_samples_carry_ids_logprobs_and_version(group, tokenizer, hf_model):
    results = group.generate(PROMPTS, {"n": 3, "temperature": 1.0, "max_tokens": 12, "seed": 7})
    versions = group.versions()
    assert len(results) == len(PROMPTS)
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert result["prompt_token_ids"] == chat_ids(tokenizer, prompt)
        assert result["version"] == versions[result["engine"]]
        assert len(result["samples"]) == 3
        for sample in result["samples"]:
            ids = sample["token_ids"]
            assert 1 <= len(ids) <= 12 and len(sample["logprobs"]) == len(ids)
            assert sample["finish_reason"] in ("stop", "length")
            if sample["finish_reason"] == "length":
                assert len(ids) == 12
            else:
                assert ids[-1] == tokenizer.eos_token_id
            assert sample["text"] == tokenizer.decode(ids, skip_special_tokens=True)

            prompt_ids = result["prompt_token_ids"]
            with torch.no_grad():
                logits = hf_model(torch.tensor([prompt_ids + ids])).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(ids) - 1)
            expected = logp[positions, torch.tensor(ids)]
            torch.testing.assert_close(
                torch.tensor(sample["logprobs"]), expected, atol=1e-4, rtol=0
            )


def test_weight_sync_makes_greedy_output_follow_the_new_weights(
    group, tokenizer, hf_model, tiny_model_dir
):
    from spct.weight_sync import RayObjectStoreSync

    before = greedy_tokens(group, PROMPTS)
    assert before == [hf_greedy(hf_model, tokenizer, p, 16) for p in PROMPTS]

    new_model = random_model(hf_model.config, seed=1234)
    sync = RayObjectStoreSync(group)
    start = group.versions()[0]
    try:
        sync.push(new_model.state_dict(), start + 1)
        assert group.versions() == [start + 1, start + 1]

        results = group.generate(PROMPTS, GREEDY)
        assert {r["engine"] for r in results} == {0, 1}
        assert all(r["version"] == start + 1 for r in results)
        after = [r["samples"][0]["token_ids"] for r in results]
        assert after != before
        assert after == [hf_greedy(new_model, tokenizer, p, 16) for p in PROMPTS]
        assert sync.verify(PROMPTS)
        with pytest.raises(ValueError, match="last pushed version"):
            sync.push(new_model.state_dict(), start + 1)
    finally:
        sync.push(hf_model.state_dict(), start + 2)
    assert greedy_tokens(group, PROMPTS) == before


def test_learner_rank_0_sends_its_own_weights_by_broadcast_and_by_the_object_store(
    group, tokenizer, hf_model, tiny_model_dir
):
    """The GPU weight path on CPU: two learner ranks at ZeRO-3 and the module's two engines. Rank
    0 leads a gloo group with both engines (the NCCL group on GPUs) and broadcasts in buckets
    while rank 1 gathers its shards with it; then the object-store transport sends the blob
    rank 0 put in the store. After each push every engine decodes greedily as transformers does
    on the learner's weights."""
    from spct.chat import encode_sft, sft_batch
    from spct.learner import LearnerGroup, LearnerSpec
    from spct.weight_sync import RayObjectStoreSync, make_weight_sync

    spec = LearnerSpec(model=str(tiny_model_dir), zero_stage=3, lr=3e-2, total_steps=10, dtype="float32")
    learner = LearnerGroup(2, spec, num_cpus_per_rank=0.5)
    before = greedy_tokens(group, PROMPTS)
    batch = sft_batch([encode_sft(tokenizer, p, "7 15 7 15 7 15") for p in PROMPTS + PROMPTS[:1]])
    start = group.versions()[0]
    broadcast, store = make_weight_sync("broadcast", group, bucket_bytes=2**16), RayObjectStoreSync(group)

    def follows_the_learner() -> list[list[int]]:
        model = copy.deepcopy(hf_model)
        model.load_state_dict(learner.state_for_sync(), strict=False)
        got = greedy_tokens(group, PROMPTS)
        assert got == [hf_greedy(model, tokenizer, p, 16) for p in PROMPTS]
        return got

    try:
        for _ in range(3):
            learner.sft_step(batch)
        broadcast.push_from(learner, start + 1)
        assert group.versions() == [start + 1] * 2
        first = follows_the_learner()
        assert first != before
        learner.sft_step(batch)
        broadcast.push_from(learner, start + 2)  # the same group again, no new rendezvous
        follows_the_learner()
        learner.sft_step(batch)
        store.push_from(learner, start + 3)
        assert group.versions() == [start + 3] * 2
        assert follows_the_learner() != first
    finally:
        learner.shutdown()
        store.push(hf_model.state_dict(), start + 4)
    assert greedy_tokens(group, PROMPTS) == before


def test_group_splits_a_batch_and_every_engine_gets_every_update(group, tokenizer, tiny_model_dir):
    prompts = [f"Solve: {i}+{i + 1}" for i in range(5)]
    results = group.generate(prompts, {"temperature": 0.0, "max_tokens": 4})
    assert [r["engine"] for r in results] == [0, 0, 0, 1, 1]
    assert [r["prompt_token_ids"] for r in results] == [chat_ids(tokenizer, p) for p in prompts]

    start = group.versions()[0]
    assert group.update_weights_from_path(str(tiny_model_dir), start + 1) == [start + 1] * 2
    results = group.generate(prompts, {"temperature": 0.0, "max_tokens": 4})
    assert all(r["version"] == start + 1 for r in results)
    assert group.generate([], GREEDY) == []


def test_text_decoded_once_equals_vllm_step_by_step_detokenizer(group):
    ours = group.generate(PROMPTS, {"temperature": 0.0, "max_tokens": 24})
    vllms = group.generate(PROMPTS, {"temperature": 0.0, "max_tokens": 24, "detokenize": True})
    for a, b in zip(ours, vllms, strict=True):
        assert [s["token_ids"] for s in a["samples"]] == [s["token_ids"] for s in b["samples"]]
        assert [s["text"] for s in a["samples"]] == [s["text"] for s in b["samples"]]


def test_submit_returns_at_once_and_a_later_update_waits_for_it(group, tiny_model_dir):
    start = group.versions()[0]
    pending = group.submit(PROMPTS * 8, {"n": 4, "temperature": 1.0, "max_tokens": 32})
    # Sent while the generation may still run: each engine applies it after that call.
    group.update_weights_from_path(str(tiny_model_dir), start + 1)
    results = pending.result()
    assert pending.result() is results  # waiting twice returns the same results
    assert len(results) == len(PROMPTS) * 8
    assert all(r["version"] == start for r in results)
    assert all(r["version"] == start + 1 for r in group.generate(PROMPTS, GREEDY))


def test_seeded_samples_do_not_depend_on_the_batch_or_the_engines_history(group, tiny_model_dir):
    """A resumed run draws what the uninterrupted one drew: with a seed, each prompt's samples
    depend on (seed, its index) only, not on what else is in the batch, which engine runs it or
    what the engines generated before."""
    from spct.rollout import RolloutGroup

    sampling = {"n": 2, "temperature": 1.0, "max_tokens": 24}

    def texts(results):
        return [[s["text"] for s in r["samples"]] for r in results]

    first = texts(group.generate(PROMPTS * 2, sampling, seed="0:rl:3"))
    group.generate(PROMPTS * 4, sampling)  # advances the engines' own generators
    assert texts(group.generate(PROMPTS * 2, sampling, seed="0:rl:3")) == first
    assert texts(group.generate(PROMPTS, sampling, seed="0:rl:3")) == first[:3]  # another cut over the engines
    one = RolloutGroup(str(tiny_model_dir), num_engines=1, engine_kwargs=ENGINE_KWARGS, name="one")
    try:
        assert texts(one.generate(PROMPTS * 2, sampling, seed="0:rl:3")) == first
    finally:
        one.shutdown()
    # Another key, or the same prompt at another index, draws other samples.
    assert texts(group.generate(PROMPTS * 2, sampling, seed="0:rl:4")) != first
    assert first[0] != first[3]


def test_a_colocated_group_is_awake_only_to_generate_or_load(ray_cluster, tiny_model_dir):
    """rollout.colocate: the engines rest (on a GPU: weights offloaded, KV cache freed) between
    generations and weight loads, so the learner has the GPU; on CPU resting is a no-op, and
    the bookkeeping is what is checked here."""
    from spct.rollout import RolloutGroup

    group = RolloutGroup(str(tiny_model_dir), 1, ENGINE_KWARGS, colocated=True, name="colocated")
    try:
        assert group._asleep  # rests from the start: the learner builds next
        pending = group.submit(PROMPTS, GREEDY)
        assert not group._asleep
        assert len(pending.result()) == len(PROMPTS) and group._asleep
        assert group.update_weights_from_path(str(tiny_model_dir), 1) == [1] and group._asleep
    finally:
        group.shutdown()


def test_bad_sampling_field_is_named(group):
    with pytest.raises(ValueError, match="temprature"):
        group.generate(["hi"], {"temprature": 0.5})


def test_bucket_plan_round_trips_mixed_dtypes():
    from spct.engine import bucket_size, plan_buckets

    tensors = [
        torch.randn(3, 3),
        torch.randn(5).to(torch.bfloat16),
        torch.randn(100),
        torch.arange(3, dtype=torch.int64),
    ]
    dtypes = [str(t.dtype).removeprefix("torch.") for t in tensors]
    shapes = [list(t.shape) for t in tensors]
    buckets = plan_buckets(dtypes, shapes, bucket_bytes=96)
    assert [[e.index for e in b] for b in buckets] == [[0, 1], [2], [3]]
    for bucket in buckets:
        buffer = torch.zeros(bucket_size(bucket), dtype=torch.uint8)
        for index, offset, nbytes in bucket:
            assert offset % 16 == 0
            buffer[offset : offset + nbytes].copy_(tensors[index].view(-1).view(torch.uint8))
        for index, offset, nbytes in bucket:
            got = buffer[offset : offset + nbytes].view(getattr(torch, dtypes[index]))
            assert torch.equal(got.view(shapes[index]), tensors[index])
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets(dtypes, shapes, bucket_bytes=0)


@pytest.mark.gpu
def test_nccl_broadcast_from_learner_rank_0_matches_transformers(ray_cluster, tiny_model_dir, tokenizer, hf_model):
    """A learner rank on one GPU broadcasts from its GPU to an engine on another GPU; greedy
    output then equals transformers' on the learner's weights."""
    from spct.learner import LearnerGroup, LearnerSpec
    from spct.rollout import RolloutGroup
    from spct.weight_sync import make_weight_sync

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs: NCCL cannot put the learner and an engine on one device")
    group = RolloutGroup(
        str(tiny_model_dir),
        num_engines=1,
        engine_kwargs=dict(dtype="float32", max_model_len=512, gpu_memory_utilization=0.2),
        num_gpus_per_engine=1,
    )
    learner = LearnerGroup(1, LearnerSpec(model=str(tiny_model_dir), zero_stage=0, lr=3e-2, total_steps=10,
                                   dtype="float32"), num_gpus_per_rank=1)
    try:
        before = greedy_tokens(group, PROMPTS)
        from spct.chat import encode_sft, sft_batch

        batch = sft_batch([encode_sft(tokenizer, p, "7 15 7 15 7 15") for p in PROMPTS])
        for _ in range(5):
            learner.sft_step(batch)
        sync = make_weight_sync("broadcast", group, bucket_bytes=2**16)
        sync.push_from(learner, 1)
        assert group.versions() == [1]
        after = greedy_tokens(group, PROMPTS)
        assert after != before
        new_model = copy.deepcopy(hf_model)
        new_model.load_state_dict(learner.state_for_sync(), strict=False)
        assert after == [hf_greedy(new_model, tokenizer, p, 16) for p in PROMPTS]
    finally:
        group.shutdown()
        learner.shutdown()
