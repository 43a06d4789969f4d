"""GPU memory of each actor of a GPU run, estimated before anything starts (spct.preflight).

Every actor that holds a GPU gets an estimate in bytes, split into named parts, against
`cluster.gpu_memory_gib`:

- **a learner rank, per training phase**: its model states as DeepSpeed's estimators give them
  (`estimate_zero3_model_states_mem_needs` for ZeRO-3, `estimate_zero2_model_states_mem_needs`
  for stages 1 and 2, both without offload; stage 0 keeps 20 bytes per parameter); the frozen
  reference of a GRPO phase with a KL term (bf16, partitioned under ZeRO-3); the activations of
  one micro-batch at the longest sequence the phase allows (the saved tensors of a decoder layer
  are taken as micro-batch x length x (8 hidden + 4 intermediate) elements, with a fused
  attention kernel; gradient checkpointing keeps one hidden state per layer plus one layer's);
  and the logits the loss keeps (SFT: bf16 logits and their gradient over the whole sequence;
  GRPO: over the completion, plus the float32 copy `gather_logprobs` keeps for backward; the meta
  RM's scalar head: none). A model that caps its attention logits (Gemma-2) trains with eager
  attention unless FlashAttention-2 is installed (spct.models.attention_kwargs; the `gpu` extra
  does not install it): its scores and probabilities, micro-batch x heads x length² each, count too.
- **a rollout engine, per GPU**: vLLM takes `rollout.gpu_memory_utilization` of the GPU and must
  hold in it the weights (split over the tensor-parallel GPUs), a forward pass of 8192 tokens and
  the KV cache of at least one sequence of `model.max_model_len`. With `rollout.colocate` the
  learner's resident states (model states and reference) share the GPU with that share.
- **the meta RM** (scoring): bf16 weights and one micro-batch of 32K tokens without gradients
  (8K with eager attention, plus one layer's attention matrices).
- **host RAM while the learner loads**, on the node with the most learner ranks (one per GPU):
  below ZeRO-3 every rank holds a whole bf16 copy of its model (and of the reference) before
  DeepSpeed moves it to the GPU; at ZeRO-3 the ranks load partitioned, a checkpoint shard of up
  to 5 GB at a time (transformers' default shard size). Ray knows a node's memory only once it
  runs, so this one is printed in the plan and checked, with a warning, when the group is placed.

Shapes come from the model's config.json (a local folder), or for the hub models the shipped
presets name, from the architecture fields of theirs shipped in conf/model/shapes; parameters
are counted exactly by building the model on the meta device. A model of neither is not
estimated, and the plan says so. These are estimates for a plan, meant to catch a run that
cannot fit; the allocator's fragmentation and the CUDA context (about 1 GiB) come on top.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from spct.files import write_atomic

GiB = 2**30
SHAPES = Path(__file__).resolve().parent / "conf" / "model" / "shapes"
ENGINE_TOKENS = 8192  # tokens of one engine forward pass in the estimate (vLLM's batched-token budget)
META_RM_TOKENS = 32768  # padded tokens of one meta RM scoring pass (spct.meta_rm.MetaRM)
EAGER_TOKENS = 8192  # the same for a model whose attention runs eager (its matrices grow with length²)


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the estimates need of a model: parameter counts and the sizes of its layers."""

    params: int
    largest: int  # parameters of the largest tensor (the embedding, for these models)
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    kv_heads: int
    head_dim: int
    heads: int = 0
    eager: bool = False  # attention logits capped (Gemma-2): the learner runs eager attention (spct.models)


