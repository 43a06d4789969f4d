"""Every shipped config composes and validates; bad keys, types and combinations fail by name.

The parametrisations walk conf/ itself, so a config file added later is checked without
touching this test. Nothing here loads a model or starts Ray.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from spct.config import (
    GRM_DEFAULTS,
    POSITIVE,
    Config,
    ConfigError,
    ModelConfig,
    numbers,
    register_schema,
    to_config,
    validate,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
# The training configs; conf/evaluate.yaml and conf/serve.yaml belong to other commands.
OTHER_COMMANDS = {"evaluate.yaml": "python -m spct.evaluate", "serve.yaml": "python -m spct.serve"}
YAML_FILES = sorted(p for p in CONF.rglob("*.yaml") if p.relative_to(CONF).as_posix() not in OTHER_COMMANDS)
COMMAND = "python -m spct.train"

Compose = Callable[[Sequence[str]], DictConfig]


@pytest.fixture(scope="module")
def compose() -> Compose:
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        yield lambda overrides=(): hydra_compose("config", overrides=list(overrides))


def runnable(compose: Compose, overrides: Sequence[str]) -> DictConfig:
    """`overrides` plus what a real-data run must add on the command line: a training set (and
    a test set for the eval phase), and no synthetic-only warmup phase."""
    cfg = compose(overrides)
    if cfg.model.path is not None and cfg.learner.zero_stage == 0 and cfg.model.dtype is None:
        # A real model trains in bfloat16 by default, which the learner refuses at ZeRO stage 0.
        overrides, cfg = [*overrides, "learner.zero_stage=1"], compose([*overrides, "learner.zero_stage=1"])
    if cfg.data.kind != "files" or (cfg.data.train is not None and "warmup" not in cfg.phases):
        return cfg
    extra = [] if cfg.data.train is not None else ["data.train=/data/train.jsonl", "data.test=/data/test.jsonl"]
    if "warmup" in cfg.phases:
        extra.append("phases=[" + ",".join(p for p in cfg.phases if p != "warmup") + "]")
    return compose([*overrides, *extra])


def unvalidated(cfg: DictConfig) -> Config:
    """The typed config with key and type checks but without `validate`."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), cfg))


def header(path: Path) -> list[str]:
    """The leading comment lines of a YAML file, after an optional `# @package` line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# @package"):
        lines = lines[1:]
    out = []
    for line in lines:
        if not line.startswith("#"):
            break
        out.append(line.lstrip("#").strip())
    return out


def documented_overrides(path: Path) -> list[list[str]]:
    """The Hydra overrides of each `python -m spct.train ...` command in a file's header."""
    lines, commands = header(path), []
    for i, line in enumerate(lines):
        if COMMAND not in line:
            continue
        text = line.split(COMMAND, 1)[1]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i]
        text = text.split("(", 1)[0]
        commands.append([t for t in shlex.split(text) if not t.startswith("-")])
    return commands


def test_conf_has_groups_and_options():
    assert {
        "model",
        "data",
        "rollout",
        "learner",
        "rft",
        "rl",
        "cluster",
        "logger",
        "experiment",
    } <= set(GROUPS)
    assert all(options for options in (list((CONF / g).glob("*.yaml")) for g in GROUPS))


def test_the_default_is_the_tiny_synthetic_cpu_run(compose: Compose):
    config = to_config(compose([]))
    assert config.phases == ["warmup", "rft", "rl", "meta_rm", "eval"]
    assert config.model.path is None and config.model.tiny_preset is not None
    assert config.data.kind == "synthetic"
    assert config.cluster.num_gpus == 0 and config.cluster.address is None
    assert config.output_dir


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_of_every_group_composes_and_validates(
    compose: Compose, group: str, option: str
):
    to_config(runnable(compose, [f"{group}={option}"]))
    path = CONF / group / f"{option}.yaml"
    if path.read_text(encoding="utf-8").startswith("# @package"):
        return
    written = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    composed = OmegaConf.to_container(compose([f"{group}={option}"])[group], resolve=False)
    assert {k: composed.get(k) for k in written} == written, (
        f"{path.name}'s values must reach {group}"
    )


