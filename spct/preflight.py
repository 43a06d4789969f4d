"""What `spct.train` decides before Ray starts: the job's folder, whether it may resume, the plan.

- A sweep's job (`python -m spct.train -m rl.beta=0.02,0.08`) runs in a subfolder of
  output_dir named by its swept overrides (`outputs/spct-default/rl.beta=0.02`), and the jobs of
  one sweep share a W&B group and carry their overrides as tags.
- A run records its configuration in output_dir/config.yaml. A rerun in a folder that holds a
  run resumes it only if the configuration agrees, outside the keys that do not change results
  (logging, checkpoint cadence, the Ray address) and the settings of phases that have not
  started yet; otherwise it refuses and names the keys. `checkpoint.resume=force` resumes
  anyway; `checkpoint.resume=fresh` moves the old run aside and starts over.
- A real model composed without an `experiment=` preset keeps the tiny demo's group options:
  a warning names them.
- `dry_run=true` prints the plan (settings and where they come from, data, phases, placement,
  the resume) and starts nothing.

Plain logic over the typed config and files; Hydra's runtime is read only by `sweep_job`.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spct.config import GRM_PHASES, POLICY_PHASES, Config, ConfigError
from spct.data.loaders import to_source
from spct.files import write_atomic
from spct.memory import Need, estimate, plan_lines
from spct.memory import problems as memory_problems

log = logging.getLogger("spct")

CONFIG_FILE = "config.yaml"
# Keys whose value does not change what a run computes: a rerun may change them freely.
NEUTRAL = ("output_dir", "dry_run", "logger.", "checkpoint.max_restarts", "checkpoint.keep_last",
           "checkpoint.every_steps", "checkpoint.resume", "cluster.address", "cluster.num_cpus")
# Keys that only the phases named change: they may differ while none of those phases has started.
PHASE_KEYS = {"warmup.": ("warmup",), "rft.": ("rft",), "rl.": ("rl",), "meta_rm.": ("meta_rm",),
              "eval.split": (*GRM_PHASES, "eval"), "eval.max_items": (*GRM_PHASES, "eval"), "eval.": ("eval",),
              "policy.sft_": ("policy_sft",), "policy.model": POLICY_PHASES, "policy.tiny_preset": POLICY_PHASES,
              "policy.": ("policy_rl",)}
# The group options of the tiny demo a real-model run should not keep unawares.
TOY_OPTIONS = {"rft": ("tiny", "rft"), "rl": ("tiny", "rl"), "meta_rm": ("tiny", "meta_rm"),
               "learner": ("cpu", None)}


# ------------------------------------------------------------------------------------- sweeps
@dataclasses.dataclass(frozen=True)
class SweepJob:
    folder: str  # the subfolder of output_dir, e.g. "rl.beta=0.02"
    overrides: tuple[str, ...]  # the job's swept overrides
    group: str  # the W&B group its sweep shares


def sweep_job(argv: Sequence[str]) -> SweepJob | None:
    """The running Hydra job's place in its sweep, or None outside a sweep (-m)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    parser = OverridesParser.create()
    given = [a for a in argv if "=" in a and not a.startswith("-")]
    swept = {o.get_key_element() for o in parser.parse_overrides(given) if o.is_sweep_override()}
    job = [o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
    return SweepJob(folder=job_folder(job, HydraConfig.get().job.num), overrides=tuple(job),
                    group=",".join(sorted(swept)))


def job_folder(overrides: Sequence[str], num: int) -> str:
    """A folder name for a sweep job from its overrides (`rl.beta=0.02,rl.lr=1e-05`): path
    separators replaced, long names shortened with the job number."""
    name = ",".join(overrides) or f"job{num}"
    name = re.sub(r"[/\\:\s]+", "_", name)
    return name if len(name) <= 120 else f"{name[:100]}-job{num}"


def place_sweep_job(config: Config, job: SweepJob | None) -> Config:
    """The job's own output folder, W&B group and run name."""
    if job is None:
        return config
    base = Path(config.output_dir)
    lg = config.logger
    logger = dataclasses.replace(lg, group=lg.group or f"{base.name}:{job.group}",
                                 run_name=lg.run_name or f"{base.name}/{job.folder}",
                                 tags=lg.tags or [o[:64] for o in job.overrides])  # W&B's limit per tag
    return dataclasses.replace(config, output_dir=str(base / job.folder), logger=logger)


# ------------------------------------------------------------------------------ rerun safety
def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """A config (dataclass or mapping) as {dotted key: value}."""
    if dataclasses.is_dataclass(node):
        node = dataclasses.asdict(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping) and value:
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _matches(key: str, name: str) -> bool:
    """`name` is a key, or a prefix of keys when it ends with '.' or '_'."""
    return key == name or (name[-1] in "._" and key.startswith(name))


def _phases_of(key: str) -> tuple[str, ...] | None:
    return next((phases for name, phases in PHASE_KEYS.items() if _matches(key, name)), None)


def config_changes(saved: Mapping[str, Any], now: Mapping[str, Any], started: Sequence[str]) -> list[str]:
    """The keys whose change would make a resumed run differ from the run it resumes, each as
    "key: saved -> now". `started` are the phases completed or in progress; the settings of the
    others may change, and `phases` may go on differently after the started ones."""
    a, b = flat(saved), flat(now)
    out = []
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, "<absent>"), b.get(key, "<absent>")
        if old == new or any(_matches(key, n) for n in NEUTRAL):
            continue
        if key == "phases":
            if list(new[: len(started)]) == list(started):
                continue
        else:
            phases = _phases_of(key)
            if phases is not None and not set(phases) & set(started):
                continue
        out.append(f"{key}: {old!r} -> {new!r}")
    return out