def cache_dir() -> Path:
    """Where counted shapes are kept between commands ($XDG_CACHE_HOME/spct/shapes)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spct" / "shapes"


@functools.lru_cache(maxsize=16)
def _count(config_json: str) -> Shape:
    """The shape of a config.json's model, counted once per content and transformers version
    (importing transformers and building the model takes seconds; the plan runs often)."""
    from importlib.metadata import version

    key = hashlib.sha256(f"{version('transformers')}\n{config_json}".encode()).hexdigest()[:32]
    cached = cache_dir() / f"{key}.json"
    try:
        return Shape(**json.loads(cached.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    shape = _build(config_json)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, json.dumps(dataclasses.asdict(shape)))
    except OSError:  # a read-only home: count again next time
        pass
    return shape


def _build(config_json: str) -> Shape:
    import torch
    import transformers

    fields = json.loads(config_json)
    fields.pop("architectures", None)
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    sizes = [p.numel() for p in model.parameters()]
    heads = config.num_attention_heads
    return Shape(params=sum(sizes), largest=max(sizes), layers=config.num_hidden_layers, hidden=config.hidden_size,
                 intermediate=config.intermediate_size, vocab=config.vocab_size,
                 kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                 head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads, heads=heads,
                 eager=bool(getattr(config, "attn_logit_softcapping", None)))


def unestimated(model: str, role: str) -> str:
    return (f"memory: not estimated for {model} ({role}): no config.json there and no shipped shape "
            "(spct/conf/model/shapes)")


def shape_of(model: str | None) -> Shape | None:
    """The shape of `model` (a local folder with config.json, or a hub id with a shipped shape);
    None when neither is there."""
    if not model:
        return None
    local = Path(model) / "config.json"
    shipped = SHAPES / (str(model).replace("/", "--") + ".json")
    for path in (local, shipped):
        if path.is_file():
            try:
                return _count(path.read_text())
            except (ValueError, KeyError, TypeError, AttributeError):  # not a causal LM transformers builds
                return None
    return None


@dataclasses.dataclass
class Need:
    """One actor's estimate on one GPU: named parts in bytes, and a way out when it does not fit."""

    actor: str
    parts: dict[str, float]
    fix: str = ""
    limit: float | None = None  # bytes it must fit in (default: the whole GPU)
    limit_name: str = ""
    host: bool = False  # host RAM, not a GPU's memory: shown, checked once Ray knows the nodes
    resident: float = 0.0  # what stays on the GPU between steps (a learner's model states and reference)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def describe(self, within: bool = True) -> str:
        within = f"; within {self.limit / GiB:.1f} GiB, {self.limit_name}" if within and self.limit is not None else ""
        return f"{self.actor}: {self.total / GiB:.1f} GiB (" + ", ".join(
            f"{name} {b / GiB:.1f}" for name, b in self.parts.items()) + within + ")"


def model_states(shape: Shape, zero_stage: int, ranks: int) -> float:
    """Bytes of bf16 weights, gradients and float32 Adam states on one rank, as DeepSpeed's
    estimators give them without offload (`estimate_zero3_model_states_mem_needs`,
    `estimate_zero2_model_states_mem_needs`): 18 bytes per parameter spread over the ranks,
    plus at ZeRO-3 the largest layer gathered in float32, below it the whole bf16 weights.
    Written out rather than imported, because importing DeepSpeed costs every command seconds;
    tests/unit/test_memory.py checks them against DeepSpeed's own functions."""
    if zero_stage == 3:
        return 4 * shape.largest + int(18 * shape.params / ranks)
    if zero_stage in (1, 2):
        return 2 * shape.params + int(18 * shape.params / ranks)
    return 20.0 * shape.params


def _layer(shape: Shape, tokens: float) -> float:
    """Bytes a decoder layer saves for backward over `tokens` tokens (bf16, fused attention)."""
    return 2.0 * tokens * (8 * shape.hidden + 4 * shape.intermediate)


def learner_need(shape: Shape, phase: str, *, zero_stage: int, ranks: int, micro: int, length: int,
                 completion: int, reference: bool, checkpointing: bool) -> Need:
    tokens = micro * length
    parts = {f"model states (ZeRO-{zero_stage} over {ranks} ranks)": model_states(shape, zero_stage, ranks)}
    if reference:
        parts["reference"] = 2.0 * (shape.params / ranks + shape.largest if zero_stage == 3 else shape.params)
    resident = sum(parts.values())
    saved = (shape.layers * 2.0 * tokens * shape.hidden + _layer(shape, tokens) if checkpointing
             else shape.layers * _layer(shape, tokens))
    parts[f"activations ({micro} x {length} tokens)"] = saved
    if shape.eager:  # scores and probabilities of every head, bf16, per layer kept (one with checkpointing)
        parts["eager attention"] = (1 if checkpointing else shape.layers) * 2 * 2.0 * micro * shape.heads * length**2
    if phase in ("rl", "policy_rl"):
        parts[f"logits ({micro} x {completion} completion tokens)"] = micro * completion * shape.vocab * (2 + 2 + 4.0)
    elif phase != "meta_rm":
        parts["logits"] = tokens * shape.vocab * (2 + 2.0)
    fixes = ([f"a learner.micro_batch_size below {micro}"] if micro > 1 else []) + [
        f"more learner.num_ranks than {ranks}"] + (["learner.zero_stage=3"] if zero_stage < 3 else []) + (
        ["learner.gradient_checkpointing=true"] if not checkpointing else [])
    return Need(f"learner rank ({phase})", parts, fix=", ".join(fixes), resident=resident)


