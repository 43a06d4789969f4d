"""Voting@k, MetaRM@k and the evaluation tie-break."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spct.grm import map_back, pick_best, random_order, vote


def test_vote_sums_and_skips_failures():
    samples = [[9, 2, 5], None, [7, 3, 5], [1, 10, 1]]
    assert vote(samples, 3) == [17.0, 15.0, 11.0]
    assert all(isinstance(t, float) for t in vote(samples, 3))
    assert vote([None, None], 2) == [0.0, 0.0]
    assert vote([], 2) == [0.0, 0.0]


def test_meta_guided_vote_keeps_the_top_k_meta():
    samples = [[9, 1], [1, 9], [1, 9], [8, 2]]
    meta = [0.9, 0.1, 0.2, 0.8]
    assert vote(samples, 2, k_meta=2, meta_scores=meta) == [17.0, 3.0]
    assert vote(samples, 2, k_meta=1, meta_scores=meta) == [9.0, 1.0]
    assert vote(samples, 2, k_meta=4, meta_scores=meta) == vote(samples, 2)
    # default k_meta is half the samples
    assert vote(samples, 2, meta_scores=meta) == [17.0, 3.0]


def test_meta_ties_go_to_the_earlier_sample():
    samples = [[1, 9], [9, 1], [5, 5]]
    assert vote(samples, 2, k_meta=1, meta_scores=[0.5, 0.5, 0.1]) == [1.0, 9.0]
    assert vote(samples, 2, k_meta=2, meta_scores=[0.1, 0.5, 0.5]) == [14.0, 6.0]


def test_a_selected_parse_failure_adds_nothing():
    samples = [None, [9, 1], [1, 9]]
    assert vote(samples, 2, k_meta=2, meta_scores=[0.9, 0.8, 0.1]) == [9.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": [[1, 2, 3]], "n": 2}, r"samples\[0\] has 3 scores"),
        ({"samples": [[1, 2]], "n": 0}, "n must be"),
        ({"samples": [[1, 2]], "n": 2, "k_meta": 1}, "needs meta_scores"),
        ({"samples": [[1, 2]], "n": 2, "meta_scores": [0.1, 0.2]}, "2 meta scores for 1 samples"),
        ({"samples": [[1, 2]], "n": 2, "k_meta": 2, "meta_scores": [0.1]}, "k_meta"),
        ({"samples": [[1, 2]], "n": 2, "k_meta": 0, "meta_scores": [0.1]}, "k_meta"),
        ({"samples": [[1, 2]], "n": 2, "k_meta": 1, "meta_scores": [float("nan")]}, "finite"),
    ],
)
def test_vote_validates_lengths(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vote(**kwargs)


@given(st.data())
def test_vote_is_invariant_to_the_shuffles(data):
    n = data.draw(st.integers(1, 6), label="n")
    k = data.draw(st.integers(1, 8), label="k")
    score = st.integers(1, 10)
    samples = data.draw(
        st.lists(st.none() | st.lists(score, min_size=n, max_size=n), min_size=k, max_size=k)
    )
    meta = data.draw(st.lists(st.floats(0, 1), min_size=k, max_size=k))
    k_meta = data.draw(st.integers(1, k))
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    mapped = []
    for sample in samples:
        order = random_order(n, rng)
        prompt_scores = None if sample is None else [sample[o] for o in order]
        mapped.append(map_back(prompt_scores, order))
    assert mapped == samples
    assert vote(mapped, n) == vote(samples, n)
    assert vote(mapped, n, k_meta, meta) == vote(samples, n, k_meta, meta)


def test_pick_best_without_rng_is_the_first_maximum():
    assert pick_best([3.0, 9.0, 9.0]) == 1
    assert pick_best([5.0]) == 0
    with pytest.raises(ValueError):
        pick_best([])


def test_pick_best_breaks_ties_uniformly():
    rng = random.Random(0)
    counts = Counter(pick_best([2.0, 9.0, 9.0, 9.0], rng) for _ in range(3000))
    assert set(counts) == {1, 2, 3}
    assert all(850 < c < 1150 for c in counts.values())
    assert all(pick_best([1.0, 9.0, 2.0], rng) == 1 for _ in range(20))
