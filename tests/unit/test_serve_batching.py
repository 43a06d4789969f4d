"""The reward server's batcher: concurrent requests coalesced into engine batches, groups merged
from single requests, a bounded queue, per-request timeouts. The scorer is a recording stand-in
(the batching logic is under test; the engines are in tests/integration/test_serve.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from spct.item import Item
from spct.serve.batching import Batcher, QueueFull, ScoreJob, Unscorable, share_of


class Recorder:
    """Scores response r as len(r) per sample; records every call's items and settings."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[tuple[list[list[str]], int, float, bool]] = []
        self.delay, self.fail = delay, fail
        self.lock = threading.Lock()

    def score(self, items, k, temperature, meta):
        with self.lock:
            self.calls.append(([list(it.responses) for it in items], k, temperature, meta))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("engine said no")
        return [{"rewards": [float(k * len(r)) for r in it.responses],
                 "scores": [[len(r) for r in it.responses] for _ in range(k)], "meta_scores": None} for it in items]


def job(query: str, *responses: str, k: int = 1, group: str | None = None, size: int | None = None,
        temperature: float = 0.5) -> ScoreJob:
    item = Item([{"role": "user", "content": query}], list(responses), [0.0] * len(responses))
    return ScoreJob(item, k, temperature, False, group, size)


def batcher(scorer: Recorder, check=lambda item: None, **options) -> Batcher:
    return Batcher(scorer.score, check, **{"window_s": 0.05, "group_window_s": 0.5, **options})


async def concurrently(b: Batcher, requests: list[list[ScoreJob]], timeout: float | None = None) -> list:
    return await asyncio.gather(*(b.submit(r, timeout) for r in requests), return_exceptions=True)


def test_concurrent_requests_share_one_engine_call_and_each_gets_its_own_result():
    rec = Recorder()
    b = batcher(rec)
    requests = [[job(f"q{i}", "x" * (i + 1))] for i in range(32)]
    replies = asyncio.run(concurrently(b, requests))
    assert len(rec.calls) == 1 and len(rec.calls[0][0]) == 32
    for i, (result,) in enumerate(replies):
        assert result["rewards"] == [float(i + 1)]


def test_settings_split_a_batch_and_the_cap_holds_whole_requests():
    rec = Recorder()
    b = batcher(rec, max_batch_prompts=6)
    requests = [[job("a", "1", k=2)], [job("b", "22", k=2), job("c", "333", k=2)], [job("d", "4", k=1)],
                [job("e", "55", k=2, temperature=0.0)]]
    replies = asyncio.run(concurrently(b, requests))
    assert replies[1][1]["rewards"] == [6.0] and replies[3][0]["rewards"] == [4.0]
    # 6 prompts fit the first batch (k=2: a, b, c), by settings: one call per (k, temperature)
    sizes = [(len(items), k, t) for items, k, t, _ in rec.calls]
    assert sizes[0] == (3, 2, 0.5)
    assert sorted(sizes[1:]) == [(1, 1, 0.5), (1, 2, 0.0)]
    assert sum(len(items) * k for items, k, _, _ in rec.calls[:1]) <= 6


def test_a_request_larger_than_the_cap_still_goes_alone():
    rec = Recorder()
    (reply,) = asyncio.run(concurrently(batcher(rec, max_batch_prompts=2), [[job("q", "a", k=8)]]))
    assert reply[0]["rewards"] == [8.0] and len(rec.calls) == 1


def test_a_group_sent_one_response_per_request_is_judged_in_one_prompt():
    rec = Recorder()
    b = batcher(rec, group_window_s=30)  # complete groups must not wait for the window
    requests = [[job("P", r, group="P", size=4)] for r in ("a", "bb", "ccc", "dddd")]
    requests += [[job("Q", "z", group="Q", size=2)], [job("Q", "zz", group="Q", size=2)], [job("lone", "y")]]
    started = time.monotonic()
    replies = asyncio.run(concurrently(b, requests))
    assert time.monotonic() - started < 5
    judged = sorted(map(tuple, rec.calls[0][0]))
    assert judged == [("a", "bb", "ccc", "dddd"), ("y",), ("z", "zz")]
    (p2,) = replies[2]
    assert p2["rewards"] == [3.0] and p2["scores"] == [[3]] and p2["group_size"] == 4
    assert "group_size" not in replies[-1][0]


