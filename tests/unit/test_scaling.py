"""Inference-time scaling from one sample set: Voting@k and MetaRM@k from subsets, tie
handling, Wilson intervals, and the table and plot files."""

from __future__ import annotations

import math
import random

import pytest

from spct.grm import vote
from spct.item import Item
from spct.scaling import (
    CORRECT,
    GREEDY,
    METARM,
    TIE,
    VOTING,
    WRONG,
    Row,
    SampleSet,
    accuracy,
    evaluate,
    judge,
    ks,
    meta_keep,
    metarm_outcome,
    plot_scaling,
    voting_outcome,
    wilson_interval,
    write_table_csv,
    write_table_markdown,
)


def item(rewards: list[float], id: str = "q") -> Item:
    conv = [{"role": "user", "content": "question"}]
    return Item(conv, [f"r{i}" for i in range(len(rewards))], rewards, id)


def samples(*scores: list[int] | None, meta: list[float] | None = None) -> list[dict]:
    out = [{"scores": s} for s in scores]
    for s, m in zip(out, meta or [], strict=False):
        s["meta_score"] = m
    return out


def test_ks_powers_of_two_then_k_max():
    assert ks(1) == [1]
    assert ks(8) == [1, 2, 4, 8]
    assert ks(6) == [1, 2, 4, 6]
    assert ks(32) == [1, 2, 4, 8, 16, 32]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="k_max"):
            ks(bad)


def test_voting_at_1_is_the_first_sample_and_at_2_sums_the_first_two():
    # best is response 0. Sample 0 ranks it first (7 > 3), sample 1 ranks response 1 first by
    # more (2 vs 9), sample 2 would restore response 0 but is outside k = 2.
    s = SampleSet(item([1.0, 0.0]), samples([7, 3], [2, 9], [10, 1]))
    one = voting_outcome(s, 1)
    assert one.verdict == judge([[7, 3]], [1.0, 0.0]).verdict == CORRECT
    two = voting_outcome(s, 2)
    assert two.totals == (9.0, 12.0) and two.counted == 2 and two.verdict == WRONG
    # k = 3: totals (19, 13): correct again.
    assert voting_outcome(s, 3).verdict == CORRECT


def test_parse_failures_add_nothing():
    s = SampleSet(item([0.0, 1.0, 0.0]), samples(None, [2, 5, 4], None, [3, 6, 1]))
    out = voting_outcome(s, 4)
    assert out.totals == (5.0, 11.0, 5.0)
    assert out.counted == 2
    assert out.mean_scores() == [2.5, 5.5, 2.5]
    assert out.verdict == CORRECT


def test_all_parse_failures_tie_every_response():
    out = judge([None, None], [1.0, 0.0, 0.0])
    assert out.verdict == TIE and out.tied == 3 and out.counted == 0
    assert out.credit() == pytest.approx(1 / 3)
    assert out.mean_scores() is None


def test_metarm_keeps_the_top_meta_samples():
    # meta scores 0.1, 0.9, 0.5, 0.2: MetaRM@4 keeps k/2 = 2 samples, #1 and #2.
    # Their sum (2+4, 8+1) = (6, 9) picks response 1 (wrong), though Voting@4 sums
    # (9+2+4+9, 1+8+1+1) = (24, 11) and is right.
    s = SampleSet(
        item([1.0, 0.0]), samples([9, 1], [2, 8], [4, 1], [9, 1], meta=[0.1, 0.9, 0.5, 0.2])
    )
    meta = metarm_outcome(s, 4)
    assert meta.totals == (6.0, 9.0) and meta.counted == 2 and meta.verdict == WRONG
    assert voting_outcome(s, 4).verdict == CORRECT
    expected = vote([x["scores"] for x in s.samples], 2, meta_scores=[0.1, 0.9, 0.5, 0.2])
    assert list(meta.totals) == expected
    # MetaRM@2 looks only at the first two samples and keeps one: #1 (meta 0.9).
    assert metarm_outcome(s, 2).totals == (2.0, 8.0)
    # MetaRM@1 keeps the single sample it has.
    assert metarm_outcome(s, 1).totals == (9.0, 1.0)


def test_metarm_k_meta_share_or_function():
    assert [meta_keep(k) for k in (1, 2, 3, 4, 8, 32)] == [1, 1, 1, 2, 4, 16]
    assert meta_keep(8, 0.25) == 2
    assert meta_keep(8, 1.0) == 8
    assert meta_keep(8, lambda k: k - 1) == 7
    for bad in (0.0, 1.5, lambda k: 0, lambda k: k + 1):
        with pytest.raises(ValueError, match="k_meta"):
            meta_keep(8, bad)
    s = SampleSet(
        item([1.0, 0.0]), samples([9, 1], [2, 8], [4, 1], [9, 1], meta=[0.1, 0.9, 0.5, 0.2])
    )
    # Keep 3 of 4: #1, #2, #3 -> (2+4+9, 8+1+1) = (15, 10).
    assert metarm_outcome(s, 4, k_meta=0.75).totals == (15.0, 10.0)