def engine_need(shape: Shape, name: str, *, tp: int, utilization: float, gpu: float, max_model_len: int) -> Need:
    kv_per_token = 2.0 * shape.layers * shape.kv_heads * shape.head_dim * 2
    return Need(f"{name} (per GPU of {tp})", {
        "weights": 2.0 * shape.params / tp,
        f"forward of {ENGINE_TOKENS} tokens": 2.0 * ENGINE_TOKENS * (4 * shape.hidden + 2 * shape.intermediate) / tp,
        f"KV cache of one {max_model_len}-token sequence": kv_per_token * max_model_len / tp,
    }, fix="a larger rollout.gpu_memory_utilization or rollout.tensor_parallel_size, or a smaller "
           "model.max_model_len", limit=utilization * gpu,
        limit_name=f"rollout.gpu_memory_utilization {utilization:g}")


def meta_rm_need(shape: Shape, max_length: int) -> Need:
    tokens = EAGER_TOKENS if shape.eager else META_RM_TOKENS
    parts = {"weights": 2.0 * shape.params,
             f"forward of {tokens} tokens": 2.0 * tokens * (4 * shape.hidden + 2 * shape.intermediate)}
    if shape.eager:  # one layer's bf16 scores and float32 probabilities, sequences of up to max_length
        parts["eager attention"] = tokens * min(max_length, tokens) * shape.heads * (2 + 4.0)
    return Need("meta RM (scoring)", parts, fix="a meta RM on a smaller backbone (meta_rm.model)")


SHARD = 5e9  # bytes of one checkpoint shard (transformers' save_pretrained default, max_shard_size 5GB)


def host_need(cfg: Any) -> Need | None:
    """Host RAM on the node with the most learner ranks while they load (None on CPU runs or
    when no trained model's shape is known)."""
    c, lc = cfg.cluster, cfg.learner
    if not c.num_gpus:
        return None
    ranks = min(lc.num_ranks, int(c.num_gpus))
    worst: tuple[float, str] | None = None
    for phase in cfg.phases:
        shape = shape_of(trained_model(cfg, phase)) if phase in LEARNER_PHASES else None
        if shape is None:
            continue
        copies = 2 if kl_beta(cfg, phase) > 0 else 1
        each = min(SHARD, 2.0 * shape.params) if lc.zero_stage == 3 else 2.0 * shape.params
        total = ranks * copies * each
        if worst is None or total > worst[0]:
            how = "a shard at a time (ZeRO-3)" if lc.zero_stage == 3 else "a whole bf16 copy each"
            worst = (total, f"{ranks} ranks x {copies} model{'s' if copies > 1 else ''} of {phase}, {how}")
    return None if worst is None else Need("learner loading, on one node", {worst[1]: worst[0]},
                                           host=True)


LEARNER_PHASES = ("warmup", "rft", "rl", "meta_rm", "policy_sft", "policy_rl")


def trained_model(cfg: Any, phase: str) -> str | None:
    """The model `phase` trains or evaluates: the GRM, the meta RM's backbone or the policy."""
    if phase == "meta_rm":
        return cfg.meta_rm.model or cfg.model.path
    return cfg.policy.model if phase.startswith("policy") else cfg.model.path


def kl_beta(cfg: Any, phase: str) -> float:
    """The KL weight of a GRPO phase (> 0: the learner holds a reference), else 0."""
    return {"rl": cfg.rl.beta, "policy_rl": cfg.policy.beta}.get(phase, 0.0)


