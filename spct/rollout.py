"""The rollout group: N vLLM engines, as Ray actors, serving the model being trained.

A batch is cut into contiguous chunks, one per engine, generated concurrently and put back in
input order. Given a `seed`, every prompt gets a sampling seed of its own, drawn from (seed,
its index in the batch): the samples then do not depend on how many engines there are, how
the batch is cut, or what the engines generated before (a resumed run draws what the
uninterrupted one drew). Each result names the engine that produced it and the weight version it used, so
the learner can see which rollouts are stale. Weight updates go to every engine and return only
when all of them hold the new version.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import ray

from spct.cluster import actor_env
from spct.engine import VLLMEngine
from spct.placement import in_bundle, locate

log = logging.getLogger(__name__)


def split_contiguous(n: int, parts: int) -> list[range]:
    """`parts` contiguous ranges covering 0..n-1, sizes differing by at most one."""
    if parts < 1:
        raise ValueError(f"parts: expected >= 1, got {parts}")
    base, extra = divmod(n, parts)
    ranges, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def seed_of(key: str) -> int:
    """A 63-bit sampling seed, a stable hash of `key`."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


def request_seeds(seed: int | str, n: int) -> list[int]:
    """A sampling seed per prompt, from (seed, index)."""
    return [seed_of(f"{seed}:{j}") for j in range(n)]


class Pending:
    """Generation in flight on some engines; `result()` puts the chunks back in input order."""

    def __init__(self, engines: list[int], refs: list[ray.ObjectRef], done=None) -> None:
        self.engines, self.refs, self._done = engines, refs, done
        self._results: list[dict[str, Any]] | None = None

    def result(self) -> list[dict[str, Any]]:
        if self._results is None:
            self._results = []
            for i, chunk in zip(self.engines, ray.get(self.refs), strict=True):
                for result in chunk:
                    result["engine"] = i
                    self._results.append(result)
            if self._done is not None:
                self._done()
        return self._results


def engine_options(options: dict[str, Any], placement_group, i: int, workers: int) -> tuple[dict[str, Any], dict]:
    """Ray options and extra `VLLMEngine` arguments for engine i of a group whose engines take
    `workers` consecutive bundles each (spct.placement.Layout.engine_indices): a one-GPU engine
    holds its bundle's GPU; a tensor-parallel one sits on its first bundle holding no GPU, and
    vLLM's Ray executor starts one TP worker per bundle (VLLM_RAY_BUNDLE_INDICES), since vLLM
    refuses a placement group bundle with more than one GPU."""
    if placement_group is None:
        return dict(options), {}
    group, first = locate(placement_group, i * workers)  # its bundles' place in their group
    options = dict(options, **in_bundle(group, first, capture=True))
    if workers == 1:
        return options, {}
    env = {**options["runtime_env"]["env_vars"],
           "VLLM_RAY_BUNDLE_INDICES": ",".join(str(b) for b in range(first, first + workers))}
    return dict(options, num_gpus=0, runtime_env={**options["runtime_env"], "env_vars": env}), {"ray_workers": True}


