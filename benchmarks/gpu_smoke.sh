#!/usr/bin/env bash
# bash benchmarks/gpu_smoke.sh [--dry-run] [--out DIR]
# The GPU path on one GPU in under 8 minutes, no network (see benchmarks/gpu_smoke.py): a ~1B
# Llama from the project's factory, the quick pipeline on CUDA with the learner and the vLLM
# engine colocated (sleep/wake), 3 RL steps, a weight-sync check against transformers, and the
# learner's MFU and tokens/s. Exits non-zero if a part fails or takes longer than SMOKE_TIMEOUT_S
# (default 480). PYTHON chooses the interpreter (default the repository's .venv).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $repo/.venv/bin/python ]]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi
cd "$repo"
if [[ " $* " != *" --dry-run "* ]]; then
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PYTHON" -m spct.versions
fi
exec timeout "${SMOKE_TIMEOUT_S:-480}" "$PYTHON" benchmarks/gpu_smoke.py "$@"
