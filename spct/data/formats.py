"""The record formats spct reads, each converted into items (spct.item) one record at a time.

A converter takes one raw record (a dict, with where it came from) and returns its items, or
an empty list for a record that carries no preference (a tie: the format says so), or raises
DataError naming the record and the field of the original format. Benchmarks (RewardBench,
JudgeBench, RM-Bench, RMB, ReaLMistake), the training sets reward models are trained on
(UltraFeedback, HelpSteer2/3, Skywork, HH-RLHF), verifiable sets with reference answers (MATH,
GSM8K, labelled single responses) and prompts for the policy phases. docs/data.md shows every
layout.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spct.item import DataError, Item, validate


@dataclass
class Record:
    """One raw record with its location (for errors), the fallback id used when it has none, and
    the split it was read for (a format whose file holds several splits keeps its own)."""

    data: Any
    where: str
    key: str
    source: str
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# --- field helpers: each names the field of the original format in its error -------------------


def _field(rec: Record, name: str) -> Any:
    if name not in rec.data or rec.data[name] is None:
        raise DataError(rec.where, name, "missing")
    return rec.data[name]


def _text(value: Any, name: str, where: str, what: str = "response") -> str:
    if not isinstance(value, str):
        raise DataError(where, name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(where, name, f"empty {what}")
    return value


def _messages(value: Any, name: str, where: str) -> list[dict[str, str]]:
    """A list of {role, content} turns; extra keys (e.g. RMB's 'language') are dropped. A string
    holding a JSON list (a CSV cell) is read as that list."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(where, name, "a string that is not a JSON list of {role, content} messages") from None
    if not isinstance(value, list) or not value:
        raise DataError(where, name, "expected a non-empty list of {role, content} messages")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise DataError(where, f"{name}[{i}]", "expected a {role, content} object")
        if not isinstance(turn.get("role"), str):
            raise DataError(where, f"{name}[{i}].role", "expected a string")
        if not isinstance(turn.get("content"), str):
            raise DataError(where, f"{name}[{i}].content", "expected a string")
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def _answer(value: Any, name: str, where: str) -> str:
    if not isinstance(value, dict) or "answer" not in value:
        raise DataError(where, f"{name}.answer", "missing (expected {llm_name, answer})")
    return _text(value["answer"], f"{name}.answer", where)


def _id(rec: Record, *names: str) -> str:
    for name in names or ("id",):
        value = rec.data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise DataError(rec.where, name, f"expected a string or an integer, got {type(value).__name__}")
        return str(value)
    return rec.key


def _source(rec: Record) -> str:
    own = rec.data.get("source")
    if own is not None and not isinstance(own, str):
        raise DataError(rec.where, "source", f"expected a string, got {type(own).__name__}")
    return own or rec.source


def _user(prompt: Any, where: str, name: str = "prompt") -> list[dict[str, str]]:
    return [{"role": "user", "content": _text(prompt, name, where, "prompt")}]


# --- converters: one original-format record -> items --------------------------------------------


def _from_items(rec: Record) -> list[Item]:
    item = Item.from_dict(rec.data, rec.where)
    item.id = item.id if item.id is not None else rec.key
    item.source = item.source or rec.source
    return [item]


def _split_last(value: Any, name: str, where: str) -> tuple[list[dict[str, str]], str]:
    """A message list ending in the assistant's response -> (conversation before it, response)."""
    turns = _messages(value, name, where)
    last = len(turns) - 1
    if turns[last]["role"] != "assistant":
        raise DataError(
            where,
            f"{name}[{last}].role",
            f"expected 'assistant' (the response), got {turns[last]['role']!r}",
        )
    return turns[:last], _text(turns[last]["content"], f"{name}[{last}].content", where)


def _from_pairwise(rec: Record) -> list[Item]:
    """RewardBench (strings with a prompt), UltraFeedback-binarized and Skywork (message lists,
    the prompt implicit: the turns before the last; Skywork's `source` names the subset)."""
    chosen, rejected = _field(rec, "chosen"), _field(rec, "rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        conversation = _user(_field(rec, "prompt"), rec.where)
        responses = [_text(chosen, "chosen", rec.where), _text(rejected, "rejected", rec.where)]
    else:
        before_c, best = _split_last(chosen, "chosen", rec.where)
        before_r, worst = _split_last(rejected, "rejected", rec.where)
        if before_c != before_r:
            raise DataError(
                rec.where,
                "rejected",
                "expected the same conversation as 'chosen' before the last assistant turn",
            )
        conversation = before_c or _user(_field(rec, "prompt"), rec.where)
        responses = [best, worst]
    subset = rec.data.get("subset")
    item = Item(
        conversation, responses, [1.0, 0.0], _id(rec, "id", "prompt_id"), _source(rec), subset, dict(rec.meta)
    )
    return [validate(item, rec.where)]


def _from_judgebench(rec: Record) -> list[Item]:
    label = _field(rec, "label")
    rewards = {"A>B": [1.0, 0.0], "B>A": [0.0, 1.0]}.get(label) if isinstance(label, str) else None
    if rewards is None:
        raise DataError(rec.where, "label", f'expected "A>B" or "B>A", got {label!r}')
    responses = [
        _text(_field(rec, "response_A"), "response_A", rec.where),
        _text(_field(rec, "response_B"), "response_B", rec.where),
    ]
    source = _source(rec)
    meta = {
        "original_id": rec.data.get("original_id"),
        "response_model": rec.data.get("response_model"),
    }
    item = Item(
        _user(_field(rec, "question"), rec.where, "question"),
        responses,
        rewards,
        _id(rec, "pair_id"),
        source,
        source,
        meta,
    )
    return [validate(item, rec.where)]


def _styles(rec: Record, name: str) -> list[str]:
    value = _field(rec, name)
    if not isinstance(value, list) or len(value) != 3:
        raise DataError(rec.where, name, "expected a list of 3 responses (one per style)")
    return [_text(v, f"{name}[{i}]", rec.where) for i, v in enumerate(value)]


def _from_rmbench(rec: Record) -> list[Item]:
    """All 9 (chosen style i, rejected style j) pairs, kept so that RM-Bench's accuracies can be
    scored later: i < j is its hard set, i == j normal, i > j easy."""
    conversation = _user(_field(rec, "prompt"), rec.where)
    chosen, rejected = _styles(rec, "chosen"), _styles(rec, "rejected")
    group, source, subset = _id(rec), _source(rec), rec.data.get("subset")
    # The hub copy and total_dataset.json name each record's domain (chat, code, math, safety-*).
    domain = {"domain": rec.data["domain"]} if isinstance(rec.data.get("domain"), str) else {}
    return [
        validate(
            Item(
                [dict(t) for t in conversation],
                [chosen[i], rejected[j]],
                [1.0, 0.0],
                f"{group}:{i}-{j}",
                source,
                subset,
                {"group": group, "chosen_style": i, "rejected_style": j, **domain},
            ),
            rec.where,
        )
        for i in range(3)
        for j in range(3)
    ]


def _from_rmb_pairwise(rec: Record) -> list[Item]:
    conversation = _messages(_field(rec, "conversation_input"), "conversation_input", rec.where)
    responses = [
        _answer(_field(rec, "chosen"), "chosen", rec.where),
        _answer(_field(rec, "reject"), "reject", rec.where),
    ]
    item = Item(
        conversation,
        responses,
        [1.0, 0.0],
        _id(rec, "pair_uid"),
        _source(rec),
        rec.data.get("category_path"),
    )
    return [validate(item, rec.where)]


def _from_rmb_bon(rec: Record) -> list[Item]:
    conversation = _messages(_field(rec, "conversation_input"), "conversation_input", rec.where)
    losers = _field(rec, "loser_list")
    if not isinstance(losers, list) or not losers:
        raise DataError(rec.where, "loser_list", "expected a non-empty list of {llm_name, answer}")
    responses = [_answer(_field(rec, "bon_best"), "bon_best", rec.where)]
    responses += [_answer(v, f"loser_list[{i}]", rec.where) for i, v in enumerate(losers)]
    rewards = [1.0] + [0.0] * len(losers)
    item = Item(
        conversation,
        responses,
        rewards,
        _id(rec, "bon_uid"),
        _source(rec),
        rec.data.get("category_path"),
    )
    return [validate(item, rec.where)]


class Skip(Exception):  # noqa: N818 - not an error: a record the format says to leave out
    """A record that holds no item by its format's own rule (a tie, another split's row); the
    loader counts it under `reason` instead of failing."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _number(rec: Record, name: str) -> float:
    """A finite number (a numeric string too: CSV cells are text)."""
    value = _field(rec, name)
    number = None
    if not isinstance(value, bool) and isinstance(value, int | float | str):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            pass
    if number is None or not math.isfinite(number):
        raise DataError(rec.where, name, f"expected a finite number, got {str(value)[:40]!r}")
    return number


def _from_ultrafeedback(rec: Record) -> list[Item]:
    """HuggingFaceH4/ultrafeedback_binarized: chosen / rejected message lists with their GPT-4
    scores; a pair of equal scores is a tie, left out."""
    high, low = _number(rec, "score_chosen"), _number(rec, "score_rejected")
    if high == low:
        raise Skip("a tie (score_chosen == score_rejected)")
    if high < low:
        raise DataError(rec.where, "score_chosen", f"expected above score_rejected ({low:g}), got {high:g}")
    rec.meta.update(score_chosen=high, score_rejected=low)
    return _from_pairwise(rec)


def _strength_pair(rec: Record, conversation: list[dict[str, str]], first: str, second: str,
                   strength_key: str, subset: str | None) -> list[Item]:
    """Two responses and a signed strength in -3..3: negative prefers the first, positive the
    second, 0 is a tie (left out). |strength| goes to meta.preference_strength (rft.hint_min_strength)."""
    strength = _number(rec, strength_key)
    if strength != int(strength) or not -3 <= strength <= 3:
        raise DataError(rec.where, strength_key, f"expected an integer in -3..3, got {strength:g}")
    if strength == 0:
        raise Skip(f"a tie ({strength_key} = 0)")
    responses = [_text(_field(rec, first), first, rec.where), _text(_field(rec, second), second, rec.where)]
    rewards = [1.0, 0.0] if strength < 0 else [0.0, 1.0]
    meta = {"preference_strength": int(abs(strength))}
    item = Item(conversation, responses, rewards, _id(rec), _source(rec), subset, meta)
    return [validate(item, rec.where)]


_NEMO_TURN = re.compile(r"\n<extra_id_1>(User|Assistant)\n")


def _nemo_prompt(rec: Record, name: str = "prompt") -> list[dict[str, str]]:
    """HelpSteer2's prompt: a multi-turn conversation is flattened with NeMo's separators
    ("u1\n<extra_id_1>Assistant\na1\n<extra_id_1>User\nu2"); split back into turns."""
    parts = _NEMO_TURN.split(_text(_field(rec, name), name, rec.where, "prompt"))
    turns = [{"role": "user", "content": parts[0]}]
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        turns.append({"role": role.lower(), "content": content})
    if turns[-1]["role"] != "user":
        raise DataError(rec.where, name, "expected the conversation to end with a User turn")
    return turns


_HS2_SPLITS = {"train": "train", "validation": "val", "test": "val"}


def _from_helpsteer2(rec: Record) -> list[Item]:
    """nvidia/HelpSteer2, data_dir=preference: response_1 / response_2 and preference_strength
    (negative: response_1 better). The one file holds both splits in its `split` column
    ("train" / "val"): spct's validation and test read "val"."""
    own = rec.data.get("split")
    if own is not None and rec.split in _HS2_SPLITS and own != _HS2_SPLITS[rec.split]:
        raise Skip(f"a row of split {own!r}")
    return _strength_pair(rec, _nemo_prompt(rec), "response_1", "response_2", "preference_strength", None)


def _from_helpsteer3(rec: Record) -> list[Item]:
    """nvidia/HelpSteer3, config preference: context (messages ending with the user's turn),
    response1 / response2 and overall_preference (negative: response1 better)."""
    conversation = _messages(_field(rec, "context"), "context", rec.where)
    domain = rec.data.get("domain")
    return _strength_pair(rec, conversation, "response1", "response2", "overall_preference",
                          domain if isinstance(domain, str) else None)


HS2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def _from_helpsteer2_ratings(recs: list[Record]) -> list[Item]:
    """nvidia/HelpSteer2's default data: one rated response per row, the rows of one prompt
    consecutive. One item per prompt, rewarded by helpfulness (0-4); a prompt whose best
    helpfulness is shared, or that has one response, holds no preference."""
    first = recs[0]
    conversation = _nemo_prompt(first)
    responses = [_text(_field(r, "response"), "response", r.where) for r in recs]
    rewards = [_number(r, "helpfulness") for r in recs]
    if len(recs) < 2:
        raise Skip("a prompt with one rated response")
    if rewards.count(max(rewards)) > 1:
        raise Skip("a tie in helpfulness at the top")
    attributes = [{a: r.data[a] for a in HS2_ATTRIBUTES if a in r.data} for r in recs]
    item = Item(conversation, responses, rewards, _id(first), _source(first), None, {"attributes": attributes})
    return [validate(item, first.where)]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def _hh_turns(text: Any, name: str, where: str) -> list[dict[str, str]]:
    if not isinstance(text, str):
        raise DataError(where, name, f"expected a string transcript, got {type(text).__name__}")
    parts = _HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)
    if parts[0].strip() or len(parts) < 3:
        raise DataError(where, name, 'expected a transcript of "\\n\\nHuman: ..." and "\\n\\nAssistant: ..." turns')
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c} for r, c in zip(parts[1::2], parts[2::2], strict=True)]


