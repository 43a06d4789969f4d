"""A policy's components: what it is asked, the reward of its rollouts, its held-out accuracy.

The policy recipes (spct.recipes.policy) hold the loops and compose these. `PolicyReward`
rewards a step's rollouts by a frozen GRM's reward pool (with an optional meta RM choosing the
samples that count) or by the data's program checker, the oracle; `evaluate_policy` measures
held-out accuracy by the checker. The checker of the synthetic task is
`spct.data.synthetic.checked_reward`, (item, text) -> reward in [0, 1].

Pure: the pool and the engine group are passed in; nothing here starts an actor.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spct.config import PolicyConfig, PolicyRewardConfig
from spct.data.synthetic import (
    ANSWER_KINDS,
    answer_kind,
    checkable,
    checked_reward,
    policy_query,
    well_formed,
)
from spct.grm.reward import agreement, judged_items, rollout_rewards
from spct.item import Item
from spct.sample import Sample, samples_of
from spct.scaling import mean_interval


def policy_prompt(item: Item) -> str | list[dict[str, str]]:
    """What the policy is asked: the synthetic task's query, else the item's conversation."""
    return policy_query(item) if checkable(item) else item.conversation


def per_query(flat: Sequence[float], rollouts: Sequence[Sequence[Any]]) -> list[list[float]]:
    """`flat` (one value per rollout, in query order) cut into one list per query."""
    values = iter(flat)
    out = [[next(values) for _ in texts] for texts in rollouts]
    if next(values, None) is not None:
        raise ValueError(f"per_query: more values than the {sum(map(len, rollouts))} rollouts")
    return out


def reward_by_answer(rewards: Sequence[Sequence[float]], kinds: Sequence[Sequence[str]],
                     names: Sequence[str]) -> dict[str, float]:
    """Which answers a reward pays for: per kind of answer (`kinds` holds one per rollout, per
    query, e.g. `spct.data.synthetic.answer_kind`), its share of the rollouts (`answers/<kind>`)
    and the mean reward it got (`reward_by_answer/<kind>`, only for kinds that occur)."""
    pairs = [(r, k) for rs, ks in zip(rewards, kinds, strict=True) for r, k in zip(rs, ks, strict=True)]
    out: dict[str, float] = {}
    for name in names:
        got = [r for r, k in pairs if k == name]
        out[f"answers/{name}"] = len(got) / len(pairs)
        if got:
            out[f"reward_by_answer/{name}"] = sum(got) / len(got)
    return out


def checked_metrics(items: Sequence[Item], texts: Sequence[Sequence[str]],
                    rewards: Sequence[Sequence[float]]) -> dict[str, float]:
    """What the program checker says of a step whose queries it can check (else nothing): the
    share of answers with every sum right (`train_accuracy`), how often the reward orders two
    rollouts as the checker does (`reward_checker_agreement`, when a pair differs), and which
    kinds of answer the reward pays for (`reward_by_answer`)."""
    if not all(checkable(it) for it in items):
        return {}
    right = [[checked_reward(it, t) for t in ts] for it, ts in zip(items, texts, strict=True)]
    out = {"train_accuracy": sum(r == 1 for g in right for r in g) / sum(map(len, right))}
    agree = agreement(rewards, right)
    if agree is not None:
        out["reward_checker_agreement"] = agree
    kinds = [[answer_kind(it, t) for t in ts] for it, ts in zip(items, texts, strict=True)]
    return out | reward_by_answer(rewards, kinds, ANSWER_KINDS)


class PolicyReward:
    """Rewards of a step's rollouts: one per rollout, per query, and the GRM's metrics.

    With `pool` (a `spct.reward_pool.GRMRewardPool` serving the frozen GRM) each query's
    rollouts are judged as `settings.mode` says, k samples voted and rescaled to [0, 1]
    (spct.grm.reward), only the k_meta the meta RM rates best when `meta_score` is given; with
    `settings.format_gate`, a synthetic-task answer out of format gets 0. With
    `settings.kind == "oracle"` the program checker rewards and no pool is needed."""

    def __init__(self, settings: PolicyRewardConfig, seed: int, pool: Any = None,
                 meta_score: Callable[[list[dict[str, str]]], list[float]] | None = None) -> None:
        if settings.kind != "oracle" and pool is None:
            raise ValueError("PolicyReward: a GRM reward needs its reward pool")
        self.kind, self.mode, self.k, self.seed = settings.kind, settings.mode, settings.k, seed
        self.format_gate, self.abstain = settings.format_gate, settings.abstain
        self.temperature = settings.temperature if settings.k > 1 else 0.0
        self.pool, self.meta_score = pool, meta_score
        self.k_meta = (settings.k_meta or max(1, settings.k // 2)) if meta_score is not None else None

    def ready(self) -> None:
        """Wait for the pool's engines (started without waiting)."""
        if self.pool is not None:
            self.pool.group.ready()

    def __call__(self, items: Sequence[Item], rollouts: list[list[str]],
                 step: int) -> tuple[list[list[float]], dict[str, float]]:
        """The rewards of items[i]'s rollouts[i], and the GRM's metrics (parse-failure rate,
        samples drawn, share of answers out of format)."""
        if self.kind == "oracle":
            return [[checked_reward(it, text) for text in texts] for it, texts in zip(items, rollouts, strict=True)], {}
        sampled = self.pool.sample(self.judged(items, rollouts, step), self.k, self.temperature, f"{self.seed}:{step}",
                                   meta_score=self.meta_score)
        return self.finish(items, rollouts, sampled)

    def judged(self, items: Sequence[Item], rollouts: list[list[str]], step: int, first: int = 0) -> list[Item]:
        """The GRM items judging items[i]'s rollouts; `first` is items[0]'s place in the step."""
        return [j for i, (it, texts) in enumerate(zip(items, rollouts, strict=True), first)
                for j in judged_items(it, texts, self.mode, f"{step}:{i}")]

    def streamed(self, rollout, items: Sequence[Item], prompts, sampling: dict, key: str, step: int, chunks: int,
                 timings) -> tuple[list[list[Sample]], tuple[list[list[float]], dict[str, float]]]:
        """Generate the step's rollouts in `chunks` calls queued on the policy's engines and send
        each chunk's rollouts to the GRM engines as soon as they are done; returns each query's
        samples and the rewards. Every prompt samples with the seed it has unchunked."""
        from spct.rollout import request_seeds, split_contiguous

        seeds = request_seeds(key, len(prompts))
        parts = [r for r in split_contiguous(len(prompts), chunks) if r]
        with timings("generate"):
            pending = [rollout.submit([prompts[j] for j in r], sampling, seed=[seeds[j] for j in r]) for r in parts]
            groups, scoring = [], []
            for r, chunk in zip(parts, pending, strict=True):
                done = [samples_of(res) for res in chunk.result()]
                groups += done
                if self.kind != "oracle":
                    texts = [[s.text for s in g] for g in done]
                    scoring.append(self.pool.submit(
                        self.judged(items[r.start:r.stop], texts, step, r.start), self.k, self.temperature,
                        f"{self.seed}:{step}", keyed=True, meta_score=self.meta_score))
        rollouts = [[s.text for s in g] for g in groups]
        with timings("reward"):
            if self.kind == "oracle":
                return groups, self(items, rollouts, step)
            return groups, self.finish(items, rollouts, [x for wait in scoring for x in wait()])

    def finish(self, items: Sequence[Item], rollouts: list[list[str]],
               sampled) -> tuple[list[list[float]], dict[str, float]]:
        template = self.pool.template
        rewards, failures, drawn, abstained = rollout_rewards(sampled, template.low, template.high, self.k_meta,
                                                              self.abstain)
        info = {"grm_parse_failure_rate": failures / max(drawn, 1), "grm_samples": drawn}
        if self.abstain > 0:
            info["grm_abstain_rate"] = abstained / max(len(sampled), 1)
        if self.format_gate:
            formed = [well_formed(it, t) if checkable(it) else True
                      for it, texts in zip(items, rollouts, strict=True) for t in texts]
            rewards = [r if ok else 0.0 for r, ok in zip(rewards, formed, strict=True)]
            info["format_failure_rate"] = 1 - sum(formed) / len(formed)
        return per_query(rewards, rollouts), info


