"""The meta reward model: a scalar classifier that judges whether one GRM trajectory is correct.

MetaRM@k keeps the trajectories this model ranks highest and votes only over those, so it sees
exactly what a vote sees: the GRM prompt (query and responses) followed by the GRM's principles,
critique and scores. Its logit is the evidence that the trajectory is correct by Eq. 10.

It is a plain class so callers choose its resources: `ray.remote(MetaRM).options(num_gpus=1)`.
It only scores; the meta_rm phase trains it through the DeepSpeed learner (task="classification")
on the ids `encode_trajectory` gives. Untrained, it starts from the GRM backbone: a causal-LM checkpoint loaded as a sequence
classifier gets a fresh scalar head, seeded so two actors built alike score alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from spct.learner.batches import pad_rows
from spct.memory import EAGER_TOKENS, META_RM_TOKENS
from spct.models import attention_kwargs
from spct.versions import check_versions

DTYPES = ("float32", "bfloat16", "float16", "auto")


def load_input_template(path: str | os.PathLike[str] | None):
    """The Jinja template a meta RM reads its input through (`meta_rm.input_template`), or None
    for the default framing. It sees `prompt` (the GRM prompt: query and responses) and
    `completion` (the GRM's principles, critique and scores); its text is the whole input."""
    if path is None:
        return None
    from spct.grm.template import compile_file

    return compile_file(path)


def trajectory_text(tokenizer, trajectory: Mapping[str, Any], template=None) -> str:
    """The classifier's input: the GRM conversation as the tokenizer's chat renders it, or the
    text of the meta RM's input `template` (from `load_input_template`)."""
    prompt, completion = trajectory["prompt"], trajectory["completion"]
    if template is not None:
        return template.render(prompt=prompt, completion=completion)
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
            tokenize=False,
        )
    return prompt + "\n" + completion


def encode_trajectory(tokenizer, trajectory: Mapping[str, Any], max_length: int, template=None) -> list[int]:
    """Token ids, truncated from the left to `max_length` so the critique's end survives.

    A chat template writes its own special tokens; plain text (an input template's included)
    gets the tokenizer's. The meta-RM learner (spct.learner, task="classification") trains on
    exactly these ids.
    """
    ids = tokenizer(
        trajectory_text(tokenizer, trajectory, template),
        add_special_tokens=template is not None or not tokenizer.chat_template,
        verbose=False,
    )["input_ids"]
    return ids[-max_length:]


