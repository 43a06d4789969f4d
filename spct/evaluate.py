"""`python -m spct.evaluate`: inference-time scaling of a GRM on reward-model benchmarks.

    python -m spct.evaluate model.path=CKPT                       # the synthetic test split
    python -m spct.evaluate model.path=CKPT meta_rm=META_CKPT k_max=32 \\
        benchmarks=[rewardbench,judgebench=/data/judgebench.jsonl,/data/mine.jsonl]
    python -m spct.evaluate output_dir=DIR rescore=true           # re-score saved generations

For every item: k_max samples at `temperature` and one greedy sample, each showing the
responses in its own random order (never as given: the loaders put the labelled-best response
first); optionally a meta-RM score per sample. Greedy, Voting@k
and MetaRM@k (k_meta = k * k_meta_ratio) for k = 1, 2, 4, ..., k_max come from subsets of
the same samples, and each benchmark is scored by its own rule (spct.scoring). Written per
benchmark under output_dir/<benchmark>/: generations.jsonl (every sample: item, order, text,
parsed scores, meta score), table.md, table.csv, scaling.png; and output_dir/summary.md, a
table of every benchmark's headline per method and k.

A benchmark is a name (synthetic, rewardbench, rmb, judgebench, rm-bench, realmistake) with
its default source, `name=path` for a local copy, or any file spct.data.load_items reads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from spct.config import (
    ClusterConfig,
    DataConfig,
    LoggerConfig,
    ModelConfig,
    RolloutConfig,
    engine_kwargs,
)
from spct.data import Item, load_items
from spct.scaling import (
    GREEDY,
    METARM,
    VOTING,
    Row,
    SampleSet,
    evaluate,
    plot_scaling,
    write_table_csv,
    write_table_markdown,
)
from spct.scoring import BENCHMARKS, benchmark_table, both_orders, score_benchmark

log = logging.getLogger("spct")

# Where a benchmark named without a path comes from (Hugging Face hub, loaded with `datasets`).
DEFAULT_SOURCES = {
    "rewardbench": ("allenai/reward-bench", "filtered"),
    "judgebench": ("ScalerLab/JudgeBench", "gpt"),
    "rm-bench": ("THU-KEG/RM-Bench", "train"),
}
# A file's detected format decides its scoring rule.
FORMAT_RULES = {"judgebench": "judgebench", "rmbench": "rm-bench", "rmb_pairwise": "rmb", "rmb_bon": "rmb"}


@dataclass
class EvaluateConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    data: DataConfig = field(default_factory=DataConfig)  # the synthetic task's shape
    meta_rm: str | None = None  # a trained meta RM (HF folder); null = no MetaRM@k
    benchmarks: list[str] = field(default_factory=lambda: ["synthetic"])
    k_max: int = 8
    temperature: float = 0.5
    k_meta_ratio: float = 0.5
    max_items: int = 0  # per benchmark; 0 = all
    rescore: bool = False  # score output_dir's saved generations instead of generating
    bootstrap: int = 1000
    output_dir: str = MISSING
    seed: int = 0


# ---------------------------------------------------------------------------------------- data
def resolve_benchmark(spec: str, data: DataConfig, seed: int, max_items: int = 0) -> tuple[str, str, list[Item]]:
    """(label, scoring rule, items) for "name", "name=path" or a file path."""
    name, _, path = spec.partition("=")
    if not path and (os.path.exists(spec) or name not in BENCHMARKS):
        if not os.path.exists(spec):
            raise FileNotFoundError(
                f"benchmark {spec!r}: no such file, and not a benchmark name ({', '.join(BENCHMARKS)})")
        items = load_items(spec, limit=max_items or None)
        rule = FORMAT_RULES.get(items.format, "generic")
        return Path(spec).stem, rule, _judged(rule, items)
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark {spec!r}: unknown name; expected one of {', '.join(BENCHMARKS)} or a file")
    if name == "synthetic" and not path:
        from spct.data.synthetic import SyntheticConfig, make_items

        items = make_items(max_items or data.test_size, seed, "test", SyntheticConfig(**data.task))
        return name, name, items
    if not path and name not in DEFAULT_SOURCES:
        raise ValueError(f"benchmark {name!r} has no public default source: give it as {name}=PATH")
    source, split = (path, "train") if path else DEFAULT_SOURCES[name]
    items = load_items(source, format=BENCHMARKS[name].loader_format, split=split, limit=max_items or None)
    return name, name, _judged(name, items)


def _judged(rule: str, items: list[Item]) -> list[Item]:
    """JudgeBench is judged in both orders: each pair twice, the second time swapped."""
    return both_orders(items) if rule == "judgebench" else list(items)


# ------------------------------------------------------------------------------ generation
def draw_samples(pool, items: Sequence[Item], k_max: int, temperature: float,
                 meta_score: Callable[[list[dict]], list[float]] | None, seed: int) -> list[SampleSet]:
    """k_max sampled and one greedy sample per item, each in its own random response order."""
    sampled = pool.sample(items, k_max, temperature=temperature, seed=seed)
    greedy = pool.sample(items, 1, temperature=0.0, seed=seed, stream="greedy")
    scale = (pool.template.low, pool.template.high)
    sets = [SampleSet(item, s, g[0], scale) for item, s, g in zip(items, sampled, greedy, strict=True)]
    if meta_score is not None:
        flat = [x for st in sets for x in (*st.samples, st.greedy)]
        for x, m in zip(flat, meta_score([{"prompt": x["prompt"], "completion": x["text"]} for x in flat]),
                        strict=True):
            x["meta_score"] = m
    return sets


def save_generations(sets: Sequence[SampleSet], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for index, st in enumerate(sets):
            for i, x in enumerate([st.greedy, *st.samples]):
                f.write(json.dumps({"index": index, "item": st.item.id, "sample": "greedy" if i == 0 else i - 1,
                                    **{k: x.get(k) for k in ("order", "text", "scores", "meta_score")},
                                    "prompt": x.get("prompt"), "scale": st.scale}) + "\n")


def load_generations(path: Path, items: Sequence[Item]) -> list[SampleSet]:
    """The SampleSets of a generations.jsonl, matched to `items` by position and id."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no saved generations to re-score (run without rescore first)")
    sets = [SampleSet(item, []) for item in items]
    for line_no, line in enumerate(path.open(), 1):
        rec = json.loads(line)
        index = rec["index"]
        if index >= len(items) or rec["item"] != items[index].id:
            raise ValueError(f"{path}, line {line_no}: item {rec['item']!r} at index {index} does not match "
                             "the benchmark's items (was it generated with other data or max_items?)")
        x = {k: rec[k] for k in ("order", "text", "scores", "prompt")}
        if rec.get("scale") is not None:  # files written before the scale was recorded have none
            sets[index].scale = tuple(rec["scale"])
        if rec.get("meta_score") is not None:
            x["meta_score"] = rec["meta_score"]
        if rec["sample"] == "greedy":
            sets[index].greedy = x
        else:
            sets[index].samples.append(x)
    return sets


