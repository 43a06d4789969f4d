"""The named formats, each read from a small copy of its set in the set's real layout, through the
same load_dataset call a user's config makes (tests/layouts.py writes them); sources by path,
folder, hub arguments, CSV and saved datasets; column mapping; and property tests: whatever a
named format's record holds, the loader gives items or a DataError naming the record."""

from __future__ import annotations

import gzip
import json

import layouts
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spct.data import FORMATS, DataError, Source, load_items, load_splits, to_source
from spct.data.formats import last_boxed


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def test_ultrafeedback_reads_train_prefs_and_test_prefs_and_leaves_ties_out(tmp_path):
    root = layouts.ultrafeedback(tmp_path / "ultrafeedback_binarized")
    rows = layouts.ultrafeedback_rows(24)
    train = load_items({"path": str(root), "format": "ultrafeedback"}, split="train")
    ties = sum(r["score_chosen"] == r["score_rejected"] for r in rows)
    assert len(train) == 24 - ties and train.dropped == {"a tie (score_chosen == score_rejected)": ties}
    kept = [r for r in rows if r["score_chosen"] != r["score_rejected"]]
    for item, row in zip(train, kept, strict=True):
        assert item.conversation == [{"role": "user", "content": row["prompt"]}]
        assert item.responses == [row["chosen"][-1]["content"], row["rejected"][-1]["content"]]
        assert item.rewards == [1.0, 0.0] and item.id == row["prompt_id"]
        assert item.meta == {"score_chosen": 8.0, "score_rejected": 4.5}
    test = load_items({"path": str(root), "format": "ultrafeedback"}, split="test")
    assert [i.id for i in test] == [r["prompt_id"] for r in layouts.ultrafeedback_rows(8, 1000)
                                    if r["score_chosen"] != r["score_rejected"]]


def test_helpsteer2_preference_reads_its_split_column_and_its_strength(tmp_path):
    root = layouts.helpsteer2(tmp_path / "HelpSteer2")
    spec = {"path": str(root), "data_dir": "preference", "format": "helpsteer2"}
    train, val = load_items(spec, split="train"), load_items(spec, split="validation")
    rows = [json.loads(line) for line in gzip.open(root / "preference" / "preference.jsonl.gz", "rt")]
    for items, own in ((train, "train"), (val, "val")):
        expect = [r for r in rows if r["split"] == own and r["preference_strength"] != 0]
        assert len(items) == len(expect)
        for item, row in zip(items, expect, strict=True):
            s = row["preference_strength"]
            assert item.responses == [row["response_1"], row["response_2"]]
            assert item.rewards == ([1.0, 0.0] if s < 0 else [0.0, 1.0])  # negative: response_1 better
            assert item.meta["preference_strength"] == abs(s)
    assert train.dropped["a row of split 'val'"] == sum(r["split"] == "val" for r in rows)
    multi = next(i for i in train if len(i.conversation) > 1)  # NeMo separators back into turns
    assert [t["role"] for t in multi.conversation] == ["user", "assistant", "user"]
    assert multi.conversation[1]["content"] == "A pear."


def test_helpsteer2_ratings_pair_consecutive_rows_by_helpfulness(tmp_path):
    root = layouts.helpsteer2(tmp_path / "HelpSteer2")
    items = load_items({"path": str(root), "format": "helpsteer2_ratings"}, split="train")
    assert all(i.n == 2 and max(i.rewards) == 4 for i in items)
    assert items.dropped == {"a tie in helpfulness at the top": 2}
    assert items[0].meta["attributes"][0] == {"helpfulness": 4, "correctness": 4, "coherence": 4,
                                              "complexity": 1, "verbosity": 1}
    val = load_items({"path": str(root), "format": "helpsteer2_ratings"}, split="validation")
    assert len(val) >= 1
    with pytest.raises(DataError, match="whose items span several records: pass format=helpsteer2_ratings"):
        load_items({"path": str(root)}, split="train")


