"""The GPU path on one GPU, end to end, in under 8 minutes (H100/H200, no network).

    python benchmarks/gpu_smoke.py --out outputs/gpu-smoke      # or: bash benchmarks/gpu_smoke.sh
    python benchmarks/gpu_smoke.py --dry-run                    # print what it would run (any machine)

1. Builds a random-init Llama of about 1B parameters with the project's factory (preset "1b").
2. Runs `python -m spct.train experiment=quick` on CUDA with the learner and the vLLM engine
   colocated on the one GPU (`rollout.colocate=true`: the engine sleeps while the learner
   trains): a short warm-up, then 3 GRPO steps, each ending with a weight sync to the engine.
3. Checks the sync on the GPU: a ZeRO-3 learner rank and an engine share the GPU, the learner
   takes SFT steps, its weights go to the engine, and the log-probs the engine reports for its
   greedy tokens must agree with transformers' on the learner's weights within LOGPROB_TOL
   (below), while the same tokens under the weights before the steps must not: a sync that
   missed or garbled a tensor fails, float noise between kernels does not.
4. Prints the learner's tokens/s and MFU (6 x parameters x every token its forward passes ran,
   prompts included, per step time, against the GPU's dense bf16 peak), the rollout tokens/s,
   the time of each part, and one summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Agreement of two float32 models' log-probs for the same tokens, in nats (max over tokens).
# Equal weights in different kernels differ by float rounding: vLLM's attention and matmuls run
# TF32 on Ampere and Hopper (a 10-bit mantissa, ~5e-4 relative per product), a few 1e-3 nats on
# logits of size ~10. A missed or garbled tensor moves log-probs by tenths to whole nats, and
# greedy tokens can flip on a near-tie even when the weights agree, so tokens are not compared.
LOGPROB_TOL = 0.05
# Dense bf16 peak FLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def train_overrides(model: Path, out: Path) -> list[str]:
    """The colocated quick run on one GPU (tests/unit/test_gpu_smoke.py composes them on CPU)."""
    return [
        "experiment=quick", f"model.path={model}", "model.tiny_preset=null", "model.dtype=bfloat16",
        "model.max_model_len=1024", "cluster.num_gpus=1", "cluster.num_cpus=8",
        "rollout=gpu", "rollout.num_engines=1", "rollout.colocate=true", "rollout.gpu_memory_utilization=0.3",
        "rollout.enforce_eager=true", "learner=gpu", "learner.num_ranks=1", "learner.zero_stage=1",
        "learner.micro_batch_size=8", "phases=[warmup,rl]", "warmup.steps=10", "rl.steps=3",
        "logger=none", f"output_dir={out}",
    ]


def mfu(params: float, tokens: float, seconds: float, device: str) -> float | None:
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
    return 6 * params * tokens / seconds / peak if peak and seconds > 0 else None


def learner_rates(records: list[dict], params: float, device: str) -> dict[str, float | None]:
    """Tokens/s and MFU of the warm-up steps after the first (which includes compilation), over
    every token the forward passes ran (`forward_tokens`), not only those the loss counts."""
    steps = [r for r in records if r.get("phase") == "warmup" and "step_time_s" in r][1:]
    tokens, seconds = sum(r["forward_tokens"] for r in steps), sum(r["step_time_s"] for r in steps)
    rl = [r for r in records if r.get("phase") == "rl" and "tokens_per_s" in r]
    return {"learner_tokens_per_s": tokens / seconds if seconds else None,
            "learner_mfu": mfu(params, tokens / max(len(steps), 1), seconds / max(len(steps), 1), device),
            "rollout_tokens_per_s": sum(r["tokens_per_s"] for r in rl) / len(rl) if rl else None}


def agreement(engine: list[list[float]], reference: list[list[float]]) -> float:
    """Max |engine - reference| over every token's log-prob (both given per prompt)."""
    return max(abs(a - b) for e, r in zip(engine, reference, strict=True) for a, b in zip(e, r, strict=True))


