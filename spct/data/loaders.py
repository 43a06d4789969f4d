"""Read reward-model benchmarks in their original formats into the one item schema.

Every record is converted (or rejected with a DataError naming the file, the line or record
and the field) so that a scoring run never silently evaluates on less data than it claims.
Local JSON Lines, JSON lists and Parquet files are read directly; any other name is treated
as a Hugging Face hub dataset, so the same call works on a laptop with an export and on a
networked machine with the hub copy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spct.item import DataError, Item, validate

logger = logging.getLogger("spct.data")

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


class Items(list):
    """The loaded items, plus how many records were skipped and why (with skip_invalid=True)."""

    def __init__(
        self, items: Iterable[Item] = (), skipped: int = 0, errors: list[str] | None = None
    ):
        super().__init__(items)
        self.skipped = skipped
        self.errors: list[str] = errors if errors is not None else []
        self.format: str | None = None  # the format given or detected


@dataclass
class _Record:
    """One raw record with its location (for errors) and the fallback id used when it has none."""

    data: Any
    where: str
    key: str
    source: str


# --- field helpers: each names the field of the original format in its error -------------------


def _field(rec: _Record, name: str) -> Any:
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
    """A list of {role, content} turns; extra keys (e.g. RMB's 'language') are dropped."""
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


def _id(rec: _Record, *names: str) -> str:
    for name in names or ("id",):
        value = rec.data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise DataError(rec.where, name, f"expected a string or an integer, got {type(value).__name__}")
        return str(value)
    return rec.key


def _source(rec: _Record) -> str:
    own = rec.data.get("source")
    if own is not None and not isinstance(own, str):
        raise DataError(rec.where, "source", f"expected a string, got {type(own).__name__}")
    return own or rec.source


def _user(prompt: Any, where: str, name: str = "prompt") -> list[dict[str, str]]:
    return [{"role": "user", "content": _text(prompt, name, where, "prompt")}]


# --- converters: one original-format record -> items --------------------------------------------


def _from_items(rec: _Record) -> list[Item]:
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


def _from_pairwise(rec: _Record) -> list[Item]:
    """RewardBench (strings), UltraFeedback-binarized and Skywork (message lists)."""
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
        conversation, responses, [1.0, 0.0], _id(rec, "id", "prompt_id"), _source(rec), subset
    )
    return [validate(item, rec.where)]


def _from_judgebench(rec: _Record) -> list[Item]:
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


def _styles(rec: _Record, name: str) -> list[str]:
    value = _field(rec, name)
    if not isinstance(value, list) or len(value) != 3:
        raise DataError(rec.where, name, "expected a list of 3 responses (one per style)")
    return [_text(v, f"{name}[{i}]", rec.where) for i, v in enumerate(value)]


def _from_rmbench(rec: _Record) -> list[Item]:
    """All 9 (chosen style i, rejected style j) pairs, kept so that RM-Bench's accuracies can be
    scored later: i < j is its hard set, i == j normal, i > j easy."""
    conversation = _user(_field(rec, "prompt"), rec.where)
    chosen, rejected = _styles(rec, "chosen"), _styles(rec, "rejected")
    group, source, subset = _id(rec), _source(rec), rec.data.get("subset")
    return [
        validate(
            Item(
                [dict(t) for t in conversation],
                [chosen[i], rejected[j]],
                [1.0, 0.0],
                f"{group}:{i}-{j}",
                source,
                subset,
                {"group": group, "chosen_style": i, "rejected_style": j},
            ),
            rec.where,
        )
        for i in range(3)
        for j in range(3)
    ]


def _from_rmb_pairwise(rec: _Record) -> list[Item]:
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


def _from_rmb_bon(rec: _Record) -> list[Item]:
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


CONVERTERS: dict[str, Callable[[_Record], list[Item]]] = {
    "items": _from_items,
    "pairwise": _from_pairwise,
    "judgebench": _from_judgebench,
    "rmbench": _from_rmbench,
    "rmb_pairwise": _from_rmb_pairwise,
    "rmb_bon": _from_rmb_bon,
}

