"""A saved model's card (spct.json): written beside the weights, read back, and how it decides
each setting against the configuration."""

from __future__ import annotations

import json
import logging

import pytest

from spct.card import CardError, card_settings, read_card, resolve, write_card
from spct.config import GRM_DEFAULTS, ConfigError, ModelConfig, grm_settings, resolve_model
from spct.grm import load_template

SETTINGS = {"template": "compact", "single_template": "compact", "dtype": "float32", "max_model_len": 512,
            "max_new_tokens": 160}


@pytest.fixture
def grm(tmp_path):
    folder = tmp_path / "rl-final" / "model"
    folder.mkdir(parents=True)
    write_card(folder, "grm", SETTINGS, {"run": str(tmp_path), "phase": "rl", "step": 50, "seed": 0})
    return folder


def test_a_grm_card_records_its_settings_templates_scale_and_origin(grm):
    card = read_card(grm)
    assert card["role"] == "grm" and card["settings"] == SETTINGS
    assert card["produced_by"]["phase"] == "rl" and card["produced_by"]["step"] == 50
    assert card["score_scale"]["template"] == [1, 10]
    assert (grm / "spct_template.j2").read_text() == load_template("compact").source
    assert read_card(grm.parent) is None and read_card("Qwen/Qwen2.5-7B-Instruct") is None  # no card


def test_null_settings_come_from_the_card_and_a_set_one_wins_with_a_warning(grm, caplog):
    m = ModelConfig(path=str(grm))
    assert resolve_model(m) == dict.fromkeys(GRM_DEFAULTS, "checkpoint")
    assert (m.template, m.max_model_len, m.max_new_tokens, m.dtype) == ("compact", 512, 160, "float32")

    m = ModelConfig(path=str(grm), max_model_len=256, template="compact")
    with caplog.at_level(logging.WARNING, logger="spct"):
        sources = resolve_model(m)
    assert m.max_model_len == 256 and sources["max_model_len"] == "set" and sources["template"] == "set"
    assert len(caplog.records) == 1  # the same template set again is no disagreement
    assert "model.max_model_len=256 differs from what" in caplog.text and "(512)" in caplog.text


def test_a_model_without_a_card_takes_the_config_else_the_defaults_and_says_so(tmp_path, caplog):
    m = ModelConfig(path=str(tmp_path), template="compact")
    with caplog.at_level(logging.WARNING, logger="spct"):
        sources = resolve_model(m)
    assert m.template == "compact" and sources["template"] == "set"
    assert (m.max_model_len, m.single_template) == (GRM_DEFAULTS["max_model_len"], GRM_DEFAULTS["single_template"])
    assert "has no spct.json card" in caplog.text and "model.max_model_len=4096" in caplog.text
    assert "model.template" not in caplog.text  # it was set


def test_the_card_keeps_the_exact_template_text_it_was_trained_with(tmp_path):
    own = tmp_path / "mine.j2"
    own.write_text(load_template("compact").source)  # a file template, for now the same text
    folder = tmp_path / "m"
    folder.mkdir()
    write_card(folder, "grm", {**SETTINGS, "template": str(own)}, {})
    assert card_settings(read_card(folder), folder)["template"] == str(own)  # still there, same text
    own.write_text("{#- spct: low=1 high=10 -#}\nJudge {{ question }}: {{ responses | join(' / ') }}")
    copy = card_settings(read_card(folder), folder)["template"]
    assert copy == str((folder / "spct_template.j2").resolve())  # edited since: the copy it was trained with
    assert load_template(copy).source == load_template("compact").source


def test_an_rft_teacher_or_policy_grm_is_served_with_its_own_settings(grm):
    run = ModelConfig(tiny_preset="demo", **{**SETTINGS, "max_new_tokens": 64, "template": "default"})
    served = grm_settings(str(grm), run)
    assert (served.path, served.template, served.max_new_tokens) == (str(grm), "compact", 160)
    hub = grm_settings("org/grm", run)  # no card: the run's own settings
    assert (hub.template, hub.max_new_tokens, hub.tiny_preset) == ("default", 64, None)


def test_a_meta_rm_carries_its_input_template_and_is_scored_through_it(tmp_path, caplog):
    """meta_rm.input_template travels in the saved meta RM: a later scorer (evaluate, serve, a
    policy run) frames trajectories as it was trained to read them, even after the file moved;
    one set explicitly wins with a warning; a template that hides the completion is refused."""
    from spct.config import MetaRMRef, resolve_meta_rm

    own = tmp_path / "framing.j2"
    own.write_text("Query and responses:\n{{ prompt }}\nVerdict:\n{{ completion }}\nCorrect?")
    folder = tmp_path / "meta_rm-final" / "model"
    folder.mkdir(parents=True)
    write_card(folder, "meta_rm", {"dtype": "float32", "max_length": 512, "input_template": str(own)}, {})
    own.unlink()
    ref = MetaRMRef(path=str(folder))
    resolve_meta_rm(ref, "bfloat16")
    assert (ref.dtype, ref.max_length) == ("float32", 512)
    assert ref.input_template == str((folder / "spct_meta_rm_input.j2").resolve())
    assert "Verdict:" in (folder / "spct_meta_rm_input.j2").read_text()

    plain = tmp_path / "m2"
    plain.mkdir()
    write_card(plain, "meta_rm", {"dtype": "float32", "max_length": 512, "input_template": None}, {})
    ref = MetaRMRef(path=str(plain))
    resolve_meta_rm(ref, "bfloat16")
    assert ref.input_template is None and not (plain / "spct_meta_rm_input.j2").exists()

    other = tmp_path / "other.j2"
    other.write_text("{{ prompt }} => {{ completion }}")
    ref = MetaRMRef(path=str(folder), input_template=str(other))
    with caplog.at_level(logging.WARNING, logger="spct"):
        resolve_meta_rm(ref, "bfloat16")
    assert ref.input_template == str(other) and "meta_rm.input_template=" in caplog.text

    other.write_text("{{ prompt }} only")
    with pytest.raises(ConfigError, match=r"meta_rm.input_template: .*other.j2: .*leaves out completion"):
        resolve_meta_rm(MetaRMRef(path=str(plain), input_template=str(other)), "bfloat16")
    other.write_text("{{ prompt }} {{ completion }} {{ scores }}")
    with pytest.raises(ConfigError, match=r"meta_rm.input_template: .*'scores' is undefined"):
        resolve_meta_rm(MetaRMRef(path=str(plain), input_template=str(other)), "bfloat16")


def test_a_damaged_card_is_named(tmp_path):
    (tmp_path / "spct.json").write_text("{not json")
    with pytest.raises(CardError, match="spct.json: not a readable spct model card"):
        read_card(tmp_path)
    (tmp_path / "spct.json").write_text(json.dumps({"role": "judge", "settings": {}}))
    with pytest.raises(CardError, match="field 'role'"):
        read_card(tmp_path)
    with pytest.raises(ConfigError, match="model.path: .*field 'role'"):
        resolve_model(ModelConfig(path=str(tmp_path)))


def test_resolve_reports_each_source():
    values, sources, warnings = resolve({"a": 1, "b": None}, None, {"a": 0, "b": 2}, "x.")
    assert values == {"a": 1, "b": 2} and sources == {"a": "set", "b": "default"} and warnings == []
