"""Tiny models built from nothing, so the whole pipeline runs where no hub can be reached.

A tiny model is an ordinary Hugging Face folder (safetensors weights, config, tokenizer with
a chat template): vLLM, transformers and DeepSpeed load it by path exactly as they load a
hub model, so the code under test is the code that trains real models.

The tokenizer is a byte-level BPE trained on the project's own text. How it cuts numbers is
part of the model's shape (`TinySpec.digits_per_token`): with one digit a token (the "test"
preset, and every qwen2 folder) a number of several digits is read digit by digit; with two
(the "demo" preset) every number of the synthetic task (0..28) is one token. Single-digit
operands make each sum one of 100 facts either way, but a whole-number token makes the
critique's other steps single-token operations: copying a claim is one lookup and checking it
against the computed value is one comparison. The demo model learns them in about half the
steps it needs when numbers arrive digit by digit. Byte level means any text round-trips
exactly (for qwen2 folders: any NFC text, see `build_tokenizer`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_SPLIT_PATTERN

PAD, END = "<|pad|>", "<|end|>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = [PAD, END] + [f"<|{r}|>" for r in ROLES]

# One line, no newlines between turns: a tiny model's context is a few hundred tokens.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role'] + ': expected system, user or assistant') }}"
    "{% endif %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

MANIFEST = "spct_tiny.json"
MANIFEST_FORMAT = 1
ARCHS = ("llama", "qwen2")


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny model. head_dim = hidden_size / num_heads must be >= 32 (vLLM's CPU
    attention supports no smaller head), and max_position_embeddings must cover prompt plus
    completion of the synthetic task in the compact template."""

    arch: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    num_kv_heads: int | None = None
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    vocab_size: int = 512
    # How many digits one token may hold: 1 reads numbers digit by digit; 2 lets the BPE merge
    # two-digit numbers the corpus holds into single tokens (llama only: qwen2 fixes it to 1).
    digits_per_token: int = 1

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"TinySpec.arch: expected one of {ARCHS}, got {self.arch!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"TinySpec: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.head_dim < 32:
            raise ValueError(
                f"TinySpec: head_dim = hidden_size / num_heads = {self.head_dim}; vLLM's CPU "
                "attention needs >= 32 (use fewer heads or a larger hidden_size)"
            )
        _check_digits(self.arch, self.digits_per_token, "TinySpec.digits_per_token")
        kv = self.kv_heads
        if kv < 1 or self.num_heads % kv:
            raise ValueError(
                f"TinySpec.num_kv_heads: expected a divisor of num_heads {self.num_heads}, got {kv}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads


def _check_digits(arch: str, digits_per_token: int, field: str) -> None:
    if not 1 <= digits_per_token <= 3:
        raise ValueError(f"{field}: expected 1, 2 or 3, got {digits_per_token}")
    if arch == "qwen2" and digits_per_token != 1:
        raise ValueError(
            f"{field}: qwen2 tokenizers isolate every digit (transformers imposes Qwen's split "
            f"pattern), so it must be 1, got {digits_per_token}"
        )


PRESETS: dict[str, TinySpec] = {
    # The smallest shape vLLM's CPU backend accepts: for tests of the plumbing, not of learning.
    "test": TinySpec(
        arch="llama", hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128
    ),
    # About 0.7M parameters: learns the synthetic task's critiques in a few minutes on 2 CPU
    # cores. An MLP of 256 instead of 512 makes a training step about 28% cheaper and reached a
    # lower warm-up loss in the same 500 steps (docs/tuning.md).
    "demo": TinySpec(
        arch="llama",
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        intermediate_size=256,
        digits_per_token=2,
    ),
    # About 1.0B parameters (20 layers of width 2048): the GPU smoke test's model
    # (benchmarks/gpu_smoke.sh), big enough for real kernel shapes, built in seconds.
    "1b": TinySpec(
        arch="llama",
        hidden_size=2048,
        num_layers=20,
        num_heads=16,
        num_kv_heads=8,
        intermediate_size=5632,
        max_position_embeddings=1024,
        digits_per_token=2,
    ),
}


def resolve_spec(
    preset: str = "test", arch: str | None = None, overrides: Mapping[str, Any] | None = None
) -> TinySpec:
    """A preset with `arch` and field overrides applied; ValueError names what is unknown.

    Switching a preset to qwen2 also sets digits_per_token to 1 (the only cut qwen2 allows)
    unless the overrides name it."""
    if preset not in PRESETS:
        raise ValueError(f"tiny-model preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    changes = dict(overrides or {})
    if arch is not None:
        changes["arch"] = arch
        if arch == "qwen2":
            changes.setdefault("digits_per_token", 1)
    known = {f.name for f in fields(TinySpec)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(
            f"tiny-model overrides: unknown field(s) {unknown}; known: {sorted(known)}"
        )
    return replace(PRESETS[preset], **changes)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def build_tokenizer(
    corpus: Iterable[str],
    vocab_size: int = 512,
    model_max_length: int = 512,
    arch: str = "llama",
    digits_per_token: int = 1,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`.

    Special tokens: <|pad|>, <|end|> (end of turn and eos), <|system|>, <|user|>, <|assistant|>.
    There is no BOS token: every prompt starts with a role token already.

    For arch "llama" the pre-tokenizer cuts runs of digits into pieces of at most
    `digits_per_token` digits (1: each digit alone), then splits words byte-level; the BPE then
    merges the multi-digit pieces the corpus holds often enough. For "qwen2" it is the one
    transformers' AutoTokenizer imposes on every qwen2 folder (NFC, the Qwen split pattern,
    which isolates digits): training with any other would make the saved tokenizer and the one
    vLLM or transformers reload tokenize differently.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {ARCHS}, got {arch!r}")
    _check_digits(arch, digits_per_token, "digits_per_token")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size: expected >= {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    if arch == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        digits = (
            pre_tokenizers.Digits(individual_digits=True)
            if digits_per_token == 1
            else pre_tokenizers.Split(Regex(rf"\d{{1,{digits_per_token}}}"), behavior="isolated")
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [digits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END,
        pad_token=PAD,
        # Byte-level BPE never needs it; naming one keeps a loader from adding its own default.
        unk_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )


_REFERENCE_BLOCK = re.compile(r"\{% if reference %\}.*?\{% endif %\}\n", re.S)


def default_corpus(seed: int = 0, n_items: int = 2000) -> list[str]:
    """The project's own text: the GRM's scoring templates, then synthetic prompts in the
    compact template with trajectories on both the 1..10 and the single-response 0/1 ranges."""
    from spct.data.synthetic import SyntheticConfig, make_items, write_trajectory
    from spct.grm import build_prompt, random_order
    from spct.grm.template import TEMPLATE_DIR

    # Without the optional reference block (`with_reference` only) and without the judge
    # baseline's template: the tiny tokenizer, and so every demo number, stays what it was.
    texts = [_REFERENCE_BLOCK.sub("", (TEMPLATE_DIR / f"{name}.j2").read_text(encoding="utf-8"))
             for name in ("compact", "default", "single")]
    rng = random.Random(f"spct-tiny-corpus:{seed}")
    config = SyntheticConfig()
    for item in make_items(n_items, seed, "train", config):
        order = random_order(item.n, rng)
        low, high = (0, 1) if item.n == 1 else (1, 10)
        texts.append(build_prompt(item, order, template="compact"))
        texts.append(
            write_trajectory(item, order, rng, (1, config.n_aspects), noise=0.1, low=low, high=high)
        )
    return texts


def _corpus_digest(corpus: Iterable[str]) -> tuple[list[str], str]:
    texts = list(corpus)
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return texts, h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Model


def model_config(spec: TinySpec, tokenizer: PreTrainedTokenizerBase) -> PreTrainedConfig:
    eos = tokenizer.convert_tokens_to_ids(END)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        # No BOS token exists; code that insists on one gets the end-of-turn token.
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    if spec.arch == "llama":
        return LlamaConfig(head_dim=spec.head_dim, **common)
    return Qwen2Config(use_sliding_window=False, **common)


def ensure_tiny_model(
    out_dir: str | os.PathLike[str],
    preset: str = "test",
    seed: int = 0,
    arch: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    corpus: Iterable[str] | None = None,
    rebuild: bool = False,
) -> Path:
    """`out_dir` if it already holds the model these arguments describe (unless `rebuild`),
    else train the tokenizer, initialise the model from `seed` and save both there.

    The folder is written beside `out_dir` and moved into place, so a reader never sees half
    a model. `corpus` defaults to `default_corpus(seed)`. Returns the folder.
    """
    spec = resolve_spec(preset, arch, overrides)
    texts, digest = _corpus_digest(default_corpus(seed) if corpus is None else corpus)
    out = Path(out_dir)
    complete = all(
        (out / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json")
    )
    if complete and not rebuild and _manifest(preset, spec, seed, digest) == read_manifest(out):
        return out
    return _build(out, preset, spec, seed, texts, digest)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The recorded preset, spec, seed and corpus digest of a tiny-model folder, or None."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _manifest(preset: str, spec: TinySpec, seed: int, digest: str) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "preset": preset,
        "spec": asdict(spec),
        "seed": seed,
        "corpus_sha256": digest,
    }


def _build(
    out: Path, preset: str, spec: TinySpec, seed: int, texts: list[str], digest: str
) -> Path:
    tokenizer = build_tokenizer(
        texts, spec.vocab_size, spec.max_position_embeddings, spec.arch, spec.digits_per_token
    )
    config = model_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        manifest = _manifest(preset, spec, seed, digest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


# ---------------------------------------------------------------------------------------------
# Loading: one path for tiny folders, local checkpoints and hub ids alike.


def _check_local(name_or_path: str | os.PathLike[str]) -> str:
    """Fail early and clearly when a name that can only be a local path does not exist."""
    name = os.fspath(name_or_path)
    looks_local = (
        isinstance(name_or_path, os.PathLike)
        or name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or os.path.exists(name)
    )
    if looks_local:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"model folder not found: {path} (expected a local folder or a hub id like 'org/name')"
            )
        return str(path)
    return name


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(_check_local(name_or_path))


def attention_kwargs(name_or_path: str | os.PathLike[str]) -> dict[str, str]:
    """`from_pretrained` arguments that make a model compute what its config defines.

    Gemma-2 soft-caps its attention logits (`attn_logit_softcapping`); transformers' eager and
    FlashAttention-2 kernels apply the cap, while its default kernel (SDPA) silently leaves it
    out, so a learner on SDPA would train a different function than the one the rollout engine
    and the checkpoint's users run.
    """
    config = AutoConfig.from_pretrained(name_or_path).get_text_config()
    if getattr(config, "attn_logit_softcapping", None) is None:
        return {}
    fast = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    return {"attn_implementation": "flash_attention_2" if fast else "eager"}


def load_causal_lm(name_or_path: str | os.PathLike[str], dtype: str = "float32") -> PreTrainedModel:
    """AutoModelForCausalLM in `dtype` ("float32", "bfloat16", "float16" or "auto")."""
    allowed = ("float32", "bfloat16", "float16", "auto")
    if dtype not in allowed:
        raise ValueError(f"dtype: expected one of {allowed}, got {dtype!r}")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    path = _check_local(name_or_path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **attention_kwargs(path))
