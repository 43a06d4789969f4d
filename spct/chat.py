"""Chat formatting, one way for the engines, the reward server and SFT: a prompt's ids through
the tokenizer's chat template, and (prompt, completion) text as the ids the learner trains on.
Any tokenizer with transformers' interface; nothing here imports it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spct.item import chat_messages


def chat_prompt_ids(tokenizer, prompt: str | list[dict[str, str]]) -> list[int]:
    """The ids of a prompt (a text: one user turn; or a conversation ending with the user's
    turn) as the chat template renders it, ready for the assistant's answer."""
    ids = tokenizer.apply_chat_template(chat_messages(prompt), add_generation_prompt=True, tokenize=True)
    if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def encode_sft(tokenizer, prompt: str | list[dict[str, str]], completion: str) -> tuple[list[int], int]:
    """Chat-formatted prompt ids + completion ids + eos, and the prompt length.

    The prompt goes through the same chat template the rollout engines apply, so the model is
    trained on exactly the token sequence it will later be sampled from.
    """
    prompt_ids = chat_prompt_ids(tokenizer, prompt)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return [*prompt_ids, *completion_ids, tokenizer.eos_token_id], len(prompt_ids)


def sft_batch(examples: list[tuple[list[int], int]]) -> dict[str, Any]:
    """The learner's SFT batch (spct.learner.LearnerGroup.sft_step) of encoded examples."""
    return {"input_ids": [ids for ids, _ in examples], "prompt_lens": [n for _, n in examples]}