def resume_note(config: Config, state, saved: Mapping[str, Any] | None, changes: Sequence[str]) -> str:
    """What a rerun in output_dir does, in words, for the plan."""
    if state is None:
        return "a new run"
    done = f"phases done: {', '.join(state.completed) or 'none'}"
    at = f"; at {state.phase} step {state.phase_step}" if state.phase else ""
    if config.checkpoint.resume == "fresh":
        return f"holds a run ({done}{at}); checkpoint.resume=fresh moves it aside and starts over"
    if saved is None:
        return f"resumes ({done}{at}); no {CONFIG_FILE} to compare its configuration with"
    if changes:
        return f"resumes ({done}{at}) although these keys differ (checkpoint.resume=force): " + "; ".join(changes)
    return f"resumes ({done}{at}); the configuration agrees with its {CONFIG_FILE}"


def started_phases(state) -> list[str]:
    return list(state.completed) + ([state.phase] if state.phase and state.phase not in state.completed else [])


def check_rerun(config: Config, state, saved: Mapping[str, Any] | None) -> list[str]:
    """For a run folder that holds a run (`state`): the keys that differ from its saved config
    ([] when it may resume as it is). Raises ConfigError when they differ and
    checkpoint.resume is auto."""
    if state is None or saved is None:
        return []
    changes = config_changes(saved, dataclasses.asdict(config), started_phases(state))
    if changes and config.checkpoint.resume == "auto":
        raise ConfigError(
            f"invalid configuration:\n  output_dir: {config.output_dir} holds a run made with another configuration; "
            f"these keys differ from its {CONFIG_FILE} (saved -> now):\n    " + "\n    ".join(changes)
            + "\n  Rerun with checkpoint.resume=force to resume it anyway, checkpoint.resume=fresh to start over "
            "(the old run is moved aside), or choose another output_dir.")
    return changes


def read_saved_config(out: Path) -> dict[str, Any] | None:
    from omegaconf import OmegaConf

    path = out / CONFIG_FILE
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else None


def save_config(config: Config, out: Path, saved: Mapping[str, Any] | None) -> None:
    """Write output_dir/config.yaml; a differing earlier one (a forced resume) is kept beside it."""
    from omegaconf import OmegaConf

    out.mkdir(parents=True, exist_ok=True)
    now = dataclasses.asdict(config)
    if saved is not None and flat(saved) != flat(now):
        (out / CONFIG_FILE).rename(out / f"config.before-{_stamp()}.yaml")
    write_atomic(out / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(now)))


