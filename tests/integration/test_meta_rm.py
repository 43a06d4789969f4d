"""The meta-RM scorer on the tiny causal LM, as a Ray actor and in process. Its training through
the DeepSpeed learner is in test_meta_rm_learner.py."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from spct.meta_rm import MetaRM, trajectory_text

pytestmark = pytest.mark.integration

KWARGS = dict(dtype="float32", max_length=256, seed=0, micro_batch_size=4)
CORRECT = "Analysis: Response 1 adds up, Response 2 is off by one.\nScores: \\boxed{9, 2}"
WRONG = "Analysis: Response 1 adds up, Response 2 is off by one.\nScores: \\boxed{2, 9}"


def grm_prompt(a: int, b: int) -> str:
    return (
        f"What is {a}+{b}?\n"
        f"[The Begin of Response 1]{a + b}[The End of Response 1]\n"
        f"[The Begin of Response 2]{a + b + 1}[The End of Response 2]"
    )


def toy_set() -> list[dict]:
    """Separable: the label is 1 exactly when the best response gets the higher score."""
    out = []
    for a, b in [(3, 4), (2, 5)]:
        out.append({"prompt": grm_prompt(a, b), "completion": CORRECT, "label": 1})
        out.append({"prompt": grm_prompt(a, b), "completion": WRONG, "label": 0})
    return out


@pytest.fixture(scope="module")
def local(tiny_model_dir) -> MetaRM:
    return MetaRM(str(tiny_model_dir), **{**KWARGS, "max_length": 24})


def test_actor_scores_are_finite_deterministic_and_in_input_order(ray_cluster, tiny_model_dir):
    actor_cls = ray_cluster.remote(MetaRM)
    a = actor_cls.remote(model=str(tiny_model_dir), **KWARGS)
    b = actor_cls.remote(model=str(tiny_model_dir), **KWARGS)
    trajectories = toy_set() + [{"prompt": "Short query", "completion": "Scores: \\boxed{5}"}]
    try:
        scores = ray_cluster.get(a.score.remote(trajectories))
        assert len(scores) == len(trajectories)
        assert all(isinstance(s, float) and math.isfinite(s) for s in scores)
        assert len({round(s, 6) for s in scores}) > 1, "different texts should not all score alike"

        assert ray_cluster.get(a.score.remote(trajectories)) == scores
        assert ray_cluster.get(b.score.remote(trajectories)) == scores, "same seed, same fresh head"
        other_seed = MetaRM(str(tiny_model_dir), **{**KWARGS, "seed": 1})
        assert other_seed.score(trajectories) != pytest.approx(scores, abs=1e-4)

        reversed_scores = ray_cluster.get(a.score.remote(trajectories[::-1]))[::-1]
        assert reversed_scores == pytest.approx(scores, abs=1e-5)
        alone = [ray_cluster.get(a.score.remote([t]))[0] for t in trajectories]
        assert alone == pytest.approx(scores, abs=1e-5), (
            "padding in a batch must not change a score"
        )
        assert ray_cluster.get(a.score.remote([])) == []
    finally:
        for actor in (a, b):
            ray_cluster.kill(actor)


def test_long_inputs_lose_their_beginning_not_their_scores(local: MetaRM):
    a = {"prompt": "First long preamble. " * 20 + grm_prompt(3, 4), "completion": CORRECT}
    b = {"prompt": "Another, different opening. " * 20 + grm_prompt(3, 4), "completion": CORRECT}
    ids = local.encode(a)
    assert len(ids) == local.max_length == 24
    full = local.tokenizer(trajectory_text(local.tokenizer, a), add_special_tokens=False)["input_ids"]
    assert ids == full[-24:]
    assert local.tokenizer.decode(ids).endswith("\\boxed{9, 2}<|end|>")
    assert local.encode(b) == ids
    sa, sb, sw = local.score([a, b, {**a, "completion": WRONG}])
    assert sa == pytest.approx(sb, abs=1e-6)
    assert sw != pytest.approx(sa, abs=1e-6)


def test_input_text_is_the_chat_conversation_or_plain_text(local: MetaRM):
    t = {"prompt": "the query", "completion": "the critique"}
    text = trajectory_text(local.tokenizer, t)
    assert text.index("the query") < text.index("<|assistant|>") < text.index("the critique")
    template = local.tokenizer.chat_template
    try:
        local.tokenizer.chat_template = None
        assert trajectory_text(local.tokenizer, t) == "the query\nthe critique"
    finally:
        local.tokenizer.chat_template = template


def test_an_input_template_frames_the_trajectory_as_the_meta_rm_was_trained(tiny_model_dir, tmp_path):
    """meta_rm.input_template: the classifier reads the template's text (plain text with the
    tokenizer's special tokens), which is what the meta_rm phase trains it on too."""
    from spct.meta_rm import encode_trajectory, load_input_template

    path = tmp_path / "framing.j2"
    path.write_text("Judged:\n{{ prompt }}\nVerdict:\n{{ completion }}")
    framed = MetaRM(str(tiny_model_dir), **{**KWARGS, "max_length": 64}, input_template=str(path))
    t = {"prompt": "the query", "completion": "the critique"}
    expected = framed.tokenizer("Judged:\nthe query\nVerdict:\nthe critique")["input_ids"][-64:]
    assert framed.encode(t) == expected
    assert encode_trajectory(framed.tokenizer, t, 64, load_input_template(str(path))) == expected
    plain = MetaRM(str(tiny_model_dir), **{**KWARGS, "max_length": 64})
    assert plain.encode(t) != expected and framed.score([t]) != plain.score([t])


