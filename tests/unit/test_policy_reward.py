"""The GRM as a policy's reward: group and single judging, the [0, 1] rescaling, ties, parse
failures and the meta RM's selection; and the synthetic task's program checker."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from spct.algos import group_advantages
from spct.data import Item
from spct.data.synthetic import (
    ANSWER_KINDS,
    SyntheticConfig,
    answer_kind,
    check_answer,
    checkable,
    checked_reward,
    make_items,
    policy_query,
    sample_answer,
    sum_slips,
    well_formed,
)
from spct.grm import build_prompt
from spct.grm.reward import agreement, judged_items, rollout_rewards
from spct.grm.trajectory import Shown, Trajectory
from spct.grm.voting import consensus, counted, rescaled_vote


def query(item_id="q7"):
    return Item([{"role": "user", "content": "Solve: 3+4 ; 8+9"}], ["x"], [1.0], id=item_id,
                meta={"operands": [[3, 4], [8, 9]]})


def scored(samples, meta=None):
    """The reward pool's samples of one judged item (scores given, as read back)."""
    n = len(next(s for s in samples if s is not None)) if any(s is not None for s in samples) else 1
    item = Item([{"role": "user", "content": "q"}], ["r"] * n, [0.0] * n, id="judged")
    shown = Shown(item, list(range(n)), "prompt", (1, 10))
    return [Trajectory("text", [], None, 0, [], shown, s, None if meta is None else m)
            for s, m in zip(samples, meta or [None] * len(samples), strict=True)]


# ---------------------------------------------------------------- rescaling


def test_rescaled_vote_is_the_mean_normalised_score():
    # 1..10 scale: 10 -> 1, 1 -> 0; two samples averaged
    assert rescaled_vote([[10, 1], [1, 10]], 2, 1, 10) == [0.5, 0.5]
    assert rescaled_vote([[10, 4], [10, 7]], 2, 1, 10) == pytest.approx([1.0, 0.5])
    assert rescaled_vote([[1]], 1, 1, 10) == [0.0]


def test_a_parse_failure_counts_zero_for_every_response_it_judged():
    # one of two samples failed: each response keeps half of what the parsed sample gave it
    assert rescaled_vote([[10, 1], None], 2, 1, 10) == pytest.approx([0.5, 0.0])
    assert rescaled_vote([None, None], 2, 1, 10) == [0.0, 0.0]
    assert rescaled_vote([], 3, 1, 10) == [0.0, 0.0, 0.0]


def test_in_group_mode_a_failure_moves_no_advantage():
    """Failed samples lower a group alike: the GRPO advantages are those of the parsed votes."""
    parsed = [[9, 3], [7, 5]]
    with_failures = parsed + [None, None]
    a = group_advantages(torch.tensor(rescaled_vote(parsed, 2, 1, 10)), 2)
    b = group_advantages(torch.tensor(rescaled_vote(with_failures, 2, 1, 10)), 2)
    assert torch.allclose(a, b, atol=1e-3)
    everything_failed = group_advantages(torch.tensor(rescaled_vote([None] * 4, 2, 1, 10)), 2)
    assert everything_failed.abs().max() == 0


def test_ties_get_equal_rewards_and_no_advantage():
    rewards = rescaled_vote([[6, 6, 2], [4, 4, 9]], 3, 1, 10)
    assert rewards[0] == rewards[1]
    adv = group_advantages(torch.tensor(rescaled_vote([[5, 5], [7, 7]], 2, 1, 10)), 2)
    assert adv.abs().max() == 0


