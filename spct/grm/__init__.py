"""The pure SPCT core: prompt templates, score parsing, the Eq. 10/11 rules and voting.

Nothing here imports Ray, vLLM or DeepSpeed, so every rule a trained model is judged by can
be tested in isolation and reused by the training loop, the reward pool and evaluation.
"""

from spct.grm.parsing import format_scores, parse_scores
from spct.grm.rules import (
    best_index,
    check_order,
    hint_position,
    is_correct,
    is_neutral,
    map_back,
    meta_target,
    random_order,
    rft_accept,
    rule_reward,
    single_verdict,
)
from spct.grm.template import (
    BUILTIN_TEMPLATES,
    HINT_LINE,
    Template,
    build_prompt,
    load_template,
)
from spct.grm.voting import pick_best, vote

__all__ = [
    "BUILTIN_TEMPLATES",
    "HINT_LINE",
    "Template",
    "best_index",
    "build_prompt",
    "check_order",
    "format_scores",
    "hint_position",
    "is_correct",
    "is_neutral",
    "load_template",
    "map_back",
    "meta_target",
    "parse_scores",
    "pick_best",
    "random_order",
    "rft_accept",
    "rule_reward",
    "single_verdict",
    "vote",
]
