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


# ------------------------------------------------------------------- lmarena-ai/PPE-Human-Preference-V1
def ppe_preference_rows(n: int) -> list[dict]:
    """The card's columns: `prompt`, `response_1` (model_a's), `response_2` (model_b's) are
    strings; `winner` is model_a / model_b or a tie (every 5th row: "tie", "tie (bothbad)")."""
    rows = []
    for i in range(n):
        winner = ("tie" if i % 10 == 4 else "tie (bothbad)") if i % 5 == 4 else ("model_a", "model_b")[i % 2]
        rows.append({
            "question_id": f"{i:032x}", "model_a": "gpt-4o-2024-05-13", "model_b": "llama-3-70b-instruct",
            "winner": winner, "prompt": f"What is {i} times 3?", "response_1": f"{i} times 3 is {3 * i}.",
            "response_2": f"It is {3 * i + 1}.", "language": "English" if i % 3 else "Chinese",
            "conv_metadata": {"context_a_tokens": 9, "context_b_tokens": 9, "sum_assistant_a_tokens": 8,
                              "sum_assistant_b_tokens": 5, "sum_user_tokens": 9, "turns": 1},
            "is_code": i % 4 == 0, "is_refusal": False,
            "category_tag": {"criteria_v0.1": {"complexity": False, "creativity": False, "domain_knowledge": True,
                                               "problem_solving": True, "real_world": False, "specificity": True,
                                               "technical_accuracy": True},
                             "if_v0.1": {"if": False, "score": 1}, "math_v0.1": {"math": True}},
            "sim": 0.5, "length_a": 20, "length_b": 12, "token_diff": 0.25, "longer_won": "yes",
            "hard_prompt": i % 2 == 0, "easy_prompt": i % 2 == 1, "if_prompt": False, "math_prompt": True,
        })
    return rows


def ppe_preference(root: Path, n: int = 20) -> Path:
    """data/test-00000-of-00001.parquet: the one split, test."""
    _parquet(root / "data" / "test-00000-of-00001.parquet", ppe_preference_rows(n))
    return root


# ------------------------------------------------------------------- lmarena-ai/PPE-*-Best-of-K
PPE_SET_COLUMNS = {  # the columns only each set has (its card's dataset_info)
    "MMLU-Pro": lambda i: {"question": f"Q{i}", "options": ["a", "b", "c", "d"], "answer": "B", "answer_index": 1,
                           "category": "math"},
    "MATH": lambda i: {"problem": f"Compute {i}+{i}.", "level": "Level 2", "type": "Algebra",
                       "solution": f"\\boxed{{{2 * i}}}", "sanitized_solution": f"{2 * i}"},
    "GPQA": lambda i: {"Question": f"Q{i}", "Subdomain": "Physics", "Record ID": f"rec{i}",
                       "High-level domain": "Physics", "choices": ["w", "x", "y", "z"], "correct_choice_index": 2,
                       "correct_choice": "y", "canary_string": "BENCHMARK DATA SHOULD NEVER APPEAR"},
    "IFEval": lambda i: {"ifeval_prompt": f"Write {i} words.", "key": i, "instruction_id_list": ["length"],
                         "kwargs": [{"num_words": i}], "score_data": []},
    "MBPP-Plus": lambda i: {"task_id": i, "code": "def f(): pass", "source_file": "mbpp.jsonl",
                            "test_imports": [], "test_list": ["assert f() is None"], "test": ""},
}


def ppe_correctness_rows(name: str, n: int, k: int = 8) -> list[dict]:
    """`response_1` ... `response_K`, `scores` (K booleans), `conflict_pairs` and a sample of
    them in `sampled_conflict_pairs` (0-based, either order); the hub's K is 32."""
    rows = []
    for i in range(n):
        scores = [(i + j) % 3 != 0 for j in range(k)]
        conflicts = [[a, b] for a in range(k) for b in range(a + 1, k) if scores[a] != scores[b]]
        sampled = [p if m % 2 else p[::-1] for m, p in enumerate(conflicts[:3])]
        rows.append({"question_id": f"{name}-{i}", "model_name": "gpt-4o-mini-2024-07-18",
                     "prompt": f"[{name}] Solve problem {i}.",
                     **{f"response_{j + 1}": f"Answer {j} to {i}: {'right' if scores[j] else 'wrong'}" for j in range(k)},
                     "scores": scores, "mean_score": sum(scores) / k, "conflict_pairs": conflicts,
                     "sampled_conflict_pairs": sampled,
                     "parsed_outputs": [str(j) for j in range(k)] if name in ("MMLU-Pro", "MATH", "GPQA") else None,
                     **PPE_SET_COLUMNS[name](i)})
        if rows[-1]["parsed_outputs"] is None:
            del rows[-1]["parsed_outputs"]
    return rows


def ppe_correctness(root: Path, n: int = 4, sets: tuple[str, ...] = tuple(PPE_SET_COLUMNS)) -> Path:
    """One folder per set as the hub has it: PPE-<set>-Best-of-K/data/train-00000-of-00001.parquet."""
    for name in sets:
        _parquet(root / f"PPE-{name}-Best-of-K" / "data" / "train-00000-of-00001.parquet",
                 ppe_correctness_rows(name, n))
    return root


