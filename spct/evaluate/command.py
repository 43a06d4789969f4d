"""`python -m spct.evaluate`: inference-time scaling of a GRM on reward-model benchmarks.

    python -m spct.evaluate model=CKPT                            # the synthetic test split
    python -m spct.evaluate model=CKPT meta_rm=META_CKPT k_max=32 \\
        benchmarks=[rewardbench,judgebench:/data/judgebench.jsonl,/data/mine.jsonl]
    python -m spct.evaluate model=CKPT judge=judge                # with the LLM-as-a-judge baseline
    python -m spct.evaluate output_dir=DIR rescore=true           # re-score DIR's saved generations
    python -m spct.evaluate model=CKPT dry_run=true               # check the command, print the plan

`model=PATH` and `meta_rm=PATH` are short for `model.path=PATH` and `meta_rm.path=PATH`. The
GRM's settings (template, context, critique length, dtype) and the meta RM's come from their
checkpoints' cards (spct.card) unless set (`model.template=...`).

For every item: k_max samples at `temperature` and one greedy sample, each showing the
responses in its own random order (never as given: the loaders put the labelled-best response
first); optionally a meta-RM score per sample. Greedy, Voting@k
and MetaRM@k (k_meta = k * k_meta_ratio) for k = 1, 2, 4, ..., k_max come from subsets of
the same samples, and each benchmark is scored by its own rule (spct.scoring). `judge=judge`
(or a choice template's path) adds the LLM-as-a-judge baseline on the same items: k_max sampled
picks and a greedy one from the same model (or `judge_model`), the majority vote over picks
(Judge, Judge voting@k) beside the GRM's rows. Written per
benchmark under output_dir/<benchmark>/: generations.jsonl (every sample: item, order, text,
parsed scores, meta score), table.md, table.csv, scaling.png; and output_dir/summary.md, a
table of every benchmark's headline per method and k (with their mean, and the paper's Overall
when RewardBench, PPE Preference, PPE Correctness and RMB ran); output_dir/evaluate.yaml, the
settings.

A benchmark is a name (synthetic, rewardbench, rewardbench2, ppe_preference, ppe_correctness,
rmb, judgebench, rm-bench, realmistake; docs/benchmarks.md) with its default source, `name:path` for a local copy (or `"name=path"`, quoted: Hydra reads `=`
inside a list only in a quoted string), or any file spct.data.load_items reads. `rescore=true`
reads the benchmarks, items and samples of an earlier evaluation in output_dir (its
evaluate.yaml and generations) and recomputes the tables, with this command's k_meta_ratio
and bootstrap; it starts no engine and needs no model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from spct import memory
from spct.config import (
    CONF_DIR,
    DTYPES,
    Checks,
    ClusterConfig,
    ConfigError,
    DataConfig,
    LoggerConfig,
    MetaRMRef,
    ModelConfig,
    RolloutConfig,
    check_cluster,
    check_logger,
    check_model,
    check_numbers,
    check_rollout,
    check_sources,
    engine_kwargs,
    local_gpu_problem,
    model_positions,
    path_shorthand,
    resolve_meta_rm,
    resolve_model,
    structured,
)
from spct.data import Item, load_items
from spct.evaluate.tables import RMB_MODES, judged, rule_of, run_benchmarks
from spct.scaling import Row
from spct.scoring import BENCHMARKS

log = logging.getLogger("spct")

# Where a benchmark named without a path comes from (Hugging Face hub, loaded with `datasets`).
DEFAULT_SOURCES = {
    "rewardbench": ("allenai/reward-bench", "filtered"),
    "rewardbench2": ("allenai/reward-bench-2", "test"),
    "judgebench": ("ScalerLab/JudgeBench", "gpt"),
    "rm-bench": ("THU-KEG/RM-Bench", "train"),
    "ppe_preference": ("lmarena-ai/PPE-Human-Preference-V1", "test"),
    "ppe_correctness": ("lmarena-ai/PPE-{}-Best-of-K", "train"),  # one per set of PPE_HUB_SETS
}
PPE_HUB_SETS = ("MMLU-Pro", "MATH", "GPQA", "IFEval", "MBPP-Plus")
SAVED = "evaluate.yaml"
# What the generations depend on: a re-score reads these from the evaluation it re-scores.
GENERATION_KEYS = ("model", "meta_rm", "data", "benchmarks", "k_max", "temperature", "max_items", "seed",
                   "with_reference", "rmb_mode", "judge", "judge_model")


@dataclass
class EvaluateConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the GRM; null settings: its card's
    meta_rm: MetaRMRef = field(default_factory=MetaRMRef)  # a trained meta RM; no path = no MetaRM@k
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    data: DataConfig = field(default_factory=DataConfig)  # the synthetic task's shape
    benchmarks: list[str] = field(default_factory=lambda: ["synthetic"])
    k_max: int = 8
    temperature: float = 0.5
    k_meta_ratio: float = 0.5
    max_items: int = 0  # per benchmark; 0 = all
    # Show each item's reference answer (meta.reference) in its GRM prompts, as the paper's
    # Table 9 does for PPE Correctness; items without one are judged as usual.
    with_reference: bool = False
    # RMB's best-of-N items: judged with all responses in one prompt ("list"), or as one pair
    # per loser ("pairs"), right only when the best wins every pair.
    rmb_mode: str = "list"
    # The LLM-as-a-judge baseline: a choice template ("judge", the shipped one, or a .j2 path
    # whose header says output=choice) sampled like the GRM, its picks majority-voted; null: none.
    judge: str | None = None
    judge_model: str | None = None  # the judge's checkpoint; null: the GRM's own engines
    rescore: bool = False  # score output_dir's saved generations instead of generating
    bootstrap: int = 1000
    output_dir: str = "outputs/eval"
    seed: int = 0
    dry_run: bool = False  # check the command and print the plan; start nothing


POSITIVE = frozenset("""k_max bootstrap k_meta_ratio model.max_model_len model.max_new_tokens meta_rm.max_length
    rollout.num_engines rollout.tensor_parallel_size rollout.gpu_memory_utilization rollout.kv_cache_gib
    rollout.block_size cluster.nodes cluster.num_cpus""".split())


def load_config(cfg: DictConfig | dict | EvaluateConfig) -> tuple[EvaluateConfig, dict[str, str]]:
    """The typed, checked configuration (a re-score's generation settings read from the
    evaluation it re-scores) and where each GRM setting came from. Raises ConfigError naming
    every bad key, before Ray or an engine starts."""
    c = cfg if isinstance(cfg, EvaluateConfig) else structured(EvaluateConfig, cfg)
    if c.rescore:
        saved = Path(c.output_dir) / SAVED
        if not saved.is_file():
            raise ConfigError(f"invalid evaluate configuration:\n  rescore: expected an earlier evaluation in "
                              f"output_dir ({saved} not found)")
        earlier = structured(EvaluateConfig, OmegaConf.to_container(OmegaConf.load(saved)))
        c = dataclasses.replace(c, **{k: getattr(earlier, k) for k in GENERATION_KEYS})
    sources = resolve_model(c.model) if c.model.path else {}
    if c.meta_rm.path:
        resolve_meta_rm(c.meta_rm, c.model.dtype or "bfloat16")
    validate(c)
    return c, sources


def validate(c: EvaluateConfig) -> None:
    ch = Checks()
    check_numbers(ch, c, POSITIVE)
    ch.need(c.k_meta_ratio <= 1, "k_meta_ratio", "in (0, 1]")
    ch.need(bool(c.benchmarks), "benchmarks", "at least one benchmark")
    ch.need(c.rmb_mode in RMB_MODES, "rmb_mode", f"one of {', '.join(RMB_MODES)}, got {c.rmb_mode!r}")
    if c.judge is not None:
        from spct.grm import load_template

        try:
            ch.need(load_template(c.judge).choice, "judge", f"a choice template (its first line "
                    f"'{{#- spct: output=choice -#}}', as the shipped 'judge'), got {c.judge!r}, which scores")
        except (OSError, ValueError) as e:
            ch.errors.append(f"judge: {e}")
    ch.need(c.judge_model is None or c.judge is not None, "judge_model", "null unless judge is set")
    judge_positions = model_positions(c.judge_model)  # its engines run with the GRM's model settings
    ch.need(judge_positions is None or c.model.max_model_len <= judge_positions, "judge_model",
            f"a model whose context holds model.max_model_len ({c.model.max_model_len}); {c.judge_model} has "
            f"{judge_positions} positions (set model.max_model_len to at most that)")
    for spec in c.benchmarks:
        problem = benchmark_problem(spec)
        if problem:
            ch.errors.append(f"benchmarks: {problem}")
    if not c.rescore:
        ch.need(c.model.path is not None, "model.path", "the GRM checkpoint to evaluate (model=PATH: a folder "
                "or hub id)")
        ch.need(c.model.tiny_preset is None, "model.tiny_preset", "null (spct.evaluate scores a checkpoint)")
        if c.model.path:
            check_model(ch, c.model, gpus=c.cluster.num_gpus)
        check_rollout(ch, c.rollout, c.cluster.num_gpus)
        if c.meta_rm.path:
            ch.need(c.meta_rm.dtype in DTYPES, "meta_rm.dtype", f"one of {', '.join(DTYPES)}, got {c.meta_rm.dtype!r}")
    check_cluster(ch, c.cluster)
    check_logger(ch, c.logger)
    ch.done("evaluate configuration")


def split_spec(spec: str) -> tuple[str, str]:
    """(name, path) of a benchmark spec: `name:path` (no quoting needed in a Hydra list) or
    `name=path`; a bare name or file gives path ''."""
    for sep in ("=", ":"):
        name, found, path = spec.partition(sep)
        if found and (sep == "=" or name in BENCHMARKS):
            return name, path
    return spec, ""


def benchmark_problem(spec: str) -> str | None:
    """Why a benchmark spec cannot be read, or None: a known name, `name=path` with an existing
    path, or an existing file."""
    name, path = split_spec(spec)
    if path:
        if name not in BENCHMARKS:
            return f"{spec!r}: unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}"
        return None if os.path.exists(os.path.expanduser(path)) else f"{spec!r}: no such file {path!r}"
    if os.path.exists(os.path.expanduser(spec)):
        return None
    if name not in BENCHMARKS:
        return f"{spec!r}: no such file, and not a benchmark name ({', '.join(BENCHMARKS)})"
    if name != "synthetic" and name not in DEFAULT_SOURCES:
        return f"{name!r} has no public default source: give it as {name}:PATH"
    return None


# ---------------------------------------------------------------------------------------- data
def resolve_benchmark(spec: str, data: DataConfig, seed: int, max_items: int = 0,
                      rmb_mode: str = "list") -> tuple[str, str, list[Item]]:
    """(label, scoring rule, items) for "name", "name=path" or a file path (a spec
    `benchmark_problem` found nothing wrong with)."""
    name, path = split_spec(spec)
    if not path and (os.path.exists(spec) or name not in BENCHMARKS):
        items = load_items(spec, limit=max_items or None)
        rule = rule_of(items.format)
        return Path(spec).stem, rule, judged(rule, items, rmb_mode)
    if name == "synthetic" and not path:
        from spct.data.synthetic import SyntheticConfig, make_items

        items = make_items(max_items or data.test_size, seed, "test", SyntheticConfig(**data.task))
        return name, name, items
    source, split = (path, "train") if path else DEFAULT_SOURCES[name]
    fmt = BENCHMARKS[name].loader_format
    if name == "ppe_correctness":  # five sets, each its own columns: read one by one
        sources = ppe_correctness_sources(path) if path else hub_ids(name)
        items = [it for src in sources for it in load_items(src, format=fmt, split=split, limit=max_items or None)]
        return name, name, items
    items = load_items(source, format=fmt, split=split, limit=max_items or None)
    return name, name, judged(name, items, rmb_mode)


def hub_ids(name: str) -> list[str]:
    """The hub datasets a benchmark named without a path is read from."""
    hub = DEFAULT_SOURCES[name][0]
    return [hub.format(s) for s in PPE_HUB_SETS] if name == "ppe_correctness" else [hub]


def ppe_correctness_sources(path: str) -> list[str]:
    """A local copy of PPE's correctness sets: a file (one set), or a folder holding one folder
    per set (each as the hub has it, e.g. PPE-MATH-Best-of-K/data/train-*.parquet) or one file
    per set."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return [path]
    data = (".jsonl", ".json", ".parquet", ".csv", ".gz")
    sets = [p for p in sorted(folder.iterdir()) if p.is_dir() and any(f.suffix in data for f in p.rglob("*"))]
    sets += [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in data]
    return [str(p) for p in sets] or [path]



