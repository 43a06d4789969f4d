"""Rule-based online RL: GRPO with the SPCT rule reward (Eq. 11) and KL to the reference.

Each step: shuffle each item's responses, sample G trajectories of that prompt from the
rollout group, parse and score them against the ground truth (+1 correct, -1 otherwise, a
parse failure included), normalise rewards within each group, one learner step on the clipped
objective plus beta * KL, then sync the new weights (version + 1) to the rollout engines.

With `rl.async_generation` the rollouts of step t + 1 are generated while the learner trains on
step t (one-step off-policy, as the asynchronous modes of OpenRLHF and AReaL): they come from
the weights before step t's update, the clipped importance ratio against their logged
log-probs corrects for that, and `rollout_version_lag` logs the lag (1). Off by default.
"""

from __future__ import annotations

import random
import time

from spct.algos import grpo_batch
from spct.grm import random_order
from spct.grm.trajectory import Shown, read
from spct.recipes.context import Context


def rl_prompts(p: Context, step: int) -> list[Shown]:
    """The step's GRM prompts (items and response orders), drawn from the step's seed."""
    c = p.cfg.rl
    rng = random.Random(f"{p.cfg.seed}:rl:{step}")
    items = rng.sample(p.data["train"], c.prompts_per_step)
    orders = [random_order(it.n, rng) for it in items]
    return [p.show(it, o) for it, o in zip(items, orders, strict=True)]


def run_rl(p: Context) -> None:
    c = p.cfg.rl
    learner = p.new_learner(c.lr, c.warmup_steps, c.steps, with_reference=c.beta > 0)

    def submit(step):
        shown = rl_prompts(p, step)
        return shown, p.submit([s.text for s in shown], f"rl:{step}", n=c.group_size, temperature=c.temperature)

    ahead = None
    for step, done in p.steps(c.steps):
        start = time.perf_counter()
        shown, pending = ahead or submit(step)
        with p.timings("generate"):
            results = pending.result()
        ahead = submit(step + 1) if c.async_generation and step + 1 < c.steps else None

        with p.timings("reward"):
            trajectories = [t for s, r in zip(shown, results, strict=True) for t in read(s, r)]
            rewards = [t.reward for t in trajectories]
            failures = sum(t.scores is None for t in trajectories)
            lengths = [len(t.token_ids) for t in trajectories]
            batch, skipped = grpo_batch(results, rewards)

        metrics = {"skipped_prompts": skipped}
        if batch is not None:  # else every prompt overflowed the context: nothing to train on
            with p.timings("train"):
                metrics |= learner.grpo_step(batch, clip_eps=c.clip_eps, beta=c.beta, kl_kind=c.kl_kind)
        if ahead is not None:  # what training did not hide; the sync below would wait for it
            with p.timings("generate"):
                ahead[-1].result()
        version = p.sync_weights()
        times = p.timings.lap()
        times["time/step"] = time.perf_counter() - start
        times["time/idle"] = max(0.0, times["time/step"] - sum(v for k, v in times.items() if k != "time/step"))
        n = len(rewards)
        metrics.update({
            "reward_mean": sum(rewards) / n,
            "accuracy": sum(r > 0 for r in rewards) / n,
            "parse_failure_rate": failures / n,
            "response_length": sum(lengths) / n,
            "tokens_per_s": sum(lengths) / max(times.get("time/generate", 0.0), 1e-9),
            "weight_version": version,
            "rollout_version_lag": version - 1 - min(t.version for t in trajectories),
            **times,
        })
        done(metrics, acc=f"{metrics['accuracy']:.2f}", kl=f"{metrics.get('kl', 0.0):.4f}")
    p.checkpoint(final=True)
