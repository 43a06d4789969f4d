"""Gemma-2's attention soft-capping, which transformers' default attention kernel leaves out."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config

from spct.models import attention_kwargs, load_causal_lm


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    """A random Gemma-2 whose attention logits reach past its cap (a cap of 1 on logits of
    size ~10), so a kernel that skips the cap computes something else."""
    config = Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                          attn_logit_softcapping=1.0, sliding_window=8, initializer_range=0.5)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gemma2")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def test_a_soft_capped_model_runs_a_kernel_that_applies_the_cap(gemma2):
    assert attention_kwargs(gemma2) == {"attn_implementation": "eager"}  # no CUDA here
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = load_causal_lm(gemma2).eval()(ids).logits
        eager = AutoModelForCausalLM.from_pretrained(gemma2, attn_implementation="eager").eval()(ids).logits
        sdpa = AutoModelForCausalLM.from_pretrained(gemma2, attn_implementation="sdpa").eval()(ids).logits
    assert torch.equal(ours, eager)
    assert (sdpa - eager).abs().max() > 1e-2  # the cap matters for this model


def test_a_model_without_a_cap_keeps_the_default_kernel(tiny_model_dir):
    assert attention_kwargs(tiny_model_dir) == {}


def test_the_meta_rm_scores_shorter_passes_when_its_attention_runs_eager(gemma2, tiny_model_dir, tmp_path):
    """Eager attention keeps heads x length² scores per sequence: a 27B Gemma-2 meta RM scoring
    4 trajectories of 8192 tokens at once would hold ~50 GB of them (spct.memory)."""
    import shutil

    from spct.memory import EAGER_TOKENS, META_RM_TOKENS
    from spct.meta_rm import MetaRM

    capped = tmp_path / "gemma2"
    shutil.copytree(gemma2, capped)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, capped / f.name)
    assert MetaRM(capped, dtype="float32").max_batch_tokens == EAGER_TOKENS
    assert MetaRM(tiny_model_dir, dtype="float32").max_batch_tokens == META_RM_TOKENS
