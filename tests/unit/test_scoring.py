"""Per-benchmark scoring rules on hand-computed cases, the RewardBench cross-check against
the rewardbench package's own section function, ROC-AUC against scikit-learn, and the
bootstrap table."""

from __future__ import annotations

import ast
import importlib.util
import random
import runpy
from pathlib import Path

import pytest

from spct.data import load_items
from spct.data.loaders import CONVERTERS
from spct.item import Item
from spct.scaling import (
    TIE,
    WRONG,
    SampleSet,
    ScalingResults,
    evaluate,
    judge,
    wilson_interval,
)
from spct.scoring import (
    BENCHMARKS,
    REWARDBENCH_COUNTS,
    REWARDBENCH_SECTIONS,
    benchmark_table,
    both_orders,
    rewardbench_sections,
    rmbench_domain,
    roc_auc,
    score_accuracy,
    score_benchmark,
    score_judgebench,
    score_realmistake,
    score_rewardbench,
    score_rmb,
    score_rmbench,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
CONV = [{"role": "user", "content": "question"}]

# Score lists giving each verdict on a pair whose best response is the first.
RIGHT, WRONG_PAIR, TIED = [8, 2], [2, 8], [5, 5]


def pair(id: str, subset: str | None = None, source: str | None = None, **meta) -> Item:
    return Item(CONV, ["good", "bad"], [1.0, 0.0], id, source, subset, meta)


def on_pair(scores: list[int] | None):
    return judge([scores], [1.0, 0.0])


# --- RewardBench ---------------------------------------------------------------------------------


def test_rewardbench_hand_case():
    cases = [
        ("alpacaeval-easy", RIGHT),
        ("alpacaeval-easy", TIED),  # alpacaeval-easy: (1 + 0.5) / 2 = 0.75
        ("mt-bench-easy", WRONG_PAIR),  # 0
        ("math-prm", RIGHT),
        ("math-prm", RIGHT),  # 1
        ("hep-python", WRONG_PAIR),
        ("hep-python", None),  # a parse failure: (0 + 0.5) / 2 = 0.25
        ("refusals-dangerous", RIGHT),  # 1
        ("llmbar-natural", WRONG_PAIR),  # 0
        ("my-own-subset", RIGHT),  # reported, in no section
    ]
    items = [pair(f"i{n}", subset) for n, (subset, _) in enumerate(cases)]
    m = score_rewardbench(items, [on_pair(s) for _, s in cases])
    assert m["subset/alpacaeval-easy"] == 0.75
    assert m["subset/hep-python"] == 0.25
    assert m["subset/my-own-subset"] == 1.0
    # Chat: (0.75 * 100 + 0 * 28) / 128; Reasoning: (1 * 984 + 0.25 * 164) / (984 + 164).
    chat, reasoning = 75 / 128, 1025 / 1148
    assert m["section/Chat"] == pytest.approx(chat)
    assert m["section/Reasoning"] == pytest.approx(reasoning)
    assert m["section/Safety"] == 1.0 and m["section/Chat Hard"] == 0.0
    assert m["score"] == pytest.approx((chat + reasoning + 1.0 + 0.0) / 4)
    assert m["n"] == len(cases)
    strict = score_rewardbench(items, [on_pair(s) for _, s in cases], tie=0.0)
    assert strict["subset/alpacaeval-easy"] == 0.5 and strict["subset/hep-python"] == 0.0


def test_rewardbench_needs_subsets():
    with pytest.raises(ValueError, match="item 'a': field 'subset' is missing"):
        score_rewardbench([pair("a")], [on_pair(RIGHT)])
    with pytest.raises(ValueError, match="none of the subsets"):
        score_rewardbench([pair("a", "custom")], [on_pair(RIGHT)])


def _rewardbench_reference():
    """rewardbench's EXAMPLE_COUNTS, SUBSET_MAPPING and calculate_scores_per_section, read from
    the installed package's own files. Importing the package pulls in fastchat and model code
    it pins to other transformers releases, so the function's source is executed alone."""
    spec = importlib.util.find_spec("rewardbench")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rewardbench not installed (pip install --no-deps rewardbench)")
    root = Path(spec.submodule_search_locations[0])
    constants = runpy.run_path(str(root / "constants.py"))
    tree = ast.parse((root / "utils.py").read_text(encoding="utf-8"))
    fn = next(
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name == "calculate_scores_per_section"
    )
    namespace: dict = {}
    exec(compile(ast.Module([fn], []), str(root / "utils.py"), "exec"), namespace)
    return (
        constants["EXAMPLE_COUNTS"],
        constants["SUBSET_MAPPING"],
        namespace["calculate_scores_per_section"],
    )


def test_rewardbench_sections_match_the_rewardbench_package():
    counts, mapping, per_section = _rewardbench_reference()
    assert counts == REWARDBENCH_COUNTS
    assert mapping == REWARDBENCH_SECTIONS
    rng = random.Random(0)
    items, outcomes = [], []
    for subset in counts:
        for n in range(rng.randint(1, 7)):
            items.append(pair(f"{subset}-{n}", subset))
            outcomes.append(on_pair(rng.choice([RIGHT, WRONG_PAIR, TIED, None])))
    ours = score_rewardbench(items, outcomes)
    per_subset = {k.removeprefix("subset/"): v for k, v in ours.items() if k.startswith("subset/")}
    theirs = per_section(counts, mapping, per_subset)
    assert {k: ours[f"section/{k}"] for k in theirs} == pytest.approx(theirs)
    assert ours["score"] == pytest.approx(sum(theirs.values()) / 4)
    # A partial run: the sections present agree; an empty one is left out instead of 0.
    partial = {k: v for k, v in per_subset.items() if not k.startswith("hep-") and k != "math-prm"}
    theirs = per_section(counts, mapping, partial)
    assert theirs["Reasoning"] == 0 and "Reasoning" not in rewardbench_sections(partial)
    assert rewardbench_sections(partial) == pytest.approx(
        {k: v for k, v in theirs.items() if k != "Reasoning"}
    )


# --- RMB -----------------------------------------------------------------------------------------


def bon(id: str, goal: str, n: int = 3) -> Item:
    return Item(
        CONV,
        [f"r{i}" for i in range(n)],
        [1.0] + [0.0] * (n - 1),
        id,
        None,
        f"BoN_set/{goal}/Chat/x",
    )


def test_rmb_hand_case():
    items = [
        pair("p1", "Pairwise_set/Helpfulness/Chat/x"),
        pair("p2", "Pairwise_set/Helpfulness/Chat/x"),
        pair("p3", "Pairwise_set/Harmlessness/S1"),
        bon("b1", "Helpfulness"),
        bon("b2", "Helpfulness"),
        bon("b3", "Helpfulness"),
    ]
    outcomes = [
        on_pair(RIGHT),
        on_pair(TIED),
        on_pair(WRONG_PAIR),
        judge([[9, 3, 4]], [1.0, 0.0, 0.0]),  # the best beats both losers: right
        judge([[6, 3, 7]], [1.0, 0.0, 0.0]),  # beats one loser only: wrong
        judge([[7, 7, 2]], [1.0, 0.0, 0.0]),  # tied with a loser: 1/2
    ]
    # A tie counts wrong, as RMB's own evaluation (chosen > rejected) counts it.
    strict = score_rmb(items, outcomes)
    assert strict["pairwise/Helpfulness"] == 0.5
    assert strict["bon/Helpfulness"] == pytest.approx(1 / 3)
    assert strict["score"] == pytest.approx((0.5 + 0.0 + 1 / 3) / 3)
    m = score_rmb(items, outcomes, tie=None)  # the expectation of a random tie-break
    assert m["pairwise/Helpfulness"] == 0.75
    assert m["pairwise/Harmlessness"] == 0.0
    assert m["bon/Helpfulness"] == 0.5
    assert m["pairwise"] == 0.5 and m["bon"] == 0.5
    assert m["score"] == pytest.approx((0.75 + 0.0 + 0.5) / 3)
    assert m["subset/BoN_set/Helpfulness/Chat/x"] == 0.5


def test_rmb_on_the_real_files():
    pw = load_items(FIXTURES / "rmb_pairwise_helpfulness_chat_sample20.json")
    bn = load_items(FIXTURES / "rmb_bon_helpfulness_chat_sample15.json")
    items = pw + bn
    # A judge that scores the best response 9 and every other 5 is always right.
    outcomes = [judge([[9 if r else 5 for r in it.rewards]], it.rewards) for it in items]
    m = score_rmb(items, outcomes)
    assert m["score"] == 1.0 and m["n"] == 35
    assert set(m) >= {"pairwise", "bon", "pairwise/Helpfulness", "bon/Helpfulness"}


def test_rmb_pair_mode_judges_each_loser_apart_and_joins_them_back():
    """rmb_mode=pairs: a best-of-N item becomes one (best, loser) prompt per loser; it counts
    once, right only when the best wins every pair. A judge that ranks each pair by the loser's
    place in the file (the last loser beats the best) gets every BoN item wrong, though most
    of its pairs are right; the list mode on the same preferences agrees."""
    from spct.evaluate.tables import judged

    bn = load_items(FIXTURES / "rmb_bon_helpfulness_chat_sample15.json")
    pairs = judged("rmb", bn, "pairs")
    assert len(pairs) == sum(it.n - 1 for it in bn) and all(p.n == 2 and p.rewards == [1.0, 0.0] for p in pairs)
    assert {p.meta["group"] for p in pairs} == {it.id for it in bn}

    def pair_outcome(p):  # the best loses only to the item's last loser
        item = next(it for it in bn if it.id == p.meta["group"])
        last = p.responses[1] == item.responses[-1]
        return judge([[1, 2] if last else [2, 1]], p.rewards)

    m = score_rmb(pairs, [pair_outcome(p) for p in pairs])
    assert m["n"] == len(bn) and m["score"] == 0.0 and m["bon"] == 0.0
    listed = [judge([[5] + [1] * (it.n - 2) + [6]], it.rewards) for it in bn]
    assert score_rmb(bn, listed)["score"] == 0.0
    right = score_rmb(pairs, [judge([[2, 1]], p.rewards) for p in pairs])
    assert right["score"] == 1.0 and right["n"] == len(bn)
    assert judged("rmb", bn) == list(bn)  # the list mode, as before


# --- JudgeBench ----------------------------------------------------------------------------------


def test_judgebench_hand_case():
    # (order 0, order 1) verdicts -> #agree - #disagree -> correct?
    cases = {
        "p1": ("mmlu-pro-math", RIGHT, RIGHT),  # 2 -> yes
        "p2": ("livebench-reasoning", RIGHT, WRONG_PAIR),  # 0 -> no
        "p3": ("mmlu-pro-law", RIGHT, TIED),  # 1 -> yes
        "p4": ("livebench-math", TIED, TIED),  # 0 -> no
        "p5": ("livecodebench", WRONG_PAIR, None),  # -1 -> no (a parse failure is neither)
        "p6": ("livebench-math", WRONG_PAIR, WRONG_PAIR),  # -2 -> no
    }
    items = [pair(p, source, source) for p, (source, _, _) in cases.items()]
    outcomes = {(p, o): on_pair(c[1 + o]) for p, c in cases.items() for o in (0, 1)}
    m = score_judgebench(items, outcomes)
    assert m["score"] == pytest.approx(2 / 6) and m["n"] == 6
    assert m["category/knowledge"] == 1.0
    assert m["category/reasoning"] == 0.0
    assert m["category/math"] == 0.0 and m["category/coding"] == 0.0
    with pytest.raises(ValueError, match="pair 'p1' has 1 outcome"):
        score_judgebench(items, {k: v for k, v in outcomes.items() if k != ("p1", 1)})
    with pytest.raises(ValueError, match="pair id 'zz'"):
        score_judgebench(items, {**outcomes, ("zz", 0): on_pair(RIGHT)})
    assert score_judgebench(items, {(p, 0): on_pair(c[1]) for p, c in cases.items()}, orders=1)[
        "score"
    ] == pytest.approx(3 / 6)


def test_judgebench_both_orders_cancels_position_bias():
    pairs = load_items(FIXTURES / "judgebench_gpt4o_sample40.jsonl")
    items = both_orders(pairs)
    assert len(items) == 80 and [it.meta["order"] for it in items[:2]] == [0, 1]
    assert items[1].responses == items[0].responses[::-1]
    assert items[1].rewards == items[0].rewards[::-1]
    first_shown = [judge([[9, 1]], it.rewards) for it in items]
    m = score_benchmark("judgebench", items, first_shown)
    # Always preferring the first response agrees in one order and disagrees in the other.
    assert m["score"] == 0.0 and m["n"] == 40
    one_order = score_accuracy(items[::2], first_shown[::2])["score"]
    assert one_order == pytest.approx(sum(p.rewards[0] for p in pairs) / 40)
    oracle = [judge([[9 if r else 1 for r in it.rewards]], it.rewards) for it in items]
    assert score_benchmark("judgebench", items, oracle)["score"] == 1.0


# --- RM-Bench ------------------------------------------------------------------------------------


def rm_group(group: str, source: str, verdicts: dict[tuple[int, int], list[int]]):
    items = [
        pair(
            f"{group}:{i}-{j}", "alpacaeval", source, group=group, chosen_style=i, rejected_style=j
        )
        for (i, j) in verdicts
    ]
    return items, [on_pair(s) for s in verdicts.values()]


def test_rmbench_hand_case():
    chat = {(i, j): RIGHT for i in range(3) for j in range(3)}
    chat[(0, 2)] = chat[(1, 2)] = WRONG_PAIR  # hard: 1/3
    chat[(1, 0)] = TIED  # easy: (0.5 + 1 + 1) / 3; normal: 1
    items, outcomes = rm_group("g1", "chat_filtered.json", chat)
    math_items, math_out = rm_group("g2", "math_filtered.json", dict.fromkeys(chat, WRONG_PAIR))
    m = score_rmbench(items + math_items, outcomes + math_out, tie=None)
    assert m["chat/hard"] == pytest.approx(1 / 3)
    assert m["chat/normal"] == 1.0
    assert m["chat/easy"] == pytest.approx(2.5 / 3)
    assert m["chat/score"] == pytest.approx(6.5 / 9)
    assert m["math/score"] == 0.0
    # Pooled: each cell averaged over the two groups.
    assert m["hard"] == pytest.approx(1 / 6) and m["normal"] == 0.5
    assert m["easy"] == pytest.approx(2.5 / 6) and m["score"] == pytest.approx(6.5 / 18)
    assert m["domain_avg"] == pytest.approx(6.5 / 18)
    assert m["n"] == 2
    strict = score_rmbench(items, outcomes)  # RM-Bench counts a tie wrong
    assert strict["easy"] == pytest.approx(2 / 3)


def test_rmbench_rejects_incomplete_groups():
    cells = {(i, j): RIGHT for i in range(3) for j in range(3)}
    items, outcomes = rm_group("g", "chat.json", cells)
    with pytest.raises(ValueError, match=r"group 'g' lacks cells \[\(2, 2\)\]"):
        score_rmbench(items[:-1], outcomes[:-1])
    with pytest.raises(ValueError, match=r"group 'g' has cell \(0, 0\) twice"):
        score_rmbench(items + items[:1], outcomes + outcomes[:1])
    with pytest.raises(ValueError, match="meta needs group"):
        score_rmbench([pair("x")], [on_pair(RIGHT)])


def test_rmbench_on_the_real_files():
    chat = load_items(FIXTURES / "rmbench_chat_sample15.json")
    refuse = load_items(FIXTURES / "rmbench_safety-refuse_sample10.json")
    assert rmbench_domain(chat[0]) == "chat" and rmbench_domain(refuse[0]) == "safety-refuse"
    items = chat + refuse
    # Prefers the concise style whatever the content: right iff the chosen style is < the
    # rejected one (hard); the diagonal ties, which RM-Bench counts wrong: 100% hard, 0% normal,
    # 0% easy; with ties at 1/2, normal is 50%.
    outcomes = [
        judge([[9 - it.meta["chosen_style"], 9 - it.meta["rejected_style"]]], it.rewards)
        for it in items
    ]
    m = score_benchmark("rm-bench", items, outcomes)
    assert (m["hard"], m["normal"], m["easy"]) == (1.0, 0.0, 0.0)
    assert m["score"] == pytest.approx(1 / 3) and m["n"] == 25
    assert m["safety/score"] == m["safety-refuse/score"]
    assert m["domain_avg"] == pytest.approx(1 / 3)
    halves = score_benchmark("rm-bench", items, outcomes, tie=None)
    assert (halves["hard"], halves["normal"], halves["easy"]) == (1.0, 0.5, 0.0)


def test_rmbench_total_file_keeps_each_records_domain(tmp_path):
    """RM-Bench's hub copy and total_dataset.json hold every domain in one file, each record
    naming its own: the per-domain matrices and the domain average come from that field."""
    import json

    rows = []
    for path in ("rmbench_chat_sample15.json", "rmbench_code_sample10.json", "rmbench_safety-refuse_sample10.json"):
        domain = path.split("_")[1]
        rows += [{**r, "domain": domain} for r in json.loads((FIXTURES / path).read_text())[:3]]
    total = tmp_path / "total_dataset.json"
    total.write_text(json.dumps(rows))
    items = load_items(total)
    assert {it.meta["domain"] for it in items} == {"chat", "code", "safety-refuse"}
    outcomes = [judge([[9 - it.meta["chosen_style"], 9 - it.meta["rejected_style"]]], it.rewards) for it in items]
    m = score_benchmark("rm-bench", items, outcomes)
    assert {k.split("/")[0] for k in m if "/" in k} == {"chat", "code", "safety-refuse", "safety"}
    assert m["domain_avg"] == pytest.approx((m["chat/score"] + m["code/score"] + m["safety/score"]) / 3)


# --- ReaLMistake ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "scores", "auc"),
    [
        ([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1], 1.0),
        ([1, 1, 0, 0], [0.1, 0.3, 0.8, 0.9], 0.0),
        ([1, 0], [5, 5], 0.5),
        ([1, 1, 0], [3, 1, 2], 0.5),  # (3 > 2) = 1, (1 < 2) = 0
        ([1, 0, 0], [2, 2, 1], 0.75),  # (2 = 2) = 0.5, (2 > 1) = 1
        ([1, 1, 0, 0], [4, None, 1, 2], 0.75),  # 1, 1, then 0.5 and 0.5 for the unscored
    ],
)
def test_roc_auc_hand_cases(labels, scores, auc):
    assert roc_auc(labels, scores) == pytest.approx(auc)