def test_helpsteer3_by_its_config_name_with_multi_turn_context(tmp_path):
    root = layouts.helpsteer3(tmp_path / "HelpSteer3")
    items = load_items({"path": str(root), "subset": "preference"}, split="train")  # format detected
    rows = [r for r in layouts.helpsteer3_rows(21) if r["overall_preference"] != 0]
    assert items.format == "helpsteer3" and len(items) == len(rows) and items.dropped == {"a tie (overall_preference = 0)": 3}
    for item, row in zip(items, rows, strict=True):
        assert item.conversation == row["context"]
        assert item.rewards == ([1.0, 0.0] if row["overall_preference"] < 0 else [0.0, 1.0])
        assert item.subset == row["domain"] and item.meta["preference_strength"] == abs(row["overall_preference"])
    # spct's test split is the set's validation split
    assert len(load_items({"path": str(root), "subset": "preference", "format": "helpsteer3"}, split="test")) == 6


def test_skywork_keeps_its_source_and_multi_turn_prefix(tmp_path):
    root = layouts.skywork(tmp_path / "Skywork-Reward-Preference-80K-v0.2")
    items = load_items({"path": str(root), "format": "skywork"})
    assert [i.subset for i in items] == ["helpsteer2", "offsetbias", "magpie_ultra", "wildguard"] * 2 + ["helpsteer2",
                                                                                                   "offsetbias"]
    assert items[0].conversation == layouts.msgs("Pick a colour.", "Blue.", "Is 0 even?")
    assert items[0].responses == ["Yes.", "No."]
    # its one split also serves a held-out slice
    assert len(load_items({"path": str(root), "split": "train[-3:]", "format": "skywork"}, split="test")) == 3


def test_hh_rlhf_transcripts_split_at_the_last_assistant_turn(tmp_path):
    root = layouts.hh_rlhf(tmp_path / "hh-rlhf")
    items = load_items({"path": str(root), "data_dir": "helpful-base"}, split="train")
    assert items.format == "hh_rlhf" and items.dropped == {"the same final answer in chosen and rejected": 3}
    one = next(i for i in items if i.id.endswith(":1"))
    assert one.conversation == [{"role": "user", "content": "Hello"},
                                {"role": "assistant", "content": "Hi, how can I help?"},
                                {"role": "user", "content": "How many legs do 1 cats have?"}]
    assert one.responses == ["4 legs.", "5 legs."] and one.rewards == [1.0, 0.0]
    assert len(load_items({"path": str(root), "data_dir": "helpful-base"}, split="test")) == 5


def test_hh_rlhf_rejects_transcripts_that_disagree_before_the_answer(tmp_path):
    row = layouts.hh_rlhf_rows(1)[0]
    row["rejected"] = row["rejected"].replace("0 cats", "9 cats")
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"hh\.jsonl, line 1: field 'rejected': expected the same turns"):
        load_items(path)


def test_math_and_gsm8k_carry_their_reference_answers(tmp_path):
    root = layouts.hendrycks_math(tmp_path / "hendrycks_math")
    items = load_items({"path": str(root), "data_dir": "algebra"}, split="test")
    assert items.format == "math" and [i.meta["reference"] for i in items[:2]] == ["\\frac{0}{2}", "1"]
    assert all(i.n == 1 and i.rewards == [1.0] and i.subset == "Algebra" for i in items)
    assert items[0].meta["level"] == "Level 1"
    root = layouts.gsm8k(tmp_path / "gsm8k")
    items = load_items({"path": str(root), "data_dir": "main"}, split="train")
    assert items.format == "gsm8k" and items[3].meta["reference"] == "1006"  # "#### 1,006"
    assert "<<" not in items[3].responses[0] and items[3].responses[0].endswith("#### 1,006")


def test_last_boxed_reads_nested_braces():
    assert last_boxed(r"a \boxed{1} then \boxed{\frac{1}{4}}.") == r"\frac{1}{4}"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"\boxed{unclosed") is None and last_boxed("none") is None


