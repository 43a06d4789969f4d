"""The reward server's settings: `ServeConfig` (every default), its Hydra schema, checks and plan."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from spct.config import (
    CONF_DIR,
    DTYPES,
    Checks,
    ClusterConfig,
    MetaRMRef,
    ModelConfig,
    RolloutConfig,
    check_cluster,
    check_model,
    check_numbers,
    check_rollout,
    resolve_meta_rm,
    resolve_model,
    structured,
)

# Sampling temperatures a request (or the server's default) may ask for: OpenAI's range. Far
# beyond it the engine's arithmetic overflows, a server error for a client's value.
MAX_TEMPERATURE = 2.0

TOKEN_ENV = "SPCT_SERVE_TOKEN"
CONF_FILE = CONF_DIR / "serve.yaml"

# Text a policy's chat template leaves after a response (end-of-turn, eos and pad markers).
END_MARKERS = [
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "<eos>",
    "</s>",
    "<|pad|>",
]


@dataclass
class ServeConfig:
    """Every default of the reward server; conf/serve.yaml only composes it.

    The GRM (`model`, with `model=PATH` short for `model.path=PATH`), its engines (`rollout`),
    the Ray cluster (`cluster`) and the meta RM (`meta_rm`, `meta_rm=PATH`) are the sections the
    training and evaluation commands use (spct.config); the GRM's template, context, critique
    length and dtype come from its checkpoint's card unless set."""

    model: ModelConfig = field(default_factory=ModelConfig)
    meta_rm: MetaRMRef = field(default_factory=MetaRMRef)  # optional: enables MetaRM@k
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(gpu_memory_utilization=0.9))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # null address = a fresh local Ray
    # Loopback by default: exposing the server is a decision, made with host=0.0.0.0.
    host: str = "127.0.0.1"
    port: int = 8000
    # Bearer token; null = the SPCT_SERVE_TOKEN environment variable, unset = no auth.
    token: str | None = None

    # Scoring: a request may set k (up to max_k), temperature and meta; these are the defaults.
    default_k: int = 1
    max_k: int = 32
    temperature: float = 0.5
    k_meta: int | None = None  # samples the meta RM keeps; null = half of k (at least 1)
    seed: int = 0

    # Request limits.
    max_body_bytes: int = 8 * 2**20
    max_items: int = 256  # items per /batch_score, queries per /openrlhf
    max_responses: int = 16
    max_chars_per_text: int = 32_000
    # /openrlhf: stripped from the end of each response before scoring.
    end_markers: list[str] = field(default_factory=lambda: list(END_MARKERS))
    # /openrlhf: judge the responses that share a prompt together (n = group) rather than each
    # alone (n = 1); a request may choose with ?group=true|false.
    openrlhf_group: bool = False
    # Batching (docs/serving.md, "Batching"): requests arriving within batch_window_ms of the
    # first are scored in one engine call of up to max_batch_prompts GRM prompts (k per item);
    # a group with a group_size waits up to group_window_s for the rest of its responses.
    batch_window_ms: float = 10.0
    group_window_s: float = 30.0
    max_batch_prompts: int = 256
    max_queue_prompts: int = 4096  # beyond: 503 with Retry-After
    request_timeout_s: float = 600.0  # a request not scored by then: 504
    # A dead engine or meta RM is restarted by the next request that finds it, this many times
    # in the server's life; after that the server answers 503 until it is restarted.
    max_restarts: int = 3
    dry_run: bool = False  # check the command and print the plan; start nothing


POSITIVE = frozenset("""max_k default_k k_meta max_body_bytes max_items max_responses max_chars_per_text
    model.max_model_len model.max_new_tokens meta_rm.max_length rollout.num_engines rollout.tensor_parallel_size
    rollout.gpu_memory_utilization rollout.kv_cache_gib rollout.block_size cluster.nodes cluster.num_cpus
    max_batch_prompts max_queue_prompts request_timeout_s""".split())


def register_schema() -> None:
    """Make conf/serve.yaml, merged onto the schema, Hydra's primary config "serve".

    It goes through the config store rather than a config path: conf/ also holds the training
    config groups (model/, meta_rm/, ...), and composed from there `model=PATH` would select a
    group instead of setting the field.
    """
    from hydra.core.config_store import ConfigStore

    node = OmegaConf.merge(OmegaConf.structured(ServeConfig), OmegaConf.load(CONF_FILE))
    ConfigStore.instance().store(name="serve", node=node)


