"""Driver for test_multinode: a learner rank on one node pushes weights to an engine on another.

    python tests/integration/cross_node_sync.py RAY_ADDRESS MODEL_DIR

Reserves two bundles with STRICT_SPREAD (one per node), puts a vLLM engine in the first and a
DeepSpeed learner rank in the second, fine-tunes the learner a few steps, pushes its weights
through the Ray object store, and prints one JSON line: the nodes, the versions the engine
reports, and its greedy tokens before and after the push, with transformers' greedy tokens on
the pushed weights for comparison.
"""

from __future__ import annotations

import json
import sys

import ray
import torch
from ray.util.placement_group import placement_group, placement_group_table

from spct.chat import encode_sft, sft_batch
from spct.learner import LearnerGroup, LearnerSpec
from spct.models import load_causal_lm, load_tokenizer
from spct.rollout import RolloutGroup
from spct.weight_sync import make_weight_sync

PROMPTS = ["Solve: 3+4 ; 7+8", "hello there"]
GREEDY = {"temperature": 0.0, "max_tokens": 12}


def main(address: str, model: str) -> None:
    ray.init(address=address, logging_level="ERROR")
    pg = placement_group([{"CPU": 1.0}, {"CPU": 1.0}], strategy="STRICT_SPREAD")
    ray.get(pg.ready(), timeout=60)
    nodes = placement_group_table(pg)["bundles_to_node_id"]
    engines = RolloutGroup(model, 1, dict(dtype="float32", max_model_len=256, kv_cache_gib=0.0625, seed=0),
                           placement_group=pg)
    learner = LearnerGroup(1, LearnerSpec(model=model, zero_stage=0, lr=3e-2, total_steps=10, dtype="float32",
                                   micro_batch_size=4), placement_group=pg, bundle_indices=[1])

    def greedy() -> list[list[int]]:
        return [r["samples"][0]["token_ids"] for r in engines.generate(PROMPTS, GREEDY)]

    before = greedy()
    tok = load_tokenizer(model)
    batch = sft_batch([encode_sft(tok, p, "7 15 7 15 7 15") for p in PROMPTS])
    for _ in range(5):  # a high learning rate: the weights move far enough to change greedy output
        learner.sft_step(batch)
    state = learner.state_for_sync()
    sync = make_weight_sync("ray", engines)
    sync.push(state, 1)
    after = greedy()

    hf = load_causal_lm(model, dtype="float32").eval()
    hf.load_state_dict(state, strict=False)
    reference = []
    for prompt in PROMPTS:
        chat = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False)
        x = torch.tensor([chat])
        out = hf.generate(x, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)[0, x.shape[1]:]
        out = out.tolist()
        reference.append(out[: out.index(tok.eos_token_id) + 1] if tok.eos_token_id in out else out)
    print(json.dumps({"engine_node": nodes[0], "learner_node": nodes[1], "versions": engines.versions(),
                      "before": before, "after": after, "transformers": reference}))
    engines.shutdown()
    learner.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
