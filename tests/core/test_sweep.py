"""Sweep files (W&B format), the commands `wandb agent` builds, shrinking, power-law fits and the report."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mmrep.errors import MmrepError
from mmrep.sweeps import agent, laws, report, spec

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_every_shipped_sweep_file_passes_wandbs_check():
    files = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
    assert files
    for f in files:
        s = spec.load_sweep(f)  # raises on any problem W&B's validator reports
        assert spec.wandb_check(s.raw) == []
        assert s.metric.get("name", "").startswith("val_"), f"{f.name}: the sweep metric must be a held-out one"


def test_wandb_check_catches_ambiguous_bounds(tmp_path):
    # W&B's own validator (used by `wandb sweep`) rejects int/float-mixed bounds
    with pytest.raises(MmrepError, match="W&B's check"):
        spec.load_sweep(_write(tmp_path, "program: t.py\nmethod: random\nparameters: {lr: {min: 0, max: 0.5}}\n"))


def test_commands_match_wandb_agent(tmp_path):
    from wandb.sdk.launch.sweeps import utils as wandb_utils

    s = spec.load_sweep(_write(tmp_path, """
program: train.py
method: grid
parameters:
  optim.lr: {values: [0.1, 0.2]}
  loss.filtering: {values: [true, false]}
  loss.views: {value: [t, i]}
  optim.lr_scales: {value: {encoder: 0.5}}
command: ["${env}", "${interpreter}", "${program}", "${args_no_boolean_flags}"]
"""))
    runs = spec.expand(s)
    assert len(runs) == 4
    cmd = agent.wandb_command(s, runs[0])
    assert cmd[:3] == ["/usr/bin/env", "python", "train.py"]
    # exactly W&B's formatting: Python str() of values, true booleans as bare flags, false ones dropped
    assert cmd[3:] == ["--optim.lr=0.1", "--loss.filtering", "--loss.views=['t', 'i']",
                       "--optim.lr_scales={'encoder': 0.5}"]
    assert "--loss.filtering" not in agent.wandb_command(s, runs[1])
    expected = wandb_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in runs[0].items()}})
    assert cmd[3:] == expected["args_no_boolean_flags"]


def test_shrinking_from_the_command_line(tmp_path):
    path = _write(tmp_path, """
program: train.py
method: grid
metric: {name: val_mean_r10, goal: maximize}
parameters:
  optim.total_steps: {values: [10, 20, 40, 80]}
  model: {values: [a.yaml, b.yaml, c.yaml]}
""")
    assert len(spec.expand(spec.load_sweep(path))) == 12
    s = spec.load_sweep(path, ["--parameters.optim.total_steps.values=[5, 6]", "--parameters.model.value=a.yaml",
                               "--parameters.seed.value=3"])
    runs = spec.expand(s)
    assert [r["optim.total_steps"] for r in runs] == [5, 6] and {r["seed"] for r in runs} == {3}
    assert "values" not in s.parameters["model"]
    picked = spec.pick(spec.expand(spec.load_sweep(path)), 4)
    assert len(picked) == 4 and picked[0]["optim.total_steps"] == 10 and picked[-1]["model"] == "c.yaml"
    with pytest.raises(MmrepError, match="NAME.values"):
        spec.load_sweep(path, ["--parameters.model=[x]"])


def test_random_is_seeded_and_bounded(tmp_path):
    s = spec.load_sweep(_write(tmp_path, """
program: t.py
method: random
parameters:
  lr: {min: 0.0001, max: 0.1, distribution: log_uniform_values}
  layers: {min: 1, max: 4}
