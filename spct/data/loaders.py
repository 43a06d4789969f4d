"""Read datasets in their original formats into the one item schema.

Every record is converted (or rejected with a DataError naming the file, the line or record
and the field) so that a run never silently trains or evaluates on less data than it claims.
A source is a local file (JSON Lines, JSON, Parquet, CSV), a folder saved by `datasets`
(`save_to_disk`) or holding data files, or any Hugging Face hub dataset, with its split,
subset (config), data_dir, revision and data_files, and a column mapping for files whose keys
differ from the format's (`Source`). The formats are in spct.data.formats; docs/data.md shows
each layout.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spct.data.formats import CONVERTERS, FORMATS, GROUPED, HUB_SPLITS, Record, Skip, detect_format
from spct.item import DataError, Item, validate

logger = logging.getLogger("spct.data")

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".jsonl.gz", ".json.gz")


class Items(list):
    """The loaded items, plus the records left out: `skipped` invalid ones (skip_invalid=True,
    their messages in `errors`) and `dropped`, per reason, those the format itself leaves out
    (ties, another split's rows)."""

    def __init__(
        self, items: Iterable[Item] = (), skipped: int = 0, errors: list[str] | None = None
    ):
        super().__init__(items)
        self.skipped = skipped
        self.errors: list[str] = errors if errors is not None else []
        self.dropped: dict[str, int] = {}
        self.format: str | None = None  # the format given or detected


@dataclass(frozen=True)
class Source:
    """Where a split's records come from and how to read them.

    `path`: a local file or folder, or a hub dataset id. For a hub dataset or a folder:
    `split` (default: what the format's set calls this split, else spct's split name; a slice
    such as "train[:95%]" works), `subset` (the config name), `data_dir`, `revision`,
    `data_files`. `format`: one of spct.data.formats.FORMATS, or null to detect it from the
    first record's keys. `columns`: {the format's key: the key in your records}."""

    path: str
    split: str | None = None
    subset: str | None = None
    data_dir: str | None = None
    revision: str | None = None
    data_files: Any = None
    format: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)

    def hub_split(self, split: str) -> str:
        return self.split or HUB_SPLITS.get(self.format or "", {}).get(split, split)

    def describe(self, split: str | None = None) -> str:
        """The source in words; with spct's `split`, the set's split it reads."""
        shown = dataclasses.replace(self, split=self.hub_split(split)) if split and not Path(self.path).is_file() \
            else self
        extra = [f"{f.name}={getattr(shown, f.name)}" for f in dataclasses.fields(shown)[1:]
                 if getattr(shown, f.name) not in (None, {})]
        return f"{self.path}" + (f" ({', '.join(extra)})" if extra else "")


SOURCE_KEYS = tuple(f.name for f in dataclasses.fields(Source))


def to_source(value: Any, key: str = "source", format: str | None = None,
              columns: Mapping[str, str] | None = None) -> Source:
    """A split's data as the config gives it: a path or hub id, or a mapping of Source's
    fields. `format` and `columns` are the defaults a mapping may override. Errors name `key`."""
    if isinstance(value, Source):
        return value
    if isinstance(value, str | Path):
        value = {"path": str(value)}
    if not isinstance(value, Mapping):
        raise DataError(key, None, f"expected a path, a hub dataset id or a mapping of {', '.join(SOURCE_KEYS)}; "
                        f"got {type(value).__name__}")
    unknown = sorted(set(value) - set(SOURCE_KEYS))
    if unknown:
        raise DataError(key, unknown[0], f"not a source setting; expected one of {', '.join(SOURCE_KEYS)}")
    spec = {"format": format, "columns": dict(columns or {}), **{k: v for k, v in value.items() if v is not None}}
    if not isinstance(spec.get("path"), str) or not spec["path"]:
        raise DataError(key, "path", "a local file or folder, or a hub dataset id")
    for name in ("split", "subset", "data_dir", "revision", "format"):
        if spec.get(name) is not None and not isinstance(spec[name], str):
            raise DataError(key, name, f"expected a string, got {type(spec[name]).__name__}")
    if spec["format"] is not None and spec["format"] not in FORMATS:
        raise DataError(key, "format", f"null (detected from the keys) or one of {', '.join(FORMATS)}, "
                        f"got {spec['format']!r}")
    cols = spec["columns"]
    if not isinstance(cols, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in cols.items()):
        raise DataError(key, "columns", "expected a mapping {the format's key: your key}, strings both")
    return Source(**{**spec, "columns": dict(cols)})


