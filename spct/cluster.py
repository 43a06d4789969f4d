"""Starting (or joining) the Ray cluster every entry point runs its actors on."""

from __future__ import annotations

import os


def actor_env() -> dict[str, str]:
    """Environment every actor inherits (set once here, where it is visible)."""
    env = {
        # In-process vLLM engines: seconds to start on CPU instead of tens.
        "VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key in ("WANDB_MODE", "HF_HOME", "HF_HUB_OFFLINE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at `address` (else at RAY_ADDRESS, which `ray job submit` sets for its
    driver), or start a fresh local one (never silently joining a cluster that merely runs on
    this machine). No-op when Ray is already initialised."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
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
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, faults):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None
