"""Small copies of the datasets reward models are trained on, written in each set's real layout.

Each writer lays out a folder the way the set's hub repository does (file names, data_dir,
split names, the card's `configs` where it has one) with records of its real schema (keys,
nesting and types from the dataset card and the loaders that read it), so the same
`load_dataset(folder, ...)` call reads it as it would read the hub copy. Texts are short and
made up; what a format must cope with (multi-turn rows, ties, NeMo turn separators, nested
\\boxed{}, calculator annotations) is in them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def _jsonl_gz(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def _parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def msgs(*turns: str) -> list[dict]:
    """Alternating user / assistant turns, keys in the Arrow schema's order (content, role)."""
    return [{"content": t, "role": "user" if i % 2 == 0 else "assistant"} for i, t in enumerate(turns)]


# ------------------------------------------------------------------- HuggingFaceH4/ultrafeedback_binarized
def ultrafeedback_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        prompt = f"What is {i} plus {i + 1}?"
        good, bad = f"{i} plus {i + 1} is {2 * i + 1}.", f"{i} plus {i + 1} is {2 * i + 3}."
        rows.append({"prompt": prompt, "prompt_id": f"{i:064x}", "chosen": msgs(prompt, good),
                     "rejected": msgs(prompt, bad), "messages": msgs(prompt, good),
                     "score_chosen": 8.0, "score_rejected": 8.0 if i % 7 == 3 else 4.5})  # every 7th a tie
    return rows


def ultrafeedback(root: Path, n_train: int = 24, n_test: int = 8) -> Path:
    """Parquet shards data/<split>-00000-of-00001.parquet, splits train_prefs / test_prefs (and
    the sft / gen splits of the same schema)."""
    for split, rows in (("train_prefs", ultrafeedback_rows(n_train)), ("test_prefs", ultrafeedback_rows(n_test, 1000)),
                        ("train_sft", ultrafeedback_rows(2)), ("test_gen", ultrafeedback_rows(2))):
        _parquet(root / "data" / f"{split}-00000-of-00001.parquet", rows)
    return root


# ------------------------------------------------------------------- nvidia/HelpSteer2
def helpsteer2(root: Path, n: int = 12) -> Path:
    """train.jsonl.gz / validation.jsonl.gz (one rated response per row, a prompt's two rows
    consecutive) and preference/preference.jsonl.gz (both splits, told apart by `split`)."""
    def prompt(i: int) -> str:
        if i % 4 == 1:  # multi-turn prompts are flattened with NeMo's separators
            return f"Name a fruit.\n<extra_id_1>Assistant\nA pear.\n<extra_id_1>User\nAnd number {i}?"
        return f"Describe the number {i}."

    ratings, preference = [], []
    for i in range(n):
        a, b = f"{i} is a number after {i - 1}.", f"It is {i}."
        help_a, help_b = (3, 3) if i % 5 == 2 else (4, 1)  # every 5th prompt a tie
        for text, h in ((a, help_a), (b, help_b)):
            ratings.append({"prompt": prompt(i), "response": text, "helpfulness": h, "correctness": h,
                            "coherence": 4, "complexity": 1, "verbosity": 1})
        strength = [-3, -2, -1, 0, 1, 2, 3][i % 7]
        preference.append({
            "split": "val" if i % 4 == 3 else "train", "prompt": prompt(i), "response_1": a, "response_2": b,
            "preference_strength": strength,
            "preference_statement": "@Response 1 is better than @Response 2.",
            "preference_elaboration": "It says more.",
            "three_most_similar_preferences": [
                {"statement": "@Response 1 is better.", "elaboration": "More.", "strength": strength}] * 3,
            "all_preferences_unprocessed": [{"strength": strength, "justification": "@Response 1 is better."}] * 3,
        })
    cut = len(ratings) * 3 // 4 // 2 * 2
    _jsonl_gz(root / "train.jsonl.gz", ratings[:cut])
    _jsonl_gz(root / "validation.jsonl.gz", ratings[cut:])
    _jsonl_gz(root / "preference" / "preference.jsonl.gz", preference)
    _jsonl_gz(root / "disagreements" / "disagreements.jsonl.gz",
              [{"prompt": "x", "response": "y", "helpfulness": [3, 3, 4], "correctness": [3, 4, 4],
                "coherence": [4, 4, 4], "complexity": [1, 1, 2], "verbosity": [1, 2, 1]}])
    return root


# ------------------------------------------------------------------- nvidia/HelpSteer3
HELPSTEER3_CARD = """---
configs:
- config_name: preference
  default: true
  data_files:
  - split: train
    path: preference/train.jsonl.gz
  - split: validation
    path: preference/validation.jsonl.gz
- config_name: feedback
  data_files:
  - split: train
    path: feedback/train.jsonl.gz
  - split: validation
    path: feedback/validation.jsonl.gz
---
# HelpSteer3 (a small copy in its layout)
"""


