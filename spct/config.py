"""Typed configuration: every default lives here, once; conf/ only says what differs.

Hydra composes the YAML files in conf/ over these dataclasses (registered as the schema), so a
misspelt key or a wrong type fails at start-up naming the key. `validate` then checks every
value and the relations between fields before Ray or any actor starts. Defaults are the paper's
settings for real models; the embedded default (conf/config.yaml) overrides them for a tiny
model on CPU.

The three commands share one schema family: `spct.train` (Config), `spct.evaluate`
(EvaluateConfig, spct/evaluate/command.py) and `spct.serve` (ServeConfig, spct/serve/config.py) are
built from the same sections (ModelConfig, RolloutConfig, ClusterConfig, LoggerConfig) and
checked by the same section checks (`check_model`, `check_rollout`, ...).

A GRM's settings (`ModelConfig.template`, `single_template`, `dtype`, `max_model_len`,
`max_new_tokens`) left null come from the checkpoint's card (spct/card.py: every model spct saves
records them), else from GRM_DEFAULTS; a value set anywhere in the configuration wins, with a
warning when the card disagrees.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("spct")

# The configuration groups: spct/conf, which links to the repository's conf/ and holds a copy of
# it in an installed package.
CONF_DIR = Path(__file__).resolve().parent / "conf"

PHASES = ("warmup", "rft", "rl", "meta_rm", "eval", "policy_sft", "policy_rl")
# Phases that change the GRM's weights; each is followed by a held-out greedy evaluation.
GRM_PHASES = ("warmup", "rft", "rl")
# Phases that train a policy with a frozen GRM.
POLICY_PHASES = ("policy_sft", "policy_rl")
# What vLLM serves; the learner trains float32 or bfloat16 only (spct.learner.spec.DTYPES).
DTYPES = ("float32", "bfloat16", "float16")
SPLITS = ("train", "validation", "test")


@dataclass
class ModelConfig:
    """The GRM: where its weights are, and how it is prompted and run.

    The settings below, left null, take what the checkpoint's card records (spct.json, written
    beside every model spct saves), else GRM_DEFAULTS."""

    # A local folder or a hub id; or null with `tiny_preset` to build a tiny model from scratch.
    path: str | None = None
    tiny_preset: str | None = None
    dtype: str | None = None
    max_model_len: int | None = None  # context (prompt + critique) in tokens
    max_new_tokens: int | None = None  # critique length
    # GRM prompt templates: a built-in name (spct/grm/templates) or a path to a .j2 file; the
    # single one for items with one response in training (its 0/1 verdict).
    template: str | None = None
    single_template: str | None = None


# A GRM's settings where neither the configuration nor its checkpoint's card gives them.
GRM_DEFAULTS: dict[str, Any] = {"template": "default", "single_template": "single", "dtype": "bfloat16",
                                "max_model_len": 4096, "max_new_tokens": 1024}


@dataclass
class MetaRMRef:
    """A trained meta RM to score with (spct.evaluate, spct.serve): null settings take its card's,
    else the defaults (max_length 4096, the GRM's dtype)."""

    path: str | None = None
    max_length: int | None = None
    dtype: str | None = None
    # The Jinja file its input is framed by (prompt, completion); null: its card's, else the
    # GRM conversation in the tokenizer's chat (docs/architecture.md, the meta_rm phase).
    input_template: str | None = None


@dataclass
class DataConfig:
    kind: str = "synthetic"  # synthetic | files
    # For kind=files, each split: a local file or folder or a hub dataset id, or a mapping of
    # spct.data.Source's fields {path, split, subset, data_dir, revision, data_files, format,
    # columns} (docs/data.md). format and columns here are every split's defaults.
    train: Any = None
    validation: Any = None
    test: Any = None
    format: str | None = None
    columns: Any = None  # {the format's key: your key}, e.g. 'data.columns={prompt:question}'
    skip_invalid: bool = False
    # For kind=synthetic: split sizes and the task's shape (fields of SyntheticConfig).
    train_size: int = 20000
    validation_size: int = 500
    test_size: int = 500
    task: dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutConfig:
    num_engines: int = 1
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.6
    kv_cache_gib: float = 1.0  # CPU engines only
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    num_cpus_per_engine: float = 1.0
    # CPU only: torch threads per engine (0 = Ray's default, one per reserved CPU).
    num_threads: int = 0
    # KV-cache block (tokens); null = vLLM's default for the device (CPU: 128, a multiple of 32).
    block_size: int | None = None
    # GPUs: engine i shares learner rank i's GPU (half each in Ray's accounting); the engines
    # sleep (weights offloaded, KV cache freed) while the learner trains, and weights move
    # through the Ray object store (NCCL cannot join two processes on one device).
    colocate: bool = False


@dataclass
class LearnerConfig:
    num_ranks: int = 1
    zero_stage: int = 2
    micro_batch_size: int = 4
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    lr_schedule: str = "constant"
    gradient_checkpointing: bool = False
    num_cpus_per_rank: float = 1.0
    # CPU only: torch threads per rank (0 = Ray's default, one per reserved CPU).
    num_threads: int = 0
    # GRPO: run each prompt once for its group of rollouts (same loss and gradients, less work).
    share_prefix: bool = True


@dataclass
class WarmupConfig:
    """SFT on programmatic trajectories of the synthetic task (format teaching, tiny models)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    noise: float = 0.3
    # Probability that the warm-up critic computes a carrying sum without the carry (8+9=7):
    # carry_slip when the units digits sum to 10, rising linearly to carry_slip_max (null: the
    # same) when they sum to 18.
    carry_slip: float = 0.0
    carry_slip_max: float | None = None
    checks_min: int = 2
    checks_max: int = 2


@dataclass
class RFTConfig:
    # The trajectory sampler: null = the model being trained (its state when RFT starts), or any
    # local path / hub id of a frozen GRM, served by a GRM reward pool.
    teacher: str | None = None
    items: int = 0  # 0 = the whole train split
    n_samples: int = 3  # N_RFT
    temperature: float = 1.0
    hinted: bool = True
    # Hint only items whose meta.preference_strength (HelpSteer2/3: 1..3) is at least this;
    # 0 = every item (items without a strength are always hinted).
    hint_min_strength: int = 0
    sft_steps: int = 900
    batch_size: int = 1024
    lr: float = 5e-6
    warmup_steps: int = 0
    generate_batch: int = 256
    # Share of each fine-tuning batch drawn from the warm-up data, as the paper mixes its accepted
    # trajectories with general instruction data (synthetic task only; other data ignores it,
    # with a warning).
    warmup_mix: float = 0.0
    # General instruction data mixed into the fine-tuning batches, as the paper mixes 1,070K
    # general conversations with 186K of reward data: any source data.train takes (a path, a hub
    # id, or {path, subset, split, format, columns}); each item's best response is the target.
    # general_mix is its share of each batch (the paper's: about 0.85).
    general_data: Any = None
    general_mix: float = 0.85


@dataclass
class RLConfig:
    steps: int = 900
    prompts_per_step: int = 128
    group_size: int = 4
    beta: float = 0.08
    kl_kind: str = "k3"
    clip_eps: float = 0.2
    # The upper clip of the importance ratio, 1 + clip_eps_high (DAPO's clip-higher; veRL's
    # clip_ratio_high, TRL's epsilon_high); null = clip_eps (symmetric).
    clip_eps_high: float | None = None
    lr: float = 4e-7
    temperature: float = 1.0
    warmup_steps: int = 0
    # Generate step t + 1's rollouts while the learner trains on step t (one-step off-policy).
    async_generation: bool = False
    # Before RL, leave out the train items a weaker GRM already judges right in each of
    # prefilter_samples samples (the paper: 3 of 3): they teach nothing. prefilter_model is a
    # path or hub id, or "warmup" (this run's warm-up checkpoint); null = no pre-filter.
    prefilter_model: str | None = None
    prefilter_samples: int = 3


@dataclass
class MetaRMConfig:
    """The meta RM: a scalar head trained with BCE to tell correct GRM trajectories (Eq. 10)."""

    model: str | None = None  # null = the trained GRM's backbone with a fresh head
    items: int = 0  # train items the trained GRM samples for it (0 = the whole train split)
    samples_per_item: int = 3
    temperature: float = 0.5
    use_rft: bool = True  # add the non-hinted RFT trajectories (the GRM's earlier mistakes)
    # BCE target of a neutral trajectory (every response scored the same: it cannot move a vote).
    # 0 is Eq. 10's label, which teaches the meta RM to rank every neutral verdict below the
    # misleading ones, so MetaRM@k drops the harmless ones first; 0.5 lets it drop misleading ones.
    neutral_label: float = 0.0
    validation_items: int = 0  # held-out items for ROC-AUC (0 = the whole validation split)
    steps: int = 300
    batch_size: int = 512
    lr: float = 1e-5
    warmup_steps: int = 0
    max_length: int = 4096
    # A Jinja file framing each trajectory for the meta RM (variables prompt, completion);
    # null: the GRM conversation in the tokenizer's chat. It travels in the saved meta RM.
    input_template: str | None = None


@dataclass
class PolicyRewardConfig:
    """How a policy rollout is rewarded (the policy_rl phase)."""

    # grm: the GRM reward pool votes; oracle: the program checker's share of right sums
    # (synthetic task only), the ceiling a perfect reward model would give.
    kind: str = "grm"
    # group: the G rollouts of a prompt are judged together in one GRM prompt (n = G, SPCT's
    # native pointwise mode); single: each rollout alone (n = 1).
    mode: str = "group"
    k: int = 1  # GRM samples voted per GRM prompt (1: greedy)
    temperature: float = 0.5  # of the GRM samples when k > 1
    k_meta: int | None = None  # with policy.meta_rm: samples the meta RM keeps (null = k / 2)
    # Synthetic task: an answer not in the task's format (the query's sums restated in order,
    # `a+b=c ; ...`) gets reward 0 whatever the GRM says, as RL recipes pair a model reward with
    # a rule-based format reward: a GRM never saw such answers and can be exploited by them.
    format_gate: bool = True
    # Group mode: a query's vote counts only when at least this share of the counted GRM samples
    # prefer its winner (spct.grm.voting.consensus); below it the vote abstains and the query's
    # rollouts get equal rewards (no advantage). 0: every vote counts.
    abstain: float = 0.0
    # Streaming: the step's prompts are generated in this many chunks, and each chunk's rollouts
    # go to the GRM as soon as they are done, so GRM sampling overlaps the rest of generation
    # (1: judge after the whole batch). GRM seeds then follow each judged item, not its place.
    stream_chunks: int = 1


@dataclass
class PolicyConfig:
    """A policy trained by GRPO with the GRM as its reward (phases policy_sft, policy_rl).

    Defaults suit a real instruct model as the policy; experiment=policy sets the tiny CPU run."""

    model: str | None = None  # a local folder or hub id; null = a tiny model (tiny_preset)
    tiny_preset: str = "demo"
    # The GRM that rewards the policy: null = this run's latest GRM weights (after the rl phase:
    # rl-final); the meta RM that guides its votes (MetaRM@k): null = none.
    grm: str | None = None
    meta_rm: str | None = None
    grm_engines: int = 1
    reward: PolicyRewardConfig = field(default_factory=PolicyRewardConfig)
    # policy_sft: teach a fresh tiny policy the answer format on answers whose sums are each
    # right with probability sft_p_right (synthetic task), so RL starts from a policy that slips.
    sft_steps: int = 400
    sft_batch_size: int = 64
    sft_lr: float = 2e-3
    sft_p_right: float = 0.5
    # policy_rl: GRPO.
    steps: int = 300
    prompts_per_step: int = 64
    group_size: int = 4
    lr: float = 1e-6
    beta: float = 0.04
    kl_kind: str = "k3"
    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # as rl.clip_eps_high
    # Divide each group's advantages by its reward std (GRPO) or not (Dr. GRPO): with small
    # groups and a noisy reward, dividing gives a near-tie the weight of a decisive verdict.
    scale_advantages: bool = False
    temperature: float = 1.0
    max_new_tokens: int = 1024
    # Held-out checked accuracy (synthetic task): eval_items prompts of eval_split, eval_samples
    # samples each at the rollout temperature, before RL and every eval_every steps.
    eval_split: str = "test"
    eval_items: int = 300
    eval_samples: int = 4
    eval_every: int = 10


@dataclass
class EvalConfig:
    split: str = "test"
    max_items: int = 0  # 0 = all
    # Inference-time scaling (the eval phase): k_max samples per item at this temperature.
    k_max: int = 8
    temperature: float = 0.5
    k_meta_ratio: float = 0.5
    bootstrap: int = 1000  # resamples behind each confidence interval


@dataclass
class ClusterConfig:
    address: str | None = None  # null = join RAY_ADDRESS if set, else start a local Ray; "auto" = the running one
    num_cpus: int | None = None  # a local Ray's CPUs (a joined cluster's nodes declare their own)
    num_gpus: int = 0  # > 0: engines, learner ranks and the meta RM take GPUs
    nodes: int = 1  # live nodes the run expects; it stops before starting actors if fewer are up
    placement_strategy: str = "PACK"  # engines + learner ranks: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD
    gpu_memory_gib: float = 80.0  # each GPU's memory: the plan's estimate of every actor must fit it (spct.memory)

    def gpus(self, n: float, shared: bool = False) -> float:
        """The GPU switch: what one engine (n = its tensor-parallel size), learner rank or meta RM
        (n = 1) asks Ray for. None on a CPU cluster; half of one each when an engine and a learner
        rank share it (rollout.colocate)."""
        if not self.num_gpus:
            return 0
        return 0.5 if shared else n


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # wandb | none (a metrics.jsonl is always written)
    project: str = "spct"
    entity: str | None = None
    run_name: str | None = None
    group: str | None = None  # null: the sweep's folder name for the jobs of a sweep (-m), else none
    tags: list[str] = field(default_factory=list)  # a sweep's job gets its swept overrides
    mode: str = "auto"  # auto (offline without an API key) | online | offline


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0 = only at the end of each phase
    keep_last: int = 2
    max_restarts: int = 0  # an actor or node fault resumes from the last checkpoint this many times
    # A rerun in an output_dir that holds a run: auto = resume it if its saved config.yaml agrees
    # (outside the keys that do not change results), else refuse naming the keys that differ;
    # force = resume it anyway; fresh = move it aside (to <output_dir>.old-<time>) and start over.
    resume: str = "auto"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    rft: RFTConfig = field(default_factory=RFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    meta_rm: MetaRMConfig = field(default_factory=MetaRMConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    phases: list[str] = field(default_factory=lambda: ["rft", "rl"])
    # null: outputs/<experiment> (outputs/spct-default without one); the jobs of a sweep (-m) each
    # get a subfolder named by their swept overrides.
    output_dir: str | None = None
    seed: int = 0
    # Check the command (composition, every value, paths, the resume) and print the plan: what
    # would run where, with which settings; start nothing.
    dry_run: bool = False


class ConfigError(ValueError):
    pass


def engine_kwargs(model: ModelConfig, rollout: RolloutConfig, seed: int) -> dict[str, Any]:
    """Flat VLLMEngine arguments from the config (rollout engines and reward pools alike)."""
    return dict(dtype=model.dtype, max_model_len=model.max_model_len, seed=seed, enable_sleep_mode=rollout.colocate,
                tensor_parallel_size=rollout.tensor_parallel_size,
                gpu_memory_utilization=rollout.gpu_memory_utilization, kv_cache_gib=rollout.kv_cache_gib,
                enforce_eager=rollout.enforce_eager, enable_prefix_caching=rollout.enable_prefix_caching,
                num_threads=rollout.num_threads, block_size=rollout.block_size)


def default_output_dir() -> str:
    """outputs/<experiment> for a command that chose an experiment preset, else
    outputs/spct-default: the `spct_default_output_dir` resolver of conf/config.yaml, so a preset
    that names no output_dir still gets a folder of its own."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        experiment = HydraConfig.get().runtime.choices.get("experiment")
        if experiment:
            return f"outputs/{experiment}"
    return "outputs/spct-default"


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="spct_schema", node=Config)
    if not OmegaConf.has_resolver("spct_default_output_dir"):
        OmegaConf.register_new_resolver("spct_default_output_dir", default_output_dir)