# ------------------------------------------------------------------- allenai/reward-bench-2
RB2_METADATA = {"category": None, "correct": None, "index": None, "instruction_id_list": None, "label": None,
                "method": None, "models": None, "prompt_norm": None, "subcategory": None, "valid": None}


RB2_SUBSETS = ("Factuality", "Precise IF", "Math", "Safety", "Focus")


def rewardbench2_rows(per_subset: int = 2, ties: int = 2, subsets: tuple[str, ...] = RB2_SUBSETS) -> list[dict]:
    """One right (`chosen`) and three wrong (`rejected`) completions per prompt in five subsets;
    in Ties, "tied:N" prompts with several right answers and their "ref:N" twins with one."""
    rows = []
    n = 0
    for subset in subsets:
        for _ in range(per_subset):
            rows.append({"id": str(n), "prompt": f"What is {n} + 1?", "chosen": [f"{n + 1}."],
                         "rejected": [f"{n + 2}.", f"{n}.", f"{n + 3}."], "num_correct": 1, "num_incorrect": 3,
                         "total_completions": 4, "models": ["m1", "m2", "m3", "m4"], "subset": subset,
                         "additional_metadata": dict(RB2_METADATA)})
            n += 1
    for t in range(ties):
        rows.append({"id": f"tied:{t}", "prompt": f"Name an odd number below {5 + t}.", "chosen": ["1", "3"],
                     "rejected": ["2", "4"], "num_correct": 2, "num_incorrect": 2, "total_completions": 4,
                     "models": ["m1"] * 4, "subset": "Ties", "additional_metadata": dict(RB2_METADATA)})
        rows.append({"id": f"ref:{t}", "prompt": f"Name the smallest odd number above {t}.",
                     "chosen": [str(t + 1 if t % 2 == 0 else t + 2)], "rejected": ["0", "8"], "num_correct": 1,
                     "num_incorrect": 2, "total_completions": 3, "models": ["m1"] * 3, "subset": "Ties",
                     "additional_metadata": dict(RB2_METADATA)})
    return rows


def rewardbench2(root: Path, per_subset: int = 2, ties: int = 2, subsets: tuple[str, ...] = RB2_SUBSETS) -> Path:
    """data/test-00000-of-00001.parquet: the one split, test."""
    _parquet(root / "data" / "test-00000-of-00001.parquet", rewardbench2_rows(per_subset, ties, subsets))
    return root


# ------------------------------------------------------------------- psunlpgroup/ReaLMistake
# The three tasks: (folder and hub config, metadata.task_name, metadata.task_source, the error
# categories its errors fall in: src/error_detection_analysis/calculate_performance.py).
REALMISTAKE_TASKS = (
    ("math_word_problem_generation", "math_problem_generation", "aqua",
     ("Reasoning Correctness", "Instruction-Following")),
    ("finegrained_fact_verification", "finegrained_fact_verification", "wice",
     ("Reasoning Correctness", "Instruction-Following", "Context-Faithfulness")),
    ("answerability_classification", "answerability_classification", "hotpotqa",
     ("Reasoning Correctness", "Parameterized Knowledge")),
)
# File name (data/<task>/<name>.jsonl; hub split) and metadata.llm_response_model per responder.
REALMISTAKE_MODELS = (("gpt-4-0613", "gpt4", "gpt-4-0613"),
                      ("Llama-2-70b-chat-hf", "llama2", "meta-llama/Llama-2-70b-chat-hf"))


def realmistake_rows(task: str, model: str, n: int = 4) -> list[dict]:
    """A task's records for one responder (`task` a folder name, `model` a file name): the
    README's keys in the hub's order, `error_label` "error" or "no_error" (both in every file),
    `metadata` as the repository's error_detection_outputs carry it (id "<task_name>_<n>_<model>")."""
    t = next(k for k, row in enumerate(REALMISTAKE_TASKS) if row[0] == task)
    _, task_name, source, categories = REALMISTAKE_TASKS[t]
    m = next(k for k, row in enumerate(REALMISTAKE_MODELS) if row[0] == model)
    responder = REALMISTAKE_MODELS[m][2]
    rows = []
    for i in range(n):
        error = (i + t + m) % 3 != 1  # each file holds both labels
        rows.append({
            "input": f"[{task}] Answer question {i} and explain your reasoning step by step.",
            "llm_response": f"Reasoning for question {i}. Therefore, the answer is {i + t}.",
            "error_label": "error" if error else "no_error",
            "human_explanation": f"The answer to question {i} should be {i + t + 1}." if error else "",
            "error_categories": list(categories[: 1 + i % len(categories)]) if error else [],
            "metadata": {"id": f"{task_name}_{100 * t + i}_{responder}", "task_name": task_name,
                         "task_source": source, "llm_response_model": responder, "dataset": "realmistake",
                         "difficulty": "easy" if i % 2 else "difficult"},
        })
    return rows


def realmistake(root: Path, n: int = 4) -> Path:
    """The `data` folder of the repository's data.zip: <task>/gpt-4-0613.jsonl and
    <task>/Llama-2-70b-chat-hf.jsonl for the three tasks, n records each (the zip's
    example.jsonl, the paper's examples, is left out). The gated hub copy
    (ryokamoi/realmistake) holds the same records as one config per task, splits gpt4 and llama2."""
    for task, *_ in REALMISTAKE_TASKS:
        for model, *_ in REALMISTAKE_MODELS:
            path = root / task / f"{model}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in realmistake_rows(task, model, n)))
    return root
