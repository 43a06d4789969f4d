"""Moving the learner's weights into the rollout engines: one interface, two transports.

- `RayObjectStoreSync` (CPU, small models): the state dict becomes one safetensors blob, put
  in the Ray object store once; every engine reads the same object and reloads in place.
- `NcclBroadcastSync` (GPUs): the learner's rank 0 joins an NCCL group with every engine worker
  and broadcasts the tensors in buckets; only names, dtypes and shapes travel through Ray.
  It must be built and pushed from the process that holds the weights on GPU (learner rank 0).

Both take a state dict in Hugging Face names, the format vLLM's loaders read, and a version
number that every later rollout carries.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import ray
import torch

from spct.rollout import RolloutGroup

log = logging.getLogger(__name__)

DEFAULT_BUCKET_BYTES = 256 * 2**20


class WeightSync(Protocol):
    version: int | None

    def push(self, state: Mapping[str, torch.Tensor], version: int) -> None: ...

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
        tokens = [[r["samples"][0]["token_ids"] for r in results] for results in per_engine]
        if any(t != tokens[0] for t in tokens[1:]):
            log.warning("weight sync: engines decode the same prompts differently")
            return False
        return True


class RayObjectStoreSync(_SyncBase):
    """One `ray.put` per push; every engine reads the same object."""

    def push(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        self._check_version(version)
        ref = ray.put(state_to_safetensors(state))
        self.group.update_weights(ref, version)
        self.version = version


class NcclBroadcastSync(_SyncBase):
    """Bucketed NCCL broadcast from the learner (rank 0) to every engine worker.

    Engine i's workers take ranks 1 + i * tp ... in the group; world size is 1 + all workers.
    Built once (the group handshake); `push` then costs one broadcast per bucket.
    """

    def __init__(
        self,
        rollout_group: RolloutGroup,
        master_addr: str,
        master_port: int,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        device: str | torch.device = "cuda:0",
    ) -> None:
        super().__init__(rollout_group)
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        self.bucket_bytes = bucket_bytes
        self.device = torch.device(device)
        tp = rollout_group.workers_per_engine
        world_size = 1 + tp * rollout_group.num_engines
        joins = [
            engine.init_weight_group.remote(master_addr, master_port, 1 + i * tp, world_size)
            for i, engine in enumerate(rollout_group.engines)
        ]
        group = StatelessProcessGroup.create(
            host=master_addr, port=master_port, rank=0, world_size=world_size
        )
        self.comm = PyNcclCommunicator(group, device=self.device)
        ray.get(joins)

    def push(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        from spct.engine import bucket_size, plan_buckets

        self._check_version(version)
        check_state(state)
        names = list(state)
        tensors = [state[n].detach().to(self.device).contiguous() for n in names]
        dtypes = [str(t.dtype).removeprefix("torch.") for t in tensors]
        shapes = [list(t.shape) for t in tensors]
        receives = [
            e.receive_broadcast.remote(names, dtypes, shapes, version, self.bucket_bytes)
            for e in self.group.engines
        ]
        for bucket in plan_buckets(dtypes, shapes, self.bucket_bytes):
            buffer = torch.empty(bucket_size(bucket), dtype=torch.uint8, device=self.device)
            for index, offset, nbytes in bucket:
                buffer[offset : offset + nbytes].copy_(tensors[index].view(-1).view(torch.uint8))
            self.comm.broadcast(buffer, src=0)
        torch.cuda.current_stream(self.device).synchronize()
        versions = ray.get(receives)
        if any(v != version for v in versions):
            raise RuntimeError(f"weight sync: engines report versions {versions}, pushed {version}")
        self.version = version


def make_weight_sync(kind: str, rollout_group: RolloutGroup, **kwargs: Any) -> WeightSync:
    """`kind` "ray" (any machine) or "nccl" (GPUs; needs master_addr and master_port)."""
    if kind == "ray":
        if kwargs:
            raise TypeError(f"weight sync 'ray': takes no options, got {sorted(kwargs)}")
        return RayObjectStoreSync(rollout_group)
    if kind == "nccl":
        return NcclBroadcastSync(rollout_group, **kwargs)
    raise ValueError(f"weight sync kind: expected 'ray' or 'nccl', got {kind!r}")
