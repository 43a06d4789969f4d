"""Prompt templates and build_prompt: what the GRM is shown, in which order, with which hint."""

from __future__ import annotations

import os
import re

import pytest

from spct.grm import (
    BUILTIN_TEMPLATES,
    Template,
    build_prompt,
    format_scores,
    is_correct,
    load_template,
    map_back,
    parse_scores,
)
from spct.item import DataError, Item

ITEM = Item(
    conversation=[{"role": "user", "content": "Name a prime number above 10."}],
    responses=["Eleven.", "Nine.", "Fifteen."],
    rewards=[1.0, 0.0, 0.2],
    id="q1",
)

WRAP = re.compile(r"\[The Begin of Response (\d+)\]\n(.*?)\n\[The End of Response (\d+)\]", re.S)


def shown(prompt: str) -> list[str]:
    """Responses in the order the prompt shows them, checking that wrapper numbers are 1..n."""
    found = WRAP.findall(prompt)
    assert [int(a) for a, _, _ in found] == list(range(1, len(found) + 1))
    assert all(a == b for a, _, b in found)
    return [text for _, text, _ in found]


@pytest.mark.parametrize("name", ["default", "single"])
@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [1, 2, 0]])
def test_responses_are_wrapped_in_prompt_order(name, order):
    prompt = build_prompt(ITEM, order, template=name)
    assert shown(prompt) == [ITEM.responses[o] for o in order]
    assert "Name a prime number above 10." in prompt
    assert prompt == prompt.rstrip()


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [1, 2, 0]])
def test_compact_template_lists_responses_in_prompt_order(order):
    lines = build_prompt(ITEM, order, template="compact").splitlines()
    assert lines[-3:] == [f"R{p + 1}: {ITEM.responses[o]}" for p, o in enumerate(order)]


def test_builtin_ranges_come_from_the_template_files():
    assert (load_template("default").low, load_template("default").high) == (1, 10)
    assert (load_template("single").low, load_template("single").high) == (0, 1)
    assert (load_template("compact").low, load_template("compact").high) == (1, 10)
    for name in BUILTIN_TEMPLATES:
        assert load_template(name).source.startswith("{#- spct: low=" if name != "judge" else "{#- spct: output=choice")
    assert [name for name in BUILTIN_TEMPLATES if load_template(name).choice] == ["judge"]


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [1, 2, 0]])
def test_a_judge_pick_reads_as_a_vote_for_the_picked_response_in_item_order(order):
    """The LLM-as-a-judge template: one pick per sample, by prompt position; read back it is
    1 for the response shown there and 0 for the others, in the item's own order, so Voting@k
    over picks is a majority vote."""
    from spct.grm.trajectory import Shown, read

    item = Item(conversation=[{"role": "user", "content": "q"}], responses=["a", "b", "c"], rewards=[1.0, 0.0, 0.0])
    template = load_template("judge")
    prompt = build_prompt(item, order, template=template)
    assert "an integer from 1 to 3" in prompt and prompt.index("[The Begin of Response 3]") < prompt.index("Best:")
    shown = Shown(item, order, prompt, (template.low, template.high), choice=template.choice)
    texts = ["Best: \\boxed{2}", "\\boxed{4}", "no pick", "\\boxed{1, 2}"]
    got = [t.scores for t in read(shown, {"samples": [{"text": x} for x in texts]})]
    picked = [0, 0, 0]
    picked[order[1]] = 1
    assert got == [picked, None, None, None]


@pytest.mark.parametrize("header, error", [
    ("{#- spct: output=choice low=1 -#}", "a choice template has no score range"),
    ("{#- spct: output=pick -#}", "output must be one of scores, choice, got 'pick'"),
])
def test_a_bad_output_header_names_the_file_and_line(header, error):
    with pytest.raises(ValueError, match=f"mine.j2:1: .*{error}"):
        Template.from_source(header + "\n{{ question }}", "mine.j2")


def test_loaded_templates_are_cached():
    assert load_template("default") is load_template("default")