# Checked in order; the first whose keys are all present wins (rmbench before pairwise: same keys).
_SIGNATURES: dict[str, tuple[str, ...]] = {
    "items": ("conversation", "responses", "rewards"),
    "judgebench": ("pair_id", "question", "response_A", "response_B", "label"),
    "rmb_pairwise": ("pair_uid", "conversation_input", "chosen", "reject"),
    "rmb_bon": ("bon_uid", "conversation_input", "bon_best", "loser_list"),
    "rmbench": ("prompt", "chosen", "rejected"),
    "pairwise": ("chosen", "rejected"),
}


def detect_format(record: Any, where: str = "<record>") -> str:
    """Name the format of a record from its keys (RM-Bench vs pairwise: lists of 3 strings)."""
    if not isinstance(record, dict):
        raise DataError(where, None, f"expected a JSON object, got {type(record).__name__}")
    for name, keys in _SIGNATURES.items():
        if not all(k in record for k in keys):
            continue
        if name == "rmbench" and not _is_string_list(record["chosen"]):
            continue
        return name
    known = "; ".join(f"{name} ({', '.join(keys)})" for name, keys in _SIGNATURES.items())
    raise DataError(
        where,
        None,
        f"cannot detect the format from the keys {sorted(record)}; known formats: {known}. Pass format=...",
    )


def _is_string_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


# --- readers: source -> raw records with their locations ---------------------------------------


def _parse_json(text: str, path: Path, lineno: int | None = None) -> Any:
    """json.loads whose every failure is a DataError naming the file and line (`lineno` for a
    JSON Lines record; for a whole JSON file, the line the parser stopped at)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"{path}, line {lineno or e.lineno}"
        raise DataError(where, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        where = f"{path}, line {lineno}" if lineno else str(path)
        raise DataError(where, None, "JSON nested too deeply to read") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        where = f"{path}, line {lineno}" if lineno else str(path)
        raise DataError(where, None, f"malformed JSON ({e})") from None


def _decode(raw: bytes, path: Path, lineno: int | None = None) -> str:
    """UTF-8 text; a bad byte is a DataError naming its line (`lineno`, or counted in `raw`)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = lineno or raw[: e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}, line {line}", None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column})"
        ) from None


def _read_jsonl(path: Path, raw: bytes) -> Iterator[_Record | DataError]:
    # Lines end at \n only: U+2028, U+2029 and U+0085 are legal inside JSON strings, and
    # str.splitlines would cut a record there.
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}, line {lineno}"
        try:
            text = _decode(line, path, lineno)
            if not text.strip():
                continue
            data = _parse_json(text, path, lineno)
        except DataError as e:
            yield e
            continue
        yield _Record(data, where, f"{path.stem}:{lineno}", path.name)


def _read_parquet(path: Path) -> Iterator[_Record | DataError]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError and others for a bad file
        raise DataError(str(path), None, f"not a readable Parquet file ({type(e).__name__}: {e})") from None
    for i, data in enumerate(rows):
        yield _Record(data, f"{path}, row {i}", f"{path.stem}:{i}", path.name)


def _read_file(path: Path) -> Iterator[_Record | DataError]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet(path)
        return
    if suffix not in (".json", ".jsonl"):
        raise DataError(
            str(path), None, f"unsupported file type; expected one of {', '.join(FILE_SUFFIXES)}"
        )
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
    if suffix == ".jsonl" or not raw.lstrip().startswith(b"["):
        # A .json that is not a list is read as JSON Lines: that is what Dataset.to_json writes.
        yield from _read_jsonl(path, raw)
        return
    records = _parse_json(_decode(raw, path), path)
    for i, data in enumerate(records):
        yield _Record(data, f"{path}, record {i}", f"{path.stem}:{i}", path.name)


