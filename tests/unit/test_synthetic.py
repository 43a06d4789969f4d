"""The synthetic verifiable task: exact ground truth, disjoint splits, and a programmatic critic
whose partial critiques leave room for voting to beat a single one."""

from __future__ import annotations

import itertools
import math
import random
import re

import pytest

from spct.data.synthetic import (
    SPLITS,
    Critique,
    SyntheticConfig,
    critique_scores,
    ground_truth,
    make_items,
    make_splits,
    plan_critique,
    render_trajectory,
    split_of,
    write_trajectory,
)
from spct.grm import is_correct, map_back, parse_scores, pick_best, random_order, vote
from spct.item import DataError, Item, validate


def oracle_scores(item: Item, order, checked, low: int = 1, high: int = 10) -> list[int]:
    """What a noiseless critique checking `checked` aspects scores, in prompt order."""
    _, answers, _ = ground_truth(item)
    aspects = tuple(sorted(checked))
    return critique_scores(item, order, Critique(aspects, tuple(answers[k] for k in aspects)), low, high)

MULTI = SyntheticConfig(single_fraction=0.0, min_responses=2)


def _key(item: Item) -> str:
    return item.conversation[0]["content"] + "|" + "|".join(item.responses)


def _n_correct(item: Item, r: int) -> int:
    return sum(c == a for c, a in zip(item.meta["claims"][r], item.meta["answers"], strict=True))


def _rendered(item: Item, claims: list[int]) -> str:
    """A response restates each sum with its answer: "3+4=7 ; 7+8=15"."""
    return " ; ".join(f"{a}+{b}={c}" for (a, b), c in zip(item.meta["operands"], claims, strict=True))


def test_items_are_a_pure_function_of_seed_split_and_config():
    a = make_items(50, seed=3, split="train")
    b = make_items(50, seed=3, split="train")
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    c = make_items(50, seed=4, split="train")
    assert [_key(x) for x in a] != [_key(x) for x in c]
    assert len({x.id for x in a}) == 50


def test_splits_are_disjoint_even_across_seeds():
    splits = make_splits(None, seed=0, sizes={"train": 400, "validation": 150, "test": 150})
    assert {s: len(v) for s, v in splits.items()} == {"train": 400, "validation": 150, "test": 150}
    other_seed = make_items(150, seed=1, split="test")
    queries = {s: {x.conversation[0]["content"] for x in v} for s, v in splits.items()}
    queries["test"] |= {x.conversation[0]["content"] for x in other_seed}
    for s1, s2 in itertools.combinations(SPLITS, 2):
        assert not queries[s1] & queries[s2], (s1, s2)
    for split, items in splits.items():
        assert len({_key(x) for x in items}) == len(items)
        assert all(split_of(x.conversation[0]["content"]) == split for x in items)


def test_unknown_split_and_exhausted_query_space_are_clear_errors():
    with pytest.raises(ValueError, match="split"):
        make_items(1, 0, "dev")
    tiny = SyntheticConfig(
        n_aspects=1, max_operand=1, single_fraction=0.0, min_responses=2, max_responses=2
    )
    with pytest.raises(ValueError, match="distinct"):
        make_items(500, 0, "test", tiny)


@pytest.mark.parametrize("margin", [1, 2, 3])
def test_best_response_is_unique_and_leads_by_the_margin(margin):
    cfg = SyntheticConfig(margin=margin, single_fraction=0.0, min_responses=2)
    for item in make_items(200, seed=margin, split="train", config=cfg):
        validate(item)
        assert 2 <= item.n <= cfg.max_responses
        counts = [_n_correct(item, r) for r in range(item.n)]
        assert item.rewards == [float(c) for c in counts]
        ranked = sorted(counts, reverse=True)
        assert ranked[0] - ranked[1] == margin
        assert item.responses[item.best] == _rendered(item, item.meta["claims"][item.best])


