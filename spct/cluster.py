"""Starting (or joining) the Ray cluster every entry point runs its actors on."""

from __future__ import annotations

import os
import re

# The driver's settings that actors must see (a Ray worker inherits its raylet's environment,
# not the driver's): vLLM's, read at engine start, and the Hugging Face and W&B ones.
FORWARDED_ENV = ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND",
                 "VLLM_LOGGING_LEVEL", "TOKENIZERS_PARALLELISM", "WANDB_MODE", "HF_HOME", "HF_HUB_OFFLINE")


def actor_env() -> dict[str, str]:
    """Environment every actor inherits (set once here, where it is visible)."""
    return {"TOKENIZERS_PARALLELISM": "false", **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at `address` (else at RAY_ADDRESS, which `ray job submit` sets for its
    driver), or start a fresh local one (never silently joining a cluster that merely runs on
    this machine). No-op when Ray is already initialised."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        resources = dict(address="local", num_cpus=num_cpus, num_gpus=num_gpus or None)
    else:  # joining a cluster: its nodes declared their own resources
        resources = dict(address=address)
    ray.init(**resources, include_dashboard=False, runtime_env={"env_vars": actor_env()})


def actor_fault(exc: BaseException) -> BaseException | None:
    """The Ray fault behind `exc` (an actor or its node died, an object was lost with it), or
    None when `exc` is an ordinary error. A fault seen through another actor's call (a task
    error whose cause is a fault) counts too."""
    import ray.exceptions as rex

    from spct.placement import PlacementLost

    faults = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError, PlacementLost)
    for e in _chain(exc):
        if isinstance(e, faults):
            return None if start_failure(e) else e
    return None


def start_failure(exc: BaseException) -> str | None:
    """The error an actor's constructor raised (a model folder that holds no model, a hub id
    out of reach, a bad path), when that is what `exc` comes from, else None. Not a fault: the
    same inputs fail the same way again, so neither a restart nor a rerun can help."""
    import ray.exceptions as rex

    for e in _chain(exc):
        if isinstance(e, rex.RayActorError) and e.actor_init_failed:
            text = str(e)
            actor = re.search(r"ray::(\w+)\.__init__", text)
            raised = list(re.finditer(r"^\s*[A-Za-z_][\w.]*(?:Error|Exception)\b.*$", text, re.M))
            error = text[raised[-1].start():].strip() if raised else text.strip().splitlines()[-1]
            return f"{actor.group(1) if actor else 'an actor'}: {error[:1000]}"
    return None


def _chain(exc: BaseException | None):
    """`exc` and its causes, through Ray task errors (`.cause`) and `raise ... from`."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = getattr(exc, "cause", None) or exc.__cause__
