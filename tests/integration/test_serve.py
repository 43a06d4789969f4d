"""The reward server over real HTTP on loopback, backed by the real GRM pool on the tiny model.

The tiny model has random weights, so its critiques almost never parse: the tests check that
every reply is shaped and counted correctly (rewards are the sums of whatever parsed), not what
the GRM thinks.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace

import httpx
import pytest
from omegaconf import OmegaConf

from spct.config import ConfigError, ModelConfig, path_shorthand
from spct.serve import (
    BackgroundServer,
    GRMScorer,
    ServeConfig,
    app_options,
    make_app,
    to_serve_config,
)

pytestmark = pytest.mark.integration

ENGINE_KWARGS = dict(
    dtype="float32", max_model_len=512, kv_cache_gib=0.0625, enforce_eager=True, seed=0
)
MAX_NEW_TOKENS = 16
TOKEN = "correct horse battery staple"


def config(model: str) -> ServeConfig:
    return replace(
        ServeConfig(model=ModelConfig(path=model, template="compact")),
        max_body_bytes=64 * 1024,
        max_items=8,
        max_responses=4,
        max_chars_per_text=4000,
        default_k=1,
        max_k=4,
    )


@pytest.fixture(scope="module")
def scorer(ray_cluster, tiny_model_dir):
    from spct.meta_rm import MetaRM
    from spct.reward_pool import GRMRewardPool

    pool = GRMRewardPool.start(
        str(tiny_model_dir), 1, ENGINE_KWARGS, template="compact", max_new_tokens=MAX_NEW_TOKENS
    )
    meta = (
        ray_cluster.remote(MetaRM)
        .options(num_cpus=1)
        .remote(model=str(tiny_model_dir), dtype="float32", max_length=256)
    )
    s = GRMScorer(pool, str(tiny_model_dir), ENGINE_KWARGS["max_model_len"], meta_rm=meta)
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def client(scorer, tiny_model_dir):
    app = make_app(scorer, **app_options(config(str(tiny_model_dir))))
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def secured_url(scorer, tiny_model_dir):
    app = make_app(scorer, token=TOKEN, **app_options(config(str(tiny_model_dir))))
    with BackgroundServer(app) as url:
        yield url


def check_scored(reply: dict, n: int, k: int) -> None:
    """One total per response, equal to the sum of the samples that parsed (no meta RM)."""
    assert reply["k"] == k
    assert len(reply["rewards"]) == n and len(reply["scores"]) == k
    parsed = [s for s in reply["scores"] if s is not None]
    assert reply["parse_failures"] == k - len(parsed)
    for s in parsed:
        assert len(s) == n and all(1 <= x <= 10 for x in s)
    assert reply["rewards"] == [sum(s[i] for s in parsed) for i in range(n)]
    assert (reply["best"] is None) == (not parsed)


def error(reply: httpx.Response, status: int, field: str | None) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["field"] == field, body
    return body["error"]


def test_health_names_the_model_and_the_meta_rm(client, tiny_model_dir):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model"] == str(tiny_model_dir)
    assert body["meta_rm"] is True and body["score_range"] == [1, 10] and body["template"] == "compact"


def test_score_returns_one_reward_per_response(client):
    reply = client.post(
        "/score",
        json={"query": "What is 2+3?", "responses": ["5", "6", "It is 5."], "k": 2, "meta": False},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    check_scored(body, n=3, k=2)
    assert body["meta_scores"] is None


def test_score_with_a_conversation_and_the_meta_rm(client):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a prime."},
    ]
    reply = client.post(
        "/score", json={"conversation": conversation, "responses": ["7", "9"], "k": 4}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["rewards"]) == 2 and len(body["scores"]) == 4
    meta = body["meta_scores"]
    assert len(meta) == 4 and all(math.isfinite(m) for m in meta)
    # MetaRM@4 keeps the 2 samples the meta RM rates highest (ties to the earlier one).
    kept = sorted(sorted(range(4), key=lambda i: -meta[i])[:2])
    expected = [sum(body["scores"][i][r] for i in kept if body["scores"][i]) for r in range(2)]
    assert body["rewards"] == expected


def test_batch_score_keeps_order_and_per_item_settings(client):
    items = [
        {"query": "Capital of France?", "responses": ["Paris"], "meta": False},
        {"query": "2+2?", "responses": ["4", "5"], "k": 3, "meta": False},
        {"query": "Say hi", "responses": ["hi", "hello", "hey"], "meta": False},
    ]
    reply = client.post("/batch_score", json={"items": items})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    for result, n, k in zip(results, (1, 2, 3), (1, 3, 1), strict=True):
        check_scored(result, n=n, k=k)


def test_openrlhf_shape(client, tiny_model_dir):
    from spct.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True
    )
    queries = [prompt + "5<|end|>", prompt + "It is 6.<|end|><|pad|>", prompt + "<|end|>"]
    reply = client.post(
        "/openrlhf?k=2",
        json={"query": queries, "prompts": [prompt] * 3, "labels": ["5", "5", "5"]},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["rewards"]) == 3
    assert all(isinstance(r, float) and 0.0 <= r <= 1.0 for r in body["rewards"])
    # The third response is empty once its end marker is gone: reward 0, flagged, not scored.
    assert body["rewards"][2] == 0.0
    assert body["extra_logs"]["grm_unscored"] == [0.0, 0.0, 1.0]
    assert all(0 <= f <= 2 for f in body["extra_logs"]["grm_parse_failures"])

    reply = client.post("/openrlhf", json={"query": ["abc"], "prompts": ["xyz"], "labels": [""]})
    assert "does not contain" in error(reply, 422, "prompts[0]")
    reply = client.post("/openrlhf", json={"query": ["abc"]})
    error(reply, 422, "prompts")
    reply = client.post("/openrlhf?k=99", json={"query": ["ab"], "prompts": ["a"]})
    error(reply, 422, "k")


def test_concurrent_requests_are_all_answered(client):
    from concurrent.futures import ThreadPoolExecutor

    def post(i: int) -> httpx.Response:
        return client.post(
            "/score", json={"query": f"{i}+1?", "responses": [str(i + 1)], "meta": False}
        )

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(post, range(4)))
    for reply in replies:
        assert reply.status_code == 200, reply.text
        check_scored(reply.json(), n=1, k=1)


class Recording:
    """The module's real scorer, recording the size of every engine call and item it makes."""

    def __init__(self, scorer):
        self.inner, self.calls = scorer, []
        for name in ("model", "has_meta", "template", "low", "high"):
            setattr(self, name, getattr(scorer, name))

    def check(self, item):
        return self.inner.check(item)

    def score(self, items, k, temperature, k_meta, use_meta):
        self.calls.append([item.n for item in items])
        return self.inner.score(items, k, temperature, k_meta, use_meta)


