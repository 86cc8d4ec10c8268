#!/usr/bin/env bash
# GPU readiness check (issue 17): training images/s and MFU of ViT-B/16, R50x1 and R50+ViT-B/16 at
# 224 px, eager and compiled, and the loader on this machine; a Markdown table at the end.
#   bash bench/gpu_check.sh [--out FILE] [gpu_check.py options]   # on a GPU machine (about 7 minutes)
#   bash bench/gpu_check.sh --dry                                  # CPU, micro models, eager: checks the script
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec timeout 480 python3 bench/gpu_check.py "$@"
