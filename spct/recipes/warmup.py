"""Warm-up: SFT on programmatic GRM trajectories of the synthetic task, with noisy verdicts.

Only the embedded default needs it: its model starts from random weights and must first learn
the output format. The verdicts are deliberately flawed so that RFT and RL have something to
fix: with `carry_slip` above one half the critic most often drops the carry of a sum like 8+9
(a consistent wrong reasoning greedy decoding then repeats), and `noise` adds random slips.
"""

from __future__ import annotations

import random

from spct.chat import encode_sft, sft_batch
from spct.data.synthetic import warmup_pairs
from spct.recipes.context import Context


def run_warmup(p: Context) -> None:
    c, seed = p.cfg.warmup, p.cfg.seed
    learner = p.new_learner(c.lr, c.warmup_steps, c.steps, with_reference=False)
    for step, done in p.steps(c.steps):
        pairs = warmup_pairs(p.data["train"], random.Random(f"{seed}:warmup:{step}"), c.batch_size, p.grm.show, c)
        examples = [encode_sft(p.tokenizer, prompt, completion) for prompt, completion in pairs]
        with p.timings("train"):
            metrics = learner.sft_step(sft_batch(examples))
        done(metrics, loss=f"{metrics['loss']:.3f}")
    p.checkpoint(final=True)
    p.sync_weights()