def helpsteer3_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        context = ([{"role": "user", "content": f"Write {i} in words."}] if i % 3 else
                   [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": f"Write {i} in words."}])
        pref = [-3, -2, -1, 0, 1, 2, 3][i % 7]
        rows.append({"domain": ["general", "stem", "code", "multilingual"][i % 4],
                     "language": "english" if i % 4 < 2 else "python" if i % 4 == 2 else "chinese",
                     "context": context, "response1": f"The number {i}, written out.", "response2": f"{i}!",
                     "overall_preference": pref,
                     "individual_preference": [{"score": pref, "reasoning": "@Response 1 is better."}] * 3})
    return rows


def helpsteer3(root: Path, n_train: int = 21, n_val: int = 7) -> Path:
    """<config>/train.jsonl.gz and <config>/validation.jsonl.gz, configs named in README.md."""
    (root / "README.md").parent.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(HELPSTEER3_CARD)
    _jsonl_gz(root / "preference" / "train.jsonl.gz", helpsteer3_rows(n_train))
    _jsonl_gz(root / "preference" / "validation.jsonl.gz", helpsteer3_rows(n_val, 500))
    feedback = [{"domain": "general", "language": "english", "context": msgs("Hi"), "response1": "a",
                 "response2": "b", "feedback1": ["The response is mostly helpful."],
                 "feedback2": ["The response is not helpful."]}]
    _jsonl_gz(root / "feedback" / "train.jsonl.gz", feedback)
    _jsonl_gz(root / "feedback" / "validation.jsonl.gz", feedback)
    return root


# ------------------------------------------------------------------- Skywork/Skywork-Reward-Preference-80K-v0.2
def skywork(root: Path, n: int = 10) -> Path:
    """data/train-00000-of-00001.parquet, the one split; some rows multi-turn."""
    rows = []
    for i in range(n):
        head = ["Pick a colour.", "Blue."] if i % 3 == 0 else []
        q = f"Is {i} even?"
        rows.append({"chosen": msgs(*head, q, "Yes." if i % 2 == 0 else "No."),
                     "rejected": msgs(*head, q, "No." if i % 2 == 0 else "Yes."),
                     "source": ["helpsteer2", "offsetbias", "magpie_ultra", "wildguard"][i % 4]})
    _parquet(root / "data" / "train-00000-of-00001.parquet", rows)
    return root


# ------------------------------------------------------------------- Anthropic/hh-rlhf
def hh_rlhf_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        head = "\n\nHuman: Hello\n\nAssistant: Hi, how can I help?" if i % 2 else ""
        q = f"{head}\n\nHuman: How many legs do {i} cats have?\n\nAssistant:"
        good, bad = f" {4 * i} legs.", f" {4 * i + 1} legs."
        if i % 6 == 5:
            bad = good  # the set has pairs whose final answers are the same
        rows.append({"chosen": q + good, "rejected": q + bad})
    return rows


def hh_rlhf(root: Path, n_train: int = 18, n_test: int = 6) -> Path:
    """<subset>/train.jsonl.gz and <subset>/test.jsonl.gz, e.g. helpful-base."""
    for subset in ("helpful-base", "harmless-base"):
        _jsonl_gz(root / subset / "train.jsonl.gz", hh_rlhf_rows(n_train))
        _jsonl_gz(root / subset / "test.jsonl.gz", hh_rlhf_rows(n_test, 100))
    return root


# ------------------------------------------------------------------- EleutherAI/hendrycks_math, openai/gsm8k
def hendrycks_math(root: Path, n: int = 6) -> Path:
    """<subject>/train-00000-of-00001.parquet and test-..., columns problem, level, type, solution."""
    for subject, kind in (("algebra", "Algebra"), ("counting_and_probability", "Counting & Probability")):
        for split in ("train", "test"):
            rows = [{"problem": f"What is $\\frac{{{i}}}{{{i + 1}}}$ of ${i + 1}$?", "level": f"Level {1 + i % 5}",
                     "type": kind, "solution": f"It is $\\frac{{{i}}}{{{i + 1}}} \\cdot {i + 1} = \\boxed{{{i}}}$."
                     if i % 2 else f"We get $x=\\boxed{{\\frac{{{i}}}{{{i + 2}}}}}$."} for i in range(n)]
            _parquet(root / subject / f"{split}-00000-of-00001.parquet", rows)
    return root


def gsm8k(root: Path, n: int = 6) -> Path:
    """<config>/train-00000-of-00001.parquet and test-..., columns question, answer."""
    for split in ("train", "test"):
        rows = [{"question": f"Tom has {i} apples and buys {1000 + i} more. How many does he have?",
                 "answer": f"Tom has {i} + {1000 + i} = <<{i}+{1000 + i}={1000 + 2 * i}>>{1000 + 2 * i} apples.\n"
                           f"#### {1000 + 2 * i:,}"} for i in range(n)]
        _parquet(root / "main" / f"{split}-00000-of-00001.parquet", rows)
    return root


# ------------------------------------------------------------------- prompts for the policy phases
def prompts(path: Path, n: int = 16) -> Path:
    """A JSON Lines file of prompts, half text (TRL's prompt-only layout), half message lists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"Solve: {i}+{i + 1}"} if i % 2 else
            {"prompt": [{"role": "user", "content": f"Solve: {i}+{i + 2}"}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
