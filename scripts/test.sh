#!/usr/bin/env bash
# README command 2: set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} WANDB_MODE=${WANDB_MODE:-offline} WANDB_SILENT=true
exec .venv/bin/python -m pytest -q "$@"
