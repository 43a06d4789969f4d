"""LearnerSpec: one typed spec per learner, checked before any rank starts."""

from __future__ import annotations

import pytest

from spct.learner.spec import LearnerSpec


@pytest.mark.parametrize(("fields", "message"), [
    ({"task": "regression"}, "task: expected one of"),
    ({"task": "classification", "with_reference": True}, "a reference model is only for GRPO"),
    ({"zero_stage": 4}, "zero_stage: expected 0, 1, 2 or 3"),
    ({"dtype": "float16"}, "dtype: expected one of"),
    ({"dtype": "bfloat16", "zero_stage": 0}, "zero_stage: expected 1, 2 or 3 with dtype bfloat16"),
    ({"lr_schedule": "linear"}, "lr_schedule: expected one of"),
    ({"micro_batch_size": 0}, "micro_batch_size: expected >= 1"),
    ({"total_steps": 0}, "warmup_steps/total_steps"),
    ({"warmup_steps": -1}, "warmup_steps/total_steps"),
])
def test_a_bad_field_fails_naming_it(fields, message):
    with pytest.raises(ValueError, match=message):
        LearnerSpec("model", **fields)


def test_an_unknown_field_is_a_type_error_and_betas_become_a_tuple():
    with pytest.raises(TypeError, match="learning_rate"):
        LearnerSpec("model", learning_rate=1e-5)
    assert LearnerSpec("model", betas=[0.9, 0.99]).betas == (0.9, 0.99)
