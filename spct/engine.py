"""One vLLM engine serving the model being trained, with in-place weight updates.

`VLLMEngine` is a plain class; the rollout group and the reward pool run it as a Ray actor.
Everything goes through vLLM's public API: `LLM.generate`, `SamplingParams`, `collective_rpc`
into a worker extension, `reset_prefix_cache`, `sleep`/`wake_up`. Weights arrive either as
safetensors bytes (the Ray object store transport), as a folder on disk, or as a broadcast from
learner rank 0 (`WeightExtension`: NCCL between GPUs, gloo between CPU processes).

The worker extensions are injected by vLLM into its worker class, so their method names must
not collide with the worker's own (vLLM asserts on that) and they only reach the worker through
`self`: `self.reload_weights` is vLLM's in-place reload, which runs the model's weight loaders
(fused qkv / gate_up, tied embeddings). Calling `model.load_weights` directly does not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch

from spct.chat import chat_prompt_ids
from spct.versions import check_versions

log = logging.getLogger(__name__)

_EXTENSION = "spct.engine.WeightExtension"
WEIGHT_GROUP_TIMEOUT_S = 600  # a member that stops answering fails the others' broadcast after this


class GlooBroadcast:
    """A broadcast group over gloo (CPU tensors) on a TCP store of its own: the CPU twin of
    vLLM's PyNcclCommunicator. Neither joins the process's default group, which vLLM's
    workers and DeepSpeed's ranks each own already."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout_s: float) -> None:
        import datetime

        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        self.group = dist.ProcessGroupGloo(store, rank, world_size, timeout)

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        self.group.broadcast(tensor, src).wait()


def weight_group(host: str, port: int, rank: int, world_size: int, device: torch.device,
                 timeout_s: float = WEIGHT_GROUP_TIMEOUT_S) -> Any:
    """Join the weight group of learner rank 0 (rank 0) and every engine worker: NCCL on a GPU,
    gloo on CPU. The same bucketed broadcast runs over either (`.broadcast(tensor, src)`)."""
    if device.type != "cuda":
        return GlooBroadcast(host, port, rank, world_size, timeout_s)
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
    return PyNcclCommunicator(group, device=device)


class WeightExtension:
    """Methods vLLM mixes into each of its workers (CPU and GPU).

    The broadcast group holds the learner plus every worker of every engine; a worker's rank
    is its engine's `rank_offset` plus its tensor-parallel rank. Tensors travel in buckets: both
    sides cut the same (names, dtypes, shapes) list with `plan_buckets`, so only the metadata
    goes through Ray and the bytes go through the group.
    """

    def load_safetensors_bytes(self, payload: bytes) -> int:
        from safetensors.torch import load

        state = load(payload)
        self.reload_weights(weights_iterator=iter(state.items()))
        return len(state)

    def init_weight_group(self, master_addr: str, port: int, rank_offset: int, world_size: int):
        # A new learner (each phase starts one) leads a new group: the old one is let go first.
        self._spct_weight_comm = None
        self._spct_weight_comm = weight_group(master_addr, port, rank_offset + self.rank, world_size, self.device)

    def receive_broadcast(
        self,
        names: list[str],
        dtypes: list[str],
        shapes: list[list[int]],
        bucket_bytes: int,
    ) -> int:
        comm = getattr(self, "_spct_weight_comm", None)
        if comm is None:
            raise RuntimeError("receive_broadcast before init_weight_group")

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket in plan_buckets(dtypes, shapes, bucket_bytes):
                buffer = torch.empty(bucket_size(bucket), dtype=torch.uint8, device=self.device)
                comm.broadcast(buffer, src=0)
                if self.device.type == "cuda":
                    torch.cuda.current_stream().synchronize()
                for index, offset, nbytes in bucket:
                    raw = buffer[offset : offset + nbytes]
                    dtype = getattr(torch, dtypes[index])
                    yield names[index], raw.view(dtype).view(shapes[index])

        self.reload_weights(weights_iterator=tensors())
        return len(names)


# Each tensor starts on this boundary inside a bucket, so its bytes can be viewed as any dtype.
_ALIGN = 16


class BucketEntry(NamedTuple):
    index: int
    offset: int
    nbytes: int


