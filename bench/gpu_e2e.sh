#!/usr/bin/env bash
# The pipeline on a GPU through the user's own commands (issue 30): the smoke study twice, the gpu
# preset killed mid-run and resumed, pipeline.pretrain --compile; per-run images/s, MFU, first step,
# data wait, peak memory. Results and the exact command in bench/RESULTS.md.
#   bash bench/gpu_e2e.sh [--out FILE]   # on a GPU machine (at most 6 minutes)
#   bash bench/gpu_e2e.sh --dry          # CPU: the same steps with the smoke preset (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec timeout 900 python3 bench/gpu_e2e.py "$@"