def _from_hh_rlhf(rec: Record) -> list[Item]:
    """Anthropic/hh-rlhf: chosen / rejected whole transcripts ("\n\nHuman: ...\n\nAssistant:
    ..."), equal up to the last assistant turn. A pair with the same or an empty final answer
    holds no preference (the set has some)."""
    chosen = _hh_turns(_field(rec, "chosen"), "chosen", rec.where)
    rejected = _hh_turns(_field(rec, "rejected"), "rejected", rec.where)
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant" or len(turns) < 2:
            raise DataError(rec.where, name, "expected the transcript to end with an Assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(rec.where, "rejected", "expected the same turns as 'chosen' before the last Assistant turn")
    best, worst = chosen[-1]["content"].strip(), rejected[-1]["content"].strip()
    if not best or not worst:
        raise Skip("an empty final answer")
    if best == worst:
        raise Skip("the same final answer in chosen and rejected")
    item = Item(chosen[:-1], [best, worst], [1.0, 0.0], _id(rec), _source(rec), rec.data.get("subset"))
    return [validate(item, rec.where)]


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}) in `text`, nested braces included."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1].strip() if depth == 0 else None


def _reference_item(rec: Record, prompt_key: str, response: str, reference: str, subset: Any = None,
                    **meta: Any) -> list[Item]:
    conversation = _user(_field(rec, prompt_key), rec.where, prompt_key)
    meta = {"reference": reference, **{k: v for k, v in meta.items() if v is not None}}
    item = Item(conversation, [response], [1.0], _id(rec, "id", "unique_id"), _source(rec),
                subset if isinstance(subset, str) else None, meta)
    return [validate(item, rec.where)]