def plan_buckets(
    dtypes: Sequence[str], shapes: Sequence[Sequence[int]], bucket_bytes: int
) -> list[list[BucketEntry]]:
    """Cut tensors, in order, into buckets of at most `bucket_bytes` (a bigger tensor goes alone).

    Sender and receivers call this on the same metadata, so they agree on bucket boundaries
    and byte offsets without exchanging them. A bucket's size is its last entry's end.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes: expected a positive integer, got {bucket_bytes}")
    buckets: list[list[BucketEntry]] = []
    current: list[BucketEntry] = []
    used = 0
    for index, (dtype, shape) in enumerate(zip(dtypes, shapes, strict=True)):
        numel = 1
        for dim in shape:
            numel *= int(dim)
        nbytes = numel * getattr(torch, dtype).itemsize
        offset = -(-used // _ALIGN) * _ALIGN
        if current and offset + nbytes > bucket_bytes:
            buckets.append(current)
            current, offset = [], 0
        current.append(BucketEntry(index, offset, nbytes))
        used = offset + nbytes
    if current:
        buckets.append(current)
    return buckets


def bucket_size(bucket: Sequence[BucketEntry]) -> int:
    return bucket[-1].offset + bucket[-1].nbytes


_SAMPLING_FIELDS: frozenset[str] | None = None


def make_sampling_params(sampling: dict[str, Any]):
    """SamplingParams from a plain dict, with the sampled token's logprob on by default.

    Logprobs are vLLM's raw ones (the model's distribution before temperature and top-p), which
    is what the learner recomputes for the importance ratio. vLLM does not detokenize step by
    step unless stop strings need it: `VLLMEngine.generate` decodes each finished completion
    once, which is cheaper (about 15% of vLLM's CPU loop on the demo model, docs/performance.md).
    """
    global _SAMPLING_FIELDS
    from vllm import SamplingParams

    if _SAMPLING_FIELDS is None:
        _SAMPLING_FIELDS = frozenset(SamplingParams.__struct_fields__)
    if not isinstance(sampling, dict):
        raise TypeError(f"sampling: expected a dict of SamplingParams fields, got {sampling!r}")
    unknown = sorted(set(sampling) - _SAMPLING_FIELDS)
    if unknown:
        raise ValueError(
            f"sampling: unknown field(s) {unknown}; expected SamplingParams fields such as "
            "n, temperature, top_p, top_k, max_tokens, seed, logprobs, stop"
        )
    return SamplingParams(**{"logprobs": 0, "detokenize": bool(sampling.get("stop")), **sampling})


class VLLMEngine:
    """One vLLM `LLM`: in-process on CPU, tensor-parallel over its GPUs otherwise.

    Every generation result carries `version`, the number of the weights that produced it
    (0 = the weights loaded from `model`), so the learner can tell stale rollouts apart.
    """

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        max_model_len: int = 512,
        seed: int = 0,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        kv_cache_gib: float | None = None,
        enforce_eager: bool = True,
        enable_prefix_caching: bool = True,
        enable_sleep_mode: bool = False,
        num_threads: int = 0,
        block_size: int | None = None,
        ray_workers: bool = False,
    ) -> None:
        """`ray_workers`: the tensor-parallel workers are Ray actors in the bundles of this
        actor's placement group that VLLM_RAY_BUNDLE_INDICES names; this actor holds no GPU."""
        check_versions(("torch", "vllm", "transformers"), role="rollout engine")
        # The engine core runs in this process (seconds to start on CPU instead of tens), unless
        # the user's environment (forwarded by spct.cluster.actor_env) says otherwise.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.on_gpu = ray_workers or torch.cuda.is_available()
        if num_threads and not self.on_gpu:
            # Ray caps an actor's OpenMP threads at its CPU reservation, and vLLM's CPU worker
            # forbids changing them once it has started: set them before it does. On a small node
            # the engine and the learner take turns, so generation may use every core.
            torch.set_num_threads(num_threads)
        kwargs: dict[str, Any] = dict(
            model=str(model),
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            worker_extension_cls=_EXTENSION,
        )
        if block_size is not None:
            kwargs["block_size"] = block_size
        if ray_workers:
            kwargs["distributed_executor_backend"] = "ray"
        if self.on_gpu:
            kwargs.update(
                gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode
            )
        else:
            if kv_cache_gib is not None:
                kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
            # Per-prompt seeds (RolloutGroup.submit) need whole prefills on CPU: after a partial
            # prefill vLLM rewinds the request's generator, which a CPU generator cannot do.
            # Generation is as fast without chunking here (docs/reliability.md).
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 4096))
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        if self.tokenizer.eos_token_id is None:
            raise ValueError(
                f"{model}: the tokenizer has no eos token, so generation could never stop; "
                "set eos_token in its tokenizer_config.json"
            )
        self._version = 0
        self._asleep = False

    def version(self) -> int:
        return self._version

    def where(self) -> dict[str, Any]:
        """Its node, placement group bundle and GPUs (spct.placement.here)."""
        from spct.placement import here

        return here()

    def chat_prompt_ids(self, prompt: str | list[dict[str, str]]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, prompt)

    def generate(
        self, prompts: Sequence[str | list[dict[str, str]]], sampling: dict[str, Any], chat: bool = True,
        seeds: Sequence[int] | None = None,
    ) -> list[dict[str, Any]]:
        """Sample completions; one dict per prompt, in order (see the module docstring).
        `seeds`, one per prompt, make each prompt's samples independent of the batch."""
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a list of strings, got a single string")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds: expected one per prompt ({len(prompts)}), got {len(seeds)}")
        for i, prompt in enumerate(prompts):
            conversation = chat and isinstance(prompt, list) and all(isinstance(t, dict) for t in prompt)
            if not isinstance(prompt, str) and not conversation:
                raise TypeError(f"prompts[{i}]: expected a string (or, with chat, a list of {{role, content}} "
                                f"messages), got {type(prompt).__name__}")
        if self._asleep:
            raise RuntimeError("generate on a sleeping engine: call wake_up() first")
        params = make_sampling_params(sampling)
        if not prompts:
            return []
        if chat:
            ids = [self.chat_prompt_ids(p) for p in prompts]
        else:
            ids = [list(self.tokenizer(p)["input_ids"]) for p in prompts]
        # A prompt that leaves no room to generate gets empty samples (its scores then fail to
        # parse) instead of failing the whole batch; generation never runs past the context.
        limit = self.llm.model_config.max_model_len
        fits = [i for i, x in enumerate(ids) if len(x) < limit]
        per_prompt = []
        for i in fits:
            p = params.clone()
            p.max_tokens = min(params.max_tokens or limit, limit - len(ids[i]))
            if seeds is not None:
                p.seed = int(seeds[i])
            per_prompt.append(p)
        if len(fits) < len(ids):
            log.warning("%d of %d prompts do not fit max_model_len %d; they get empty samples",
                        len(ids) - len(fits), len(ids), limit)
        outputs = iter(self.llm.generate([{"prompt_token_ids": ids[i]} for i in fits], per_prompt,
                                         use_tqdm=False) if fits else [])
        empty = {"text": "", "token_ids": [], "logprobs": [], "finish_reason": "prompt_too_long"}
        results = []
        for x in ids:
            if len(x) < limit:
                out = next(outputs)
                samples = [self._sample(c, params) for c in out.outputs]
            else:
                samples = [dict(empty) for _ in range(params.n)]
            results.append({"prompt_token_ids": x, "samples": samples, "version": self._version})
        return results

    def update_weights(self, payload: bytes, version: int) -> int:
        """Load a full state dict (HF names, safetensors bytes) in place; returns the version."""
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload: expected safetensors bytes, got {type(payload).__name__}")
        self.llm.collective_rpc("load_safetensors_bytes", args=(bytes(payload),))
        return self._finish_update(version)

    def update_weights_from_path(self, folder: str, version: int) -> int:
        """Load the weights of a Hugging Face folder (e.g. a learner checkpoint) in place."""
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"update_weights_from_path: no such folder {folder}")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)})
        return self._finish_update(version)

    def init_weight_group(self, master_addr: str, port: int, rank_offset: int, world_size: int):
        """Join the weight group learner rank 0 leads (see `WeightExtension`)."""
        self.llm.collective_rpc(
            "init_weight_group", args=(master_addr, port, rank_offset, world_size)
        )

    def receive_broadcast(
        self,
        names: list[str],
        dtypes: list[str],
        shapes: list[list[int]],
        version: int,
        bucket_bytes: int,
    ) -> int:
        """Receive one bucketed broadcast from learner rank 0; returns the version."""
        self.llm.collective_rpc("receive_broadcast", args=(names, dtypes, shapes, bucket_bytes))
        return self._finish_update(version)

    def sleep(self, level: int = 1) -> None:
        """Free GPU memory between rollouts (weights offloaded, KV cache dropped)."""
        if not self.on_gpu:
            log.info("sleep: no GPU memory to free on CPU; ignored")
            return
        self.llm.sleep(level=level)
        self._asleep = True

    def wake_up(self) -> None:
        if not self.on_gpu:
            log.info("wake_up: nothing to restore on CPU; ignored")
            return
        self.llm.wake_up()
        self._asleep = False

    def _sample(self, completion, params) -> dict[str, Any]:
        token_ids = [int(t) for t in completion.token_ids]
        logprobs = None
        if completion.logprobs is not None:
            logprobs = [
                float(step[t].logprob) for step, t in zip(completion.logprobs, token_ids, strict=True)
            ]
        text = completion.text if params.detokenize else self.tokenizer.decode(
            token_ids, skip_special_tokens=params.skip_special_tokens
        )
        return {
            "text": text,
            "token_ids": token_ids,
            "logprobs": logprobs,
            "finish_reason": completion.finish_reason,
        }

    def _finish_update(self, version: int) -> int:
        # Cached KV blocks were computed with the old weights.
        self.llm.reset_prefix_cache()
        self._version = int(version)
        return self._version