class RolloutGroup:
    """N `VLLMEngine` actors. With a placement group, engine i takes bundles i*t .. i*t+t-1 for
    tensor-parallel size t (spct.placement.Layout); `engine_kwargs` are `VLLMEngine`'s arguments
    other than `model`.

    The engines start at construction and the group waits for them there, unless `wait=False`:
    then other actors can start while the engines load, and `ready()` waits (the first use
    waits too)."""

    def __init__(
        self,
        model: str,
        num_engines: int,
        engine_kwargs: dict[str, Any] | None = None,
        num_cpus_per_engine: float = 1,
        num_gpus_per_engine: float = 0,
        placement_group=None,
        name: str = "rollout",
        colocated: bool = False,
        on_shutdown: Callable[[], None] | None = None,
        wait: bool = True,
    ) -> None:
        if num_engines < 1:
            raise ValueError(f"{name}.num_engines: expected >= 1, got {num_engines}")
        kwargs = dict(engine_kwargs or {})
        if "model" in kwargs:
            raise ValueError(
                f"{name}.engine_kwargs: give the model as `model`, not in engine_kwargs"
            )
        if num_gpus_per_engine:
            tp = kwargs.setdefault("tensor_parallel_size", max(1, int(num_gpus_per_engine)))
            if tp != num_gpus_per_engine and not (colocated and tp == 1):
                raise ValueError(
                    f"{name}: tensor_parallel_size {tp} must equal num_gpus_per_engine "
                    f"{num_gpus_per_engine} (one engine spans exactly its GPUs)"
                )
        self.name = name
        self.model = str(model)
        self._on_shutdown = on_shutdown
        # Colocated with the learner on its GPUs: awake only to generate or load weights.
        self.colocated, self._asleep = colocated, False
        self.workers_per_engine = int(kwargs.get("tensor_parallel_size", 1))
        env = actor_env()
        if not num_gpus_per_engine and num_engines > 1:
            # vLLM's CPU worker pins its OpenMP threads to the NUMA node's cores starting at
            # core 0; two engines on one node would then share a core and leave the rest idle.
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        self._kwargs, self._placement = kwargs, placement_group
        self._options: dict[str, Any] = dict(num_cpus=num_cpus_per_engine, num_gpus=num_gpus_per_engine,
                                             runtime_env={"env_vars": env})
        self.engines = [self._start(i) for i in range(num_engines)]
        self._starting: list[Any] | None = [e.version.remote() for e in self.engines]
        if wait:
            self.ready()

    def ready(self) -> RolloutGroup:
        """Wait for the engines to start; a failed start (bad path, version mismatch, a lost
        node) is raised here, not at first use."""
        if self._starting is not None:
            from spct.placement import wait_ready

            starting, self._starting = self._starting, None
            wait_ready(starting, self._placement, f"{self.name} engines")
            self._rest()
            log.info("%s: %d engine(s) of %s ready", self.name, self.num_engines, self.model)
        return self

    def _start(self, i: int) -> Any:
        options, extra = engine_options(self._options, self._placement, i, self.workers_per_engine)
        return ray.remote(VLLMEngine).options(**options).remote(self.model, **self._kwargs, **extra)

    def restart(self, i: int) -> None:
        """Replace engine i (dead, or to be dropped) by a fresh one on the group's model path,
        in its bundle; returns once it is ready. It serves the weights at `self.model`: a group
        whose weights were pushed since must be sent them again."""
        ray.kill(self.engines[i])
        self.engines[i] = self._start(i)
        from spct.placement import wait_ready

        wait_ready([self.engines[i].version.remote()], self._placement, f"{self.name} engine {i}")
        log.warning("%s: engine %d restarted", self.name, i)

    @property
    def num_engines(self) -> int:
        return len(self.engines)

    def generate(
        self, prompts: Sequence[str | list[dict[str, str]]], sampling: dict[str, Any], chat: bool = True,
        seed: int | str | Sequence[int] | None = None,
    ) -> list[dict[str, Any]]:
        """One result per prompt, in input order, each with `engine` and `version` keys."""
        return self.submit(prompts, sampling, chat, seed).result()

    def submit(self, prompts: Sequence[str | list[dict[str, str]]], sampling: dict[str, Any], chat: bool = True,
               seed: int | str | Sequence[int] | None = None) -> Pending:
        """Start generating and return at once; `.result()` waits for what `generate` returns.

        With `seed` (a number or a key such as "rl:3"), prompt j samples with its own seed
        from (seed, j); with a list of numbers, prompt j samples with the j-th; without, from the
        engine's generator (seeded at start).
        An engine runs its calls in order, so a weight update sent after `submit` applies once
        this generation is done: its results carry the version it was generated with.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a list of strings, got a single string")
        prompts = list(prompts)
        self._wake()
        if seed is None or isinstance(seed, int | str):
            seeds = request_seeds(seed, len(prompts)) if seed is not None else None
        else:
            seeds = list(seed)
            if len(seeds) != len(prompts):
                raise ValueError(f"seed: {len(seeds)} seeds for {len(prompts)} prompts")
        chunks = [
            (i, r) for i, r in enumerate(split_contiguous(len(prompts), self.num_engines)) if r
        ]
        refs = [
            self.engines[i].generate.remote([prompts[j] for j in r], sampling, chat,
                                            [seeds[j] for j in r] if seeds else None)
            for i, r in chunks
        ]
        return Pending([i for i, _ in chunks], refs, self._rest if self.colocated else None)

    def update_weights(self, payload: bytes | ray.ObjectRef, version: int) -> list[int]:
        """Send one safetensors payload to every engine; returns their versions once all loaded."""
        ref = payload if isinstance(payload, ray.ObjectRef) else ray.put(payload)
        self._wake()
        versions = self._wait_all([e.update_weights.remote(ref, version) for e in self.engines])
        self._rest()
        return versions

    def update_weights_from_path(self, folder: str, version: int) -> list[int]:
        self._wake()
        versions = self._wait_all(
            [e.update_weights_from_path.remote(str(folder), version) for e in self.engines]
        )
        self._rest()
        return versions

    def versions(self) -> list[int]:
        return ray.get([e.version.remote() for e in self.engines])

    def sleep(self, level: int = 1) -> None:
        ray.get([e.sleep.remote(level) for e in self.engines])
        self._asleep = True

    def wake_up(self) -> None:
        ray.get([e.wake_up.remote() for e in self.engines])
        self._asleep = False

    def _wake(self) -> None:
        self.ready()
        if self.colocated and self._asleep:
            self.wake_up()

    def _rest(self) -> None:
        """Colocated: free the GPU for the learner (weights offloaded, KV cache dropped)."""
        if self.colocated and not self._asleep:
            self.sleep(1)

    def shutdown(self) -> None:
        for engine in self.engines:
            ray.kill(engine)
        self.engines = []
        if self._on_shutdown is not None:  # e.g. give the engines' bundles back (spct.placement.Bundles)
            self._on_shutdown()
            self._on_shutdown = None

    def _wait_all(self, refs: list[ray.ObjectRef]) -> list[int]:
        versions = ray.get(refs)
        if len(set(versions)) != 1:
            raise RuntimeError(f"{self.name}: engines disagree on the weight version: {versions}")
        return versions