def test_bad_trajectories_fail_naming_the_index_and_field(local: MetaRM):
    with pytest.raises(ValueError, match=r"trajectory 1: field 'completion'"):
        local.score([{"prompt": "q", "completion": "c"}, {"prompt": "q"}])
    with pytest.raises(TypeError, match="trajectory 0: expected a dict"):
        local.score(["not a trajectory"])
    with pytest.raises(FileNotFoundError, match="meta RM model folder not found"):
        MetaRM("./no/such/folder")
    with pytest.raises(ValueError, match="MetaRM device"):
        MetaRM("./no/such/folder", device="tpu")


def test_max_length_is_capped_at_the_model_context(tiny_model_dir):
    rm = MetaRM(str(tiny_model_dir), **{**KWARGS, "max_length": 10**6})
    assert rm.max_length == rm.model.config.max_position_embeddings


def test_a_checkpoint_without_pad_token_id_still_scores_batches(tiny_model_dir, tmp_path):
    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("pad_token_id", None)
    (folder / "config.json").write_text(json.dumps(config))
    rm = MetaRM(str(folder), **KWARGS)
    assert rm.model.config.pad_token_id == rm.tokenizer.pad_token_id
    long, short = toy_set()[0], {"prompt": "q", "completion": "c"}
    assert len(rm.score([long, short])) == 2


def test_an_actor_given_threads_uses_them_and_scores_alike(ray_cluster, tiny_model_dir):
    """Ray caps an actor at one OpenMP thread; num_threads lifts the cap, scores unchanged."""
    actor_cls = ray_cluster.remote(MetaRM)
    capped = actor_cls.remote(model=str(tiny_model_dir), **KWARGS)
    lifted = actor_cls.remote(model=str(tiny_model_dir), **KWARGS, num_threads=2)
    try:
        threads = [ray_cluster.get(a.__ray_call__.remote(lambda self: __import__("torch").get_num_threads()))
                   for a in (capped, lifted)]
        assert threads == [1, 2]
        scores = [ray_cluster.get(a.score.remote(toy_set())) for a in (capped, lifted)]
        assert scores[1] == pytest.approx(scores[0], abs=1e-5)
    finally:
        for actor in (capped, lifted):
            ray_cluster.kill(actor)