def _from_math(rec: Record) -> list[Item]:
    """Hendrycks MATH (EleutherAI/hendrycks_math and its copies): problem and a worked solution
    whose last \\boxed{} is the reference answer. One item: the solution, labelled correct."""
    solution = _text(_field(rec, "solution"), "solution", rec.where, "solution")
    answer = rec.data.get("answer")  # MATH-500-style copies carry it; else the last \boxed{}
    reference = answer if isinstance(answer, str) and answer.strip() else last_boxed(solution)
    if not reference:
        raise DataError(rec.where, "solution", "expected a final answer in \\boxed{...}")
    return _reference_item(rec, "problem", solution, reference, rec.data.get("type") or rec.data.get("subject"),
                           level=rec.data.get("level"))


_GSM8K_ANSWER = re.compile(r"####\s*(-?[0-9.,]+)\s*$")
_CALCULATOR = re.compile(r"<<[^>]*>>")


def _from_gsm8k(rec: Record) -> list[Item]:
    """openai/gsm8k: question and an answer whose last line is "#### N". One item: the worked
    answer (calculator annotations <<...>> removed), labelled correct; N is the reference."""
    answer = _text(_field(rec, "answer"), "answer", rec.where, "answer")
    m = _GSM8K_ANSWER.search(answer)
    if m is None:
        raise DataError(rec.where, "answer", 'expected a last line "#### <number>"')
    return _reference_item(rec, "question", _CALCULATOR.sub("", answer), m[1].replace(",", ""))


