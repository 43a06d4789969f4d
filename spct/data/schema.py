"""The one item schema every loader produces, and its validation.

An item is a query (a conversation) with n >= 1 candidate responses and one ground-truth
reward per response whose maximum is unique: the response a reward model must rank first.
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
            id=None if d.get("id") is None else str(d["id"]),
            source=d.get("source"),
            subset=d.get("subset"),
            meta=d.get("meta") or {},
        )
        validate(item, where)
        return item


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
    resp = item.responses
    if not isinstance(resp, list) or not resp:
        raise DataError(where, "responses", "expected a non-empty list of strings")
    for i, r in enumerate(resp):
        if not isinstance(r, str):
            raise DataError(where, f"responses[{i}]", f"expected a string, got {type(r).__name__}")
        if not r.strip():
            raise DataError(where, f"responses[{i}]", "empty response")
    rew = item.rewards
    if not isinstance(rew, list) or len(rew) != len(resp):
        got = len(rew) if isinstance(rew, list) else type(rew).__name__
        raise DataError(where, "rewards", f"expected a list of {len(resp)} numbers (one per response), got {got}")
    for i, r in enumerate(rew):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
            raise DataError(where, f"rewards[{i}]", f"expected a finite number, got {r!r}")
    top = max(rew)
    if sum(1 for r in rew if r == top) != 1:
        raise DataError(where, "rewards", f"expected one unique maximum, got {rew}")
    return item