def test_single_response_items_reward_all_correct_only():
    cfg = SyntheticConfig(single_fraction=1.0)
    items = make_items(300, seed=0, split="train", config=cfg)
    assert all(item.n == 1 for item in items)
    rewards = [item.rewards[0] for item in items]
    assert set(rewards) == {0.0, 1.0}
    for item in items:
        assert item.rewards[0] == (1.0 if _n_correct(item, 0) == cfg.n_aspects else 0.0)
    assert 0.4 < sum(rewards) / len(rewards) < 0.6


def test_query_and_responses_carry_the_ground_truth():
    cfg = SyntheticConfig(max_operand=9, n_aspects=4)
    for item in make_items(100, seed=0, split="validation", config=cfg):
        ops = item.meta["operands"]
        assert item.conversation[0]["content"] == "Solve: " + " ; ".join(f"{a}+{b}" for a, b in ops)
        assert item.meta["answers"] == [a + b for a, b in ops]
        assert all(0 <= x <= 9 for pair in ops for x in pair)
        for r, claims in enumerate(item.meta["claims"]):
            assert item.responses[r] == _rendered(item, claims)
            for c, a in zip(claims, item.meta["answers"], strict=True):
                assert c >= 0 and abs(c - a) in (0, 1, 2, 10)


def test_single_fraction_is_respected():
    items = make_items(1000, seed=0, split="train", config=SyntheticConfig(single_fraction=0.3))
    share = sum(item.n == 1 for item in items) / len(items)
    assert abs(share - 0.3) < 0.05


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="margin"):
        SyntheticConfig(n_aspects=2, margin=3)
    with pytest.raises(ValueError, match="single_fraction"):
        SyntheticConfig(min_responses=2, single_fraction=0.5)
    with pytest.raises(ValueError, match="deltas"):
        SyntheticConfig(deltas=(0, 1))


def test_deltas_from_a_yaml_list_shape_every_wrong_claim():
    config = SyntheticConfig(deltas=[-10, 10], min_responses=2, max_responses=2, single_fraction=0.0)
    assert config.deltas == (-10, 10)
    for item in make_items(200, seed=0, split="train", config=config):
        for claims in item.meta["claims"]:
            assert all(c - a in (0, -10, 10) for c, a in zip(claims, item.meta["answers"], strict=True))


def _parse(text: str, n: int, low: int, high: int) -> list[int] | None:
    return parse_scores(text, n, low, high)


def test_trajectory_has_the_three_parts_and_parses_to_the_oracle_scores():
    rng = random.Random(0)
    for item in make_items(200, seed=0, split="train"):
        order = random_order(item.n, rng)
        low, high = (0, 1) if item.n == 1 else (1, 10)
        critique = plan_critique(item, random.Random(7), (1, 4))
        text = write_trajectory(item, order, random.Random(7), (1, 4), low=low, high=high)
        assert text == render_trajectory(item, order, critique, low, high)
        lines = text.split("\n")
        assert [line.split(":")[0] for line in lines] == ["Specific Criteria", "Analysis", "Scores"]
        principles = [int(k) for k in re.findall(r"Sum (\d+)", lines[0])]
        assert principles == [k + 1 for k in critique.checked]
        expected = oracle_scores(item, order, critique.checked, low, high)
        assert _parse(text, item.n, low, high) == expected


def test_trajectory_example_format():
    item = Item(
        conversation=[{"role": "user", "content": "Solve: 3+4 ; 7+8 ; 2+5 ; 1+1"}],
        responses=["7 15 6 2", "7 15 7 2"],
        rewards=[3.0, 4.0],
        meta={
            "operands": [[3, 4], [7, 8], [2, 5], [1, 1]],
            "answers": [7, 15, 7, 2],
            "claims": [[7, 15, 6, 2], [7, 15, 7, 2]],
        },
    )
    text = render_trajectory(item, [0, 1], Critique((0, 2), (7, 7)))
    assert text == (
        "Specific Criteria: Sum 1; Sum 3\n"
        "Analysis: Sum 1: 3+4=7; R1 7 right; R2 7 right. Sum 3: 2+5=7; R1 6 wrong; R2 7 right.\n"
        "Scores: \\boxed{6, 10}"
    )
    # R indices and scores follow the prompt positions, not the original indices.
    swapped = render_trajectory(item, [1, 0], Critique((0, 2), (7, 7)))
    assert "Sum 3: 2+5=7; R1 7 right; R2 6 wrong." in swapped
    assert swapped.endswith("\\boxed{10, 6}")
    assert oracle_scores(item, [1, 0], [0, 2], low=0, high=1) == [1, 0]
    assert oracle_scores(item, [0, 1], [0, 1, 2], low=1, high=10) == [7, 10]