def move_aside(out: Path) -> Path:
    """checkpoint.resume=fresh: the old run goes to <output_dir>.old-<time>, whole."""
    aside = out.with_name(f"{out.name}.old-{_stamp()}")
    shutil.move(str(out), str(aside))
    log.warning("checkpoint.resume=fresh: the run in %s was moved to %s; starting over", out, aside)
    return aside


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


# ------------------------------------------------------------------------------- warnings
def toy_defaults(config: Config, choices: Mapping[str, str | None]) -> list[str]:
    """Group options of the tiny demo that a real-model run composed without an experiment=
    preset kept (the phases it runs only)."""
    if config.model.tiny_preset is not None or config.model.path is None or choices.get("experiment"):
        return []
    kept = [f"{group}={option}" for group, (option, phase) in TOY_OPTIONS.items()
            if choices.get(group) == option and (phase is None or phase in config.phases)]
    if not kept:
        return []
    return [f"model.path={config.model.path} without an experiment= preset keeps the tiny demo's settings "
            f"({', '.join(kept)}: learning rates, batch sizes and the warm-up mix chosen for a 0.7M-parameter "
            "model); start from a preset (experiment=grm-qwen2.5-7b) or choose them (e.g. rft=paper rl=paper "
            "meta_rm=paper learner=gpu)"]


def local_capacity(config: Config) -> list[str]:
    """What a run on a local Ray (no cluster address) needs that this machine's Ray will not have:
    its engines, learner ranks and the actors beside them against the CPUs and GPUs it starts
    with (cluster.num_cpus, else every core; cluster.num_gpus)."""
    from spct.config import local_gpu_problem
    from spct.placement import layout, shortfall

    c = config.cluster
    if c.address or os.environ.get("RAY_ADDRESS"):
        return []
    node = {"CPU": float(c.num_cpus or os.cpu_count() or 1), **({"GPU": float(c.num_gpus)} if c.num_gpus else {})}
    gpu = local_gpu_problem(c)
    return [f"cluster: {p}" for p in shortfall(layout(config), [node])] + ([gpu] if gpu else [])


def run_inputs(config: Config, state) -> None:
    """What a phase needs that the config alone cannot show: the policy's GRM may be one this
    run trained (in this command or in the run being resumed)."""
    completed = state.completed if state else []
    trains_grm = set(config.phases + completed) & set(GRM_PHASES)
    if ("policy_rl" in config.phases and config.policy.reward.kind == "grm" and not config.policy.grm
            and not trains_grm):
        raise ConfigError("invalid configuration:\n  policy.grm: expected the GRM that rewards the policy "
                          "(a checkpoint folder or hub id); this run trains none")


# ------------------------------------------------------------------------------- all of it
@dataclasses.dataclass
class Preflight:
    """Everything spct.train checks before Ray starts, for one configured run."""

    config: Config
    setting_sources: dict[str, str]  # where each GRM setting came from
    state: Any  # the RunState in output_dir (None for a new run)
    saved: dict[str, Any] | None  # its config.yaml
    changes: list[str]  # keys that differ from it
    warnings: list[str]
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # local splits a dry run read
    memory: list[Need] = dataclasses.field(default_factory=list)  # each GPU actor's estimate (spct.memory)

    @classmethod
    def check(cls, config: Config, setting_sources: dict[str, str], choices: Mapping[str, str | None],
              job: SweepJob | None) -> Preflight:
        """Place a sweep's job, then check the rerun, the phases' inputs, the models and data it
        reads and what this machine can hold. Raises ConfigError naming every problem; what a
        dry run cannot know for sure (the hub out of reach, another machine's resources) are
        warnings for it."""
        from spct.config import check_sources, sources
        from spct.run_state import RunStore

        config = place_sweep_job(config, job)
        out = Path(config.output_dir)
        warnings = toy_defaults(config, choices)
        for warning in warnings:
            log.warning("%s", warning)
        state = RunStore(out / "checkpoints").read()
        saved = read_saved_config(out)
        changes = check_rerun(config, state, saved)
        run_inputs(config, state)
        warnings += check_sources(sources(config), strict=not config.dry_run)
        capacity = local_capacity(config)
        if capacity and not config.dry_run:
            raise ConfigError("invalid configuration: this machine cannot hold the run:\n  " + "\n  ".join(capacity))
        needs, unestimated = estimate(config)
        over = memory_problems(needs, config.cluster.gpu_memory_gib)
        if over and not config.dry_run:
            raise ConfigError("invalid configuration: the GPUs cannot hold the run (estimates; "
                              "`dry_run=true` prints them all):\n  " + "\n  ".join(over))
        data = read_local_data(config) if config.dry_run else {}
        return cls(config, setting_sources, state, saved, changes, warnings + capacity + unestimated + over, data,
                   needs)

    def plan(self) -> str:
        return train_plan(self.config, self.state, self.setting_sources, self.warnings,
                          resume_note(self.config, self.state, self.saved, self.changes), self.data, self.memory)

    def begin(self) -> None:
        """Before the run starts: a fresh start moves the old run aside, a forced resume says
        what differs; the configuration is saved as the run's config.yaml."""
        out = Path(self.config.output_dir)
        saved = self.saved
        if self.state is not None and self.config.checkpoint.resume == "fresh":
            move_aside(out)
            saved = None
        elif self.changes:
            log.warning("checkpoint.resume=force: resuming %s although its configuration differs:\n  %s", out,
                        "\n  ".join(self.changes))
        save_config(self.config, out, saved)


