"""A synthetic verifiable task on which SPCT's mechanisms have something to act on.

A query asks for m small independent sums ("aspects"), e.g. `Solve: 3+4 ; 7+8 ; 2+5 ; 1+1`;
a response restates each sum with its answer (`3+4=7 ; 7+8=15 ; 2+5=6 ; 1+1=2`). A program
knows which answers are right, so the ground truth is exact: the reward of a response is its
number of correct answers, and the best response beats every other by a chosen margin. A
critique that checks sum k finds each response's answer by its sum ("7+8=") rather than by
counting positions, which a tiny model learns in far fewer steps.

The task is shaped for inference-time scaling. A critique's principles pick WHICH aspects it
checks, and its scores reflect the share of checked answers that passed. One critique that
checks part of the evidence can miss the aspect on which the best response differs and tie;
several critiques with different principles see more of it, so voting can beat one greedy
critique. With a single aspect (or a critique that always checks every aspect) it could not:
greedy would already return each item's most likely verdict.

`write_trajectory` is the programmatic GRM used for warm-up data: it writes the three-part
output (principles, analysis, scores) a model then learns to write itself.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from spct.grm import check_order, format_scores, random_order
from spct.item import DataError, Item, validate

SPLITS = ("train", "validation", "test")

# Queries are partitioned between splits by a hash of the query itself (independent of the
# seed), so no test query is ever seen in training, whatever seeds produced either set.
_SPLIT_BUCKETS = {"train": range(0, 8), "validation": range(8, 9), "test": range(9, 10)}

ASPECT = "Sum"
DELTAS = (-2, -1, 1, 2, -10, 10)


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape and difficulty of the synthetic task.

    margin: how many more correct answers the best response has than the runner-up (1 is the
    hardest: the two differ in a single aspect). single_fraction: share of items with one
    response (reward 1 when every answer is right, else 0), drawn only when min_responses is 1.
    single_correct_fraction: share of those single responses that are fully right. deltas: how
    a wrong answer misses the true one (small, plausible slips, including a lost carry).
    carry_drop: the share of wrong answers to a sum whose units carry that drop the carry
    (8+9=7), the slip a flawed critic makes too; the rest miss by one of `deltas`. Operands are
    drawn uniformly from [min_operand, max_operand]; a larger min_operand makes carries common.
    """

    n_aspects: int = 4
    min_operand: int = 0
    max_operand: int = 9
    min_responses: int = 1
    max_responses: int = 4
    margin: int = 1
    single_fraction: float = 0.2
    single_correct_fraction: float = 0.5
    deltas: tuple[int, ...] = DELTAS
    carry_drop: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "deltas", tuple(self.deltas))  # a list from a YAML config

        def bad(field: str, expected: str) -> ValueError:
            return ValueError(
                f"SyntheticConfig.{field}: expected {expected}, got {getattr(self, field)!r}"
            )

        if self.n_aspects < 1:
            raise bad("n_aspects", "an integer >= 1")
        if self.max_operand < 1:
            raise bad("max_operand", "an integer >= 1")
        if not 0 <= self.min_operand <= self.max_operand:
            raise bad("min_operand", f"an integer in [0, max_operand = {self.max_operand}]")
        if self.min_responses < 1:
            raise bad("min_responses", "an integer >= 1")
        if self.max_responses < self.min_responses:
            raise bad("max_responses", f"an integer >= min_responses ({self.min_responses})")
        if not 1 <= self.margin <= self.n_aspects:
            raise bad("margin", f"an integer in [1, n_aspects = {self.n_aspects}]")
        if not 0.0 <= self.single_fraction <= 1.0:
            raise bad("single_fraction", "a share in [0, 1]")
        if self.single_fraction > 0 and self.min_responses > 1:
            raise bad("single_fraction", f"0 when min_responses = {self.min_responses} > 1")
        if self.max_responses == 1 and self.single_fraction < 1:
            raise bad("single_fraction", "1 when max_responses = 1 (every item has one response)")
        if not 0.0 <= self.single_correct_fraction <= 1.0:
            raise bad("single_correct_fraction", "a share in [0, 1]")
        if 0 in self.deltas or not any(d > 0 for d in self.deltas):
            raise bad("deltas", "non-zero offsets, at least one of them positive")
        if not 0.0 <= self.carry_drop <= 1.0:
            raise bad("carry_drop", "a share in [0, 1]")


