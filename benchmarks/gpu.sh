#!/usr/bin/env bash
# On a GPU machine: every competition's CPU default and seed / winner config for a few hundred bf16 steps;
# samples/s, peak GPU memory, projected 5-fold time -> benchmarks/results.md (benchmarks/gpu.py). About 5 minutes.
#   bash benchmarks/gpu.sh                       # all configs
#   bash benchmarks/gpu.sh --only usppm-minilm   # one
#   bash benchmarks/gpu.sh --size tiny --precision fp32 --out /tmp/gpu.md   # check the script on a CPU
# Hub weights: offline by default (such machines often have no network); HF_HUB_OFFLINE=0 downloads them.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
exec "${PYTHON:-.venv/bin/python}" -m benchmarks.gpu "$@"
