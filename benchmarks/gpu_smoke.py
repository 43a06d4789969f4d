"""The GPU path on one GPU, end to end, in under 8 minutes (H100/H200, no network).

    python benchmarks/gpu_smoke.py --out outputs/gpu-smoke      # or: bash benchmarks/gpu_smoke.sh
    python benchmarks/gpu_smoke.py --dry-run                    # print what it would run (any machine)

1. Builds a random-init Llama of about 1B parameters with the project's factory (preset "1b").
2. Runs `python -m spct.train experiment=quick` on CUDA with the learner and the vLLM engine
   colocated on the one GPU (`rollout.colocate=true`: the engine sleeps while the learner
   trains): a short warm-up, then 3 GRPO steps, each ending with a weight sync to the engine.
3. Checks the sync on the GPU: a learner rank and an engine share the GPU, the learner takes
   SFT steps, its weights go to the engine, and the engine's greedy tokens must equal
   transformers' greedy tokens on the learner's weights (float32, so kernels cannot differ).
4. Prints the learner's tokens/s and MFU (6 x parameters x tokens per step time, against the
   GPU's dense bf16 peak), the rollout tokens/s and the time of each part.
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
    """Tokens/s and MFU of the warm-up steps after the first (which includes compilation)."""
    steps = [r for r in records if r.get("phase") == "warmup" and "step_time_s" in r][1:]
    tokens, seconds = sum(r["tokens"] for r in steps), sum(r["step_time_s"] for r in steps)
    rl = [r for r in records if r.get("phase") == "rl" and "tokens_per_s" in r]
    return {"learner_tokens_per_s": tokens / seconds if seconds else None,
            "learner_mfu": mfu(params, tokens / max(len(steps), 1), seconds / max(len(steps), 1), device),
            "rollout_tokens_per_s": sum(r["tokens_per_s"] for r in rl) / len(rl) if rl else None}


def sync_check(model: Path) -> dict:
    """Learner rank and engine colocated on one GPU; greedy after a sync equals transformers'."""
    import ray
    import torch

    from spct.learner import LearnerGroup, LearnerSpec
    from spct.models import load_causal_lm, load_tokenizer
    from spct.recipes.sft import encode_sft, sft_batch
    from spct.rollout import RolloutGroup
    from spct.weight_sync import make_weight_sync

    prompts = ["Solve: 3+4 ; 7+8", "Which response is best?", "hello there"]
    ray.init(address="local", num_gpus=1, num_cpus=8, include_dashboard=False, logging_level="ERROR")
    engines = RolloutGroup(str(model), 1, dict(dtype="float32", max_model_len=1024, gpu_memory_utilization=0.3,
                                                enforce_eager=True, enable_sleep_mode=True, seed=0),
                           num_gpus_per_engine=0.5, colocated=True)
    learner = LearnerGroup(1, LearnerSpec(model=str(model), zero_stage=0, lr=1e-4, total_steps=10, dtype="float32",
                                   micro_batch_size=4), num_gpus_per_rank=0.5)
    greedy = {"temperature": 0.0, "max_tokens": 16}
    before = [r["samples"][0]["token_ids"] for r in engines.generate(prompts, greedy)]
    tok = load_tokenizer(model)
    batch = sft_batch([encode_sft(tok, p, "7+8=15 ; 3+9=12") for p in prompts])
    start = time.perf_counter()
    for _ in range(3):
        learner.sft_step(batch)
    sync = make_weight_sync("ray", engines)
    t0 = time.perf_counter()
    sync.push_from(learner, 1)
    sync_s = time.perf_counter() - t0
    after = [r["samples"][0]["token_ids"] for r in engines.generate(prompts, greedy)]
    state = learner.state_for_sync()
    engines.shutdown()
    learner.shutdown()
    ray.shutdown()
    hf = load_causal_lm(model, dtype="float32").cuda().eval()
    hf.load_state_dict(state, strict=False)
    reference = []
    for prompt in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        x = torch.tensor([ids], device="cuda")
        out = hf.generate(x, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)[0, x.shape[1]:]
        out = out.tolist()
        reference.append(out[: out.index(tok.eos_token_id) + 1] if tok.eos_token_id in out else out)
    return {"changed": after != before, "equal_to_transformers": after == reference, "engine": after,
            "transformers": reference, "sync_s": sync_s, "train_and_sync_s": time.perf_counter() - start}


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
        print("check: a colocated learner rank and engine, greedy after a sync against transformers")
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
    report = {"device": device, "parameters": params, **rates, **times,
              "results": json.loads((run / "results.json").read_text())["results"],
              "sync_changed_output": check["changed"], "sync_equal_to_transformers": check["equal_to_transformers"],
              "sync_s": check["sync_s"]}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    ok = check["changed"] and check["equal_to_transformers"]
    print("gpu_smoke:", "PASS" if ok else f"FAIL (engine {check['engine']} vs transformers {check['transformers']})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