# --- readers: source -> raw records with their locations ---------------------------------------


def _number(digits: str) -> int | float:
    """A JSON integer; one longer than Python converts (4300 digits) becomes a float (inf), so
    the field that holds it is named by the item's checks rather than the whole line refused."""
    try:
        return int(digits)
    except ValueError:
        return float(digits)


def _parse_json(text: str, path: Path, lineno: int | None = None) -> Any:
    """json.loads whose every failure is a DataError naming the file and line (`lineno` for a
    JSON Lines record; for a whole JSON file, the line the parser stopped at)."""
    try:
        return json.loads(text, parse_int=_number)
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


def _read_jsonl(path: Path, raw: bytes, hint: str = "") -> Iterator[Record | DataError]:
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
            yield DataError(e.where, e.field, e.expected + hint) if hint else e
            continue
        yield Record(data, where, f"{path.stem}:{lineno}", path.name)


def _read_parquet(path: Path) -> Iterator[Record | DataError]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError and others for a bad file
        raise DataError(str(path), None, f"not a readable Parquet file ({type(e).__name__}: {e})") from None
    for i, data in enumerate(rows):
        yield Record(data, f"{path}, row {i}", f"{path.stem}:{i}", path.name)


def _read_csv(path: Path) -> Iterator[Record | DataError]:
    """CSV with a header row. Every cell is read as text (a response "42" stays a string);
    the formats read numbers and labels from text, and a cell holding a JSON list (messages)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    except Exception as e:  # pandas raises ParserError, UnicodeDecodeError, EmptyDataError and others
        raise DataError(str(path), None, f"not a readable CSV file ({type(e).__name__}: {e})") from None
    for i, data in enumerate(frame.to_dict("records")):
        yield Record(data, f"{path}, row {i + 1} (after the header)", f"{path.stem}:{i}", path.name)


def _read_file(path: Path) -> Iterator[Record | DataError]:
    suffix = path.suffix.lower()
    gz = suffix == ".gz"  # train.jsonl.gz, as HelpSteer and HH-RLHF ship
    if gz:
        suffix = Path(path.stem).suffix.lower()
    if gz and suffix not in (".json", ".jsonl"):
        raise DataError(str(path), None, f"unsupported file type; expected one of {', '.join(FILE_SUFFIXES)}")
    if suffix == ".parquet":
        yield from _read_parquet(path)
        return
    if suffix == ".csv":
        yield from _read_csv(path)
        return
    if suffix not in (".json", ".jsonl"):
        raise DataError(
            str(path), None, f"unsupported file type; expected one of {', '.join(FILE_SUFFIXES)}"
        )
    raw = path.read_bytes()
    if gz:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(str(path), None, f"not a readable gzip file ({e})") from None
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
    if suffix == ".json" and raw.lstrip().startswith(b"{"):
        # One object spread over lines (pretty-printed) is one record; otherwise a .json that is
        # not a list is JSON Lines, which is what Dataset.to_json writes.
        try:
            whole = json.loads(raw, parse_int=_number)
        except (ValueError, RecursionError):
            whole = None
        if isinstance(whole, dict):
            yield Record(whole, f"{path}, record 0", f"{path.stem}:0", path.name)
            return
        yield from _read_jsonl(path, raw, hint=" (read as JSON Lines, one record per line: the file is neither one "
                                              "JSON object nor a list of them)")
        return
    if suffix == ".jsonl" or not raw.lstrip().startswith(b"["):
        yield from _read_jsonl(path, raw)
        return
    records = _parse_json(_decode(raw, path), path)
    for i, data in enumerate(records):
        yield Record(data, f"{path}, record {i}", f"{path.stem}:{i}", path.name)


def _rows(dataset: Any, name: str, split: str, limit: int | None) -> Iterator[Record]:
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    for i, data in enumerate(dataset):
        yield Record(dict(data), f"{name} (split {split}), row {i}", f"{name}:{split}:{i}", name)


def _read_saved(path: Path, split: str) -> Iterator[Record]:
    """A folder written by Dataset.save_to_disk (one split) or DatasetDict.save_to_disk."""
    import datasets

    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(str(path), None, f"no split {split!r} in this saved dataset; it has {', '.join(data)} "
                            "(name one with split=...)")
        data = data[split]
    return _rows(data, str(path), split, None)


def _read_hub(src: Source, split: str, limit: int | None) -> Iterator[Record]:
    """A hub dataset (or a local folder of data files, read the same way)."""
    import datasets

    kwargs = {k: getattr(src, k) for k in ("data_dir", "revision", "data_files") if getattr(src, k) is not None}
    try:
        dataset = datasets.load_dataset(src.path, src.subset, split=split, **kwargs)
    except (ValueError, FileNotFoundError) as e:  # an unknown split, config or folder: the message says which
        raise DataError(src.describe(), None, f"cannot read split {split!r}: {type(e).__name__}: {e}") from None
    return _rows(dataset, src.path, split, limit)


def _records(src: Source, split: str, limit: int | None) -> Iterator[Record | DataError]:
    path = Path(src.path).expanduser()
    if path.is_file():
        return _read_file(path)
    hub_split = src.hub_split(split)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _read_saved(path, hub_split)
        data = (".jsonl", ".json", ".parquet", ".csv", ".arrow", ".gz")
        if not any(f.suffix.lower() in data for f in path.rglob("*") if f.is_file()):
            raise DataError(str(path), None, "expected a file, a folder written by datasets' save_to_disk, or a "
                            f"folder of data files ({', '.join(data)}); this folder has none")
        return _read_hub(dataclasses.replace(src, path=str(path)), hub_split, limit)
    if src.path.lower().endswith(FILE_SUFFIXES) or src.path.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"{src.path}: no such file")
    return _read_hub(src, hub_split, limit)


def _mapped(rec: Record, columns: Mapping[str, str]) -> Record:
    """The record with its keys renamed to the format's (columns: {format key: record key})."""
    if not columns or not isinstance(rec.data, dict):
        return rec
    data = dict(rec.data)
    for ours, theirs in columns.items():
        if theirs not in rec.data:
            raise DataError(rec.where, theirs, f"missing (columns maps the format's {ours!r} to it)")
        data[ours] = rec.data[theirs]
        if theirs != ours and theirs not in columns:
            del data[theirs]
    return dataclasses.replace(rec, data=data)


