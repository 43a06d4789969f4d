#!/usr/bin/env bash
# Start a Ray node on this machine, or find it already running (a second call does nothing):
#   bash launch/ray_cluster.sh head [--port 6379] [--block] [-- EXTRA_RAY_START_ARGS...]
#   bash launch/ray_cluster.sh worker --address HEAD_IP:6379 [--block] [-- EXTRA_RAY_START_ARGS...]
#   bash launch/ray_cluster.sh wait --address HEAD_IP:6379 --nodes 4 [--timeout 600]
#   add --dry-run to print the command it would start instead of starting it
# CPUs come from SLURM_CPUS_PER_TASK, SLURM_CPUS_ON_NODE or nproc; GPUs from CUDA_VISIBLE_DEVICES
# or nvidia-smi. NUM_CPUS, NUM_GPUS, NODE_IP and PYTHON (the interpreter that has Ray) override.
# --block keeps the command in the foreground for as long as the node lives (what srun needs).
# Token authentication is on (RAY_AUTH_MODE=token): the head creates ~/.ray/auth_token if no
# token exists; workers and drivers need the same token (shared home, or RAY_AUTH_TOKEN).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $repo/.venv/bin/python ]]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi

die() { echo "ray_cluster.sh: $*" >&2; exit 2; }
ray_cli() { "$PYTHON" -m ray.scripts.scripts "$@"; }

export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
have_token() { [[ $RAY_AUTH_MODE != token ]] || ray_cli get-auth-token >/dev/null 2>&1; }

role=${1:-}
[[ $role == head || $role == worker || $role == wait ]] || die "expected 'head', 'worker' or 'wait' first, got '${role}'"
shift
port=6379 address="" block=0 nodes=1 timeout=600 dry=0 extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --address) address=${2:?--address needs HOST:PORT}; shift 2 ;;
    --nodes) nodes=${2:?--nodes needs a count}; shift 2 ;;
    --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
    --block) block=1; shift ;;
    --dry-run) dry=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done

# Run a command, or with --dry-run print it (shell-quoted) and go on.
run() {
  if ((dry)); then printf '%q ' "$@"; echo; else "$@"; fi
}

detect_cpus() { echo "${NUM_CPUS:-${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-$(nproc)}}}"; }

detect_gpus() {
  if [[ -n ${NUM_GPUS:-} ]]; then
    echo "$NUM_GPUS"
  elif [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
    tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c . || true
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}

# Whether something listens at HOST:PORT; cheap enough to poll.
port_open() { timeout 3 bash -c ": </dev/tcp/$1/$2" 2>/dev/null; }

wait_for_port() {
  local host=$1 port=$2 deadline=$((SECONDS + timeout))
  until port_open "$host" "$port"; do
    ((SECONDS < deadline)) || die "nothing listens at $host:$port after ${timeout} s (is the head up?)"
    sleep 2
  done
}

# Whether this machine is a live node of the cluster at $1.
joined() {
  "$PYTHON" - "$1" "${NODE_IP:-}" <<'PY'
import sys

import ray

ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
ip = sys.argv[2] or ray.util.get_node_ip_address()
sys.exit(0 if any(n["Alive"] and n["NodeManagerAddress"] == ip for n in ray.nodes()) else 1)
PY
}

# Hold the foreground while the cluster at HOST:PORT is up (for --block on a node already running).
hold() {
  echo "ray_cluster.sh: holding while $1:$2 is up"
  while port_open "$1" "$2"; do sleep 30; done
}

start_args() {
  args=(--num-cpus="$(detect_cpus)" --num-gpus="$(detect_gpus)" --disable-usage-stats)
  [[ -n ${NODE_IP:-} ]] && args+=(--node-ip-address="$NODE_IP")
  ((block)) && args+=(--block)
  args+=(${extra[@]+"${extra[@]}"})
}

case $role in
  head)
    if ((!dry)) && port_open "${NODE_IP:-127.0.0.1}" "$port"; then
      echo "ray_cluster.sh: a Ray head already listens on port $port; nothing to start"
      if ((block)); then hold "${NODE_IP:-127.0.0.1}" "$port"; fi
      exit 0
    fi
    ((dry)) || have_token || ray_cli get-auth-token --generate >/dev/null
    start_args
    echo "ray_cluster.sh: starting the Ray head on port $port with $(detect_cpus) CPUs, $(detect_gpus) GPUs"
    run "$PYTHON" -m ray.scripts.scripts start --head --port="$port" "${args[@]}"
    ;;
  worker)
    [[ -n $address ]] || die "worker needs --address HEAD_IP:PORT"
    if ((!dry)); then
      have_token || die "no Ray auth token here: copy the head's ~/.ray/auth_token or set RAY_AUTH_TOKEN"
      wait_for_port "${address%:*}" "${address##*:}"
    fi
    if ((!dry)) && joined "$address"; then
      echo "ray_cluster.sh: this node already belongs to $address; nothing to start"
      if ((block)); then hold "${address%:*}" "${address##*:}"; fi
      exit 0
    fi
    start_args
    echo "ray_cluster.sh: joining $address with $(detect_cpus) CPUs, $(detect_gpus) GPUs"
    run "$PYTHON" -m ray.scripts.scripts start --address="$address" "${args[@]}"
    ;;
  wait)
    [[ -n $address ]] || die "wait needs --address HEAD_IP:PORT"
    if ((dry)); then
      echo "ray_cluster.sh: would wait up to ${timeout} s for $nodes nodes at $address"
      exit 0
    fi
    have_token || die "no Ray auth token here: copy the head's ~/.ray/auth_token or set RAY_AUTH_TOKEN"
    wait_for_port "${address%:*}" "${address##*:}"
    "$PYTHON" - "$address" "$nodes" "$timeout" "$SECONDS" <<'PY'
import sys
import time

import ray

address, want, timeout, spent = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + max(timeout - spent, 1.0)
while (alive := sum(n["Alive"] for n in ray.nodes())) < want:
    if time.monotonic() > deadline:
        sys.exit(f"ray_cluster.sh: {alive} of {want} nodes joined {address} within {timeout:.0f} s")
    time.sleep(5)
res = ray.cluster_resources()
print(f"ray_cluster.sh: {alive} nodes up at {address}: {res.get('CPU', 0):.0f} CPUs, {res.get('GPU', 0):.0f} GPUs")
PY
    ;;
esac
