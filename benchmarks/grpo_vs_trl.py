"""spct's RL step against TRL's GRPOTrainer on the same model, prompts and settings.

    python benchmarks/grpo_vs_trl.py                                  # demo preset and ~20M
    python benchmarks/grpo_vs_trl.py --sizes demo --model outputs/bench/demo-warmup/checkpoints/warmup-final/model
    python benchmarks/grpo_vs_trl.py --sizes demo --variant async rl.async_generation=true \
        rollout.num_threads=1 learner.num_threads=1

Both sides get the same model folder, the same GRM prompts (rendered by spct's template for
the same synthetic items, in the same order, chat template applied), the same G, prompts per
step, max new tokens, temperature, beta, learning rate and torch thread count. spct runs its
real RL phase (`python -m spct.train phases=[rl] ...`: vLLM rollout engine, DeepSpeed learner,
weight sync, Ray actors); TRL runs GRPOTrainer with transformers generation in one process.
Each side runs in its own process, one after the other; the first step of each (compilation,
caches) is dropped and the median of the rest is reported.

TRL runs twice: with GRPOConfig's defaults (gradient checkpointing on) and with checkpointing
off, as a user tuning it for speed would (spct's CPU learner does not checkpoint); the ratio
against each is printed. Prints samples/s for both, the ratios, spct's per-step breakdown (generate, reward, train,
sync, idle) and the mean completion length of each side (the two must generate alike for the
ratio to mean anything), and writes everything to OUT/results.json. Each `--variant NAME
OVERRIDE...` adds a row: spct again with those overrides, against the same TRL measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Shapes built by spct's own tiny-model factory (spct.models): the demo preset and a ~20M
# Llama on the demo tokenizer.
SIZES = {
    "demo": {},
    "20m": {"hidden_size": 512, "num_layers": 6, "num_heads": 8, "intermediate_size": 1408},
}


def build_model(size: str, out: Path, seed: int) -> Path:
    from spct.models import ensure_tiny_model

    return Path(ensure_tiny_model(out / f"model-{size}", preset="demo", seed=seed, overrides=SIZES[size]))


def common_overrides(a: argparse.Namespace, model: Path) -> list[str]:
    """The settings both sides share, as spct.train overrides (the TRL worker reads them back)."""
    return [
        "phases=[rl]",
        f"model.path={model}",
        f"model.max_new_tokens={a.max_new_tokens}",
        f"rl.steps={a.steps}",
        f"rl.prompts_per_step={a.prompts}",
        f"rl.group_size={a.group}",
        f"rl.temperature={a.temperature}",
        f"rl.beta={a.beta}",
        f"rl.lr={a.lr}",
        f"learner.num_threads={a.threads}",
        f"model.dtype={a.dtype}",
        # DeepSpeed keeps fp32 master weights for bf16 only in its ZeRO optimizers.
        f"learner.zero_stage={1 if a.dtype == 'bfloat16' else 0}",
        f"data.train_size={max(2000, a.steps * a.prompts)}",
        "data.validation_size=32",
        "data.test_size=32",
        f"seed={a.seed}",
    ]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from spct.config import register_schema, to_config

    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return to_config(hydra_compose(config_name="config", overrides=overrides))


def dry_run(configs: dict[str, list[str]], reads=()) -> None:
    """--dry-run: compose and validate every spct configuration the benchmark would run (its
    Hydra overrides, as `python -m spct.train` would) and check the files it reads; print them
    and start nothing. A bad setting fails here, naming the key."""
    missing = [str(p) for p in reads if p is not None and not Path(p).exists()]
    if missing:
        sys.exit(f"--dry-run: not found: {', '.join(missing)}")
    for name, overrides in configs.items():
        compose(overrides)
        print(f"{name}: python -m spct.train {' '.join(overrides)}")
    print("dry run: every configuration composes and validates; nothing was started")


def rl_prompts(cfg) -> list[tuple[str, list[float], list[int], int, int]]:
    """The prompts spct's RL phase renders (its own `rl_prompts`), step by step, with what the
    rule reward needs: (text, item rewards, response order, low, high)."""
    from spct.data import load_splits
    from spct.pipeline import Pipeline
    from spct.recipes.rl import rl_prompts as phase_prompts

    pipe = Pipeline(cfg)  # not set up: only its config, data and prompt rendering are used
    pipe.data = load_splits(seed=cfg.seed, splits=("train",), **dataclasses.asdict(cfg.data))
    out = []
    for step in range(cfg.rl.steps):
        out += [(s.prompt, list(s.item.rewards), s.order, *s.scale) for s in phase_prompts(pipe, step)]
    return out


# ---------------------------------------------------------------------------------------------
# The two sides


def run_spct(a: argparse.Namespace, model: Path, out: Path, extra: tuple[str, ...] = (), name: str = "spct") -> dict:
    run_dir = out / name
    cmd = [sys.executable, "-m", "spct.train", *common_overrides(a, model), "logger=none",
           "eval.max_items=32", f"output_dir={run_dir}", *a.spct_args, *extra]
    print("$", " ".join(cmd), flush=True)
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL if a.quiet else None)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("phase") == "rl" and "time/step" in r][1:]
    if not steps:
        raise RuntimeError(f"{run_dir}/metrics.jsonl: no RL steps after the first; use --steps >= 2")
    med = {k: statistics.median(r.get(f"time/{k}", 0.0) for r in steps)
           for k in ("step", "generate", "reward", "train", "weight_sync", "idle")}
    n = a.prompts * a.group
    return {
        "samples_per_s": n / med["step"],
        "step_s": med["step"],
        "breakdown_s": {k: v for k, v in med.items() if k != "step"},
        "completion_length": statistics.mean(r["response_length"] for r in steps),
        "accuracy_last": steps[-1]["accuracy"],
        "steps_measured": len(steps),
    }


# The TRL rows: GRPOConfig as it comes (gradient checkpointing on), and as a user tuning TRL for
# speed would run it on a model that fits (off, like spct's CPU learner).
TRL_RUNS = {"TRL, checkpointing off": False, "TRL defaults": True}


def run_trl(a: argparse.Namespace, model: Path, out: Path, checkpointing: bool) -> dict:
    cmd = [sys.executable, __file__, "--trl-worker", str(model), "--out", str(out),
           *[f"--{k.replace('_', '-')}={v}" for k, v in (("steps", a.steps), ("prompts", a.prompts),
             ("group", a.group), ("max_new_tokens", a.max_new_tokens), ("temperature", a.temperature),
             ("beta", a.beta), ("lr", a.lr), ("threads", a.threads), ("seed", a.seed), ("dtype", a.dtype))],
           *(["--trl-checkpointing"] if checkpointing else [])]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL if a.quiet else None)
    return json.loads((out / "trl.json").read_text())


def trl_worker(a: argparse.Namespace) -> None:
    """GRPOTrainer in this process: transformers generation, one optimizer step per batch."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from spct.grm import map_back, parse_scores, rule_reward
    from spct.models import load_tokenizer

    torch.set_num_threads(a.threads)
    model = Path(a.trl_worker)
    cfg = compose(common_overrides(a, model))
    rows = [{"prompt": [{"role": "user", "content": text}], "item_rewards": rewards, "order": order,
             "low": low, "high": high} for text, rewards, order, low, high in rl_prompts(cfg)]

    def spct_rule_reward(completions, item_rewards, order, low, high, **_):
        out = []
        for c, r, o, lo, hi in zip(completions, item_rewards, order, low, high, strict=True):
            text = c[0]["content"] if isinstance(c, list) else c
            out.append(rule_reward(map_back(parse_scores(text, len(r), lo, hi), o), r, (lo, hi)))
        return out

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._start)

    args = GRPOConfig(
        output_dir=str(a.out / "trl"),
        per_device_train_batch_size=a.prompts * a.group,
        num_generations=a.group,
        max_completion_length=a.max_new_tokens,
        temperature=a.temperature,
        top_k=0,
        beta=a.beta,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        epsilon=0.2,
        loss_type="grpo",  # per-sequence token mean, then the batch mean: spct's loss
        max_steps=a.steps,
        gradient_checkpointing=a.trl_checkpointing,
        use_cpu=True,
        bf16=a.dtype == "bfloat16",  # mixed precision (autocast) over fp32 weights
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        shuffle_dataset=False,
        seed=a.seed,
        dataloader_num_workers=0,
    )
    timer = StepTimer()
    tokenizer = load_tokenizer(model)
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
        reward_funcs=spct_rule_reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    step = statistics.median(timer.times[1:])
    result = {
        "samples_per_s": a.prompts * a.group / step,
        "step_s": step,
        "completion_length": statistics.mean(h["completions/mean_length"] for h in logs[1:]),
        "steps_measured": len(timer.times) - 1,
    }
    (a.out / "trl.json").write_text(json.dumps(result, indent=1))


