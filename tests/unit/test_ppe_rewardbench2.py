"""PPE Preference, PPE Correctness and RewardBench 2: their layouts read into items, and each
benchmark's score computed twice: by spct's route (loader -> items -> GRM scores voted in the
item's order -> the benchmark's rule) and straight from the raw rows by the benchmark's own
definition, on the same per-response scores."""

from __future__ import annotations

import hashlib
import math

import layouts
import numpy as np
import pytest

from spct.data import load_items
from spct.data.formats import detect_format
from spct.evaluate.tables import summary_markdown
from spct.item import DataError
from spct.scaling import Row, judge
from spct.scoring import score_benchmark


def grm_score(prompt: str, response: str) -> int:
    """A made-up GRM score in 1..4 (ties are common), the same whichever route asks."""
    return int(hashlib.sha256(f"{prompt}|{response}".encode()).hexdigest(), 16) % 4 + 1


def spct_score(name: str, items) -> dict:
    outcomes = [judge([[grm_score(it.conversation[-1]["content"], r) for r in it.responses]], it.rewards)
                for it in items]
    return score_benchmark(name, items, outcomes)


# ------------------------------------------------------------------------------------- loaders
def test_ppe_preference_layout_gives_pairs_and_leaves_out_human_ties(tmp_path):
    rows = layouts.ppe_preference_rows(20)
    items = load_items(str(layouts.ppe_preference(tmp_path / "ppe")), split="test")
    assert items.format == "ppe_preference" == detect_format(rows[0])
    kept = [r for r in rows if r["winner"] in ("model_a", "model_b")]
    assert len(items) == len(kept) and sum(items.dropped.values()) == len(rows) - len(kept)
    for it, r in zip(items, kept, strict=True):
        assert it.id == r["question_id"] and it.responses == [r["response_1"], r["response_2"]]
        assert it.rewards == ([1.0, 0.0] if r["winner"] == "model_a" else [0.0, 1.0])
        assert it.meta["hard_prompt"] == r["hard_prompt"] and it.meta["language"] == r["language"]


def test_ppe_preference_names_a_bad_winner(tmp_path):
    rows = layouts.ppe_preference_rows(2)
    rows[1]["winner"] = "model_c"
    path = tmp_path / "ppe.jsonl"
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"ppe\.jsonl, line 2: field 'winner'.*model_c"):
        load_items(path)


def test_ppe_correctness_sets_give_one_item_per_sampled_conflict_pair(tmp_path):
    root = layouts.ppe_correctness(tmp_path / "ppe", n=3)
    for name, key in (("MMLU-Pro", "mmlu_pro"), ("MATH", "math"), ("GPQA", "gpqa"), ("IFEval", "ifeval"),
                      ("MBPP-Plus", "mbpp_plus")):
        rows = layouts.ppe_correctness_rows(name, 3)
        items = load_items(str(root / f"PPE-{name}-Best-of-K"))
        assert items.format == "ppe_correctness"
        pairs = [(r, p) for r in rows for p in r["sampled_conflict_pairs"]]
        assert len(items) == len(pairs)
        for it, (r, (i, j)) in zip(items, pairs, strict=True):
            assert it.subset == key and it.meta["pair"] == [i, j]  # the pair's own order
            assert it.responses == [r[f"response_{i + 1}"], r[f"response_{j + 1}"]]
            assert it.rewards == [float(r["scores"][i]), float(r["scores"][j])]


@pytest.mark.parametrize("pair, message", [([0, 40], r"indices in 0\.\.7"), ([1, 3], "scores differ"),
                                           ("01", r"\[i, j\]")])
def test_ppe_correctness_names_a_bad_pair(tmp_path, pair, message):
    import json

    row = layouts.ppe_correctness_rows("MATH", 1)[0]
    row["scores"] = [True, False, False, False, True, True, True, True]
    row["sampled_conflict_pairs"] = [[0, 1], pair]
    path = tmp_path / "math.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"field 'sampled_conflict_pairs\[1\]'.*{message}"):
        load_items(path)


def test_rewardbench2_layout_judges_all_completions_together(tmp_path):
    rows = layouts.rewardbench2_rows(2, 2)
    items = load_items(str(layouts.rewardbench2(tmp_path / "rb2")), split="test")
    assert items.format == "rewardbench2" == detect_format(rows[0])
    assert len(items) == len(rows)
    for it, r in zip(items, rows, strict=True):
        assert it.responses == r["chosen"] + r["rejected"] and it.subset == r["subset"]
        assert it.rewards == [1.0] * r["num_correct"] + [0.0] * r["num_incorrect"]
    tied = next(it for it in items if it.id == "tied:0")
    assert tied.meta == {"several_best": True, "group": "0"}