def test_default_template_layout():
    prompt = build_prompt(ITEM, [0, 1, 2])
    for name in ("Instruction Adherence", "Usefulness", "Level of Detail", "Relevance"):
        assert name in prompt
    for band in ("9-10", "6-8", "3-5", "1-2"):
        assert band in prompt
    assert "impartial judge" in prompt
    assert "Weight" in prompt and "step by step" in prompt and "strict" in prompt
    lines = prompt.splitlines()
    fmt = [i for i, line in enumerate(lines) if line.startswith("Specific Criteria:")]
    assert len(fmt) == 1
    assert lines[fmt[0] + 1].startswith("Analysis:")
    assert lines[fmt[0] + 2] == "Scores: \\boxed{s1, s2, s3}"
    assert prompt.index("[The End of Response 3]") < fmt[0] + len(prompt)  # responses first
    assert prompt.index("[The End of Response 3]") < prompt.index("Specific Criteria:")


def test_default_template_single_response():
    item = {"conversation": ITEM.conversation, "responses": ["Eleven."]}
    prompt = build_prompt(item, [0])
    assert shown(prompt) == ["Eleven."]
    assert "Scores: \\boxed{s1}" in prompt
    assert "from 1 to 10" in prompt
    assert "Response 2" not in prompt


def test_single_template_asks_for_zero_or_one():
    prompt = build_prompt(
        {"conversation": ITEM.conversation, "responses": ["Eleven."]}, [0], template="single"
    )
    assert "Scores: \\boxed{s1}" in prompt
    assert "1 if the response is correct and 0 if it is not" in prompt


def test_multi_turn_conversation_is_role_labelled():
    item = {
        "conversation": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And doubled?"},
        ],
        "responses": ["8.", "6."],
    }
    prompt = build_prompt(item, [0, 1])
    assert "System: Answer briefly.\nUser: What is 2+2?\nAssistant: 4.\n" in prompt
    assert "User query:\nAnd doubled?\n" in prompt
    assert prompt.count("And doubled?") == 1


def test_compact_template_is_minimal_and_exact():
    item = {
        "conversation": [{"role": "user", "content": "Q: 37+48=?"}],
        "responses": ["085", "084"],
    }
    assert build_prompt(item, [1, 0], template="compact") == "Q: 37+48=?\nR1: 084\nR2: 085"
    prompt = build_prompt(ITEM, [0, 1, 2], template="compact")
    assert all(line == line.rstrip() for line in prompt.splitlines())


def test_hint_true_points_at_the_best_response_after_reordering():
    for order, j in (([0, 1, 2], 1), ([1, 0, 2], 2), ([1, 2, 0], 3)):
        prompt = build_prompt(ITEM, order, hint=True)
        assert prompt.endswith(f"\nThe best response is: Response {j}")
        assert shown(prompt)[j - 1] == "Eleven."


def test_hint_int_and_none():
    assert (
        build_prompt(ITEM, [0, 1, 2], hint=2).splitlines()[-1] == "The best response is: Response 2"
    )
    plain = build_prompt(ITEM, [0, 1, 2])
    assert "The best response is" not in plain
    assert build_prompt(ITEM, [0, 1, 2], hint=False) == plain
    assert build_prompt(ITEM, [0, 1, 2], hint=1).startswith(plain)


@pytest.mark.parametrize("hint", [0, 4, -1, 1.5, "1"])
def test_bad_hint(hint):
    with pytest.raises(ValueError, match="hint"):
        build_prompt(ITEM, [0, 1, 2], hint=hint)


def test_hint_true_needs_rewards():
    item = {"conversation": ITEM.conversation, "responses": ITEM.responses}
    build_prompt(item, [0, 1, 2])
    with pytest.raises(DataError, match="rewards"):
        build_prompt(item, [0, 1, 2], hint=True)


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ([0, 1], "2 entries for 3"),
        ([0, 1, 1], "repeats"),
        ([0, 1, 3], "out of range"),
        ([0, 1, "2"], "integer"),
    ],
)
def test_bad_order(order, message):
    with pytest.raises(ValueError, match=message):
        build_prompt(ITEM, order)


def test_dict_and_item_give_the_same_prompt():
    assert build_prompt(ITEM.to_dict(), [2, 1, 0], hint=True) == build_prompt(
        ITEM, [2, 1, 0], hint=True
    )


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"responses": ["a"]}, "conversation"),
        ({"conversation": [{"role": "user"}], "responses": ["a"]}, r"conversation\[0\]\.content"),
        ({"conversation": [{"content": "q"}], "responses": ["a"]}, r"conversation\[0\]\.role"),
        ({"conversation": [{"role": "user", "content": "q"}], "responses": []}, "responses"),
        (
            {"conversation": [{"role": "user", "content": "q"}], "responses": ["a", 3]},
            r"responses\[1\]",
        ),
    ],
)
def test_bad_items_name_the_field(item, field):
    with pytest.raises(DataError, match=field):
        build_prompt(item, list(range(len(item["responses"]))))