# ------------------------------------------------------------------------------- reporting
def report(label: str, rule: str, sets: Sequence[SampleSet], out: Path, k_max: int, k_meta_ratio: float,
           bootstrap: int, seed: int) -> tuple[list[Row], dict[str, Any]]:
    """Scaling table (the benchmark's headline per method and k), plot and per-method metrics."""
    results = evaluate(sets, k_max=k_max, k_meta=k_meta_ratio)
    rows = benchmark_table(rule, results, n_boot=bootstrap, seed=seed)
    write_table_markdown(rows, out / "table.md")
    write_table_csv(rows, out / "table.csv")
    plot_scaling(rows, out / "scaling.png", title=f"{label}: inference-time scaling")
    details = {f"{m}@{k}": score_benchmark(rule, results.items, o) for (m, k), o in results.outcomes.items()}
    (out / "metrics.json").write_text(json.dumps(details, indent=1))
    return rows, details


def summary_markdown(tables: dict[str, list[Row]]) -> str:
    """Rows: method and k; columns: each benchmark's headline (%) and their mean (Overall)."""
    keys = sorted({(r.method, r.k) for rows in tables.values() for r in rows},
                  key=lambda mk: ((GREEDY, VOTING, METARM).index(mk[0]), mk[1]))
    names = list(tables)
    lines = ["| method | k | " + " | ".join(names) + (" | Overall |" if len(names) > 1 else ""),
             "|---|---:|" + "---:|" * (len(names) + (len(names) > 1))]
    for method, k in keys:
        cells = [next((r for r in tables[n] if (r.method, r.k) == (method, k)), None) for n in names]
        vals = [f"{100 * r.accuracy:.1f} ({100 * r.ci_low:.1f}-{100 * r.ci_high:.1f})" if r else "-" for r in cells]
        line = f"| {method} | {k} | " + " | ".join(vals) + " |"
        if len(names) > 1:
            got = [r.accuracy for r in cells if r]
            line += f" {100 * sum(got) / len(got):.1f} |" if len(got) == len(names) else " - |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def run_benchmarks(pool, benchmarks: list[tuple[str, str, list[Item]]], out: Path, *, k_max: int,
                   temperature: float, k_meta_ratio: float, meta_score=None, rescore: bool = False,
                   bootstrap: int = 1000, seed: int = 0, tracker=None, step: int = 0) -> dict[str, list[Row]]:
    """Sample (or reload), score, and write every benchmark's report; returns the tables."""
    tables = {}
    for label, rule, items in benchmarks:
        folder = out / label
        path = folder / "generations.jsonl"
        if rescore:
            sets = load_generations(path, items)
        else:
            log.info("%s: %d items x (%d samples + greedy)", label, len(items), k_max)
            sets = draw_samples(pool, items, k_max, temperature, meta_score, seed)
            save_generations(sets, path)
        rows, _ = report(label, rule, sets, folder, k_max, k_meta_ratio, bootstrap, seed)
        tables[label] = rows
        if tracker is not None:
            tracker.log({f"{r.method}@{r.k}": r.accuracy for r in rows}, step=step, phase=f"eval/{label}")
            tracker.log_table(f"eval/{label}/table", ["method", "k", "accuracy", "ci_low", "ci_high", "n"],
                              [list(dataclasses.astuple(r)) for r in rows], step=step)
            tracker.log_image(f"eval/{label}/scaling", folder / "scaling.png", step=step)
    (out / "summary.md").write_text(summary_markdown(tables))
    return tables