# ----------------------------------------------------------------------------------- the plan
def _phase_line(c: Config, phase: str) -> str:
    r = c.rft
    lines = {
        "warmup": lambda: f"{c.warmup.steps} SFT steps x {c.warmup.batch_size}, lr {c.warmup.lr:g}",
        "rft": lambda: (f"{r.items or 'all'} items x {r.n_samples} samples"
                        + (" + 1 hinted" if r.hinted else "") + f" from {r.teacher or 'the model being trained'}, "
                        f"{r.sft_steps} SFT steps x {r.batch_size}, lr {r.lr:g}"
                        + (f", {r.general_mix:.0%} of each batch general data" if r.general_data is not None else
                           f", {r.warmup_mix:.0%} of each batch warm-up data"
                           if r.warmup_mix and c.data.kind == "synthetic" else "")),
        "rl": lambda: (f"{c.rl.steps} GRPO steps x {c.rl.prompts_per_step} prompts x {c.rl.group_size} rollouts, "
                       f"lr {c.rl.lr:g}, beta {c.rl.beta:g}"
                       + (f", on the train items {'the warm-up checkpoint' if c.rl.prefilter_model == 'warmup' else c.rl.prefilter_model} does not judge right in all "
                          f"{c.rl.prefilter_samples} samples" if c.rl.prefilter_model else "")),
        "meta_rm": lambda: (f"{c.meta_rm.items or 'all'} items x {c.meta_rm.samples_per_item} samples, "
                            f"{c.meta_rm.steps} BCE steps x {c.meta_rm.batch_size}, lr {c.meta_rm.lr:g}"),
        "eval": lambda: f"Greedy, Voting@k and MetaRM@k up to k = {c.eval.k_max} on the {c.eval.split} split",
        "policy_sft": lambda: f"{c.policy.sft_steps} SFT steps x {c.policy.sft_batch_size} (a fresh tiny policy)",
        "policy_rl": lambda: (f"{c.policy.steps} GRPO steps x {c.policy.prompts_per_step} prompts x "
                              f"{c.policy.group_size} rollouts of {c.policy.model or 'the tiny policy'}, rewarded by "
                              + ("the program checker" if c.policy.reward.kind == "oracle" else
                                 f"{c.policy.grm or 'the GRM of this run'} ({c.policy.reward.mode} mode, k = "
                                 f"{c.policy.reward.k}" + (", MetaRM-guided" if c.policy.meta_rm else "") + ")")),
    }
    return lines[phase]()