def test_meta_rm_keeps_only_the_trusted_samples():
    samples = [[10, 1], [1, 10], None, [10, 1]]
    meta = [0.9, 0.1, 0.8, 0.7]
    # k_meta = 2 keeps samples 0 and 2; sample 2 failed: [ (1 + 0) / 2, (0 + 0) / 2 ]
    assert counted(samples, 2, meta) == (2, 1)
    assert rescaled_vote(samples, 2, 1, 10, 2, meta) == pytest.approx([0.5, 0.0])
    # k_meta = 3 adds sample 3
    assert rescaled_vote(samples, 2, 1, 10, 3, meta) == pytest.approx([2 / 3, 0.0])
    # default k_meta: half the samples
    assert rescaled_vote(samples, 2, 1, 10, None, meta) == rescaled_vote(samples, 2, 1, 10, 2, meta)


def test_a_0_1_scale_rescales_to_itself():
    assert rescaled_vote([[1], [0], [1]], 1, 0, 1) == pytest.approx([2 / 3])


def test_rescaled_vote_refuses_an_empty_range():
    with pytest.raises(ValueError, match="low < high"):
        rescaled_vote([[5]], 1, 5, 5)


@given(st.lists(st.one_of(st.none(), st.lists(st.integers(1, 10), min_size=3, max_size=3)), max_size=8))
def test_rewards_stay_in_the_unit_interval(samples):
    for r in rescaled_vote(samples, 3, 1, 10):
        assert 0.0 <= r <= 1.0


# ---------------------------------------------------------------- judging groups


def test_group_mode_judges_all_rollouts_in_one_prompt():
    rollouts = ["3+4=7 ; 8+9=17", "3+4=7 ; 8+9=7", "3+4=6 ; 8+9=17"]
    (item,) = judged_items(query(), rollouts, "group", "5:0")
    assert item.n == 3 and item.responses == rollouts and item.id == "q7:5:0"
    assert item.conversation == query().conversation
    prompt = build_prompt(item, [2, 0, 1], template="compact")
    assert all(r in prompt for r in rollouts) and "Solve: 3+4 ; 8+9" in prompt


def test_single_mode_judges_each_rollout_alone():
    items = judged_items(query(), ["a", "b"], "single", "5:0")
    assert [it.responses for it in items] == [["a"], ["b"]]
    assert len({it.id for it in items}) == 2


def test_judged_items_refuse_an_unknown_mode_or_no_rollouts():
    with pytest.raises(ValueError, match="mode"):
        judged_items(query(), ["a"], "pairs", "0")
    with pytest.raises(ValueError, match="at least one"):
        judged_items(query(), [], "group", "0")


def test_rollout_rewards_flatten_in_order_and_count_failures():
    results = [scored([[10, 1], None]), scored([[1, 1], [10, 10]])]
    rewards, failures, drawn, abstained = rollout_rewards(results, 1, 10)
    assert rewards == pytest.approx([0.5, 0.0, 0.5, 0.5])
    assert (failures, drawn, abstained) == (1, 4, 0)


def test_rollout_rewards_use_the_meta_scores_when_present():
    results = [scored([[10, 1], [1, 10]], meta=[0.9, 0.1])]
    rewards, *_ = rollout_rewards(results, 1, 10, k_meta=1)
    assert rewards == pytest.approx([1.0, 0.0])
    unguided, *_ = rollout_rewards([scored([[10, 1], [1, 10]])], 1, 10, k_meta=1)
    assert unguided == pytest.approx([0.5, 0.5])


def test_a_vote_below_the_consensus_threshold_abstains():
    split = [scored([[10, 1], [10, 1], [1, 10], [9, 2]])]  # 3 of 4 samples prefer the first rollout
    rewards, _, _, abstained = rollout_rewards(split, 1, 10, abstain=0.75)
    assert rewards[0] > rewards[1] and abstained == 0
    rewards, _, _, abstained = rollout_rewards(split, 1, 10, abstain=0.8)
    assert rewards[0] == rewards[1] == pytest.approx(0.5) and abstained == 1
    # The meta RM's choice is what must agree: the two samples it keeps both prefer the second.
    guided = [scored([[10, 1], [10, 1], [1, 10], [2, 9]], meta=[0.1, 0.2, 0.9, 0.8])]
    rewards, _, _, abstained = rollout_rewards(guided, 1, 10, k_meta=2, abstain=1.0)
    assert rewards[1] > rewards[0] and abstained == 0
    # A lone response has nothing to abstain between.
    alone = [scored([[3]]), scored([[8], None])]
    rewards, *_ = rollout_rewards(alone, 1, 10, abstain=1.0)
    assert rewards == pytest.approx([2 / 9, 7 / 18])