def test_an_incomplete_group_is_judged_when_its_window_closes():
    rec = Recorder()
    b = batcher(rec, group_window_s=0.3)

    async def scenario():
        first = asyncio.gather(*(b.submit([job("P", r, group="P", size=4)]) for r in ("a", "bb", "ccc")))
        await asyncio.sleep(0.1)
        assert rec.calls == []  # waiting for the fourth
        return await first

    started = time.monotonic()
    replies = asyncio.run(scenario())
    assert 0.3 <= time.monotonic() - started < 3
    assert rec.calls[0][0] == [["a", "bb", "ccc"]]
    assert [r[0]["rewards"] for r in replies] == [[1.0], [2.0], [3.0]] and replies[0][0]["group_size"] == 3


def test_groups_without_a_size_hold_what_the_batch_window_gathers_and_split_at_max_responses():
    rec = Recorder()
    b = batcher(rec, group_window_s=30, max_responses=3)

    async def scenario():
        first = [[job("P", r, group="P")] for r in ("a", "b", "c", "d", "e")]
        first.append([job("P", "f", "g", group="P")])  # a request's own responses stay in one part
        replies = await concurrently(b, first)
        late = await b.submit([job("P", "h", group="P")])  # after the window: a group of its own
        return replies, late

    started = time.monotonic()
    replies, late = asyncio.run(scenario())
    assert time.monotonic() - started < 5  # no group_size: nothing waits for group_window_s
    assert rec.calls[0][0] == [["a", "b", "c"], ["d", "e"], ["f", "g"]] and rec.calls[1][0] == [["h"]]
    assert replies[5][0]["rewards"] == [1.0, 1.0] and replies[5][0]["group_size"] == 2
    assert late[0]["group_size"] == 1


def test_the_same_group_key_with_other_settings_is_another_group():
    rec = Recorder()
    requests = [[job("P", "a", group="P", size=2)], [job("P", "b", group="P", size=2, k=2)],
                [job("P", "c", group="P", size=2)]]
    asyncio.run(concurrently(batcher(rec, group_window_s=0.2), requests))  # b's group never completes
    judged = sorted((tuple(map(tuple, items)), k) for items, k, _, _ in rec.calls)
    assert judged == [((("a", "c"),), 1), ((("b",),), 2)]


def test_a_merged_group_that_overflows_the_context_is_unscorable_not_an_error():
    rec = Recorder()
    b = batcher(rec, check=lambda item: "too long" if item.n > 2 else None)
    requests = [[job("P", r, group="P", size=3)] for r in ("a", "b", "c")] + [[job("q", "x")]]
    replies = asyncio.run(concurrently(b, requests))
    assert all(isinstance(r[0], Unscorable) for r in replies[:3])
    assert replies[3][0]["rewards"] == [1.0]


def test_a_full_queue_refuses_with_a_retry_time_and_queues_nothing():
    rec = Recorder(delay=0.3)
    b = batcher(rec, max_batch_prompts=4, max_queue_prompts=4)

    async def scenario():
        running = asyncio.ensure_future(b.submit([job("q", "a", k=4)]))
        await asyncio.sleep(0.15)  # on the engines now; the queue is empty
        waiting = asyncio.ensure_future(b.submit([job("q", "b", k=4)]))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as refused:
            await b.submit([job("q", "c", k=1)])
        assert refused.value.retry_after >= 1
        assert b.waiting_prompts() == 4
        return await running, await waiting

    first, second = asyncio.run(scenario())
    assert first[0]["rewards"] == [4.0] and second[0]["rewards"] == [4.0]
    assert [items for items, *_ in rec.calls] == [[["a"]], [["b"]]]


def test_a_request_that_times_out_while_queued_is_never_scored():
    rec = Recorder(delay=0.4)
    b = batcher(rec, max_batch_prompts=1)

    async def scenario():
        busy = asyncio.ensure_future(b.submit([job("q", "a")]))
        await asyncio.sleep(0.1)
        with pytest.raises(TimeoutError):
            await b.submit([job("q", "late")], timeout_s=0.1)
        assert b.waiting_prompts() == 0
        await busy
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert [items for items, *_ in rec.calls] == [[["a"]]]


