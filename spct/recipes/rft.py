"""Rejective fine-tuning: sample trajectories, keep the correct ones of non-trivial items, SFT.

Non-hinted: N_RFT samples per item, each with its own response order; incorrect ones are
dropped, and so is every sample of an item whose N_RFT samples are all correct (too easy).
Hinted: one more sample whose prompt names the best response; kept if correct, trained on
WITHOUT the hint. Only for items whose preference strength (HelpSteer2/3's annotators:
meta.preference_strength, 1 slightly better .. 3 much better) is at least
`hint_min_strength`: a hint on a near tie teaches the GRM to rationalise a label it could not
reach itself (items without a strength are always hinted). As the paper mixes its accepted
trajectories with general instruction data, `warmup_mix` of each fine-tuning batch can be
warm-up trajectories (the synthetic task's SFT data). Every sample (kept or not, with its label) is appended to
rft/trajectories.jsonl as it comes, so an interrupted run loses nothing and the meta RM can
later train on the non-hinted ones.
With `rft.general_data` (general instruction conversations, as the paper mixes 1,070K of them
with 186K of reward data), `general_mix` of each batch is drawn from it instead, each item's best
response the target; a conversation longer than the model's context is drawn again and counted.
"""

from __future__ import annotations

import json
import logging
import random

from tqdm import tqdm

from spct.chat import encode_sft, sft_batch
from spct.data.synthetic import warmup_pairs
from spct.grm import random_order, rft_accept
from spct.item import DataError
from spct.recipes.context import Context
from spct.sampler import GRMSampler

log = logging.getLogger("spct")


def run_rft(p: Context) -> None:
    c, seed = p.cfg.rft, p.cfg.seed
    items = list(p.data["train"])
    random.Random(f"{seed}:rft:items").shuffle(items)
    items = items[: c.items or len(items)]
    path = p.out / "rft" / "trajectories.jsonl"
    if not p.state.rft.sampling_done:
        teacher = p.actors.grm_pool(c.teacher, "RFT teacher", in_group=True) if c.teacher else None
        try:
            _sample(p, items, path, p.grm.on(teacher.group) if teacher else p.grm)
        finally:  # the teacher's engines give way to the learner
            if teacher is not None:
                teacher.shutdown()
    kept = [json.loads(line) for line in path.open()]
    kept = [t for t in kept if t["accepted"]]
    if not kept:
        # Every sample is on disk; fine-tuning on nothing would only waste the phase.
        log.warning("RFT accepted no trajectory (see %s): skipping its fine-tuning", path)
        return

    learner = p.new_learner(c.lr, c.warmup_steps, c.sft_steps, with_reference=False)
    n_general = round(c.batch_size * (c.general_mix if p.general else c.warmup_mix))
    if n_general and not p.general and p.cfg.data.kind != "synthetic":  # warmup_mix without warm-up data
        log.warning("rft.warmup_mix=%s ignored: warm-up data exists for data.kind=synthetic only", c.warmup_mix)
        n_general = 0
    for step, done in p.steps(c.sft_steps, desc="rft sft"):
        rng = random.Random(f"{seed}:rft:{step}")
        batch = [kept[rng.randrange(len(kept))] for _ in range(c.batch_size - n_general)]
        examples = [encode_sft(p.tokenizer, t["prompt"], t["completion"]) for t in batch]
        extra: dict[str, float] = {}
        if n_general and p.general:
            general, extra["general_too_long"] = general_examples(p, rng, n_general)
            examples += general
            extra["general_share"] = n_general / c.batch_size
        elif n_general:
            examples += [encode_sft(p.tokenizer, prompt, completion)
                         for prompt, completion in warmup_pairs(p.data["train"], rng, n_general, p.grm.show, p.cfg.warmup)]
        with p.timings("train"):
            metrics = learner.sft_step(sft_batch(examples))
        done(metrics | extra, loss=f"{metrics['loss']:.3f}")
    p.checkpoint(final=True)
    p.sync_weights()