def test_consensus_counts_the_samples_that_prefer_the_winner():
    assert consensus([[9, 1], [8, 2], [1, 9], None], 2) == pytest.approx(0.5)
    assert consensus([[5, 5], [9, 1]], 2) == pytest.approx(0.5)  # a tied sample prefers nothing
    assert consensus([[9, 1], [1, 9]], 2) == 0.0  # the vote ties at the top
    assert consensus([[1, 2, 9], [9, 1, 2]], 3) == pytest.approx(0.5)
    assert consensus([[9, 1], [1, 9], [2, 8]], 2, k_meta=2, meta_scores=[0.1, 0.9, 0.8]) == 1.0


def test_sum_slips_name_how_each_sum_is_missed():
    assert sum_slips("Solve: 3+4 ; 8+9", "3+4=7 ; 8+9=17") == ["right", "right"]
    assert sum_slips("Solve: 3+4 ; 8+9", "3+4=8 ; 8+9=16") == ["+1", "-1"]
    assert sum_slips("Solve: 3+4 ; 8+9", "3+4=9 ; 8+9=7") == ["other", "carry"]
    assert sum_slips("Solve: 3+4 ; 8+9", "3+4=-3 ; 8+9=27") == ["other", "other"]  # no carry to drop, or +10
    assert sum_slips("Solve: 3+4 ; 8+9", "8+9=17 ; 3+4=7") is None  # out of the answer format
    with pytest.raises(ValueError, match="not a query of the synthetic task"):
        sum_slips("Solve: 3+4 ; x", "3+4=7")

# ---------------------------------------------------------------- the program checker


def test_checker_counts_the_sums_answered_right_in_place():
    q = query()
    assert check_answer(q, "3+4=7 ; 8+9=17") == 2
    assert check_answer(q, " 3 + 4 = 7;8+9=7") == 1
    assert check_answer(q, "8+9=17 ; 3+4=7") == 0  # sums in the wrong places
    assert check_answer(q, "3+4=7") == 1  # a missing part counts wrong
    assert check_answer(q, "3+4=7 ; 8+9=17 ; 1+1=2") == 2  # extra parts are ignored
    assert check_answer(q, "the answer is 7 and 17") == 0
    assert check_answer(q, "") == 0


def test_the_format_is_the_querys_sums_restated_in_order_right_or_not():
    q = query()
    assert well_formed(q, "3+4=7 ; 8+9=17") and well_formed(q, "3+4=1 ; 8+9=99")
    assert not well_formed(q, "3+4=7 ; 7+9=16")  # a sum the query did not ask
    assert not well_formed(q, "8+9=17 ; 3+4=7")  # out of order
    assert not well_formed(q, "3+4=7")  # missing a sum
    assert not well_formed(q, "3+4=7 ; 8+9=17 ; 1+1=2")  # an extra part
    assert not well_formed(q, "3+4=seven ; 8+9=17")


def test_checker_needs_the_synthetic_ground_truth():
    with pytest.raises(ValueError, match="meta.operands"):
        check_answer(Item([{"role": "user", "content": "hi"}], ["x"], [1.0], id="a"), "x")


def test_sampled_answers_are_right_at_the_asked_rate():
    cfg = SyntheticConfig(n_aspects=2, min_operand=3, min_responses=2, max_responses=2, single_fraction=0.0,
                          carry_drop=0.5)
    items = make_items(200, seed=1, config=cfg)
    rng = random.Random(0)
    for p_right in (0.0, 1.0):
        assert {check_answer(it, sample_answer(it, rng, p_right, cfg)) for it in items} == {int(p_right) * 2}
    half = [check_answer(it, sample_answer(it, rng, 0.5, cfg)) for it in items for _ in range(5)]
    assert 0.4 < sum(half) / (2 * len(half)) < 0.6
    assert policy_query(items[0]).startswith("Solve: ")


