"""A real two-node Ray cluster on this machine: `ray start --head` plus `ray start --address`,
each a raylet with its own CPUs, two declared GPUs (`--num-gpus`: Ray hands them out as on a GPU
node; the actors on them run on CPU), object store and custom resource. Every driver here is a
separate process that joins it, as on a cluster; nothing in this process connects to Ray.

Select with `pytest -m multinode`. The nodes are stopped through the `ray start --block`
processes the fixture owns, never with `ray stop` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.multinode, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
GPUS = 2  # declared per node
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "WANDB_MODE": "offline", "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}:{os.environ['PATH']}"}


class Cluster:
    """Nodes started with `ray start --block`, each its own process group."""

    def __init__(self) -> None:
        self.gcs, self.dashboard, self.client = _free_ports(3)
        self.address = f"127.0.0.1:{self.gcs}"
        self.nodes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, head: bool = False, cpus: int = 2) -> None:
        agent, metrics = _free_ports(2)
        cmd = [str(BIN / "ray"), "start", "--block", f"--num-cpus={cpus}", f"--num-gpus={GPUS}",
               f"--resources={json.dumps({f'spct_{name}': 1})}", f"--dashboard-agent-listen-port={agent}",
               f"--metrics-export-port={metrics}", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        if head:
            cmd += ["--head", f"--port={self.gcs}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard}", f"--ray-client-server-port={self.client}"]
        else:
            cmd += [f"--address={self.address}"]
        self.nodes[name] = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True)
        self.wait_nodes(len(self.nodes))

    def alive(self) -> int:
        code = (f"import ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
                "print(sum(n['Alive'] for n in ray.nodes()))")
        out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0

    def wait_nodes(self, n: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while self.alive() != n:
            if time.time() > deadline:
                raise TimeoutError(f"{n} Ray nodes did not come up at {self.address}")
            time.sleep(1)

    def kill(self, name: str) -> None:
        """Take a node away: its `ray start --block` stops the node's raylet and workers."""
        proc = self.nodes.pop(name)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)

    def stop(self) -> None:
        """Every node at once (each takes seconds to stop its raylet and workers)."""
        procs = list(self.nodes.values())
        self.nodes.clear()
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 5
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:  # `ray start --block` waits ~30 s for its children
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.start("head", head=True)
        c.start("worker")
        yield c
    finally:
        c.stop()


def _train(cluster: Cluster, out: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "spct.train", "experiment=quick", "phases=[warmup]", f"output_dir={out}",
           f"cluster.address={cluster.address}", "cluster.nodes=2", *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_weights_pushed_from_a_learner_on_one_node_reach_an_engine_on_another(cluster, tiny_model_dir):
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "integration" / "cross_node_sync.py"),
                           cluster.address, str(tiny_model_dir)], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["engine_node"] != got["learner_node"]
    assert got["versions"] == [1]
    assert got["after"] != got["before"]  # generation follows the pushed weights...
    assert got["after"] == got["transformers"]  # ...exactly as transformers decodes them


_PLACE = """
import json, sys
import ray
from hydra import compose, initialize_config_dir
from spct.config import register_schema, to_config
from spct.placement import layout, placement_report, reserve
ray.init(address=sys.argv[1], logging_level="ERROR")
register_schema()
with initialize_config_dir(config_dir=sys.argv[2], version_base=None):
    cfg = to_config(compose(config_name="config", overrides=["experiment=quick", *sys.argv[3:]]))
lay = layout(cfg)
pg = reserve(lay, timeout_s=60)
print(json.dumps(placement_report(lay, pg)))
pg.remove()
"""