def _label(rec: Record) -> float:
    value = _field(rec, "label")
    if isinstance(value, bool) or value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return float(value.strip().lower() in ("true", "1"))
    raise DataError(rec.where, "label", f"expected true/false or 1/0, got {value!r}")


def _prompt(rec: Record) -> list[dict[str, str]]:
    value = _field(rec, "prompt")
    if isinstance(value, list) or (isinstance(value, str) and value.lstrip().startswith("[{")):
        turns = _messages(value, "prompt", rec.where)
        if turns[-1]["role"] != "user":
            raise DataError(rec.where, f"prompt[{len(turns) - 1}].role",
                            f"expected 'user' (the turn to answer), got {turns[-1]['role']!r}")
        return turns
    return _user(value, rec.where)


def _reference(rec: Record) -> dict[str, Any]:
    """A reference answer: `reference`, `answer`, or veRL's reward_model.ground_truth."""
    for key in ("reference", "answer"):
        if rec.data.get(key) is not None:
            return {"reference": _text(rec.data[key], key, rec.where, "reference")}
    rm = rec.data.get("reward_model")
    if isinstance(rm, dict) and rm.get("ground_truth") is not None:
        return {"reference": str(rm["ground_truth"])}
    return {}


def _from_verifiable(rec: Record) -> list[Item]:
    """One response labelled correct or not (TRL's unpaired layout: prompt, completion, label),
    with an optional reference answer: the single-response shape, judged 0/1."""
    completion = _text(_field(rec, "completion"), "completion", rec.where)
    item = Item(_prompt(rec), [completion], [_label(rec)], _id(rec), _source(rec), rec.data.get("subset"),
                _reference(rec))
    return [validate(item, rec.where)]