def _read_hub(name: str, split: str, limit: int | None) -> Iterator[_Record | DataError]:
    import datasets

    dataset = datasets.load_dataset(name, split=split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    for i, data in enumerate(dataset):
        yield _Record(dict(data), f"{name} (split {split}), row {i}", f"{name}:{split}:{i}", name)


def _records(source: str | Path, split: str, limit: int | None) -> Iterator[_Record | DataError]:
    path = Path(source)
    if path.is_file():
        return _read_file(path)
    if path.exists():
        raise DataError(
            str(path), None, f"expected a file ({', '.join(FILE_SUFFIXES)}), got a directory"
        )
    if isinstance(source, Path) or path.suffix.lower() in FILE_SUFFIXES:
        raise FileNotFoundError(f"{source}: no such file")
    return _read_hub(str(source), split, limit)


# --- public API ----------------------------------------------------------------------------------


def load_items(
    source: str | Path,
    format: str | None = None,
    skip_invalid: bool = False,
    split: str = "train",
    limit: int | None = None,
    allow_empty: bool = False,
) -> Items:
    """Load a benchmark file or hub dataset as Items.

    `format` is one of CONVERTERS; None detects it from the first record's keys. `limit` bounds
    the number of source records read, not items, so an RM-Bench record's 9 pairs stay together.
    With skip_invalid=False the first bad record raises DataError; with True bad records are
    skipped, counted in `.skipped`, their messages kept in `.errors`, and one warning is logged.
    A record whose format cannot be detected always raises: that is a wrong file, not a bad row.
    No items at all (an empty file, or every record skipped) is a DataError unless allow_empty.
    """
    if format is not None and format not in CONVERTERS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(CONVERTERS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    out = Items()
    convert = CONVERTERS[format] if format else None
    for n, rec in enumerate(_records(source, split, limit)):
        if limit is not None and n >= limit:
            break
        try:
            if isinstance(rec, DataError):
                raise rec
            if not isinstance(rec.data, dict):
                raise DataError(rec.where, None, f"expected a JSON object, got {type(rec.data).__name__}")
            if convert is None:
                format = detect_format(rec.data, rec.where)
                convert = CONVERTERS[format]
            out.extend(convert(rec))
        except DataError as e:
            if not skip_invalid or (convert is None and not isinstance(rec, DataError)):
                raise
            out.skipped += 1
            out.errors.append(str(e))
    out.format = format
    if not out and not allow_empty:
        if out.skipped:
            raise DataError(str(source), None, f"every record was invalid ({out.skipped} skipped); "
                            f"first: {out.errors[0]}")
        raise DataError(str(source), None, "no records (an empty file); pass allow_empty=True if that is expected")
    if out.skipped:
        logger.warning(
            "%s: skipped %d invalid record(s); first: %s", source, out.skipped, out.errors[0]
        )
    return out


def save_items(items: Iterable[Item], path: str | Path) -> Path:
    """Write items as JSON Lines of the item schema (load_items reads them back unchanged)."""
    path = Path(path)
    checked = [validate(item, f"item {i}") for i, item in enumerate(items)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for item in checked:
            f.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
    return path


def load_splits(kind: str = "synthetic", *, seed: int = 0, splits: Iterable[str] = ("train", "validation", "test"),
                train: str | None = None, validation: str | None = None, test: str | None = None,
                format: str | None = None, skip_invalid: bool = False, train_size: int = 0,
                validation_size: int = 0, test_size: int = 0, task: dict | None = None) -> dict[str, list[Item]]:
    """A run's data splits: generated for kind "synthetic" (`<split>_size` items of the task
    `task`, a dict of SyntheticConfig fields, drawn with `seed`), otherwise read from the file or
    hub id each split names (a split left null is absent). The arguments are the fields of the
    `data` config: `load_splits(seed=seed, **dataclasses.asdict(cfg.data))`."""
    if kind == "synthetic":
        from spct.data.synthetic import SyntheticConfig, make_splits

        sizes = {"train": train_size, "validation": validation_size, "test": test_size}
        return make_splits(SyntheticConfig(**(task or {})), seed, {s: sizes[s] for s in splits})
    paths = {"train": train, "validation": validation, "test": test}
    return {s: load_items(paths[s], format=format, skip_invalid=skip_invalid, split=s)
            for s in splits if paths[s] is not None}