# ------------------------------------------------------------------------------------ main
def plan(c: EvaluateConfig, sources: dict[str, str], warnings: list[str], needs: list | None = None) -> str:
    """What the command would do, in words (dry_run=true prints it)."""
    if c.rescore:
        model = f"none: re-scores the generations in {c.output_dir}"
    else:
        model = f"{c.model.path}; " + ", ".join(f"{k} {getattr(c.model, k)} ({src})" for k, src in sources.items())
    meta = (f"{c.meta_rm.path}; max_length {c.meta_rm.max_length}, dtype {c.meta_rm.dtype}" if c.meta_rm.path
            else "none (no MetaRM@k)")
    lines = ["spct.evaluate plan (dry_run: nothing started)", f"  GRM         {model}", f"  meta RM     {meta}",
             "  benchmarks  " + "\n              ".join(_describe(spec, c) for spec in c.benchmarks),
             f"  sampling    k_max {c.k_max} at temperature {c.temperature} + greedy; k_meta = k x {c.k_meta_ratio}; "
             f"max_items {c.max_items or 'all'}"
             + ("; prompts show each item's reference answer" if c.with_reference else ""),
             f"  judge       {_judge_line(c)}",
             f"  engines     {c.rollout.num_engines} x vLLM on "
             + (f"{c.cluster.num_gpus} GPU(s)" if c.cluster.num_gpus else "CPU"),
             f"  output_dir  {c.output_dir}"] + memory.plan_lines(needs or [], c.cluster.gpu_memory_gib)
    return "\n".join(lines + [f"  warning     {w}" for w in warnings])


