"""spct.sampler.GRMSampler: the prompts it shows, the seeds it samples with, and what it reads
back, around a stand-in engine group that answers every prompt with set scores (the sampler
runs on real engines in tests/e2e/test_train_quick.py and tests/integration/test_serve.py)."""

from __future__ import annotations

import random

import pytest

from spct.grm import build_prompt, load_template, random_order
from spct.item import Item
from spct.rollout import seed_of
from spct.sampler import GRMSampler

PAIR = Item([{"role": "user", "content": "2+2?"}], ["4", "5"], [1.0, 0.0], id="pair")
SINGLE = Item([{"role": "user", "content": "2+3?"}], ["5"], [1.0], id="single")


class Engines:
    """Records each call; every sample of a pair scores "Response 1" 9 and "Response 2" 2."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict, object]] = []

    def submit(self, prompts, sampling, seed):
        self.calls.append((list(prompts), dict(sampling), seed))

        class Pending:
            def result(self):
                return [{"prompt_token_ids": [1], "version": 2, "samples": [
                    {"text": "\\boxed{9, 2}", "token_ids": [5, 6], "logprobs": [-0.1, -0.2]}] * sampling["n"]}
                    for _ in prompts]

        return Pending()


def test_show_takes_the_single_template_for_one_response_only_while_training():
    grm = GRMSampler(Engines(), "default", "compact")
    assert grm.show(SINGLE, [0]).prompt == build_prompt(SINGLE, [0], template=load_template("compact"))
    assert grm.show(SINGLE, [0], training=False).prompt == build_prompt(SINGLE, [0], template=load_template("default"))
    hinted = grm.show(PAIR, [1, 0], hint=True)
    assert hinted.prompt == build_prompt(PAIR, [1, 0], template=load_template("default"))
    assert hinted.text == build_prompt(PAIR, [1, 0], hint=True, template=load_template("default")) != hinted.prompt


def test_sample_seeds_each_prompt_by_the_runs_seed_and_the_draws_key_and_reads_back():
    engines = Engines()
    grm = GRMSampler(engines, "default", max_new_tokens=64, seed=7)
    shown = [grm.show(PAIR, [1, 0]), grm.show(PAIR, [0, 1])]
    (first, second) = grm.sample(shown, "rl:3", n=2, temperature=0.5)
    prompts, sampling, seed = engines.calls[0]
    assert prompts == [s.text for s in shown] and seed == "7:rl:3"
    assert sampling == {"n": 2, "temperature": 0.5, "max_tokens": 64, "logprobs": 0}
    # Shown as (1, 0): "Response 1" is the item's response 1, so its scores come back swapped.
    assert [t.scores for t in first] == [[2, 9], [2, 9]] and not first[0].correct
    assert [t.scores for t in second] == [[9, 2], [9, 2]] and second[0].correct
    assert first[0].version == 2 and first[0].token_ids == [5, 6] and first[0].prompt_ids == [1]


def test_greedy_accuracy_uses_the_orders_its_generator_draws():
    grm = GRMSampler(Engines(), "default")
    out = grm.greedy_accuracy([PAIR] * 20, "eval:rl", random.Random("0:eval"))
    # Position 1 always scores 9: right exactly when the order shows the best response first.
    rng = random.Random("0:eval")
    right = sum(random_order(2, rng)[0] == 0 for _ in range(20))
    assert 0 < right < 20 and out["accuracy"] == right / 20
    assert out["n"] == 20 and out["parse_failure_rate"] == 0.0
    assert out["ci_low"] <= out["accuracy"] <= out["ci_high"]


def test_draw_shuffles_per_item_and_keyed_seeds_do_not_depend_on_the_batch():
    engines = Engines()
    grm = GRMSampler(engines, "default", max_new_tokens=32)
    other = Item(PAIR.conversation, ["5", "4"], [0.0, 1.0], id="other")
    grm.draw([PAIR], 3, 0.5, seed=1, keyed=True)()
    grm.draw([other, PAIR], 3, 0.5, seed=1, keyed=True)()
    alone, together = engines.calls
    assert alone[2] == [seed_of(f"1:pool:pair:{j}") for j in range(3)] == together[2][3:]
    assert alone[0] == together[0][3:]  # the same orders too
    assert alone[1] == {"n": 1, "temperature": 0.5, "max_tokens": 32}
    grm.draw([PAIR, other], 2, seed=1)()
    assert engines.calls[-1][2] == "1:pool"  # unkeyed: by position (spct.rollout.request_seeds)
    with pytest.raises(ValueError, match="every item needs an id"):
        grm.draw([Item(PAIR.conversation, PAIR.responses, PAIR.rewards)], 1, keyed=True)
    with pytest.raises(ValueError, match="k: expected >= 1"):
        grm.draw([PAIR], 0)


def test_draw_rates_every_sample_by_the_meta_rm_in_one_call():
    calls = []

    def meta(trajectories):
        calls.append(trajectories)
        return [float(i) for i in range(len(trajectories))]

    grm = GRMSampler(Engines(), "default")
    (a, b) = grm.draw([PAIR, PAIR], 2, meta_score=meta)()
    assert len(calls) == 1 and len(calls[0]) == 4
    assert calls[0][0] == {"prompt": a[0].shown.prompt, "completion": "\\boxed{9, 2}"}
    assert [t.meta_score for t in a + b] == [0.0, 1.0, 2.0, 3.0]
    assert a[0].record()["meta_score"] == 0.0


def test_on_samples_other_engines_with_the_same_settings():
    mine, teacher = Engines(), Engines()
    grm = GRMSampler(mine, "default", "compact", max_new_tokens=16, seed=3)
    grm.on(teacher).sample([grm.show(PAIR, [0, 1])], "rft:0")
    assert not mine.calls and teacher.calls[0][2] == "3:rft:0" and teacher.calls[0][1]["max_tokens"] == 16
    started = []
    lazy = GRMSampler(lambda: started.append(1) or mine, "default")
    assert not started  # a group started on first use
    lazy.sample([lazy.show(PAIR, [0, 1])], "x")
    assert started == [1] and mine.calls
