"""GRM prompt templates: Jinja2 files that are configuration, not code.

A template's first line may declare its score range in a Jinja comment,
`{#- spct: low=1 high=10 -#}`, so the range travels with the wording that asks for it and a
swapped template cannot disagree with the parser. Without the header the range is 1..10.
`{#- spct: output=choice -#}` declares a judge that picks one response (`\boxed{j}`, j its
prompt position) instead of scoring each: its pick reads as score 1 for the chosen response and
0 for the others, so Voting@k over picks is a majority vote (the LLM-as-a-judge baseline).

Variables a template sees: `conversation` (the list of {role, content} turns), `responses`
(already in prompt order), `n`, `low` and `high` (the declared range), and for convenience
`question` (content of the last user turn, or of the last turn when no turn is a user's)
and `history` (the turns before it); `reference`, a reference answer to judge against, or
None (the shipped templates show it only when given: build_prompt's `with_reference`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import jinja2

from spct.grm.rules import check_order, hint_position
from spct.item import DataError, Item

TEMPLATE_DIR = Path(__file__).parent / "templates"
BUILTIN_TEMPLATES: tuple[str, ...] = ("default", "single", "compact", "judge")
OUTPUTS = ("scores", "choice")
DEFAULT_LOW, DEFAULT_HIGH = 1, 10
HINT_LINE = "The best response is: Response {j}"

_HEADER = re.compile(r"\{#-?\s*spct:(?P<body>.*?)-?#\}")
_SETTING = re.compile(r"(?P<key>\w+)\s*=\s*(?P<value>\S+)")

_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
    autoescape=False,
)


@dataclass(frozen=True)
class Template:
    """A loaded prompt template: `name` is the built-in name or the file's path."""

    name: str
    source: str
    low: int = DEFAULT_LOW
    high: int = DEFAULT_HIGH
    output: str = "scores"  # "choice": picks one response (low, high = 0, 1: its one-hot reading)

    @property
    def choice(self) -> bool:
        return self.output == "choice"

    def __post_init__(self) -> None:
        for key in ("low", "high"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"template {self.name}: {key} must be an integer, got {value!r}")
        if self.low >= self.high:
            raise ValueError(
                f"template {self.name}: low ({self.low}) must be below high ({self.high})"
            )

    @classmethod
    def from_source(cls, source: str, name: str = "<string>") -> Template:
        """Parse the range header and check the Jinja syntax; errors name `name` and the line."""
        low, high, output = _read_header(source, name)
        _compile(source, name)
        return cls(name=name, source=source, low=low, high=high, output=output)

    def render(self, conversation: list[dict[str, str]], responses: Sequence[str], reference: str | None = None) -> str:
        """The prompt text for responses already in prompt order, trailing whitespace removed."""
        q = _question_index(conversation)
        variables: dict[str, Any] = {
            "conversation": conversation,
            "responses": list(responses),
            "n": len(responses),
            "low": self.low,
            "high": self.high,
            "question": conversation[q]["content"],
            "history": conversation[:q],
            "reference": reference,
        }
        try:
            text = _compile(self.source, self.name).render(variables)
        except jinja2.TemplateError as e:
            raise ValueError(f"template {self.name}: rendering failed: {e}") from e
        return text.rstrip()