# ---------------------------------------------------------------- scores, computed twice
def test_ppe_preference_score_equals_the_accuracy_over_non_tied_human_votes(tmp_path):
    rows = layouts.ppe_preference_rows(40)
    items = load_items(str(layouts.ppe_preference(tmp_path / "ppe", 40)), split="test")
    credit = []
    for r in rows:
        if r["winner"] not in ("model_a", "model_b"):
            continue
        s1, s2 = grm_score(r["prompt"], r["response_1"]), grm_score(r["prompt"], r["response_2"])
        preferred = s1 > s2 if r["winner"] == "model_a" else s2 > s1
        credit.append(0.5 if s1 == s2 else float(preferred))
    got = spct_score("ppe_preference", items)
    assert got["score"] == pytest.approx(sum(credit) / len(credit))
    hard = [c for r, c in zip([r for r in rows if r["winner"] in ("model_a", "model_b")], credit, strict=True)
            if r["hard_prompt"]]
    assert got["category/hard_prompt"] == pytest.approx(sum(hard) / len(hard))


def test_ppe_correctness_score_is_the_mean_over_sets_of_conflict_pair_accuracy(tmp_path):
    root = layouts.ppe_correctness(tmp_path / "ppe", n=6)
    from spct.config import DataConfig
    from spct.evaluate.command import resolve_benchmark

    label, rule, items = resolve_benchmark(f"ppe_correctness:{root}", DataConfig(), 0)
    assert (label, rule) == ("ppe_correctness", "ppe_correctness")
    per_set = []
    for name in layouts.PPE_SET_COLUMNS:
        credit = []
        for r in layouts.ppe_correctness_rows(name, 6):
            for i, j in r["sampled_conflict_pairs"]:
                si, sj = grm_score(r["prompt"], r[f"response_{i + 1}"]), grm_score(r["prompt"], r[f"response_{j + 1}"])
                right, wrong = (si, sj) if r["scores"][i] else (sj, si)
                credit.append(0.5 if si == sj else float(right > wrong))
        per_set.append(sum(credit) / len(credit))
    got = spct_score("ppe_correctness", items)
    assert len(per_set) == 5 and got["score"] == pytest.approx(sum(per_set) / 5)


def rewardbench2_official(rows: list[dict]) -> float:
    """RewardBench 2 from raw rows, following rewardbench.utils: reroll_and_score_dataset for
    five subsets, process_single_model for Ties, the unweighted mean of the six."""
    subsets: dict[str, list[float]] = {}
    ties = {"ref": {}, "tied": {}}
    for r in rows:
        scores = [grm_score(r["prompt"], c) for c in r["chosen"] + r["rejected"]]
        if r["subset"] != "Ties":
            top = max(scores)
            subsets.setdefault(r["subset"], []).append(1 / scores.count(top) if scores[0] == top else 0.0)
            continue
        kind, pid = r["id"].split(":")
        correct, incorrect = scores[:r["num_correct"]], scores[r["num_correct"]:]
        diff_corr = max(correct) - min(correct) if len(correct) >= 2 else None
        corr_inc = min(correct) - max(incorrect)
        ties[kind][pid] = (corr_inc > 0, corr_inc, diff_corr)
    result = {s: float(np.mean(v)) for s, v in subsets.items()}
    ref_acc = np.mean([v[0] for v in ties["ref"].values()])
    tied_acc = np.mean([v[0] for v in ties["tied"].values()])
    ids = [p for p in ties["tied"] if p in ties["ref"]]
    corr_inc_ref = np.array([ties["ref"][p][1] for p in ids], dtype=float)
    corr_inc_tied = np.array([ties["tied"][p][1] for p in ids], dtype=float)
    diff_corr_tied = np.array([ties["tied"][p][2] for p in ids], dtype=float)
    cp = np.mean(corr_inc_tied > diff_corr_tied)
    cp_hard = np.mean(np.minimum(corr_inc_ref, corr_inc_tied) > diff_corr_tied)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.mean(np.nan_to_num(np.tanh(np.minimum(corr_inc_ref, corr_inc_tied) / diff_corr_tied - 1), nan=0))
    result["Ties"] = 0.30 * tied_acc + 0.30 * ref_acc + 0.20 * cp + 0.20 * cp_hard + 0.01 * margin
    return float(np.mean(list(result.values())))


@pytest.mark.parametrize("per_subset, ties", [(2, 2), (5, 7), (9, 12)])
def test_rewardbench2_score_equals_its_own_definition(tmp_path, per_subset, ties):
    rows = layouts.rewardbench2_rows(per_subset, ties)
    items = load_items(str(layouts.rewardbench2(tmp_path / "rb2", per_subset, ties)), split="test")
    got = spct_score("rewardbench2", items)
    assert math.isfinite(got["score"]) and got["score"] == pytest.approx(rewardbench2_official(rows))
    assert set(k for k in got if k.startswith("subset/")) == {f"subset/{s}" for s in
                                                              ("Factuality", "Precise IF", "Math", "Safety", "Focus",
                                                               "Ties")}


def test_rewardbench2_ties_without_their_ref_twins_are_left_out_and_counted(tmp_path):
    import json

    rows = [r for r in layouts.rewardbench2_rows(1, 2) if not r["id"].startswith("ref:")]
    path = tmp_path / "rb2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = spct_score("rewardbench2", load_items(path))
    assert got["ties_unpaired"] == 2 and "subset/Ties" not in got
    assert got["score"] == pytest.approx(sum(got[f"subset/{s}"] for s in layouts.RB2_SUBSETS) / 5)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["subset"] == "Ties"))
    with pytest.raises(ValueError, match="only Ties items"):
        spct_score("rewardbench2", load_items(path))


