"""Reading scores out of a GRM generation, and writing them in the same format.

A generation is untrusted text: sampling at temperature, truncation at the token limit and
an undertrained model all produce malformed output. `parse_scores` therefore never raises
because of the text; anything it cannot read exactly is a parse failure (None), which the
rule reward counts as wrong and voting ignores.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from numbers import Integral

BOXED = "\\boxed{"

# ASCII only: int() would also take '５', '٣' or '1_0', which the output format never asks
# for, and accepting them would give two spellings of one score.
_INTEGER = re.compile(r"[ \t\r\n\f\v]*([+-]?)([0-9]+)[ \t\r\n\f\v]*", re.ASCII)

# A score needs a handful of digits; this bound keeps int() away from its 4300-digit limit.
_MAX_DIGITS = 18


def parse_scores(text: object, n: int, low: int = 1, high: int = 10) -> list[int] | None:
    """The n integer scores in the last `\\boxed{...}` of `text`, or None.

    Valid only when the last `\\boxed{` is closed, its content is exactly n comma-separated
    integers (surrounding whitespace and a leading sign allowed) and each lies in
    [low, high]. A truncated final box is a failure even when an earlier box was complete:
    the last one is the model's answer. Raises ValueError only for a bad n, low or high.
    """
    _check_range(n, low, high)
    if not isinstance(text, str):
        return None
    start = text.rfind(BOXED)
    if start < 0:
        return None
    start += len(BOXED)
    end = text.find("}", start)
    if end < 0:
        return None
    parts = text[start:end].split(",")
    if len(parts) != n:
        return None
    scores = []
    for part in parts:
        match = _INTEGER.fullmatch(part)
        if match is None:
            return None
        digits = match.group(2).lstrip("0") or "0"
        if len(digits) > _MAX_DIGITS:
            return None
        value = int(digits)
        if match.group(1) == "-":
            value = -value
        if not low <= value <= high:
            return None
        scores.append(value)
    return scores


def parse_choice(text: object, n: int) -> list[int] | None:
    """A judge's pick as scores: the position j (1..n) in the last `\\boxed{j}` of `text`
    read as 1 for response j and 0 for the others (prompt order), or None (a parse failure)."""
    pick = parse_scores(text, 1, 1, n)
    return None if pick is None else [int(p == pick[0]) for p in range(1, n + 1)]


def format_scores(scores: Sequence[int]) -> str:
    """`\\boxed{9, 2}`: the score line a generation ends with, inverse of `parse_scores`."""
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, Integral):
            raise TypeError(f"scores[{i}]: expected an integer, got {s!r}")
    return BOXED + ", ".join(str(int(s)) for s in scores) + "}"


def _check_range(n: int, low: int, high: int) -> None:
    for name, value in (("n", n), ("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise ValueError(f"parse_scores: {name} must be an integer, got {value!r}")
    if n < 1:
        raise ValueError(f"parse_scores: n must be >= 1, got {n}")
    if low > high:
        raise ValueError(f"parse_scores: low ({low}) must not exceed high ({high})")
