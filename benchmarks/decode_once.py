"""What decoding each completion once saves against vLLM's step-by-step detokenizer.

    python benchmarks/decode_once.py --model outputs/bench/demo-warmup/checkpoints/warmup-final/model

One in-process `VLLMEngine` with the embedded default's engine settings generates the RL batch
(the RL phase's first 32 prompts, n = 4, temperature 1, up to 160 new tokens) alternately the
way spct does (vLLM does not detokenize; the engine decodes each finished completion once) and
with vLLM's own step-by-step detokenizer (`detokenize: true`, what spct did before). Both give
the same text (tests/integration/test_rollout.py). Prints the median of --reps calls of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dry-run", action="store_true", help="check the configuration and the model; start nothing")
    a = ap.parse_args()

    from benchmarks.grpo_vs_trl import compose, dry_run, rl_prompts

    if a.dry_run:
        dry_run({"engine": [f"model.path={a.model}", "rl.steps=1"]}, [a.model])
        return
    from spct.config import engine_kwargs
    from spct.engine import VLLMEngine

    cfg = compose([f"model.path={a.model}", "rl.steps=1"])
    prompts = [p[0] for p in rl_prompts(cfg)]
    engine = VLLMEngine(a.model, **engine_kwargs(cfg.model, cfg.rollout, cfg.seed))
    sampling = dict(n=cfg.rl.group_size, temperature=1.0, max_tokens=cfg.model.max_new_tokens)
    ways = {"decoded once (spct)": sampling, "vLLM step-by-step detokenizer": {**sampling, "detokenize": True}}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for rep in range(a.reps + 1):
        for name, params in ways.items():
            start = time.perf_counter()
            engine.generate(prompts, params)
            if rep:
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    base = med["vLLM step-by-step detokenizer"]
    print(f"\n{len(prompts)} prompts x n={sampling['n']}, engine {engine_kwargs(cfg.model, cfg.rollout, cfg.seed)}")
    print("| text | generate (s) | / step-by-step |")
    print("|---|---|---|")
    for name, t in med.items():
        print(f"| {name} | {t:.3f} | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
