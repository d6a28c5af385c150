#!/usr/bin/env bash
# Create .venv and install mmrep with its pinned stack. Idempotent: reruns only when pyproject changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.mmrep-installed
want=$(sha1sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch/torchvision pinned in pyproject; the CUDA 13 build of torch 2.14.1 runs on CPU too.
.venv/bin/python -m pip install --quiet -e '.[test]'
echo "$want" > "$stamp"
echo "mmrep installed in .venv"