def structured(schema: type, cfg: DictConfig | Mapping[str, Any]) -> Any:
    """A composed config (or a plain dict) merged onto a schema dataclass: a misspelt key or a
    wrong type fails naming the key. A plain container is merged, so that keys added with
    Hydra's `+key=value` are checked too."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), plain))


def load_config(cfg: DictConfig | dict) -> tuple[Config, dict[str, str]]:
    """Merge onto the schema, take the GRM's settings from its checkpoint's card where the
    config leaves them null, then validate every value and the relations between them.
    Returns the config and where each GRM setting came from (spct.card.resolve)."""
    config: Config = structured(Config, cfg)
    setting_sources = resolve_model(config.model)
    validate(config)
    return config, setting_sources


def to_config(cfg: DictConfig | dict) -> Config:
    """`load_config`'s config."""
    return load_config(cfg)[0]


def path_shorthand(argv: list[str], keys: tuple[str, ...] = ("model", "meta_rm")) -> list[str]:
    """`model=PATH` and `meta_rm=PATH` on the command line mean `model.path=PATH` and
    `meta_rm.path=PATH` (spct.evaluate, spct.serve)."""
    return [f"{a.split('=', 1)[0]}.path={a.split('=', 1)[1]}" if a.split("=", 1)[0] in keys and "=" in a else a
            for a in argv]