def _from_prompts(rec: Record) -> list[Item]:
    """A prompt for the policy phases: text or a message list ending with the user's turn (TRL's
    prompt-only layout; veRL's parquet, whose reward_model.ground_truth becomes the reference).
    With a `completion` (TRL's prompt-completion layout) it is also policy_sft's target."""
    completion = rec.data.get("completion")
    responses = [] if completion is None else [_text(completion, "completion", rec.where)]
    source = rec.data.get("data_source")
    item = Item(_prompt(rec), responses, [1.0] * len(responses), _id(rec), source if isinstance(source, str)
                else _source(rec), rec.data.get("subset"), _reference(rec))
    return [validate(item, rec.where)]


def _from_skywork(rec: Record) -> list[Item]:
    """Skywork/Skywork-Reward-Preference-80K: chosen / rejected message lists (multi-turn ones
    too) and the `source` set each pair came from, kept as the subset."""
    items = _from_pairwise(rec)
    src = rec.data.get("source")
    items[0].subset = src if isinstance(src, str) else items[0].subset
    return items


# --- PPE and RewardBench 2 ------------------------------------------------------------------------

# lmarena-ai/PPE-Human-Preference-V1's `winner`: which model's response people preferred; any
# other value (Chatbot Arena's "tie", "tie (bothbad)") is a tie, left out as PPE's accuracy does.
_PPE_WINNERS = {"model_a": [1.0, 0.0], "model_b": [0.0, 1.0]}
# The prompt flags PPE reports accuracy on (besides the pooled headline).
PPE_FLAGS = ("hard_prompt", "easy_prompt", "if_prompt", "math_prompt", "is_code")


def _from_ppe_preference(rec: Record) -> list[Item]:
    """lmarena-ai/PPE-Human-Preference-V1 (split test): prompt (text, or a message list),
    response_1 (model_a's) and response_2 (model_b's), winner; the prompt flags and the language
    go to meta for the per-category accuracies."""
    winner = _field(rec, "winner")
    if not isinstance(winner, str):
        raise DataError(rec.where, "winner", f'expected "model_a", "model_b" or a tie, got {winner!r}')
    if winner not in _PPE_WINNERS:
        if "tie" not in winner:
            raise DataError(rec.where, "winner", f'expected "model_a", "model_b" or a tie, got {winner!r}')
        raise Skip(f"a tie (winner = {winner})")
    responses = [_text(_field(rec, "response_1"), "response_1", rec.where),
                 _text(_field(rec, "response_2"), "response_2", rec.where)]
    meta = {k: bool(rec.data[k]) for k in PPE_FLAGS if rec.data.get(k) is not None}
    if isinstance(rec.data.get("language"), str):
        meta["language"] = rec.data["language"]
    item = Item(_prompt(rec), responses, list(_PPE_WINNERS[winner]), _id(rec, "question_id"), _source(rec),
                None, meta)
    return [validate(item, rec.where)]


