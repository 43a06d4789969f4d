"""Typed configuration: every default lives here, once; conf/ only says what differs.

Hydra composes the YAML files in conf/ over these dataclasses (registered as the schema), so a
misspelt key or a wrong type fails at start-up naming the key. `validate` then checks the
relations between fields before any actor starts. Defaults are the paper's settings for real
models; the embedded default (conf/config.yaml) overrides them for a tiny model on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

PHASES = ("warmup", "rft", "rl", "meta_rm", "eval", "policy_sft", "policy_rl")


@dataclass
class ModelConfig:
    # A local folder or a hub id; or null with `tiny_preset` to build a tiny model from scratch.
    path: str | None = None
    tiny_preset: str | None = None
    dtype: str = "bfloat16"
    max_model_len: int = 4096
    max_new_tokens: int = 1024
    # GRM prompt templates: a built-in name (spct/grm/templates) or a path to a .j2 file.
    template: str = "default"
    single_template: str = "single"


@dataclass
class DataConfig:
    kind: str = "synthetic"  # synthetic | files
    # For kind=files: anything spct.data.load_items reads (local file or hub dataset name).
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    format: str | None = None
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
    sft_steps: int = 900
    batch_size: int = 1024
    lr: float = 5e-6
    warmup_steps: int = 0
    generate_batch: int = 256
    # Share of each fine-tuning batch drawn from the warm-up data, as the paper mixes its accepted
    # trajectories with general instruction data (synthetic task only; other data ignores it,
    # with a warning).
    warmup_mix: float = 0.0


@dataclass
class RLConfig:
    steps: int = 900
    prompts_per_step: int = 128
    group_size: int = 4
    beta: float = 0.08
    kl_kind: str = "k3"
    clip_eps: float = 0.2
    lr: float = 4e-7
    temperature: float = 1.0
    warmup_steps: int = 0
    # Generate step t + 1's rollouts while the learner trains on step t (one-step off-policy).
    async_generation: bool = False


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
    mode: str = "auto"  # auto (offline without an API key) | online | offline


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0 = only at the end of each phase
    keep_last: int = 2
    max_restarts: int = 0  # an actor or node fault resumes from the last checkpoint this many times


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
    output_dir: str = MISSING
    seed: int = 0


class ConfigError(ValueError):
    pass


def engine_kwargs(model: ModelConfig, rollout: RolloutConfig, seed: int) -> dict[str, Any]:
    """Flat VLLMEngine arguments from the config (rollout engines and reward pools alike)."""
    return dict(dtype=model.dtype, max_model_len=model.max_model_len, seed=seed, enable_sleep_mode=rollout.colocate,
                tensor_parallel_size=rollout.tensor_parallel_size,
                gpu_memory_utilization=rollout.gpu_memory_utilization, kv_cache_gib=rollout.kv_cache_gib,
                enforce_eager=rollout.enforce_eager, enable_prefix_caching=rollout.enable_prefix_caching,
                num_threads=rollout.num_threads, block_size=rollout.block_size)


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="spct_schema", node=Config)


def to_config(cfg: DictConfig | dict) -> Config:
    """Merge onto the schema (type and key checks), then validate the relations between fields."""
    # Merge a plain container, so keys added with Hydra's `+key=value` are checked too.
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    merged = OmegaConf.merge(OmegaConf.structured(Config), plain)
    config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(config)
    return config


def is_local_path(value: str) -> bool:
    """True when `value` can only name a local file or folder, not a hub id: an absolute or
    ./-relative path, more than one '/', or a data file suffix. A hub id is `name` or
    `org/name`."""
    return (value.startswith(("/", "./", "../", "~")) or value.count("/") > 1
            or value.lower().endswith((".jsonl", ".json", ".parquet")))


def check_paths(c: Config) -> None:
    """Every local path the run reads must exist; checked at start, before Ray or vLLM.

    Separate from `validate` so that a configuration can be composed and checked on a machine
    that does not hold its data (a laptop preparing a cluster run)."""
    paths = {"model.path": c.model.path, "rft.teacher": c.rft.teacher, "meta_rm.model": c.meta_rm.model,
             "policy.model": c.policy.model, "policy.grm": c.policy.grm, "policy.meta_rm": c.policy.meta_rm}
    if c.data.kind == "files":
        paths |= {f"data.{s}": getattr(c.data, s) for s in ("train", "validation", "test")}
    missing = [f"{key}: expected an existing file or folder, got {value!r} (not found)"
               for key, value in paths.items()
               if value and is_local_path(value) and not os.path.exists(os.path.expanduser(value))]
    if missing:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(missing))


def _validate_policy(c: Config, need) -> None:
    pc, rw = c.policy, c.policy.reward
    if "policy_sft" in c.phases:
        need(c.data.kind == "synthetic", "phases", "'policy_sft' only with data.kind=synthetic (it writes answers)")
        need(pc.model is None, "policy.model", "null with 'policy_sft' (it teaches a fresh tiny policy)")
    need(rw.kind in ("grm", "oracle"), "policy.reward.kind", "'grm' or 'oracle'")
    need(rw.kind != "oracle" or c.data.kind == "synthetic", "policy.reward.kind",
         "'grm' unless data.kind=synthetic (the oracle is the synthetic task's checker)")
    need(rw.mode in ("group", "single"), "policy.reward.mode", "'group' or 'single'")
    need(rw.k_meta is None or 1 <= rw.k_meta <= rw.k, "policy.reward.k_meta", f"null or in [1, k = {rw.k}]")
    need(rw.k_meta is None or pc.meta_rm is not None, "policy.reward.k_meta", "policy.meta_rm to be set")
    need(pc.group_size >= 2, "policy.group_size", ">= 2 (a group of one has no baseline)")
    need(pc.kl_kind in ("k1", "k2", "k3"), "policy.kl_kind", "k1, k2 or k3")
    need(pc.eval_split in ("train", "validation", "test"), "policy.eval_split", "train, validation or test")


# Numbers that must be > 0; every other number in the config must be >= 0 (and finite).
POSITIVE = frozenset("""
    model.max_model_len model.max_new_tokens rollout.num_engines rollout.tensor_parallel_size
    rollout.gpu_memory_utilization rollout.kv_cache_gib rollout.block_size learner.num_ranks
    learner.micro_batch_size warmup.steps warmup.batch_size warmup.lr warmup.checks_min
    rft.n_samples rft.sft_steps rft.batch_size rft.lr rft.generate_batch
    rl.steps rl.prompts_per_step rl.lr rl.clip_eps
    meta_rm.samples_per_item meta_rm.steps meta_rm.batch_size meta_rm.lr meta_rm.max_length
    eval.k_max eval.bootstrap eval.k_meta_ratio
    policy.grm_engines policy.reward.k policy.reward.k_meta policy.sft_steps policy.sft_batch_size
    policy.sft_lr policy.steps policy.prompts_per_step policy.lr policy.clip_eps policy.max_new_tokens
    policy.eval_samples checkpoint.keep_last cluster.nodes
