#!/usr/bin/env bash
# bash launch/single_node_8gpu.sh data.train=/data/rft_train.jsonl data.test=/data/rewardbench.jsonl output_dir=/ckpt/grm-7b
# SPCT on Qwen2.5-7B-Instruct with the paper's settings on this machine's 8 GPUs: starts a Ray head
# here (or reuses the one already running), then
#   python -m spct.train experiment=grm-qwen2.5-7b cluster=gpu_8x output_dir=... "$@"
# Arguments are Hydra overrides. Also read: OUTPUT_DIR (default outputs/grm-qwen2.5-7b), PYTHON
# (default the repository's .venv/bin/python, else python3), RAY_PORT (6379). Rerunning the
# same command with the same output_dir resumes from the latest checkpoint. A first argument
# --dry-run prints the commands it would start instead of starting them.
set -euo pipefail

dry=()
if [[ ${1:-} == --dry-run ]]; then dry=(--dry-run); shift; fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $here/../.venv/bin/python ]]; then PYTHON=$here/../.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
port=${RAY_PORT:-6379}

bash "$here/ray_cluster.sh" head --port "$port" ${dry[@]+"${dry[@]}"}
RAY_ADDRESS=${RAY_ADDRESS:-$("$PYTHON" -c "import ray.util; print(ray.util.get_node_ip_address())"):$port}
export RAY_ADDRESS

train=("$PYTHON" -m spct.train experiment=grm-qwen2.5-7b cluster=gpu_8x
       output_dir="${OUTPUT_DIR:-outputs/grm-qwen2.5-7b}" "$@")
if ((${#dry[@]})); then
  printf 'RAY_ADDRESS=%q ' "$RAY_ADDRESS"; printf '%q ' "${train[@]}"; echo
else
  exec "${train[@]}"
fi
