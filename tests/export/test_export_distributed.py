"""A 2-rank export under the DeepSpeed launcher (CPU, gloo) equals the 1-rank export."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmrep.cli import main as mmrep_main
from mmrep.export.format import load_embeddings, read_index

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_export_equals_one_rank(encoder_dir, products_dir, tmp_path):
    launcher = Path(sys.executable).with_name("deepspeed")
    if not launcher.exists():
        launcher = shutil.which("deepspeed")
    assert launcher, "the deepspeed launcher is part of the pinned stack"
    common = ["--encoder", str(encoder_dir), "--shards", str(products_dir), "--part-size", "3", "--no-progress"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    assert mmrep_main(["export", *common, "--out", str(tmp_path / "one")]) == 0  # 1 rank, in this process
    two = subprocess.run([str(launcher), "--num_gpus", "2", "--master_port", str(free_port()),
                          str(REPO / "eval" / "export.py"), *common, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    assert "dist_world_size=2" in two.stdout + two.stderr
    ids1, e1 = load_embeddings(tmp_path / "one")
    ids2, e2 = load_embeddings(tmp_path / "two")
    assert ids1 == ids2 and len(set(ids2)) == len(ids2) == 13
    assert float(np.abs(e1 - e2).max()) < 1e-5
    assert read_index(tmp_path / "two")["parts"] == read_index(tmp_path / "one")["parts"]
