"""The pure core stays in layers (docs/architecture.md): each module is imported in a fresh
interpreter and the modules it pulled in are checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

STACK = ("ray", "vllm", "deepspeed", "torch", "transformers")


def loaded(*modules: str) -> set[str]:
    code = (f"import sys; import {', '.join(modules)}; import json; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {('spct', *STACK)!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", ["spct.item", "spct.grm", "spct.data", "spct.scaling", "spct.scoring",
                                    "spct.config", "spct.evaluation", "spct.placement"])
def test_the_pure_core_imports_no_heavy_stack(module):
    assert not {m.split(".")[0] for m in loaded(module)} & set(STACK)


@pytest.mark.parametrize("module", ["spct.algos", "spct.learner.batches"])
def test_the_training_math_needs_torch_alone(module):
    assert {m.split(".")[0] for m in loaded(module)} & set(STACK) == {"torch"}


def test_each_layer_imports_only_the_ones_below():
    assert loaded("spct.item") == {"spct", "spct.item"}  # the bottom: the item schema
    assert not {m for m in loaded("spct.grm") if m.startswith("spct.data")}  # grm sits on item alone
    recipes = loaded("spct.recipes.warmup", "spct.recipes.sft", "spct.recipes.rft", "spct.recipes.rl",
                     "spct.recipes.meta_rm", "spct.recipes.eval", "spct.recipes.policy")
    assert "spct.evaluate" not in recipes  # the command sits on top; the eval phase shares spct.evaluation
