"""The meta RM: learn which GRM trajectories are correct, to guide voting (MetaRM@k).

Training data: k fresh samples per train item from the trained GRM (so the meta RM sees the
GRM's own positives and negatives) plus the non-hinted RFT trajectories; every trajectory is
labelled by Eq. 10, except that a neutral one (every response scored the same, which cannot
move a vote) gets the target `meta_rm.neutral_label` (0 = Eq. 10's label). A scalar head (by
default on the GRM backbone) is trained with BCE through the learner; the saved model is then
scored on trajectories of held-out items (ROC-AUC against Eq. 10, over all of them and over the
decisive ones) by the meta-RM actor, which is also what evaluation uses.
"""

from __future__ import annotations

import json
import random

from spct.grm import is_neutral, meta_target, random_order
from spct.meta_rm import encode_trajectory, load_input_template
from spct.recipes.context import Context
from spct.scoring import roc_auc


def trajectory(item_id: str, prompt: str, completion: str, correct: bool, scores, neutral_label: float) -> dict:
    """A meta-RM training record: Eq. 10 correctness, whether it is neutral, and its target."""
    neutral = is_neutral(scores)
    return {"id": item_id, "prompt": prompt, "completion": completion, "correct": correct,
            "neutral": neutral, "label": meta_target(correct, neutral, neutral_label)}


def grm_trajectories(p: Context, items, k: int, temperature: float, tag: str, neutral_label: float) -> list[dict]:
    """k samples per item from the rollout group, each with its Eq. 10 correctness, whether
    it is neutral, and its training target."""
    shown = []
    for item in items:
        rng = random.Random(f"{p.cfg.seed}:{tag}:{item.id}")
        shown += [p.grm.show(item, random_order(item.n, rng), training=False) for _ in range(k)]
    return [trajectory(t.item.id, t.shown.prompt, t.text, t.correct, t.scores, neutral_label)
            for (t,) in p.grm.sample(shown, f"meta_rm:{tag}", n=1, temperature=temperature)]


def run_meta_rm(p: Context) -> dict:
    c, seed = p.cfg.meta_rm, p.cfg.seed
    folder = p.out / "meta_rm"
    folder.mkdir(parents=True, exist_ok=True)
    train = list(p.data["train"])
    random.Random(f"{seed}:meta_rm:items").shuffle(train)
    held_out = p.data.get("validation") or []
    held_out = held_out[: c.validation_items or len(held_out)]

    data = grm_trajectories(p, train[: c.items or len(train)], c.samples_per_item, c.temperature, "meta",
                            c.neutral_label)
    rft_path = p.out / "rft" / "trajectories.jsonl"
    if c.use_rft and rft_path.exists():
        for line in rft_path.open():
            t = json.loads(line)
            if not t["hinted"]:
                data.append(trajectory(t["id"], t["prompt"], t["completion"], t["correct"], t["scores"],
                                       c.neutral_label))
    val = grm_trajectories(p, held_out, c.samples_per_item, c.temperature, "meta-val", c.neutral_label)
    for name, rows in (("train", data), ("validation", val)):
        with (folder / f"{name}.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    learner = p.new_learner(c.lr, c.warmup_steps, c.steps, with_reference=False, task="classification",
                            model=c.model or p.state.model)
    framing = load_input_template(c.input_template)
    encoded = [encode_trajectory(p.tokenizer, t, c.max_length, framing) for t in data]
    labels = [t["label"] for t in data]
    for step, done in p.steps(c.steps, resume=False):
        rng = random.Random(f"{seed}:meta_rm:{step}")
        idx = [rng.randrange(len(data)) for _ in range(c.batch_size)]
        with p.timings("train"):
            metrics = learner.bce_step({"input_ids": [encoded[i] for i in idx], "labels": [labels[i] for i in idx]})
        done(metrics, loss=f"{metrics['loss']:.3f}")
    p.checkpoint(final=True, role="meta_rm")
    p.close_learner()
    score, stop = p.actors.meta_scorer(p.state.meta_rm)
    try:
        scores = score(val) if val else []
    finally:
        stop()
    result: dict[str, float] = {"train_trajectories": len(data),
                                "train_positive_rate": sum(t["correct"] for t in data) / len(data),
                                "train_neutral_rate": sum(t["neutral"] for t in data) / len(data),
                                "validation_trajectories": len(val)}
    if val:
        result["validation_positive_rate"] = sum(t["correct"] for t in val) / len(val)
    # Over all held-out trajectories, and over the decisive ones only: a neutral verdict cannot
    # move a vote, so how well the meta RM orders correct against misleading verdicts is what
    # MetaRM@k gains from.
    scored = list(zip(val, scores, strict=True))
    for key, rows in (("validation_roc_auc", scored),
                      ("validation_decisive_roc_auc", [(t, s) for t, s in scored if not t["neutral"]])):
        labels_kept = [int(t["correct"]) for t, _ in rows]
        if 0 < sum(labels_kept) < len(labels_kept):
            result[key] = roc_auc(labels_kept, [s for _, s in rows])
    p.log(result, "meta_rm")
    return result
