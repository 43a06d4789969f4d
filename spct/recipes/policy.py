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
two rollouts as the checker does.
Held-out checked accuracy is measured before RL, every `policy.eval_every` steps and at the end;
each evaluation's answers go to output_dir/policy_eval/step<N>.jsonl.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

from spct.algos import grpo_batch
from spct.chat import encode_sft, sft_batch
from spct.data.synthetic import (
    SyntheticConfig,
    check_answer,
    policy_query,
    sample_answer,
    well_formed,
)
from spct.grm.reward import judged_items, rollout_rewards
from spct.item import DataError, Item
from spct.recipes.context import Context
from spct.scaling import mean_interval

log = logging.getLogger(__name__)


def policy_model(p: Context) -> str:
    """The policy to start from: the run's latest policy, `policy.model`, or a fresh tiny model."""
    if p.state.policy:
        return p.state.policy
    if p.cfg.policy.model:
        return p.cfg.policy.model
    from spct.models import ensure_tiny_model

    return str(ensure_tiny_model(p.out / "policy_base", preset=p.cfg.policy.tiny_preset, seed=p.cfg.seed + 1))


def policy_prompt(item: Item) -> str | list[dict[str, str]]:
    """What the policy is asked: the synthetic task's query, else the item's conversation."""
    return policy_query(item) if "operands" in item.meta else item.conversation


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
                    if "operands" in it.meta else encode_sft(tokenizer, it.conversation, it.responses[it.best])
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


