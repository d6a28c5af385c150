"""benchmarks/bench_gpu.py: the CPU dry run executes every stage (train steps, FLOP count, MFU, export)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peak_table_matches_device_names():
    mod = load_script()
    assert mod.peak_tflops("NVIDIA H100 80GB HBM3", 0) == 989.0
    assert mod.peak_tflops("NVIDIA H100 PCIe", 0) == 756.0
    assert mod.peak_tflops("NVIDIA A10G", 0) == 70.0
    assert mod.peak_tflops("NVIDIA A100-SXM4-80GB", 0) == 312.0
    assert mod.peak_tflops("some new chip", 0) is None
    assert mod.peak_tflops("NVIDIA H100", 123.0) == 123.0  # the override wins


@pytest.mark.slow
def test_dry_run_on_cpu(tmp_path):
    out = tmp_path / "res.json"
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("RANK", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--peak-tflops", "1", "--json", str(out),
                           "--out", str(tmp_path / "work")], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["precision"] == "torch.float32" and res["model"] == "tiny.yaml"
    assert res["samples_per_s"] > 0 and res["step_s"] > 0
    # FlopCounterMode counted the forward and backward matmuls of a 3.6M-parameter encoder on 4 items
    assert res["tflop_per_step"] * 1e12 > 1e7
    assert res["mfu"] == pytest.approx(res["achieved_tflops"] / 1.0)
    assert res["export_items_per_s"] > 0 and res["forward_items_per_s"] > 0
    assert "| MFU |" in proc.stdout and "samples/s" in proc.stdout