# ------------------------------------------------------------------------ settings from cards
def _local(path: str | None) -> str | None:
    """`path` expanded when it names an existing local file or folder, else None (a hub id)."""
    if not path:
        return None
    expanded = os.path.expanduser(path)
    return expanded if os.path.exists(expanded) else None


def resolve_model(m: ModelConfig, prefix: str = "model.") -> dict[str, str]:
    """Fill `m`'s null GRM settings from its checkpoint's card, else GRM_DEFAULTS; a set value
    the card disagrees with is kept, with a warning. Returns where each setting came from
    ("set", "checkpoint" or "default")."""
    from spct.card import CardError, resolve

    try:
        values, sources, warnings = resolve({k: getattr(m, k) for k in GRM_DEFAULTS}, _local(m.path), GRM_DEFAULTS,
                                            prefix)
    except CardError as e:
        raise ConfigError(f"invalid configuration:\n  {prefix}path: {e}") from None
    for key, value in values.items():
        setattr(m, key, value)
    defaulted = [k for k, source in sources.items() if source == "default"]
    if _local(m.path) and defaulted:  # a local model spct did not save: say what it was given
        warnings.append(f"{m.path} has no spct.json card (a model spct did not save): "
                        + ", ".join(f"{prefix}{k}={values[k]}" for k in defaulted)
                        + " are the defaults; set them if it was trained with others")
    for warning in warnings:
        log.warning("%s", warning)
    return sources


