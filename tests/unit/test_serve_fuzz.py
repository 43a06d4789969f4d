"""The reward server's HTTP layer under fuzzed bodies and concurrent clients: every request gets
a 200 or a 4xx naming what was wrong, never a 5xx, and the server keeps answering.

The scorer here is a stand-in that scores any text (the HTTP layer is what is under test; the
engines behind it are tested in tests/integration/test_serve.py)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spct.serve import BackgroundServer, ServeConfig, app_options, make_app

TOKEN = "s3cret"


class AnyScorer:
    """Scores every response by its length; one sample in three fails to parse."""

    model, has_meta, template, low, high = "any", True, "default", 1, 10

    def check(self, item):
        return None

    def score(self, items, k, temperature, k_meta, use_meta):
        from spct.grm import vote

        out = []
        for item in items:
            samples = [None if j % 3 == 2 else [1 + len(r) % 10 for r in item.responses] for j in range(k)]
            meta = [float(j) for j in range(k)] if use_meta else None
            out.append({"rewards": vote(samples, item.n, k_meta, meta), "scores": samples, "meta_scores": meta})
        return out


@pytest.fixture(scope="module")
def url():
    options = {**app_options(ServeConfig()), "max_body_bytes": 4096, "max_items": 8,
               "max_responses": 4, "max_chars_per_text": 200, "max_k": 4}
    with BackgroundServer(make_app(AnyScorer(), token=TOKEN, **options)) as address:
        yield address


HEADERS = {"Authorization": f"Bearer {TOKEN}"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30) | st.sampled_from(["\ud800", "a\udfffb"]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20)
# Bodies near the valid shapes reach deeper checks than random JSON.
score_bodies = st.fixed_dictionaries(
    {"query": st.one_of(st.text(max_size=40), json_values), "responses": st.one_of(
        st.lists(st.text(max_size=40), max_size=6), json_values)},
    optional={"k": json_values | st.integers(-2, 6), "temperature": json_values, "meta": json_values,
              "conversation": json_values})
openrlhf_bodies = st.fixed_dictionaries(
    {"query": st.lists(st.text(max_size=40), max_size=10) | json_values,
     "prompts": st.lists(st.text(max_size=20), max_size=10) | json_values})


def check(reply: httpx.Response) -> None:
    assert reply.status_code < 500, reply.text
    body = reply.json()
    if reply.status_code >= 400:
        assert set(body) == {"error", "field"} and body["error"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/score", "/batch_score", "/openrlhf", "/openrlhf?group=true&k=3"]),
       body=st.one_of(json_values, score_bodies, openrlhf_bodies,
                      st.builds(lambda items: {"items": items}, st.lists(score_bodies, max_size=9))))
def test_fuzzed_bodies_get_a_200_or_a_named_4xx(url, path, body):
    check(httpx.post(url + path, content=json.dumps(body), headers=HEADERS, timeout=30))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_random_bytes_are_refused_with_a_4xx(url, raw):
    reply = httpx.post(url + "/score", content=raw, headers=HEADERS, timeout=30)
    check(reply)
    assert 400 <= reply.status_code < 500


@pytest.mark.parametrize(("body", "status", "field"), [
    ("[" * 2000 + "]" * 2000, 400, "body"),  # deeper than the JSON parser recurses
    ('{"query": "\\ud800", "responses": ["a"]}', 422, "query"),  # a lone surrogate
    ('{"query": "q", "responses": ["ok", "\\udfff"]}', 422, "responses[1]"),
    ('{"query": ["\\ud83d"], "prompts": ["p"]}', 422, "query[0]"),
])
def test_bodies_that_parse_into_no_text_are_named(url, body, status, field):
    path = "/openrlhf" if '"prompts"' in body else "/score"
    reply = httpx.post(url + path, content=body, headers=HEADERS, timeout=30)
    assert (reply.status_code, reply.json()["field"]) == (status, field), reply.text


def test_32_concurrent_clients_all_get_answers(url):
    bodies = [("/score", {"query": f"q{i}", "responses": ["a" * (i % 7 + 1), "b"], "k": 1 + i % 4})
              for i in range(32)]
    bodies += [("/openrlhf?group=true", {"query": [f"P{i} r{j}" for j in range(4)], "prompts": [f"P{i} "] * 4})
               for i in range(32)]
    bodies += [("/score", {"query": "q", "responses": []})] * 16  # refused: 422
    bodies += [("/health", None)] * 16

    def send(job):
        path, body = job
        with httpx.Client(timeout=60) as client:
            if body is None:
                return client.get(url + path, headers=HEADERS)
            return client.post(url + path, json=body, headers=HEADERS)

    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(send, bodies))
    codes = [r.status_code for r in replies]
    assert codes.count(200) == 32 + 32 + 16 and codes.count(422) == 16
    for reply, (path, _) in zip(replies, bodies, strict=True):
        if path.startswith("/openrlhf"):
            assert len(reply.json()["rewards"]) == 4


def test_a_wrong_token_is_401_for_every_endpoint(url):
    for path in ("/score", "/batch_score", "/openrlhf"):
        assert httpx.post(url + path, json={}, headers={"Authorization": "Bearer s3creT"}).status_code == 401
    assert httpx.get(url + "/health").status_code == 401


def test_a_temperature_out_of_range_is_the_clients_error(url):
    body = {"query": "q", "responses": ["a", "b"]}
    for temperature in (1e30, 2.5, -0.1):
        reply = httpx.post(url + "/score", json={**body, "temperature": temperature}, headers=HEADERS, timeout=30)
        assert reply.status_code == 422 and reply.json()["field"] == "temperature", reply.text
        assert "expected 0..2" in reply.json()["error"]
    assert httpx.post(url + "/score", json={**body, "temperature": 2.0}, headers=HEADERS, timeout=30).status_code == 200


def test_a_failed_engine_is_a_503_or_500_that_names_no_ray_internals():
    """Ray's error for a dead actor carries its id, PID, node address and namespace; the client
    gets what happened, the server's log the rest."""
    ray_exceptions = pytest.importorskip("ray.exceptions")

    class DeadEngine(AnyScorer):
        def score(self, items, k, temperature, k_meta, use_meta):
            raise ray_exceptions.ActorDiedError()  # "The actor died unexpectedly ... actor_id ..."

    class Broken(AnyScorer):
        def score(self, items, k, temperature, k_meta, use_meta):
            raise RuntimeError("engine at 10.0.0.7 pid 4242 said no")

    options = app_options(ServeConfig())
    body = {"query": "q", "responses": ["a", "b"]}
    for scorer, status in ((DeadEngine(), 503), (Broken(), 500)):
        with BackgroundServer(make_app(scorer, **options)) as address:
            reply = httpx.post(address + "/score", json=body, timeout=30)
        assert reply.status_code == status, reply.text
        text = reply.json()["error"]
        assert not any(leak in text for leak in ("actor", "pid", "10.0.0.7", "4242", "namespace")), text