def test_full_noiseless_critique_is_always_correct_and_partial_is_not():
    rng = random.Random(1)
    partial_wrong = 0
    items = make_items(300, seed=0, split="train")
    for item in items:
        order = random_order(item.n, rng)
        low, high = (0, 1) if item.n == 1 else (1, 10)
        text = write_trajectory(item, order, rng, 4, low=low, high=high)
        scores = map_back(_parse(text, item.n, low, high), order)
        assert is_correct(scores, item.rewards), text
        partial = write_trajectory(item, order, rng, 1, low=low, high=high)
        partial_wrong += not is_correct(
            map_back(_parse(partial, item.n, low, high), order), item.rewards
        )
    assert partial_wrong > 0.2 * len(items)


def _verdicts(item: Item, critique: Critique) -> list[tuple[bool, ...]]:
    claims = item.meta["claims"]
    return [
        tuple(c[k] == v for k, v in zip(critique.checked, critique.computed, strict=True))
        for c in claims
    ]


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_noise_slips_one_check_at_the_stated_rate(noise):
    rng = random.Random(5)
    items = make_items(1000, seed=0, split="train", config=MULTI)
    slipped = 0
    for item in items:
        critique = plan_critique(item, rng, 2, noise=noise)
        truth = tuple(item.meta["answers"][k] for k in critique.checked)
        wrong = [i for i, (c, t) in enumerate(zip(critique.computed, truth, strict=True)) if c != t]
        assert len(wrong) <= 1
        if wrong:
            slipped += 1
            oracle = Critique(critique.checked, truth)
            assert _verdicts(item, critique) != _verdicts(item, oracle)
            text = render_trajectory(item, list(range(item.n)), critique)
            k = critique.checked[wrong[0]]
            a, b = item.meta["operands"][k]
            assert f"{a}+{b}={critique.computed[wrong[0]]};" in text
    sd = math.sqrt(noise * (1 - noise) / len(items))
    assert abs(slipped / len(items) - noise) <= 4 * sd + 1e-9


@pytest.mark.parametrize("carry_slip", [0.6, 1.0])
def test_carry_slip_drops_the_carry_of_carrying_sums_only(carry_slip):
    rng = random.Random(3)
    lost = carrying = 0
    for item in make_items(1000, seed=0, split="train", config=MULTI):
        critique = plan_critique(item, rng, 2, carry_slip=carry_slip)
        for k, value in zip(critique.checked, critique.computed, strict=True):
            a, b = item.meta["operands"][k]
            if a + b < 10:  # single-digit operands: a carry exactly when the sum is >= 10
                assert value == a + b
                continue
            carrying += 1
            assert value in (a + b, a + b - 10)
            lost += value == a + b - 10
    sd = math.sqrt(carry_slip * (1 - carry_slip) / carrying)
    assert carrying > 300 and abs(lost / carrying - carry_slip) <= 4 * sd + 1e-9


def test_carry_slip_range_grows_with_the_units_digits_sum():
    """(lo, hi): lo when the units sum to 10, hi when they sum to 18, linear in between."""
    rng = random.Random(5)
    lost, seen = {}, {}
    for item in make_items(1500, seed=2, split="train", config=MULTI):
        critique = plan_critique(item, rng, 4, carry_slip=(0.0, 1.0))
        for k, value in zip(critique.checked, critique.computed, strict=True):
            a, b = item.meta["operands"][k]
            if a + b >= 10:
                seen[a + b] = seen.get(a + b, 0) + 1
                lost[a + b] = lost.get(a + b, 0) + (value == a + b - 10)
    assert lost[10] == 0 and lost[18] == seen[18] > 0
    for total in (12, 14, 16):
        p = (total - 10) / 8
        sd = math.sqrt(p * (1 - p) / seen[total])
        assert abs(lost[total] / seen[total] - p) <= 4 * sd


