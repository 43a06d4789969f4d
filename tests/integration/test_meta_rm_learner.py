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
    return data


def test_bce_through_the_learner_and_scoring_by_the_actor(ray_cluster, tiny_model_dir, tmp_path):
    import ray

    from spct.data.tiny import load_tokenizer
    from spct.learner import LearnerGroup
    from spct.meta_rm import MetaRM, encode_trajectory
    from spct.scoring import roc_auc

    data = _trajectories()
    tok = load_tokenizer(tiny_model_dir)
    batch = {"input_ids": [encode_trajectory(tok, t, 512) for t in data], "labels": [t["label"] for t in data]}
    group = LearnerGroup(1, dict(model=str(tiny_model_dir), task="classification", zero_stage=0, lr=3e-3,
                                 total_steps=60, micro_batch_size=8, dtype="float32"))
    try:
        losses = [group.bce_step(batch)["loss"] for _ in range(60)]
        path = group.save(tmp_path / "meta")
    finally:
        group.shutdown()
    assert losses[-1] < 0.5 * losses[0]

    actor = ray.remote(MetaRM).remote(str(path), dtype="float32", max_length=512)
    scores = ray.get(actor.score.remote(data))
    ray.kill(actor)
    assert roc_auc([t["label"] for t in data], scores) > 0.9

    with pytest.raises(ValueError, match="labels\\[0\\]"):
        LearnerGroup.bce_step(group, {"input_ids": [[1, 2]], "labels": [2]})
