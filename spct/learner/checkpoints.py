"""Saving a learner rank's weights: Hugging Face folders (for vLLM, transformers and the next
phase), DeepSpeed checkpoints (to resume with optimizer and schedule), and the full state dict
the weight sync sends to the rollout engines, or its broadcast to them."""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

from spct.run_state import CHECKPOINT_TAG


class Checkpoints:
    """Mixed into `LearnerWorker` (which provides engine, rank, world_size, zero_stage)."""

    def state_for_sync(self) -> dict[str, Tensor] | None:
        """Full weights under their Hugging Face names on rank 0 (contiguous CPU copies in the
        training dtype), else None.

        Collective under ZeRO-3: each partitioned tensor is gathered on every rank, one at a
        time, so no rank ever holds more than one full tensor beyond its shard.
        """
        module = self.engine.module
        out: dict[str, Tensor] | None = {} if self.rank == 0 else None
        if self.zero_stage == 3:
            import deepspeed

            for name, t in module.state_dict(keep_vars=True).items():
                if hasattr(t, "ds_id"):
                    with deepspeed.zero.GatheredParameters([t], modifier_rank=None):
                        if out is not None:
                            out[name] = t.data.detach().to("cpu", copy=True).contiguous()
                elif out is not None:
                    out[name] = t.detach().to("cpu", copy=True).contiguous()
            return out
        if out is not None:
            for name, t in module.state_dict().items():
                out[name] = t.detach().to("cpu", copy=True).contiguous()
        return out

    def weights_payload(self) -> bytes | None:
        """The full weights as one safetensors blob on rank 0 (what the object-store weight sync
        sends, put in the store by this rank, not the driver), else None. Collective like
        state_for_sync."""
        from spct.weight_sync import state_to_safetensors

        state = self.state_for_sync()
        return None if state is None else state_to_safetensors(state)

    # -- the broadcast weight sync: rank 0 sends to the rollout engines (NCCL on GPUs, gloo on CPU)

    def weight_group_address(self) -> tuple[str, int]:
        """Rank 0's node and a free port there: where the weight group meets."""
        import ray

        from spct.learner.group import free_port

        return ray.util.get_node_ip_address(), free_port()

    def init_weight_group(self, master_addr: str, port: int, world_size: int) -> None:
        """Rank 0 leads a new weight group with the engine workers (ranks 1..world_size-1)."""
        from spct.engine import weight_group

        if self.rank != 0:
            raise RuntimeError("init_weight_group: only learner rank 0 leads the weight group")
        self._weight_comm = weight_group(master_addr, port, 0, world_size, self.device)

    def weight_metadata(self) -> tuple[list[str], list[str], list[list[int]]]:
        """Names, dtypes and full shapes of the weights a broadcast sends, in its order."""
        names, dtypes, shapes = [], [], []
        for name, t in self.engine.module.state_dict(keep_vars=True).items():
            names.append(name)
            dtypes.append(str(t.dtype).removeprefix("torch."))
            shapes.append([int(d) for d in getattr(t, "ds_shape", t.shape)])
        return names, dtypes, shapes

    def broadcast_weights(self, bucket_bytes: int) -> int:
        """Send the full weights in buckets (`spct.engine.plan_buckets`) from rank 0's device.
        Every rank calls it: under ZeRO-3 each tensor is gathered collectively first."""
        from spct.engine import bucket_size, plan_buckets

        names, dtypes, shapes = self.weight_metadata()
        tensors = self.engine.module.state_dict(keep_vars=True)
        comm = getattr(self, "_weight_comm", None)
        if self.rank == 0 and comm is None:
            raise RuntimeError("broadcast_weights before init_weight_group")
        for bucket in plan_buckets(dtypes, shapes, bucket_bytes):
            buffer = torch.empty(bucket_size(bucket), dtype=torch.uint8, device=self.device) if comm else None
            for index, offset, nbytes in bucket:
                t = tensors[names[index]]
                with _gathered(t, self.zero_stage):
                    if buffer is not None:
                        buffer[offset: offset + nbytes].copy_(t.data.reshape(-1).view(torch.uint8))
            if comm is not None:
                comm.broadcast(buffer, src=0)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return len(names)

    def save(self, path: str | os.PathLike[str]) -> str:
        """Model and tokenizer in Hugging Face format (safetensors), written by rank 0."""
        import deepspeed.comm as dist

        state = self.state_for_sync()
        if state is not None:
            self.engine.module.save_pretrained(str(path), state_dict=state)
            self.tokenizer.save_pretrained(str(path))
        if self.world_size > 1:
            dist.barrier()
        return str(path)

    def save_state(self, path: str | os.PathLike[str]) -> str:
        """DeepSpeed checkpoint (weights, optimizer, scheduler) for resuming; every rank writes
        its partitions, so `path` must be on storage all ranks share."""
        self.engine.save_checkpoint(str(path), tag=CHECKPOINT_TAG, save_latest=False)
        return str(path)

    def load_state(self, path: str | os.PathLike[str]) -> None:
        if not os.path.isdir(os.path.join(str(path), CHECKPOINT_TAG)):
            raise FileNotFoundError(
                f"learner checkpoint not found: expected the folder {path}/{CHECKPOINT_TAG} "
                "written by save_state"
            )
        loaded, _ = self.engine.load_checkpoint(
            str(path), tag=CHECKPOINT_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the learner checkpoint in {path}")



@contextlib.contextmanager
def _gathered(t: Tensor, zero_stage: int):
    """`t` whole for the duration: a ZeRO-3 partitioned parameter is gathered on every rank."""
    if zero_stage == 3 and hasattr(t, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([t], modifier_rank=None):
            yield
    else:
        yield
