"""Evaluation at the end of training: inference-time scaling on the held-out split.

Greedy, Voting@k and MetaRM@k (with the meta RM trained in the meta_rm phase, if any) from one
set of k_max samples per item, drawn from the rollout engines that hold the trained GRM.
Writes output_dir/eval/<split>/ (generations, table, scaling plot), like `spct.evaluate`.
"""

from __future__ import annotations

import dataclasses

from spct.evaluate.tables import judged, rule_of, run_benchmarks
from spct.recipes.context import Context
from spct.reward_pool import GRMRewardPool


def run_eval(p: Context) -> dict:
    c = p.cfg.eval
    split = p.data[c.split]
    # A benchmark's file is scored by its rule (its detected format says which).
    rule = "synthetic" if p.cfg.data.kind == "synthetic" else rule_of(getattr(split, "format", None))
    items = judged(rule, split[: c.max_items or None])
    pool = GRMRewardPool(p.grm.group, p.cfg.model.template, p.cfg.model.max_new_tokens)
    score_meta = stop_meta = None
    if p.state.meta_rm:
        score_meta, stop_meta = p.actors.meta_scorer(p.state.meta_rm)
    try:
        with p.timings("generate"):
            tables = run_benchmarks(pool, [(c.split, rule, items)], p.out / "eval", k_max=c.k_max,
                                    temperature=c.temperature, k_meta_ratio=c.k_meta_ratio,
                                    meta_score=score_meta, bootstrap=c.bootstrap, seed=p.cfg.seed,
                                    tracker=p.tracker,
                                    step=p.state.global_step)
    finally:
        if stop_meta is not None:
            stop_meta()
    return {"scaling": [dataclasses.asdict(r) for r in tables[c.split]]}
