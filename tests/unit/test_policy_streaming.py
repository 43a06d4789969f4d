"""The policy phase's streamed rewards (policy.reward.stream_chunks): each chunk of a step's
prompts goes to the GRM as soon as its rollouts are done, while later chunks still generate; the
rewards and every prompt's sampling seed are those of the unchunked step. Stand-ins record the
calls a RolloutGroup and a GRMRewardPool would get (both are tested on real engines elsewhere)."""

from __future__ import annotations

from contextlib import contextmanager

from spct.config import PolicyRewardConfig
from spct.grm import load_template
from spct.grm.trajectory import Shown, Trajectory
from spct.item import Item
from spct.policy import PolicyReward
from spct.rollout import request_seeds


class Rollouts:
    """Queues generate calls as an engine actor does; answers each prompt with "<prompt>!"."""

    def __init__(self, events):
        self.events, self.seeds = events, []

    def submit(self, prompts, sampling, seed):
        self.seeds += list(seed)
        call = len(self.seeds)
        events = self.events

        class Pending:
            def result(self):
                events.append(f"generated up to {call}")
                return [{"samples": [{"text": f"{p}!{j}"} for j in range(sampling["n"])], "version": 0}
                        for p in prompts]

        return Pending()


class Pool:
    template = load_template("default")

    def __init__(self, events):
        self.events = events

    def _results(self, items):
        """One sample per item, scoring each response by its length."""
        return [[Trajectory("", [], None, 0, [], Shown(it, list(range(it.n)), "", (1, 10)),
                            [1 + len(r) % 10 for r in it.responses])] for it in items]

    def submit(self, items, k, temperature, seed, keyed=False, meta_score=None):
        assert keyed  # chunked: seeds follow the judged item, not its place in the call
        self.events.append(f"GRM started on {[it.id for it in items]}")
        return lambda: (self.events.append("GRM waited"), self._results(items))[1]

    def sample(self, items, k, temperature, seed, meta_score=None):
        return self._results(items)


def reward(events):
    return PolicyReward(PolicyRewardConfig(format_gate=False), 0, Pool(events))


@contextmanager
def timings(name):
    yield


def test_each_chunk_is_judged_while_the_next_generates_with_the_unchunked_seeds_and_rewards():
    events = []
    items = [Item([{"role": "user", "content": f"q{i}"}], ["x"], [0.0], id=f"q{i}") for i in range(5)]
    prompts = [f"q{i}" for i in range(5)]
    rollouts, policy_reward = Rollouts(events), reward(events)
    sampling = {"n": 2}
    groups, (rewards, info) = policy_reward.streamed(rollouts, items, prompts, sampling, "0:policy_rl:3", 3, 2,
                                                     timings)
    assert events == ["generated up to 3", "GRM started on ['q0:3:0', 'q1:3:1', 'q2:3:2']",
                      "generated up to 5", "GRM started on ['q3:3:3', 'q4:3:4']", "GRM waited", "GRM waited"]
    assert rollouts.seeds == request_seeds("0:policy_rl:3", 5)
    texts = [[s.text for s in g] for g in groups]
    assert texts == [[f"q{i}!0", f"q{i}!1"] for i in range(5)]
    assert (rewards, info) == reward([])(items, texts, 3)
