"""Every command in README.md, docs/*.md and launch/README.md, run as written.

The fenced `bash` blocks are read from the files themselves, so a command added to the docs is
checked without touching this test, and a command this test does not know how to check fails it.
Each runs in a sandbox folder that holds what the docs assume: the runs they read
(`outputs/spct-default`, ... : the session's quick GRM run), the data under /data, /ckpt and
/shared (absolute paths are mapped into the sandbox; the files are written in the layouts the
loaders read), and the repository's launch/ and benchmarks/.

- `python -m spct.evaluate` runs for real on quick sizes (k_max=2, 3 items per benchmark).
- The first `python -m spct.serve` starts for real, as written, on a free port: one request is
  scored over HTTP, and the `curl` commands of every doc go to it; later serve commands are
  checked with dry_run=true.
- `python -m spct.train` (hours as documented; `experiment=quick` runs for real in
  test_train_quick.py), `make train|evaluate|serve`, and every command marked `# needs: ...`
  (a GPU, a cluster) go through the same composition and checks with dry_run=true;
  `python benchmarks/...` with --dry-run; launch scripts with --dry-run, and the training
  command they print with dry_run=true.
- `docker build` lints the Dockerfile (hadolint; no Docker engine here), `docker run` checks the
  command the container would run.
- `make test` is this suite; `pip install` resolves and builds with --dry-run (from the clone),
  and `pip uninstall` finds this environment already without the packages it names.

The train -> evaluate -> serve path of the README runs on one checkpoint with nothing passed by
hand: evaluation and the server judge with the template it was trained with (compact), read
from its card.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import layouts
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "launch" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELLS = ("bash", "sh", "shell")
# The runs the docs' commands read, each a copy (links) of the session's quick run's checkpoints.
RUNS = ("outputs/spct-default", "outputs/perf-seed0", "outputs/bench/demo-warmup", "outputs/quick",
        "outputs/grm-seed0", "outputs/grm-seed1", "outputs/grm-seed2")
FINALS = ("warmup-final", "rl-final", "meta_rm-final")
ABSOLUTE = ("/data/", "/ckpt/", "/shared/")
MODULES = {"train": "spct.train", "evaluate": "spct.evaluate", "serve": "spct.serve"}
SCRIPTS = {f"spct-{name}": module for name, module in MODULES.items()}  # the console scripts


@dataclass
class Command:
    doc: str
    line: int
    text: str
    needs: str | None = None

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def documented_commands(path: Path) -> list[Command]:
    """The commands of a file's fenced shell blocks: continuation lines joined, comment lines
    dropped; `# needs: ...` at the end marks one that cannot run on a laptop."""
    lines, out, fence, i = path.read_text().splitlines(), [], None, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            fence = None if fence is not None else (line[3:].strip().split() or [""])[0]
            i += 1
            continue
        start = i
        text = line
        while fence in SHELLS and text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i].strip()
        i += 1
        if fence not in SHELLS or not text.strip() or text.lstrip().startswith("#"):
            continue
        needs = re.search(r"\s#\s*needs:\s*(.+)$", text)
        out.append(Command(path.relative_to(REPO).as_posix(), start + 1, " ".join(text.split()),
                           needs.group(1).strip() if needs else None))
    return out


def pairwise_rows(n: int, tag: str) -> str:
    return "".join(json.dumps({"id": f"{tag}-{i}", "prompt": f"What is {i} + {i}?", "chosen": str(2 * i),
                               "rejected": str(2 * i + 1)}) + "\n" for i in range(n))


@pytest.fixture(scope="module")
def sandbox(quick_run, tmp_path_factory) -> Path:
    src, _ = quick_run
    root = tmp_path_factory.mktemp("docs")
    for run in (*RUNS, "ckpt/grm-7b"):
        for final in FINALS:
            (root / run / "checkpoints").mkdir(parents=True, exist_ok=True)
            (root / run / "checkpoints" / final).symlink_to(src / "checkpoints" / final)
    data = root / "data"
    data.mkdir()
    for name in ("train", "rft_train"):  # as many items as the paper presets draw in a step
        (data / f"{name}.jsonl").write_text(pairwise_rows(160, name))
    layouts.ultrafeedback(data / "ultrafeedback_binarized", n_train=160)
    layouts.prompts(data / "prompts.jsonl", n=64)
    (data / "my_pairs.csv").write_text("question,good,bad\n" + "".join(f"What is {i}+{i}?,{2 * i},{2 * i + 1}\n"
                                                                       for i in range(12)))
    for name in ("test", "rewardbench"):
        (data / f"{name}.jsonl").write_text(pairwise_rows(6, name))
    shutil.copy(REPO / "tests" / "fixtures" / "benchmarks" / "judgebench_gpt4o_sample40.jsonl",
                data / "judgebench.jsonl")
    shutil.copy(REPO / "tests" / "fixtures" / "benchmarks" / "rmb_pairwise_helpfulness_chat_sample20.json",
                data / "rmb_pairwise.json")
    (root / "shared").mkdir()
    for name in ("launch", "benchmarks", "conf", "Makefile", "pyproject.toml"):
        (root / name).symlink_to(REPO / name)
    return root


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    lines: list[str] = field(default_factory=list)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return "\n".join(self.lines)


class Runner:
    """Runs the docs' commands in order in the sandbox; the server it starts serves the later
    `curl` commands."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "WANDB_MODE": "offline",
                    "PYTHONPATH": str(REPO), "PYTHON": sys.executable}
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop("SPCT_SERVE_TOKEN", None)
        self.server: Server | None = None
        self.checked: list[str] = []

    def sandboxed(self, token: str) -> str:
        for prefix in ABSOLUTE:
            token = re.sub(rf"(^|[=:,\[]){re.escape(prefix)}", lambda m, p=prefix: m.group(1) + str(self.root) + p,
                           token)
        return token

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: int = 600, cwd: Path | None = None) -> str:
        proc = subprocess.run(argv, cwd=cwd or self.root, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"$ {shlex.join(argv)}\n{log[-3000:]}"
        return log

    def check(self, cmd: Command) -> None:
        tokens = shlex.split(cmd.text, comments=True)
        env = {}
        while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
            key, value = tokens.pop(0).split("=", 1)
            env[key] = value
        self.dispatch([self.sandboxed(t) for t in tokens], env, cmd)

    def dispatch(self, tokens: list[str], env: dict[str, str], cmd: Command) -> None:
        head = tokens[0]
        if head == "make":
            target = tokens[1]
            if target == "test":
                self.checked.append(f"{cmd}: this test suite")
                return
            args = next((shlex.split(t.split("=", 1)[1]) for t in tokens[2:] if t.startswith("ARGS=")), [])
            self.spct(MODULES[target], args, env, cmd, dry=True)
        elif head in ("python", "python3") and tokens[1] == "-m" and tokens[2] in MODULES.values():
            self.spct(tokens[2], tokens[3:], env, cmd, dry=cmd.needs is not None)
        elif head in SCRIPTS:
            self.spct(SCRIPTS[head], tokens[1:], env, cmd, dry=cmd.needs is not None)
        elif head == "pip" and tokens[1] == "install":  # resolved and built, not installed (from the clone)
            out = self.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", *tokens[2:]],
                           cwd=REPO)
            assert "Would install" in out or "Requirement already satisfied" in out, out[-2000:]
            self.checked.append(f"{cmd}: pip install --dry-run --no-deps")
        elif head == "pip" and tokens[1] == "uninstall":  # this environment is in the state it leaves
            from importlib.metadata import PackageNotFoundError, version

            names = [t for t in tokens[2:] if not t.startswith("-")]
            present = []
            for name in names:
                try:
                    present.append(f"{name} {version(name)}")
                except PackageNotFoundError:
                    pass
            assert not present, f"{cmd}: still installed here: {present}"
            self.checked.append(f"{cmd}: none of them installed here")
        elif head in ("python", "python3") and tokens[1].startswith("benchmarks/"):
            out = self.run([sys.executable, *tokens[1:], "--dry-run"], env)
            assert "nothing was started" in out, out[-2000:]
            self.checked.append(f"{cmd}: --dry-run")
        elif head == "bash" and tokens[1].startswith("launch/"):
            self.launch(tokens[1], tokens[2:], env, cmd)
        elif head == "sbatch":
            script = next(t for t in tokens if t.startswith("launch/"))
            nodes = next((int(t.split("=", 1)[1]) for t in tokens if t.startswith("--nodes=")), 2)
            env = {**env, "SLURM_JOB_NODELIST": ",".join(f"node{i}" for i in range(1, nodes + 1))}
            self.launch(script, tokens[tokens.index(script) + 1:], env, cmd)
        elif head == "ray" and tokens[1:3] == ["job", "submit"]:
            self.dispatch(tokens[tokens.index("--") + 1:], env, cmd)
        elif head == "curl":
            self.curl(tokens, cmd)
        elif head == "docker" and tokens[1] == "build":  # no Docker engine here: the file is linted
            dockerfile = REPO / tokens[tokens.index("-f") + 1]
            self.run([str(Path(sys.executable).parent / "hadolint"), str(dockerfile)])
            self.checked.append(f"{cmd}: {dockerfile.name} linted (hadolint)")
        elif head == "docker" and tokens[1] == "run":  # the command the container runs, checked here
            image = next(i for i, t in enumerate(tokens) if t.startswith("spct:"))
            self.dispatch(tokens[image + 1:], env, cmd)
        else:
            pytest.fail(f"{cmd}: this test does not know how to check this command; teach it, or write it "
                        "in a ```text block if it is not a command")

    def launch(self, script: str, args: list[str], env: dict[str, str], cmd: Command) -> None:
        """A launch script's --dry-run, then the training command it would start, with dry_run."""
        if script.endswith("ray_cluster.sh"):  # the role comes first
            argv = ["bash", script, args[0], "--dry-run", *args[1:]]
        else:
            argv = ["bash", script, "--dry-run", *args]
        out = self.run(argv, {"NUM_CPUS": "64", "NUM_GPUS": "8", **env})
        train = [line for line in out.splitlines() if " -m spct.train " in line]
        if train:
            words = shlex.split(train[-1])
            launched = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
            self.spct("spct.train", words[words.index("spct.train") + 1:], {**env, **launched}, cmd, dry=True)
        else:
            self.checked.append(f"{cmd}: --dry-run")

    def spct(self, module: str, args: list[str], env: dict[str, str], cmd: Command, dry: bool) -> None:
        argv = [sys.executable, "-m", module, *args]
        if module == "spct.evaluate" and not dry:
            out = self.run([*argv, "k_max=2", "max_items=3", "bootstrap=50", "logger=none"], env)
            self.check_evaluation(args, out)
            self.checked.append(f"{cmd}: ran (k_max=2, 3 items per benchmark)")
        elif module == "spct.serve" and not dry and self.server is None:
            self.start_server(argv, env)
            self.checked.append(f"{cmd}: served, one request scored over HTTP")
        else:
            out = self.run([*argv, "dry_run=true"], env, timeout=180)
            assert "plan (dry_run: nothing started)" in out or "nothing was started" in out, out[-2000:]
            self.checked.append(f"{cmd}: dry_run=true" + (f" (needs: {cmd.needs})" if cmd.needs else ""))

    def check_evaluation(self, args: list[str], log: str) -> None:
        """An evaluation of a checkpoint judged with the template its card records: every saved
        prompt of the synthetic benchmark is that template's rendering of its item."""
        from omegaconf import OmegaConf

        from spct.card import read_card
        from spct.config import structured
        from spct.evaluate.command import EvaluateConfig, resolve_benchmark
        from spct.grm import build_prompt

        settings = dict(a.split("=", 1) for a in args if "=" in a)
        out = self.root / settings.get("output_dir", "outputs/eval")
        assert (out / "summary.md").is_file()
        model = settings.get("model") or settings.get("model.path")
        if not model:
            return
        template = read_card(self.root / model)["settings"]["template"]
        c = structured(EvaluateConfig, OmegaConf.to_container(OmegaConf.load(out / "evaluate.yaml")))
        assert c.model.template == template
        _, _, items = resolve_benchmark("synthetic", c.data, c.seed, c.max_items)
        gens = [json.loads(line) for line in (out / "synthetic" / "generations.jsonl").open()]
        assert gens and all(g["prompt"] == build_prompt(items[g["index"]], g["order"], template=template) for g in gens)

    def start_server(self, argv: list[str], env: dict[str, str]) -> None:
        proc = subprocess.Popen([*argv, "port=0"], cwd=self.root, env={**self.env, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue[str] = queue.Queue()
        seen: list[str] = []
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
        deadline, url = time.time() + 240, None
        while url is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                line = ""
            seen.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            url = found.group(1) if found else None
            assert proc.poll() is None and time.time() < deadline, "\n".join(seen)[-3000:]
        self.server = Server(proc, url, seen)
        health = httpx.get(f"{url}/health", timeout=60).json()
        model = argv[argv.index("spct.serve") + 1:]
        path = next(a.split("=", 1)[1] for a in model if a.startswith(("model=", "model.path=")))
        from spct.card import read_card

        card = read_card(self.root / path)
        assert health["template"] == card["settings"]["template"], health  # what it was trained with
        reply = httpx.post(f"{url}/score", json={"query": "What is 2 + 2?", "responses": ["4", "5"]}, timeout=120)
        assert reply.status_code == 200 and len(reply.json()["rewards"]) == 2, reply.text

    def curl(self, tokens: list[str], cmd: Command) -> None:
        assert self.server is not None, f"{cmd}: no documented server is running to answer it"
        argv = [re.sub(r"^http://[^/]+", self.server.url, t) for t in tokens]
        proc = subprocess.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        reply = json.loads(proc.stdout)
        assert "rewards" in reply, reply
        self.checked.append(f"{cmd}: answered by the documented server")

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def test_the_docs_have_commands_and_every_one_is_found():
    found = {doc.relative_to(REPO).as_posix(): documented_commands(doc) for doc in DOCS}
    assert len(found["README.md"]) >= 10 and found["launch/README.md"]
    joined = [c for cmds in found.values() for c in cmds]
    assert not [c for c in joined if "\\" in c.text.split()], "a continuation line was not joined"


@pytest.fixture(scope="module")
def runner(sandbox: Path):
    r = Runner(sandbox)
    yield r
    r.close()


@pytest.mark.parametrize("doc", [d for d in DOCS if documented_commands(d)], ids=lambda d: d.relative_to(REPO).as_posix())
def test_every_documented_command_works_as_written(doc: Path, runner: Runner):
    runner.checked = []
    for cmd in documented_commands(doc):
        runner.check(cmd)
    print("\n".join(runner.checked))