def estimate(cfg: Any) -> tuple[list[Need], list[str]]:
    """Every GPU actor's estimate for a training config, and the models that could not be
    estimated (named, with why). Empty on a CPU run."""
    c = cfg.cluster
    if not c.num_gpus:
        return [], []
    if cfg.model.dtype == "float32":
        return [], ["memory: not estimated for float32 training (the estimates are for bf16 mixed precision)"]
    gpu = c.gpu_memory_gib * GiB
    lc, r, m = cfg.learner, cfg.rollout, cfg.model
    needs: list[Need] = []
    unknown: dict[str, str] = {}

    def shape(model: str | None, role: str) -> Shape | None:
        found = shape_of(model)
        if found is None and model is not None:  # None: a tiny model, built at the start (megabytes)
            unknown.setdefault(str(model), role)
        return found

    resident = 0.0
    for phase in cfg.phases:
        s = shape(trained_model(cfg, phase), f"the {phase} phase")
        if s is None:
            continue
        if phase in LEARNER_PHASES:
            need = learner_need(
                s, phase, zero_stage=lc.zero_stage, ranks=lc.num_ranks, micro=lc.micro_batch_size,
                length=cfg.meta_rm.max_length if phase == "meta_rm" else m.max_model_len,
                completion=cfg.policy.max_new_tokens if phase == "policy_rl" else m.max_new_tokens,
                reference=kl_beta(cfg, phase) > 0, checkpointing=lc.gradient_checkpointing)
            needs.append(need)
            resident = max(resident, need.resident)
        if phase in ("meta_rm", "eval") or (phase == "policy_rl" and cfg.policy.meta_rm):
            meta = shape(cfg.policy.meta_rm if phase == "policy_rl" else trained_model(cfg, "meta_rm"), "the meta RM")
            if meta is not None and not any(n.actor == "meta RM (scoring)" for n in needs):
                needs.append(meta_rm_need(meta, cfg.meta_rm.max_length))
    served = {cfg.policy.model if p.startswith("policy") else m.path for p in cfg.phases}
    if "policy_rl" in cfg.phases and cfg.policy.reward.kind == "grm":
        served.add(cfg.policy.grm or m.path)
    for model in sorted(str(x) for x in served if x is not None):
        s = shape(model, "a rollout engine")
        if s is not None:
            need = engine_need(s, f"rollout engine of {model}", tp=r.tensor_parallel_size,
                               utilization=r.gpu_memory_utilization, gpu=gpu, max_model_len=m.max_model_len)
            needs.append(need)
            if r.colocate:
                needs.append(Need(f"{model} engine + learner rank, colocated", {
                    f"engine's share ({r.gpu_memory_utilization:g} of the GPU)": r.gpu_memory_utilization * gpu,
                    "learner's resident states": resident},
                    fix="a smaller rollout.gpu_memory_utilization, or rollout.colocate=false"))
    notes = [unestimated(model, role) for model, role in unknown.items()]
    host = host_need(cfg)
    return needs + ([host] if host else []), notes


def host_check(need: Need | None, nodes: list[dict[str, float]]) -> str | None:
    """A warning when the smallest live node's memory (Ray's `memory` resource) is below the
    learner's loading estimate; None when it fits or either is unknown."""
    sizes = [n["memory"] for n in nodes if n.get("memory")]
    if need is None or not sizes or need.total <= min(sizes):
        return None
    return (f"{need.describe()} is more than the {min(sizes) / GiB:.1f} GiB Ray gives the smallest node: loading may "
            "run out of host RAM (learner.zero_stage=3 loads partitioned)")


def serving(model: str | None, rollout: Any, max_model_len: int, gpu_gib: float, gpus: int,
            meta_rm: str | None = None, judge_model: str | None = None,
            meta_rm_max_length: int = 4096) -> tuple[list[Need], list[str]]:
    """The estimates of `spct.evaluate` and `spct.serve` on GPUs: the GRM's engines (and a judge
    model's), and the meta RM; with the models that could not be estimated."""
    if not gpus:
        return [], []
    needs, notes = [], []
    for role, path in (("the GRM", model), ("the judge model", judge_model), ("the meta RM", meta_rm)):
        if path is None:
            continue
        s = shape_of(path)
        if s is None:
            notes.append(unestimated(path, role))
        elif role == "the meta RM":
            needs.append(meta_rm_need(s, meta_rm_max_length))
        else:
            needs.append(engine_need(s, f"rollout engine of {path}", tp=rollout.tensor_parallel_size,
                                     utilization=rollout.gpu_memory_utilization, gpu=gpu_gib * GiB,
                                     max_model_len=max_model_len))
    return needs, notes


def plan_lines(needs: list[Need], gpu_gib: float) -> list[str]:
    """The plan's memory section."""
    gpu = [need.describe() for need in needs if not need.host]
    host = [need.describe() for need in needs if need.host]
    indent = "\n              "
    return ([f"  memory      per GPU of {gpu_gib:g} GiB, estimated (GiB):{indent}" + indent.join(gpu)] if gpu else []
            ) + [f"  host RAM    {line}" for line in host]


def problems(needs: list[Need], gpu_gib: float) -> list[str]:
    """The estimates that do not fit, each naming the actor, the parts, the limit and a way out."""
    out = []
    for need in needs:
        if need.host:
            continue
        limit = need.limit if need.limit is not None else gpu_gib * GiB
        if need.total > limit:
            share = f"{need.limit_name} of " if need.limit_name else ""
            out.append(f"memory: {need.describe(within=False)} does not fit in {limit / GiB:.1f} GiB "
                       f"({share}cluster.gpu_memory_gib {gpu_gib:g}); try {need.fix}")
    return out