def test_a_high_meta_parse_failure_still_takes_a_slot():
    s = SampleSet(item([1.0, 0.0]), samples(None, [3, 7], [8, 2], meta=[0.9, 0.1, 0.8]))
    out = metarm_outcome(s, 3, k_meta=lambda k: 2)
    # kept: #0 (failure) and #2.
    assert out.totals == (8.0, 2.0) and out.counted == 1


def test_tie_verdicts_and_credits():
    best_shares_top = judge([[5, 5, 1]], [1.0, 0.0, 0.0])
    assert best_shares_top.verdict == TIE and best_shares_top.tied == 2
    assert best_shares_top.credit() == 0.5
    assert best_shares_top.credit(tie=0.0) == 0.0
    assert best_shares_top.credit(tie=0.5) == 0.5
    three_way = judge([[4, 4, 4]], [0.0, 0.0, 1.0])
    assert three_way.verdict == TIE and three_way.credit() == pytest.approx(1 / 3)
    assert three_way.credit(tie=0.5) == 0.5
    # Two losers tie above the best: wrong, whatever the tie rule.
    below = judge([[3, 6, 6]], [1.0, 0.0, 0.0])
    assert below.verdict == WRONG and below.credit() == 0.0 and below.credit(tie=0.5) == 0.0
    assert accuracy([best_shares_top, three_way, below]) == pytest.approx((0.5 + 1 / 3) / 3)
    assert accuracy([best_shares_top, three_way, below], tie=1.0) == pytest.approx(2 / 3)


def test_single_response_eq10_on_the_most_voted_score():
    assert judge([[1]], [1.0]).verdict == CORRECT
    assert judge([[0]], [1.0]).verdict == WRONG
    # 1, 1, 0 -> 1 wins the vote.
    assert judge([[1], [1], [0], None], [1.0]).verdict == CORRECT
    # 1, 0 -> two values share the most votes.
    split = judge([[1], [0]], [0.0])
    assert split.verdict == TIE and split.credit() == 0.5
    assert judge([None, None], [1.0]).verdict == WRONG


def test_a_single_response_is_judged_on_its_templates_scale():
    """A confident 9 of 10 on a correct answer is right; a 2 of 10 on a wrong one too."""
    assert judge([[9]], [1.0]).verdict == WRONG  # without the scale only S_1 == r_1 counts
    assert judge([[9]], [1.0], (1, 10)).verdict == CORRECT
    assert judge([[2]], [0.0], (1, 10)).verdict == CORRECT
    assert judge([[6]], [0.0], (1, 10)).verdict == WRONG  # above the middle (5.5) says correct
    assert judge([[5]], [1.0], (1, 10)).verdict == WRONG
    # Votes are for labels: 9, 7 and 3 say 1, 1, 0.
    assert judge([[9], [7], [3]], [1.0], (1, 10)).verdict == CORRECT
    assert judge([[9], [3]], [1.0], (1, 10)).verdict == TIE
    # On the 0/1 template the scale changes nothing.
    assert [judge([[v]], [r], (0, 1)).verdict for v in (0, 1) for r in (0.0, 1.0)] == [
        judge([[v]], [r]).verdict for v in (0, 1) for r in (0.0, 1.0)]


def test_sample_sets_carry_their_scale_into_every_method():
    item = Item([{"role": "user", "content": "q"}], ["a"], [1.0], id="s")
    samples = [{"scores": [8], "meta_score": 0.9}, {"scores": [3], "meta_score": 0.1}, {"scores": [9], "meta_score": 0.5}]
    results = evaluate([SampleSet(item, samples, {"scores": [9]}, scale=(1, 10))], k_max=2)
    assert results.outcomes[(GREEDY, 1)][0].verdict == CORRECT
    assert results.outcomes[(VOTING, 2)][0].verdict == TIE  # 8 says 1, 3 says 0
    assert results.outcomes[(METARM, 2)][0].verdict == CORRECT  # keeps the 8


def _sets(n_items: int = 6, k: int = 4, meta: bool = True, greedy: bool = True) -> list[SampleSet]:
    rng = random.Random(0)
    out = []
    for i in range(n_items):
        it = item([1.0, 0.0, 0.0], id=f"q{i}")
        ss = [{"scores": [rng.randint(1, 10) for _ in range(3)]} for _ in range(k)]
        if meta:
            for s in ss:
                s["meta_score"] = rng.random()
        g = {"scores": [rng.randint(1, 10) for _ in range(3)]} if greedy else None
        out.append(SampleSet(it, ss, g))
    return out