def split_of(query: str) -> str:
    """The split a query belongs to (a fixed partition of the query space)."""
    bucket = int.from_bytes(hashlib.blake2b(query.encode(), digest_size=8).digest(), "big") % 10
    return next(name for name, r in _SPLIT_BUCKETS.items() if bucket in r)


def render_query(operands: Sequence[Sequence[int]]) -> str:
    return "Solve: " + " ; ".join(f"{a}+{b}" for a, b in operands)


def render_response(operands: Sequence[Sequence[int]], claims: Sequence[int]) -> str:
    return " ; ".join(f"{a}+{b}={c}" for (a, b), c in zip(operands, claims, strict=True))


def make_items(
    n_items: int, seed: int = 0, split: str = "train", config: SyntheticConfig | None = None
) -> list[Item]:
    """`n_items` distinct items of `split`, a pure function of (seed, split, config).

    Raises ValueError for an unknown split, or when the query space of a small config cannot
    supply that many distinct items.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if n_items < 0:
        raise ValueError(f"n_items: expected >= 0, got {n_items}")
    config = config or SyntheticConfig()
    rng = random.Random(f"spct-synthetic:{seed}:{split}")
    items: list[Item] = []
    seen: set[str] = set()
    attempts = 0
    max_attempts = 200 * n_items + 1000
    while len(items) < n_items:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(
                f"make_items: found only {len(items)} distinct {split} items of {n_items} "
                f"after {max_attempts} draws; enlarge max_operand or n_aspects"
            )
        item = _draw_item(rng, config, split)
        if item is None:
            continue
        key = item.conversation[0]["content"] + "\n" + "\n".join(item.responses)
        if key in seen:
            continue
        seen.add(key)
        item.id = f"synthetic-{split}-{seed}-{len(items)}"
        items.append(validate(item, item.id))
    return items


def make_splits(
    config: SyntheticConfig | None, seed: int, sizes: dict[str, int]
) -> dict[str, list[Item]]:
    """One list of items per requested split, e.g. sizes = {"train": 2000, "test": 500}."""
    return {split: make_items(n, seed, split, config) for split, n in sizes.items()}


def _draw_item(rng: random.Random, cfg: SyntheticConfig, split: str) -> Item | None:
    m = cfg.n_aspects
    lo, hi = cfg.min_operand, cfg.max_operand
    operands = [(rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(m)]
    query = render_query(operands)
    if split_of(query) != split:
        return None
    answers = [a + b for a, b in operands]
    if cfg.min_responses == 1 and rng.random() < cfg.single_fraction:
        n_right = m if rng.random() < cfg.single_correct_fraction else m - rng.randint(1, m)
        counts = [n_right]
    else:
        n = rng.randint(max(2, cfg.min_responses), cfg.max_responses)
        best = rng.randint(cfg.margin, m)
        runner_up = best - cfg.margin
        counts = [best, runner_up] + [rng.randint(0, runner_up) for _ in range(n - 2)]
        rng.shuffle(counts)
    claims = [_claims(rng, operands, c, cfg) for c in counts]
    rewards = [float(c) for c in counts]
    if len(counts) == 1:
        rewards = [1.0 if counts[0] == m else 0.0]
    return Item(
        conversation=[{"role": "user", "content": query}],
        responses=[render_response(operands, c) for c in claims],
        rewards=rewards,
        source="synthetic",
        subset="single" if len(counts) == 1 else "multi",
        meta={"operands": [list(p) for p in operands], "answers": answers, "claims": claims},
    )


def _claims(
    rng: random.Random, operands: list[tuple[int, int]], n_right: int, cfg: SyntheticConfig
) -> list[int]:
    right = set(rng.sample(range(len(operands)), n_right))
    claims = []
    for k, (a, b) in enumerate(operands):
        if k in right:
            claims.append(a + b)
        else:
            claims.append(_wrong(rng, a, b, cfg))
    return claims


def _wrong(rng: random.Random, a: int, b: int, cfg: SyntheticConfig) -> int:
    """A wrong answer to a+b: the dropped carry (with `cfg.carry_drop`, when the units carry),
    else a nearby slip."""
    if cfg.carry_drop > 0 and a % 10 + b % 10 >= 10 and rng.random() < cfg.carry_drop:
        return a + b - 10
    return _slip(rng, a + b, cfg.deltas)


def _slip(rng: random.Random, value: int, deltas: Sequence[int]) -> int:
    """A plausible wrong value near `value` (never negative: the sums are of naturals)."""
    return value + rng.choice([d for d in deltas if value + d >= 0])


# ---------------------------------------------------------------------------------------------
# The task as a policy's task: answer the query, checked by a program.

_CLAIM = re.compile(r"\s*(\d+)\s*\+\s*(\d+)\s*=\s*(-?\d+)\s*")


def policy_query(item: Item) -> str:
    """What the policy is asked: the item's last user turn (e.g. `Solve: 3+4 ; 7+8`)."""
    return next(t["content"] for t in reversed(item.conversation) if t["role"] == "user")


