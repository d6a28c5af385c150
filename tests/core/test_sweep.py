import json
import sys

import numpy as np
import pytest

from mmrep import sweep
from mmrep.errors import MmrepError


def _write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_grid_expansion_and_wandb_macros(tmp_path):
    s = sweep.load_sweep(_write(tmp_path, """
program: train.py
method: grid
parameters:
  optim.lr: {values: [0.1, 0.2]}
  loss.queue: {values: [true, false]}
  seed: {value: 3}
command: ["${env}", "${interpreter}", "${program}", "${args_no_boolean_flags}"]
"""))
    runs = sweep.expand(s)
    assert len(runs) == 4 and {r["seed"] for r in runs} == {3}
    cmd = sweep.render_command(s, {"optim.lr": 0.1, "loss.queue": True, "seed": 3})
    assert cmd[:3] == ["/usr/bin/env", sys.executable, "train.py"]
    assert cmd[3:] == ["--optim.lr=0.1", "--seed=3", "--loss.queue"]
    assert sweep.render_command(s, {"a": False})[3:] == []


def test_random_is_seeded_and_bounded(tmp_path):
    s = sweep.load_sweep(_write(tmp_path, """
program: t.py
method: random
parameters:
  lr: {min: 0.0001, max: 0.1, distribution: log_uniform_values}
  layers: {min: 1, max: 4}
"""))
    a, b = sweep.expand(s, seed=1, count=20), sweep.expand(s, seed=1, count=20)
    assert a == b and all(1e-4 <= r["lr"] <= 0.1 and 1 <= r["layers"] <= 4 for r in a)


def test_bayes_rejected_offline(tmp_path):
    with pytest.raises(MmrepError, match="W&B server"):
        sweep.load_sweep(_write(tmp_path, "program: t.py\nmethod: bayes\nparameters: {a: {values: [1]}}\n"))


def test_power_law_fits_recover_parameters():
    x = np.array([1e3, 1e4, 1e5, 1e6])
    fit = sweep.fit_power_law(x, 5.0 * x**-0.3)
    assert fit["a"] == pytest.approx(5.0, rel=1e-6) and fit["b"] == pytest.approx(-0.3, rel=1e-6)
    sat = sweep.fit_power_law(x, 2.0 * x**-0.5 + 0.1, saturating=True)
    assert sat["c"] == pytest.approx(0.1, abs=2e-3) and sat["b"] == pytest.approx(0.5, rel=0.05)


def test_local_runner_collects_metric(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("import sys, json, pathlib\n"
                    "args = dict(a[2:].split('=', 1) for a in sys.argv[1:])\n"
                    "d = pathlib.Path(args['output_dir']); d.mkdir(parents=True)\n"
                    "(d / 'metrics.jsonl').write_text(json.dumps({'loss': 1 / float(args['x'])}) + '\\n')\n")
    path = _write(tmp_path, f"program: {prog}\nmethod: grid\nmetric: {{name: loss}}\nparameters:\n  x: {{values: [1, 4]}}\n")
    assert sweep.main([str(path), "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["metric"] for r in res] == [1.0, 0.25]
