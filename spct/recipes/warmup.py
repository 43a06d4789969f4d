"""Warm-up: SFT on programmatic GRM trajectories of the synthetic task, with noisy verdicts.

Only the embedded default needs it: its model starts from random weights and must first learn
the output format. The verdicts are deliberately flawed so that RFT and RL have something to
fix: with `carry_slip` above one half the critic most often drops the carry of a sum like 8+9
(a consistent wrong reasoning greedy decoding then repeats), and `noise` adds random slips.
"""

from __future__ import annotations

import random

from spct.data.synthetic import write_trajectory
from spct.grm import random_order
from spct.recipes.context import Context
from spct.recipes.sft import encode_sft, sft_batch


def warmup_examples(p: Context, rng: random.Random, n: int) -> list[tuple[list[int], int]]:
    """n encoded (prompt, trajectory) pairs of the flawed programmatic critic on train items."""
    c = p.cfg.warmup
    slip = (c.carry_slip, c.carry_slip if c.carry_slip_max is None else c.carry_slip_max)
    examples = []
    for item in rng.sample(p.data["train"], n):
        order = random_order(item.n, rng)
        shown = p.show(item, order)
        completion = write_trajectory(
            item, order, rng, (c.checks_min, c.checks_max), c.noise, *shown.scale, slip
        )
        examples.append(encode_sft(p.tokenizer, shown.prompt, completion))
    return examples


def run_warmup(p: Context) -> None:
    c, seed = p.cfg.warmup, p.cfg.seed
    learner = p.new_learner(c.lr, c.warmup_steps, c.steps, with_reference=False)
    for step, done in p.steps(c.steps):
        examples = warmup_examples(p, random.Random(f"{seed}:warmup:{step}"), c.batch_size)
        with p.timings("train"):
            metrics = learner.sft_step(sft_batch(examples))
        done(metrics, loss=f"{metrics['loss']:.3f}")
    p.checkpoint(final=True)
    p.sync_weights()