def test_concurrent_requests_share_engine_calls_and_score_as_alone(scorer, tiny_model_dir):
    """16 clients at once: fewer engine calls than requests, and each reply equal to the reply to
    the same request sent alone (sampling seeds follow the item, not the batch)."""
    from concurrent.futures import ThreadPoolExecutor

    recording = Recording(scorer)
    options = {**app_options(config(str(tiny_model_dir))), "batch_window_ms": 50.0}
    requests = [{"query": f"What is {i} + {i}?", "responses": [str(2 * i), str(i)], "k": 2, "meta": False}
                for i in range(16)]
    with BackgroundServer(make_app(recording, **options)) as url, httpx.Client(base_url=url, timeout=300) as c:
        with ThreadPoolExecutor(16) as pool:
            together = [r.json() for r in pool.map(lambda body: c.post("/score", json=body), requests)]
        calls = len(recording.calls)
        alone = [c.post("/score", json=body).json() for body in requests[:3]]
    assert calls < 8, recording.calls
    for reply in together:
        check_scored(reply, n=2, k=2)
    assert [r["scores"] for r in alone] == [r["scores"] for r in together[:3]]


def test_trl_grpo_trainer_with_the_grm_as_its_reward(scorer, tiny_model_dir, tmp_path):
    """TRL's GRPOTrainer, two steps, its reward the spct GRM through the server: every step's
    completions of a prompt are judged together in one GRM prompt."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from spct.integrations.trl import GRMReward
    from spct.models import load_tokenizer

    recording = Recording(scorer)
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}]} for i in range(4)]
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=8, max_steps=2, use_cpu=True, report_to="none", save_strategy="no",
                      logging_steps=1, learning_rate=1e-5, dataloader_num_workers=0, seed=0)
    options = app_options(config(str(tiny_model_dir)))
    with BackgroundServer(make_app(recording, **options)) as url:
        reward = GRMReward(url, k=2, meta=False, num_generations=2)
        trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                              reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=load_tokenizer(tiny_model_dir))
        trainer.train()
    logged = [h for h in trainer.state.log_history if "rewards/spct_grm/mean" in h]
    assert len(logged) == 2 and all(0.0 <= h["rewards/spct_grm/mean"] <= 1.0 for h in logged)
    assert all("spct_grm/parse_failure_rate" in h for h in logged)
    judged = [n for call in recording.calls for n in call]
    assert judged and all(n == 2 for n in judged), recording.calls  # a prompt's 2 completions together


def test_openrlhf_single_requests_form_groups_on_the_engines(scorer, tiny_model_dir):
    """OpenRLHF's shape: one query per request, a prompt's samples near-simultaneous."""
    from concurrent.futures import ThreadPoolExecutor

    from spct.models import load_tokenizer

    recording = Recording(scorer)
    prompt = load_tokenizer(tiny_model_dir).apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True)
    with BackgroundServer(make_app(recording, **app_options(config(str(tiny_model_dir))))) as url:
        def post(answer):
            body = {"query": [prompt + answer + "<|end|>"], "prompts": [prompt], "labels": ["5"]}
            return httpx.post(url + "/openrlhf?group=true&group_size=3&meta=false", json=body, timeout=300)

        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(post, ["5", "6", "five"]))
    assert recording.calls == [[3]]
    for reply in replies:
        assert reply.status_code == 200, reply.text
        (r,) = reply.json()["rewards"]
        assert 0.0 <= r <= 1.0


class TableScorer:
    """Fixed per-sample scores and meta scores for each response text: a GRM whose output parses,
    to check the arithmetic the random tiny model cannot exercise."""

    model, has_meta, template, low, high = "table", True, "default", 1, 10
    SAMPLES = {"good": [[10], [1], None, [7]], "bad": [None, None, None, [2]]}
    META = [0.9, 0.1, 0.8, 0.2]

    def check(self, item):
        return None

    def score(self, items, k, temperature, k_meta, use_meta):
        from spct.grm import vote

        out = []
        for item in items:
            samples = self.SAMPLES[item.responses[0]][:k]
            meta = self.META[:k] if use_meta else None
            rewards = vote(samples, 1, k_meta=k_meta, meta_scores=meta)
            out.append({"rewards": rewards, "scores": samples, "meta_scores": meta})
        return out


@pytest.mark.parametrize(
    ("url_options", "k_meta", "expected"),
    [
        # All 4 samples count: (10 + 1 + 7 - 3 * 1) / (4 * 9); a failure counts as the bottom.
        ("?k=4&meta=false", None, [15 / 36, 1 / 36]),
        # MetaRM@4 keeps half: samples 0 and 2 -> (10 - 1) / (2 * 9) and nothing parsed.
        ("?k=4", None, [9 / 18, 0.0]),
        # k_meta=3 keeps samples 0, 2, 3; k_meta above k is capped at k.
        ("?k=4", 3, [15 / 27, 1 / 27]),
        ("?k=2", 3, [(10 + 1 - 2) / 18, 0.0]),
    ],
)
def test_openrlhf_rescales_the_pointwise_vote_to_0_1(url_options, k_meta, expected):
    options = {**app_options(ServeConfig()), "k_meta": k_meta}
    with BackgroundServer(make_app(TableScorer(), **options)) as url:
        body = {"query": ["Q: good</s>", "Q: bad"], "prompts": ["Q: ", "Q: "], "labels": ["", ""]}
        reply = httpx.post(url + "/openrlhf" + url_options, json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["rewards"] == pytest.approx(expected)


class GroupScorer:
    """Scores each response by a fixed table, judging whatever group it is sent; records the
    groups, to check how /openrlhf forms them."""

    model, has_meta, template, low, high = "group-table", False, "default", 1, 10
    SCORES = {"a": 10, "b": 1, "c": 4, "d": 7}

    def __init__(self):
        self.groups = []

    def check(self, item):
        return None

    def score(self, items, k, temperature, k_meta, use_meta):
        from spct.grm import vote

        out = []
        for item in items:
            self.groups.append(list(item.responses))
            samples = [[self.SCORES[r] for r in item.responses]] * (k - 1) + [None]  # the last fails
            out.append({"rewards": vote(samples, item.n), "scores": samples, "meta_scores": None})
        return out


@pytest.mark.parametrize(("url_options", "default", "grouped"), [("", False, False), ("?group=true", False, True),
                                                               ("", True, True), ("?group=0", True, False)])
def test_openrlhf_group_mode_judges_a_prompts_responses_together(url_options, default, grouped):
    scorer = GroupScorer()
    options = {**app_options(ServeConfig()), "max_responses": 2, "openrlhf_group": default}
    queries = ["P1 a", "P2 c", "P1 b", "P1 ", "P1 d", "P2 a"]
    prompts = ["P1 ", "P2 ", "P1 ", "P1 ", "P1 ", "P2 "]
    with BackgroundServer(make_app(scorer, **options)) as url:
        reply = httpx.post(url + "/openrlhf?k=3" + url_options.replace("?", "&"),
                           json={"query": queries, "prompts": prompts}, timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    if grouped:  # P1's scorable responses a, b, d in arrival order, cut at max_responses = 2
        assert scorer.groups == [["a", "b"], ["d"], ["c", "a"]]
    else:
        assert scorer.groups == [["a"], ["c"], ["b"], ["d"], ["a"]]
    # 2 of 3 samples parse: (2 * (s - 1)) / (3 * 9), whichever group a response was judged in
    expected = [2 * (GroupScorer.SCORES[q.split()[1]] - 1) / 27 if len(q.split()) > 1 else 0.0 for q in queries]
    assert body["rewards"] == pytest.approx(expected)
    assert body["extra_logs"]["grm_unscored"] == [0, 0, 0, 1, 0, 0]
    assert body["extra_logs"]["grm_parse_failures"] == [1, 1, 1, 0, 1, 1]


def test_openrlhf_group_mode_on_the_engines(client, tiny_model_dir):
    from spct.models import load_tokenizer

    prompt = load_tokenizer(tiny_model_dir).apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True)
    queries = [prompt + r + "<|end|>" for r in ("5", "6", "five")]
    reply = client.post("/openrlhf?k=2&group=true", json={"query": queries, "prompts": [prompt] * 3})
    assert reply.status_code == 200, reply.text
    rewards = reply.json()["rewards"]
    assert len(rewards) == 3 and all(0.0 <= r <= 1.0 for r in rewards)


def test_best_is_null_when_no_counted_sample_parsed():
    with BackgroundServer(make_app(TableScorer(), **app_options(ServeConfig()))) as url:
        reply = httpx.post(
            url + "/score", json={"query": "Q", "responses": ["bad"], "k": 2}, timeout=30
        )
        assert reply.json()["best"] is None and reply.json()["parse_failures"] == 2
        reply = httpx.post(
            url + "/score", json={"query": "Q", "responses": ["good"], "k": 2}, timeout=30
        )
        assert reply.json()["best"] == 0 and reply.json()["rewards"] == [10.0]


def test_malformed_json_is_400(client):
    reply = client.post(
        "/score",
        content=b'{"query": "x", "responses": [',
        headers={"content-type": "application/json"},
    )
    assert "malformed JSON" in error(reply, 400, "body")
    error(
        client.post("/score", content=b'{"query": "x", "responses": ["a"], "k": NaN}'), 400, "body"
    )


def test_missing_or_wrong_fields_are_named(client):
    error(client.post("/score", json={"query": "x"}), 422, "responses")
    error(client.post("/score", json={"responses": ["a"]}), 422, "conversation")
    error(client.post("/score", json={"query": "x", "responses": ["a", 3]}), 422, "responses[1]")
    error(client.post("/score", json={"query": "x", "responses": ["a"], "k": 0}), 422, "k")
    error(
        client.post("/score", json={"query": "x", "responses": ["a"], "reponses": []}),
        422,
        "reponses",
    )
    items = [{"query": "x", "responses": ["a"]}, {"query": "x", "responses": [None]}]
    error(client.post("/batch_score", json={"items": items}), 422, "items[1].responses[0]")


def test_limits_are_413_with_the_reason(client):
    reply = client.post("/score", json={"query": "x", "responses": ["a"] * 5})
    assert "limit is 4" in error(reply, 413, "responses")
    reply = client.post("/score", json={"query": "x", "responses": ["a" * 4001]})
    assert "limit is 4000" in error(reply, 413, "responses[0]")
    # Within the character limit but past the GRM's context (512 tokens, 16 kept for the critique).
    reply = client.post("/score", json={"query": "x", "responses": ["7 + 8 = 15. " * 300]})
    assert "tokens" in error(reply, 413, "responses")


def test_oversized_body_is_413_before_parsing(client):
    too_big = b"[" + b" " * (64 * 1024) + b"]"
    assert "limit is 65536" in error(client.post("/score", content=too_big), 413, "body")

    def chunks():  # no Content-Length: the server counts as it reads
        for _ in range(20):
            yield b" " * 4096

    error(client.post("/score", content=chunks()), 413, "body")


def test_token(secured_url):
    request = {"query": "2+2?", "responses": ["4"], "meta": False}
    with httpx.Client(base_url=secured_url, timeout=120) as c:
        assert "Bearer" in error(c.post("/score", json=request), 401, "Authorization")
        wrong = {"Authorization": "Bearer " + TOKEN[:-1]}
        error(c.post("/score", json=request, headers=wrong), 401, "Authorization")
        error(c.get("/health", headers=wrong), 401, "Authorization")
        reply = c.post("/score", json=request, headers={"Authorization": "Bearer " + TOKEN})
        assert reply.status_code == 200, reply.text
        check_scored(reply.json(), n=1, k=1)


def test_config_composes_and_is_validated(tmp_path, tiny_model_dir):
    from hydra import compose, initialize

    with initialize(config_path=None, version_base=None):
        cfg = compose(
            config_name="serve",
            overrides=path_shorthand([f"model={tiny_model_dir}", "port=9001", "token=t", "model.template=compact",
                                      "model.max_model_len=512", "model.max_new_tokens=64"]),
        )
    c = to_serve_config(cfg)
    assert (c.model.path, c.port, c.token, c.host) == (str(tiny_model_dir), 9001, "t", "127.0.0.1")
    assert (c.model.single_template, c.model.dtype) == ("single", "bfloat16")  # no card: the defaults
    with pytest.raises(ConfigError, match="default_k"):
        to_serve_config(OmegaConf.merge(cfg, {"default_k": 9, "max_k": 4}))
    with pytest.raises(ConfigError, match=r"model.max_model_len: expected at most \d+ \(max_position_embeddings"):
        to_serve_config(OmegaConf.merge(cfg, {"model": {"max_model_len": 10**6}}))

    run = subprocess.run(
        [sys.executable, "-m", "spct.serve", "port=9001"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert run.returncode != 0 and "model: expected the GRM to serve" in run.stdout + run.stderr
    run = subprocess.run([sys.executable, "-m", "spct.serve", f"model={tmp_path / 'missing'}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode != 0 and "model: expected an existing file or folder" in run.stdout + run.stderr


def test_a_dead_engine_is_reported_then_restarted_by_the_next_request(client, scorer):
    """Runs last: it kills the module's engine. /health names what stopped instead of "ok"; the
    next /score finds it dead, restarts it and answers 503 with Retry-After (no actor id, PID,
    address or namespace); the retry is scored, and spct.client retries by itself. Past
    max_restarts the 503 says to restart the server."""
    import ray

    from spct.client import Client

    assert client.get("/health").json()["status"] == "ok"
    ray.kill(scorer.pool.group.engines[0])
    health = client.get("/health")
    assert health.status_code == 503 and health.json() == {"status": "unavailable",
                                                           "problems": ["GRM engine 0 has stopped"]}
    body = {"query": "2+2?", "responses": ["4", "5"], "meta": False}
    reply = client.post("/score", json=body)
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1", reply.text
    assert "restarted; retry" in reply.json()["error"]
    assert not any(leak in reply.text for leak in ("actor_id", "pid", "ip:", "namespace", "127.0.0.1"))
    assert client.get("/health").json()["status"] == "ok"
    check_scored(client.post("/score", json=body).json(), n=2, k=1)
    ray.kill(scorer.pool.group.engines[0])
    with Client(str(client.base_url), backoff_s=0.1) as retrying:
        check_scored(retrying.score("2+2?", ["4", "5"], meta=False), n=2, k=1)
    # Restarts are bounded (max_restarts): past them the server says to restart it.
    scorer.restarts_left = 0
    ray.kill(scorer.pool.group.engines[0])
    reply = client.post("/score", json=body)
    assert reply.status_code == 503 and "retry-after" not in reply.headers, reply.text
    assert "cannot score until it is restarted" in reply.json()["error"]
    assert client.get("/health").status_code == 503
