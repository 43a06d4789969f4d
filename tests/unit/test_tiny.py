"""The tiny-model factory: a tokenizer that makes arithmetic learnable and round-trips exactly,
and model folders that transformers reloads like any hub checkpoint."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from spct.data.synthetic import SyntheticConfig, make_items, write_trajectory
from spct.grm import build_prompt, random_order
from spct.models import (
    ARCHS,
    END,
    MANIFEST,
    PRESETS,
    TinySpec,
    build_tokenizer,
    default_corpus,
    ensure_tiny_model,
    load_causal_lm,
    load_tokenizer,
    resolve_spec,
)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return default_corpus(seed=0)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Held-out prompts (compact template) and trajectories, none of them in the corpus."""
    rng = random.Random(0)
    out = []
    for item in make_items(60, seed=9, split="test"):
        order = random_order(item.n, rng)
        out.append(build_prompt(item, order, template="compact"))
        out.append(write_trajectory(item, order, rng, (1, 4), noise=0.2))
    return out


@pytest.fixture(scope="module")
def trained(corpus) -> dict[str, object]:
    """One tokenizer per architecture, trained once for the module."""
    return {arch: build_tokenizer(corpus, 512, arch=arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def models(tmp_path_factory, corpus) -> dict[str, object]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        arch: ensure_tiny_model(root / arch, "test", seed=0, arch=arch, corpus=corpus)
        for arch in ARCHS
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_round_trips_exactly(trained, texts, arch):
    tok = trained[arch]
    assert len(tok) == 512
    extra = ["  two  spaces\n\nand\ttabs ", "naïve café 🙂 ∑", "<|user|>x<|end|>", "007+0010=17"]
    for text in texts + extra:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


@pytest.mark.parametrize("arch", ARCHS)
def test_every_digit_is_its_own_token(trained, arch):
    tok = trained[arch]
    for token_id in range(len(tok)):
        assert len(re.findall(r"\d", tok.decode([token_id]))) <= 1
    for number in ("1234567890", "100", "19"):
        pieces = tok.tokenize(number)
        assert len(pieces) == len(number), pieces


def test_demo_tokenizer_makes_every_number_of_the_task_one_token(corpus, texts):
    """digits_per_token=2: each number the synthetic task writes (0..28) is a single token, so
    copying or comparing one is a one-token operation; longer runs split into two-digit pieces."""
    tok = build_tokenizer(corpus, 512, digits_per_token=PRESETS["demo"].digits_per_token)
    for number in range(29):
        assert tok.tokenize(str(number)) == [str(number)]
    for token_id in range(len(tok)):
        assert len(re.findall(r"\d", tok.decode([token_id]))) <= 2
    assert all(len(re.sub(r"\D", "", p)) <= 2 for p in tok.tokenize("1234567"))
    for text in texts + ["007+0010=17", "R1: 3+4=7 ; 9+9=18"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_digits_per_token_is_checked():
    with pytest.raises(ValueError, match="digits_per_token"):
        TinySpec(arch="qwen2", hidden_size=64, num_layers=1, num_heads=2, intermediate_size=64,
                 digits_per_token=2)
    with pytest.raises(ValueError, match="digits_per_token"):
        resolve_spec("demo", overrides={"digits_per_token": 0})
    with pytest.raises(ValueError, match="digits_per_token"):
        build_tokenizer(["1 2"], 512, arch="qwen2", digits_per_token=2)


def test_prompts_are_compact(trained, texts):
    """A trained vocabulary should pack the project's text well beyond one token per byte."""
    tok = trained["llama"]
    n_tokens = sum(len(tok(t)["input_ids"]) for t in texts)
    assert n_tokens < 0.7 * sum(len(t) for t in texts)


def test_chat_template_wraps_turns_in_role_tokens(trained):
    tok = trained["llama"]
    messages = [{"role": "user", "content": "Solve: 1+2"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|user|>Solve: 1+2<|end|><|assistant|>"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|user|>")
    assert ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    full = tok.apply_chat_template(
        messages + [{"role": "assistant", "content": "3"}], tokenize=False
    )
    assert full == "<|user|>Solve: 1+2<|end|><|assistant|>3<|end|>"
    assert tok.eos_token == END and tok.pad_token_id != tok.eos_token_id
    with pytest.raises(Exception, match="unknown role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.parametrize("arch", ARCHS)
def test_build_and_reload_with_transformers(models, trained, texts, arch):
    path = models[arch]
    assert (path / "model.safetensors").is_file()
    tok = load_tokenizer(path)
    model = load_causal_lm(path)
    assert model.config.model_type == arch
    assert model.config.vocab_size == len(tok)
    assert model.dtype == torch.float32
    # What a loader rebuilds from the folder tokenizes exactly like the tokenizer that was trained.
    # (transformers rebuilds every qwen2 tokenizer with its own normaliser, visible on "cafe\u0301".)
    for text in texts[:20] + ["cafe\u0301", "  x\n\n\ty "]:
        assert tok(text)["input_ids"] == trained[arch](text)["input_ids"], text

    prompt = tok.apply_chat_template(
        [{"role": "user", "content": texts[0]}], add_generation_prompt=True, tokenize=False
    )
    batch = tok([prompt, prompt[:40]], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    first = model.generate(**batch, max_new_tokens=6, do_sample=False)
    again = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert (
        first.shape[0] == 2
        and batch["input_ids"].shape[1] < first.shape[1] <= batch["input_ids"].shape[1] + 6
    )
    assert torch.equal(first, again)


def test_ensure_is_idempotent_and_rebuilds_on_change(tmp_path, corpus):
    small = corpus[:400]
    path = ensure_tiny_model(tmp_path / "m", "test", seed=1, corpus=small)
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    first = load_causal_lm(path).state_dict()
    assert ensure_tiny_model(tmp_path / "m", "test", seed=1, corpus=small) == path
    assert weights.stat().st_mtime_ns == stamp

    ensure_tiny_model(tmp_path / "m", "test", seed=2, corpus=small)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["seed"] == 2 and manifest["preset"] == "test"
    second = load_causal_lm(path).state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)

    ensure_tiny_model(tmp_path / "m", "test", seed=2, overrides={"num_layers": 1}, corpus=small)
    assert load_causal_lm(path).config.num_hidden_layers == 1
    rebuilt = ensure_tiny_model(tmp_path / "again", "test", seed=1, corpus=small, rebuild=True)
    same = load_causal_lm(rebuilt).state_dict()
    assert all(torch.equal(first[k], same[k]) for k in first)


def test_presets_suit_vllm_cpu_and_the_task(trained):
    for name, spec in PRESETS.items():
        assert spec.head_dim >= 32, name
        assert spec.arch in ARCHS
    with pytest.raises(ValueError, match="head_dim"):
        TinySpec(arch="llama", hidden_size=64, num_layers=1, num_heads=4, intermediate_size=64)
    with pytest.raises(ValueError, match="unknown field"):
        resolve_spec("test", overrides={"layers": 3})
    with pytest.raises(ValueError, match="preset"):
        resolve_spec("huge")
    assert resolve_spec("demo", arch="qwen2").arch == "qwen2"

    # The longest synthetic items (4 responses) with every aspect checked fit the context.
    tok = trained["llama"]
    rng = random.Random(0)
    cfg = SyntheticConfig(single_fraction=0.0, min_responses=4)
    longest = 0
    for item in make_items(100, seed=0, split="train", config=cfg):
        order = random_order(item.n, rng)
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": build_prompt(item, order, template="compact")}],
            add_generation_prompt=True,
            tokenize=False,
        )
        completion = write_trajectory(item, order, rng, 4) + END
        longest = max(longest, len(tok(prompt + completion, add_special_tokens=False)["input_ids"]))
    assert longest < min(spec.max_position_embeddings for spec in PRESETS.values())


def test_demo_preset_is_about_0_7_million_parameters(tmp_path, corpus):
    path = ensure_tiny_model(tmp_path / "demo", "demo", corpus=corpus[:400])
    model = load_causal_lm(path)
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.6e6 < n_params < 0.85e6
    assert model.config.tie_word_embeddings and model.config.head_dim == 32


def test_missing_local_folder_is_a_clear_error(tmp_path):
    for missing in (
        tmp_path / "nope",
        str(tmp_path / "nope"),
        "./no/such/model",
        "~/no-such-model",
    ):
        with pytest.raises(FileNotFoundError, match="model folder not found"):
            load_causal_lm(missing)
        with pytest.raises(FileNotFoundError, match="model folder not found"):
            load_tokenizer(missing)
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(tmp_path, dtype="fp8")
