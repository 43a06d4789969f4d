"""The meta RM: learn which GRM trajectories are correct, to guide voting (MetaRM@k).

Training data: k fresh samples per train item from the trained GRM (so the meta RM sees the
GRM's own positives and negatives) plus the non-hinted RFT trajectories; every trajectory is
labelled by Eq. 10. A scalar head (by default on the GRM backbone) is trained with BCE
through the learner; the saved model is then scored on trajectories of held-out items
(ROC-AUC) by the meta-RM actor, which is also what evaluation uses.
"""

from __future__ import annotations

import json
import random

from tqdm import tqdm

from spct.grm import is_correct, map_back, parse_scores, random_order
from spct.meta_rm import encode_trajectory
from spct.scoring import roc_auc


def grm_trajectories(p, items, k: int, temperature: float, tag: str) -> list[dict]:
    """k samples per item from the rollout group, each labelled 1 if correct by Eq. 10."""
    jobs = []
    for item in items:
        rng = random.Random(f"{p.cfg.seed}:{tag}:{item.id}")
        for _ in range(k):
            order = random_order(item.n, rng)
            jobs.append((item, order, *p.prompt(item, order, training=False)))
    results = p.generate([j[2] for j in jobs], n=1, temperature=temperature)
    out = []
    for (item, order, prompt, low, high), res in zip(jobs, results, strict=True):
        text = res["samples"][0]["text"]
        scores = map_back(parse_scores(text, item.n, low, high), order)
        out.append({"id": item.id, "prompt": prompt, "completion": text,
                    "label": int(is_correct(scores, item.rewards))})
    return out


def run_meta_rm(p) -> dict:
    import ray

    from spct.evaluate import meta_scorer

    c, seed = p.cfg.meta_rm, p.cfg.seed
    folder = p.out / "meta_rm"
    folder.mkdir(parents=True, exist_ok=True)
    train = list(p.data["train"])
    random.Random(f"{seed}:meta_rm:items").shuffle(train)
    held_out = p.data.get("validation") or []
    held_out = held_out[: c.validation_items or len(held_out)]

    data = grm_trajectories(p, train[: c.items or len(train)], c.samples_per_item, c.temperature, "meta")
    rft_path = p.out / "rft" / "trajectories.jsonl"
    if c.use_rft and rft_path.exists():
        for line in rft_path.open():
            t = json.loads(line)
            if not t["hinted"]:
                data.append({"id": t["id"], "prompt": t["prompt"], "completion": t["completion"],
                             "label": int(t["correct"])})
    val = grm_trajectories(p, held_out, c.samples_per_item, c.temperature, "meta-val")
    for name, rows in (("train", data), ("validation", val)):
        with (folder / f"{name}.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    learner = p.new_learner(c.lr, c.warmup_steps, c.steps, with_reference=False, task="classification",
                            model=c.model or p.state.model)
    encoded = [encode_trajectory(p.tokenizer, t, c.max_length) for t in data]
    labels = [t["label"] for t in data]
    bar = tqdm(range(c.steps), desc="meta_rm")
    for step in bar:
        rng = random.Random(f"{seed}:meta_rm:{step}")
        idx = [rng.randrange(len(data)) for _ in range(c.batch_size)]
        with p.timings("train"):
            metrics = learner.bce_step({"input_ids": [encoded[i] for i in idx], "labels": [labels[i] for i in idx]})
        p.state.phase_step = step + 1
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        p.log(metrics, "meta_rm")
    path = str(p.ckpt_dir / "meta_rm-final" / "model")
    learner.save(path)
    learner.shutdown()
    p.learner = None
    p.state.meta_rm = path

    score, actor = meta_scorer(path, p.cfg.model.dtype, c.max_length, p.cfg.learner.num_threads)
    scores = score(val) if val else []
    ray.kill(actor)
    val_labels = [t["label"] for t in val]
    result: dict[str, float] = {"train_trajectories": len(data), "train_positive_rate": sum(labels) / len(labels),
              "validation_trajectories": len(val)}
    if 0 < sum(val_labels) < len(val_labels):
        result["validation_roc_auc"] = roc_auc(val_labels, scores)
        result["validation_positive_rate"] = sum(val_labels) / len(val_labels)
    p.log(result, "meta_rm")
    return result