def test_evaluate_covers_every_method_and_k():
    sets = _sets(k=6)
    res = evaluate(sets)
    assert sorted(res.outcomes) == sorted(
        [(GREEDY, 1)] + [(m, k) for m in (VOTING, METARM) for k in (1, 2, 4, 6)]
    )
    assert all(len(v) == len(sets) for v in res.outcomes.values())
    for s, o in zip(sets, res.outcomes[(VOTING, 2)], strict=True):
        assert o == voting_outcome(s, 2)
    assert res.verdicts()[(GREEDY, 1)] == [
        judge([s.greedy["scores"]], s.item.rewards).verdict for s in sets
    ]
    assert sorted(evaluate(sets, k_max=3).outcomes)[-1] == (VOTING, 3)
    no_meta = evaluate(_sets(meta=False, greedy=False))
    assert sorted(no_meta.outcomes) == [(VOTING, k) for k in (1, 2, 4)]


def test_evaluate_rejects_inconsistent_inputs():
    sets = _sets()
    del sets[2].samples[1]["meta_score"]
    with pytest.raises(ValueError, match="'q2' does not"):
        evaluate(sets)
    sets = _sets()
    sets[3].greedy = None
    with pytest.raises(ValueError, match="greedy sample but item 'q3' does not"):
        evaluate(sets)
    with pytest.raises(ValueError, match="item 'q0': 4 samples, need k = 5"):
        evaluate(_sets(), k_max=5)
    sets = _sets()
    sets[1].samples[2]["scores"] = [1, 2]
    with pytest.raises(ValueError, match=r"item 'q1', samples\[2\]\.scores: expected 3 scores"):
        evaluate(sets)
    sets = _sets(meta=False)
    sets[0].samples[0] = {"text": "no scores"}
    with pytest.raises(ValueError, match=r"samples\[0\]: expected a dict with 'scores'"):
        evaluate(sets)
    with pytest.raises(ValueError, match="no sample sets"):
        evaluate([])


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [(5, 10, 0.2366, 0.7634), (8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0)],
)
def test_wilson_interval_values(successes, n, low, high):
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_interval_narrows_with_n_and_rejects_bad_input():
    assert wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0] < 0.2
    lo90, hi90 = wilson_interval(5, 10, confidence=0.9)
    assert 0.2366 < lo90 and hi90 < 0.7634
    with pytest.raises(ValueError, match="n must be"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def table(results):
    from spct.scoring import benchmark_table

    return benchmark_table("generic", results, n_boot=50)


def test_table_and_plot_files(tmp_path):
    import csv

    rows = table(evaluate(_sets(n_items=12, k=8)))
    assert [(r.method, r.k) for r in rows][:5] == [(GREEDY, 1), (VOTING, 1), (VOTING, 2), (VOTING, 4), (VOTING, 8)]
    md = write_table_markdown(rows, tmp_path / "t.md")
    text = md.read_text()
    assert text.startswith("| method | k |") and text.count("\n") == len(rows) + 2
    assert f"| Voting | 8 | {100 * rows[4].accuracy:.1f} |" in text
    with write_table_csv(rows, tmp_path / "t.csv").open() as f:
        assert [Row(r["method"], int(r["k"]), *map(float, (r["accuracy"], r["ci_low"], r["ci_high"])), int(r["n"]))
                for r in csv.DictReader(f)] == rows
    png = plot_scaling(rows, tmp_path / "plots" / "scaling.png", "synthetic")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    only_voting = [r for r in rows if r.method == VOTING]
    assert plot_scaling(only_voting, tmp_path / "v.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no Greedy"):
        plot_scaling([], tmp_path / "empty.png")


def test_nan_free_accuracy_of_real_rows():
    rows = table(evaluate(_sets()))
    assert all(not math.isnan(v) for r in rows for v in (r.accuracy, r.ci_low, r.ci_high))


def test_generations_keep_the_scale_for_rescoring(tmp_path):
    from spct.evaluate.tables import load_generations, save_generations

    item = Item([{"role": "user", "content": "q"}], ["a"], [1.0], id="s")
    sets = [SampleSet(item, [{"scores": [8], "text": "t", "order": [0], "prompt": "p"}],
                      {"scores": [9], "text": "g", "order": [0], "prompt": "p"}, scale=(1, 10))]
    save_generations(sets, tmp_path / "g.jsonl")
    (loaded,) = load_generations(tmp_path / "g.jsonl", [item])
    assert loaded.scale == (1, 10) and loaded.samples[0]["scores"] == [8]
