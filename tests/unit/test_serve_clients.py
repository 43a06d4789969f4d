"""The trainers' side of the reward server: `spct.client`, the TRL reward function and the veRL
reward function, each called the way its trainer calls it (TRL 1.16's `_calculate_rewards`
keywords, veRL's `compute_score` keywords, OpenRLHF's one-query bodies), against the real HTTP
app over a stand-in GRM that scores each response by a table and records the groups it judged.
The engines behind the app are in tests/integration/test_serve.py (with TRL's GRPOTrainer)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from spct.client import AsyncClient, Client, ServerError
from spct.serve import BackgroundServer, ServeConfig, app_options, make_app

TOKEN = "t0ken"


class TableGRM:
    """Every sample scores a response by its first letter (a=10, b=7, c=4, else 1); records the
    responses of every item it judged."""

    model, has_meta, template, low, high = "table", False, "default", 1, 10
    SCORES = {"a": 10, "b": 7, "c": 4}

    def __init__(self):
        self.groups, self.lock = [], threading.Lock()

    def check(self, item):
        return "too long for the context" if any(r.startswith("huge") for r in item.responses) else None

    def score(self, items, k, temperature, k_meta, use_meta):
        from spct.grm import vote

        out = []
        for item in items:
            with self.lock:
                self.groups.append(sorted(item.responses))
            samples = [[self.SCORES.get(r[0], 1) for r in item.responses] for _ in range(k)]
            out.append({"rewards": vote(samples, item.n), "scores": samples, "meta_scores": None})
        return out


@pytest.fixture
def grm():
    return TableGRM()


@pytest.fixture
def url(grm):
    options = {**app_options(ServeConfig()), "group_window_s": 5.0, "max_responses": 4}
    with BackgroundServer(make_app(grm, token=TOKEN, **options)) as address:
        yield address


def unit(score: int) -> float:
    return (score - 1) / 9


def test_client_scores_and_names_the_refused_field(url):
    with Client(url, token=TOKEN) as c:
        assert c.health()["max_responses"] == 4
        reply = c.score("Q?", ["apple", "cherry"], k=2)
        assert reply["rewards"] == [20.0, 8.0] and reply["unit_rewards"] == pytest.approx([1.0, unit(4)])
        (first, second) = c.batch_score([{"query": "Q", "responses": ["b"]},
                                         {"conversation": [{"role": "user", "content": "Q"}], "responses": ["z"]}])
        assert first["unit_rewards"] == pytest.approx([unit(7)]) and second["unit_rewards"] == [0.0]
        with pytest.raises(ServerError) as refused:
            c.score("Q", ["a"], k=0)
        assert (refused.value.status, refused.value.field) == (422, "k")
    with pytest.raises(ServerError) as refused, Client(url, token="wrong", retries=0) as c:
        c.score("Q", ["a"])
    assert refused.value.status == 401


def test_client_retries_a_busy_server_and_gives_up_after_its_retries():
    """503 with Retry-After (a full queue) and a dropped connection are retried; a 500 is not."""
    calls = []
    app = FastAPI()

    @app.post("/score")
    async def score():
        calls.append(1)
        if len(calls) <= 2:
            return JSONResponse({"error": "busy", "field": None}, 503, {"Retry-After": "0"})
        return {"rewards": [1.0], "unit_rewards": [0.0]}

    @app.post("/batch_score")
    async def broken():
        return JSONResponse({"error": "scoring failed (RuntimeError)", "field": None}, 500)

    with BackgroundServer(app) as address:
        with Client(address, backoff_s=0.01) as c:
            assert c.score("Q", ["a"])["unit_rewards"] == [0.0] and len(calls) == 3
            calls.clear()
            with pytest.raises(ServerError, match="busy"):
                Client(address, retries=1).score("Q", ["a"])
            assert len(calls) == 2
            with pytest.raises(ServerError, match="RuntimeError") as failed:
                c.batch_score([{"query": "Q", "responses": ["a"]}])
            assert failed.value.status == 500
    with pytest.raises(ServerError, match="no reply"):  # nothing listens there any more
        Client(address, retries=1, backoff_s=0.01).score("Q", ["a"])


def test_openrlhf_one_query_per_request_is_judged_as_a_group(url, grm):
    """OpenRLHF posts each rollout alone ({"query": [q], "prompts": [p], "labels": [l]}, read from
    its SingleTurnAgentExecutor._fetch_rewards_via_http); n_samples_per_prompt of them arrive
    together."""
    prompt = "<|user|>Name a fruit<|assistant|>"
    answers = ["apple", "banana", "cherry", "dates"]
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def post(answer):
        body = {"query": [prompt + answer + "</s>"], "prompts": [prompt], "labels": [""]}
        return httpx.post(url + "/openrlhf?group=true&group_size=4", json=body, headers=headers, timeout=30)

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(post, answers))
    assert grm.groups == [sorted(answers)]
    assert [r.json()["rewards"][0] for r in replies] == pytest.approx([1.0, unit(7), unit(4), 0.0])


def test_trl_reward_judges_each_prompts_completions_together(url, grm):
    from spct.integrations.trl import GRMReward

    reward = GRMReward(url, token=TOKEN, k=2)
    prompts = ["Q1"] * 3 + [[{"role": "user", "content": "Q2"}]] * 2
    completions = ["apple", "", "cherry", [{"role": "assistant", "content": "banana"}],
                   [{"role": "assistant", "content": "zzz"}]]
    metrics = {}
    rewards = reward(prompts=prompts, completions=completions, completion_ids=[[1]] * 5,
                     trainer_state=None, log_metric=metrics.__setitem__, log_extra=lambda *a: None)
    assert rewards == pytest.approx([1.0, 0.0, unit(4), unit(7), 0.0])  # the empty one: unscored 0
    assert sorted(grm.groups) == [["apple", "cherry"], ["banana", "zzz"]]
    assert metrics == {"spct_grm/parse_failure_rate": 0.0} and reward.__name__ == "spct_grm"


def test_trl_reward_joins_a_group_split_across_processes_and_cuts_big_groups(url, grm):
    """TRL may give one process [q0, q0, q1] and another [q1, q2, q2] (its RepeatSampler): with
    num_generations the server judges q1's two halves as one group."""
    from spct.integrations.trl import GRMReward

    reward = GRMReward(url, token=TOKEN, num_generations=2)
    shares = [(["q0", "q0", "q1"], ["a0", "b0", "a1"]), (["q1", "q2", "q2"], ["c1", "a2", "huge"])]
    with ThreadPoolExecutor(2) as pool:
        out = list(pool.map(lambda s: reward(prompts=s[0], completions=s[1]), shares))
    assert out[0] == pytest.approx([1.0, unit(7), 1.0]) and out[1] == pytest.approx([unit(4), 0.0, 0.0])
    assert sorted(grm.groups) == [["a0", "b0"], ["a1", "c1"]]  # q2 overflowed: unscored, not an error
    grm.groups.clear()
    started = time.monotonic()
    big = GRMReward(url, token=TOKEN)(prompts=["q"] * 6, completions=list("abcabc"))
    assert big == pytest.approx([1.0, unit(7), unit(4)] * 2)
    assert sorted(map(len, grm.groups)) == [2, 4]  # max_responses = 4
    assert time.monotonic() - started < 4  # the parts went together: none waited out group_window_s (5 s)


