"""The broadcast weight sync's orchestration, on stand-ins for the actors (the broadcast itself
runs over gloo on CPU and over NCCL on two GPUs in tests/integration/test_rollout.py). Checks the
rendezvous the GPU path depends on:
the group meets at learner rank 0's node, every member connects at once with its own rank,
a new learner (each phase starts one) leads a new group, and the version reaches the engines."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")


class _Method:
    def __init__(self, log, who, name, result):
        self.log, self.who, self.name, self.result = log, who, name, result

    def remote(self, *args):
        self.log.append((self.who, self.name, args))
        return self.result(*args) if callable(self.result) else self.result


class _Actor:
    def __init__(self, log, who, **methods):
        for name, result in methods.items():
            setattr(self, name, _Method(log, who, name, result))


class _Learner:
    def __init__(self, log, ip):
        self.log = log
        self.workers = [_Actor(log, f"rank0@{ip}", weight_group_address=(ip, 29500),
                               init_weight_group=None, weight_metadata=(["w"], ["bfloat16"], [[2, 2]]))]

    def broadcast_weights(self, bucket_bytes, receivers=()):
        self.log.append(("learner", "broadcast_weights", (bucket_bytes,)))


class _Group:
    def __init__(self, log, engines, tp):
        self.workers_per_engine, self.num_engines = tp, engines
        self.engines = [_Actor(log, f"engine{i}", init_weight_group=None,
                               receive_broadcast=lambda *a: a[3]) for i in range(engines)]


def test_the_group_meets_at_learner_rank_0_and_rejoins_for_a_new_learner(monkeypatch):
    import spct.weight_sync as ws

    monkeypatch.setattr(ws.ray, "get", lambda x, **_: x)
    log = []
    sync = ws.make_weight_sync("broadcast", _Group(log, engines=2, tp=2), bucket_bytes=1024)
    first = _Learner(log, "10.0.0.7")
    sync.push_from(first, 1)
    joins = [(who, args) for who, name, args in log if name == "init_weight_group"]
    # Rank 0's node and port; world = 1 + 2 engines x 2 workers; engine i's workers from 1 + 2i.
    assert joins == [("rank0@10.0.0.7", ("10.0.0.7", 29500, 5)), ("engine0", ("10.0.0.7", 29500, 1, 5)),
                     ("engine1", ("10.0.0.7", 29500, 3, 5))]
    receives = [args for who, name, args in log if name == "receive_broadcast"]
    assert receives == [(["w"], ["bfloat16"], [[2, 2]], 1, 1024)] * 2
    order = [name for _, name, _ in log]
    assert order.index("receive_broadcast") < order.index("broadcast_weights")  # receivers wait first
    sync.push_from(first, 2)
    assert sum(name == "init_weight_group" for _, name, _ in log) == 3  # same learner: same group
    sync.push_from(_Learner(log, "10.0.0.9"), 3)
    assert [a for w, n, a in log if n == "init_weight_group"][-2:] == [("10.0.0.9", 29500, 1, 5),
                                                                       ("10.0.0.9", 29500, 3, 5)]
    with pytest.raises(ValueError, match="version"):
        sync.push_from(first, 3)


def test_an_engine_failing_mid_broadcast_stops_the_learner_instead_of_waiting_forever():
    """Under NCCL a rank 0 whose receiver died blocks in the collective for good; the driver
    watches the engines' receive calls beside the ranks' sends and stops the ranks at the first
    failure, raising it (a Ray actor here stands in for rank 0 blocked in the collective)."""
    import time

    from spct.learner.group import LearnerGroup

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        @ray.remote
        class BlockedRank:
            def broadcast_weights(self, bucket_bytes):
                time.sleep(3600)

        @ray.remote
        class DyingEngine:
            def receive_broadcast(self):
                raise RuntimeError("engine 1 died mid-broadcast")

        group = LearnerGroup.__new__(LearnerGroup)
        group.workers, group.num_ranks, group._on_shutdown = [BlockedRank.remote()], 1, None
        start = time.time()
        with pytest.raises(Exception, match="died mid-broadcast"):
            group.broadcast_weights(1024, receivers=[DyingEngine.remote().receive_broadcast.remote()])
        assert group.workers == [] and time.time() - start < 60
    finally:
        ray.shutdown()