# Which of PPE's five correctness sets a record is from, by the columns only that set has.
_PPE_SET_KEYS = {
    "mmlu_pro": ("answer_index", "options"),
    "math": ("problem", "level"),
    "gpqa": ("Question", "correct_choice_index"),
    "ifeval": ("instruction_id_list", "ifeval_prompt"),
    "mbpp_plus": ("task_id", "test_list"),
}


def ppe_set(data: dict[str, Any]) -> str | None:
    """Which PPE correctness set a record is from (mmlu_pro, math, gpqa, ifeval, mbpp_plus), or None."""
    return next((name for name, keys in _PPE_SET_KEYS.items() if all(k in data for k in keys)), None)


def _ppe_reference(data: dict[str, Any]) -> str | None:
    """The set's ground truth as a reference answer (the paper's Table 9): MMLU-Pro's letter and
    option, GPQA's correct choice, MATH's boxed answer, MBPP-Plus's reference code; IFEval has none."""
    kind = ppe_set(data)
    if kind == "mmlu_pro" and isinstance(data.get("answer"), str):
        options, index = data.get("options"), data.get("answer_index")
        option = options[index] if isinstance(options, list) and isinstance(index, int) and \
            0 <= index < len(options) else None
        return f"{data['answer']}" + (f". {option}" if isinstance(option, str) else "")
    if kind == "gpqa" and isinstance(data.get("correct_choice"), str):
        return data["correct_choice"]
    if kind == "math" and isinstance(data.get("solution"), str):
        return last_boxed(data["solution"])
    if kind == "mbpp_plus" and isinstance(data.get("code"), str):
        return data["code"]
    return None


def _from_ppe_correctness(rec: Record) -> list[Item]:
    """One of the lmarena-ai/PPE-*-Best-of-K sets (split train): a prompt, response_1 ...
    response_K sampled from one model, `scores` (each response's correctness) and
    `sampled_conflict_pairs`, 0-based index pairs into `scores` whose correctness differs. Each
    pair is an item (the correct response labelled best, the pair's own order kept), its set (by
    the set's own columns, else `subset`) as the subset, as PPE's pairwise accuracy counts them;
    the set's ground truth, where it has one, is meta.reference (`_ppe_reference`)."""
    scores = _field(rec, "scores")
    if not isinstance(scores, list) or not scores or not all(isinstance(s, bool) for s in scores):
        raise DataError(rec.where, "scores", "expected a non-empty list of booleans (each response's correctness)")
    pairs = _field(rec, "sampled_conflict_pairs")
    if not isinstance(pairs, list):
        raise DataError(rec.where, "sampled_conflict_pairs", "expected a list of [i, j] index pairs")
    if not pairs:
        raise Skip("no sampled conflict pairs (every response equally correct)")
    conversation = _prompt(rec)
    reference = _ppe_reference(rec.data)
    qid, model = _id(rec, "question_id"), rec.data.get("model_name")
    group = f"{qid}:{model}" if isinstance(model, str) else qid
    subset = ppe_set(rec.data) or rec.data.get("subset")
    items = []
    for n, pair in enumerate(pairs):
        name = f"sampled_conflict_pairs[{n}]"
        if (not isinstance(pair, list | tuple) or len(pair) != 2
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair)):
            raise DataError(rec.where, name, f"expected [i, j], two indices into scores, got {pair!r}")
        i, j = pair
        if not (0 <= i < len(scores) and 0 <= j < len(scores)):
            raise DataError(rec.where, name, f"expected indices in 0..{len(scores) - 1}, got {list(pair)}")
        if scores[i] == scores[j]:
            raise DataError(rec.where, name, f"expected a conflict pair (scores differ), got scores[{i}] == "
                            f"scores[{j}] == {scores[i]}")
        responses = [_text(_field(rec, f"response_{k + 1}"), f"response_{k + 1}", rec.where) for k in (i, j)]
        item = Item([dict(t) for t in conversation], responses, [float(scores[i]), float(scores[j])],
                    f"{group}:{n}", _source(rec), subset,
                    {"group": group, "pair": [i, j], **({"reference": reference} if reference else {})})
        items.append(validate(item, rec.where))
    return items


