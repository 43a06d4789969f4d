"""The one item schema every loader produces, and its validation.

An item is a query (a conversation) with n >= 1 candidate responses and one ground-truth
reward per response whose maximum is unique: the response a reward model must rank first.
A prompt for the policy phases is an item with no responses and no rewards (n = 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


class DataError(ValueError):
    """Bad input data. The message names the file, the line (or record) and the field."""

    def __init__(self, where: str, field_name: str | None, expected: str):
        self.where = where
        self.field = field_name
        self.expected = expected
        loc = f"{where}: field '{field_name}'" if field_name else where
        super().__init__(f"{loc}: {expected}")


@dataclass
class Item:
    conversation: list[dict[str, str]]
    responses: list[str]
    rewards: list[float]
    id: str | None = None
    source: str | None = None
    subset: str | None = None
    # Anything else a loader or generator wants to keep (e.g. the synthetic task's ground truth).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.responses)

    @property
    def best(self) -> int:
        """Index of the response with the unique maximum reward."""
        return max(range(len(self.rewards)), key=self.rewards.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["meta"]:
            del d["meta"]
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Any, where: str = "<item>") -> Item:
        """Validate a mapping and build an Item; raise DataError naming `where` and the field."""
        if not isinstance(d, dict):
            raise DataError(where, None, f"expected a JSON object, got {type(d).__name__}")
        for key in ("conversation", "responses", "rewards"):
            if key not in d:
                raise DataError(where, key, "missing")
        item = cls(
            conversation=d["conversation"],
            responses=d["responses"],
            rewards=d["rewards"],
            id=_id(d.get("id"), where),
            source=d.get("source"),
            subset=d.get("subset"),
            meta={} if d.get("meta") is None else d["meta"],
        )
        validate(item, where)
        return item


def chat_messages(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    """A prompt as the chat template takes it: a text is one user turn, a conversation is itself."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _id(value: Any, where: str) -> str | None:
    """Ids may be strings or integers (many exports number their rows); anything else is refused."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(where, "id", f"expected a string or an integer, got {type(value).__name__}")


def check_text(value: str, where: str, field_name: str) -> str:
    """A string must be valid Unicode: JSON's \\ud800-style escapes can decode to a lone
    surrogate, which no file encoding (and no tokenizer) accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(where, field_name, f"invalid Unicode (a lone surrogate at character {e.start})") from None
    return value


def _check_strings(value: Any, where: str, field_name: str) -> None:
    """Every string inside an optional field (meta) must be valid Unicode too."""
    if isinstance(value, str):
        check_text(value, where, field_name)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k, where, field_name)
            _check_strings(v, where, f"{field_name}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_strings(v, where, f"{field_name}[{i}]")


def validate(item: Item, where: str = "<item>") -> Item:
    """Check the schema's rules; raise DataError naming `where` and the offending field."""
    conv = item.conversation
    if not isinstance(conv, list) or not conv:
        raise DataError(where, "conversation", "expected a non-empty list of {role, content}")
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str):
            raise DataError(where, f"conversation[{i}].role", "expected a string role")
        if not isinstance(turn.get("content"), str):
            raise DataError(where, f"conversation[{i}].content", "expected a string")
        check_text(turn["role"], where, f"conversation[{i}].role")
        check_text(turn["content"], where, f"conversation[{i}].content")
    resp = item.responses
    if resp == [] and item.rewards == []:  # a prompt (for the policy phases): nothing to judge
        _check_optional(item, where)
        return item
    if not isinstance(resp, list) or not resp:
        raise DataError(where, "responses", "expected a non-empty list of strings")
    for i, r in enumerate(resp):
        if not isinstance(r, str):
            raise DataError(where, f"responses[{i}]", f"expected a string, got {type(r).__name__}")
        if not r.strip():
            raise DataError(where, f"responses[{i}]", "empty response")
        check_text(r, where, f"responses[{i}]")
    rew = item.rewards
    if not isinstance(rew, list) or len(rew) != len(resp):
        got = len(rew) if isinstance(rew, list) else type(rew).__name__
        raise DataError(where, "rewards", f"expected a list of {len(resp)} numbers (one per response), got {got}")
    for i, r in enumerate(rew):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not _finite(r):
            shown = repr(r) if len(repr(r)) <= 40 else f"{repr(r)[:37]}..."
            raise DataError(where, f"rewards[{i}]", f"expected a finite number within float range, got {shown}")
    top = max(rew)
    if sum(1 for r in rew if r == top) != 1 and not (isinstance(item.meta, dict) and item.meta.get("several_best")):
        raise DataError(where, "rewards", f"expected one unique maximum (or meta.several_best: true, several "
                        f"right answers), got {rew}")
    _check_optional(item, where)
    return item


def _check_optional(item: Item, where: str) -> None:
    for name in ("id", "source", "subset"):
        value = getattr(item, name)
        if value is not None:
            if not isinstance(value, str):
                raise DataError(where, name, f"expected a string (or null), got {type(value).__name__}")
            check_text(value, where, name)
    if not isinstance(item.meta, dict):
        raise DataError(where, "meta", f"expected an object, got {type(item.meta).__name__}")
    _check_strings(item.meta, where, "meta")


def _finite(x: int | float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False
