"""Every shipped GPU preset, placed on a Ray of four nodes that declare 8 GPUs each: each actor of
each phase in the bundle the plan names, on that bundle's node, with GPUs of its own, a
tensor-parallel engine's workers each in a bundle of their own on one node (by vLLM's own Ray
executor code), and the actors beside the group on what the cluster has left.

The driver (tests/integration/preset_placement.py) runs in a fresh interpreter with its own Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = [pytest.mark.multinode, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
DATA = ("data.train=/data/train.jsonl", "data.test=/data/test.jsonl")
PRESETS = {
    # the 7B preset with an RFT teacher and the RL pre-filter, which sample in the engines' bundles
    "grm-qwen2.5-7b": ["experiment=grm-qwen2.5-7b", *DATA, "rft.teacher=/models/teacher",
                       "rl.prefilter_model=/models/weak"],
    # the same with its engines colocated with its learner ranks: half a GPU each, the teacher's too
    "grm-qwen2.5-7b colocated": ["experiment=grm-qwen2.5-7b", *DATA, "rft.teacher=/models/teacher",
                                 "rollout.colocate=true"],
    "grm-gemma-2-27b": ["experiment=grm-gemma-2-27b", *DATA],
    "policy-qwen2.5-7b": ["experiment=policy-qwen2.5-7b", DATA[0], "policy.grm=/ckpt/grm"],
}


@pytest.fixture(scope="module")
def placed() -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([sys.executable, str(REPO / "tests" / "integration" / "preset_placement.py"), "4",
                          json.dumps(list(PRESETS.values()))], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    reports = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {name: r for name, r in zip(PRESETS, reports, strict=True)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_actor_of_the_preset_sits_where_the_plan_puts_it(placed, name):
    report = placed[name]
    plan, nodes = report["plan"], report["bundle_nodes"]
    seen_roles = set()
    for wave in report["waves"]:
        assert wave["misplaced"] == [], wave["misplaced"]
        held = []
        for actor in wave["actors"]:
            seen_roles.add((wave["phase"], actor["role"]))
            if actor["bundle"] is not None:
                assert actor["node_id"] == nodes[actor["bundle"]], actor
            for worker in actor.get("workers", []):  # a tensor-parallel engine's: one GPU in each of its bundles
                assert worker["node_id"] == nodes[worker["bundle"]] and len(worker["gpus"]) == 1, worker
                held.append((worker["node_id"], worker["gpus"][0]))
            if actor.get("workers"):
                assert actor["gpus"] == [] and actor["bundle"] == actor["workers"][0]["bundle"]
                engine = int(actor["role"].rsplit(" ", 1)[1])
                assert [w["bundle"] for w in actor["workers"]] == report["engine_bundles"][engine]
                assert len({w["node_id"] for w in actor["workers"]}) == 1  # its all-reduce stays in the node
            else:
                assert len(actor["gpus"]) == 1, actor
                held.append((actor["node_id"], actor["gpus"][0]))
        sharing = 2 if "rollout.colocate=true" in report["overrides"] else 1  # an engine and a learner rank
        assert max(Counter(held).values()) <= sharing, f"{wave['phase']}: too many actors on one GPU"
    # Every actor the plan names was placed, in a wave of a phase that names it.
    planned = {(phase, role) for phase, roles in plan.items() for role in roles}
    assert {role for _, role in planned} == {role for _, role in seen_roles}
    assert seen_roles <= planned


def test_the_27b_preset_spans_its_four_nodes_with_every_engine_on_one(placed):
    report = placed["grm-gemma-2-27b"]
    nodes = report["bundle_nodes"]
    assert len(set(nodes)) == 4 and len(nodes) == 8 * 2 + 16
    assert all(len({nodes[b] for b in bundles}) == 1 for bundles in report["engine_bundles"])