def _from_rewardbench2(rec: Record) -> list[Item]:
    """allenai/reward-bench-2 (split test): a prompt, `chosen` (one correct completion; in the
    Ties subset, `num_correct` of them) and `rejected` (the incorrect ones), judged together
    in one GRM prompt; `subset` is one of its six (Factuality, Precise IF, Math, Safety, Focus,
    Ties). Ties ids are "ref:N" / "tied:N", kept as given for its own rule."""
    chosen, rejected = _field(rec, "chosen"), _field(rec, "rejected")
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, list) or not value:
            raise DataError(rec.where, name, "expected a non-empty list of completions")
    subset = _text(_field(rec, "subset"), "subset", rec.where, "subset")
    if subset != "Ties" and len(chosen) != 1:
        raise DataError(rec.where, "chosen", f"expected one completion outside the Ties subset, got {len(chosen)}")
    responses = [_text(v, f"chosen[{i}]", rec.where) for i, v in enumerate(chosen)]
    responses += [_text(v, f"rejected[{i}]", rec.where) for i, v in enumerate(rejected)]
    meta: dict[str, Any] = {"several_best": True} if len(chosen) > 1 else {}
    if subset == "Ties":  # "ref:N" and "tied:N" are scored together: one unit when resampled
        meta["group"] = _id(rec).partition(":")[2]
    item = Item(_user(_field(rec, "prompt"), rec.where), responses, [1.0] * len(chosen) + [0.0] * len(rejected),
                _id(rec), _source(rec), subset, meta)
    return [validate(item, rec.where)]


# --- ReaLMistake ----------------------------------------------------------------------------------

# ReaLMistake's `error_label`, the experts' verdict on the response, as the item's reward: 1 for a
# response with no error (score_realmistake's positive class), 0 for one with an error.
_REALMISTAKE_LABELS = {"no_error": 1.0, "error": 0.0}
_REALMISTAKE_META = ("llm_response_model", "task_source", "difficulty")


def _from_realmistake(rec: Record) -> list[Item]:
    """ReaLMistake (psunlpgroup/ReaLMistake's data/<task>/<model>.jsonl; ryokamoi/realmistake, one
    config per task, splits gpt4 and llama2): `input` (the task's prompt to GPT-4 or Llama 2 70B),
    `llm_response`, `error_label` ("error" or "no_error"), `error_categories`, `human_explanation`
    and `metadata` {id, task_name, task_source, llm_response_model, difficulty, ...}. One item:
    the response, rewarded 1 when it has no error; metadata.id is the id, metadata.task_name the
    subset, the error categories and the responding model go to meta."""
    label = _field(rec, "error_label")
    if not isinstance(label, str) or label not in _REALMISTAKE_LABELS:
        raise DataError(rec.where, "error_label", f'expected "error" or "no_error", got {label!r}')
    metadata = rec.data.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise DataError(rec.where, "metadata", f"expected an object, got {type(metadata).__name__}")
    own = metadata.get("id")
    if own is not None and (isinstance(own, bool) or not isinstance(own, str | int)):
        raise DataError(rec.where, "metadata.id", f"expected a string or an integer, got {type(own).__name__}")
    meta: dict[str, Any] = {}
    for key in ("task_name", *_REALMISTAKE_META):
        value = metadata.get(key)
        if value is not None and not isinstance(value, str):
            raise DataError(rec.where, f"metadata.{key}", f"expected a string, got {type(value).__name__}")
        if value and key != "task_name":
            meta[key] = value
    categories = rec.data.get("error_categories")
    if categories is not None:
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise DataError(rec.where, "error_categories", "expected a list of strings (the error's categories)")
        meta["error_categories"] = list(categories)
    item = Item(_user(_field(rec, "input"), rec.where, "input"),
                [_text(_field(rec, "llm_response"), "llm_response", rec.where)], [_REALMISTAKE_LABELS[label]],
                str(own) if own is not None else _id(rec), _source(rec), metadata.get("task_name") or None, meta)
    return [validate(item, rec.where)]