def meta_scorer(path: str, dtype: str, max_length: int, num_threads: int = 0, num_gpus: float = 0,
                **options):
    """A function scoring trajectories with a meta-RM actor (and the actor, to kill later).
    On a GPU cluster give it `num_gpus` (1: a GPU of its own), else it runs on CPU; `options`
    are further Ray actor options (e.g. a placement group bundle)."""
    import ray

    from spct.meta_rm import MetaRM

    # Scoring is forward-only, so larger micro-batches than training's are fine.
    actor = ray.remote(MetaRM).options(num_gpus=num_gpus, **options).remote(
        path, dtype=dtype, max_length=max_length, micro_batch_size=64, num_threads=num_threads)
    return (lambda trajectories: ray.get(actor.score.remote(trajectories))), actor


# ------------------------------------------------------------------------------------ main
def run(cfg: DictConfig | EvaluateConfig) -> dict[str, list[Row]]:
    if not isinstance(cfg, EvaluateConfig):
        plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvaluateConfig), plain))
    if cfg.model.path is None:
        raise ValueError("model.path: expected the GRM checkpoint to evaluate (a folder or hub id)")
    out = Path(cfg.output_dir)
    benchmarks = [resolve_benchmark(b, cfg.data, cfg.seed, cfg.max_items) for b in cfg.benchmarks]
    from spct.tracking import Tracker

    tracker = Tracker(out, kind=cfg.logger.kind, project=cfg.logger.project, entity=cfg.logger.entity,
                      run_name=cfg.logger.run_name or f"eval-{out.name}", mode=cfg.logger.mode,
                      config=dataclasses.asdict(cfg))
    pool = actor = None
    score_meta = None
    try:
        if not cfg.rescore:
            from spct.cluster import init_ray
            from spct.reward_pool import GRMRewardPool

            init_ray(cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.num_gpus)
            r = cfg.rollout
            pool = GRMRewardPool(
                cfg.model.path, r.num_engines,
                engine_kwargs(cfg.model, r, cfg.seed),
                template=cfg.model.template, max_new_tokens=cfg.model.max_new_tokens,
                num_cpus_per_engine=r.num_cpus_per_engine,
                num_gpus_per_engine=cfg.cluster.gpus(r.tensor_parallel_size))
            if cfg.meta_rm:
                score_meta, actor = meta_scorer(cfg.meta_rm, cfg.model.dtype, cfg.model.max_model_len,
                                                num_gpus=cfg.cluster.gpus(1))
        tables = run_benchmarks(pool, benchmarks, out, k_max=cfg.k_max, temperature=cfg.temperature,
                                k_meta_ratio=cfg.k_meta_ratio, meta_score=score_meta, rescore=cfg.rescore,
                                bootstrap=cfg.bootstrap, seed=cfg.seed, tracker=tracker)
    finally:
        if pool is not None:
            pool.shutdown()
        if actor is not None:
            import ray

            ray.kill(actor)
        tracker.finish()
    text = (out / "summary.md").read_text()
    try:
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(text))
    except ImportError:
        print(text)
    return tables


def _main() -> None:
    import hydra
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="spct_evaluate_schema", node=EvaluateConfig)

    @hydra.main(config_path="../conf", config_name="evaluate", version_base=None)
    def main(cfg: DictConfig) -> None:
        run(cfg)

    main()


if __name__ == "__main__":
    _main()