def test_roc_auc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(1)
    for _ in range(20):
        n = rng.randint(2, 60)
        labels = [rng.randint(0, 1) for _ in range(n)]
        labels[:2] = [0, 1]
        scores = [float(rng.randint(1, 6)) for _ in range(n)]  # many ties
        assert roc_auc(labels, scores) == pytest.approx(metrics.roc_auc_score(labels, scores))


def test_roc_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [1, 2])
    with pytest.raises(ValueError, match=r"labels\[1\] must be 0 or 1"):
        roc_auc([1, 2], [1, 2])
    with pytest.raises(ValueError, match="2 labels for 1 scores"):
        roc_auc([1, 0], [1])


def single(id: str, reward: float, subset: str = "math") -> Item:
    return Item(CONV, ["answer"], [reward], id, None, subset)


def test_realmistake_uses_the_mean_parsed_score():
    items = [single("a", 1.0), single("b", 1.0), single("c", 0.0), single("d", 0.0, "fact")]
    outcomes = [
        judge([[8], [6]], [1.0]),  # mean 7
        judge([[9], None, None], [1.0]),  # mean 9 (the failures do not drag it to 3)
        judge([[7], [7]], [0.0]),  # mean 7: ties with a
        judge([None], [0.0]),  # unscored: 0.5 against every positive
    ]
    m = score_realmistake(items, outcomes)
    # pairs (pos, neg): (a, c) = 0.5, (a, d) = 0.5, (b, c) = 1, (b, d) = 0.5 -> 2.5 / 4
    assert m["score"] == pytest.approx(2.5 / 4)
    assert m["unscored"] == 1 and m["n"] == 4
    assert m["subset/math"] == pytest.approx(0.75)  # a, b vs c: 0.5 and 1
    assert "subset/fact" not in m  # one class only
    with pytest.raises(ValueError, match="expected one response with reward 0 or 1"):
        score_realmistake([pair("x")], [on_pair(RIGHT)])