CONVERTERS: dict[str, Callable[[Record], list[Item]]] = {
    "items": _from_items,
    "pairwise": _from_pairwise,
    "judgebench": _from_judgebench,
    "rmbench": _from_rmbench,
    "rmb_pairwise": _from_rmb_pairwise,
    "rmb_bon": _from_rmb_bon,
    "ultrafeedback": _from_ultrafeedback,
    "helpsteer2": _from_helpsteer2,
    "helpsteer3": _from_helpsteer3,
    "skywork": _from_skywork,
    "hh_rlhf": _from_hh_rlhf,
    "math": _from_math,
    "gsm8k": _from_gsm8k,
    "verifiable": _from_verifiable,
    "prompts": _from_prompts,
    "ppe_preference": _from_ppe_preference,
    "ppe_correctness": _from_ppe_correctness,
    "rewardbench2": _from_rewardbench2,
    "realmistake": _from_realmistake,
}

# Formats whose item spans consecutive records with the same value of a key.
GROUPED: dict[str, tuple[Callable[[list[Record]], list[Item]], str]] = {
    "helpsteer2_ratings": (_from_helpsteer2_ratings, "prompt"),
}
FORMATS: tuple[str, ...] = (*CONVERTERS, *GROUPED)

# The hub split each named format's set calls spct's train / validation / test split, where its
# names differ (a split not listed keeps spct's name).
HUB_SPLITS: dict[str, dict[str, str]] = {
    "ultrafeedback": {"train": "train_prefs", "validation": "test_prefs", "test": "test_prefs"},
    "helpsteer2": {"validation": "train", "test": "train"},  # one file; rows carry their split
    "helpsteer2_ratings": {"test": "validation"},
    "helpsteer3": {"test": "validation"},
    "ppe_preference": {"train": "test", "validation": "test"},  # one split each
    "ppe_correctness": {"validation": "train", "test": "train"},
    "rewardbench2": {"train": "test", "validation": "test"},
}

# Checked in order; the first whose keys are all present wins (rmbench before pairwise: same
# keys; hh_rlhf is pairwise strings without a prompt; prompts last: any record has a prompt;
# realmistake's keys are its own, no other layout has `input` and `llm_response`).
_SIGNATURES: dict[str, tuple[str, ...]] = {
    "items": ("conversation", "responses", "rewards"),
    "ppe_preference": ("question_id", "prompt", "response_1", "response_2", "winner"),
    "ppe_correctness": ("prompt", "response_1", "scores", "sampled_conflict_pairs"),
    "rewardbench2": ("prompt", "chosen", "rejected", "num_correct", "subset"),
    "judgebench": ("pair_id", "question", "response_A", "response_B", "label"),
    "realmistake": ("input", "llm_response", "error_label"),
    "rmb_pairwise": ("pair_uid", "conversation_input", "chosen", "reject"),
    "rmb_bon": ("bon_uid", "conversation_input", "bon_best", "loser_list"),
    "ultrafeedback": ("chosen", "rejected", "score_chosen", "score_rejected"),
    "helpsteer2": ("prompt", "response_1", "response_2", "preference_strength"),
    "helpsteer3": ("context", "response1", "response2", "overall_preference"),
    "helpsteer2_ratings": ("prompt", "response", "helpfulness"),
    "rmbench": ("prompt", "chosen", "rejected"),
    "pairwise": ("chosen", "rejected"),
    "verifiable": ("prompt", "completion", "label"),
    "math": ("problem", "solution"),
    "gsm8k": ("question", "answer"),
    "prompts": ("prompt",),
}


def detect_format(record: Any, where: str = "<record>") -> str:
    """Name the format of a record from its keys (RM-Bench vs pairwise: lists of 3 strings;
    HH-RLHF: pairwise transcripts with no prompt)."""
    if not isinstance(record, dict):
        raise DataError(where, None, f"expected a JSON object, got {type(record).__name__}")
    for name, keys in _SIGNATURES.items():
        if not all(k in record for k in keys):
            continue
        if name == "rmbench" and not _is_string_list(record["chosen"]):
            continue
        if name == "pairwise" and isinstance(record["chosen"], str) and "prompt" not in record:
            return "hh_rlhf"
        return name
    known = "; ".join(f"{name} ({', '.join(keys)})" for name, keys in _SIGNATURES.items()).replace(
        "pairwise (chosen, rejected)", "pairwise (chosen, rejected); hh_rlhf (chosen, rejected: transcripts)")
    raise DataError(
        where,
        None,
        f"cannot detect the format from the keys {sorted(record)}; known formats: {known}. Pass format=..., "
        "or map your keys with columns={spct_key: your_key}",
    )


def _is_string_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
