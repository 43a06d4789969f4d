"""The group of learner ranks as the driver sees it: Ray actors, one call runs on every rank."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

from spct.learner.batches import rank_mean, shard_batch, validate_batch
from spct.learner.spec import LearnerSpec
from spct.learner.worker import LearnerWorker
from spct.placement import in_bundle, wait_ready


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _rendezvous_address() -> tuple[str, int]:
    import ray

    return ray.util.get_node_ip_address(), free_port()


class LearnerGroup:
    """`num_ranks` LearnerWorker actors forming one data-parallel group.

    With a placement group, rank r goes to bundle `bundle_indices[r]` (default r) and the
    rendezvous port is picked on rank 0's node; without one, on the driver's node. If any rank
    fails, every rank is killed: the others would otherwise wait in a collective forever.
    """

    def __init__(
        self,
        num_ranks: int,
        spec: LearnerSpec,
        num_cpus_per_rank: float = 1,
        num_gpus_per_rank: float = 0,
        placement_group: Any = None,
        bundle_indices: Sequence[int] | None = None,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        import ray

        self.spec = spec
        self.with_reference = spec.with_reference
        self._on_shutdown = on_shutdown

        if num_ranks < 1:
            raise ValueError(f"num_ranks: expected >= 1, got {num_ranks}")
        bundles = list(bundle_indices) if bundle_indices is not None else list(range(num_ranks))
        if len(bundles) != num_ranks:
            raise ValueError(f"bundle_indices: expected {num_ranks} entries, got {len(bundles)}")

        def placement(rank: int) -> dict[str, Any]:
            return {} if placement_group is None else in_bundle(placement_group, bundles[rank])

        if placement_group is None:
            addr, port = _rendezvous_address()
        else:
            probe = ray.remote(num_cpus=0)(_rendezvous_address).options(**placement(0))
            (addr, port), = wait_ready([probe.remote()], placement_group, "learner rank 0's node")

        actor = ray.remote(LearnerWorker)
        self.num_ranks = num_ranks
        self.workers = [
            actor.options(
                num_cpus=num_cpus_per_rank, num_gpus=num_gpus_per_rank, **placement(r)
            ).remote(
                rank=r, world_size=num_ranks, master_addr=addr, master_port=port, spec=spec
            )
            for r in range(num_ranks)
        ]
        try:
            wait_ready([w.__ray_ready__.remote() for w in self.workers], placement_group, "learner ranks")
        except Exception:
            self.shutdown()
            raise
        self.info = self._call("ready")

    def _call(self, method: str, *per_rank_args: Sequence[Any], alongside: Sequence[Any] = (),
              **kwargs: Any) -> list[Any]:
        """Run `method` on every rank (rank r gets per_rank_args[i][r]); fail fast on any error,
        including one of the `alongside` calls (other actors' part of the same collective), and
        then stop every rank: one blocked in a collective would otherwise wait forever."""
        import ray

        if not self.workers:
            raise RuntimeError("the learner group is shut down (a rank failed or shutdown() ran)")
        refs = [
            getattr(w, method).remote(*(a[r] for a in per_rank_args), **kwargs)
            for r, w in enumerate(self.workers)
        ]
        pending = refs + list(alongside)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done[0])
        except Exception:
            self.shutdown()
            raise
        return ray.get(refs)

    def _step(
        self, method: str, batch: Mapping[str, Sequence[Any]], rollout: bool, **kw: Any
    ) -> dict[str, float]:
        validate_batch(batch, rollout=rollout)
        results = self._call(method, shard_batch(batch, self.num_ranks), **kw)
        return rank_mean(results)

    def sft_step(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, float]:
        return self._step("sft_step", batch, rollout=False)

    def grpo_step(
        self,
        batch: Mapping[str, Sequence[Any]],
        clip_eps: float = 0.2,
        beta: float = 0.0,
        kl_kind: str = "k3",
        clip_eps_high: float | None = None,
    ) -> dict[str, float]:
        if beta > 0 and not self.with_reference:
            raise ValueError("grpo_step: beta > 0 needs a reference model (with_reference=True)")
        return self._step(
            "grpo_step",
            batch,
            rollout=True,
            clip_eps=clip_eps,
            beta=beta,
            kl_kind=kl_kind,
            clip_eps_high=clip_eps_high,
        )

    def bce_step(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, float]:
        """Meta-RM training step: `input_ids` token lists and `labels` (targets in [0, 1]), split
        over ranks."""
        ids, labels = batch.get("input_ids"), batch.get("labels")
        if ids is None or labels is None or len(ids) != len(labels) or not ids:
            raise ValueError("bce batch: expected equal, non-empty lists 'input_ids' and 'labels'")
        for i, y in enumerate(labels):
            if not isinstance(y, Real) or not 0 <= y <= 1:
                raise ValueError(f"bce batch.labels[{i}]: expected a target in [0, 1], got {y!r}")
        results = self._call("bce_step", shard_batch(batch, self.num_ranks))
        return rank_mean(results)

    def state_for_sync(self) -> Any:
        """Rank 0's full state dict. All ranks take part: ZeRO-3 gathers collectively."""
        return self._rank0("state_for_sync")

    def payload_ref(self) -> Any:
        """The ObjectRef of rank 0's weights as one safetensors blob, which rank 0 put in the
        object store: engines read it from there, and the weights never pass through the
        driver."""
        return self._rank0("weights_payload", as_ref=True)

    def _rank0(self, method: str, as_ref: bool = False) -> Any:
        import ray

        if not self.workers:
            raise RuntimeError("the learner group is shut down (a rank failed or shutdown() ran)")
        refs = [getattr(w, method).remote() for w in self.workers]
        try:
            ray.get(refs[1:])
            if as_ref:
                ray.wait(refs[:1])
                return refs[0]
            return ray.get(refs[0])
        except Exception:
            self.shutdown()
            raise

    def broadcast_weights(self, bucket_bytes: int, receivers: Sequence[Any] = ()) -> None:
        """Every rank takes part; rank 0 sends to the engines of the weight group it leads.
        `receivers` are the engines' receive calls: if one fails (an engine died mid-broadcast),
        the ranks are stopped and its error raised, where NCCL would leave rank 0 waiting."""
        self._call("broadcast_weights", [bucket_bytes] * self.num_ranks, alongside=receivers)

    def save(self, path: str | os.PathLike[str]) -> str:
        return self._call("save", [str(path)] * self.num_ranks)[0]

    def save_state(self, path: str | os.PathLike[str]) -> str:
        return self._call("save_state", [str(path)] * self.num_ranks)[0]

    def load_state(self, path: str | os.PathLike[str]) -> None:
        self._call("load_state", [str(path)] * self.num_ranks)

    def shutdown(self) -> None:
        import ray

        for w in getattr(self, "workers", []):
            ray.kill(w, no_restart=True)
        self.workers = []
        if self._on_shutdown is not None:  # e.g. give the ranks' bundles back (spct.placement.Bundles)
            self._on_shutdown()
            self._on_shutdown = None