def general_examples(p: Context, rng: random.Random, n: int) -> tuple[list[tuple[list[int], int]], int]:
    """n encoded (conversation, best response) examples drawn from rft.general_data, and how
    many draws were too long for the model's context (drawn again, up to 10 times per example)."""
    limit = p.cfg.model.max_model_len
    examples, too_long = [], 0
    while len(examples) < n:
        item = p.general[rng.randrange(len(p.general))]
        ids, prompt_len = encode_sft(p.tokenizer, item.conversation, item.responses[item.best])
        if limit and len(ids) > limit:
            too_long += 1
            if too_long > 10 * n:
                raise DataError(f"rft.general_data, item {item.id}", "responses", f"{too_long} of the drawn "
                                f"conversations are longer than the model's context (model.max_model_len={limit})")
            continue
        examples.append((ids, prompt_len))
    return examples, too_long


def _sample(p: Context, items, path, grm: GRMSampler) -> None:
    """Sample `items` from `grm` (the model being trained, or a teacher's engines) into `path`."""
    c, seed = p.cfg.rft, p.cfg.seed
    path.parent.mkdir(parents=True, exist_ok=True)
    progress = p.state.rft
    counts = progress.counts
    _truncate(path, progress.lines)
    per_item = c.n_samples + (1 if c.hinted else 0)
    chunk = max(1, c.generate_batch // per_item)

    def samples(item) -> int:  # the hinted one only where the preference is strong enough to hint
        strength = item.meta.get("preference_strength")
        weak = isinstance(strength, int | float) and strength < c.hint_min_strength
        return per_item - (c.hinted and weak)

    bar = tqdm(total=len(items), initial=progress.items_done, desc="rft sampling")
    with path.open("a") as out:
        for start in range(progress.items_done, len(items), chunk):
            batch = items[start : start + chunk]
            shown = []  # per item: n_samples plain prompts, then the hinted one
            for item in batch:
                rng = random.Random(f"{seed}:rft-sample:{item.id}")
                shown += [grm.show(item, random_order(item.n, rng), hint=k == c.n_samples) for k in range(samples(item))]
            sampled = grm.sample(shown, f"rft:{start}", n=1, temperature=c.temperature)
            with p.timings("reward"):
                records = []
                for (t,) in sampled:
                    counts["parse_failures"] += t.scores is None
                    records.append({"id": t.item.id, "order": t.shown.order, "hinted": t.shown.sent is not None,
                                    "prompt": t.shown.prompt, "completion": t.text, "scores": t.scores,
                                    "correct": t.correct})
                at = 0
                for item in batch:
                    group, at = records[at : at + samples(item)], at + samples(item)
                    plain, hint = group[: c.n_samples], group[c.n_samples :]
                    for r, keep in zip(plain, rft_accept([r["correct"] for r in plain]), strict=True):
                        r["accepted"] = keep
                    for r, keep in zip(hint, rft_accept([r["correct"] for r in hint], hinted=True), strict=True):
                        r["accepted"] = keep
                    counts["samples"] += len(plain)
                    counts["kept"] += sum(r["accepted"] for r in plain)
                    counts["too_easy"] += all(r["correct"] for r in plain)
                    counts["all_wrong"] += not any(r["correct"] for r in plain)
                    counts["hinted"] += len(hint)
                    counts["hinted_kept"] += sum(r["accepted"] for r in hint)
            for r in records:
                out.write(json.dumps(r) + "\n")
            out.flush()
            progress.items_done = start + len(batch)
            progress.lines += len(records)
            bar.update(len(batch))
            n_items = progress.items_done
            p.log({"items": n_items,
                   "accept_rate": counts["kept"] / max(1, counts["samples"]),
                   "hinted_accept_rate": counts["hinted_kept"] / max(1, counts["hinted"]),
                   "too_easy_rate": counts["too_easy"] / n_items,
                   "all_wrong_rate": counts["all_wrong"] / n_items,
                   "parse_failure_rate": counts["parse_failures"] / max(1, progress.lines),
                   **p.timings.lap()}, "rft")
            p.save_progress()  # after the log line: a resume keeps exactly the chunks recorded here
    bar.close()
    progress.sampling_done = True
    p.save_progress()


def _truncate(path, lines: int) -> None:
    """Drop lines written after the last recorded progress (a crash mid-chunk)."""
    if not path.exists():
        return
    kept = path.read_text().splitlines(keepends=True)[:lines]
    path.write_text("".join(kept))