def grm_settings(path: str, base: ModelConfig) -> ModelConfig:
    """How to serve the frozen GRM at `path` (an RFT teacher, a policy's reward GRM): what its
    card records, else `base`'s settings (the run's own GRM)."""
    from spct.card import card_settings, read_card

    out = dataclasses.replace(base, path=path, tiny_preset=None)
    local = _local(path)
    record = read_card(local)
    if record and record["role"] == "grm":
        card = card_settings(record, local)
        for key in GRM_DEFAULTS:
            if card.get(key) is not None:
                setattr(out, key, card[key])
    return out


def resolve_meta_rm(ref: MetaRMRef, dtype: str, max_length: int = 4096, prefix: str = "meta_rm.") -> None:
    """Fill a meta RM's null settings from its card, else `max_length` and the GRM's `dtype`."""
    from spct.card import CardError, resolve

    try:
        values, _, warnings = resolve({"max_length": ref.max_length, "dtype": ref.dtype,
                                       "input_template": ref.input_template}, _local(ref.path),
                                      {"max_length": max_length, "dtype": dtype, "input_template": None}, prefix)
    except CardError as e:
        raise ConfigError(f"invalid configuration:\n  {prefix}path: {e}") from None
    ref.max_length, ref.dtype, ref.input_template = values["max_length"], values["dtype"], values["input_template"]
    problem = meta_input_problem(ref.input_template)
    if problem:
        raise ConfigError(f"invalid configuration:\n  {prefix}input_template: {problem}")
    for warning in warnings:
        log.warning("%s", warning)


def meta_input_problem(path: str | None) -> str | None:
    """Why a meta RM input template cannot frame a trajectory (it must render `prompt` and
    `completion`, and nothing else it needs may be missing), or None."""
    if path is None:
        return None
    import jinja2

    from spct.grm.template import compile_file

    try:
        text = compile_file(path).render(prompt="PROMPT", completion="COMPLETION")
    except jinja2.TemplateError as e:
        return f"{path}: {e}"
    except (OSError, ValueError) as e:  # these name the file (and line)
        return str(e)
    missing = [v for v in ("PROMPT", "COMPLETION") if v not in text]
    if missing:
        return f"{path}: expected a template that shows {{{{ prompt }}}} and {{{{ completion }}}}; it leaves out " + \
            " and ".join(v.lower() for v in missing)
    return None


# ------------------------------------------------------------------------------ checks
class Checks:
    """Collects every problem of a configuration, to report them all at once."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def need(self, ok: bool, key: str, expected: str) -> None:
        if not ok:
            self.errors.append(f"{key}: expected {expected}")

    def done(self, what: str = "configuration") -> None:
        if self.errors:
            raise ConfigError(f"invalid {what}:\n  " + "\n  ".join(self.errors))


def numbers(node: Any, prefix: str = "") -> Iterator[tuple[str, int | float]]:
    """(dotted key, value) for every number set in a config, lists' entries as key[i]."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            yield from numbers(value, key + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, value
        elif isinstance(value, (list, tuple)):
            yield from ((f"{key}[{i}]", v) for i, v in enumerate(value)
                        if isinstance(v, (int, float)) and not isinstance(v, bool))