def test_the_oracle_reward_is_the_share_of_sums_right():
    from spct.config import PolicyRewardConfig
    from spct.policy import PolicyReward

    reward = PolicyReward(PolicyRewardConfig(kind="oracle"), seed=0)  # no GRM pool for the oracle
    rewards, info = reward([query()], [["3+4=7 ; 8+9=17", "3+4=7 ; 8+9=7", "seventeen"]], step=0)
    assert rewards == [[1.0, 0.5, 0.0]] and info == {}
    assert checked_reward(query(), "3+4=7 ; 8+9=7") == 0.5 and checkable(query())
    with pytest.raises(ValueError, match="reward pool"):
        PolicyReward(PolicyRewardConfig(kind="grm"), seed=0)


def test_agreement_counts_the_pairs_the_checker_tells_apart_ties_half():
    # Query 1: the checker orders (a > b), the reward agrees; (a, c) tie in the checker: not counted;
    # (c > b) the reward ties: half. Query 2: the reward disagrees with its one pair.
    truth = [[1.0, 0.0, 1.0], [0.5, 0.0]]
    rewards = [[0.9, 0.1, 0.1], [0.0, 0.3]]
    assert agreement(rewards, truth) == pytest.approx((1 + 0.5 + 0) / 3)
    assert agreement([[0.2, 0.7]], [[1.0, 1.0]]) is None  # no pair the checker tells apart


def test_answers_are_told_apart_by_the_errors_they_make():
    q = query()  # 3+4 ; 8+9: only 8+9 carries
    assert answer_kind(q, "3+4=7 ; 8+9=17") == "right"
    assert answer_kind(q, " 3+4=7;8+9=7") == "carry"  # the carry dropped, the rest right
    assert answer_kind(q, "3+4=7 ; 8+9=16") == "slip"
    assert answer_kind(q, "3+4=6 ; 8+9=17") == "slip"  # 3+4 has no carry to drop
    assert answer_kind(q, "3+4=6 ; 8+9=7") == "worse"  # two wrong sums
    assert answer_kind(q, "3+4=7") == "format" and answer_kind(q, "seventeen") == "format"
    assert answer_kind(q, "3+4=7 ; 8+9=17 ; 1+1=2") == "format"  # right sums, but an extra part
    assert set(ANSWER_KINDS) == {"right", "carry", "slip", "worse", "format"}


def test_reward_by_answer_is_the_mean_reward_of_each_kind_and_its_share():
    from spct.policy import reward_by_answer

    rewards = [[1.0, 0.5], [0.25, 0.0]]
    kinds = [["right", "carry"], ["carry", "format"]]
    out = reward_by_answer(rewards, kinds, ANSWER_KINDS)
    assert out == {"answers/right": 0.25, "reward_by_answer/right": 1.0, "answers/carry": 0.5,
                   "reward_by_answer/carry": 0.375, "answers/slip": 0.0, "answers/worse": 0.0,
                   "answers/format": 0.25, "reward_by_answer/format": 0.0}


def test_checked_metrics_only_for_a_step_the_checker_can_check():
    from spct.policy import checked_metrics

    texts = [["3+4=7 ; 8+9=17", "3+4=7 ; 8+9=7"]]
    out = checked_metrics([query()], texts, [[0.9, 0.2]])
    assert out["train_accuracy"] == 0.5 and out["reward_checker_agreement"] == 1.0
    assert out["reward_by_answer/carry"] == 0.2 and out["answers/right"] == 0.5
    plain = Item([{"role": "user", "content": "hi"}], ["x"], [1.0], id="p")
    assert checked_metrics([query(), plain], texts * 2, [[0.9, 0.2]] * 2) == {}
