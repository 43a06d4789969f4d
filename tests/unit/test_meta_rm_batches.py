"""The meta RM scorer's micro-batches."""

from __future__ import annotations

from spct.meta_rm import micro_batches


def test_scoring_micro_batches_hold_a_token_budget_not_just_a_count():
    """64 sequences per forward pass is fine for short trajectories; at the 7B preset's 8192
    tokens it would run 512K padded tokens at once."""
    assert [len(r) for r in micro_batches([300] * 100, 64, 32768)] == [64, 36]
    assert [len(r) for r in micro_batches([8192] * 10, 64, 32768)] == [4, 4, 2]
    assert list(micro_batches([100, 200, 40000], 64, 32768)) == [[0, 1], [2]]  # a long one runs alone
    runs = list(micro_batches(sorted([50, 4000, 900, 8192, 12, 3000] * 7), 64, 32768))
    assert [i for r in runs for i in r] == list(range(42))
    assert all(len(r) * max(sorted([50, 4000, 900, 8192, 12, 3000] * 7)[i] for i in r) <= 32768 for r in runs)