@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(CONF)) for p in YAML_FILES])
def test_every_yaml_starts_with_a_comment_giving_its_command(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    first = lines[1] if lines and lines[0].startswith("# @package") else (lines[0] if lines else "")
    assert first.startswith("#"), f"{path}: expected a comment as the first line, got {first!r}"
    assert any(COMMAND in line for line in header(path)), (
        f"{path}: expected '{COMMAND} ...' in the header comment"
    )


@pytest.mark.parametrize("name,command", sorted(OTHER_COMMANDS.items()))
def test_other_entry_configs_name_their_command(name: str, command: str):
    assert command in "".join(header(CONF / name))


@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(CONF)) for p in YAML_FILES])
def test_every_documented_command_composes(compose: Compose, path: Path):
    commands = documented_overrides(path)
    assert commands, f"{path}: no '{COMMAND}' command in the header"
    for overrides in commands:
        to_config(runnable(compose, overrides))


@pytest.mark.parametrize("experiment", ["grm-qwen2.5-7b", "grm-gemma-2-27b"])
def test_paper_settings_are_the_real_model_defaults(compose: Compose, experiment: str):
    config = to_config(compose([f"experiment={experiment}", "data.train=/data/train.jsonl",
                                "data.test=/data/test.jsonl"]))
    assert config.model.path is not None
    assert config.phases == ["rft", "rl", "meta_rm", "eval"]
    assert config.rft.n_samples == 3
    assert config.rft.lr == pytest.approx(5e-6)
    assert config.rft.batch_size == 1024 and config.rft.sft_steps == 900
    assert config.rl.group_size == 4
    assert config.rl.beta == pytest.approx(0.08)
    assert config.rl.lr == pytest.approx(4e-7)
    assert config.rl.prompts_per_step * config.rl.group_size == 512 and config.rl.steps == 900


def test_schema_defaults_are_the_paper_settings():
    c = Config()
    assert (c.rft.n_samples, c.rl.group_size, c.rl.beta) == (3, 4, 0.08)
    assert (c.rft.lr, c.rl.lr) == (5e-6, 4e-7)


def test_a_misspelt_key_fails_naming_it(compose: Compose):
    with pytest.raises(ConfigCompositionException, match=r"rl\.bta"):
        compose(["rl.bta=0.1"])
    with pytest.raises(ConfigKeyError, match="bta") as err:
        to_config({"model": {"tiny_preset": "test"}, "output_dir": "out", "rl": {"bta": 0.1}})
    assert "rl.bta" in str(err.value)


def test_a_wrong_type_fails_naming_the_key(compose: Compose):
    with pytest.raises(ConfigCompositionException, match=r"rl\.beta") as err:
        compose(["rl.beta=abc"])
    assert "could not be converted to Float" in str(err.value.__cause__)
    with pytest.raises(ValidationError, match=r"learner\.num_ranks"):
        to_config(
            {"model": {"tiny_preset": "test"}, "output_dir": "out", "learner": {"num_ranks": "two"}}
        )


