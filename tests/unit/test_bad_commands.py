"""Bad commands fail in seconds, before Ray starts, naming the key and what was expected.

Each case is a whole command line of `python -m spct.train`, `spct.evaluate` or `spct.serve` as a
user types it; docs/reliability.md counts them. Every case is composed by Hydra and checked by
the command's own code (`spct.train.run`, `spct.evaluate.command.run`, `spct.serve.__main__.prepare`)
with dry_run=true, so nothing can start even if a check were missing; a few run as the real
command, without dry_run, in a fresh process. A real-model run composed without a preset runs,
but warns which of the tiny demo's settings it kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICK = ["experiment=quick", "logger=none"]
FILES = ["data=files", "data.train={data}"]
# The tiny test model has no card: an evaluation or a server of it needs its settings.
TINY = ["model={model}", "model.max_model_len=512", "model.max_new_tokens=64", "model.dtype=float32"]

TRAIN = [
    (["rl.bta=0.1"], "rl.bta"),  # a misspelt key: Hydra names it
    (["rl.beta=abc"], "rl.beta"),
    (["rl.lr=-0.1"], "rl.lr: expected > 0, got -0.1"),
    (["learner.lr_schedule=cosin"], "learner.lr_schedule: expected one of constant, cosine, got 'cosin'"),
    (["model.template=compakt"], "model.template: prompt template not found"),
    (["eval.split=tests"], "eval.split: expected one of train, validation, test, got 'tests'"),
    (["model.dtype=float16"], "model.dtype: expected float32 or bfloat16 to train"),
    (["model.dtype=bfloat16"], "learner.zero_stage: expected 1, 2 or 3 with dtype bfloat16"),
    (["model.dtype=fp32"], "model.dtype: expected one of float32, bfloat16, float16, got 'fp32'"),
    (["model.max_new_tokens=600"], "model.max_new_tokens: expected below model.max_model_len (512)"),
    (["rollout.tensor_parallel_size=2"], "rollout.tensor_parallel_size: expected 1 on CPU"),
    (["rollout.colocate=true"], "rollout.colocate: expected a GPU cluster"),
    (["cluster.placement_strategy=pack"], "cluster.placement_strategy: expected one of PACK"),
    (["checkpoint.resume=maybe"], "checkpoint.resume: expected one of auto, force, fresh, got 'maybe'"),
    (["logger.mode=onlin"], "logger.mode: expected one of auto, online, offline"),
    (["phases=[rft,rl,bogus]"], "phases: expected names from"),
    (["phases=[]"], "phases: expected at least one phase"),
    (["learner.num_ranks=3"], "warmup.batch_size: expected a multiple of learner.num_ranks (3), got 16"),
    (["learner.num_ranks=2", "rl.prompts_per_step=3", "rl.group_size=2"],
     "rl.prompts_per_step: expected a multiple of learner.num_ranks (2) so each rank trains on whole groups"),
    (["+data.task.n_aspect=3"], "data.task.n_aspect: expected a field of the synthetic task"),
    ([*FILES, "phases=[rft,eval]"], "data.test: expected a dataset path or hub name: the eval phase scores"),
    ([*FILES, "data.format=pairwize", "phases=[rft]"], "data.format: expected null (detected from the keys) or one of"),
    ([*FILES, "phases=[warmup]"], "phases: expected 'warmup' only with data.kind=synthetic"),
    (["data=files", "data.train=/no/such/train.jsonl", "phases=[rft]"],
     "data.train: expected an existing file or folder, got '/no/such/train.jsonl'"),
    (["model.path=/no/such/grm"], "model.path: expected an existing file or folder"),
    (["experiment=policy", "phases=[policy_rl]"], "policy.grm: expected the GRM that rewards the policy"),
    (["experiment=policy", "policy.grm={model}", "policy.max_new_tokens=600"],
     "policy.max_new_tokens: expected below model.max_model_len (512"),
    (["experiment=policy", "policy.reward.kind=judge", "policy.reward.k_meta=2"],
     "policy.reward.kind: expected one of grm, oracle"),
    (["data.train_size=10"], "warmup.batch_size: expected at most the 10 items of the train split"),
    (["meta_rm.input_template=/no/framing.j2"], "meta_rm.input_template: template not found: /no/framing.j2"),
]
# Checks a dry run reports as warnings (a command checked on a machine other than the one it
# runs on): only the real command fails on them.
TRAIN_REAL = [
    (["cluster.num_cpus=1"], "cluster: CPU: the run needs 2 (learner rank, rollout engine), the cluster has 1"),
    (["cluster.num_gpus=64"], "cluster.num_gpus: expected at most"),
    (["learner.lr_schedule=cosin"], "learner.lr_schedule: expected one of constant, cosine, got 'cosin'"),
]
EVALUATE = [
    ([], "model.path: expected the GRM checkpoint to evaluate (model=PATH"),
    ([*TINY, "k_max=0"], "k_max: expected > 0, got 0"),
    ([*TINY, "temperature=-1"], "temperature: expected >= 0, got -1"),
    ([*TINY, "k_meta_ratio=2"], "k_meta_ratio: expected in (0, 1]"),
    ([*TINY, "benchmarks=[rewardbenh]"], "'rewardbenh': no such file, and not a benchmark name"),
    ([*TINY, "benchmarks=[judgebench:/no/jb.jsonl]"], "'judgebench:/no/jb.jsonl': no such file '/no/jb.jsonl'"),
    ([*TINY, "model.dtype=float16"], "model.dtype: expected float32 or bfloat16 on CPU"),
    ([*TINY, "model.max_model_len=100000"], "model.max_model_len: expected at most 512 (max_position_embeddings"),
    ([*TINY, "model.template=nope"], "model.template: prompt template not found"),
    ([*TINY, "meta_rm=/no/meta"], "meta_rm.path: expected an existing file or folder"),
    ([*TINY, "rollout.num_engines=0"], "rollout.num_engines: expected > 0, got 0"),
    ([*TINY, "judge=default"], "judge: expected a choice template (its first line '{{#- spct: output=choice -#}}'"),
    ([*TINY, "judge=/no/judge.j2"], "judge: prompt template not found: /no/judge.j2"),
    ([*TINY, "judge_model={model}"], "judge_model: expected null unless judge is set"),
    ([*TINY, "judge=judge", "judge_model=/no/judge"], "judge_model: expected an existing file or folder"),
    ([*TINY, "judge=judge", "judge_model={short}"],
     "judge_model: expected a model whose context holds model.max_model_len (512); {short} has 256 positions"),
    (["model=/no/grm"], "model.path: expected an existing file or folder"),
    (["rescore=true", "output_dir={empty}"], "rescore: expected an earlier evaluation in output_dir"),
]
SERVE = [
    ([], "model: expected the GRM to serve (model=PATH"),
    (["model=/no/grm"], "model: expected an existing file or folder"),
    ([*TINY, "default_k=9", "max_k=4"], "default_k: expected 1..max_k (4), got 9"),
    ([*TINY, "port=70000"], "port: expected 0..65535, got 70000"),
    ([*TINY, "temperature=-0.5"], "temperature: expected >= 0, got -0.5"),
    ([*TINY, "model.max_model_len=100000"], "model.max_model_len: expected at most 512"),
    ([*TINY, "model.template=nope"], "model.template: prompt template not found"),
    ([*TINY, "max_items=0"], "max_items: expected > 0, got 0"),
]
REAL = ([("spct.train", QUICK + a, e) for a, e in TRAIN_REAL]
        + [("spct.evaluate", [*TINY, "cluster.num_gpus=64"], "cluster.num_gpus: expected at most"),
           ("spct.evaluate", [*TINY, "k_max=0"], "k_max: expected > 0, got 0"),
           ("spct.serve", [*TINY, "cluster.num_gpus=64"], "cluster.num_gpus: expected at most"),
           ("spct.serve", [], "model: expected the GRM to serve (model=PATH")]
        # A joined GPU cluster: this machine's GPUs are not checked, the memory estimate still is.
        + [(module, ["model={grm7b}", "cluster.num_gpus=1", "cluster.address=auto",
                     "rollout.gpu_memory_utilization=0.1"],
            "memory: rollout engine of {grm7b} (per GPU of 1): 15.2 GiB (weights 14.2, forward of 8192 tokens 0.8, "
            "KV cache of one 4096-token sequence 0.2) does not fit in 8.0 GiB (rollout.gpu_memory_utilization 0.1 of "
            "cluster.gpu_memory_gib 80)") for module in ("spct.evaluate", "spct.serve")])
CASES = ([("spct.train", QUICK + a, e) for a, e in TRAIN] + [("spct.evaluate", a, e) for a, e in EVALUATE]
         + [("spct.serve", a, e) for a, e in SERVE])
CONF = REPO / "conf"


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+{i}?", "chosen": str(2 * i), "rejected": "0"}) + "\n"
                            for i in range(4)))
    (root / "empty").mkdir()
    short = root / "short"  # the tiny model with half its context, as a judge
    shutil.copytree(tiny_model_dir, short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 256}))
    (root / "grm7b").mkdir()  # the architecture of a 7B GRM, for the memory estimate
    shutil.copy(REPO / "conf" / "model" / "shapes" / "Qwen--Qwen2.5-7B-Instruct.json", root / "grm7b" / "config.json")
    return {"model": str(tiny_model_dir), "data": str(data), "empty": str(root / "empty"), "grm7b": str(root / "grm7b"),
            "short": str(short)}


def run(module: str, args: list[str], cwd: Path) -> tuple[int, str, float]:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("RAY_ADDRESS", None)
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout + proc.stderr, time.time() - start


def checked(module: str, args: list[str], cwd: Path) -> str:
    """Compose `args` as `python -m <module>` does and run the command's checks with dry_run=true
    in this process; the text of the error they raise (or the plan)."""
    from hydra import compose, initialize, initialize_config_dir

    from spct.config import path_shorthand

    args = [*path_shorthand(args), "dry_run=true"] if module != "spct.train" else [*args, "dry_run=true"]
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        if module == "spct.serve":
            from spct.serve.__main__ import prepare

            with initialize(config_path=None, version_base=None):
                return prepare(compose("serve", overrides=args))[2]
        name = {"spct.train": "config", "spct.evaluate": "evaluate"}[module]
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose(name, overrides=args)
        if module == "spct.train":
            from spct.train import run as train

            return str(train(cfg))
        from spct.evaluate.command import run as evaluate

        return str(evaluate(cfg))
    except Exception as e:  # noqa: BLE001 - the error is what the test reads
        return f"{type(e).__name__}: {e}"
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module", autouse=True)
def schemas():
    import spct.serve  # noqa: F401 - registers the "serve" schema
    from spct.config import register_schema
    from spct.evaluate.command import register_schema as register_evaluate

    register_schema()
    register_evaluate()


@pytest.mark.parametrize("module,args,expected", CASES, ids=[f"{m.split('.')[1]}:{' '.join(a)}" for m, a, _ in CASES])
def test_a_bad_setting_is_refused_naming_the_key(module, args, expected, inputs, tmp_path):
    out = checked(module, [a.format(**inputs) for a in args], tmp_path)
    assert expected.format(**inputs) in out, out[-2000:]
    assert out.startswith(("ConfigError", "ConfigCompositionException")), out[-2000:]
    assert not any(tmp_path.rglob("metrics.jsonl")) and not any(tmp_path.rglob("config.yaml"))


@pytest.mark.parametrize("module,args,expected", REAL, ids=[f"{m.split('.')[1]}:{' '.join(a)}" for m, a, _ in REAL])
def test_the_real_command_fails_in_seconds_before_ray_naming_the_key(module, args, expected, inputs, tmp_path):
    code, out, wall = run(module, [a.format(**inputs) for a in args], tmp_path)
    assert code != 0, out[-2000:]
    assert expected.format(**inputs) in out, out[-2000:]
    assert "Ray instance" not in out and "Traceback" not in out
    assert wall < 30
    assert not any(tmp_path.rglob("metrics.jsonl")) and not any(tmp_path.rglob("placement.json"))


def test_a_real_model_without_a_preset_says_which_demo_settings_it_keeps(inputs, tmp_path):
    code, out, _ = run("spct.train", ["model=qwen2.5-7b-instruct", "data=files", f"data.train={inputs['data']}",
                                      f"data.test={inputs['data']}", "phases=[rft,rl,meta_rm]", "learner.zero_stage=1",
                                      "rl.prompts_per_step=4", "dry_run=true"], tmp_path)
    assert code == 0, out[-2000:]
    assert "keeps the tiny demo's settings (rft=tiny, rl=tiny, meta_rm=tiny, learner=cpu" in out
    assert "spct.train plan (dry_run: nothing started)" in out