def check_numbers(ch: Checks, node: Any, positive: frozenset[str], prefix: str = "") -> None:
    """Every number finite and >= 0; those named in `positive` > 0."""
    for key, value in numbers(node, prefix):
        if not math.isfinite(value):
            ch.need(False, key, f"a finite number, got {value}")
        elif key in positive:
            ch.need(value > 0, key, f"> 0, got {value}")
        else:
            ch.need(value >= 0, key, f">= 0, got {value}")


def one_of(ch: Checks, value: Any, allowed: tuple, key: str) -> None:
    ch.need(value in allowed, key, f"one of {', '.join(map(str, allowed))}, got {value!r}")


def model_positions(path: str | None) -> int | None:
    """max_position_embeddings of a local HF model folder's config.json (None when unknown)."""
    local = _local(path)
    config = Path(local) / "config.json" if local else None
    if config is None or not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    data = data.get("text_config", data)  # multimodal configs nest the language model's
    value = data.get("max_position_embeddings")
    return value if isinstance(value, int) else None


def check_model(ch: Checks, m: ModelConfig, prefix: str = "model.", trains: bool = False, gpus: int = 0) -> None:
    """A GRM's settings (after `resolve_model`): closed sets, its templates, its context against
    the critique length and against the positions the model has."""
    from spct.grm import load_template

    ch.need(m.path is not None or m.tiny_preset is not None, f"{prefix}path",
            "a local folder or hub id" + (" (or model.tiny_preset)" if prefix == "model." else ""))
    one_of(ch, m.dtype, DTYPES, f"{prefix}dtype")
    if m.dtype == "float16" and trains:
        ch.need(False, f"{prefix}dtype", "float32 or bfloat16 to train (the learner keeps no float16 loss "
                "scaling); float16 only serves a GRM (spct.evaluate, spct.serve) on GPUs")
    elif m.dtype == "float16" and not gpus:
        ch.need(False, f"{prefix}dtype", "float32 or bfloat16 on CPU (float16 needs GPUs: cluster.num_gpus > 0)")
    for key in ("template", "single_template"):
        try:
            load_template(getattr(m, key))
        except (OSError, ValueError) as e:
            ch.errors.append(f"{prefix}{key}: {e}")
    if m.max_new_tokens and m.max_model_len:
        ch.need(m.max_new_tokens < m.max_model_len, f"{prefix}max_new_tokens",
                f"below {prefix}max_model_len ({m.max_model_len}) to leave room for the prompt, got {m.max_new_tokens}")
    positions = model_positions(m.path)
    if positions and m.max_model_len:
        ch.need(m.max_model_len <= positions, f"{prefix}max_model_len",
                f"at most {positions} (max_position_embeddings in {m.path}/config.json), got {m.max_model_len}")