@pytest.mark.parametrize(
    "overrides,fields",
    [
        (["rl.group_size=1"], ["rl.group_size"]),
        (["phases=[rft,bogus]"], ["phases", "bogus"]),
        (["phases=[rft,rft]"], ["phases", "each phase once"]),
        (
            ["learner.num_ranks=3"],
            [
                "warmup.batch_size",
                "rft.batch_size",
                "rl.prompts_per_step * rl.group_size",
                "learner.num_ranks (3)",
            ],
        ),
        (["data=files", "phases=[rft,rl]"], ["data.train"]),
        (
            ["data=files", "data.train=/data/train.jsonl"],
            ["'warmup' only with data.kind=synthetic"],
        ),
        (["rl.kl_kind=k4", "rl.beta=-1"], ["rl.kl_kind", "rl.beta"]),
        (
            ["warmup.carry_slip=1.5", "warmup.carry_slip_max=2", "warmup.noise=-0.1"],
            ["warmup.carry_slip:", "warmup.carry_slip_max", "warmup.noise"],
        ),
        (["rft.warmup_mix=1"], ["rft.warmup_mix", "[0, 1)"]),
        (["rl.clip_eps_high=0.1", "policy.clip_eps_high=0.19"],
         ["rl.clip_eps_high: expected null or >= rl.clip_eps (0.2)", "policy.clip_eps_high: expected null or >="]),
        (["phases=[rft,rl]", "rl.prefilter_model=warmup", "rl.prefilter_samples=0"],
         ["rl.prefilter_model: expected a path or hub id: 'warmup' names", "rl.prefilter_samples"]),
        (["rft.general_data=/d/general.jsonl", "rft.general_mix=1"],
         ["rft.general_mix: expected a share in [0, 1)", "rft.general_data: expected null when rft.warmup_mix > 0"]),
        (["phases=[eval,rl]"], ["'eval' after the GRM phases"]),
        (["policy.reward.kind=judge", "policy.reward.mode=pairs", "policy.reward.k=0", "policy.group_size=1"],
         ["policy.reward.kind", "policy.reward.mode", "policy.reward.k:", "policy.group_size"]),
        (["policy.reward.k_meta=2"], ["policy.reward.k_meta: expected null or in [1, k = 1]", "policy.meta_rm"]),
        (["policy.reward.stream_chunks=0"], ["policy.reward.stream_chunks: expected > 0"]),
        (["rollout.colocate=true", "policy.reward.stream_chunks=2"],
         ["policy.reward.stream_chunks: expected 1 with rollout.colocate"]),
        (["experiment=policy", "policy.model=/models/policy", "policy.sft_p_right=2"],
         ["policy.model", "policy.sft_p_right"]),
        (["data=files", "data.train=/d.jsonl", "phases=[policy_rl]", "policy.reward.kind=oracle"],
         ["policy.reward.kind", "synthetic task's checker"]),
    ],
)
def test_validate_names_every_field_in_a_bad_combination(
    compose: Compose, overrides: list[str], fields: list[str]
):
    config = unvalidated(compose(overrides))
    with pytest.raises(ConfigError) as err:
        validate(config)
    for field in fields:
        assert field in str(err.value)


# Every number of the schema, the GRM's settings (null there: their card's or the defaults) included.
NUMBERS = [key for key, _ in numbers(Config(output_dir="out", model=ModelConfig(**GRM_DEFAULTS)))]


def _with(config: Config, key: str, value) -> Config:
    *path, name = key.split(".")
    node = config
    for part in path:
        node = getattr(node, part)
    if "[" in name:
        name, index = name[:-1].split("[")
        getattr(node, name)[int(index)] = value
    else:
        setattr(node, name, value)
    return config


@pytest.fixture(scope="module")
def default_config(compose: Compose) -> Config:
    return unvalidated(compose([]))


@pytest.mark.parametrize("key", NUMBERS)
def test_every_number_out_of_range_fails_naming_its_key(default_config: Config, key: str):
    """The class, not the cases: every number in the schema, negative or not finite, and the
    ones that must be positive at 0, fail validation naming the key."""
    bad = [-1, float("nan"), float("inf")] + ([0] if key in POSITIVE else [])
    for value in bad:
        config = _with(copy.deepcopy(default_config), key, value)
        with pytest.raises(ConfigError) as err:
            validate(config)
        assert f"{key}: expected" in str(err.value), (key, value)


def test_an_out_of_range_override_fails_at_composition(compose: Compose):
    with pytest.raises(ConfigError, match=r"rl\.lr: expected > 0, got -0\.1"):
        to_config(compose(["rl.lr=-0.1"]))
    with pytest.raises(ConfigError, match=r"checkpoint\.max_restarts: expected >= 0"):
        to_config(compose(["checkpoint.max_restarts=-1"]))


def test_batch_sizes_that_divide_by_the_ranks_validate(compose: Compose):
    validate(unvalidated(compose(["learner.num_ranks=4"])))
    validate(unvalidated(compose(["learner.num_ranks=2"])))