def load_template(name_or_path: str | os.PathLike[str]) -> Template:
    """A built-in template by name ("default", "single", "compact") or a .j2 file by path.

    Loaded templates are cached; a file edited since its last load is read again.
    """
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_TEMPLATES:
        path = TEMPLATE_DIR / f"{name_or_path}.j2"
        name = name_or_path
    else:
        path = Path(name_or_path).expanduser()
        name = str(path)
    try:
        stat = path.stat()
    except OSError:
        raise FileNotFoundError(
            f"prompt template not found: {path} (expected a path to a .j2 file or one of the "
            f"built-in names: {', '.join(BUILTIN_TEMPLATES)})"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"prompt template {path} is not a file")
    return _load(str(path), name, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _load(path: str, name: str, mtime_ns: int, size: int) -> Template:
    with open(path, encoding="utf-8") as f:
        return Template.from_source(f.read(), name)


def compile_file(path: str | os.PathLike[str]) -> jinja2.Template:
    """A plain Jinja file (no score range: e.g. a meta RM's input template), compiled with the
    GRM templates' settings; a missing file or a syntax error names the file (and line)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"template not found: {path} (expected a .j2 file)")
    return _compile(path.read_text(encoding="utf-8"), str(path))


@functools.lru_cache(maxsize=64)
def _compile(source: str, name: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"{name}:{e.lineno}: template syntax error: {e.message}") from None


def _read_header(source: str, name: str) -> tuple[int, int, str]:
    first_line = source.split("\n", 1)[0]
    match = _HEADER.match(first_line.strip())
    if match is None:
        return DEFAULT_LOW, DEFAULT_HIGH, "scores"
    body = match.group("body").strip()
    settings: dict[str, int] = {}
    output = "scores"
    for part in _SETTING.finditer(body):
        key, value = part.group("key"), part.group("value")
        if key == "output":
            if value not in OUTPUTS:
                raise ValueError(f"{name}:1: spct header: output must be one of {', '.join(OUTPUTS)}, got '{value}'")
            output = value
            continue
        if key not in ("low", "high"):
            raise ValueError(
                f"{name}:1: unknown setting '{key}' in the spct header (known: low, high, output)"
            )
        try:
            settings[key] = int(value)
        except ValueError:
            raise ValueError(
                f"{name}:1: spct header: {key} must be an integer, got '{value}'"
            ) from None
    if _SETTING.sub("", body).strip():
        raise ValueError(f"{name}:1: spct header: expected 'low=<int> high=<int>' or 'output=choice', got '{body}'")
    if output == "choice":
        if settings:
            raise ValueError(f"{name}:1: spct header: a choice template has no score range (low, high)")
        return 0, 1, output
    low = settings.get("low", DEFAULT_LOW)
    high = settings.get("high", DEFAULT_HIGH)
    if low >= high:
        raise ValueError(f"{name}:1: spct header: low ({low}) must be below high ({high})")
    return low, high, output


def _question_index(conversation: list[dict[str, str]]) -> int:
    for i in range(len(conversation) - 1, -1, -1):
        if conversation[i]["role"] == "user":
            return i
    return len(conversation) - 1


def _fields(
    item: Item | Mapping[str, Any],
) -> tuple[list[dict[str, str]], list[str], list[float] | None, str]:
    """Conversation, responses and (optional) rewards, checked enough to render them safely.

    Rewards are optional here: scoring an unlabeled item needs none, only a hint does.
    """
    if isinstance(item, Item):
        conv, resp, rewards, item_id = item.conversation, item.responses, item.rewards, item.id
    elif isinstance(item, Mapping):
        conv, resp = item.get("conversation"), item.get("responses")
        rewards, item_id = item.get("rewards"), item.get("id")
    else:
        raise TypeError(f"build_prompt: expected an Item or a dict, got {type(item).__name__}")
    where = f"item {item_id}" if item_id is not None else "<item>"
    if not isinstance(conv, list) or not conv:
        raise DataError(where, "conversation", "expected a non-empty list of {role, content}")
    for i, turn in enumerate(conv):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("role"), str):
            raise DataError(where, f"conversation[{i}].role", "expected a string role")
        if not isinstance(turn.get("content"), str):
            raise DataError(where, f"conversation[{i}].content", "expected a string")
    if not isinstance(resp, list) or not resp:
        raise DataError(where, "responses", "expected a non-empty list of strings")
    for i, r in enumerate(resp):
        if not isinstance(r, str):
            raise DataError(where, f"responses[{i}]", f"expected a string, got {type(r).__name__}")
    return conv, resp, rewards, where


def _reference(item: Item | Mapping[str, Any]) -> str | None:
    meta = item.meta if isinstance(item, Item) else item.get("meta")
    value = meta.get("reference") if isinstance(meta, Mapping) else None
    return value if isinstance(value, str) and value.strip() else None


def build_prompt(
    item: Item | Mapping[str, Any],
    order: Sequence[int],
    hint: bool | int | None = None,
    template: str | os.PathLike[str] | Template = "default",
    with_reference: bool = False,
) -> str:
    """The GRM's user message for `item` with its responses shown in `order`; with
    `with_reference`, the item's reference answer (meta.reference) if it has one.

    Prompt position p shows response order[p]. `hint` is None (or False) for none, True for
    the position of the best response by the item's rewards, or a 1-based prompt position;
    it appends "The best response is: Response j" as the last line, for hinted RFT sampling
    only (the hint is never part of a training prompt).
    """
    conv, responses, rewards, where = _fields(item)
    n = len(responses)
    order = check_order(order, n)
    tmpl = template if isinstance(template, Template) else load_template(template)
    reference = _reference(item) if with_reference else None
    text = tmpl.render(conv, [responses[o] for o in order], reference)
    if hint is None or hint is False:
        return text
    if hint is True:
        if rewards is None:
            raise DataError(where, "rewards", "hint=True needs the item's rewards")
        j = hint_position(rewards, order)
    elif isinstance(hint, Integral) and 1 <= hint <= n:
        j = int(hint)
    else:
        raise ValueError(f"hint: expected None, True or a position in 1..{n}, got {hint!r}")
    return text + "\n\n" + HINT_LINE.format(j=j)
