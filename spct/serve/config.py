"""The reward server's settings: `ServeConfig` (every default), its Hydra schema and checks."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from spct.config import ConfigError
from spct.grm import load_template

TOKEN_ENV = "SPCT_SERVE_TOKEN"
CONF_FILE = Path(__file__).resolve().parents[2] / "conf" / "serve.yaml"

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
    """Every default of the reward server; conf/serve.yaml only composes it."""

    # The GRM: a local folder or a hub id. The meta RM (optional) enables MetaRM@k.
    model: str = MISSING
    meta_rm: str | None = None
    # Loopback by default: exposing the server is a decision, made with host=0.0.0.0.
    host: str = "127.0.0.1"
    port: int = 8000
    # Bearer token; null = the SPCT_SERVE_TOKEN environment variable, unset = no auth.
    token: str | None = None

    # Scoring: a request may set k (up to max_k), temperature and meta; these are the defaults.
    template: str = "default"
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

    # GRM engines.
    num_engines: int = 1
    dtype: str = "bfloat16"
    max_model_len: int = 4096
    max_new_tokens: int = 1024
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    kv_cache_gib: float = 1.0  # CPU engines only
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    num_cpus_per_engine: float = 1.0
    # CPU only: torch threads per engine (0 = Ray's default) and KV-cache block (null = vLLM's).
    num_threads: int = 0
    block_size: int | None = None

    # Meta RM actor.
    meta_rm_dtype: str = "bfloat16"
    meta_rm_max_length: int = 4096
    meta_rm_num_gpus: float | None = None  # null: one GPU when num_gpus > 0, else CPU

    # Ray: null address = a fresh local cluster; "auto" joins a running one.
    ray_address: str | None = None
    num_cpus: int | None = None
    num_gpus: int = 0


def register_schema() -> None:
    """Make conf/serve.yaml, merged onto the schema, Hydra's primary config "serve".

    It goes through the config store rather than a config path: conf/ also holds the training
    config groups (model/, data/, ...), and composed from there `model=PATH` would select a
    group instead of setting the field.
    """
    from hydra.core.config_store import ConfigStore

    node = OmegaConf.merge(OmegaConf.structured(ServeConfig), OmegaConf.load(CONF_FILE))
    ConfigStore.instance().store(name="serve", node=node)


def to_serve_config(cfg: DictConfig | Mapping[str, Any]) -> ServeConfig:
    """Merge onto the schema (key and type checks), then check values and their relations."""
    merged = OmegaConf.merge(OmegaConf.structured(ServeConfig), cfg)
    config: ServeConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(config)
    return config


def validate(c: ServeConfig) -> None:
    errors = []

    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            errors.append(f"{key}: expected {expected}")

    need(bool(c.model), "model", "a local folder or hub id of a GRM")
    for key in ("model", "meta_rm"):
        path = getattr(c, key)
        if path and _looks_local(path):
            need(Path(path).expanduser().is_dir(), key, f"an existing folder, got {path!r}")
    need(0 <= c.port <= 65535, "port", f"0..65535, got {c.port}")
    need(c.max_k >= 1, "max_k", f">= 1, got {c.max_k}")
    need(1 <= c.default_k <= c.max_k, "default_k", f"1..max_k ({c.max_k}), got {c.default_k}")
    need(c.k_meta is None or c.k_meta >= 1, "k_meta", f"null or >= 1, got {c.k_meta}")
    need(math.isfinite(c.temperature) and c.temperature >= 0, "temperature", ">= 0")
    for key in (
        "max_body_bytes",
        "max_items",
        "max_responses",
        "max_chars_per_text",
        "num_engines",
        "max_model_len",
        "max_new_tokens",
        "tensor_parallel_size",
    ):
        need(getattr(c, key) >= 1, key, f">= 1, got {getattr(c, key)}")
    need(
        c.max_new_tokens < c.max_model_len,
        "max_new_tokens",
        f"below max_model_len ({c.max_model_len}), got {c.max_new_tokens}",
    )
    for key in ("dtype", "meta_rm_dtype"):
        need(
            getattr(c, key) in ("float32", "bfloat16", "float16"),
            key,
            f"float32, bfloat16 or float16, got {getattr(c, key)!r}",
        )
    need(c.meta_rm_num_gpus is None or c.meta_rm_num_gpus >= 0, "meta_rm_num_gpus", "null or >= 0")
    need(c.num_gpus >= 0, "num_gpus", ">= 0")
    try:
        load_template(c.template)
    except (OSError, ValueError) as e:
        errors.append(f"template: {e}")
    if errors:
        raise ConfigError("invalid serve configuration:\n  " + "\n  ".join(errors))


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or os.path.exists(name)


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
    )
    return {key: getattr(c, key) for key in keys}