def checkable(item: Item) -> bool:
    """Whether the program checker can check answers to `item` (an item of this task)."""
    return "operands" in item.meta


def checked_reward(item: Item, text: str) -> float:
    """The program checker's reward of `text` as an answer to `item`: the share of the query's
    sums it answers right (`check_answer`), 1 when every one is."""
    return check_answer(item, text) / len(_operands(item))


def check_answer(item: Item, text: str) -> int:
    """How many of the query's sums `text` answers right, by the program checker.

    The answer is read as the task writes a response, `a+b=c ; ...`: its k-th `;`-separated part
    must restate the query's k-th sum and give its value. A part in any other form, a sum in the
    wrong place, and a missing part count wrong; parts beyond the query's sums are ignored.
    """
    operands = _operands(item)
    parts = text.split(";")
    right = 0
    for k, (a, b) in enumerate(operands):
        m = _CLAIM.fullmatch(parts[k]) if k < len(parts) else None
        right += m is not None and (int(m[1]), int(m[2]), int(m[3])) == (a, b, a + b)
    return right


def well_formed(item: Item, text: str) -> bool:
    """Whether `text` has the answer format: exactly the query's sums, in order, each restated
    as `a+b=c` with an integer c (right or not)."""
    return _stated(item, text) is not None


def _stated(item: Item, text: str) -> list[int] | None:
    """The values `text` gives the query's sums, when it has the answer format (`well_formed`)."""
    return _values(_operands(item), text)


def _values(operands: Sequence[Sequence[int]], text: str) -> list[int] | None:
    parts = text.split(";")
    if len(parts) != len(operands):
        return None
    values = []
    for part, (a, b) in zip(parts, operands, strict=True):
        m = _CLAIM.fullmatch(part)
        if m is None or (int(m[1]), int(m[2])) != (a, b):
            return None
        values.append(int(m[3]))
    return values


ANSWER_KINDS = ("right", "carry", "slip", "worse", "format")


def answer_kind(item: Item, text: str) -> str:
    """What kind of answer `text` is, by the program checker: "format" (not the answer format,
    `well_formed`), "right" (every sum right), one wrong sum that drops the carry of its units
    ("carry", 8+9=7: the slip the warm-up's critic makes, `warmup.carry_slip`) or that is wrong
    another way ("slip"), or "worse" (two or more wrong sums). "carry" and "slip" have the same
    checked reward, so a reward that pays more for one of them favours that error."""
    values = _stated(item, text)
    if values is None:
        return "format"
    wrong = [(a, b, c) for (a, b), c in zip(_operands(item), values, strict=True) if c != a + b]
    if not wrong:
        return "right"
    if len(wrong) > 1:
        return "worse"
    a, b, c = wrong[0]
    return "carry" if a % 10 + b % 10 >= 10 and c == a + b - 10 else "slip"


SLIPS = ("right", "+1", "-1", "carry", "other")