def test_missing_local_paths_are_named_together_and_hub_ids_are_looked_up(compose: Compose, tmp_path: Path):
    from spct.config import check_sources, sources

    present = tmp_path / "train.jsonl"
    present.write_text("{}\n")
    hub = {"Qwen/Qwen2.5-7B-Instruct": "found", "gpt2": "found", "data/train": "missing", "org/offline": "unreachable"}
    asked = []

    def lookup(name, kind):  # the hub's answers (the real lookup asks huggingface_hub)
        asked.append((name, kind))
        return hub[name]

    config = to_config(compose(["data=files", "phases=[rft]", f"data.train={present}",
                                "model.path=Qwen/Qwen2.5-7B-Instruct", "rft.teacher=gpt2"]))
    assert check_sources(sources(config), lookup=lookup) == []
    assert asked == [("Qwen/Qwen2.5-7B-Instruct", "model"), ("gpt2", "model")]  # a local file is not looked up
    config = to_config(compose(["data=files", "phases=[rft]", f"data.train={present}",
                                f"data.test={tmp_path}/missing.jsonl", f"model.path={tmp_path}/no/model",
                                "meta_rm.model=./nowhere", "data.validation=data/train",
                                f"rft.general_data={{path:{tmp_path}/general}}"]))
    with pytest.raises(ConfigError) as err:
        check_sources(sources(config), lookup=lookup)
    for key in ("data.test", "model.path", "meta_rm.model", "rft.general_data.path"):
        assert f"{key}: expected an existing file or folder" in str(err.value)
    # A relative path that does not exist looks like a hub id: the hub says it has none.
    assert "data.validation: expected an existing file or folder or a dataset on the Hugging Face hub" in str(err.value)
    assert "data.train" not in str(err.value)
    # The hub cannot be reached: a run fails, a dry run warns.
    config = to_config(compose(["data=files", "phases=[rft]", "data.train=org/offline"]))
    with pytest.raises(ConfigError, match="data.train: 'org/offline' is not a local path"):
        check_sources(sources(config), lookup=lookup)
    (warning,) = check_sources(sources(config), strict=False, lookup=lookup)
    assert "HF_HUB_OFFLINE=1" in warning and warning.endswith("not checked")


@pytest.mark.parametrize("path", sorted(p for p in CONF.glob("*/*.yaml") if p.parent.name != "experiment"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_group_option_says_only_what_differs_from_the_schema(path):
    """Every default lives in spct/config.py once: a group option that restated one would keep
    its stale copy when the default changes."""
    schema = OmegaConf.structured(Config)[path.parent.name]

    def restated(node, default, prefix=""):
        for key, value in node.items():
            if key not in default:
                yield f"{prefix}{key} (not in the schema)"
            elif OmegaConf.is_dict(value) and OmegaConf.is_dict(default[key]) and len(default[key]):
                yield from restated(value, default[key], f"{prefix}{key}.")
            elif OmegaConf.to_container(OmegaConf.create({"v": value}))["v"] == (
                    OmegaConf.to_container(OmegaConf.create({"v": default[key]}))["v"]):
                yield f"{prefix}{key}"

    assert list(restated(OmegaConf.load(path), schema)) == []


def test_rft_general_data_is_read_before_the_run_and_needs_responses(compose: Compose, tmp_path: Path):
    """rft.general_data's conversations are read with the data, before Ray: each needs a response
    to train on, and a prompts-only file is refused naming the key."""
    import layouts

    from spct.pipeline import Pipeline

    uf = layouts.ultrafeedback(tmp_path / "uf")
    config = to_config(compose(["phases=[rft]", "rft.warmup_mix=0", f"rft.general_data={{path:{uf},split:train_sft}}",
                                f"output_dir={tmp_path / 'run'}"]))
    items = Pipeline(config)._general_data()
    assert len(items) == 2 and all(it.responses for it in items)
    config = to_config(compose(["phases=[rft]", "rft.warmup_mix=0", f"rft.general_data={layouts.prompts(tmp_path / 'p.jsonl', n=4)}",
                                f"output_dir={tmp_path / 'run'}"]))
    with pytest.raises(ConfigError, match=r"rft.general_data: conversations with a response to train on, but 4 of"):
        Pipeline(config)._general_data()
    config = to_config(compose(["phases=[rl]", "rft.warmup_mix=0", f"rft.general_data={tmp_path / 'p.jsonl'}"]))
    assert Pipeline(config)._general_data() == []  # no RFT phase: not read
