"""The policy phases: GRPO on a separate policy model with the SPCT GRM as its reward.

policy_sft: on the synthetic task, a fresh tiny policy learns the answer format
(`a+b=c ; ...`) from answers whose sums are each right with probability `policy.sft_p_right`,
so RL starts from a policy that answers in form but slips; its held-out accuracy is the floor.
On other data the policy (`policy.model`, or a fresh tiny one) is fine-tuned on each train
item's best response (a prompts file with `completion`s, or preference data's chosen answers).

policy_rl: each step samples G rollouts of P train queries from the policy's own engines and
rewards them either by the GRM reward pool (a separate engine group serving a frozen GRM:
`policy.grm`, by default this run's latest GRM weights) or by the program checker (the oracle,
the ceiling a perfect reward model gives). The GRM judges the G rollouts of a query together
in one prompt (group mode) or each alone (single mode), `policy.reward.k` samples voted
(k = 1: greedy), optionally only the k_meta the meta RM (`policy.meta_rm`) trusts most, and the
vote rescaled to [0, 1] (spct.grm.reward says how parse failures and ties count). On the
synthetic task an answer that does not restate the query's sums gets 0 whatever the GRM says
(`policy.reward.format_gate`): the GRM never saw such answers, and without the gate a policy
learns to misstate the sums in ways the GRM cannot check. Then one GRPO step on the policy's
learner (group advantages r - mean unless `policy.scale_advantages`), and the new weights go to
the policy's engines (version + 1). `reward_checker_agreement` logs how often the reward orders
two rollouts as the checker does, and `reward_by_answer/<kind>` the mean reward each kind of
answer got (`answers/<kind>`: its share; spct.data.synthetic.answer_kind): right, one dropped
carry (the warm-up critic's own slip), one other slip, worse, out of format; a reward that pays
more for "carry" than for "slip" favours the critic's error.
Held-out checked accuracy is measured before RL, every `policy.eval_every` steps and at the end;
each evaluation's answers go to output_dir/policy_eval/step<N>.jsonl.
"""

from __future__ import annotations

import logging
import random
import time

from spct.chat import encode_sft, sft_batch
from spct.data.synthetic import (
    SyntheticConfig,
    checkable,
    policy_query,
    sample_answer,
)
from spct.item import DataError
from spct.learner.batches import grpo_batch
from spct.policy import PolicyReward, checked_metrics, evaluate_policy, policy_prompt
from spct.recipes.context import Context
from spct.sample import samples_of

log = logging.getLogger(__name__)


def policy_model(p: Context) -> str:
    """The policy to start from: the run's latest policy, `policy.model`, or a fresh tiny model."""
    if p.state.policy:
        return p.state.policy
    if p.cfg.policy.model:
        return p.cfg.policy.model
    from spct.models import ensure_tiny_model

    return str(ensure_tiny_model(p.out / "policy_base", preset=p.cfg.policy.tiny_preset, seed=p.cfg.seed + 1))