def load_serve_config(cfg: DictConfig | Mapping[str, Any]) -> tuple[ServeConfig, dict[str, str]]:
    """Merge onto the schema (key and type checks), take the GRM's and the meta RM's settings
    from their cards where left null, then check values and their relations. Returns the
    config and where each GRM setting came from."""
    config: ServeConfig = structured(ServeConfig, cfg)
    sources = resolve_model(config.model) if config.model.path else {}
    if config.meta_rm.path:
        resolve_meta_rm(config.meta_rm, config.model.dtype or "bfloat16")
    validate(config)
    return config, sources


def to_serve_config(cfg: DictConfig | Mapping[str, Any]) -> ServeConfig:
    return load_serve_config(cfg)[0]


def validate(c: ServeConfig) -> None:
    ch = Checks()
    need = ch.need
    check_numbers(ch, c, POSITIVE)
    need(c.model.path is not None, "model", "the GRM to serve (model=PATH: a local folder or hub id)")
    need(c.model.tiny_preset is None, "model.tiny_preset", "null (the server serves a checkpoint)")
    if c.model.path:
        check_model(ch, c.model, "model.", gpus=c.cluster.num_gpus)
    check_rollout(ch, c.rollout, c.cluster.num_gpus)
    check_cluster(ch, c.cluster)
    if c.meta_rm.path:
        need(c.meta_rm.dtype in DTYPES, "meta_rm.dtype", f"one of {', '.join(DTYPES)}, got {c.meta_rm.dtype!r}")
    need(c.port <= 65535, "port", f"0..65535, got {c.port}")
    need(c.default_k <= c.max_k, "default_k", f"1..max_k ({c.max_k}), got {c.default_k}")
    need(c.temperature <= MAX_TEMPERATURE, "temperature", f"at most {MAX_TEMPERATURE:g}, got {c.temperature}")
    need(c.max_queue_prompts >= c.max_batch_prompts, "max_queue_prompts",
         f"at least max_batch_prompts ({c.max_batch_prompts}), got {c.max_queue_prompts}")
    ch.done("serve configuration")


def plan(c: ServeConfig, sources: Mapping[str, str], warnings: list[str], token: bool,
         needs: list | None = None) -> str:
    """What `python -m spct.serve ...` would start, in words (dry_run=true prints it)."""
    settings = ", ".join(f"{k} {getattr(c.model, k)} ({src})" for k, src in sources.items())
    meta = (f"{c.meta_rm.path}; max_length {c.meta_rm.max_length}, dtype {c.meta_rm.dtype}" if c.meta_rm.path
            else "none (no MetaRM@k)")
    lines = ["spct.serve plan (dry_run: nothing started)", f"  GRM         {c.model.path}; {settings}",
             f"  meta RM     {meta}",
             f"  engines     {c.rollout.num_engines} x vLLM on "
             + (f"GPUs (tensor parallel {c.rollout.tensor_parallel_size})" if c.cluster.num_gpus else "CPU"),
             f"  listens on  http://{c.host}:{c.port} ({'bearer token required' if token else 'no token'})",
             f"  scoring     k {c.default_k} by default (up to {c.max_k}), temperature {c.temperature}",
             f"  batching    requests within {c.batch_window_ms:g} ms in one engine call of up to "
             f"{c.max_batch_prompts} GRM prompts; a sized group waits up to {c.group_window_s:g} s; "
             f"{c.max_queue_prompts} prompts may wait"]
    from spct.memory import plan_lines

    lines += plan_lines(needs or [], c.cluster.gpu_memory_gib)
    return "\n".join(lines + [f"  warning     {w}" for w in warnings])


def app_options(c: ServeConfig) -> dict[str, Any]:
    """The keyword arguments of `make_app` that come from the configuration (not the token)."""
    keys = (
        "max_body_bytes",
        "max_items",
        "max_responses",
        "max_chars_per_text",
        "default_k",
        "max_k",
        "temperature",
        "k_meta",
        "end_markers",
        "openrlhf_group",
        "batch_window_ms",
        "group_window_s",
        "max_batch_prompts",
        "max_queue_prompts",
        "request_timeout_s",
    )
    return {key: getattr(c, key) for key in keys}