""".split())


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


def validate(c: Config) -> None:
    errors = []

    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            errors.append(f"{key}: expected {expected}")

    for key, value in numbers(c):
        if not math.isfinite(value):
            need(False, key, f"a finite number, got {value}")
        elif key in POSITIVE:
            need(value > 0, key, f"> 0, got {value}")
        else:
            need(value >= 0, key, f">= 0, got {value}")
    need(c.rollout.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization", "a share in (0, 1]")
    need(all(b < 1 for b in c.learner.betas) and len(c.learner.betas) == 2, "learner.betas",
         "two values in [0, 1)")
    need(c.policy.sft_p_right <= 1, "policy.sft_p_right", "a probability in [0, 1]")

    for p in c.phases:
        need(p in PHASES, "phases", f"names from {list(PHASES)}, got {p!r}")
    need(len(set(c.phases)) == len(c.phases), "phases", "each phase once")
    need(c.model.path is not None or c.model.tiny_preset is not None,
         "model.path", "a local folder or hub id (or model.tiny_preset)")
    need("warmup" not in c.phases or c.data.kind == "synthetic",
         "phases", "'warmup' only with data.kind=synthetic (it writes synthetic trajectories)")
    need(c.data.kind in ("synthetic", "files"), "data.kind", "'synthetic' or 'files'")
    if c.data.kind == "files":
        need(c.data.train is not None, "data.train", "a dataset path or hub name")
    need(c.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype", "float32, bfloat16 or float16")
    need(c.learner.zero_stage in (0, 1, 2, 3), "learner.zero_stage", "0, 1, 2 or 3")
    need(c.rl.group_size >= 2, "rl.group_size", ">= 2 (a group of one has no baseline)")
    need(c.rl.kl_kind in ("k1", "k2", "k3"), "rl.kl_kind", "k1, k2 or k3")
    need(c.rft.warmup_mix < 1, "rft.warmup_mix", "a share in [0, 1)")
    need(c.eval.k_meta_ratio <= 1, "eval.k_meta_ratio", "in (0, 1]")
    need(c.meta_rm.neutral_label <= 1, "meta_rm.neutral_label", "a target in [0, 1]")
    after_eval = c.phases[c.phases.index("eval") + 1:] if "eval" in c.phases else []
    need(set(after_eval) <= {"policy_sft", "policy_rl"}, "phases", "'eval' after the GRM phases (only policy "
         "phases may follow it)")
    _validate_policy(c, need)
    need(c.warmup.checks_min <= c.warmup.checks_max, "warmup.checks_min", "<= warmup.checks_max")
    for key in ("noise", "carry_slip", "carry_slip_max"):
        value = getattr(c.warmup, key)
        need(value is None or value <= 1, f"warmup.{key}", "a probability in [0, 1]")
    if c.rollout.colocate:
        need(c.cluster.num_gpus > 0, "rollout.colocate", "a GPU cluster (cluster.num_gpus > 0)")
        need(c.rollout.num_engines <= c.learner.num_ranks and c.rollout.tensor_parallel_size == 1,
             "rollout.colocate", "num_engines <= learner.num_ranks and tensor_parallel_size 1 (one engine "
             "per learner GPU)")
        need(not c.rl.async_generation, "rl.async_generation", "false with rollout.colocate (the engines sleep "
             "while the learner trains)")
    need(c.cluster.placement_strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
         "cluster.placement_strategy", "PACK, SPREAD, STRICT_PACK or STRICT_SPREAD")
    need(c.logger.kind in ("wandb", "none"), "logger.kind", "'wandb' or 'none'")
    need(c.logger.mode in ("auto", "online", "offline"), "logger.mode", "auto, online or offline")
    r = c.learner.num_ranks
    for key, size in (("warmup.batch_size", c.warmup.batch_size), ("rft.batch_size", c.rft.batch_size),
                      ("meta_rm.batch_size", c.meta_rm.batch_size),
                      ("rl.prompts_per_step * rl.group_size", c.rl.prompts_per_step * c.rl.group_size),
                      ("policy.sft_batch_size", c.policy.sft_batch_size),
                      ("policy.prompts_per_step * policy.group_size", c.policy.prompts_per_step * c.policy.group_size)):
        need(r < 1 or size % r == 0, key, f"a multiple of learner.num_ranks ({r}), got {size}")
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