def sync_check(model: Path) -> dict:
    """A ZeRO-3 learner rank and an engine colocated on one GPU: after a sync the engine's
    log-probs of its greedy tokens agree with transformers' on the learner's weights."""
    import ray
    import torch

    from spct.algos import gather_logprobs
    from spct.chat import encode_sft, sft_batch
    from spct.learner import LearnerGroup, LearnerSpec
    from spct.models import load_causal_lm, load_tokenizer
    from spct.rollout import RolloutGroup
    from spct.sample import samples_of
    from spct.weight_sync import make_weight_sync

    prompts = ["Solve: 3+4 ; 7+8", "Which response is best?", "hello there"]
    ray.init(address="local", num_gpus=1, num_cpus=8, include_dashboard=False, logging_level="ERROR")
    engines = RolloutGroup(str(model), 1, dict(dtype="float32", max_model_len=1024, gpu_memory_utilization=0.3,
                                                enforce_eager=True, enable_sleep_mode=True, seed=0),
                           num_gpus_per_engine=0.5, colocated=True)
    learner = LearnerGroup(1, LearnerSpec(model=str(model), zero_stage=3, lr=1e-4, total_steps=10, dtype="float32",
                                   micro_batch_size=4), num_gpus_per_rank=0.5)
    greedy = {"temperature": 0.0, "max_tokens": 16, "logprobs": 0}
    before = [samples_of(r)[0].token_ids for r in engines.generate(prompts, greedy)]
    initial = learner.state_for_sync()
    tok = load_tokenizer(model)
    batch = sft_batch([encode_sft(tok, p, "7+8=15 ; 3+9=12") for p in prompts])
    start = time.perf_counter()
    for _ in range(3):
        learner.sft_step(batch)
    sync = make_weight_sync("ray", engines)
    t0 = time.perf_counter()
    sync.push_from(learner, 1)
    sync_s = time.perf_counter() - t0
    results = [samples_of(r)[0] for r in engines.generate(prompts, greedy)]
    state = learner.state_for_sync()
    engines.shutdown()
    learner.shutdown()
    ray.shutdown()
    hf = load_causal_lm(model, dtype="float32").cuda().eval()

    @torch.no_grad()
    def logprobs(weights) -> list[list[float]]:
        hf.load_state_dict(weights, strict=False)
        out = []
        for s in results:
            prompt, ids = s.prompt_ids, s.token_ids
            logits = hf(torch.tensor([prompt + ids], device="cuda")).logits[:, len(prompt) - 1 : -1]
            out.append(gather_logprobs(logits, torch.tensor([ids], device="cuda"))[0].tolist())
        return out

    engine = [s.logprobs for s in results]
    after, old = agreement(engine, logprobs(state)), agreement(engine, logprobs(initial))
    return {"changed": [s.token_ids for s in results] != before,
            "logprob_gap": after, "logprob_gap_to_old_weights": old,
            "agrees": after <= LOGPROB_TOL < old, "sync_s": sync_s, "train_and_sync_s": time.perf_counter() - start}


def summary(ok: bool, report: dict) -> str:
    """The run in one line."""
    def num(key: str, fmt: str) -> str:
        value = report.get(key)
        return "n/a" if value is None else format(value, fmt)

    return (f"gpu_smoke: {'PASS' if ok else 'FAIL'} on {report['device']} | learner {num('learner_tokens_per_s', ',.0f')} "
            f"tokens/s, MFU {num('learner_mfu', '.1%')} | rollout {num('rollout_tokens_per_s', ',.0f')} tokens/s | "
            f"sync {num('sync_s', '.1f')} s, log-prob gap {num('sync_logprob_gap', '.2g')} nats "
            f"(old weights {num('sync_logprob_gap_to_old_weights', '.2g')}, tolerance {LOGPROB_TOL}) | "
            f"total {num('total_s', '.0f')} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/gpu-smoke")
    ap.add_argument("--dry-run", action="store_true", help="print the steps and the training command, run nothing")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    model, run = out / "model-1b", out / "run"
    cmd = [sys.executable, "-m", "spct.train", *train_overrides(model, run)]
    if a.dry_run:
        print(f"build: spct.models.ensure_tiny_model({str(model)!r}, preset='1b')")
        print("train: " + shlex.join(cmd))
        print(f"check: a colocated ZeRO-3 learner rank and engine, log-probs after a sync within {LOGPROB_TOL} "
              "nats of transformers'")
        return 0
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_smoke: needs a CUDA GPU (try --dry-run to see what it runs)")
    from spct.models import ensure_tiny_model

    device = torch.cuda.get_device_name()
    times = {}
    t = time.perf_counter()
    ensure_tiny_model(model, preset="1b")
    times["build_s"] = time.perf_counter() - t
    from spct.models import load_causal_lm

    params = float(sum(p.numel() for p in load_causal_lm(model, dtype="float32").parameters()))
    t = time.perf_counter()
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    times["train_s"] = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"gpu_smoke: the training run failed ({proc.returncode}): {shlex.join(cmd)}")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rates = learner_rates(records, params, device)
    t = time.perf_counter()
    check = sync_check(model)
    times["sync_check_s"] = time.perf_counter() - t
    report = {"device": device, "parameters": params, **rates, **times, "total_s": sum(times.values()),
              "results": json.loads((run / "results.json").read_text())["results"],
              "sync_changed_output": check["changed"], "sync_logprob_gap": check["logprob_gap"],
              "sync_logprob_gap_to_old_weights": check["logprob_gap_to_old_weights"], "sync_s": check["sync_s"]}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    ok = check["agrees"]
    print(summary(ok, report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
