#!/usr/bin/env bash
# README command 1: set up (if needed) and run the main job on the built-in world.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline} WANDB_SILENT=true
exec .venv/bin/mmrep run --config configs/run/world-tiny.yaml "$@"
