"""The meta RM trained through the DeepSpeed learner (task="classification"), then served by
the meta-RM actor from the saved folder: what the meta_rm phase does."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def _trajectories():
    data = []
    for a in range(8):
        prompt = f"Solve: {a}+1\nR1: {a + 1}\nR2: {a + 2}"
        data.append({"prompt": prompt, "completion": "Scores: \\boxed{9, 2}", "label": 1})
        data.append({"prompt": prompt, "completion": "Scores: \\boxed{2, 9}", "label": 0})
        data.append({"prompt": prompt, "completion": "Scores: \\boxed{5, 5}", "label": 0.5})  # neutral
    return data


def test_bce_through_the_learner_and_scoring_by_the_actor(ray_cluster, tiny_model_dir, tmp_path):
    import ray

    from spct.learner import LearnerGroup, LearnerSpec
    from spct.meta_rm import encode_trajectory
    from spct.models import load_tokenizer
    from spct.scoring import roc_auc

    data = _trajectories()
    tok = load_tokenizer(tiny_model_dir)
    batch = {"input_ids": [encode_trajectory(tok, t, 512) for t in data], "labels": [t["label"] for t in data]}
    group = LearnerGroup(1, LearnerSpec(model=str(tiny_model_dir), task="classification", zero_stage=0, lr=3e-3,
                                 total_steps=60, micro_batch_size=8, dtype="float32"))
    try:
        losses = [group.bce_step(batch)["loss"] for _ in range(60)]
        path = group.save(tmp_path / "meta")
    finally:
        group.shutdown()
    assert losses[-1] < 0.5 * losses[0]

    from spct.cluster import actor_fault
    from spct.meta_rm import meta_scorer

    score, actor = meta_scorer(str(path), "float32", 512)
    scores = score(data)
    ray.kill(actor)
    # A meta RM that died mid-run is a fault the run stops (or restarts) on, not a bug.
    with pytest.raises(Exception) as died:
        score(data[:2])
    assert actor_fault(died.value) is not None
    decided = [(t["label"], x) for t, x in zip(data, scores, strict=True) if t["label"] in (0, 1)]
    assert roc_auc([y for y, _ in decided], [x for _, x in decided]) > 0.9
    # A soft target lands between the hard ones: neutral verdicts rank below correct, above wrong.
    by_label = {y: [x for t, x in zip(data, scores, strict=True) if t["label"] == y] for y in (0, 0.5, 1)}
    mean = {y: sum(xs) / len(xs) for y, xs in by_label.items()}
    assert mean[0] < mean[0.5] < mean[1]

    with pytest.raises(ValueError, match="labels\\[0\\]"):
        LearnerGroup.bce_step(group, {"input_ids": [[1, 2]], "labels": [2]})
    with pytest.raises(ValueError, match="labels\\[0\\]: expected a target in"):
        LearnerGroup.bce_step(group, {"input_ids": [[1, 2]], "labels": ["1"]})