def test_verifiable_single_responses_with_labels(tmp_path):
    rows = [{"prompt": "2+2?", "completion": "4", "label": True, "answer": "4"},
            {"prompt": [{"role": "user", "content": "3+3?"}], "completion": "7", "label": False},
            {"prompt": "1+1?", "completion": "2", "label": 1, "reward_model": {"ground_truth": "2"}}]
    path = tmp_path / "v.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_items(path)
    assert items.format == "verifiable" and [i.rewards for i in items] == [[1.0], [0.0], [1.0]]
    assert [i.meta.get("reference") for i in items] == ["4", None, "2"]
    path.write_text(json.dumps({"prompt": "x", "completion": "y", "label": "maybe"}) + "\n")
    with pytest.raises(DataError, match="field 'label': expected true/false or 1/0"):
        load_items(path)


def test_prompts_only_text_or_messages(tmp_path):
    path = layouts.prompts(tmp_path / "prompts.jsonl", n=4)
    items = load_items(path)
    assert items.format == "prompts" and sum(not i.responses for i in items) == 4
    assert [i.conversation for i in items[:2]] == [[{"role": "user", "content": "Solve: 0+2"}],
                                                   [{"role": "user", "content": "Solve: 1+2"}]]
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}))
    with pytest.raises(DataError, match=r"field 'prompt\[1\]\.role': expected 'user'"):
        load_items(path)


def test_csv_with_a_column_mapping_names_the_users_column(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('question,good,bad\n"What is 1+1?",2,3\nWhat is 2+2?,4,"5, maybe"\n')
    items = load_items(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert items.format == "pairwise" and items[1].responses == ["4", "5, maybe"]
    assert items[0].conversation == [{"role": "user", "content": "What is 1+1?"}]
    path.write_text("question,good,bad\nWhat?,2,\n")
    with pytest.raises(DataError, match=r"pairs\.csv, row 1 \(after the header\): field 'bad': empty response"):
        load_items(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    with pytest.raises(DataError, match="field 'answer': missing \\(columns maps the format's 'chosen' to it\\)"):
        load_items(path, columns={"prompt": "question", "chosen": "answer", "rejected": "bad"})


def test_a_saved_datasets_folder_and_its_splits(tmp_path):
    import datasets

    rows = layouts.ultrafeedback_rows(6)
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "saved")
    items = load_items({"path": str(tmp_path / "saved"), "format": "ultrafeedback"})
    assert len(items) == 5
    with pytest.raises(DataError, match="no split 'validation' in this saved dataset; it has train_prefs"):
        load_items({"path": str(tmp_path / "saved"), "split": "validation"})
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "one")
    assert len(load_items(str(tmp_path / "one"))) == 5


def test_hub_arguments_reach_load_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake(name, subset=None, split=None, **kwargs):
        calls.append((name, subset, split, kwargs))
        return datasets.Dataset.from_list(layouts.helpsteer3_rows(3))

    monkeypatch.setattr(datasets, "load_dataset", fake)
    load_items({"path": "nvidia/HelpSteer3", "subset": "preference", "revision": "abc123", "format": "helpsteer3"},
               split="test")
    load_items({"path": "org/set", "data_files": {"train": "a.jsonl"}, "data_dir": "d"})
    assert calls == [("nvidia/HelpSteer3", "preference", "validation", {"revision": "abc123"}),
                     ("org/set", None, "train", {"data_dir": "d", "data_files": {"train": "a.jsonl"}})]


def test_a_source_spec_names_its_key_in_errors():
    with pytest.raises(DataError, match="data.train: field 'splt': not a source setting"):
        to_source({"path": "x", "splt": "train"}, "data.train")
    with pytest.raises(DataError, match="data.test: field 'format': null .* got 'ultrafeedbak'"):
        to_source({"path": "x", "format": "ultrafeedbak"}, "data.test")
    with pytest.raises(DataError, match="data.train: field 'path'"):
        to_source({"split": "x"}, "data.train")
    assert to_source("a/b", "data.train", "skywork") == Source("a/b", format="skywork")
    assert Source("a/b", format="ultrafeedback").hub_split("train") == "train_prefs"
    assert Source("a/b", split="mine", format="ultrafeedback").hub_split("train") == "mine"


def test_load_splits_takes_mappings_and_shared_defaults(tmp_path):
    root = layouts.helpsteer3(tmp_path / "HelpSteer3")
    splits = load_splits("files", train={"path": str(root), "subset": "preference"},
                         test={"path": str(root), "subset": "preference"}, format="helpsteer3")
    assert set(splits) == {"train", "test"} and len(splits["test"]) == 6


# --- property tests: any record of a named format's keys -> items or a clear DataError ----------

_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                    max_size=3), max_leaves=6)
_KEYS = {"ultrafeedback": ("prompt", "chosen", "rejected", "score_chosen", "score_rejected"),
         "helpsteer2": ("split", "prompt", "response_1", "response_2", "preference_strength"),
         "helpsteer3": ("domain", "context", "response1", "response2", "overall_preference"),
         "skywork": ("chosen", "rejected", "source"), "hh_rlhf": ("chosen", "rejected"),
         "math": ("problem", "solution", "level", "type"), "gsm8k": ("question", "answer"),
         "verifiable": ("prompt", "completion", "label"), "prompts": ("prompt", "completion"),
         "ppe_preference": ("winner", "question_id", "prompt", "response_1", "response_2", "hard_prompt", "language"),
         "ppe_correctness": ("sampled_conflict_pairs", "prompt", "scores", "response_1", "response_2", "model_name"),
         "rewardbench2": ("subset", "id", "prompt", "chosen", "rejected", "num_correct")}
_messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", 3]),
                                            "content": st.text(max_size=6)}), max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(sorted(_KEYS)), data=st.data())
def test_any_record_of_a_named_format_gives_items_or_a_clear_error(tmp_path, fmt, data):
    record = {k: data.draw(_values | _messages | st.text(max_size=20), label=k) for k in _KEYS[fmt]
              if data.draw(st.booleans(), label=f"has {k}") or k == _KEYS[fmt][0]}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record) + "\n")
    try:
        items = load_items(path, format=fmt, allow_empty=True)
    except DataError as e:
        assert "r.jsonl, line 1" in str(e) and (e.field is not None or "no items" in str(e) or "expected" in str(e))
        return
    if fmt == "ppe_correctness":  # one item per sampled conflict pair
        assert len(items) == len(record["sampled_conflict_pairs"]) or sum(items.dropped.values()) == 1
    else:
        assert len(items) + sum(items.dropped.values()) == 1 or fmt == "prompts" and len(items) == 1
    for item in items:
        assert item.responses or fmt == "prompts"


def test_every_named_format_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text()
    for name in FORMATS:
        assert f"`{name}`" in doc, name


def test_a_grouped_format_with_a_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "hs2.jsonl"
    row = {"prompt": "p", "response": "r", "helpfulness": 3}
    path.write_text(json.dumps(row) + "\n[1, 2]\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"hs2\.jsonl, line 2: expected a JSON object"):
        load_items(path, format="helpsteer2_ratings")
    items = load_items(path, format="helpsteer2_ratings", skip_invalid=True, allow_empty=True)
    assert items.skipped == 1 and items.dropped == {"a prompt with one rated response": 2}


def test_prompts_only_splits_are_refused_where_responses_are_needed():
    from spct.config import Config, data_problems

    c = Config(phases=["rft", "rl", "meta_rm", "eval", "policy_sft", "policy_rl"])
    problems = data_problems(c, {"train": 1000, "validation": 10, "test": 10}, {"train": 1000, "validation": 10,
                                                                                 "test": 10})
    assert [p.split(":")[0] for p in problems] == ["data.train", "data.validation", "data.test"]
    assert "rft, rl, meta_rm, policy_sft train on them" in problems[0]
    c = Config(phases=["policy_rl"])
    assert data_problems(c, {"train": 1000}, {"train": 1000}) == []
