"""RL's pre-filter: the rule, and the phase's item list around a GRM pool that answers with set
verdicts (the pool's sampling runs on real engines in tests/e2e/test_train_quick.py; the
configuration checks are in tests/unit/test_config.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spct.config import Config
from spct.data.synthetic import SyntheticConfig, make_items
from spct.grm.rules import prefilter_keep
from spct.grm.trajectory import Shown, Trajectory
from spct.item import DataError
from spct.recipes.rl import train_items
from spct.run_state import RunState


def test_only_items_right_in_every_sample_are_left_out():
    assert prefilter_keep([[True, True, True], [True, False, True], [False] * 3, []]) == [False, True, True, True]


class Pool:
    """Samples whose scores make item i right in every sample iff i is even."""

    class Template:
        low, high = 1, 10

    template = Template()

    def __init__(self) -> None:
        self.closed = False

    def sample(self, items, k, temperature, seed):
        def scores(item):
            right = int(item.id.rsplit("-", 1)[1]) % 2 == 0
            if item.n == 1:  # a single response: the score states its label
                return [9 if (item.rewards[0] > 0.5) == right else 1]
            return [9 if (j == item.best) == right else 1 for j in range(item.n)]

        return [[Trajectory("", [], None, 0, [], Shown(it, list(range(it.n)), "", (1, 10)), scores(it))
                 for _ in range(k)] for it in items]

    def shutdown(self) -> None:
        self.closed = True


class Tracker:
    def __init__(self) -> None:
        self.logged = []

    def log(self, metrics, step, phase):
        self.logged.append((phase, metrics))


class FakeContext:
    def __init__(self, out: Path, prompts_per_step: int = 4) -> None:
        self.cfg = Config(output_dir=str(out))
        self.cfg.rl.prefilter_model, self.cfg.rl.prefilter_samples = "weak/grm", 3
        self.cfg.rl.prompts_per_step = prompts_per_step
        items = make_items(12, 0, "train", SyntheticConfig())
        for i, it in enumerate(items):
            it.id = f"item-{i}"
        self.data, self.out, self.state, self.tracker = {"train": items}, out, RunState(), Tracker()
        self.pools: list[Pool] = []
        self.actors = self  # the run's actors: only its GRM pools are asked for

    def grm_pool(self, model: str, role: str, in_group: bool = False) -> Pool:
        assert model == "weak/grm" and in_group  # it samples in the rollout engines' bundles
        self.pools.append(Pool())
        return self.pools[-1]


def test_the_phase_draws_from_the_kept_items_and_a_resume_reads_them_back(tmp_path):
    p = FakeContext(tmp_path)
    kept = train_items(p)
    assert [it.id for it in kept] == [f"item-{i}" for i in range(1, 12, 2)]
    assert p.pools[0].closed  # its engines give way to the learner
    assert p.tracker.logged == [("rl", {"prefilter_items": 12, "prefilter_dropped": 6})]
    saved = json.loads((tmp_path / "rl" / "prefilter.json").read_text())
    assert saved["kept"] == [it.id for it in kept] and saved["samples"] == 3
    again = FakeContext(tmp_path)
    assert [it.id for it in train_items(again)] == [it.id for it in kept] and not again.pools


def test_too_few_items_left_is_an_error_naming_the_setting(tmp_path):
    with pytest.raises(DataError, match=r"prefilter.json: field 'kept': at least rl.prompts_per_step=8 items"):
        train_items(FakeContext(tmp_path, prompts_per_step=8))
