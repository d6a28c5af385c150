"""Training runs as `wandb agent` starts them, and a tiny `mmrep sweep` end to end (held-out metric, fits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmrep.sweeps import agent, spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_bench(tiny_world, tmp_path_factory) -> Path:
    from mmrep.evaluation.benchmark import from_catalogue

    out = tmp_path_factory.mktemp("bench") / "val"
    from_catalogue(tiny_world / "items" / "val", out, max_items=40)
    return out


def _tiny_sweep(path: Path, world: Path, bench: Path, params: str, command: str = "") -> Path:
    """A grid sweep file over pretrain-tiny on the tiny world, scored on the tiny val benchmark."""
    path.write_text(f"""
program: {REPO / 'pretrain' / 'train.py'}
method: grid
metric: {{name: val_mean_r10, goal: maximize}}
parameters:
{params}
  config: {{value: {REPO / 'configs' / 'train' / 'pretrain-tiny.yaml'}}}
  data.shards: {{value: {world / 'items' / 'train'}}}
  data.num_workers: {{value: 0}}
  data.batch_size: {{value: 8}}
  data.epoch_length: {{value: 64}}
  data.shuffle_buffer: {{value: 32}}
  optim.warmup_steps: {{value: 1}}
  checkpoint.every_steps: {{value: 0}}
  logging.every_steps: {{value: 1}}
  heldout.bench: {{value: {bench}}}
{command}
""")
    return path


@pytest.mark.slow
def test_wandb_agent_commands_for_a_grid_run_side_by_side(tiny_world, tiny_bench, tmp_path, th):
    """The exact argv `wandb agent` builds (W&B's code; `python` on PATH), 3 runs, one working folder."""
    path = _tiny_sweep(tmp_path / "sweep.yaml", tiny_world, tiny_bench, """
  optim.total_steps: {values: [2, 3, 4]}
  loss.learn_temperature: {value: true}
  loss.matryoshka_dims: {value: [16, 32]}
  optim.lr_scales: {value: {encoder: 1.0}}""", 'command: ["${env}", "${interpreter}", "${program}", "${args_no_boolean_flags}"]')
    s = spec.load_sweep(path)
    work = tmp_path / "agent"
    work.mkdir()
    for i, params in enumerate(spec.expand(s)):
        cmd = agent.wandb_command(s, params)  # what wandb_agent.Agent._command_run runs
        assert cmd[1] == "python" and "--loss.learn_temperature" in cmd and "--loss.matryoshka_dims=[16, 32]" in cmd
        assert "--optim.lr_scales={'encoder': 1.0}" in cmd and not any(c.startswith("--output_dir") for c in cmd)
        env = th.env(WANDB_RUN_ID=f"run{i}", WANDB_SWEEP_ID="sw1", WANDB_SILENT="true",
                     PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                     PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        env["WANDB_MODE"] = "offline"  # the run's summary also goes to its (offline) W&B run
        env.pop("MMREP_RUNS_DIR", None)
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    runs = work / "runs" / "pretrain-tiny"  # the config's output_dir, one folder per W&B run id
    assert sorted(p.name for p in runs.iterdir()) == ["run0", "run1", "run2"]
    for i, steps in enumerate([2, 3, 4]):
        d = runs / f"run{i}"
        summary = json.loads((d / "summary.json").read_text())
        assert (d / "encoder").is_dir() and summary["steps"] == steps and summary["run_id"] == f"run{i}"
        assert summary["train_flops"] == summary["flops_per_step"] * steps > 0
        assert summary["samples_seen"] == 8 * steps and 0 < summary["params_non_embedding"] < summary["params_total"]
        assert 0 <= summary["val_mean_r10"] <= 1 and "val_image_search_r10" in summary and "val_t2mm_r10" in summary
        (wandb_file,) = (d / "wandb").glob(f"offline-run-*-run{i}/run-run{i}.wandb")  # its own W&B run, same id
        assert b"val_mean_r10" in wandb_file.read_bytes()  # the summary reached W&B (only the summary holds it)


@pytest.mark.slow
def test_tiny_sweep_end_to_end_writes_fits_plots_and_report(tiny_world, tiny_bench, tmp_path, monkeypatch):
    from mmrep.sweeps import cli

    path = _tiny_sweep(tmp_path / "tiny-sweep.yaml", tiny_world, tiny_bench, """
  optim.total_steps: {values: [1, 2, 3, 4, 6, 8]}
  logging.wandb: {value: disabled}""")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "sweep"
    # shrunk from the command line: 3 of the 6 budgets
    assert cli.main([str(path), "--out", str(out), "--parameters.optim.total_steps.values=[2, 4, 8]",
                     "--n-boot", "100", "--wandb", "offline"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["returncode"] for r in results] == [0, 0, 0] and len({r["run_dir"] for r in results}) == 3
    fits = json.loads((out / "fits.json").read_text())
    assert fits["metric"] == "val_mean_r10" and fits["loss"] == "1 - val_mean_r10"  # held out, not training loss
    assert [p["samples_seen"] for p in sorted(fits["runs"], key=lambda p: p["steps"])] == [16, 32, 64]
    for axis in ("compute", "data"):
        f = fits["axes"][axis]["fit"]
        assert f["n"] == 3 and f["b"] >= 0 and f["b_ci"] is None  # 3 runs interpolate the law: no interval
    assert fits["axes"]["model"]["fit"] is None and "3 distinct" in fits["axes"]["model"]["skipped"]
    assert fits["prediction"]["compute"]["x"] == pytest.approx(10 * max(p["train_flops"] for p in fits["runs"]))
    assert fits["frontier"] and (out / "law-compute.png").is_file() and (out / "law-data.png").is_file()
    assert "## Fits" in (out / "report.md").read_text()
    (fit_run,) = (out / "wandb").glob("offline-run-*")  # the plots and the runs table went to W&B
    assert list(fit_run.glob("files/media/images/law-compute_*.png")) and list(fit_run.glob("files/media/table/runs_*"))
