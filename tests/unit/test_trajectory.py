"""spct.grm.trajectory: every GRM sample is read back one way (parsed on the template's scale,
mapped back to the item's order) and judged by the Eq. 10/11 rules."""

from __future__ import annotations

from spct.grm.trajectory import Shown, read
from spct.item import Item

ITEM = Item([{"role": "user", "content": "2+2?"}], ["4", "5", "3"], [1.0, 0.0, 0.0], id="q")


def _result(*texts: str, version: int = 3) -> dict:
    return {"prompt_token_ids": [1, 2], "version": version,
            "samples": [{"text": t, "token_ids": [7] * (i + 1), "logprobs": [-0.5] * (i + 1)}
                        for i, t in enumerate(texts)]}


def test_scores_come_back_in_the_items_order_and_are_judged():
    # Shown as responses 2, 0, 1: the GRM's "Response 2" is the item's response 0.
    shown = Shown(ITEM, [2, 0, 1], "prompt", (1, 10))
    right, wrong, broken = read(shown, _result("\\boxed{2, 9, 1}", "\\boxed{9, 2, 1}", "no scores"))
    assert right.scores == [9, 1, 2] and right.correct and right.reward == 1.0
    assert wrong.scores == [2, 1, 9] and not wrong.correct and wrong.reward == -1.0
    assert broken.scores is None and not broken.correct and broken.reward == -1.0
    assert [t.version for t in (right, wrong, broken)] == [3, 3, 3]
    assert broken.token_ids == [7, 7, 7] and broken.logprobs == [-0.5] * 3
    assert right.record() == {"order": [2, 0, 1], "prompt": "prompt", "text": "\\boxed{2, 9, 1}",
                              "scores": [9, 1, 2]}


def test_a_score_off_the_scale_does_not_parse_and_a_tie_is_neutral():
    shown = Shown(ITEM, [0, 1, 2], "prompt", (1, 10))
    off, tie = read(shown, _result("\\boxed{11, 2, 1}", "\\boxed{5, 5, 5}"))
    assert off.scores is None
    assert tie.neutral and not tie.correct


def test_a_single_response_is_judged_on_the_templates_scale():
    single = Item([{"role": "user", "content": "2+2?"}], ["4"], [1.0], id="s")
    (t,) = read(Shown(single, [0], "prompt", (1, 10)), _result("\\boxed{9}"))
    assert t.correct  # a 9 of 10 on a correct answer (it is not a 0/1 label)
    (t,) = read(Shown(single, [0], "prompt", (1, 10)), _result("\\boxed{2}"))
    assert not t.correct


def test_a_hinted_prompt_is_sent_with_its_hint_and_recorded_without():
    shown = Shown(ITEM, [0, 1, 2], "prompt", (1, 10), sent="prompt + hint")
    assert shown.text == "prompt + hint"
    (t,) = read(shown, _result("\\boxed{9, 1, 1}"))
    assert t.record()["prompt"] == "prompt"