class PolicyReward:
    """Rewards of a step's rollouts, from the GRM reward pool (with an optional meta RM) or the
    program checker. With `wait=False` the GRM engines start in the background (`ready()`
    waits)."""

    def __init__(self, p: Context, wait: bool = True) -> None:
        pc, rw = p.cfg.policy, p.cfg.policy.reward
        self.kind, self.mode, self.k, self.seed = rw.kind, rw.mode, rw.k, p.cfg.seed
        self.format_gate = rw.format_gate
        self.temperature = rw.temperature if rw.k > 1 else 0.0
        self.pool = self.meta_score = None
        self.k_meta = None
        if rw.kind == "oracle":
            return
        self.pool = p.grm_pool(pc.grm or p.state.model, "policy GRM reward", single=rw.mode == "single", num_engines=pc.grm_engines,
                               owned=True, wait=wait)
        if pc.meta_rm:
            self.meta_score, _ = p.meta_scorer(pc.meta_rm, owned=True)
            self.k_meta = rw.k_meta or max(1, rw.k // 2)

    def ready(self) -> None:
        if self.pool is not None:
            self.pool.group.ready()

    def __call__(self, items, rollouts: list[list[str]], step: int) -> tuple[list[float], dict[str, float]]:
        """One reward per rollout (flattened in item order) and the GRM's metrics (parse-failure
        rate, samples drawn, share of answers out of format)."""
        if self.kind == "oracle":
            return [check_answer(it, text) / len(it.meta["operands"]) for it, texts in zip(items, rollouts, strict=True)
                    for text in texts], {}
        scored = self.pool.score(self.judged(items, rollouts, step), self.k, self.temperature, f"{self.seed}:{step}",
                                 self.k_meta, self.meta_score)
        return self.finish(items, rollouts, scored)

    def judged(self, items, rollouts: list[list[str]], step: int, first: int = 0) -> list[Item]:
        """The GRM items judging items[i]'s rollouts; `first` is items[0]'s place in the step."""
        return [j for i, (it, texts) in enumerate(zip(items, rollouts, strict=True), first)
                for j in judged_items(it, texts, self.mode, f"{step}:{i}")]

    def streamed(self, rollout, items, prompts, sampling, key: str, step: int, chunks: int, timings):
        """Generate the step's rollouts in `chunks` calls queued on the policy's engines and send
        each chunk's rollouts to the GRM engines as soon as they are done; returns the rollout
        results and the rewards. Every prompt samples with the seed it has unchunked."""
        from spct.rollout import request_seeds, split_contiguous

        seeds = request_seeds(key, len(prompts))
        parts = [r for r in split_contiguous(len(prompts), chunks) if r]
        with timings("generate"):
            pending = [rollout.submit([prompts[j] for j in r], sampling, seed=[seeds[j] for j in r]) for r in parts]
            results, scoring = [], []
            for r, chunk in zip(parts, pending, strict=True):
                done = chunk.result()
                results += done
                if self.kind != "oracle":
                    texts = [[s["text"] for s in res["samples"]] for res in done]
                    scoring.append(self.pool.submit_score(
                        self.judged(items[r.start:r.stop], texts, step, r.start), self.k, self.temperature,
                        f"{self.seed}:{step}", self.k_meta, self.meta_score, keyed=True))
        rollouts = [[s["text"] for s in res["samples"]] for res in results]
        with timings("reward"):
            if self.kind == "oracle":
                return results, self(items, rollouts, step)
            return results, self.finish(items, rollouts, [x for wait in scoring for x in wait()])

    def finish(self, items, rollouts: list[list[str]], scored) -> tuple[list[float], dict[str, float]]:
        template = self.pool.template
        rewards, failures, drawn = rollout_rewards(scored, template.low, template.high, self.k_meta)
        info = {"grm_parse_failure_rate": failures / max(drawn, 1), "grm_samples": drawn}
        if self.format_gate:
            formed = [well_formed(it, t) if "operands" in it.meta else True
                      for it, texts in zip(items, rollouts, strict=True) for t in texts]
            rewards = [r if ok else 0.0 for r, ok in zip(rewards, formed, strict=True)]
            info["format_failure_rate"] = 1 - sum(formed) / len(formed)
        return rewards, info


def agreement(rewards: list[float], truth: list[float], group_size: int) -> float | None:
    """How often the reward orders two rollouts of a prompt as the checker does, over the pairs
    the checker tells apart (1: always, 0.5: chance; a tie in the reward counts half)."""
    agree = pairs = 0.0
    for g in range(0, len(rewards), group_size):
        for i in range(g, g + group_size):
            for j in range(i + 1, g + group_size):
                if truth[i] != truth[j]:
                    pairs += 1
                    diff = (rewards[i] - rewards[j]) * (truth[i] - truth[j])
                    agree += 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0
    return agree / pairs if pairs else None


def evaluate_policy(rollout, items, pc, path: Path, seed: str) -> dict[str, float]:
    """Held-out checked accuracy: the share of the policy's sampled answers (eval_samples per
    query, at the rollout temperature) with every sum right, with a 95% interval over queries;
    and the share of sums right. Each query's answers and credit go to `path` (JSON Lines)."""
    results = rollout.generate([policy_query(it) for it in items],
                               dict(n=pc.eval_samples, temperature=pc.temperature, max_tokens=pc.max_new_tokens),
                               seed=seed)
    solved, sums, records = [], 0.0, []
    for it, res in zip(items, results, strict=True):
        m = len(it.meta["operands"])
        texts = [s["text"] for s in res["samples"]]
        right = [check_answer(it, t) for t in texts]
        solved.append(sum(r == m for r in right) / len(right))
        sums += sum(right) / (m * len(right))
        records.append({"id": it.id, "query": policy_query(it), "answers": texts, "sums_right": right,
                        "credit": solved[-1]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    mean, low, high = mean_interval(solved)
    return {"accuracy": mean, "ci_low": max(0.0, low), "ci_high": min(1.0, high),
            "sum_accuracy": sums / len(solved), "n": len(solved)}


def run_policy_rl(p: Context) -> dict[str, float]:
    pc, seed = p.cfg.policy, p.cfg.seed
    model = policy_model(p)
    # The policy's engines, the GRM's engines, the meta RM and the learner all start at once.
    rollout = p.engines(model, name="policy_rollout", owned=True, wait=False)
    reward = PolicyReward(p, wait=False)
    learner = p.new_learner(pc.lr, 0, pc.steps, with_reference=pc.beta > 0, model=model)
    rollout.ready()
    reward.ready()
    if p.state.policy_version:  # resumed: the engines report the weights' version
        rollout.update_weights_from_path(model, p.state.policy_version)
    sync = p.weight_sync(rollout)
    checkable = [it for it in p.data.get(pc.eval_split) or [] if "operands" in it.meta][: pc.eval_items]
    if not checkable:
        log.warning("policy_rl: data.%s holds no items the program checker can check (the synthetic task's), so "
                    "no held-out accuracy is measured; reward_mean is the reward model's own view", pc.eval_split)

    def evaluate(step: int) -> dict[str, float]:
        if not checkable:
            return {}
        start = time.perf_counter()
        out = evaluate_policy(rollout, checkable, pc, p.out / "policy_eval" / f"step{step:06d}.jsonl",
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
            results, (rewards, info) = reward.streamed(rollout, items, prompts, sampling, key, step,
                                                       pc.reward.stream_chunks, p.timings)
        else:
            with p.timings("generate"):
                results = rollout.generate(prompts, sampling, seed=key)
            with p.timings("reward"):
                rewards, info = reward(items, [[s["text"] for s in r["samples"]] for r in results], step)
        texts = [[s["text"] for s in r["samples"]] for r in results]
        batch, skipped = grpo_batch(results, rewards, scale=pc.scale_advantages)
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
        n = len(rewards)
        metrics.update({"reward_mean": sum(rewards) / n, "weight_version": p.state.policy_version,
                        "rollout_version": min(r["version"] for r in results),
                        "grm_time_share": times.get("time/reward", 0.0) / times["time/step"], **info, **times})
        if all("operands" in it.meta for it in items):
            right = [check_answer(it, t) / len(it.meta["operands"]) for it, ts in zip(items, texts, strict=True)
                     for t in ts]
            metrics["train_accuracy"] = sum(r == 1 for r in right) / n
            agree = agreement(rewards, right, pc.group_size)
            if agree is not None:
                metrics["reward_checker_agreement"] = agree
        if pc.eval_every and (step + 1) % pc.eval_every == 0 or step + 1 == pc.steps:
            result = evaluate(step + 1)
            metrics.update({f"eval_{k}": v for k, v in result.items() if k in ("accuracy", "sum_accuracy")})
        done(metrics, reward=f"{metrics['reward_mean']:.2f}", acc=f"{result.get('accuracy', float('nan')):.2f}")
    p.checkpoint(final=True, role="policy")
    return result