def test_trl_reward_in_process_needs_no_server():
    from spct.integrations.trl import GRMReward

    grm = TableGRM()
    rewards = GRMReward(scorer=grm)(prompts=["Q"] * 2 + ["R"], completions=["a", "c", "huge"])
    assert rewards == pytest.approx([1.0, unit(4), 0.0]) and grm.groups == [["a", "c"]]
    with pytest.raises(ValueError, match="either url"):
        GRMReward()


def test_verl_reward_groups_a_questions_trajectories(url, grm, monkeypatch):
    """veRL awaits `compute_score(data_source=, solution_str=, ground_truth=, extra_info=,
    **reward_kwargs)` once per trajectory (its RewardLoopWorker); the question is in extra_info."""
    from spct.integrations.verl import compute_score

    monkeypatch.setenv("SPCT_SERVE_URL", url)
    monkeypatch.setenv("SPCT_SERVE_TOKEN", TOKEN)

    async def step():
        calls = [compute_score(data_source="gsm8k", solution_str=answer, ground_truth="51",
                               extra_info={"question": "17 * 3?", "index": i, "num_turns": 2}, group_size=3)
                 for i, answer in enumerate(["alpha", "beta", "zeta"])]
        calls.append(compute_score(data_source="gsm8k", solution_str="  ", ground_truth="51",
                                   extra_info={"question": "17 * 3?"}, group_size=3))
        return await asyncio.gather(*calls)

    results = asyncio.run(step())
    assert [r["score"] for r in results] == pytest.approx([1.0, unit(7), 0.0, 0.0])
    assert grm.groups == [["alpha", "beta", "zeta"]]
    with pytest.raises(ValueError, match="extra_info has no 'question'"):
        asyncio.run(compute_score(data_source="d", solution_str="a", ground_truth=None, extra_info={"index": 0}))


def test_async_client_requests_are_coalesced(url, grm):
    async def many():
        async with AsyncClient(url, token=TOKEN) as c:
            return await asyncio.gather(*(c.score(f"Q{i}", ["a"]) for i in range(16)))

    replies = asyncio.run(many())
    assert all(r["unit_rewards"] == [1.0] for r in replies) and len(grm.groups) == 16


def test_measuring_a_prompt_does_not_block_the_event_loop():
    """The prompt check tokenizes (about 0.5 s for a maximal body); it runs in a worker thread,
    so /health answers at once meanwhile."""

    class SlowCheck(TableGRM):
        def check(self, item):
            time.sleep(1.0)
            return None

    with BackgroundServer(make_app(SlowCheck(), **app_options(ServeConfig()))) as address, ThreadPoolExecutor(1) as pool:
        scoring = pool.submit(httpx.post, address + "/score", json={"query": "Q", "responses": ["a"]}, timeout=30)
        time.sleep(0.3)
        start = time.monotonic()
        health = httpx.get(address + "/health", timeout=30)
        took = time.monotonic() - start
        assert scoring.result().status_code == 200
    assert health.status_code == 200 and took < 0.5, took


@pytest.mark.parametrize(("extra", "field", "says"), [
    ({"group": 5}, "group", "a group id string"), ({"group": ""}, "group", "1..256 characters"),
    ({"group_size": 4}, "group_size", "only with 'group'"), ({"group": True, "group_size": 0}, "group_size", "1.."),
    ({"group": "g", "group_size": "4"}, "group_size", "an integer")])
def test_bad_group_fields_are_named(url, extra, field, says):
    reply = httpx.post(url + "/score", json={"query": "Q", "responses": ["a"], **extra},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert reply.status_code == 422 and reply.json()["field"] == field and says in reply.json()["error"], reply.text
    reply = httpx.post(url + "/openrlhf?group=true&group_size=0", json={"query": ["Pa"], "prompts": ["P"]},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert reply.status_code == 422 and reply.json()["field"] == "group_size"