@pytest.mark.parametrize(("overrides", "nodes_used"), [
    (["cluster.placement_strategy=PACK"], 1),  # engine and rank fit on one node: packed there
    (["cluster.placement_strategy=STRICT_PACK"], 1),
    (["cluster.placement_strategy=SPREAD"], 2),
    # 2 engines + 2 ranks need 4 CPUs; PACK fills one 2-CPU node and spills to the other
    (["cluster.placement_strategy=PACK", "rollout.num_engines=2", "learner.num_ranks=2"], 2),
])
def test_the_placement_strategy_of_the_preset_decides_the_nodes(cluster, overrides, nodes_used):
    proc = subprocess.run([sys.executable, "-c", _PLACE, cluster.address, str(REPO / "conf"), *overrides],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len({b["node_id"] for b in report["bundles"]}) == nodes_used
    assert report["strategy"] == overrides[0].split("=")[1]


def test_ray_job_submit_runs_on_the_nodes_gpus_with_every_actor_where_the_plan_put_it(cluster, tmp_path):
    """`ray job submit -- python -m spct.train ... cluster.num_gpus=1`: the driver joins through
    RAY_ADDRESS (set by the job); the engine, the learner rank and (in the meta_rm phase) the
    meta RM each take a declared GPU; SPREAD puts the engine and the learner on different nodes;
    the weights go from learner rank 0 to the engine by the broadcast a GPU run uses (gloo here);
    each actor reports the node, bundle and GPU the plan gave it; the outputs land in output_dir."""
    out = tmp_path / "job"
    cmd = [str(BIN / "ray"), "job", "submit", f"--address=http://127.0.0.1:{cluster.dashboard}", "--",
           sys.executable, "-m", "spct.train", "experiment=quick", "phases=[warmup,meta_rm]", f"output_dir={out}",
           "cluster.placement_strategy=SPREAD", "cluster.nodes=2", "cluster.num_gpus=1", "logger=none"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "succeeded" in proc.stdout
    placement = json.loads((out / "placement.json").read_text())
    bundles = placement["bundles"]
    assert [(b["role"], b["resources"]) for b in bundles] == [("rollout engine 0", {"CPU": 1.0, "GPU": 1.0}),
                                                             ("learner rank 0", {"CPU": 1.0, "GPU": 1.0})]
    assert placement["strategy"] == "SPREAD" and bundles[0]["node_id"] != bundles[1]["node_id"]
    assert placement["misplaced"] == [] and placement["plan"]["meta_rm"]["meta RM"] == 1
    actors = {(a["phase"], a["role"]): a for a in placement["actors"]}
    assert sorted(actors) == [("meta_rm", "learner rank 0"), ("meta_rm", "meta RM"),
                              ("warmup", "learner rank 0"), ("warmup", "rollout engine 0")]
    for a in actors.values():  # the plan's bundle, on that bundle's node, with a GPU of its own there
        assert a["node_id"] == bundles[a["bundle"]]["node_id"] and len(a["gpus"]) == 1, a
    assert actors["warmup", "rollout engine 0"]["bundle"] == 0
    assert {a["bundle"] for role, a in actors.items() if role[1] != "rollout engine 0"} == {1}  # rank 0's
    # The learner of each phase and the meta RM after it hold the one GPU of rank 0's bundle.
    assert len({a["gpus"][0] for role, a in actors.items() if role[1] != "rollout engine 0"}) == 1
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["completed"] == ["warmup", "meta_rm"] and state["weight_version"] == 1
    assert (out / "checkpoints" / "warmup-final" / "model" / "model.safetensors").exists()
    assert (out / "metrics.jsonl").exists() and (out / "summary.md").exists()


def test_a_run_the_cluster_cannot_hold_fails_before_any_actor_starts(cluster, tmp_path):
    out = tmp_path / "run"
    start = time.time()
    proc = _train(cluster, out, "cluster.placement_strategy=STRICT_SPREAD", "rollout.num_engines=2",
                  "cluster.nodes=3", "logger=none")
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "the cluster cannot hold this run" in log  # every reason, named together:
    assert "STRICT_SPREAD: 3 bundles need as many nodes, the cluster has 2" in log
    assert "cluster.nodes: expected 3 live nodes, found 2" in log
    assert "engine(s) of" not in log and not (out / "checkpoints").exists()  # no engine started
    assert time.time() - start < 60


def test_losing_a_node_mid_run_stops_cleanly_and_the_rerun_resumes(cluster, tmp_path):
    """Runs last: it takes the worker node away (and brings a fresh one back)."""
    out = tmp_path / "run"
    overrides = ("cluster.placement_strategy=STRICT_SPREAD", "phases=[warmup]", "warmup.steps=24",
                 "checkpoint.every_steps=5", "logger=none")
    proc = _train(cluster, out, *overrides)
    deadline = time.time() + 300
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and any(json.loads(x).get("phase_step", 0) >= 7
                                        for x in metrics.read_text().splitlines() if x.endswith("}"))):
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("the run never reached warm-up step 7:\n" + (proc.stdout.read() if proc.stdout else ""))
        time.sleep(0.2)
    cluster.kill("worker")
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, log[-4000:]
    assert "stopped cleanly" in log and "Rerun the same command to resume from warmup step" in log
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["phase"] == "warmup" and state["phase_step"] >= 5

    cluster.start("worker")
    proc = _train(cluster, out, *overrides)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    assert f"at warmup step {state['phase_step']}" in log
    steps = [json.loads(x)["phase_step"] for x in metrics.read_text().splitlines()
             if json.loads(x)["phase"] == "warmup" and "loss" in json.loads(x)]
    assert steps == list(range(1, 25))  # each step once, across the fault