def _judge_line(c: EvaluateConfig) -> str:
    if c.judge is None:
        return "none (judge=judge adds the LLM-as-a-judge baseline)"
    return (f"template {c.judge} on {c.judge_model or 'the GRM'}: k_max picks + greedy per item, "
            "majority vote (Judge, Judge voting@k)")


def _describe(spec: str, c: EvaluateConfig) -> str:
    name, path = split_spec(spec)
    if path:
        return f"{name}: {path}"
    if name == "synthetic" and not os.path.exists(spec):
        return f"synthetic: {c.max_items or c.data.test_size} generated test items"
    if name in DEFAULT_SOURCES:
        return f"{name}: {', '.join(hub_ids(name))} (split {DEFAULT_SOURCES[name][1]}, from the hub)"
    return f"{Path(spec).stem}: {spec} (scored by its detected format)"


def run(cfg: DictConfig | EvaluateConfig) -> dict[str, list[Row]]:
    c, sources = load_config(cfg)
    warnings = [] if c.rescore else check_sources(
        {"model.path": (c.model.path, "model"), "meta_rm.path": (c.meta_rm.path, "model"),
         "judge_model": (c.judge_model, "model"),
         **{f"benchmarks ({b}: {hub})": (hub, "dataset") for b in c.benchmarks if b in DEFAULT_SOURCES
            for hub in hub_ids(b)}},
        strict=not c.dry_run)
    gpu = None if c.rescore else local_gpu_problem(c.cluster)
    if gpu and not c.dry_run:
        raise ConfigError(f"invalid evaluate configuration:\n  {gpu}")
    warnings += [gpu] if gpu else []
    needs, unestimated = ([], []) if c.rescore else memory.serving(
        c.model.path, c.rollout, c.model.max_model_len, c.cluster.gpu_memory_gib, c.cluster.num_gpus,
        meta_rm=c.meta_rm.path, judge_model=c.judge_model, meta_rm_max_length=c.meta_rm.max_length)
    over = memory.problems(needs, c.cluster.gpu_memory_gib)
    if over and not c.dry_run:
        raise ConfigError("invalid evaluate configuration: the GPUs cannot hold the run:\n  " + "\n  ".join(over))
    warnings += unestimated + over
    if c.dry_run:
        print(plan(c, sources, warnings, needs))
        return {}
    out = Path(c.output_dir)
    benchmarks = [resolve_benchmark(b, c.data, c.seed, c.max_items, c.rmb_mode) for b in c.benchmarks]
    if not c.rescore:
        out.mkdir(parents=True, exist_ok=True)
        (out / SAVED).write_text(OmegaConf.to_yaml(OmegaConf.structured(c)))
    from spct.tracking import Tracker

    tracker = Tracker(out, kind=c.logger.kind, project=c.logger.project, entity=c.logger.entity,
                      run_name=c.logger.run_name or f"eval-{out.name}", mode=c.logger.mode,
                      config=dataclasses.asdict(c), group=c.logger.group, tags=c.logger.tags or None)
    pool = actor = judge_pool = None
    score_meta = None
    try:
        if not c.rescore:
            from spct.cluster import init_ray
            from spct.reward_pool import GRMRewardPool

            init_ray(c.cluster.address, c.cluster.num_cpus, c.cluster.num_gpus)
            r = c.rollout
            if c.meta_rm.path:  # first: the meta RM loads while the engines start
                from spct.meta_rm import meta_scorer

                score_meta, actor = meta_scorer(c.meta_rm.path, c.meta_rm.dtype, c.meta_rm.max_length,
                                                num_gpus=c.cluster.gpus(1),
                                                input_template=c.meta_rm.input_template)
            pool = GRMRewardPool.start(
                c.model.path, r.num_engines,
                engine_kwargs(c.model, r, c.seed),
                template=c.model.template, max_new_tokens=c.model.max_new_tokens,
                num_cpus_per_engine=r.num_cpus_per_engine,
                num_gpus_per_engine=c.cluster.gpus(r.tensor_parallel_size), with_reference=c.with_reference,
                wait=c.judge_model is None)
            if c.judge is not None:
                judge_pool = GRMRewardPool(pool.group, c.judge, c.model.max_new_tokens, c.with_reference) \
                    if c.judge_model is None else GRMRewardPool.start(
                        c.judge_model, r.num_engines, engine_kwargs(c.model, r, c.seed), template=c.judge,
                        max_new_tokens=c.model.max_new_tokens, num_cpus_per_engine=r.num_cpus_per_engine,
                        num_gpus_per_engine=c.cluster.gpus(r.tensor_parallel_size), with_reference=c.with_reference)
                pool.group.ready()
        tables = run_benchmarks(pool, benchmarks, out, k_max=c.k_max, temperature=c.temperature,
                                k_meta_ratio=c.k_meta_ratio, meta_score=score_meta, rescore=c.rescore,
                                bootstrap=c.bootstrap, seed=c.seed, tracker=tracker, judge_pool=judge_pool,
                                judge=c.judge is not None)
    finally:
        if judge_pool is not None and judge_pool.group is not getattr(pool, "group", None):
            judge_pool.shutdown()
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


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="spct_evaluate_schema", node=EvaluateConfig)


def main() -> None:
    import hydra

    register_schema()
    sys.argv[1:] = path_shorthand(sys.argv[1:])

    @hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base=None)
    def main(cfg: DictConfig) -> None:
        try:
            run(cfg)
        except ConfigError as e:
            log.error("%s", e)
            sys.exit(1)

    main()


if __name__ == "__main__":
    main()