def test_response_text_is_not_evaluated_as_jinja():
    item = {
        "conversation": [{"role": "user", "content": "{{ n }}"}],
        "responses": ["{% raw %}{{ 7*7 }}"],
    }
    prompt = build_prompt(item, [0], template="compact")
    assert prompt == "{{ n }}\nR1: {% raw %}{{ 7*7 }}"


def test_user_template_from_a_path(tmp_path):
    path = tmp_path / "mine.j2"
    path.write_text(
        "{#- spct: low=0 high=5 -#}\n"
        "Q={{ question }} n={{ n }} range={{ low }}..{{ high }}\n"
        "{% for r in responses %}<{{ loop.index }}:{{ r }}>{% endfor %}\n"
    )
    tmpl = load_template(path)
    assert (tmpl.low, tmpl.high, tmpl.name) == (0, 5, str(path))
    assert load_template(str(path)) is tmpl
    prompt = build_prompt(ITEM, [2, 0, 1], hint=True, template=str(path))
    assert prompt == (
        "Q=Name a prime number above 10. n=3 range=0..5\n<1:Fifteen.><2:Eleven.><3:Nine.>\n\n"
        "The best response is: Response 2"
    )
    assert build_prompt(ITEM, [2, 0, 1], template=tmpl) == prompt.rsplit("\n\n", 1)[0]


def test_an_edited_template_file_is_reloaded(tmp_path):
    path = tmp_path / "t.j2"
    path.write_text("A {{ n }}")
    assert build_prompt(ITEM, [0, 1, 2], template=path) == "A 3"
    path.write_text("{# spct: low=2 high=3 #}B {{ n }}")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert build_prompt(ITEM, [0, 1, 2], template=path) == "B 3"
    assert (load_template(path).low, load_template(path).high) == (2, 3)


def test_template_without_header_defaults_to_one_to_ten():
    tmpl = Template.from_source("{{ question }}", name="inline")
    assert (tmpl.low, tmpl.high) == (1, 10)
    assert build_prompt(ITEM, [0, 1, 2], template=tmpl) == "Name a prime number above 10."


def test_missing_template_names_the_path_and_the_builtins(tmp_path):
    missing = tmp_path / "nope.j2"
    with pytest.raises(FileNotFoundError) as err:
        load_template(missing)
    assert str(missing) in str(err.value)
    assert all(name in str(err.value) for name in BUILTIN_TEMPLATES)
    with pytest.raises(FileNotFoundError, match="default, single, compact"):
        load_template("defualt")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{#- spct: low=5 high=5 -#}\nx", "low \\(5\\) must be below high \\(5\\)"),
        ("{#- spct: low=1 top=9 -#}\nx", "unknown setting 'top'"),
        ("{#- spct: low=one -#}\nx", "low must be an integer"),
        ("{#- spct: low=1, high=3 -#}\nx", "low must be an integer"),
        ("{#- spct: range 1 to 10 -#}\nx", "expected 'low=<int> high=<int>'"),
    ],
)
def test_bad_header(tmp_path, source, message):
    path = tmp_path / "bad.j2"
    path.write_text(source)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}:1: .*{message}"):
        load_template(path)


def test_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.j2"
    path.write_text("line one\n{% for r in responses %}\n{{ r }}\n")
    with pytest.raises(ValueError, match=re.escape(str(path)) + r":\d+: template syntax error"):
        load_template(path)


def test_unknown_variable_fails_loudly(tmp_path):
    path = tmp_path / "typo.j2"
    path.write_text("{{ reponses }}")
    with pytest.raises(ValueError, match="reponses"):
        build_prompt(ITEM, [0, 1, 2], template=path)


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0]])
def test_label_moves_with_the_shuffle(order):
    """A judge that scores the shown responses correctly is correct in the original order."""
    prompt = build_prompt(ITEM, order)
    quality = {"Eleven.": 9, "Fifteen.": 4, "Nine.": 2}
    completion = "Analysis: ...\nScores: " + format_scores([quality[r] for r in shown(prompt)])
    scores = map_back(parse_scores(completion, ITEM.n), order)
    assert scores == [9, 2, 4]
    assert is_correct(scores, ITEM.rewards)
