"""Score extraction: the one place untrusted model text becomes numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spct.grm import format_scores, parse_scores


def scores_and_range():
    @st.composite
    def build(draw):
        low = draw(st.integers(-20, 20))
        high = draw(st.integers(low, low + 30))
        n = draw(st.integers(1, 8))
        scores = draw(st.lists(st.integers(low, high), min_size=n, max_size=n))
        return scores, low, high

    return build()


@given(scores_and_range(), st.text(max_size=200))
def test_round_trip_of_the_output_format(case, analysis):
    scores, low, high = case
    text = f"Specific Criteria: x\nAnalysis: {analysis}\nScores: {format_scores(scores)}"
    assert parse_scores(text, len(scores), low, high) == scores


@given(scores_and_range(), st.lists(st.integers(-(10**6), 10**6), max_size=5))
def test_last_box_wins_over_boxes_in_the_analysis(case, earlier):
    scores, low, high = case
    text = f"Analysis: first guess {format_scores(earlier)}, then \\boxed{{x}}.\nScores: {format_scores(scores)}"
    assert parse_scores(text, len(scores), low, high) == scores


@given(st.text())
def test_never_raises_on_arbitrary_text(text):
    result = parse_scores(text, 2)
    assert result is None or (len(result) == 2 and all(1 <= s <= 10 for s in result))


@given(st.text(alphabet="\\boxed{} ,+-0123456789５٣_.\n\t", max_size=60), st.integers(1, 4))
def test_never_raises_on_text_dense_in_boxes(text, n):
    result = parse_scores(text, n)
    assert result is None or (len(result) == n and all(1 <= s <= 10 for s in result))


@pytest.mark.parametrize("value", [None, 7, 3.5, b"\\boxed{1, 2}", ["\\boxed{1, 2}"], object()])
def test_non_string_is_a_failure(value):
    assert parse_scores(value, 2) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Scores: 9, 2",
        "Scores: \\boxed{}",
        "Scores: \\boxed{9, 2",  # truncated generation
        "\\boxed{9, 2} and then \\boxed{9, 2",  # the last box is unclosed
        "Scores: \\boxed{9,}",
        "Scores: \\boxed{9, 2, 3}",
        "Scores: \\boxed{9}",
        "Scores: \\boxed{9.0, 2}",
        "Scores: \\boxed{9.5, 2}",
        "Scores: \\boxed{nine, two}",
        "Scores: \\boxed{9; 2}",
        "Scores: \\boxed{9 2}",
        "Scores: \\boxed{\\text{9}, 2}",  # nested braces
        "Scores: \\boxed{{9, 2}}",
        "Scores: \\boxed{11, 2}",
        "Scores: \\boxed{0, 2}",
        "Scores: \\boxed{-3, 2}",
        "Scores: \\boxed{" + "9" * 5000 + ", 2}",  # beyond int()'s digit limit
        "Scores: \\boxed{1_0, 2}",
        "Scores: \\boxed{５, 2}",  # fullwidth digit
        "Scores: \\boxed{٣, 2}",  # Arabic-Indic digit
        "Scores: \\boxed{+-9, 2}",
        "Scores: \\boxed{9\u00a0, 2}",  # non-ASCII whitespace
        "Scores: boxed{9, 2}",
        "\\boxed{9, 2} then a later broken \\boxed{9, x}",
    ],
)
def test_malformed_outputs_are_failures(text):
    assert parse_scores(text, 2) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Scores: \\boxed{9, 2}", [9, 2]),
        ("Scores: \\boxed{9,2}", [9, 2]),
        ("Scores: \\boxed{ +9 ,\t2\n}", [9, 2]),
        ("Scores: \\boxed{09, 002}", [9, 2]),
        ("Scores: \\boxed{" + "0" * 5000 + "9, 2}", [9, 2]),  # int() would refuse 5001 digits
        ("Scores: \\boxed{10, 1} trailing words", [10, 1]),
        ("\\boxed{1, 1} draft\nScores: \\boxed{3, 7}", [3, 7]),
        ("\\boxed{9, 2, 4} is three, the answer \\boxed{4, 5}", [4, 5]),
    ],
)
def test_accepted_spellings(text, expected):
    assert parse_scores(text, 2) == expected


def test_range_is_the_callers():
    assert parse_scores("\\boxed{0}", 1, low=0, high=1) == [0]
    assert parse_scores("\\boxed{2}", 1, low=0, high=1) is None
    assert parse_scores("\\boxed{-3, 0}", 2, low=-5, high=5) == [-3, 0]
    assert parse_scores("\\boxed{-0}", 1, low=0, high=1) == [0]


@pytest.mark.parametrize(
    ("n", "low", "high"), [(0, 1, 10), (-1, 1, 10), (2, 5, 4), (True, 1, 10), (2.0, 1, 10)]
)
def test_bad_arguments_raise(n, low, high):
    with pytest.raises(ValueError):
        parse_scores("\\boxed{1, 2}", n, low, high)


def test_format_scores():
    assert format_scores([9, 2]) == "\\boxed{9, 2}"
    assert format_scores([7]) == "\\boxed{7}"
    with pytest.raises(TypeError, match=r"scores\[1\]"):
        format_scores([9, 2.5])
    with pytest.raises(TypeError):
        format_scores([True])
