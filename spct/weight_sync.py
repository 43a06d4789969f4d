"""Moving the learner's weights into the rollout engines: one interface, two transports.

- `RayObjectStoreSync` (CPU, colocated engines): learner rank 0 turns the state dict into one
  safetensors blob and puts it in the Ray object store; every engine reads the same object and
  reloads in place.
- `LearnerBroadcastSync` (GPUs; on CPU too, where tests run it): learner rank 0 joins a group
  with every engine worker and broadcasts the tensors in buckets from its device, over NCCL
  between GPUs and gloo between CPU processes; only names, dtypes and shapes travel through
  Ray.

Neither passes the weights through the driver.

Both push a learner group's weights under their Hugging Face names, the format vLLM's loaders
read, with a version number that every later rollout carries.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import ray
import torch

from spct.rollout import RolloutGroup
from spct.sample import samples_of

log = logging.getLogger(__name__)

DEFAULT_BUCKET_BYTES = 256 * 2**20


class WeightSync(Protocol):
    version: int | None

    def push_from(self, learner: Any, version: int) -> None: ...

    def verify(self, prompts: Sequence[str]) -> bool: ...


def check_state(state: Mapping[str, torch.Tensor]) -> None:
    if not isinstance(state, Mapping) or not state:
        raise TypeError("state: expected a non-empty dict of parameter name -> tensor")
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"state[{name!r}]: expected a str name and a torch.Tensor, got "
                f"{type(name).__name__} -> {type(tensor).__name__}"
            )


def state_to_safetensors(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise a state dict; tied parameters (one storage, two names) are written twice.

    safetensors refuses tensors that share memory, and vLLM's loaders expect every name the
    checkpoint would hold (they skip the tied copy themselves).
    """
    from safetensors.torch import save

    check_state(state)
    seen: set[int] = set()
    flat: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        flat[name] = t
    return save(flat)


class _SyncBase:
    def __init__(self, rollout_group: RolloutGroup) -> None:
        self.group = rollout_group
        self.version: int | None = None

    def _check_version(self, version: int) -> None:
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"version: expected a non-negative int, got {version!r}")
        if self.version is not None and version <= self.version:
            raise ValueError(
                f"version: expected more than the last pushed version {self.version}, got "
                f"{version}; rollouts are matched to weights by this number"
            )

    def verify(self, prompts: Sequence[str]) -> bool:
        """Every engine holds the last pushed version and greedy-decodes `prompts` identically.

        Engines loaded with the same weights produce the same greedy tokens, so a divergence
        means one of them missed or garbled an update.
        """
        versions = self.group.versions()
        if self.version is not None and any(v != self.version for v in versions):
            log.warning("weight sync: engines at versions %s, expected %s", versions, self.version)
            return False
        if self.group.num_engines < 2 or not prompts:
            return True
        sampling = {"temperature": 0.0, "max_tokens": 16}
        per_engine = ray.get(
            [e.generate.remote(list(prompts), sampling, True) for e in self.group.engines]
        )
        tokens = [[samples_of(r)[0].token_ids for r in results] for results in per_engine]
        if any(t != tokens[0] for t in tokens[1:]):
            log.warning("weight sync: engines decode the same prompts differently")
            return False
        return True


class RayObjectStoreSync(_SyncBase):
    """One object per push, put by learner rank 0; every engine reads the same object."""

    def push_from(self, learner: Any, version: int) -> None:
        """Push the learner group's current weights."""
        self._check_version(version)
        self.group.update_weights(learner.payload_ref(), version)
        self.version = version

    def push(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Push a state dict held here (weights from elsewhere than a learner group)."""
        self._check_version(version)
        ref = ray.put(state_to_safetensors(state))
        self.group.update_weights(ref, version)
        self.version = version


class LearnerBroadcastSync(_SyncBase):
    """Bucketed broadcast from learner rank 0 to every engine worker: NCCL between GPUs, gloo
    between CPU processes (`spct.engine.weight_group`), the same code otherwise.

    The group holds learner rank 0 (rank 0) and every engine worker (engine i's workers take
    ranks 1 + i * tp ...); its address is rank 0's node, so it works across nodes. Only names,
    dtypes and shapes travel through Ray; on GPUs the bytes never leave them. A new learner
    (each phase starts one) leads a new group on its first push, and the engines let the old
    one go.
    """

    def __init__(self, rollout_group: RolloutGroup, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        super().__init__(rollout_group)
        self.bucket_bytes = bucket_bytes
        self._joined: Any = None  # the learner group whose rank 0 leads the current group

    def _join(self, learner: Any) -> None:
        tp = self.group.workers_per_engine
        world_size = 1 + tp * self.group.num_engines
        leader = learner.workers[0]
        addr, port = ray.get(leader.weight_group_address.remote())
        # Every member must be connecting at once: the group's rendezvous waits for all of them.
        joins = [leader.init_weight_group.remote(addr, port, world_size)]
        joins += [engine.init_weight_group.remote(addr, port, 1 + i * tp, world_size)
                  for i, engine in enumerate(self.group.engines)]
        ray.get(joins)
        self._joined = learner
        log.info("weight sync: broadcast group of learner rank 0 and %d engine worker(s) at %s:%d",
                 world_size - 1, addr, port)

    def push_from(self, learner: Any, version: int) -> None:
        self._check_version(version)
        if self._joined is not learner:
            self._join(learner)
        names, dtypes, shapes = ray.get(learner.workers[0].weight_metadata.remote())
        receives = [e.receive_broadcast.remote(names, dtypes, shapes, version, self.bucket_bytes)
                    for e in self.group.engines]
        # Every rank takes part (ZeRO-3 gathers collectively); a receiver's failure stops them.
        learner.broadcast_weights(self.bucket_bytes, receivers=receives)
        versions = ray.get(receives)
        if any(v != version for v in versions):
            raise RuntimeError(f"weight sync: engines report versions {versions}, pushed {version}")
        self.version = version


def make_weight_sync(kind: str, rollout_group: RolloutGroup, **kwargs: Any) -> WeightSync:
    """`kind` "ray" (through the object store) or "broadcast" (from learner rank 0: NCCL on
    GPUs, gloo on CPU)."""
    if kind == "ray":
        if kwargs:
            raise TypeError(f"weight sync 'ray': takes no options, got {sorted(kwargs)}")
        return RayObjectStoreSync(rollout_group)
    if kind == "broadcast":
        return LearnerBroadcastSync(rollout_group, **kwargs)
    raise ValueError(f"weight sync kind: expected 'ray' or 'broadcast', got {kind!r}")