def evaluate_policy(rollout, items: Sequence[Item], pc: PolicyConfig, path: Path, seed: str,
                    check: Callable[[Item, str], float] = checked_reward) -> dict[str, float]:
    """Held-out checked accuracy: the share of the policy's sampled answers (eval_samples per
    query, at the rollout temperature) that `check` gives full reward (every sum right), with a
    95% interval over queries; and the mean reward (the share of sums right). Each query's
    answers, their rewards and its credit go to `path` (JSON Lines)."""
    results = rollout.generate([policy_prompt(it) for it in items],
                               dict(n=pc.eval_samples, temperature=pc.temperature, max_tokens=pc.max_new_tokens),
                               seed=seed)
    solved, mean_reward, records = [], 0.0, []
    for it, res in zip(items, results, strict=True):
        texts = [s.text for s in samples_of(res)]
        rewards = [check(it, t) for t in texts]
        solved.append(sum(r == 1 for r in rewards) / len(rewards))
        mean_reward += sum(rewards) / len(rewards)
        records.append({"id": it.id, "query": policy_query(it), "answers": texts, "rewards": rewards,
                        "credit": solved[-1]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    mean, low, high = mean_interval(solved)
    return {"accuracy": mean, "ci_low": max(0.0, low), "ci_high": min(1.0, high),
            "sum_accuracy": mean_reward / len(solved), "n": len(solved)}
