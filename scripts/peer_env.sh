#!/usr/bin/env bash
# The peer's environment for benchmarks/bench_quality.py: stock open_clip_train (open_clip_torch 3.3.0) needs
# webdataset 0.2.x, mmrep pins 1.x. .peer-venv gets webdataset 0.2.86 and reuses the project venv's packages
# (torch, open_clip_torch, ...) through a .pth file appended after its own site-packages: no second 6 GB install.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -x .peer-venv/bin/python ] || python3 -m venv .peer-venv
.peer-venv/bin/python -m pip install --quiet --no-deps webdataset==0.2.86 braceexpand
site=$(.peer-venv/bin/python -c "import site; print(site.getsitepackages()[0])")
.venv/bin/python -c "import site; print(site.getsitepackages()[0])" > "$site/zz_mmrep_venv.pth"
.peer-venv/bin/python -c "import webdataset, open_clip_train; assert webdataset.__version__.startswith('0.2')"
echo "peer environment ready: .peer-venv (open_clip_train + webdataset $(.peer-venv/bin/python -c 'import webdataset; print(webdataset.__version__)'))"
