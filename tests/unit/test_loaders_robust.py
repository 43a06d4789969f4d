"""Every malformed input is a DataError naming where and what; every valid input reads back.

One test per class of input (not per probe case): line breaks inside strings, byte-order marks,
encodings, numbers, JSON types, empty inputs, nesting and corrupt binary files, plus a property
test that anything save_items writes, load_items reads back equal.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spct.data import DataError, Item, load_items, save_items


def item(**over) -> dict:
    d = {"conversation": [{"role": "user", "content": "q"}], "responses": ["a", "b"], "rewards": [1, 0]}
    return {**d, **over}


def write(path: Path, *lines: str | bytes) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"])
def test_unicode_line_separators_inside_strings_round_trip(tmp_path, char):
    items = [Item([{"role": "user", "content": f"a{char}b"}], [f"x{char}", "y"], [1.0, 0.0], id="1", source="s")]
    loaded = load_items(save_items(items, tmp_path / "x.jsonl"))
    assert loaded == items


def test_a_utf8_byte_order_mark_is_read(tmp_path):
    for suffix in (".jsonl", ".json"):
        path = tmp_path / f"bom{suffix}"
        body = json.dumps(item()) if suffix == ".jsonl" else json.dumps([item()])
        path.write_bytes(b"\xef\xbb\xbf" + body.encode())
        assert len(load_items(path)) == 1


def test_bad_bytes_name_the_line_and_can_be_skipped(tmp_path):
    path = write(tmp_path / "x.jsonl", json.dumps(item()), b'{"conversation": "\xff"}', json.dumps(item()))
    with pytest.raises(DataError, match=r"x.jsonl, line 2: not valid UTF-8 \(byte 0xff"):
        load_items(path)
    loaded = load_items(path, skip_invalid=True)
    assert len(loaded) == 2 and loaded.skipped == 1 and "line 2" in loaded.errors[0]
    listed = tmp_path / "x.json"
    listed.write_bytes(b'[\n' + json.dumps(item()).encode() + b',\n"\xc3"]')
    with pytest.raises(DataError, match=r"x.json, line 3: not valid UTF-8"):
        load_items(listed, skip_invalid=True)


@pytest.mark.parametrize("where, value", [
    ("responses[0]", item(responses=["\ud800", "b"])),
    ("conversation[0].content", item(conversation=[{"role": "user", "content": "x\udfff"}])),
    ("meta.k", item(meta={"k": "\ud83d"})),
])
def test_lone_surrogates_are_refused_by_field(tmp_path, where, value):
    path = write(tmp_path / "x.jsonl", json.dumps(value), json.dumps(item()))
    with pytest.raises(DataError, match=f"line 1: field '{re.escape(where)}'.*surrogate"):
        load_items(path)
    assert len(load_items(path, skip_invalid=True)) == 1


@pytest.mark.parametrize("reward", ["1" + "0" * 400, "1e400", "-1e999", "NaN", "Infinity", "9" * 5000])
def test_numbers_outside_float_range_name_the_field(tmp_path, reward):
    path = write(tmp_path / "x.jsonl", '{"conversation": [{"role": "user", "content": "q"}], '
                 f'"responses": ["a", "b"], "rewards": [{reward}, 0]}}')
    with pytest.raises(DataError, match=r"x.jsonl, line 1: field 'rewards\[0\]': expected a finite number"):
        load_items(path)


def test_a_pretty_printed_json_object_is_one_record_and_other_json_says_how_it_was_read(tmp_path):
    record = {"conversation": [{"role": "user", "content": "q"}], "responses": ["a", "b"], "rewards": [1, 0]}
    path = write(tmp_path / "one.json", json.dumps(record, indent=2))
    assert [it.responses for it in load_items(path)] == [["a", "b"]]
    two = write(tmp_path / "two.json", json.dumps(record, indent=2) + "\n" + json.dumps(record, indent=2))
    with pytest.raises(DataError, match=r"two.json, line 1: malformed JSON .*read as JSON Lines, one record per line"):
        load_items(two)


@pytest.mark.parametrize("record, field", [
    ({"pair_id": 1, "question": "q", "response_A": "a", "response_B": "b", "label": ["A>B"]}, "label"),
    ({"pair_id": 1, "question": "q", "response_A": "a", "response_B": "b", "label": {"A": 1}}, "label"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "source": 7}, "source"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "id": ["x"]}, "id"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "subset": 3}, "subset"),
    (item(meta=[1, 2]), "meta"),
    (item(source=["s"]), "source"),
    (item(id={"a": 1}), "id"),
    (item(subset=1.5), "subset"),
])
def test_wrong_json_types_name_the_field(tmp_path, record, field):
    path = write(tmp_path / "x.jsonl", json.dumps(record))
    with pytest.raises(DataError, match=rf"line 1: field '{field}'"):
        load_items(path)


def test_a_record_that_is_not_an_object_is_named(tmp_path):
    path = write(tmp_path / "x.jsonl", json.dumps(item()), "5", "[1]")
    with pytest.raises(DataError, match="line 2: expected a JSON object, got int"):
        load_items(path)
    with pytest.raises(DataError, match="line 1: expected a JSON object, got int"):
        load_items(write(tmp_path / "y.jsonl", "5"), format="items")


@pytest.mark.parametrize("body", [b"", b"\n\n", b"   \n\t\n"])
def test_empty_inputs_are_errors_unless_allowed(tmp_path, body):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(body)
    with pytest.raises(DataError, match="empty.jsonl: no records"):
        load_items(path)
    assert load_items(path, allow_empty=True) == []


def test_skipping_every_record_is_an_error_that_says_so(tmp_path):
    path = write(tmp_path / "x.jsonl", json.dumps(item()).replace("[1, 0]", "[1, 1]"), "{oops")
    with pytest.raises(DataError, match=r"every record was invalid \(2 skipped\)"):
        load_items(path, skip_invalid=True)
    assert load_items(path, skip_invalid=True, allow_empty=True).skipped == 2


def test_deep_nesting_is_refused_not_a_crash(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = write(tmp_path / "x.jsonl", json.dumps(item()), deep)
    with pytest.raises(DataError, match="line 2: JSON nested too deeply"):
        load_items(path)
    assert len(load_items(path, skip_invalid=True)) == 1
    listed = tmp_path / "x.json"
    listed.write_text("[" + deep + "]")
    with pytest.raises(DataError, match="nested too deeply"):
        load_items(listed)


def test_a_corrupt_parquet_file_is_named(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(DataError, match=r"x.parquet: not a readable Parquet file"):
        load_items(path)


_text = st.text(min_size=1).filter(lambda s: s.strip())
_items = st.builds(
    lambda conv, responses, data: Item(
        [{"role": r, "content": c} for r, c in conv],
        responses,
        data.draw(st.lists(st.floats(-1e300, 1e300, allow_nan=False), min_size=len(responses),
                           max_size=len(responses), unique=True)),
        data.draw(st.none() | st.text()),
        data.draw(st.none() | st.text()),
        data.draw(st.none() | st.text()),
        data.draw(st.dictionaries(st.text(), st.text() | st.integers(-(2**53), 2**53) | st.booleans(), max_size=3)),
    ),
    st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text()), min_size=1, max_size=3),
    st.lists(_text, min_size=1, max_size=4),
    st.data(),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_items, min_size=1, max_size=4))
def test_anything_save_items_writes_loads_back_equal(tmp_path_factory, items):
    """Equal field for field; an item saved without an id or source gets the loader's stable
    defaults (file stem:line, file name), as any items file does."""
    path = save_items(items, tmp_path_factory.mktemp("prop") / "items.jsonl")
    expected = [
        dataclasses.replace(it, id=f"items:{i + 1}" if it.id is None else it.id, source=it.source or "items.jsonl")
        for i, it in enumerate(items)
    ]
    assert load_items(path) == expected