# ---------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The settings and their defaults (benchmarks/rl_scaling.py runs spct with them too)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="demo,20m", help=f"comma-separated, from {sorted(SIZES)}")
    ap.add_argument("--model", default=None, help="a model folder to use for every size instead of building one")
    ap.add_argument("--steps", type=int, default=6, help="RL steps per side (the first is dropped)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=0.02)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="both sides: spct's model.dtype (ZeRO-1 for bf16), TRL's bf16 autocast")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "grpo_vs_trl")
    ap.add_argument("--spct-args", nargs="*", default=[], help="extra spct.train overrides")
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME OVERRIDE",
                    help="another spct row: a name, then spct.train overrides (repeatable)")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="hide the two sides' own output")
    ap.add_argument("--trl-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--trl-checkpointing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dry-run", action="store_true", help="check every configuration it would run; start nothing")
    return ap


def main() -> None:
    a = parser().parse_args()
    if a.trl_worker:
        trl_worker(a)
        return

    if a.dry_run:
        configs = {}
        for size in a.sizes.split(","):
            model = Path(a.model) if a.model else a.out / f"model-{size}"
            for name, *overrides in [("spct",), *a.variant]:
                configs[f"{size} {name}"] = [*common_overrides(a, model), *a.spct_args, *overrides]
        dry_run(configs, [a.model])
        return
    results = {}
    for size in a.sizes.split(","):
        out = a.out / size
        out.mkdir(parents=True, exist_ok=True)
        model = Path(a.model) if a.model else build_model(size, a.out, a.seed)
        res = {"model": str(model), "spct": {"spct": run_spct(a, model, out)}}
        for name, *overrides in a.variant:
            res["spct"][name] = run_spct(a, model, out, tuple(overrides), name)
        if not a.skip_trl:
            res["trl"] = {name: run_trl(a, model, out, on) for name, on in TRL_RUNS.items()}
            res["ratio"] = {name: {k: v["samples_per_s"] / t["samples_per_s"] for k, v in res["spct"].items()}
                            for name, t in res["trl"].items()}
        results[size] = res
    settings = {k: v for k, v in vars(a).items() if k not in ("out", "trl_worker")}
    (a.out / "results.json").write_text(json.dumps({"settings": settings, "results": results}, indent=1))

    print(f"\nGRPO step, {a.prompts} prompts x G={a.group}, {a.max_new_tokens} new tokens, "
          f"{a.threads} threads, {a.dtype}, median of {a.steps - 1} steps")
    if not a.skip_trl:
        print("| size | TRL run | TRL samples/s | TRL completion length |")
        print("|---|---|---|---|")
        for size, r in results.items():
            for name, t in r["trl"].items():
                print(f"| {size} | {name} | {t['samples_per_s']:.1f} | {t['completion_length']:.0f} |")
        print()
    peers = list(TRL_RUNS) if not a.skip_trl else []
    print("| size | run | spct samples/s | " + " | ".join(f"vs {p}" for p in peers)
          + " | spct generate / reward / train / sync / idle (s) | spct completion length |")
    print("|---|---|---|" + "---|" * len(peers) + "---|---|")
    for size, r in results.items():
        for name, s in r["spct"].items():
            b = s["breakdown_s"]
            parts = " / ".join(f"{b[k]:.2f}" for k in ("generate", "reward", "train", "weight_sync", "idle"))
            ratios = "".join(f"{r['ratio'][p][name]:.2f}x | " for p in peers)
            print(f"| {size} | {name} | {s['samples_per_s']:.1f} | {ratios}{parts} | {s['completion_length']:.0f} |")


if __name__ == "__main__":
    main()