def sum_slips(query: str, text: str) -> list[str] | None:
    """How `text` answers each sum of `query` (as `render_query` writes it; None when `text` is
    out of the answer format): "right", one above or below ("+1", "-1"), its units carry
    dropped ("carry", 8+9=7), or "other". Where a policy's answers move under a reward shows
    which errors that reward pays for."""
    m = re.fullmatch(r"Solve: (.*)", query.strip())
    parts = [re.fullmatch(r"(\d+)\+(\d+)", part) for part in m[1].split(" ; ")] if m else [None]
    operands = [[int(p[1]), int(p[2])] for p in parts if p is not None]
    if len(operands) != len(parts):
        raise ValueError(f"sum_slips: {query!r} is not a query of the synthetic task ('Solve: a+b ; c+d')")
    values = _values(operands, text)
    if values is None:
        return None
    slips = []
    for (a, b), c in zip(operands, values, strict=True):
        carry = a % 10 + b % 10 >= 10 and c == a + b - 10
        slips.append({0: "right", 1: "+1", -1: "-1"}.get(c - (a + b), "carry" if carry else "other"))
    return slips


def _operands(item: Item) -> list[list[int]]:
    if "operands" not in item.meta:
        raise DataError(item.id or "<item>", "meta.operands", "missing: not an item of spct.data.synthetic")
    return item.meta["operands"]


def sample_answer(item: Item, rng: random.Random, p_right: float, config: SyntheticConfig) -> str:
    """A policy-style answer to `item`'s query: each sum right with probability `p_right`, else
    one of the task's slips (a dropped carry with `config.carry_drop`, else a nearby value)."""
    operands = _operands(item)
    claims = [a + b if rng.random() < p_right else _wrong(rng, a, b, config) for a, b in operands]
    return render_response(operands, claims)


# ---------------------------------------------------------------------------------------------
# The programmatic critic.


@dataclass(frozen=True)
class Critique:
    """What one critique checks: aspect indices (ascending) and the value it computes for each.

    A computed value that differs from the true answer is the "consistent wrong reasoning"
    of a slipped check: every response is judged against it.
    """

    checked: tuple[int, ...]
    computed: tuple[int, ...]


def ground_truth(item: Item) -> tuple[list[list[int]], list[int], list[list[int]]]:
    """(operands, answers, claims) from a synthetic item's meta; DataError when absent."""
    where = item.id or "<item>"
    for key in ("operands", "answers", "claims"):
        if key not in item.meta:
            raise DataError(where, f"meta.{key}", "missing: not an item of spct.data.synthetic")
    claims = item.meta["claims"]
    if len(claims) != item.n:
        raise DataError(where, "meta.claims", f"expected one claim list per response ({item.n})")
    return item.meta["operands"], item.meta["answers"], claims


def plan_critique(
    item: Item,
    rng: random.Random,
    n_checked: int | tuple[int, int],
    noise: float = 0.0,
    carry_slip: float | tuple[float, float] = 0.0,
) -> Critique:
    """Choose the principles (which aspects to check) and the values the critique computes.

    n_checked is a count or an inclusive (lo, hi) range, clipped to the number of aspects.
    carry_slip: the probability that a checked sum whose units carry (e.g. 8+9) is computed
    without the carry (8+9=7); a (lo, hi) pair makes it grow linearly with the units digits'
    sum, from lo at 10 (e.g. 3+7) to hi at 18 (9+9), so that larger sums are harder. Above 0.5
    it is the critic's most likely value, a consistent wrong reasoning that greedy decoding of
    a model trained on it repeats, and that RFT and RL can unlearn because the right value
    leads to correct verdicts more often; the nearer to 1, the rarer the samples that teach it.
    noise: the probability of one more slip, to a wrong value that some response claimed when
    one did (the tempting error), else a nearby wrong value; either way a verdict changes.
    """
    operands, answers, claims = ground_truth(item)
    m = len(answers)
    lo, hi = (n_checked, n_checked) if isinstance(n_checked, int) else n_checked
    if not 1 <= lo <= hi:
        raise ValueError(f"n_checked: expected an int >= 1 or a range lo <= hi, got {n_checked!r}")
    count = min(rng.randint(lo, hi), m)
    checked = sorted(rng.sample(range(m), count))
    computed = [answers[k] for k in checked]
    slip_lo, slip_hi = (carry_slip, carry_slip) if isinstance(carry_slip, float | int) else carry_slip
    if slip_lo > 0 or slip_hi > 0:
        for slot, k in enumerate(checked):
            a, b = operands[k]
            units = a % 10 + b % 10
            if units >= 10 and rng.random() < slip_lo + (slip_hi - slip_lo) * (units - 10) / 8:
                computed[slot] = answers[k] - 10
    if noise > 0 and rng.random() < noise:
        slot = rng.randrange(count)
        truth = answers[checked[slot]]
        tempting = sorted({c[checked[slot]] for c in claims} - {truth})
        computed[slot] = rng.choice(tempting) if tempting else _slip(rng, truth, DELTAS)
    return Critique(tuple(checked), tuple(computed))


