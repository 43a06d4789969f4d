"""benchmarks/meta_rm_ranking.py: the sample kinds, the within-item ROC-AUC and the ceiling."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from spct.item import Item
from spct.scaling import SampleSet

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "meta_rm_ranking.py"
spec = importlib.util.spec_from_file_location("meta_rm_ranking", SCRIPT)
ranking = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ranking)


def item(rewards=(1.0, 0.0)) -> Item:
    return Item(conversation=[{"role": "user", "content": "q"}], responses=["a"] * len(rewards), rewards=list(rewards))


@pytest.mark.parametrize(
    ("scores", "kind"),
    [([9, 2], "correct"), ([5, 5], "neutral"), ([2, 9], "misleading"), (None, "failed")],
)
def test_kinds_of_a_two_response_sample(scores, kind):
    assert ranking.kind({"scores": scores}, [1.0, 0.0]) == kind


def test_a_tie_at_the_top_among_three_is_wrong_but_not_misleading():
    assert ranking.kind({"scores": [8, 8, 1]}, [1.0, 0.0, 0.5]) == "other"
    assert ranking.kind({"scores": [8, 1, 8]}, [1.0, 0.0, 0.5]) == "other"
    assert ranking.kind({"scores": [1, 8, 8]}, [1.0, 0.0, 0.5]) == "misleading"


def test_within_item_auc_compares_samples_of_the_same_item_only():
    # Item A ranks its correct sample above its misleading one; item B the other way round,
    # and its meta scores are all higher, which an AUC across items would mix in.
    a = SampleSet(item(), [{"scores": [9, 2], "meta_score": 0.2}, {"scores": [2, 9], "meta_score": 0.1}])
    b = SampleSet(item(), [{"scores": [9, 2], "meta_score": 0.8}, {"scores": [2, 9], "meta_score": 0.9},
                           {"scores": [2, 9], "meta_score": 0.8}])
    auc, pairs = ranking.within_auc([a, b], 8, "correct", "misleading")
    assert pairs == 3
    assert auc == pytest.approx((1 + 0 + 0.5) / 3)
    assert ranking.within_auc([a], 8, "correct", "neutral") == (pytest.approx(float("nan"), nan_ok=True), 0)