# --- plain accuracy and the registry -------------------------------------------------------------


def test_generic_accuracy_and_registry():
    items = [pair("a", "s1"), pair("b", "s1"), pair("c", "s2"), pair("d")]
    outcomes = [on_pair(RIGHT), on_pair(TIED), on_pair(WRONG_PAIR), on_pair(None)]
    assert [o.verdict for o in outcomes][1:] == [TIE, WRONG, TIE]
    m = score_benchmark("generic", items, outcomes)
    assert m["score"] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert m["ties"] == 0.5 and m["subset/s1"] == 0.75 and m["subset/s2"] == 0.0
    assert score_benchmark("synthetic", items, outcomes, tie=0.0)["score"] == 0.25
    assert (
        score_benchmark("generic", items, {it.id: o for it, o in zip(items, outcomes, strict=True)})
        == m
    )
    assert set(BENCHMARKS) == {
        "rewardbench", "rewardbench2", "ppe_preference", "ppe_correctness", "rmb", "judgebench", "rm-bench",
        "realmistake", "synthetic", "generic"
    }  # fmt: skip
    for b in BENCHMARKS.values():
        assert b.loader_format is None or b.loader_format in CONVERTERS
    with pytest.raises(ValueError, match="unknown benchmark 'ppe'"):
        score_benchmark("ppe", items, outcomes)  # PPE is two benchmarks: ppe_preference, ppe_correctness
    with pytest.raises(ValueError, match="3 outcomes for 4 items"):
        score_accuracy(items, outcomes[:3])
    with pytest.raises(ValueError, match=r"no outcome for item id\(s\) \['d'\]"):
        score_accuracy(items, {"a": outcomes[0], "b": outcomes[1], "c": outcomes[2]})


