#!/usr/bin/env bash
# Train structured, then toolcall: one Ray Train trainer at a time, each with 4 GPU workers.
# Only tracks whose decision says FINE_TUNE=1 are trained (add --force to train anyway).
# Flags after the script name override the defaults below, e.g. on a CPU-only machine:
#   slm_swap/train_sequential.sh --workers 1 --gpus-per-worker 0
set -euo pipefail
project_root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$project_root"
# SLM_SWAP_PYTHON picks the interpreter; else the project venv; else python3 on PATH.
# (Not $PYTHON: `make VAR=...` exports its command-line variables to every child process.)
python_bin="${SLM_SWAP_PYTHON:-$project_root/.venv/bin/python}"
[ -x "$python_bin" ] || python_bin=python3
exec "$python_bin" jobs/train.py --track all --strategy sequential --workers 4 --gpus-per-worker 1 "$@"