# ------------------------------------------------------------------------------- the Overall
def _rows(acc: float) -> list[Row]:
    return [Row("Greedy", 1, acc, acc, acc, 10), Row("Voting", 2, acc + 0.1, acc, acc, 10)]


def test_the_papers_overall_appears_only_when_its_four_benchmarks_ran():
    four = {"rewardbench": 0.8, "ppe_preference": 0.6, "ppe_correctness": 0.5, "rmb": 0.7}
    tables = {name: _rows(a) for name, a in four.items()} | {"judgebench": _rows(0.2)}
    md = summary_markdown(tables, {name: name for name in tables})
    greedy = next(line for line in md.splitlines() if line.startswith("| Greedy"))
    assert "Overall (paper)" in md and "mean of 5" in md
    assert greedy.rstrip(" |").split("|")[-1].strip() == f"{100 * sum(four.values()) / 4:.1f}"  # 65.0
    assert greedy.split("|")[-3].strip() == f"{100 * (sum(four.values()) + 0.2) / 5:.1f}"
    del tables["ppe_correctness"]
    md = summary_markdown(tables, {name: name for name in tables})
    assert "Overall" not in md and "mean of 4" in md
    # Two files scored by RMB's rule: which one is the paper's RMB is not known, so no Overall.
    tables |= {"ppe_correctness": _rows(0.5), "rmb_bon": _rows(0.4)}
    rules = {name: name for name in tables} | {"rmb_bon": "rmb"}
    assert "Overall" not in summary_markdown(tables, rules)


def test_a_file_in_a_benchmarks_layout_is_scored_by_its_rule(tmp_path):
    """`spct.evaluate FILE` and the eval phase of `spct.train` on such a file pick the rule from
    the detected format; other layouts get plain accuracy."""
    from spct.evaluate.tables import judged, rule_of

    items = load_items(str(layouts.rewardbench2(tmp_path / "rb2", 1, 1)), split="test")
    assert rule_of(items.format) == "rewardbench2" and rule_of("pairwise") == rule_of(None) == "generic"
    assert rule_of("rmb_bon") == "rmb" and rule_of("ppe_correctness") == "ppe_correctness"
    pairs = load_items(str(layouts.ppe_preference(tmp_path / "ppe", 5)), split="test")
    assert judged("generic", pairs) == list(pairs) and len(judged("judgebench", pairs)) == 2 * len(pairs)


def test_ppe_correctness_items_carry_each_sets_ground_truth_as_reference(tmp_path):
    """The paper's Table 9 judges PPE Correctness with reference answers: each set's own."""
    root = layouts.ppe_correctness(tmp_path / "ppe", n=1)
    refs = {name: {it.meta.get("reference") for it in load_items(str(root / f"PPE-{name}-Best-of-K"))}
            for name in layouts.PPE_SET_COLUMNS}
    assert refs == {"MMLU-Pro": {"B. b"}, "MATH": {"0"}, "GPQA": {"y"}, "IFEval": {None},
                    "MBPP-Plus": {"def f(): pass"}}


def test_a_reference_is_shown_only_when_asked_and_leaves_other_prompts_unchanged():
    from spct.grm import build_prompt
    from spct.item import Item

    with_ref = Item([{"role": "user", "content": "What is 6 * 7?"}], ["42", "41"], [1.0, 0.0], meta={"reference": "42"})
    plain = Item(with_ref.conversation, with_ref.responses, with_ref.rewards)
    for template in ("default", "single", "compact"):
        shown = build_prompt(with_ref, [1, 0], template=template, with_reference=True)
        assert "42" in shown.replace("Response 1", "").split("41")[0]  # the reference, before the responses
        assert build_prompt(with_ref, [1, 0], template=template) == build_prompt(plain, [1, 0], template=template)
        assert build_prompt(plain, [1, 0], template=template, with_reference=True) == \
            build_prompt(plain, [1, 0], template=template)


def test_the_reference_block_leaves_the_tiny_tokenizers_corpus_as_it_was():
    """The tiny models' tokenizer learns from the scoring templates' files; the optional
    reference block is left out of that corpus (and the judge baseline's template with it), so
    the demo's tokenizer (and every number measured with it) is the one from before."""
    from spct.grm.template import TEMPLATE_DIR
    from spct.models import default_corpus

    files = [(TEMPLATE_DIR / f"{name}.j2").read_text() for name in ("compact", "default", "single")]
    corpus = default_corpus(0, n_items=1)[: len(files)]
    assert all("{% if reference %}" in f for f in files)
    assert not any("reference" in t for t in corpus)
    assert [len(f) - len(t) for f, t in zip(files, corpus, strict=True)] == [
        len("{% if reference %}\nRef: {{ reference }}\n{% endif %}\n"),
        *[len("{% if reference %}\n\nReference answer (correct; judge the responses against it):\n{{ reference }}\n"
              "{% endif %}\n")] * 2]
