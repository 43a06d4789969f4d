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
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

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
from spct.evaluation import run_benchmarks
from spct.meta_rm import meta_scorer
from spct.scaling import Row
from spct.scoring import BENCHMARKS, both_orders

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
