"""The pure core stays in layers (docs/architecture.md): each module is imported in a fresh
interpreter and the modules it pulled in are checked."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "spct" / "recipes"
STACK = ("ray", "vllm", "deepspeed", "torch", "transformers")


def loaded(*modules: str) -> set[str]:
    code = (f"import sys; import {', '.join(modules)}; import json; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {('spct', *STACK)!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", ["spct.item", "spct.sample", "spct.grm", "spct.data", "spct.scaling", "spct.scoring",
                                    "spct.config", "spct.evaluate", "spct.evaluate.tables", "spct.placement",
                                    "spct.card", "spct.preflight", "spct.run_state", "spct.files", "spct.chat",
                                    "spct.memory", "spct.policy", "spct.serve.batching", "spct.client",
                                    "spct.integrations.trl", "spct.integrations.verl"])
def test_the_pure_core_imports_no_heavy_stack(module):
    assert not {m.split(".")[0] for m in loaded(module)} & set(STACK)


@pytest.mark.parametrize("module", ["spct.algos", "spct.learner.batches"])
def test_the_training_math_needs_torch_alone(module):
    assert {m.split(".")[0] for m in loaded(module)} & set(STACK) == {"torch"}


def test_each_layer_imports_only_the_ones_below():
    assert loaded("spct.item") == {"spct", "spct.item"}  # the bottom: the item schema
    assert not {m for m in loaded("spct.grm") if m.startswith("spct.data")}  # grm sits on item alone
    recipes = loaded("spct.recipes.warmup", "spct.recipes.rft", "spct.recipes.rl",
                     "spct.recipes.meta_rm", "spct.recipes.eval", "spct.recipes.policy")
    assert "spct.evaluate.command" not in recipes  # the command sits on top; the eval phase shares the tables


def test_no_recipe_imports_another():
    """A recipe holds its phase's loop; what two phases share lives in the layers below."""
    for path in RECIPES.glob("*.py"):
        imported = {node.module for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Import)
                     for alias in node.names}
        others = {m for m in imported if m.startswith("spct.recipes")} - {"spct.recipes.context"}
        assert path.name == "__init__.py" or not others, f"{path.name} imports {sorted(others)}"


def _members_used_on_p(source: str) -> set[str]:
    """The attributes read from `p` (the recipe's context) anywhere in a module."""
    return {node.attr for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "p"}


def test_recipes_use_only_the_context_and_the_pipeline_provides_it():
    from spct.pipeline import Pipeline
    from spct.recipes.context import Context

    context = {m for m in vars(Context) if not m.startswith("_")} | set(Context.__annotations__)
    used = set()
    for path in RECIPES.glob("*.py"):
        used |= _members_used_on_p(path.read_text())
    assert used <= context, f"recipes reach past spct.recipes.context.Context: {sorted(used - context)}"
    assert len(context - used) == 0, f"Context members no recipe uses: {sorted(context - used)}"
    pipeline_source = (RECIPES.parent / "pipeline.py").read_text()
    assigned = {node.attr for node in ast.walk(ast.parse(pipeline_source))
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name) and node.value.id == "self"}
    missing = {m for m in context if not hasattr(Pipeline, m) and m not in assigned}
    assert not missing, f"the Pipeline lacks {sorted(missing)}"


def test_the_context_check_sees_a_recipe_reaching_past_it():
    assert _members_used_on_p("def run(p):\n    p.learner.shutdown()\n    x = p.cfg.seed\n") == {"learner", "cfg"}