def check_rollout(ch: Checks, r: RolloutConfig, gpus: int, learner_ranks: int | None = None) -> None:
    ch.need(r.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization", "a share in (0, 1]")
    if not gpus:
        ch.need(r.tensor_parallel_size == 1, "rollout.tensor_parallel_size",
                f"1 on CPU (tensor parallelism needs GPUs: cluster.num_gpus > 0), got {r.tensor_parallel_size}")
    if r.colocate:
        ch.need(gpus > 0, "rollout.colocate", "a GPU cluster (cluster.num_gpus > 0)")
        if learner_ranks is not None:
            ch.need(r.num_engines <= learner_ranks and r.tensor_parallel_size == 1, "rollout.colocate",
                    "num_engines <= learner.num_ranks and tensor_parallel_size 1 (one engine per learner GPU)")


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
LOGGERS, LOGGER_MODES = ("wandb", "none"), ("auto", "online", "offline")
RESUME = ("auto", "force", "fresh")
KL_KINDS = ("k1", "k2", "k3")


def check_cluster(ch: Checks, c: ClusterConfig) -> None:
    one_of(ch, c.placement_strategy, PLACEMENT_STRATEGIES, "cluster.placement_strategy")
    ch.need(c.gpu_memory_gib > 0, "cluster.gpu_memory_gib", f"each GPU's memory in GiB (> 0), got {c.gpu_memory_gib}")


def check_logger(ch: Checks, lg: LoggerConfig) -> None:
    one_of(ch, lg.kind, LOGGERS, "logger.kind")
    one_of(ch, lg.mode, LOGGER_MODES, "logger.mode")


def _validate_policy(c: Config, ch: Checks) -> None:
    need = ch.need
    pc, rw = c.policy, c.policy.reward
    if "policy_sft" in c.phases and c.data.kind == "synthetic":
        need(pc.model is None, "policy.model", "null with 'policy_sft' on the synthetic task (it teaches a fresh "
             "tiny policy the task's answer format)")
    one_of(ch, rw.kind, ("grm", "oracle"), "policy.reward.kind")
    need(rw.kind != "oracle" or c.data.kind == "synthetic", "policy.reward.kind",
         "'grm' unless data.kind=synthetic (the oracle is the synthetic task's checker)")
    one_of(ch, rw.mode, ("group", "single"), "policy.reward.mode")
    need(rw.k_meta is None or 1 <= rw.k_meta <= rw.k, "policy.reward.k_meta", f"null or in [1, k = {rw.k}]")
    need(rw.k_meta is None or pc.meta_rm is not None, "policy.reward.k_meta", "policy.meta_rm to be set")
    need(0 <= rw.abstain <= 1, "policy.reward.abstain", "in [0, 1]")
    need(rw.abstain == 0 or rw.mode == "group", "policy.reward.abstain", "0 unless policy.reward.mode=group (a "
         "vote abstains between the rollouts it judges together)")
    need(rw.stream_chunks == 1 or not c.rollout.colocate, "policy.reward.stream_chunks",
         "1 with rollout.colocate (colocated engines sleep between calls, so chunks cannot queue)")
    need(pc.group_size >= 2, "policy.group_size", ">= 2 (a group of one has no baseline)")
    one_of(ch, pc.kl_kind, KL_KINDS, "policy.kl_kind")
    one_of(ch, pc.eval_split, SPLITS, "policy.eval_split")
    if "policy_rl" in c.phases and c.model.max_model_len:
        need(pc.max_new_tokens < c.model.max_model_len, "policy.max_new_tokens",
             f"below model.max_model_len ({c.model.max_model_len}, the policy engines' context), got {pc.max_new_tokens}")


# Numbers that must be > 0; every other number in the config must be >= 0 (and finite).
POSITIVE = frozenset("""
    model.max_model_len model.max_new_tokens rollout.num_engines rollout.tensor_parallel_size
    rollout.gpu_memory_utilization rollout.kv_cache_gib rollout.block_size learner.num_ranks
    learner.micro_batch_size warmup.steps warmup.batch_size warmup.lr warmup.checks_min
    rft.n_samples rft.sft_steps rft.batch_size rft.lr rft.generate_batch
    rl.steps rl.prompts_per_step rl.lr rl.clip_eps rl.prefilter_samples
    meta_rm.samples_per_item meta_rm.steps meta_rm.batch_size meta_rm.lr meta_rm.max_length
    eval.k_max eval.bootstrap eval.k_meta_ratio
    policy.grm_engines policy.reward.k policy.reward.k_meta policy.reward.stream_chunks policy.sft_steps policy.sft_batch_size
    policy.sft_lr policy.steps policy.prompts_per_step policy.lr policy.clip_eps policy.max_new_tokens
    policy.eval_samples checkpoint.keep_last cluster.nodes cluster.num_cpus
""".split())
# Phases that start a learner (and so train in model.dtype).
TRAINING_PHASES = ("warmup", "rft", "rl", "meta_rm", "policy_sft", "policy_rl")


def validate(c: Config) -> None:
    """Every value and every relation between values the run, its learner or its engines would
    refuse later, named by key. Raises ConfigError listing them all."""
    from spct.data import FORMATS, DataError, to_source
    from spct.data.synthetic import SyntheticConfig
    from spct.learner.spec import refusals

    ch = Checks()
    need = ch.need
    check_numbers(ch, c, POSITIVE)
    need(bool(c.output_dir), "output_dir", "a folder for the run")
    need(all(b < 1 for b in c.learner.betas) and len(c.learner.betas) == 2, "learner.betas",
         "two values in [0, 1)")
    need(c.policy.sft_p_right <= 1, "policy.sft_p_right", "a probability in [0, 1]")

    for p in c.phases:
        need(p in PHASES, "phases", f"names from {list(PHASES)}, got {p!r}")
    need(len(set(c.phases)) == len(c.phases), "phases", "each phase once")
    need(bool(c.phases), "phases", "at least one phase")
    trains = bool(set(c.phases) & set(TRAINING_PHASES))
    check_model(ch, c.model, trains=trains, gpus=c.cluster.num_gpus)
    check_rollout(ch, c.rollout, c.cluster.num_gpus, c.learner.num_ranks)
    check_cluster(ch, c.cluster)
    check_logger(ch, c.logger)
    one_of(ch, c.checkpoint.resume, RESUME, "checkpoint.resume")
    if trains:
        keys = {"zero_stage": "learner.zero_stage", "dtype": "model.dtype", "lr_schedule": "learner.lr_schedule"}
        for name, expected in refusals(c.learner.zero_stage, c.model.dtype, c.learner.lr_schedule):
            if not (name == "dtype" and c.model.dtype not in DTYPES):  # reported above
                need(False, keys[name], expected)

    one_of(ch, c.data.kind, ("synthetic", "files"), "data.kind")
    need(c.data.format is None or c.data.format in FORMATS, "data.format",
         f"null (detected from the keys) or one of {', '.join(FORMATS)}, got {c.data.format!r}")
    if c.data.kind == "synthetic":
        for split in SPLITS:
            need(getattr(c.data, split) is None, f"data.{split}", "null with data.kind=synthetic (the synthetic task "
                 f"makes its own splits); add data=files to read {getattr(c.data, split)!r}")
    if c.data.kind == "files":
        for split in SPLITS:
            if getattr(c.data, split) is not None:
                try:
                    to_source(getattr(c.data, split), f"data.{split}", c.data.format, c.data.columns)
                except DataError as e:
                    need(False, f"data.{split}" + (f".{e.field}" if e.field else ""), e.expected)
    task_fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    for key in sorted(set(c.data.task) - task_fields):
        need(False, f"data.task.{key}", f"a field of the synthetic task ({', '.join(sorted(task_fields))})")
    need("warmup" not in c.phases or c.data.kind == "synthetic",
         "phases", "'warmup' only with data.kind=synthetic (it writes synthetic trajectories)")
    one_of(ch, c.eval.split, SPLITS, "eval.split")
    if c.data.kind == "files":
        need(c.data.train is not None or not set(c.phases) - {"eval"}, "data.train",
             "a dataset path or hub name (the training phases draw from it)")
        if "eval" in c.phases:
            need(getattr(c.data, c.eval.split) is not None, f"data.{c.eval.split}",
                 f"a dataset path or hub name: the eval phase scores eval.split={c.eval.split!r}")
    need(c.rft.hint_min_strength <= 3, "rft.hint_min_strength", "a preference strength in 0..3 (0: hint every item)")
    need(c.rl.group_size >= 2, "rl.group_size", ">= 2 (a group of one has no baseline)")
    for key, high, low in (("rl", c.rl.clip_eps_high, c.rl.clip_eps), ("policy", c.policy.clip_eps_high,
                                                                       c.policy.clip_eps)):
        need(high is None or high >= low, f"{key}.clip_eps_high", f"null or >= {key}.clip_eps ({low:g}), got {high}")
    need(c.rl.prefilter_model != "warmup" or "warmup" in c.phases or "rl" not in c.phases, "rl.prefilter_model",
         "a path or hub id: 'warmup' names this run's warm-up checkpoint, and phases has no warmup")
    one_of(ch, c.rl.kl_kind, KL_KINDS, "rl.kl_kind")
    need(c.rft.warmup_mix < 1, "rft.warmup_mix", "a share in [0, 1)")
    need(0 <= c.rft.general_mix < 1, "rft.general_mix", "a share in [0, 1)")
    need(c.rft.general_data is None or not c.rft.warmup_mix or c.data.kind != "synthetic", "rft.general_data",
         "null when rft.warmup_mix > 0 on the synthetic task (one source of mixed-in data: set rft.warmup_mix=0)")
    need(c.eval.k_meta_ratio <= 1, "eval.k_meta_ratio", "in (0, 1]")
    need(c.meta_rm.neutral_label <= 1, "meta_rm.neutral_label", "a target in [0, 1]")
    if "meta_rm" in c.phases and (problem := meta_input_problem(c.meta_rm.input_template)):
        ch.errors.append(f"meta_rm.input_template: {problem}")
    after_eval = c.phases[c.phases.index("eval") + 1:] if "eval" in c.phases else []
    need(set(after_eval) <= set(POLICY_PHASES), "phases", "'eval' after the GRM phases (only policy "
         "phases may follow it)")
    _validate_policy(c, ch)
    need(c.warmup.checks_min <= c.warmup.checks_max, "warmup.checks_min", "<= warmup.checks_max")
    for key in ("noise", "carry_slip", "carry_slip_max"):
        value = getattr(c.warmup, key)
        need(value is None or value <= 1, f"warmup.{key}", "a probability in [0, 1]")
    if c.rollout.colocate:
        need(not c.rl.async_generation, "rl.async_generation", "false with rollout.colocate (the engines sleep "
             "while the learner trains)")
    r = c.learner.num_ranks
    for key, size in (("warmup.batch_size", c.warmup.batch_size), ("rft.batch_size", c.rft.batch_size),
                      ("meta_rm.batch_size", c.meta_rm.batch_size),
                      ("rl.prompts_per_step * rl.group_size", c.rl.prompts_per_step * c.rl.group_size),
                      ("policy.sft_batch_size", c.policy.sft_batch_size),
                      ("policy.prompts_per_step * policy.group_size", c.policy.prompts_per_step * c.policy.group_size)):
        need(r < 1 or size % r == 0, key, f"a multiple of learner.num_ranks ({r}), got {size}")
    if c.data.kind == "synthetic":
        ch.errors += data_problems(c, {"train": c.data.train_size, "validation": c.data.validation_size,
                                       "test": c.data.test_size})
    # Equal shares of whole groups keep the ranks' work equal; the learner also trains an uneven
    # batch (an RL step that left out an overflowing prompt): a lighter rank repeats a pass at weight 0.
    for key, prompts, phase in (("rl.prompts_per_step", c.rl.prompts_per_step, "rl"),
                                ("policy.prompts_per_step", c.policy.prompts_per_step, "policy_rl")):
        if phase in c.phases and r > 1:
            need(prompts % r == 0, key, f"a multiple of learner.num_ranks ({r}) so each rank trains on whole "
                 f"groups, got {prompts}")
    ch.done()


GRM_DATA_PHASES = ("rft", "rl", "meta_rm")


def split_problems(c: Config, splits: Mapping[str, list]) -> list[str]:
    """data_problems for loaded splits (lists of items)."""
    return data_problems(c, {s: len(items) for s, items in splits.items()},
                         {s: sum(not it.responses for it in items) for s, items in splits.items()})


def data_problems(c: Config, sizes: Mapping[str, int], prompts: Mapping[str, int] | None = None) -> list[str]:
    """What the phases would draw from splits of these sizes and cannot: a batch of distinct
    train items larger than the train split, an evaluation of an empty split, responses to
    judge or imitate where a split holds `prompts` items with none (the policy phases' data)."""
    ch = Checks()
    prompts = prompts or {}
    grm = [ph for ph in GRM_DATA_PHASES if ph in c.phases]
    if prompts.get("train") and (grm or "policy_sft" in c.phases):
        needs = grm + (["policy_sft"] if "policy_sft" in c.phases else [])
        ch.need(False, "data.train", f"items with responses ({', '.join(needs)} train{'s' * (len(needs) == 1)} "
                f"on them), but "
                f"{prompts['train']} of its {sizes.get('train', 0)} items are prompts only (data for policy_rl: "
                "run the GRM phases on preference data, and policy_rl on the prompts in a run of its own)")
    if "meta_rm" in c.phases and prompts.get("validation"):
        ch.need(False, "data.validation", f"items with responses to judge (meta_rm validates on them), but "
                f"{prompts['validation']} are prompts only")
    if "eval" in c.phases and prompts.get(c.eval.split):
        ch.need(False, f"data.{c.eval.split}", f"items with responses to judge (the eval phase scores them), but "
                f"{prompts[c.eval.split]} are prompts only")
    train = sizes.get("train", 0)
    draws = {"warmup": ("warmup.batch_size", c.warmup.batch_size), "rl": ("rl.prompts_per_step", c.rl.prompts_per_step),
             "policy_sft": ("policy.sft_batch_size", c.policy.sft_batch_size),
             "policy_rl": ("policy.prompts_per_step", c.policy.prompts_per_step)}
    for phase, (key, n) in draws.items():
        if phase in c.phases:
            ch.need(n <= train, key, f"at most the {train} items of the train split (a batch draws distinct items), "
                    f"got {n}")
    if "eval" in c.phases:
        ch.need(sizes.get(c.eval.split, 0) > 0, f"data.{c.eval.split}",
                f"items to evaluate on (eval.split={c.eval.split!r} is empty)")
    return ch.errors


# ----------------------------------------------------------------------------- data and models
def is_local_path(value: str) -> bool:
    """True when `value` can only name a local file or folder, not a hub id: an absolute or
    ./-relative path, more than one '/', or a data file suffix. A hub id is `name` or
    `org/name`."""
    return (value.startswith(("/", "./", "../", "~")) or value.count("/") > 1
            or value.lower().endswith((".jsonl", ".json", ".parquet", ".csv", ".gz", ".j2")))


def hub_lookup(name: str, kind: str) -> str:
    """Whether the Hugging Face hub (or, offline, the local cache) has the `kind` ("model" or
    "dataset") repository `name`: "found", "missing" or "unreachable"."""
    import huggingface_hub as hf

    def cached() -> bool:
        try:
            hf.snapshot_download(name, repo_type=kind, local_files_only=True)
            return True
        except Exception:  # noqa: BLE001 - any failure means: not usable from the cache
            return False

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "found" if cached() else "missing"
    try:
        hf.repo_info(name, repo_type=kind, timeout=10)
        return "found"
    except (hf.errors.RepositoryNotFoundError, hf.errors.HFValidationError):
        return "missing"
    except hf.errors.GatedRepoError:
        return "found"
    except Exception:  # noqa: BLE001 - no answer from the hub (no network, a time-out)
        return "found" if cached() else "unreachable"


def check_sources(named: Mapping[str, tuple[str | None, str]], strict: bool = True, lookup=hub_lookup) -> list[str]:
    """Every model or dataset a command reads, by key: (value, "model" | "dataset").

    A local path must exist. Anything else is a hub id, looked up on the hub (or in the local
    cache with HF_HUB_OFFLINE=1): one the hub does not have fails here, not after minutes of
    retries. When the hub cannot be reached a `strict` check fails too (the run could not load
    it); otherwise it is a warning (a command checked on a machine without the network).
    Returns the warnings; raises ConfigError naming every key that fails."""
    ch, warnings = Checks(), []
    for key, (value, kind) in named.items():
        if not value:
            continue
        if os.path.exists(os.path.expanduser(value)):
            continue
        if is_local_path(value):
            ch.need(False, key, f"an existing file or folder, got {value!r} (not found)")
            continue
        found = lookup(value, kind)
        where = f"no file or folder {value!r} in {os.getcwd()}"
        if found == "missing":
            ch.need(False, key, f"an existing file or folder or a {kind} on the Hugging Face hub: {where}, "
                    f"and the hub has no {kind} {value!r}")
        elif found == "unreachable":
            text = (f"{key}: {value!r} is not a local path ({where}) and the Hugging Face hub cannot be reached "
                    "to look for it (set HF_HUB_OFFLINE=1 to use the local cache)")
            if strict:
                ch.errors.append(text)
            else:
                warnings.append(text + "; not checked")
    ch.done()
    return warnings


def visible_gpus() -> int:
    """The GPUs `nvidia-smi -L` lists on this machine (0 without it)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def local_gpu_problem(c: ClusterConfig, gpus=visible_gpus) -> str | None:
    """A local Ray (no cluster address) asked for more GPUs than this machine has: Ray would
    grant them and every GPU actor would fail on start."""
    if c.address or os.environ.get("RAY_ADDRESS") or not c.num_gpus:
        return None
    have = gpus()
    if c.num_gpus <= have:
        return None
    return (f"cluster.num_gpus: expected at most {have}, the GPUs this machine has (nvidia-smi), for a local Ray; "
            f"got {c.num_gpus} (join a cluster with cluster.address, or run on a machine with them)")


def sources(c: Config) -> dict[str, tuple[str | None, str]]:
    """The models and datasets a training run reads, by key."""
    named = {"model.path": (c.model.path, "model"), "rft.teacher": (c.rft.teacher, "model"),
             "rl.prefilter_model": (None if c.rl.prefilter_model == "warmup" or "rl" not in c.phases
                                    else c.rl.prefilter_model, "model"),
             "meta_rm.model": (c.meta_rm.model, "model"), "policy.model": (c.policy.model, "model"),
             "policy.grm": (c.policy.grm, "model"), "policy.meta_rm": (c.policy.meta_rm, "model")}
    data = {f"data.{s}": getattr(c.data, s) for s in SPLITS} if c.data.kind == "files" else {}
    if "rft" in c.phases:
        data["rft.general_data"] = c.rft.general_data
    for key, value in data.items():
        named[key + (".path" if isinstance(value, Mapping) else "")] = (
            value.get("path") if isinstance(value, Mapping) else value, "dataset")
    return named
