"""The reward server under concurrent clients, with and without request coalescing.

    python benchmarks/serve_load.py --model outputs/quick/checkpoints/rl-final/model
    python benchmarks/serve_load.py --model M --clients 1,8,32 --ks 1,2,4,8 --overrides rollout.num_threads=2

One GRM engine (a Ray actor running vLLM with conf/rollout/cpu.yaml's settings and any
overrides) behind the real HTTP app on loopback. Clients (threads, each with its own
connection) send single-item `/score` requests (a query of the synthetic task's test split
and its responses, k = 1) as fast as replies come. Two server settings, the same engine:
- one at a time: `max_batch_prompts=1 batch_window_ms=0`, one request per engine call (how the
  server scored before coalescing);
- coalesced: the server's defaults (`batch_window_ms=10`, `max_batch_prompts=256`).
For 1, 8 and 32 clients it reports scores/s and p50/p95 latency, and the ratio of 32 coalesced
clients to the same requests sent one at a time (goal: >= 5x). Then one request's latency at
k = 1, 2, 4, 8 (the k samples share one generate call): time(k) / time(1). Prints the tables
and writes OUT/serve_load.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL = 5.0  # 32 coalesced clients against one at a time
MODES = {"one at a time": {"max_batch_prompts": 1, "batch_window_ms": 0.0}, "coalesced": {}}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def load(url: str, bodies: list[dict], clients: int) -> dict:
    """Send every body once from `clients` threads; throughput and latency."""
    import httpx

    latencies: list[float] = []

    def worker(share: list[dict]) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            for body in share:
                start = time.perf_counter()
                reply = c.post("/score", json=body)
                reply.raise_for_status()
                latencies.append(time.perf_counter() - start)

    shares = [bodies[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, shares))
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(bodies), "wall_s": wall, "scores_per_s": len(bodies) / wall,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a GRM folder (a checkpoint's model/ folder)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests-per-client", type=int, default=4, help="requests per client (at least 32 in all)")
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--overrides", nargs="*", default=[], help="spct.train overrides, e.g. rollout.num_threads=2")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "serve_load")
    ap.add_argument("--dry-run", action="store_true", help="check the configuration and the model; start nothing")
    a = ap.parse_args()

    from benchmarks.grpo_vs_trl import compose, dry_run

    clients = [int(c) for c in a.clients.split(",")]
    ks = [int(k) for k in a.ks.split(",")]
    n = max(32, a.requests_per_client * max(clients))
    overrides = [f"model.path={a.model}", f"data.test_size={n}", *a.overrides]
    if a.dry_run:
        dry_run({"server": overrides}, [a.model])
        return
    from spct.cluster import init_ray
    from spct.config import engine_kwargs
    from spct.data import load_splits
    from spct.reward_pool import GRMRewardPool
    from spct.serve import BackgroundServer, GRMScorer, ServeConfig, app_options, make_app

    cfg = compose(overrides)
    items = load_splits(seed=cfg.seed, splits=("test",), **dataclasses.asdict(cfg.data))["test"][:n]
    bodies = [{"conversation": it.conversation, "responses": it.responses, "k": 1, "meta": False} for it in items]
    kwargs = engine_kwargs(cfg.model, cfg.rollout, cfg.seed)
    init_ray(None, cfg.cluster.num_cpus, 0)
    pool = GRMRewardPool.start(a.model, 1, kwargs, template=cfg.model.template, max_new_tokens=cfg.model.max_new_tokens,
                         num_cpus_per_engine=1)
    scorer = GRMScorer(pool, a.model, cfg.model.max_model_len)
    base = {**app_options(ServeConfig()), "max_responses": max(it.n for it in items), "max_k": max(ks)}
    pool.sample(items[:8], 1)  # warm-up

    rows = []
    for mode, options in MODES.items():
        with BackgroundServer(make_app(scorer, **{**base, **options})) as url:
            for c in clients:
                row = {"mode": mode, **load(url, bodies[: max(32, a.requests_per_client * c)], c)}
                rows.append(row)
                print(f"{mode:>14}, {c:>2} clients: {row['scores_per_s']:.2f} scores/s, "
                      f"p50 {row['p50_s']:.2f} s, p95 {row['p95_s']:.2f} s", flush=True)
    single = next(r for r in rows if r["mode"] == "one at a time" and r["clients"] == 1)
    for r in rows:
        r["vs_one_at_a_time"] = r["scores_per_s"] / single["scores_per_s"]

    latency = {}
    with BackgroundServer(make_app(scorer, **base)) as url:
        import httpx

        with httpx.Client(base_url=url, timeout=600) as c:
            for k in ks:
                runs = []
                for body in bodies[:5]:
                    start = time.perf_counter()
                    c.post("/score", json={**body, "k": k}).raise_for_status()
                    runs.append(time.perf_counter() - start)
                latency[k] = statistics.median(runs)
                print(f"k={k}: one request {latency[k]:.2f} s (median of {len(runs)})", flush=True)
    pool.shutdown()

    top = next(r for r in rows if r["mode"] == "coalesced" and r["clients"] == max(clients))
    a.out.mkdir(parents=True, exist_ok=True)
    k_rows = [{"k": k, "seconds": latency[k], "ratio": latency[k] / latency[ks[0]]} for k in ks]
    (a.out / "serve_load.json").write_text(json.dumps(
        {"model": a.model, "engine": kwargs, "items": n, "rows": rows, "k_latency": k_rows,
         "goal": {"clients": max(clients), "at_least": GOAL, "measured": top["vs_one_at_a_time"]}},
        indent=1, default=str))
    print(f"\nReward server, one engine, single-item /score requests (k = 1), {a.model}")
    print("| server | clients | requests | scores/s | p50 (s) | p95 (s) | vs one client, one at a time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['scores_per_s']:.2f} | {r['p50_s']:.2f} | "
              f"{r['p95_s']:.2f} | {r['vs_one_at_a_time']:.2f}x |")
    verdict = "met" if top["vs_one_at_a_time"] >= GOAL else "NOT met"
    print(f"\n{max(clients)} coalesced clients: {top['vs_one_at_a_time']:.2f}x (goal >= {GOAL:g}x: {verdict})")
    print("\n| k | one request (s) | time(k) / time(1) |")
    print("|---|---|---|")
    for r in k_rows:
        print(f"| {r['k']} | {r['seconds']:.2f} | {r['ratio']:.2f}x |")
    print(f"results: {a.out / 'serve_load.json'}")


if __name__ == "__main__":
    main()
