#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py and benchmarks/README.md): one JSON, DIR/gpu_check.json.
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--smoke] --out DIR [--study PATH] [--sections a,b]
# On one H100/H200 it runs in <= 8 minutes; with --device cpu --smoke in under a minute. Downloads nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py="python3"; fi
fi
cpu=0
for a in "$@"; do [[ "$a" == "cpu" || "$a" == "--device=cpu" ]] && cpu=1; done
if [[ $cpu == 1 ]]; then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-2}"
fi
# no network: every model is built locally with random weights and every image is synthetic
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$repo"
exec "$py" "$here/gpu_check.py" "$@"