def test_a_scorer_error_reaches_every_job_of_its_call_and_the_batcher_goes_on():
    rec = Recorder(fail=True)
    b = batcher(rec)

    async def scenario():
        replies = await concurrently(b, [[job("q", "a")], [job("q", "b")]])
        rec.fail = False
        return replies, await b.submit([job("q", "c")])

    replies, after = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in replies)
    assert after[0]["rewards"] == [1.0]


def test_share_of_cuts_every_per_response_list():
    result = {"rewards": [1.0, 2.0, 3.0], "scores": [[1, 2, 3], None], "meta_scores": [0.5, 0.1], "k_meta": 1}
    assert share_of(result, 1, 2) == {"rewards": [2.0, 3.0], "scores": [[2, 3], None], "meta_scores": [0.5, 0.1],
                                      "k_meta": 1, "group_size": 3}


def test_a_failing_check_fails_its_batch_and_the_batcher_goes_on():
    rec = Recorder()
    broken = {"on": True}

    def check(item):
        if broken["on"]:
            raise ValueError("tokenizer exploded")
        return None

    b = batcher(rec, check=check)

    async def scenario():
        failed = await concurrently(b, [[job("P", "a", group="P")], [job("P", "b", group="P")]])
        broken["on"] = False
        return failed, await b.submit([job("P", "c", group="P"), job("P", "d", group="P")])

    failed, after = asyncio.run(scenario())
    assert all(isinstance(r, ValueError) for r in failed)
    assert [r["rewards"] for r in after] == [[1.0], [1.0]] and rec.calls[0][0] == [["c", "d"]]


def test_a_reference_travels_with_its_request_and_its_group():
    """/score's `reference`: the item carries it (the pool shows it after the query), requests
    join a group only with the same reference, and the merged group keeps it."""
    from spct.grm import build_prompt
    from spct.serve.requests import Limits, RequestError, parse_score_request

    limits = Limits(max_body_bytes=10**6, max_items=8, max_responses=8, max_chars_per_text=100, default_k=1,
                    max_k=4, temperature=0.5)

    def parse(response: str, reference) -> ScoreJob:
        body = {"query": "2+2?", "responses": [response], "group": "g", "group_size": 2, "reference": reference}
        return parse_score_request(body, "", limits, has_meta=False)

    a, b, other = parse("4", "4"), parse("5", "4"), parse("5", "5")
    assert a.item.meta == {"reference": "4"} and a.group == b.group != other.group
    assert parse_score_request({"query": "q", "responses": ["r"]}, "", limits, False).item.meta == {}
    with pytest.raises(RequestError) as bad:
        parse("4", 4)
    assert (bad.value.status, bad.value.field) == (422, "reference")

    merged = []

    class Keeper(Recorder):
        def score(self, items, k, temperature, meta):
            merged.extend(items)
            return super().score(items, k, temperature, meta)

    asyncio.run(concurrently(batcher(Keeper()), [[a], [b]]))
    (item,) = merged
    assert item.responses == ["4", "5"] and item.meta == {"reference": "4"}
    prompt = build_prompt(item, [0, 1], template="default", with_reference=True)
    assert prompt.index("2+2?") < prompt.index("Reference answer") < prompt.index("[The Begin of Response 1]")


def test_an_error_of_the_batcher_itself_reaches_the_waiting_requests_at_once_and_it_goes_on(monkeypatch):
    """Not a scorer's or a check's error (those fail their batch): one in the batching loop. The
    requests waiting get it at once instead of at their timeout, and later requests are served."""
    rec = Recorder()
    b = batcher(rec)
    units = Batcher._units
    broken = {"on": True}

    def flaky(self, now):
        if broken["on"] and self._queue:
            broken["on"] = False
            raise KeyError("a bug in the batching")
        return units(self, now)

    monkeypatch.setattr(Batcher, "_units", flaky)

    async def scenario():
        start = time.monotonic()
        failed = await concurrently(b, [[job("q", "a")], [job("q", "b")]], timeout=30)
        waited, task = time.monotonic() - start, b._task
        after = await b.submit([job("q", "c")], timeout_s=30)
        return failed, waited, after, b._task is task and not task.done()

    failed, waited, after, same_loop = asyncio.run(scenario())
    assert all(isinstance(r, KeyError) for r in failed) and waited < 5
    assert after[0]["rewards"] == [1.0] and same_loop