def run_policy_sft(p: Context) -> None:
    from spct.models import load_tokenizer

    pc, seed = p.cfg.policy, p.cfg.seed
    model = policy_model(p)
    tokenizer = load_tokenizer(model)
    task = SyntheticConfig(**p.cfg.data.task)
    learner = p.new_learner(pc.sft_lr, max(1, pc.sft_steps // 10), pc.sft_steps, with_reference=False, model=model)
    for step, done in p.steps(pc.sft_steps, role="policy"):
        rng = random.Random(f"{seed}:policy_sft:{step}")
        items = rng.sample(p.data["train"], pc.sft_batch_size)
        # The synthetic task writes answers right with probability sft_p_right; other data
        # trains on each item's best response.
        examples = [encode_sft(tokenizer, policy_query(it), sample_answer(it, rng, pc.sft_p_right, task))
                    if checkable(it) else encode_sft(tokenizer, it.conversation, it.responses[it.best])
                    for it in items]
        for it, (ids, _) in zip(items, examples, strict=True):
            if p.cfg.model.max_model_len and len(ids) > p.cfg.model.max_model_len:
                raise DataError(f"data.train, item {it.id}", "responses", f"the prompt and its best response are "
                                f"{len(ids)} tokens, beyond the policy's context (model.max_model_len="
                                f"{p.cfg.model.max_model_len}); leave the item out or raise model.max_model_len")
        with p.timings("train"):
            metrics = learner.sft_step(sft_batch(examples))
        done(metrics, loss=f"{metrics['loss']:.3f}")
    p.checkpoint(final=True, role="policy")


def run_policy_rl(p: Context) -> dict[str, float]:
    pc, seed = p.cfg.policy, p.cfg.seed
    model = policy_model(p)
    # The policy's engines, the GRM's engines, the meta RM and the learner all start at once.
    rollout = p.actors.engines(model, name="policy_rollout", owned=True, wait=False)
    pool = meta_score = None
    if pc.reward.kind != "oracle":
        pool = p.actors.grm_pool(pc.grm or p.state.model, "policy GRM reward", single=pc.reward.mode == "single",
                          num_engines=pc.grm_engines, owned=True, wait=False)
        if pc.meta_rm:
            meta_score, _ = p.actors.meta_scorer(pc.meta_rm, owned=True)
    reward = PolicyReward(pc.reward, seed, pool, meta_score)
    learner = p.new_learner(pc.lr, 0, pc.steps, with_reference=pc.beta > 0, model=model)
    rollout.ready()
    reward.ready()
    if p.state.policy_version:  # resumed: the engines report the weights' version
        rollout.update_weights_from_path(model, p.state.policy_version)
    sync = p.actors.weight_sync(rollout)
    checkable_items = [it for it in p.data.get(pc.eval_split) or [] if checkable(it)][: pc.eval_items]
    if not checkable_items:
        log.warning("policy_rl: data.%s holds no items the program checker can check (the synthetic task's), so "
                    "no held-out accuracy is measured; reward_mean is the reward model's own view", pc.eval_split)

    def evaluate(step: int) -> dict[str, float]:
        if not checkable_items:
            return {}
        start = time.perf_counter()
        out = evaluate_policy(rollout, checkable_items, pc, p.out / "policy_eval" / f"step{step:06d}.jsonl",
                              f"{seed}:policy_eval")
        out["time"] = time.perf_counter() - start
        p.tracker.log({f"policy_eval/{k}": v for k, v in out.items()}, step=p.state.global_step,
                      phase="policy_rl", phase_step=step)
        return out

    result = evaluate(0) if p.state.phase_step == 0 else {}
    sampling = dict(n=pc.group_size, temperature=pc.temperature, max_tokens=pc.max_new_tokens, logprobs=0)
    for step, done in p.steps(pc.steps, role="policy"):
        start = time.perf_counter()
        rng = random.Random(f"{seed}:policy_rl:{step}")
        items = rng.sample(p.data["train"], pc.prompts_per_step)
        prompts, key = [policy_prompt(it) for it in items], f"{seed}:policy_rl:{step}"
        if pc.reward.stream_chunks > 1:
            groups, (rewards, info) = reward.streamed(rollout, items, prompts, sampling, key, step,
                                                      pc.reward.stream_chunks, p.timings)
            texts = [[s.text for s in g] for g in groups]
        else:
            with p.timings("generate"):
                groups = [samples_of(r) for r in rollout.generate(prompts, sampling, seed=key)]
            texts = [[s.text for s in g] for g in groups]
            with p.timings("reward"):
                rewards, info = reward(items, texts, step)
        batch, skipped = grpo_batch(groups, rewards, scale=pc.scale_advantages)
        metrics = {"skipped_prompts": skipped}
        if batch is not None:  # else every query overflowed the context: nothing to train on
            with p.timings("train"):
                metrics |= learner.grpo_step(batch, clip_eps=pc.clip_eps, beta=pc.beta, kl_kind=pc.kl_kind,
                                             clip_eps_high=pc.clip_eps_high)
        with p.timings("weight_sync"):
            p.state.policy_version += 1
            sync.push_from(learner, p.state.policy_version)
        times = p.timings.lap()
        times["time/step"] = time.perf_counter() - start
        flat = [r for g in rewards for r in g]
        metrics.update({"reward_mean": sum(flat) / len(flat), "weight_version": p.state.policy_version,
                        "rollout_version": min(s.version for g in groups for s in g),
                        "grm_time_share": times.get("time/reward", 0.0) / times["time/step"], **info, **times})
        metrics |= checked_metrics(items, texts, rewards)
        if pc.eval_every and (step + 1) % pc.eval_every == 0 or step + 1 == pc.steps:
            result = evaluate(step + 1)
            metrics.update({f"eval_{k}": v for k, v in result.items() if k in ("accuracy", "sum_accuracy")})
        done(metrics, reward=f"{metrics['reward_mean']:.2f}", acc=f"{result.get('accuracy', float('nan')):.2f}")
    p.checkpoint(final=True, role="policy")
    return result