class MetaRM:
    """A sequence classifier with one output (a logit) over the text of a GRM trajectory.

    Args:
        model: a local folder or hub id, either a causal LM (a fresh head is added) or a saved
            meta RM.
        dtype: "float32", "bfloat16", "float16" or "auto" (the checkpoint's own).
        max_length: tokens kept per trajectory, capped at the model's context. Longer inputs
            lose their beginning, so the critique and the scores always survive.
        seed: seeds the fresh head's initialisation.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        micro_batch_size: sequences per forward pass, at most.
        max_batch_tokens: padded tokens per forward pass, at most (a micro-batch of long
            trajectories holds fewer of them; one longer than this runs alone). A model whose
            attention runs eager (capped logits without FlashAttention-2: spct.models) takes at
            most EAGER_TOKENS, as its attention matrices grow with the square of the length.
        num_threads: CPU threads for scoring (0: Ray's default for the actor).
        input_template: a Jinja file framing each trajectory as the meta RM was trained to
            read it (`input_template`); None: the GRM conversation in the tokenizer's chat.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        dtype: str = "bfloat16",
        max_length: int = 4096,
        seed: int = 0,
        device: str = "auto",
        micro_batch_size: int = 8,
        num_threads: int = 0,
        max_batch_tokens: int = META_RM_TOKENS,
        input_template: str | os.PathLike[str] | None = None,
    ) -> None:
        check_versions(("torch", "transformers"), role="meta RM")
        if dtype not in DTYPES:
            raise ValueError(f"MetaRM dtype: expected one of {DTYPES}, got {dtype!r}")
        if max_length < 2:
            raise ValueError(f"MetaRM max_length: expected >= 2 tokens, got {max_length}")
        if micro_batch_size < 1:
            raise ValueError(f"MetaRM micro_batch_size: expected >= 1, got {micro_batch_size}")
        self.device = torch.device(_resolve_device(device))
        if num_threads and self.device.type == "cpu":
            # Ray caps an actor's OpenMP threads at its CPU reservation (one by default); where
            # the meta RM scores while the other actors wait, it may use every core.
            torch.set_num_threads(num_threads)
        self.micro_batch_size, self.max_batch_tokens = micro_batch_size, max_batch_tokens
        self.template = load_input_template(input_template)

        path = _local_or_hub(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise ValueError(
                    f"{path}: the tokenizer has neither a pad nor an eos token to pad with"
                )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch.manual_seed(seed)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        attention = attention_kwargs(path)
        if attention.get("attn_implementation") == "eager":
            self.max_batch_tokens = min(self.max_batch_tokens, EAGER_TOKENS)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch_dtype, **attention
        )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        context = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = min(max_length, context) if context else max_length

    def encode(self, trajectory: Mapping[str, Any]) -> list[int]:
        return encode_trajectory(self.tokenizer, trajectory, self.max_length, self.template)

    def where(self) -> dict[str, Any]:
        """Its node, placement group bundle and GPUs (spct.placement.here)."""
        from spct.placement import here

        return here()

    @torch.no_grad()
    def score(self, trajectories: Sequence[Mapping[str, Any]]) -> list[float]:
        """One logit per trajectory, in input order; higher means more likely correct."""
        _check(trajectories)
        self.model.eval()
        ids = [self.encode(t) for t in trajectories]
        # Similar lengths share a micro-batch, so little compute goes to padding.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        scores = [0.0] * len(ids)
        for run in micro_batches([len(ids[i]) for i in order], self.micro_batch_size, self.max_batch_tokens):
            chunk = [order[j] for j in run]
            logits = self._logits([ids[i] for i in chunk])
            for i, value in zip(chunk, logits.float().tolist(), strict=True):
                scores[i] = value
        return scores

    def _logits(self, ids: list[list[int]]) -> torch.Tensor:
        # Right padding leaves every real token at its own position whatever the model's
        # position encoding, so a trajectory scores the same alone or in any batch; the
        # model pools at the last non-pad token.
        input_ids, mask = pad_rows(ids, self.tokenizer.pad_token_id)
        return self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits[:, 0]


def meta_scorer(path: str, dtype: str, max_length: int, num_threads: int = 0, num_gpus: float = 0,
                input_template: str | None = None, **options):
    """A function scoring trajectories with a meta-RM actor (and the actor, to kill later).
    On a GPU cluster give it `num_gpus` (1: a GPU of its own), else it runs on CPU; `options`
    are further Ray actor options (e.g. a placement group bundle)."""
    import ray

    # Scoring is forward-only, so larger micro-batches than training's are fine, up to
    # max_batch_tokens (META_RM_TOKENS: 64 short trajectories, or 4 of 8192 tokens).
    actor = ray.remote(MetaRM).options(num_gpus=num_gpus, **options).remote(
        path, dtype=dtype, max_length=max_length, micro_batch_size=64, num_threads=num_threads,
        input_template=input_template)
    return (lambda trajectories: ray.get(actor.score.remote(trajectories))), actor


def _check(trajectories: Sequence[Mapping[str, Any]]) -> None:
    """Fail on the first malformed trajectory, naming its index and the field."""
    for i, t in enumerate(trajectories):
        if not isinstance(t, Mapping):
            raise TypeError(f"trajectory {i}: expected a dict, got {type(t).__name__}")
        for key in ("prompt", "completion"):
            if not isinstance(t.get(key), str):
                raise ValueError(
                    f"trajectory {i}: field {key!r}: expected a string, got {t.get(key)!r:.80}"
                )


def micro_batches(lengths: Sequence[int], size: int, max_tokens: int) -> Iterator[list[int]]:
    """Consecutive index runs of `lengths` (sorted ascending) holding at most `size` sequences
    and at most `max_tokens` padded tokens (run length x its longest), one sequence at least."""
    run: list[int] = []
    for i, n in enumerate(lengths):
        if run and (len(run) == size or (len(run) + 1) * n > max_tokens):
            yield run
            run = []
        run.append(i)
    if run:
        yield run


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device == "cuda" or device.startswith("cuda:"):
        return device
    raise ValueError(f"MetaRM device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _local_or_hub(model: str | os.PathLike[str]) -> str:
    name = os.fspath(model)
    local = (
        isinstance(model, os.PathLike) or name.startswith(("/", ".", "~")) or os.path.exists(name)
    )
    if local and not Path(name).expanduser().is_dir():
        raise FileNotFoundError(
            f"meta RM model folder not found: {name} (expected a folder or a hub id)"
        )
    return str(Path(name).expanduser()) if local else name
