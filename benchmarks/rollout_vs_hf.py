"""Rollout generation: spct's vLLM engine against transformers `generate`, same model and prompts.

    python benchmarks/rollout_vs_hf.py                  # demo preset and ~20M, n = 8
    python benchmarks/rollout_vs_hf.py --sizes demo --model outputs/spct-default/checkpoints/rl-final/model

Both sides sample n completions of exactly --tokens new tokens (min = max, so a model that
stops early cannot make one side look faster) for the same GRM prompts, chat template applied,
at temperature 1 with no top-k/top-p, in one process with the same thread count: transformers
first (vLLM's CPU worker fixes the thread count once it starts), then spct's `VLLMEngine` with
the embedded default's engine settings. Each side is timed twice after a warm-up call and the
faster run kept. Prints tokens/s for both and the ratio; writes OUT/rollout_vs_hf.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best_of(fn, reps: int = 2) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def one_size(a: argparse.Namespace, model: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.grpo_vs_trl import compose, rl_prompts
    from spct.config import engine_kwargs
    from spct.models import load_tokenizer

    torch.set_num_threads(a.threads)
    cfg = compose([f"model.path={model}", f"rl.prompts_per_step={a.prompts}", "rl.steps=1"])
    prompts = [p[0] for p in rl_prompts(cfg)]
    tok = load_tokenizer(model)
    tok.padding_side = "left"
    enc = tok.apply_chat_template([[{"role": "user", "content": p}] for p in prompts], add_generation_prompt=True,
                                  tokenize=True, padding=True, return_tensors="pt", return_dict=True)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def hf_generate():
        with torch.no_grad():
            hf.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=a.n,
                        max_new_tokens=a.tokens, min_new_tokens=a.tokens, pad_token_id=pad)

    hf_s = best_of(hf_generate)

    from spct.engine import VLLMEngine

    kwargs = engine_kwargs(cfg.model, cfg.rollout, cfg.seed)
    kwargs["num_threads"] = a.threads
    engine = VLLMEngine(str(model), **kwargs)
    sampling = dict(n=a.n, temperature=1.0, max_tokens=a.tokens, min_tokens=a.tokens)
    vllm_s = best_of(lambda: engine.generate(prompts, sampling))
    tokens = len(prompts) * a.n * a.tokens
    return {"tokens": tokens, "hf_tok_s": tokens / hf_s, "vllm_tok_s": tokens / vllm_s,
            "ratio": hf_s / vllm_s, "engine": kwargs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="demo,20m")
    ap.add_argument("--model", default=None, help="use this folder instead of building each size")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "rollout_vs_hf")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dry-run", action="store_true", help="check every configuration it would run; start nothing")
    a = ap.parse_args()
    if a.dry_run:
        from benchmarks.grpo_vs_trl import dry_run

        models = {size: Path(a.model) if a.model else REPO / "outputs" / "bench" / f"model-{size}"
                  for size in a.sizes.split(",")}
        dry_run({size: [f"model.path={m}", f"rl.prompts_per_step={a.prompts}", "rl.steps=1"]
                 for size, m in models.items()}, [a.model])
        return
    a.out.mkdir(parents=True, exist_ok=True)
    if a.worker:  # one size per process: vLLM's thread settings do not come undone
        size, model = a.worker.split("=", 1)
        (a.out / f"{size}.json").write_text(json.dumps(one_size(a, Path(model)), indent=1))
        return

    from benchmarks.grpo_vs_trl import build_model

    results = {}
    for size in a.sizes.split(","):
        model = Path(a.model) if a.model else build_model(size, REPO / "outputs" / "bench", 0)
        cmd = [sys.executable, __file__, f"--worker={size}={model}", f"--out={a.out}", f"--prompts={a.prompts}",
               f"--n={a.n}", f"--tokens={a.tokens}", f"--threads={a.threads}"]
        import subprocess

        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        results[size] = json.loads((a.out / f"{size}.json").read_text())
    (a.out / "rollout_vs_hf.json").write_text(json.dumps(results, indent=1))
    print(f"\n{a.prompts} prompts x n={a.n} x {a.tokens} new tokens, {a.threads} threads")
    print("| size | vLLM engine tok/s | transformers generate tok/s | ratio |")
    print("|---|---|---|---|")
    for size, r in results.items():
        print(f"| {size} | {r['vllm_tok_s']:.0f} | {r['hf_tok_s']:.0f} | {r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
