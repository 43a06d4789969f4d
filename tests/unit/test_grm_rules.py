"""Orders, Eq. 10 / Eq. 11, the RFT acceptance filter and the meta RM's targets."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spct.grm import (
    check_order,
    hint_position,
    is_correct,
    is_neutral,
    map_back,
    meta_target,
    random_order,
    rft_accept,
    rule_reward,
)


@pytest.mark.parametrize(
    ("order", "n", "message"),
    [
        ([0, 0, 1], 3, "repeats"),
        ([0, 1], 3, "2 entries for 3 responses"),
        ([0, 1, 3], 3, r"order\[2\] = 3 is out of range"),
        ([0, -1, 1], 3, "out of range"),
        ([0, 1.0, 2], 3, r"order\[1\]: expected an integer"),
        ([True, False], 2, "expected an integer"),
        (None, 2, "permutation"),
    ],
)
def test_check_order_names_the_problem(order, n, message):
    with pytest.raises(ValueError, match=message):
        check_order(order, n)


def test_random_order_is_a_seeded_uniform_permutation():
    rng = random.Random(0)
    seen = {tuple(random_order(3, rng)) for _ in range(200)}
    assert seen == set(itertools.permutations(range(3)))
    assert random_order(5, random.Random(7)) == random_order(5, random.Random(7))
    with pytest.raises(ValueError):
        random_order(0, rng)


def test_map_back_example():
    # prompt shows responses 2, 0, 1; the model scored them 8, 3, 5 in that order
    assert map_back([8, 3, 5], [2, 0, 1]) == [3, 5, 8]
    assert map_back(None, [2, 0, 1]) is None
    with pytest.raises(ValueError):
        map_back([8, 3], [2, 0, 1])


@given(st.data())
def test_map_back_undoes_the_shuffle(data):
    original = data.draw(st.lists(st.integers(1, 10), min_size=1, max_size=8))
    order = data.draw(st.permutations(range(len(original))))
    prompt_scores = [original[o] for o in order]
    assert map_back(prompt_scores, order) == original


def test_hint_position_follows_the_best_response():
    rewards = [0.1, 0.9, 0.3]
    assert hint_position(rewards, [0, 1, 2]) == 2
    assert hint_position(rewards, [1, 2, 0]) == 1
    assert hint_position(rewards, [2, 0, 1]) == 3
    with pytest.raises(ValueError, match="unique maximum"):
        hint_position([1, 1], [0, 1])


@pytest.mark.parametrize(
    ("scores", "rewards", "expected"),
    [
        ([9, 2], [1.0, 0.0], True),
        ([2, 9], [1.0, 0.0], False),
        ([9, 9], [1.0, 0.0], False),  # a tie at the top is wrong
        ([5, 9, 9], [0, 1, 0], False),
        ([5, 9, 8], [0, 1, 0], True),
        ([1, 1, 1], [0, 1, 0], False),
        ([1, 1, 2], [0, 0.5, 1], True),  # only the best must win; others may tie
        ([1], [1], True),
        ([0], [1], False),
        ([0], [0], True),
        ([1], [0.0], False),
        (None, [1, 0], False),
        ([9], [1, 0], False),  # wrong length is wrong, not a crash
        ([9, 2, 1], [1, 0], False),
        ([], [1], False),
    ],
)
def test_eq10(scores, rewards, expected):
    assert is_correct(scores, rewards) is expected
    assert rule_reward(scores, rewards) == (1.0 if expected else -1.0)


@given(st.data())
def test_eq10_agrees_with_its_definition(data):
    n = data.draw(st.integers(2, 6))
    rewards = data.draw(st.lists(st.integers(0, 100), min_size=n, max_size=n, unique=True))
    scores = data.draw(st.lists(st.integers(1, 10), min_size=n, max_size=n))
    j = rewards.index(max(rewards))
    winners = [i for i, s in enumerate(scores) if s == max(scores)]
    assert is_correct(scores, rewards) == (winners == [j])


def test_eq10_rejects_an_ambiguous_label():
    with pytest.raises(ValueError, match="unique maximum"):
        is_correct([9, 2], [1, 1])


@pytest.mark.parametrize(
    ("scores", "neutral"),
    [([5, 5], True), ([10, 10, 10], True), ([1, 1, 2], False), ([9, 2], False), ([7], False), (None, False)],
)
def test_neutral_means_every_response_scored_the_same(scores, neutral):
    assert is_neutral(scores) is neutral


@given(st.data())
def test_a_neutral_verdict_never_moves_a_vote(data):
    from spct.grm import vote

    n = data.draw(st.integers(2, 5))
    samples = data.draw(st.lists(st.lists(st.integers(1, 10), min_size=n, max_size=n), min_size=1, max_size=6))
    tied = data.draw(st.integers(1, 10))
    assert is_neutral([tied] * n)
    before, after = vote(samples, n), vote(samples + [[tied] * n], n)
    assert [a - b for a, b in zip(after, before, strict=True)] == [tied] * n  # the same lift for every response
    assert [i for i, t in enumerate(after) if t == max(after)] == [i for i, t in enumerate(before) if t == max(before)]


def test_meta_target_is_eq10_unless_neutral_label_is_set():
    assert [meta_target(c, t) for c, t in ((True, False), (False, True), (False, False))] == [1.0, 0.0, 0.0]
    assert [meta_target(c, t, 0.5) for c, t in ((True, False), (False, True), (False, False))] == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="neutral_label"):
        meta_target(False, True, 1.5)
    with pytest.raises(ValueError, match="both correct and neutral"):
        meta_target(True, True)


def test_rule_reward_is_exactly_plus_or_minus_one():
    assert rule_reward([9, 2], [1, 0]) == 1.0
    assert rule_reward([2, 9], [1, 0]) == -1.0
    assert rule_reward(None, [1, 0]) == -1.0


@pytest.mark.parametrize(
    ("correct", "expected"),
    [
        ([True, False, True], [True, False, True]),
        ([False, False, False], [False, False, False]),
        ([True, True, True], [False, False, False]),  # too easy
        ([True], [False]),
        ([False], [False]),
        ([], []),
    ],
)
def test_rft_accept_non_hinted(correct, expected):
    assert rft_accept(correct) == expected


@pytest.mark.parametrize(
    ("correct", "expected"),
    [
        ([True], [True]),  # no too-easy filter for hinted samples
        ([False], [False]),
        ([True, True], [True, True]),
        ([True, False], [True, False]),
    ],
)
def test_rft_accept_hinted(correct, expected):
    assert rft_accept(correct, hinted=True) == expected


def test_is_correct_reads_a_single_score_on_the_templates_scale():
    from spct.grm import is_correct, rule_reward

    assert is_correct([9], [1.0], (1, 10)) and is_correct([1], [0.0], (1, 10))
    assert not is_correct([9], [0.0], (1, 10)) and not is_correct([9], [1.0])
    assert is_correct([1], [1.0], (0, 1)) and not is_correct([0], [1.0], (0, 1))
    assert rule_reward([10], [1.0], (1, 10)) == 1.0 and rule_reward(None, [1.0], (1, 10)) == -1.0
    # n >= 2 is a ranking, whatever the scale.
    assert is_correct([9, 3], [1.0, 0.0], (1, 10)) == is_correct([9, 3], [1.0, 0.0])