def _named(error: DataError, columns: Mapping[str, str]) -> DataError:
    """An error about a mapped key, named by the record's own key."""
    if not columns or error.field is None:
        return error
    head, sep, rest = error.field.partition(".")
    root, bracket, tail = head.partition("[")
    if root not in columns:
        return error
    return DataError(error.where, columns[root] + bracket + tail + sep + rest, error.expected)


def _grouped(records: Iterator[Record | DataError], key: str) -> Iterator[list[Record] | DataError]:
    """Consecutive records with the same value of `key`, as lists."""
    def value(rec: Record) -> Any:  # a record that is not an object stands alone (and fails as one)
        return rec.data.get(key) if isinstance(rec.data, dict) else object()

    group: list[Record] = []
    for rec in records:
        if isinstance(rec, DataError):
            yield rec
            continue
        if group and value(rec) != value(group[0]):
            yield group
            group = []
        group.append(rec)
    if group:
        yield group


# --- public API ----------------------------------------------------------------------------------


def load_items(
    source: str | Path | Source | Mapping[str, Any],
    format: str | None = None,
    skip_invalid: bool = False,
    split: str = "train",
    limit: int | None = None,
    allow_empty: bool = False,
    columns: Mapping[str, str] | None = None,
) -> Items:
    """Load a file, a folder or a hub dataset as Items.

    `source` is a path or hub id, a `Source`, or a mapping of its fields; `format` and
    `columns` are defaults a Source's own override. The format is one of
    spct.data.formats.FORMATS; None detects it from the first record's keys. `split` is spct's
    split (train, validation, test); `Source.hub_split` names the set's own. `limit` bounds the
    number of source records read, not items, so an RM-Bench record's 9 pairs stay together.
    With skip_invalid=False the first bad record raises DataError; with True bad records are
    skipped, counted in `.skipped`, their messages kept in `.errors`, and one warning is logged.
    A record whose format cannot be detected always raises: that is a wrong file, not a bad row.
    Records the format leaves out by its own rule (ties) are counted in `.dropped`.
    No items at all (an empty file, or every record skipped) is a DataError unless allow_empty.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    src = to_source(source, format=format, columns=columns)
    format = src.format
    out = Items()
    records = _records(src, split, limit)
    if format in GROUPED:
        convert, key = GROUPED[format]
        records = _grouped(records, key)
    else:
        convert = CONVERTERS[format] if format else None
    for n, rec in enumerate(records):
        if limit is not None and n >= limit:
            break
        try:
            if isinstance(rec, DataError):
                raise rec
            batch = rec if isinstance(rec, list) else [rec]
            batch = [_mapped(r, src.columns) for r in batch]
            for r in batch:
                if not isinstance(r.data, dict):
                    raise DataError(r.where, None, f"expected a JSON object, got {type(r.data).__name__}")
                r.split = split
            if convert is None:
                format = detect_format(batch[0].data, batch[0].where)
                if format in GROUPED:
                    raise DataError(batch[0].where, None, f"looks like {format!r}, whose items span several "
                                    f"records: pass format={format}")
                convert = CONVERTERS[format]
            out.extend(convert(batch if isinstance(rec, list) else batch[0]))
        except Skip as s:
            out.dropped[s.reason] = out.dropped.get(s.reason, 0) + 1
        except DataError as e:
            if not skip_invalid or (convert is None and not isinstance(rec, DataError)):
                raise _named(e, src.columns) from None
            out.skipped += 1
            out.errors.append(str(_named(e, src.columns)))
    out.format = format
    name = src.describe(split)
    if not out and not allow_empty:
        if out.skipped:
            raise DataError(name, None, f"every record was invalid ({out.skipped} skipped); "
                            f"first: {out.errors[0]}")
        if out.dropped:
            raise DataError(name, None, f"no items: every record was left out ({_counts(out.dropped)})")
        raise DataError(name, None, "no records (an empty file); pass allow_empty=True if that is expected")
    if out.skipped:
        logger.warning("%s: skipped %d invalid record(s); first: %s", name, out.skipped, out.errors[0])
    if out.dropped:
        logger.info("%s: left out %s", name, _counts(out.dropped))
    return out


def _counts(dropped: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items(), key=lambda kv: -kv[1]))


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
                train: Any = None, validation: Any = None, test: Any = None,
                format: str | None = None, columns: Mapping[str, str] | None = None, skip_invalid: bool = False,
                train_size: int = 0, validation_size: int = 0, test_size: int = 0,
                task: dict | None = None) -> dict[str, list[Item]]:
    """A run's data splits: generated for kind "synthetic" (`<split>_size` items of the task
    `task`, a dict of SyntheticConfig fields, drawn with `seed`), otherwise read from the source
    each split names (a path, a hub id or a mapping of Source's fields; a split left null is
    absent). The arguments are the fields of the `data` config:
    `load_splits(seed=seed, **dataclasses.asdict(cfg.data))`."""
    if kind == "synthetic":
        from spct.data.synthetic import SyntheticConfig, make_splits

        sizes = {"train": train_size, "validation": validation_size, "test": test_size}
        return make_splits(SyntheticConfig(**(task or {})), seed, {s: sizes[s] for s in splits})
    given = {"train": train, "validation": validation, "test": test}
    out = {}
    for s in splits:
        if given[s] is not None:
            src = to_source(given[s], f"data.{s}", format, columns)
            out[s] = load_items(src, skip_invalid=skip_invalid, split=s)
            logger.info("data.%s: %d items from %s (%s)", s, len(out[s]), src.describe(s), out[s].format)
    return out
