"""ReaLMistake from its released files: the layout (data.zip's data/<task>/<model>.jsonl, the hub's
configs and splits) read into single-response items, the format detected, bad records named, and
the benchmark's ROC-AUC through spct's route against scikit-learn on the raw labels."""

from __future__ import annotations

import hashlib
import json

import layouts
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spct.data import DataError, load_items
from spct.data.formats import detect_format
from spct.evaluate.tables import rule_of
from spct.scaling import judge
from spct.scoring import BENCHMARKS, score_benchmark

TASKS = [task for task, *_ in layouts.REALMISTAKE_TASKS]
MODELS = [model for model, *_ in layouts.REALMISTAKE_MODELS]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def all_rows(n: int = 4) -> list[dict]:
    return [r for task in TASKS for model in MODELS for r in layouts.realmistake_rows(task, model, n)]


def check(item, row: dict) -> None:
    assert item.conversation == [{"role": "user", "content": row["input"]}]
    assert item.responses == [row["llm_response"]]
    assert item.rewards == [1.0 if row["error_label"] == "no_error" else 0.0]
    assert item.id == row["metadata"]["id"] and item.subset == row["metadata"]["task_name"]
    assert item.meta == {"error_categories": row["error_categories"],
                         **{k: row["metadata"][k] for k in ("llm_response_model", "task_source", "difficulty")}}


# ------------------------------------------------------------------------------------- loaders
def test_each_file_of_the_layout_reads_as_items(tmp_path):
    root = layouts.realmistake(tmp_path / "data")
    for task in TASKS:
        for model in MODELS:
            items = load_items(root / task / f"{model}.jsonl")
            rows = layouts.realmistake_rows(task, model)
            assert items.format == "realmistake" and len(items) == len(rows)
            for item, row in zip(items, rows, strict=True):
                check(item, row)
                assert item.source == f"{model}.jsonl"
    subsets = {it.subset for task in TASKS for it in load_items(root / task / "gpt-4-0613.jsonl")}
    assert subsets == {"math_problem_generation", "finegrained_fact_verification", "answerability_classification"}


def test_the_whole_folder_reads_as_one_benchmark(tmp_path):
    """A folder of data files is read by load_dataset as one split (format detected), every
    record with its own id; the hub's layout (a split per responding model) is named by its
    splits."""
    root = layouts.realmistake(tmp_path / "data")
    items = load_items(str(root))
    assert items.format == "realmistake"
    assert sorted(it.id for it in items) == sorted(r["metadata"]["id"] for r in all_rows())
    assert len({it.id for it in items}) == len(items) == 24
    by_id = {r["metadata"]["id"]: r for r in all_rows()}
    for item in items:
        check(item, by_id[item.id])
    # The hub's layout: one config per task, a split per responding model, both named at once.
    task = TASKS[0]
    hub_like = {"path": str(root), "format": "realmistake", "split": "gpt4+llama2",
                "data_files": {"gpt4": f"{task}/gpt-4-0613.jsonl", "llama2": f"{task}/Llama-2-70b-chat-hf.jsonl"}}
    both = load_items(hub_like)
    assert [it.id for it in both] == [r["metadata"]["id"] for m in MODELS for r in layouts.realmistake_rows(task, m)]
    assert len(load_items({"path": str(root), "format": "realmistake"})) == 24


def test_detection_picks_the_layout_and_leaves_others_alone():
    row = layouts.realmistake_rows(TASKS[1], MODELS[1])[0]
    assert detect_format(row) == "realmistake"
    assert detect_format({"conversation": [], "responses": [], "rewards": [], "input": "x", "llm_response": "y",
                          "error_label": "error"}) == "items"
    assert detect_format({"prompt": "p", "completion": "c", "label": 1}) == "verifiable"
    with pytest.raises(DataError, match="cannot detect the format"):
        detect_format({"input": "x", "llm_response": "y"})  # no error_label: not this layout


