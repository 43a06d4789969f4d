"""The learner's GRPO step against a plain torch loop on the same model, batch and loss.

    python benchmarks/learner_vs_torch.py                 # demo preset and ~20M
    python benchmarks/learner_vs_torch.py --sizes demo --steps 8

One process, three learners built from the same weights, stepped in turn on the same batch
(32 prompts x G = 4, the GRM prompts of the RL phase, completions of uneven length, the
reference model and beta as in the RL phase):
- spct: `LearnerWorker` (DeepSpeed engine, ZeRO-0, fp32), as the RL phase runs it;
- spct without prefix sharing: the same with every sequence run whole (DeepSpeed's own cost);
- plain torch: a Hugging Face model, torch AdamW, each micro-batch run whole, the same
  `spct.algos.grpo_policy_loss`, gradient clipping, one optimizer step.
Prints the median step time of each and the ratios, and checks the three agree on the loss.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rl_batch(model: Path, prompts: int, group: int, seed: int) -> dict[str, list]:
    from benchmarks.grpo_vs_trl import compose, rl_prompts
    from spct.models import load_tokenizer

    cfg = compose([f"model.path={model}", f"rl.prompts_per_step={prompts}", "rl.steps=1"])
    tok = load_tokenizer(model)
    rng = random.Random(seed)
    batch = {"prompt_ids": [], "group": [], "completion_ids": [], "old_logprobs": [], "advantages": []}
    for j, (text, *_) in enumerate(rl_prompts(cfg)):
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]
        batch["prompt_ids"].append(list(ids))
        for _ in range(group):
            completion = [rng.randrange(len(tok)) for _ in range(rng.randrange(30, 61))]
            batch["group"].append(j)
            batch["completion_ids"].append(completion)
            batch["old_logprobs"].append([-1.0] * len(completion))
            batch["advantages"].append(rng.gauss(0, 1))
    return batch


class PlainTorch:
    """What a user would write without a framework: whole sequences, AdamW, clip, step."""

    def __init__(self, model: Path, lr: float, micro: int, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        self.ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.micro = micro

    def step(self, batch: dict, beta: float) -> float:
        import torch

        from spct.algos import gather_logprobs, grpo_policy_loss

        prompts = [batch["prompt_ids"][g] for g in batch["group"]]
        n, total = len(prompts), 0.0
        for lo in range(0, n, self.micro):
            rows = range(lo, min(n, lo + self.micro))
            seqs = [prompts[i] + batch["completion_ids"][i] for i in rows]
            width = max(map(len, seqs))
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            attn = torch.zeros_like(ids)
            mask = torch.zeros(len(seqs), width - 1, dtype=torch.bool)
            old = torch.zeros(len(seqs), width - 1)
            for j, i in enumerate(rows):
                s, p = seqs[j], len(prompts[i])
                ids[j, : len(s)], attn[j, : len(s)] = torch.tensor(s), 1
                mask[j, p - 1 : len(s) - 1] = True
                old[j, p - 1 : len(s) - 1] = torch.tensor(batch["old_logprobs"][i])
            adv = torch.tensor([batch["advantages"][i] for i in rows])
            # Each next token's log-prob, [B, T - 1], as the mask and old log-probs are laid out.
            logp = gather_logprobs(self.policy(input_ids=ids, attention_mask=attn).logits[:, :-1], ids[:, 1:])
            with torch.no_grad():
                ref = gather_logprobs(self.ref(input_ids=ids, attention_mask=attn).logits[:, :-1], ids[:, 1:])
            loss, _ = grpo_policy_loss(logp, old, adv, mask, ref_logp=ref, beta=beta)
            (loss * len(seqs) / n).backward()
            total += loss.item() * len(seqs) / n
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return total


def one_size(a: argparse.Namespace, model: Path) -> dict:
    from spct.learner import LearnerSpec, LearnerWorker
    from spct.learner.group import free_port

    batch = rl_batch(model, a.prompts, a.group, a.seed)
    kw = dict(zero_stage=0, lr=a.lr, micro_batch_size=a.micro, dtype="float32", with_reference=True,
              num_threads=a.threads, lr_schedule="constant", total_steps=1000, grad_clip=1.0)
    port = free_port()
    sides = {
        "spct": LearnerWorker(0, 1, "127.0.0.1", port, LearnerSpec(str(model), **kw)),
        "spct, no prefix sharing": LearnerWorker(0, 1, "127.0.0.1", port,
                                                LearnerSpec(str(model), share_prefix=False, **kw)),
        "plain torch": PlainTorch(model, a.lr, a.micro, a.threads),
    }

    def step(name):
        side = sides[name]
        if isinstance(side, PlainTorch):
            return side.step(batch, a.beta)
        return side.grpo_step(batch, beta=a.beta)["loss"]

    times = {name: [] for name in sides}
    losses = {name: [] for name in sides}
    for i in range(a.steps + 1):
        for name in sides:
            start = time.perf_counter()
            losses[name].append(step(name))
            if i:  # the first step of each pays one-off costs
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"step_s": med, "losses": losses,
            "ratio_to_plain": {name: med[name] / med["plain torch"] for name in sides}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="demo,20m")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--micro", type=int, default=64, help="micro-batch size (the CPU learner's default)")
    ap.add_argument("--beta", type=float, default=0.02)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "learner_vs_torch")
    ap.add_argument("--dry-run", action="store_true", help="check the learner settings; start nothing")
    a = ap.parse_args()
    if a.dry_run:
        from benchmarks.grpo_vs_trl import SIZES
        from spct.learner.spec import LearnerSpec

        unknown = sorted(set(a.sizes.split(",")) - set(SIZES))
        if unknown:
            sys.exit(f"--sizes: unknown {unknown}; expected some of {sorted(SIZES)}")
        LearnerSpec("model", zero_stage=0, lr=a.lr, micro_batch_size=a.micro, dtype="float32", with_reference=True,
                    num_threads=a.threads, total_steps=max(1, a.steps))
        print(f"dry run: sizes {a.sizes}, {a.steps} steps of {a.prompts} prompts x {a.group}: the learner settings "
              "validate; nothing was started")
        return
    a.out.mkdir(parents=True, exist_ok=True)

    from benchmarks.grpo_vs_trl import build_model

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = {size: one_size(a, build_model(size, REPO / "outputs" / "bench", a.seed))
               for size in a.sizes.split(",")}
    (a.out / "learner_vs_torch.json").write_text(json.dumps(results, indent=1))
    print(f"\nGRPO step, {a.prompts} prompts x G={a.group}, micro-batch {a.micro}, {a.threads} threads, "
          f"median of {a.steps} steps")
    print("| size | learner | step (s) | / plain torch | loss of the first step |")
    print("|---|---|---|---|---|")
    for size, r in results.items():
        for name, t in r["step_s"].items():
            print(f"| {size} | {name} | {t:.3f} | {r['ratio_to_plain'][name]:.2f}x | {r['losses'][name][0]:.6f} |")


if __name__ == "__main__":
    main()