def critique_scores(
    item: Item, order: Sequence[int], critique: Critique, low: int = 1, high: int = 10
) -> list[int]:
    """Scores in prompt order: the share of checked answers that match the computed values.

    On the 1..10 range a response scores low + round((high - low) * passed / checked); on a
    0/1 range (the single-response template) it scores high only when every check passed.
    """
    order = check_order(order, item.n)
    _, _, claims = ground_truth(item)
    total = len(critique.checked)
    scores = []
    for o in order:
        passed = sum(
            claims[o][k] == v for k, v in zip(critique.checked, critique.computed, strict=True)
        )
        if high - low == 1:
            scores.append(high if passed == total else low)
        else:
            scores.append(low + (2 * (high - low) * passed + total) // (2 * total))
    return scores


def render_trajectory(
    item: Item, order: Sequence[int], critique: Critique, low: int = 1, high: int = 10
) -> str:
    order = check_order(order, item.n)
    operands, _, claims = ground_truth(item)
    criteria = "; ".join(f"{ASPECT} {k + 1}" for k in critique.checked)
    parts = []
    for k, value in zip(critique.checked, critique.computed, strict=True):
        a, b = operands[k]
        verdicts = "; ".join(
            f"R{p + 1} {claims[o][k]} {'right' if claims[o][k] == value else 'wrong'}"
            for p, o in enumerate(order)
        )
        parts.append(f"{ASPECT} {k + 1}: {a}+{b}={value}; {verdicts}.")
    scores = critique_scores(item, order, critique, low, high)
    return f"Specific Criteria: {criteria}\nAnalysis: {' '.join(parts)}\nScores: {format_scores(scores)}"


def write_trajectory(
    item: Item,
    order: Sequence[int],
    rng: random.Random,
    n_checked: int | tuple[int, int],
    noise: float = 0.0,
    low: int = 1,
    high: int = 10,
    carry_slip: float | tuple[float, float] = 0.0,
) -> str:
    """A complete GRM output for `item` with its responses shown in `order`.

    Example (two responses, aspects 1 and 3 checked):
        Specific Criteria: Sum 1; Sum 3
        Analysis: Sum 1: 3+4=7; R1 7 right; R2 7 right. Sum 3: 2+5=7; R1 6 wrong; R2 7 right.
        Scores: \\boxed{6, 10}
    R indices are prompt positions; scores are in prompt order. Use low=0, high=1 for the
    single-response template. The principles carry no weights: every checked aspect counts the
    same, so weights would only lengthen what a tiny model must write.
    """
    critique = plan_critique(item, rng, n_checked, noise, carry_slip)
    return render_trajectory(item, order, critique, low, high)


def warmup_pairs(items: Sequence[Item], rng: random.Random, n: int, show, settings) -> list[tuple[str, str]]:
    """n (GRM prompt, trajectory) pairs of the flawed programmatic critic on items drawn from
    `items`: the warm-up's data, also mixed into RFT (rft.warmup_mix). `show(item, order)` gives
    the prompt and score scale the run shows the item with; `settings` is the run's warmup
    section (checks_min, checks_max, noise, carry_slip, carry_slip_max)."""
    s = settings
    slip = (s.carry_slip, s.carry_slip if s.carry_slip_max is None else s.carry_slip_max)
    pairs = []
    for item in rng.sample(items, n):
        order = random_order(item.n, rng)
        shown = show(item, order)
        pairs.append((shown.prompt, write_trajectory(item, order, rng, (s.checks_min, s.checks_max), s.noise,
                                                     *shown.scale, slip)))
    return pairs