def write(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(("label", "shown"), [("maybe", "'maybe'"), (1, "1"), (True, "True"), ("Error", "'Error'")])
def test_an_unknown_label_names_the_field_and_the_values(tmp_path, label, shown):
    rows = layouts.realmistake_rows(TASKS[0], MODELS[0], 2)
    rows[1]["error_label"] = label
    path = write(tmp_path / "gpt-4-0613.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_items(path)
    assert err.value.field == "error_label"
    assert str(err.value) == (f"{path}, line 2: field 'error_label': expected \"error\" or \"no_error\", "
                              f"got {shown}")
    items = load_items(path, skip_invalid=True)
    assert len(items) == 1 and items.skipped == 1


@pytest.mark.parametrize(("change", "field", "expected"), [
    ({"error_label": None}, "error_label", "missing"),
    ({"llm_response": ""}, "llm_response", "empty response"),
    ({"input": 3}, "input", "expected a string, got int"),
    ({"metadata": "m"}, "metadata", "expected an object, got str"),
    ({"metadata": {"id": 1.5}}, "metadata.id", "expected a string or an integer, got float"),
    ({"metadata": {"task_name": ["math"]}}, "metadata.task_name", "expected a string, got list"),
    ({"error_categories": "Reasoning Correctness"}, "error_categories", "expected a list of strings"),
])
def test_bad_records_name_their_field(tmp_path, change, field, expected):
    row = {**layouts.realmistake_rows(TASKS[2], MODELS[0], 1)[0], **change}
    path = write(tmp_path / "r.jsonl", [row])
    with pytest.raises(DataError, match="r.jsonl, line 1") as err:
        load_items(path, format="realmistake")
    assert err.value.field == field and expected in err.value.expected


def test_a_record_without_metadata_keeps_the_fallback_id_and_no_subset(tmp_path):
    row = {k: v for k, v in layouts.realmistake_rows(TASKS[0], MODELS[0], 1)[0].items() if k != "metadata"}
    (item,) = load_items(write(tmp_path / "plain.jsonl", [row]), format="realmistake")
    assert item.id == "plain:1" and item.subset is None and set(item.meta) == {"error_categories"}


_KEYS = ("input", "llm_response", "error_label", "error_categories", "metadata", "human_explanation")
_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=8)
                       | st.sampled_from(["error", "no_error"]),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                           st.sampled_from(["id", "task_name", "difficulty", "x"]), inner, max_size=3),
                       max_leaves=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_record_gives_an_item_or_a_clear_error(tmp_path, data):
    record = {k: data.draw(_values, label=k) for k in _KEYS if k == "input" or data.draw(st.booleans(), label=k)}
    path = write(tmp_path / "r.jsonl", [record])
    try:
        items = load_items(path, format="realmistake")
    except DataError as e:
        assert "r.jsonl, line 1" in str(e) and e.field is not None
        return
    (item,) = items
    assert item.rewards in ([0.0], [1.0]) and len(item.responses) == 1


# ------------------------------------------------------------------------------------- scoring
def grm_score(item_input: str, response: str) -> int:
    """A made-up GRM score in 1..10 (ties happen), the same whichever route asks."""
    return int(hashlib.sha256(f"{item_input}|{response}".encode()).hexdigest(), 16) % 10 + 1


def test_the_benchmark_reads_raw_files_and_item_files_and_scores_the_auc(tmp_path):
    metrics = pytest.importorskip("sklearn.metrics")
    from spct.config import DataConfig
    from spct.evaluate.command import resolve_benchmark

    root = layouts.realmistake(tmp_path / "data", n=6)
    assert BENCHMARKS["realmistake"].loader_format is None and rule_of("realmistake") == "realmistake"
    raw = resolve_benchmark(f"realmistake:{root}", DataConfig(), 0)
    assert raw[:2] == ("realmistake", "realmistake")
    # The same items written in spct's own layout are read by the same benchmark name.
    spct_file = tmp_path / "items.jsonl"
    spct_file.write_text("".join(json.dumps({"conversation": it.conversation, "responses": it.responses,
                                             "rewards": it.rewards, "id": it.id, "subset": it.subset}) + "\n"
                                 for it in raw[2]))
    as_items = resolve_benchmark(f"realmistake:{spct_file}", DataConfig(), 0)
    assert [(it.id, it.rewards) for it in as_items[2]] == [(it.id, it.rewards) for it in raw[2]]
    by_file = resolve_benchmark(str(root / TASKS[0] / "gpt-4-0613.jsonl"), DataConfig(), 0)
    assert by_file[1] == "realmistake"  # a raw file given by path is scored by its own rule

    items = raw[2]
    outcomes = [judge([[grm_score(it.conversation[0]["content"], it.responses[0])]], it.rewards) for it in items]
    got = score_benchmark("realmistake", items, outcomes)
    rows = {r["metadata"]["id"]: r for r in all_rows(6)}
    labels = [int(rows[it.id]["error_label"] == "no_error") for it in items]
    scores = [grm_score(rows[it.id]["input"], rows[it.id]["llm_response"]) for it in items]
    assert got["score"] == pytest.approx(metrics.roc_auc_score(labels, scores))
    # Detecting mistakes (label "error" positive) from the negated score is the same number.
    assert got["score"] == pytest.approx(metrics.roc_auc_score([1 - y for y in labels], [-s for s in scores]))
    assert got["n"] == 36 and got["unscored"] == 0
    for _, task_name, *_ in layouts.REALMISTAKE_TASKS:
        idx = [i for i, it in enumerate(items) if rows[it.id]["metadata"]["task_name"] == task_name]
        assert got[f"subset/{task_name}"] == pytest.approx(
            metrics.roc_auc_score([labels[i] for i in idx], [scores[i] for i in idx]))
    assert score_benchmark("realmistake", as_items[2], outcomes) == got
