"""Loaders: every shipped benchmark sample converts with the right labels; bad data is named."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from spct.data import DataError, Item, Items, load_items, save_items
from spct.data.loaders import detect_format

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BENCH = FIXTURES / "benchmarks"
PAIRWISE = FIXTURES / "pairwise"


def raw(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def best_text(item: Item) -> str:
    return item.responses[item.best]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def judgebench_row(i: int, label: str = "A>B", **over) -> dict:
    row = {
        "pair_id": f"p{i}",
        "original_id": None,
        "source": "livebench-math",
        "question": f"What is {i} + {i}?",
        "response_model": "m",
        "response_A": f"It is {2 * i}.",
        "response_B": f"It is {2 * i + 1}.",
        "label": label,
    }
    row.update(over)
    return row


# --- the shipped benchmark samples -----------------------------------------------------------------


def test_every_benchmark_sample_has_a_loader_test():
    tested = {p.name for p in BENCH.iterdir() if p.suffix in (".json", ".jsonl")}
    assert tested == set(EXPECTED_FORMAT)


EXPECTED_FORMAT = {
    "judgebench_gpt4o_sample40.jsonl": "judgebench",
    "rmbench_chat_sample15.json": "rmbench",
    "rmbench_code_sample10.json": "rmbench",
    "rmbench_safety-refuse_sample10.json": "rmbench",
    "rmb_pairwise_helpfulness_chat_sample20.json": "rmb_pairwise",
    "rmb_bon_helpfulness_chat_sample15.json": "rmb_bon",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FORMAT))
def test_format_is_detected_from_the_first_record(name):
    assert detect_format(raw(BENCH / name)[0]) == EXPECTED_FORMAT[name]


def test_judgebench_labels_pick_the_right_response():
    path = BENCH / "judgebench_gpt4o_sample40.jsonl"
    records = raw(path)
    items = load_items(path)
    assert len(items) == len(records) == 40
    assert items.skipped == 0
    for rec, item in zip(records, items, strict=True):
        winner = rec["response_A"] if rec["label"] == "A>B" else rec["response_B"]
        assert item.responses == [rec["response_A"], rec["response_B"]]
        assert best_text(item) == winner
        assert item.rewards == ([1, 0] if rec["label"] == "A>B" else [0, 1])
        assert item.conversation == [{"role": "user", "content": rec["question"]}]
        assert item.id == rec["pair_id"]
        assert item.source == rec["source"]
        assert item.meta["original_id"] == rec["original_id"]
    assert Counter(i.best for i in items) == Counter(
        0 if r["label"] == "A>B" else 1 for r in records
    )


@pytest.mark.parametrize("name", [n for n, f in EXPECTED_FORMAT.items() if f == "rmbench"])
def test_rmbench_expands_each_record_into_the_3x3_style_matrix(name):
    path = BENCH / name
    records = raw(path)
    items = load_items(path)
    assert len(items) == 9 * len(records)
    assert len({i.id for i in items}) == len(items)
    by_group: dict[str, list[Item]] = {}
    for item in items:
        by_group.setdefault(item.meta["group"], []).append(item)
    for rec in records:
        group = by_group[str(rec["id"])]
        pairs = {(i.meta["chosen_style"], i.meta["rejected_style"]) for i in group}
        assert pairs == {(a, b) for a in range(3) for b in range(3)}
        for item in group:
            c, r = item.meta["chosen_style"], item.meta["rejected_style"]
            assert item.id == f"{rec['id']}:{c}-{r}"
            assert best_text(item) == rec["chosen"][c]
            assert item.responses == [rec["chosen"][c], rec["rejected"][r]]
            assert item.rewards == [1, 0]
            assert item.subset == rec["subset"]
            assert item.conversation == [{"role": "user", "content": rec["prompt"]}]
            assert item.source == name


def test_rmb_pairwise_uses_chosen_answer_and_drops_language():
    path = BENCH / "rmb_pairwise_helpfulness_chat_sample20.json"
    records = raw(path)
    items = load_items(path)
    assert len(items) == len(records) == 20
    for rec, item in zip(records, items, strict=True):
        assert best_text(item) == rec["chosen"]["answer"]
        assert item.responses == [rec["chosen"]["answer"], rec["reject"]["answer"]]
        assert item.conversation == [
            {"role": t["role"], "content": t["content"]} for t in rec["conversation_input"]
        ]
        assert item.id == rec["pair_uid"]
        assert item.subset == rec["category_path"]
    assert any(len(i.conversation) > 1 for i in items)


def test_rmb_bon_puts_the_best_first_then_every_loser():
    path = BENCH / "rmb_bon_helpfulness_chat_sample15.json"
    records = raw(path)
    items = load_items(path)
    assert len(items) == len(records) == 15
    for rec, item in zip(records, items, strict=True):
        assert item.n == 1 + len(rec["loser_list"])
        assert best_text(item) == rec["bon_best"]["answer"]
        assert item.responses[1:] == [x["answer"] for x in rec["loser_list"]]
        assert item.rewards == [1] + [0] * len(rec["loser_list"])
        assert item.id == rec["bon_uid"]
    assert len({i.n for i in items}) > 1


def test_limit_counts_source_records_so_rmbench_groups_stay_whole():
    items = load_items(BENCH / "rmbench_chat_sample15.json", limit=2)
    assert len(items) == 18
    assert len({i.meta["group"] for i in items}) == 2


# --- pairwise: RewardBench, UltraFeedback, Skywork ---------------------------------------------


def test_rewardbench_columns_from_jsonl():
    path = PAIRWISE / "rewardbench_small.jsonl"
    records = raw(path)
    items = load_items(path)
    assert [i.id for i in items] == [str(r["id"]) for r in records]
    assert [best_text(i) for i in items] == [r["chosen"] for r in records]
    assert [i.subset for i in items] == [r["subset"] for r in records]
    assert all(i.source == "rewardbench_small.jsonl" for i in items)


def test_ultrafeedback_message_lists_take_the_last_assistant_turn():
    path = PAIRWISE / "ultrafeedback_small.jsonl"
    records = raw(path)
    items = load_items(path)
    assert detect_format(records[0]) == "ultrafeedback"
    for rec, item in zip(records, items, strict=True):
        assert item.conversation == [{"role": "user", "content": rec["prompt"]}]
        assert item.responses == [rec["chosen"][-1]["content"], rec["rejected"][-1]["content"]]
        assert item.id == rec["prompt_id"]


def test_skywork_shared_prefix_is_the_conversation():
    path = PAIRWISE / "skywork_small.jsonl"
    records = raw(path)
    items = load_items(path)
    assert [i.source for i in items] == [r["source"] for r in records]
    multi = items[1]
    assert multi.conversation == records[1]["chosen"][:-1]
    assert multi.responses == ["A banana.", "A cucumber."]
    assert multi.id == "skywork_small:2"


def test_skywork_with_different_histories_is_rejected(tmp_path):
    rec = raw(PAIRWISE / "skywork_small.jsonl")[1]
    rec["rejected"][0]["content"] = "Give me a vegetable."
    path = write_jsonl(tmp_path / "sky.jsonl", [rec])
    with pytest.raises(DataError, match=r"sky\.jsonl, line 1: field 'rejected'.*same conversation"):
        load_items(path)


def test_message_list_not_ending_with_assistant_is_rejected(tmp_path):
    rec = raw(PAIRWISE / "skywork_small.jsonl")[0]
    rec["chosen"] = rec["chosen"][:1]
    path = write_jsonl(tmp_path / "sky.jsonl", [rec])
    with pytest.raises(DataError, match=r"line 1: field 'chosen\[0\]\.role'.*'assistant'"):
        load_items(path)


REWARDBENCH_ROWS = [
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "subset": "alpacaeval-easy", "id": 7},
    {"prompt": "2 * 4?", "chosen": "8", "rejected": "9", "subset": "math-prm", "id": 8},
    {
        "prompt": "Capital of Peru?",
        "chosen": "Lima.",
        "rejected": "Cusco.",
        "subset": "hep-cpp",
        "id": 9,
    },
]


def check_rewardbench(items: Items, source: str) -> None:
    assert [i.id for i in items] == ["7", "8", "9"]
    assert [best_text(i) for i in items] == ["Hi!", "8", "Lima."]
    assert [i.responses[1] for i in items] == ["No.", "9", "Cusco."]
    assert [i.subset for i in items] == ["alpacaeval-easy", "math-prm", "hep-cpp"]
    assert items[1].conversation == [{"role": "user", "content": "2 * 4?"}]
    assert all(i.source == source for i in items)


def test_local_parquet_export_with_rewardbench_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "reward-bench-filtered.parquet"
    pq.write_table(pa.Table.from_pylist(REWARDBENCH_ROWS), path)
    check_rewardbench(load_items(path), "reward-bench-filtered.parquet")


def test_datasets_json_export_is_read_as_json_lines(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "reward-bench.json"
    datasets.Dataset.from_list(REWARDBENCH_ROWS).to_json(path)
    assert not path.read_text().startswith("[")
    check_rewardbench(load_items(path), "reward-bench.json")


def test_parquet_with_message_list_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "skywork.parquet"
    pq.write_table(pa.Table.from_pylist(raw(PAIRWISE / "skywork_small.jsonl")), path)
    items = load_items(path)
    assert [i.responses for i in items] == [
        ["Yes, 7 is odd.", "No, 7 is even."],
        ["A banana.", "A cucumber."],
    ]
    assert items[0].id == "skywork:0"


def test_hub_name_goes_through_datasets_load_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, subset=None, split=None, **kwargs):
        calls.append((name, split))
        return datasets.Dataset.from_list(REWARDBENCH_ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = load_items("allenai/reward-bench", split="filtered")
    assert calls == [("allenai/reward-bench", "filtered")]
    check_rewardbench(items, "allenai/reward-bench")
    assert len(load_items("allenai/reward-bench", split="filtered", limit=2)) == 2


def test_hub_rows_without_an_id_get_a_stable_one(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = raw(PAIRWISE / "skywork_small.jsonl")
    for r in rows:
        del r["source"]
    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, subset=None, split=None: datasets.Dataset.from_list(rows)
    )
    items = load_items("Skywork/Skywork-Reward-Preference-80K-v0.2")
    assert [i.id for i in items] == [
        f"Skywork/Skywork-Reward-Preference-80K-v0.2:train:{k}" for k in range(2)
    ]
    assert items[0].source == "Skywork/Skywork-Reward-Preference-80K-v0.2"


# --- our own schema and the round trip ----------------------------------------------------------


def test_items_format_and_defaults():
    path = PAIRWISE / "items_small.jsonl"
    items = load_items(path)
    assert [i.id for i in items] == ["mul-1", "verify-1", "items_small:3"]
    assert [i.source for i in items] == ["handmade", "items_small.jsonl", "items_small.jsonl"]
    assert items[1].meta == {"answer": "yes"}
    assert [i.best for i in items] == [0, 0, 1]


@pytest.mark.parametrize(
    "path",
    [
        BENCH / "judgebench_gpt4o_sample40.jsonl",
        BENCH / "rmb_bon_helpfulness_chat_sample15.json",
        PAIRWISE / "items_small.jsonl",
    ],
    ids=lambda p: p.name,
)
def test_save_then_load_round_trips(tmp_path, path):
    items = load_items(path)
    out = save_items(items, tmp_path / "sub" / "saved.jsonl")
    again = load_items(out)
    assert list(again) == list(items)
    assert detect_format(json.loads(out.read_text().splitlines()[0])) == "items"


def test_save_refuses_invalid_items(tmp_path):
    bad = Item([{"role": "user", "content": "q"}], ["a", "b"], [1, 1])
    with pytest.raises(DataError, match=r"item 0: field 'rewards'.*unique maximum"):
        save_items([bad], tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


# --- errors name the file, the line or record, and the field --------------------------------------


def test_malformed_json_line(tmp_path):
    path = write_jsonl(
        tmp_path / "jb.jsonl", [judgebench_row(1), '{"pair_id": "p2", "label": ', judgebench_row(3)]
    )
    with pytest.raises(DataError, match=r"jb\.jsonl, line 2: malformed JSON"):
        load_items(path)


def test_missing_field(tmp_path):
    row = judgebench_row(2)
    del row["response_B"]
    path = write_jsonl(tmp_path / "jb.jsonl", [judgebench_row(1), row])
    with pytest.raises(DataError, match=r"jb\.jsonl, line 2: field 'response_B': missing"):
        load_items(path)


def test_bad_judgebench_label(tmp_path):
    path = write_jsonl(tmp_path / "jb.jsonl", [judgebench_row(1, label="A=B")])
    with pytest.raises(
        DataError, match=r"jb\.jsonl, line 1: field 'label': expected \"A>B\" or \"B>A\", got 'A=B'"
    ):
        load_items(path)


def test_empty_response_in_a_json_list(tmp_path):
    records = raw(BENCH / "rmb_pairwise_helpfulness_chat_sample20.json")[:3]
    records[2]["reject"]["answer"] = "   "
    path = tmp_path / "rmb.json"
    path.write_text(json.dumps(records))
    with pytest.raises(
        DataError, match=r"rmb\.json, record 2: field 'reject\.answer': empty response"
    ):
        load_items(path)


def test_rmbench_with_wrong_number_of_styles(tmp_path):
    records = raw(BENCH / "rmbench_chat_sample15.json")[:2]
    records[1]["rejected"] = records[1]["rejected"][:2]
    path = tmp_path / "rmb.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"record 1: field 'rejected': expected a list of 3"):
        load_items(path, format="rmbench")


def test_no_unique_maximum(tmp_path):
    row = {
        "conversation": [{"role": "user", "content": "q"}],
        "responses": ["a", "b"],
        "rewards": [2, 2],
    }
    path = write_jsonl(tmp_path / "items.jsonl", [row])
    with pytest.raises(
        DataError, match=r"items\.jsonl, line 1: field 'rewards': expected one unique maximum"
    ):
        load_items(path)


def test_wrong_format_forced_names_the_missing_field(tmp_path):
    with pytest.raises(DataError, match=r"line 1: field 'label': missing"):
        load_items(PAIRWISE / "rewardbench_small.jsonl", format="judgebench")


def test_undetectable_format_lists_keys_and_formats(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"query": "q", "reply": "a"}])
    with pytest.raises(DataError) as err:
        load_items(path, skip_invalid=True)
    msg = str(err.value)
    assert "odd.jsonl, line 1" in msg and "['query', 'reply']" in msg and "columns=" in msg
    for name in ("items", "pairwise", "judgebench", "rmbench", "rmb_pairwise", "rmb_bon", "ultrafeedback",
                 "helpsteer2", "helpsteer3", "hh_rlhf", "verifiable", "math", "gsm8k", "prompts"):
        assert name in msg


def test_bad_arguments_and_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        load_items(PAIRWISE / "items_small.jsonl", format="csv")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_items(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.txt").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_items(tmp_path / "data.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: expected a file, a folder written by datasets' save_to_disk"):
        load_items(tmp_path / "empty")


# --- skip_invalid --------------------------------------------------------------------------------


def test_skip_invalid_counts_and_warns_once(tmp_path, caplog):
    empty = judgebench_row(4, response_A="")
    rows = [
        judgebench_row(1),
        "not json",
        judgebench_row(2, label="tie"),
        judgebench_row(3, label="B>A"),
        empty,
    ]
    path = write_jsonl(tmp_path / "jb.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="spct.data"):
        items = load_items(path, skip_invalid=True)
    assert [i.id for i in items] == ["p1", "p3"]
    assert items[1].best == 1
    assert items.skipped == 3
    assert len(items.errors) == 3
    assert (
        "line 2" in items.errors[0]
        and "line 3" in items.errors[1]
        and "response_A" in items.errors[2]
    )
    warnings = [r for r in caplog.records if r.name == "spct.data"]
    assert len(warnings) == 1
    assert (
        "skipped 3" in warnings[0].getMessage()
        and "line 2: malformed JSON" in warnings[0].getMessage()
    )


def test_clean_file_logs_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="spct.data"):
        items = load_items(PAIRWISE / "rewardbench_small.jsonl", skip_invalid=True)
    assert items.skipped == 0 and items.errors == []
    assert not [r for r in caplog.records if r.name == "spct.data"]


def test_load_splits_reads_each_named_file_and_generates_synthetic_ones(tmp_path):
    from spct.data import load_splits
    from spct.data.synthetic import make_items

    items = make_items(6, 0, "test", None)
    save_items(items, tmp_path / "test.jsonl")
    splits = load_splits("files", seed=0, test=str(tmp_path / "test.jsonl"))
    assert list(splits) == ["test"]  # a split left null is absent
    assert [i.rewards for i in splits["test"]] == [i.rewards for i in items]

    synthetic = dict(kind="synthetic", train_size=5, validation_size=4, test_size=6)
    assert {k: len(v) for k, v in load_splits(**synthetic, seed=0).items()} == {"train": 5, "validation": 4, "test": 6}
    only = load_splits(**synthetic, seed=0, splits=["test"])
    assert list(only) == ["test"] and [i.id for i in only["test"]] == [i.id for i in items]
