"""How a run's meta RM ranks the eval phase's samples, and how much MetaRM@k could gain.

    python benchmarks/meta_rm_ranking.py outputs/seeds/0 [outputs/seeds/1 ...]

Reads each run's saved config and eval generations (nothing is regenerated) and prints:
- the share of samples that are correct, neutral (every response scored the same: they add
  the same to every response's vote), misleading (a wrong response strictly first) or failed;
- within-item ROC-AUC of the meta score: correct against misleading samples of the same item
  (what MetaRM@k gains from) and correct against neutral ones (which cannot move a vote);
- Voting@k, MetaRM@k and the ceiling of any selection from the k samples: an item counts as
  solved when one of its samples is correct, and 1/n when all of them are neutral.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from omegaconf import OmegaConf

from spct.data import load_splits
from spct.evaluate.tables import load_generations
from spct.grm import best_index, is_correct, is_neutral
from spct.scaling import accuracy, metarm_outcome, voting_outcome


def kind(sample, rewards) -> str:
    scores = sample.get("scores")
    if scores is None:
        return "failed"
    if is_correct(scores, rewards):
        return "correct"
    if is_neutral(scores):
        return "neutral"
    return "misleading" if scores.index(max(scores)) != best_index(rewards) else "other"


def within_auc(sets, k: int, pos: str, neg: str) -> tuple[float, int]:
    """P(meta score of a `pos` sample > that of a `neg` sample of the same item), ties 1/2."""
    wins = pairs = 0.0
    for s in sets:
        first = s.samples[:k]
        kinds = [kind(x, s.item.rewards) for x in first]
        for x, a in zip(first, kinds, strict=True):
            for y, b in zip(first, kinds, strict=True):
                if a == pos and b == neg:
                    pairs += 1
                    wins += (x["meta_score"] > y["meta_score"]) + 0.5 * (x["meta_score"] == y["meta_score"])
    return (wins / pairs if pairs else float("nan")), int(pairs)


def report(run: Path) -> None:
    cfg = OmegaConf.load(run / "hydra" / ".hydra" / "config.yaml")
    k, ratio = cfg.eval.k_max, cfg.eval.k_meta_ratio
    items = load_splits(seed=cfg.seed, splits=[cfg.eval.split], **dataclasses.asdict(cfg.data))[cfg.eval.split][: cfg.eval.max_items or None]
    sets = load_generations(run / "eval" / cfg.eval.split / "generations.jsonl", items)
    kinds = [kind(x, s.item.rewards) for s in sets for x in s.samples[:k]]
    shares = ", ".join(f"{name} {kinds.count(name) / len(kinds):.1%}"
                       for name in ("correct", "neutral", "misleading", "other", "failed") if name in kinds)
    ceiling = 0.0
    for s in sets:
        ks = [kind(x, s.item.rewards) for x in s.samples[:k]]
        ceiling += 1.0 if "correct" in ks else 1 / s.item.n if all(c == "neutral" for c in ks) else 0.0
    print(f"{run} ({len(sets)} {cfg.eval.split} items, k = {k}, k_meta = {ratio} k)")
    print(f"  samples: {shares}")
    if all("meta_score" in x for s in sets for x in s.samples[:k]):
        for pos, neg in (("correct", "misleading"), ("correct", "neutral"), ("neutral", "misleading")):
            auc, pairs = within_auc(sets, k, pos, neg)
            print(f"  within-item ROC-AUC, {pos} vs {neg}: {auc:.3f} ({pairs} pairs)")
        meta = f"MetaRM@{k} {accuracy([metarm_outcome(s, k, ratio) for s in sets]):.3f}, "
    else:
        meta = ""
    print(f"  Voting@{k} {accuracy([voting_outcome(s, k) for s in sets]):.3f}, {meta}"
          f"ceiling of any selection {ceiling / len(sets):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="output_dir of finished spct.train runs")
    for run in ap.parse_args().runs:
        report(run)


if __name__ == "__main__":
    main()