# --- the bootstrap table -------------------------------------------------------------------------


def _sample_sets(items: list[Item], k: int, seed: int, skill: float) -> list[SampleSet]:
    """Samples that score the best response higher with probability `skill`."""
    rng = random.Random(seed)
    sets = []
    for it in items:
        ss = []
        for _ in range(k):
            good = rng.random() < skill
            ss.append(
                {
                    "scores": [
                        (8 if good else 3) if r == max(it.rewards) else 5 for r in it.rewards
                    ],
                    "meta_score": float(good) + rng.random(),
                }
            )
        sets.append(SampleSet(it, ss, ss[0]))
    return sets


def test_benchmark_table_rmbench_and_judgebench():
    items = load_items(FIXTURES / "rmbench_chat_sample15.json")
    results = evaluate(_sample_sets(items, 4, seed=0, skill=0.6))
    rows = benchmark_table("rm-bench", results, n_boot=100, seed=1)
    assert [(r.method, r.k) for r in rows][:2] == [("Greedy", 1), ("Voting", 1)]
    for r in rows:
        assert r.n == 15  # groups, not items
        assert (
            r.accuracy
            == score_benchmark("rm-bench", items, results.outcomes[(r.method, r.k)])["score"]
        )
        assert 0.0 <= r.ci_low <= r.accuracy <= r.ci_high <= 1.0
    # The meta RM ranks the good samples first, so MetaRM@4 beats Voting@4.
    by_key = {(r.method, r.k): r.accuracy for r in rows}
    assert by_key[("MetaRM", 4)] > by_key[("Voting", 4)]
    assert rows == benchmark_table("rm-bench", results, n_boot=100, seed=1)
    pairs = both_orders(load_items(FIXTURES / "judgebench_gpt4o_sample40.jsonl"))
    jb = benchmark_table(
        "judgebench", evaluate(_sample_sets(pairs, 2, seed=0, skill=0.7)), n_boot=50
    )
    assert all(r.n == 40 and r.ci_low <= r.accuracy <= r.ci_high for r in jb)


def test_bootstrap_interval_agrees_with_wilson_on_plain_accuracy():
    items = [pair(f"q{i}") for i in range(400)]
    rng = random.Random(3)
    outs = [on_pair(RIGHT if rng.random() < 0.7 else WRONG_PAIR) for _ in items]
    results = ScalingResults(items, {("Voting", 1): outs})
    (boot,) = benchmark_table("generic", results, n_boot=400, seed=0)
    low, high = wilson_interval(sum(o.credit() for o in outs), len(outs))
    assert boot.accuracy == sum(o.credit() for o in outs) / 400 and boot.n == 400
    assert boot.ci_low == pytest.approx(low, abs=0.015)
    assert boot.ci_high == pytest.approx(high, abs=0.015)