"""))
    a, b = spec.expand(s, seed=1, count=20), spec.expand(s, seed=1, count=20)
    assert a == b and all(1e-4 <= r["lr"] <= 0.1 and 1 <= r["layers"] <= 4 for r in a)


def test_bayes_rejected_offline(tmp_path):
    with pytest.raises(MmrepError, match="W&B server"):
        spec.load_sweep(_write(tmp_path, "program: t.py\nmethod: bayes\nparameters: {a: {values: [1]}}\n"))


def test_saturating_fit_recovers_the_law_and_its_interval_covers_it():
    x = np.geomspace(1e9, 1e13, 8)
    rng = np.random.default_rng(0)
    y = 3.0 * (x / 1e11) ** -0.35 + 0.2 + rng.normal(0, 0.005, len(x))
    fit = laws.fit_saturating(x, y, n_boot=300)
    assert fit.b == pytest.approx(0.35, abs=0.05) and fit.c == pytest.approx(0.2, abs=0.05)
    assert fit.b_ci[0] <= 0.35 <= fit.b_ci[1] and fit.b_ci[0] < fit.b_ci[1]
    lo, hi = fit.band([1e14])
    assert lo[0] <= fit.predict([1e14])[0] <= hi[0]
    with pytest.raises(MmrepError, match="3 distinct"):
        laws.fit_saturating([1, 2, 2], [1, 0.5, 0.5])


def test_frontier_keeps_runs_no_cheaper_run_beats():
    pts = [{"train_flops": 1, "loss": 0.9}, {"train_flops": 2, "loss": 0.95}, {"train_flops": 3, "loss": 0.7},
           {"train_flops": 4, "loss": 0.8}, {"train_flops": 5, "loss": 0.6}]
    assert [p["train_flops"] for p in laws.frontier(pts)] == [1, 3, 5]


def _summaries():
    out = []
    for n in (1e4, 4e4, 1.6e5):  # non-embedding params
        for steps in (50, 100, 200, 400):
            d, c = steps * 32, 6 * n * steps * 32
            err = 0.2 + 0.4 * (n / 1e4) ** -0.3 + 0.3 * (d / 1600) ** -0.4
            out.append({"run_id": f"n{int(n)}-s{steps}", "steps": steps, "samples_seen": d, "params_total": int(3 * n),
                        "params_non_embedding": int(n), "train_flops": c, "val_mean_r10": 1 - min(err, 0.99),
                        "output_dir": f"/x/n{int(n)}-s{steps}"})
    return out


def test_report_writes_fits_plots_and_markdown(tmp_path):
    summaries = _summaries()
    check = dict(summaries[-1], run_id="check", train_flops=summaries[-1]["train_flops"] * 4, val_mean_r10=0.2)
    points, skipped = report.to_points(summaries + [{"run_id": "failed"}], "val_mean_r10", "maximize")
    assert skipped == 1 and len(points) == 12
    doc = report.build(points, "val_mean_r10", "maximize", [check], n_boot=100)
    files = report.write(doc, tmp_path)
    fits = json.loads(files["fits"].read_text())
    assert fits["loss"] == "1 - val_mean_r10"
    for axis in ("compute", "data"):
        f = fits["axes"][axis]["fit"]
        assert f is not None and f["b"] > 0 and f["b_ci"][0] <= f["b"] <= f["b_ci"][1]
    model = fits["axes"]["model"]["fit"]
    assert model["n"] == 3 and model["b"] > 0 and model["b_ci"] is None  # 3 points, 3 parameters: no interval
    assert fits["axes"]["data"]["fitted_on"] == "best run per samples seen (over model size)"
    assert len(fits["axes"]["data"]["run_ids"]) == 4 and len(fits["axes"]["model"]["run_ids"]) == 3
    assert fits["prediction"]["factor"] == 10
    assert fits["prediction"]["compute"]["x"] == pytest.approx(10 * max(p["train_flops"] for p in points))
    check_row = fits["checks"][0]
    assert check_row["measured_loss"] == pytest.approx(0.8) and set(check_row["predictions"]) == {"compute", "data", "model"}
    assert fits["frontier"][0]["train_flops"] == min(p["train_flops"] for p in points)
    for axis in ("compute", "data", "model"):
        assert (tmp_path / f"law-{axis}.png").read_bytes()[:4] == b"\x89PNG"
    md = files["report"].read_text()
    assert "Compute-optimal frontier" in md and "Check runs" in md and "![law-compute](law-compute.png)" in md


def test_maximised_metric_must_be_a_fraction():
    with pytest.raises(MmrepError, match="fraction"):
        report.to_points([dict(_summaries()[0], val_mean_r10=3.0)], "val_mean_r10", "maximize")


def test_sweep_cli_dry_run_and_fit(tmp_path, capsys):
    from mmrep.sweeps import cli

    path = _write(tmp_path, f"program: {tmp_path / 'p.py'}\nmethod: grid\nmetric: {{name: val_mean_r10, goal: maximize}}\n"
                            "parameters:\n  x: {values: [1, 2, 3]}\n")
    assert cli.main([str(path), "--out", str(tmp_path / "o"), "--dry-run", "--max-runs", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "WANDB_RUN_ID=r" in lines[0] and lines[1].endswith("--x=3")
    with pytest.raises(SystemExit):  # argparse: usage + "unrecognized arguments", exit 2, as in every command
        cli.main([str(path), "--out", str(tmp_path / "o"), "--bogus=1"])
    with pytest.raises(MmrepError, match="unknown option"):  # dotted, but not a sweep-file key
        cli.main([str(path), "--out", str(tmp_path / "o"), "--optim.lr=1"])
    runs = tmp_path / "agent-runs"
    for s in _summaries():
        (runs / s["run_id"]).mkdir(parents=True)
        (runs / s["run_id"] / "summary.json").write_text(json.dumps(s))
    assert cli.fit_main([str(runs), "--n-boot", "50", "--wandb", "disabled"]) == 0
    assert json.loads((runs / "fits.json").read_text())["metric"] == "val_mean_r10"


def test_local_agent_runs_commands_in_parallel_and_skips_finished(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("import os, sys, json, pathlib\n"
                    "d = pathlib.Path(os.environ['MMREP_RUNS_DIR']) / os.environ['WANDB_RUN_ID']\n"
                    "d.mkdir(parents=True)\n"
                    "x = float(sys.argv[1].split('=')[1])\n"
                    "(d / 'summary.json').write_text(json.dumps({'x': x, 'gpu': os.environ.get('CUDA_VISIBLE_DEVICES')}))\n"
                    "sys.exit(3 if x == 3 else 0)\n")
    s = spec.load_sweep(_write(tmp_path, f"program: {prog}\nmethod: grid\nparameters:\n  x: {{values: [1, 2, 3]}}\n"))
    planned = agent.plan(s, spec.expand(s), tmp_path / "out", sys.executable)
    recs = agent.execute(planned, gpus=["0", "1"], echo=lambda *_: None)
    assert [r["returncode"] for r in recs] == [0, 0, 3]
    assert [r["summary"]["x"] for r in recs[:2]] == [1, 2] and recs[2]["summary"] is None
    assert {r["summary"]["gpu"] for r in recs[:2]} <= {"0", "1"}
    again = agent.execute(planned, echo=lambda *_: None)
    assert [r["skipped"] for r in again] == [True, True, True]  # run 3 wrote its summary before failing
