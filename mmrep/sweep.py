"""Scaling-law sweeps: W&B sweep YAML, run by W&B's agent online or by this local runner offline.

`wandb agent` needs the W&B server; the same sweep file runs here with `mmrep sweep FILE`, which
expands `grid` / `random` parameter sets, substitutes W&B's command macros (`${args}`,
`${args_no_hyphens}`, `${args_no_boolean_flags}`, `${program}`, `${interpreter}`, `${env}`), runs
each command, and reads the target metric from the run's `metrics.jsonl`. `fit_power_law` fits
`E = a * C^b` (log space) or, with saturation, `E = a * C^(-b) + c` as open_clip's scaling work does.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import random
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_write

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]


@dataclass
class Sweep:
    program: str
    method: str
    parameters: dict[str, dict[str, Any]]
    command: list[str]
    metric: dict[str, str]
    run_cap: int | None = None


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise MmrepError(f"sweep file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    for key in ("program", "method", "parameters"):
        if key not in raw:
            raise MmrepError(f"sweep file {path} lacks '{key}' (W&B sweep format)")
    if raw["method"] not in ("grid", "random"):
        raise MmrepError(f"sweep method {raw['method']!r} runs only on the W&B server; use grid or random offline")
    for name, spec in raw["parameters"].items():
        if not isinstance(spec, dict) or not ({"value", "values", "min", "max"} & set(spec)):
            raise MmrepError(f"sweep parameter '{name}' needs value, values or min/max")
        if raw["method"] == "grid" and "values" not in spec and "value" not in spec:
            raise MmrepError(f"sweep parameter '{name}': grid search needs 'values' or 'value'")
    return Sweep(program=raw["program"], method=raw["method"], parameters=raw["parameters"],
                 command=list(raw.get("command", DEFAULT_COMMAND)), metric=raw.get("metric", {}),
                 run_cap=raw.get("run_cap"))


def expand(sweep: Sweep, seed: int = 0, count: int | None = None) -> list[dict[str, Any]]:
    """Parameter sets of the sweep: the full grid, or `count` random draws."""
    names = sorted(sweep.parameters)
    if sweep.method == "grid":
        choices = [_grid_values(sweep.parameters[n]) for n in names]
        runs = [dict(zip(names, combo)) for combo in itertools.product(*choices)]
    else:
        rng = random.Random(seed)
        n = count or sweep.run_cap or 10
        runs = [{name: _draw(sweep.parameters[name], rng) for name in names} for _ in range(n)]
    cap = count or sweep.run_cap
    return runs[:cap] if cap else runs


def _grid_values(spec: dict[str, Any]) -> list[Any]:
    return list(spec["values"]) if "values" in spec else [spec["value"]]


def _draw(spec: dict[str, Any], rng: random.Random) -> Any:
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(list(spec["values"]))
    lo, hi = spec["min"], spec["max"]
    dist = spec.get("distribution", "int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform")
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if dist == "uniform":
        return rng.uniform(lo, hi)
    raise MmrepError(f"sweep distribution {dist!r} is not supported offline (use uniform, int_uniform, log_uniform_values)")


def render_command(sweep: Sweep, params: dict[str, Any]) -> list[str]:
    """Substitute W&B's agent macros exactly as the agent does."""
    def fmt(v: Any) -> str:
        return json.dumps(v) if isinstance(v, (list, dict)) else str(v).lower() if isinstance(v, bool) else str(v)

    macros = {
        "${args}": [f"--{k}={fmt(v)}" for k, v in params.items()],
        "${args_no_hyphens}": [f"{k}={fmt(v)}" for k, v in params.items()],
        "${args_no_boolean_flags}": [f"--{k}={fmt(v)}" for k, v in params.items() if not isinstance(v, bool)]
        + [f"--{k}" for k, v in params.items() if v is True],
        "${args_json}": [json.dumps(params)],
        "${env}": ["/usr/bin/env"],
        "${interpreter}": [sys.executable],
        "${program}": [sweep.program],
    }
    out: list[str] = []
    for part in sweep.command:
        out += macros.get(part, [part])
    return out


def read_metric(run_dir: Path, name: str, goal: str = "minimize") -> float | None:
    """The best value of `name` in a run's metrics.jsonl (None when absent)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    values = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a run killed mid-write leaves a partial line
            row = json.loads(line)
            if name in row and row[name] is not None:
                values.append(float(row[name]))
    if not values:
        return None
    return min(values) if goal == "minimize" else max(values)



def fit_power_law(x: np.ndarray, y: np.ndarray, saturating: bool = False) -> dict[str, float]:
    """Fit y = a·x^b in log space, or y = a·x^(−b) + c (grid over c, then log-space fit)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.any(x <= 0):
        raise MmrepError("a power-law fit needs at least 2 points with positive x")

    def loglin(yy: np.ndarray) -> tuple[float, float, float]:
        b, log_a = np.polyfit(np.log(x), np.log(yy), 1)
        pred = np.exp(log_a) * x**b
        return float(np.exp(log_a)), float(b), float(np.mean((np.log(pred) - np.log(yy)) ** 2))

    if not saturating:
        if np.any(y <= 0):
            raise MmrepError("y = a·x^b needs positive y; use the saturating form")
        a, b, err = loglin(y)
        return {"a": a, "b": b, "c": 0.0, "log_mse": err}
    best = None
    for c in np.linspace(0.0, float(y.min()) * 0.999, 200):
        a, b, err = loglin(y - c)
        if best is None or err < best["log_mse"]:
            best = {"a": a, "b": -b, "c": float(c), "log_mse": err}
    return best


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mmrep sweep", description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="W&B sweep YAML")
    p.add_argument("--out", required=True, help="folder for the sweep's results.json")
    p.add_argument("--count", type=int, help="number of runs (random) or a cap (grid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--run-dir-key", default="output_dir",
                   help="the parameter naming each run's folder; set per run under --out when absent")
    a = p.parse_args(argv)
    sweep = load_sweep(a.sweep)
    out = Path(a.out)
    results = []
    for i, params in enumerate(expand(sweep, a.seed, a.count)):
        run_dir = out / f"run-{i:03d}"
        params = {**params, a.run_dir_key: params.get(a.run_dir_key, str(run_dir))}
        cmd = render_command(sweep, params)
        print(" ".join(shlex.quote(c) for c in cmd))
        if a.dry_run:
            continue
        code = subprocess.run(cmd, env=os.environ.copy()).returncode
        metric = sweep.metric.get("name")
        value = read_metric(Path(params[a.run_dir_key]), metric, sweep.metric.get("goal", "minimize")) if metric else None
        results.append({"params": params, "returncode": code, "metric": value})
    if not a.dry_run:
        with atomic_write(out / "results.json", "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {out / 'results.json'} ({len(results)} runs)")
    return 0
