"""Turning (prompt, completion) text into the token ids the learner trains on."""

from __future__ import annotations

from typing import Any

from spct.item import chat_messages


def encode_sft(tokenizer, prompt: str | list[dict[str, str]], completion: str) -> tuple[list[int], int]:
    """Chat-formatted prompt ids + completion ids + eos, and the prompt length. The prompt is
    a text (one user turn) or a conversation ending with the user's turn.

    The prompt goes through the same chat template the rollout engines apply, so the model is
    trained on exactly the token sequence it will later be sampled from.
    """
    prompt_ids = tokenizer.apply_chat_template(chat_messages(prompt), add_generation_prompt=True, tokenize=True)
    if not isinstance(prompt_ids, list):
        prompt_ids = prompt_ids["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return [*prompt_ids, *completion_ids, tokenizer.eos_token_id], len(prompt_ids)


def sft_batch(examples: list[tuple[list[int], int]]) -> dict[str, Any]:
    return {"input_ids": [ids for ids, _ in examples], "prompt_lens": [n for _, n in examples]}