def test_carry_slip_is_the_greedy_verdict_a_model_learns_when_above_half():
    """The most frequent trajectory line for a carrying sum is the carry-less one."""
    item = next(it for it in make_items(200, seed=0, split="train", config=MULTI)
                if sum(it.meta["operands"][0]) >= 10)
    a, b = item.meta["operands"][0]
    rng = random.Random(4)
    lines = [render_trajectory(item, list(range(item.n)), plan_critique(item, rng, 4, carry_slip=0.6))
             for _ in range(400)]
    without = sum(f"{a}+{b}={a + b - 10};" in t for t in lines)
    assert without > 400 // 2 and sum(f"{a}+{b}={a + b};" in t for t in lines) == 400 - without


def test_a_slip_prefers_a_wrong_claim_some_response_made():
    rng = random.Random(2)
    tempting = total = 0
    for item in make_items(500, seed=1, split="train", config=MULTI):
        critique = plan_critique(item, rng, 1, noise=1.0)
        k, value = critique.checked[0], critique.computed[0]
        wrong_claims = {c[k] for c in item.meta["claims"]} - {item.meta["answers"][k]}
        if wrong_claims:
            total += 1
            tempting += value in wrong_claims
    assert total > 100 and tempting == total


def test_n_checked_range_and_validation():
    item = make_items(1, 0, "train", MULTI)[0]
    rng = random.Random(0)
    sizes = {len(plan_critique(item, rng, (1, 3)).checked) for _ in range(200)}
    assert sizes == {1, 2, 3}
    assert len(plan_critique(item, rng, 9).checked) == 4
    with pytest.raises(ValueError, match="n_checked"):
        plan_critique(item, rng, 0)
    with pytest.raises(ValueError, match="order"):
        write_trajectory(item, [0] * item.n, rng, 2)


def test_non_synthetic_item_is_a_data_error():
    item = Item(
        conversation=[{"role": "user", "content": "hi"}],
        responses=["a", "b"],
        rewards=[0, 1],
        id="x",
    )
    with pytest.raises(DataError, match="meta.operands"):
        oracle_scores(item, [0, 1], [0])


def test_scores_reflect_the_share_of_checked_answers_that_passed():
    item = make_items(1, 0, "train", MULTI)[0]
    order = list(range(item.n))
    for checked in ([0], [0, 1], [0, 1, 2], [0, 1, 2, 3]):
        scores = oracle_scores(item, order, checked)
        for r, s in enumerate(scores):
            passed = sum(item.meta["claims"][r][k] == item.meta["answers"][k] for k in checked)
            assert s == 1 + math.floor(9 * passed / len(checked) + 0.5)
    assert critique_scores(item, order, Critique((0,), (-1,))) == [1] * item.n


def test_voting_over_varied_principles_beats_one_fixed_critique():
    """The property the task exists for: eight critiques that each check a random half of the
    aspects, summed, rank the best response first far more often than one critique that always
    checks the same half, which ties whenever the deciding aspect is outside it."""
    items = make_items(400, seed=0, split="test", config=MULTI)
    rng = random.Random(0)
    greedy = voted = 0
    for item in items:
        order = list(range(item.n))
        fixed = oracle_scores(item, order, [0, 1])
        greedy += pick_best(fixed, rng) == item.best
        samples = [
            map_back(oracle_scores(item, o, rng.sample(range(4), 2)), o)
            for o in (random_order(item.n, rng) for _ in range(8))
        ]
        voted += pick_best(vote(samples, item.n), rng) == item.best
    greedy_acc, voted_acc = greedy / len(items), voted / len(items)
    assert voted_acc > greedy_acc + 0.15, (greedy_acc, voted_acc)
    assert voted_acc > 0.85