def read_local_data(c: Config) -> dict[str, Any]:
    """The splits a dry run can read here (local files and folders; a hub dataset is read when
    the run starts), checked as the run checks them: every record, and what the phases draw."""
    from spct.config import SPLITS, split_problems
    from spct.data import DataError, load_items

    if c.data.kind != "files":
        return {}
    read = {}
    for split in SPLITS:
        if getattr(c.data, split) is None:
            continue
        src = to_source(getattr(c.data, split), f"data.{split}", c.data.format, c.data.columns)
        if Path(src.path).expanduser().exists():
            try:
                read[split] = load_items(src, skip_invalid=c.data.skip_invalid, split=split)
            except (DataError, FileNotFoundError) as e:
                raise ConfigError(f"invalid data: data.{split}: {e}") from None
    given = [s for s in SPLITS if getattr(c.data, s) is not None]
    if set(read) == set(given):
        problems = split_problems(c, read)
        if problems:
            raise ConfigError("invalid configuration for this data:\n  " + "\n  ".join(problems))
    return read


def _data_line(c: Config, split: str, read: Mapping[str, Any]) -> str:
    text = f"{split} {to_source(getattr(c.data, split), f'data.{split}', c.data.format, c.data.columns).describe(split)}"
    if split in read:
        items = read[split]
        left = [f"{n} {reason}" for reason, n in items.dropped.items()] + (
            [f"{items.skipped} invalid"] if items.skipped else [])
        text += f": {len(items)} items ({items.format}" + (f"; left out: {', '.join(left)}" if left else "") + ")"
    return text


def train_plan(c: Config, state, sources: Mapping[str, str], warnings: Sequence[str], resume_note: str,
               read: Mapping[str, Any] | None = None, memory: Sequence[Need] = ()) -> str:
    """What `python -m spct.train ...` would do, in words (dry_run=true prints it)."""
    from spct.placement import actor_plan, layout, meta_rm_bundle

    m = c.model
    model = f"tiny preset {m.tiny_preset!r} (built from scratch)" if m.path is None else m.path
    settings = ", ".join(f"{key} {getattr(m, key)}" for key in sources)
    by = {}
    for key, source in sources.items():
        by.setdefault(source, []).append(key)
    data = (f"the synthetic task: train {c.data.train_size}, validation {c.data.validation_size}, test "
            f"{c.data.test_size}" if c.data.kind == "synthetic" else
            "; ".join(_data_line(c, s, read or {}) for s in ("train", "validation", "test") if getattr(c.data, s)))
    lay = layout(c)
    bundles = [f"bundle {i}: {role} ({', '.join(f'{v:g} {k}' for k, v in res.items())})"
               for i, (role, res) in enumerate(lay.roles()[: len(lay.bundles)])]
    beside = [f"beside: {role} ({', '.join(f'{v:g} {k}' for k, v in res.items())})" for role, res in lay.extras]
    samplers = [name for name in ("RFT teacher", "RL pre-filter")
                if any(f"{name} engine 0" in roles for roles in actor_plan(c, lay).values())]
    if samplers:
        beside.append(f"the rollout engines' bundles, while no learner runs: {', '.join(samplers)} engines")
    meta = [f"{p}: {'bundle ' + str(b) if (b := meta_rm_bundle(lay, p)) is not None else 'beside the group'}"
            for p in ("meta_rm", "eval", "policy_rl") if p in c.phases]
    where = (c.cluster.address or os.environ.get("RAY_ADDRESS") or
             f"a local Ray ({c.cluster.num_cpus or 'all'} CPUs, {c.cluster.num_gpus} GPUs)")
    out = [
        "spct.train plan (dry_run: nothing started)",
        f"  output_dir  {c.output_dir}: {resume_note}",
        f"  model       {model}",
        f"  GRM         {settings}",
        "              (" + "; ".join(f"{source}: {', '.join(keys)}" for source, keys in by.items()) + ")",
        f"  data        {data}",
        "  phases      " + "\n              ".join(f"{p}: {_phase_line(c, p)}" for p in c.phases),
        f"  cluster     {where}; {c.cluster.nodes} node(s); {lay.reservation()}",
        "  placement   " + "\n              ".join(bundles + beside),
    ]
    if meta:
        out.append("  meta RM     " + "; ".join(meta))
    out += plan_lines(list(memory), c.cluster.gpu_memory_gib)
    out.append(f"  seed {c.seed}, logger {c.logger.kind}" + (f" (group {c.logger.group})" if c.logger.group else ""))
    out += [f"  warning     {w}" for w in warnings]
    return "\n".join(out)
