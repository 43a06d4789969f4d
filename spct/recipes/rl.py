"""Rule-based online RL: GRPO with the SPCT rule reward (Eq. 11) and KL to the reference.

Each step: shuffle each item's responses, sample G trajectories of that prompt from the
rollout group, parse and score them against the ground truth (+1 correct, -1 otherwise, a
parse failure included), normalise rewards within each group, one learner step on the clipped
objective plus beta * KL, then sync the new weights (version + 1) to the rollout engines.

With `rl.async_generation` the rollouts of step t + 1 are generated while the learner trains on
step t (one-step off-policy, as the asynchronous modes of OpenRLHF and AReaL): they come from
the weights before step t's update, the clipped importance ratio against their logged
log-probs corrects for that, and `rollout_version_lag` logs the lag (1). Off by default.

With `rl.prefilter_model`, the phase first leaves out the train items that weaker GRM judges
right in each of `rl.prefilter_samples` samples (the paper's 3 of 3), once: the kept ids go to
output_dir/rl/prefilter.json, which a resumed run reads back.
"""

from __future__ import annotations

import json
import logging
import random
import time

from tqdm import tqdm

from spct.files import write_atomic
from spct.grm import random_order
from spct.grm.rules import prefilter_keep
from spct.grm.trajectory import Shown, read
from spct.item import DataError, Item
from spct.learner.batches import grpo_batch
from spct.recipes.context import Context
from spct.scaling import CORRECT, judge

log = logging.getLogger("spct")


def rl_prompts(p: Context, step: int, items: list[Item] | None = None) -> list[Shown]:
    """The step's GRM prompts (items and response orders), drawn from the step's seed out of
    `items` (default: the train split)."""
    c = p.cfg.rl
    rng = random.Random(f"{p.cfg.seed}:rl:{step}")
    items = rng.sample(p.data["train"] if items is None else items, c.prompts_per_step)
    orders = [random_order(it.n, rng) for it in items]
    return [p.grm.show(it, o) for it, o in zip(items, orders, strict=True)]


def train_items(p: Context) -> list[Item]:
    """The train items RL draws from: all of them, or those rl.prefilter_model does not already
    judge right in every sample (decided once; read back from output_dir/rl/prefilter.json)."""
    c, items = p.cfg.rl, p.data["train"]
    if not c.prefilter_model:
        return items
    path = p.out / "rl" / "prefilter.json"
    if not path.exists():
        model = str(p.out / "checkpoints" / "warmup-final" / "model") if c.prefilter_model == "warmup" \
            else c.prefilter_model
        pool = p.actors.grm_pool(model, "RL pre-filter", in_group=True)
        scale, verdicts = (pool.template.low, pool.template.high), []
        try:
            for start in tqdm(range(0, len(items), 1024), desc="rl pre-filter"):
                chunk = items[start:start + 1024]
                samples = pool.sample(chunk, c.prefilter_samples, temperature=c.temperature,
                                      seed=f"{p.cfg.seed}:rl-prefilter:{start}")
                verdicts += [[judge([t.scores], it.rewards, scale).verdict == CORRECT for t in its]
                             for it, its in zip(chunk, samples, strict=True)]
        finally:
            pool.shutdown()
        kept = [it.id for it, keep in zip(items, prefilter_keep(verdicts), strict=True) if keep]
        counts = {"prefilter_items": len(items), "prefilter_dropped": len(items) - len(kept)}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"model": model, "samples": c.prefilter_samples, **counts, "kept": kept}))
        p.tracker.log(counts, step=p.state.global_step, phase="rl")
        log.info("rl pre-filter: %s judged %d of %d train items right in all %d samples; RL draws from the other "
                 "%d", model, counts["prefilter_dropped"], len(items), c.prefilter_samples, len(kept))
    kept_ids = set(json.loads(path.read_text())["kept"])
    out = [it for it in items if it.id in kept_ids]
    if len(out) < c.prompts_per_step:
        raise DataError(str(path), "kept", f"at least rl.prompts_per_step={c.prompts_per_step} items left for RL, "
                        f"but the pre-filter kept {len(out)} of {len(items)} (a weaker rl.prefilter_model, or more "
                        "rl.prefilter_samples, leaves more)")
    return out


def run_rl(p: Context) -> None:
    c = p.cfg.rl
    items = train_items(p)  # before the learner: a pre-filter's engines run alone
    learner = p.new_learner(c.lr, c.warmup_steps, c.steps, with_reference=c.beta > 0)

    def submit(step):
        shown = rl_prompts(p, step, items)
        return shown, p.grm.submit([s.text for s in shown], f"rl:{step}", n=c.group_size, temperature=c.temperature)

    ahead = None
    for step, done in p.steps(c.steps):
        start = time.perf_counter()
        shown, pending = ahead or submit(step)
        with p.timings("generate"):
            results = pending.result()
        ahead = submit(step + 1) if c.async_generation and step + 1 < c.steps else None

        with p.timings("reward"):
            groups = [read(s, r) for s, r in zip(shown, results, strict=True)]
            trajectories = [t for g in groups for t in g]
            rewards = [t.reward for t in trajectories]
            failures = sum(t.scores is None for t in trajectories)
            lengths = [len(t.token_ids) for t in trajectories]
            batch, skipped = grpo_batch(groups, [[t.reward for t in g] for g in groups])

        metrics = {"skipped_prompts": skipped}
        if batch is not None:  # else every prompt overflowed the context: nothing to train on
            with p.timings("train"):
                metrics |= learner.grpo_step(batch, clip_eps=c.clip_eps, beta=c.beta, kl_kind=c.kl_kind,
                                             clip_eps_high=c.clip_eps_high)
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
