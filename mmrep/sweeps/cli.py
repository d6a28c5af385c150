"""`mmrep sweep FILE --out DIR` (a local `wandb agent`, then the fit) and `mmrep sweep fit DIR`.

    mmrep sweep configs/sweeps/fashion-scaling.yaml --out runs/sweep-fashion [--parallel 2] [--gpus 0,1]
        [--parameters.optim.total_steps.values=[50,100]] [--max-runs 4] [--dry-run] [--no-fit]
    mmrep sweep fit runs/sweep-fashion [--check runs/check-run] [--metric val_mean_r10 --goal maximize]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import yaml

from mmrep.cli_support import CommandParser
from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_write

SWEEP_COPY = "sweep.yaml"
DEFAULT_METRIC = {"name": "val_mean_r10", "goal": "maximize"}


def run_parser() -> CommandParser:
    # the sweep file is the config here (a positional): overrides edit it, not config sections
    p = CommandParser("mmrep sweep", "run a W&B sweep file locally (the commands `wandb agent` builds), then fit "
                      "scaling laws; `mmrep sweep fit DIR` refits", config_help=None, top_level=("run_cap",),
                      overrides_help="The sweep file is the config: --parameters.NAME.values=[1,2] (or .value=X) and "
                                     "--run_cap=N override its keys (e.g. --parameters.optim.total_steps.values=[50,100]).")
    p.add_argument("sweep", help="W&B sweep YAML (configs/sweeps/)")
    p.add_argument("--out", required=True, help="sweep folder: runs/, logs/, results.json, fits and report")
    p.add_argument("--count", type=int, help="number of runs (random) or a cap (grid), like run_cap")
    p.add_argument("--max-runs", type=int, default=0, help="run only N of the runs, spread evenly over the grid")
    p.add_argument("--seed", type=int, default=0, help="seed of random search")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (CPU); --gpus sets one run per GPU")
    p.add_argument("--gpus", help="comma-separated GPU ids: one run per GPU at a time (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--interpreter", default=sys.executable,
                   help="what ${interpreter} becomes (wandb agent writes `python`; default: this Python)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--no-fit", action="store_true", help="skip the scaling-law fit at the end")
    _fit_options(p)
    return p


def _fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", help="summary key to fit (default: the sweep file's metric, else val_mean_r10)")
    p.add_argument("--goal", choices=["minimize", "maximize"], help="the metric's goal (default: the sweep file's)")
    p.add_argument("--check", action="append", default=[], help="a run folder left out of the fit and compared "
                   "with the compute law's prediction (repeatable)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap refits for the intervals")
    p.add_argument("--level", type=float, default=0.9, help="interval level (default 0.9)")
    p.add_argument("--extrapolate", type=float, default=10.0, help="predict each law at this multiple of its largest x")
    p.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"],
                   help="log the plots and fits to W&B (auto: WANDB_MODE, else online when logged in)")
    p.add_argument("--project", default="mmrep", help="W&B project of the sweep-fit run")


def main(argv: list[str]) -> int:
    from mmrep.sweeps import agent
    from mmrep.sweeps.spec import expand, load_sweep, pick

    call = run_parser().invoke(argv)
    args, overrides = call.args, call.overrides
    bad = [o for o in overrides if not o.startswith("--parameters.") and not o.startswith("--run_cap")]
    if bad:
        raise MmrepError(f"unknown option {bad[0]!r}; sweep overrides look like --parameters.NAME.values=[1,2]")
    if args.parallel < 1:
        raise MmrepError("--parallel must be at least 1")
    sweep = load_sweep(args.sweep, overrides)
    runs = pick(expand(sweep, args.seed, args.count), args.max_runs)
    out = Path(args.out)
    planned = agent.plan(sweep, runs, out, args.interpreter)
    if args.dry_run:
        for pr in planned:
            env = " ".join(f"{k}={v}" for k, v in pr.env.items())
            print(f"{env} " + " ".join(shlex.quote(c) for c in pr.command))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / SWEEP_COPY, "w") as f:
        yaml.safe_dump(sweep.raw, f, sort_keys=False)
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    print(f"sweep {agent.sweep_id_for(sweep)}: {len(planned)} runs in {out}")
    records = agent.execute(planned, parallel=args.parallel, gpus=gpus)
    with atomic_write(out / "results.json", "w") as f:
        json.dump(records, f, indent=1)
    failed = [r for r in records if r["returncode"] != 0]
    print(f"wrote {out / 'results.json'}: {len(records) - len(failed)} of {len(records)} runs succeeded")
    if not args.no_fit:
        _fit(out, args, sweep.metric)
    return 1 if failed else 0


def fit_main(argv: list[str]) -> int:
    p = CommandParser("mmrep sweep fit", "fit scaling laws to a sweep folder's runs", config_help=None)
    p.add_argument("folder", help="a `mmrep sweep` folder, or any folder holding runs' summary.json files")
    p.add_argument("--out", help="where fits.json, report.md and the plots go (default: the folder)")
    _fit_options(p)
    args = p.invoke(argv).args
    folder = Path(args.folder)
    metric = {}
    if (folder / SWEEP_COPY).is_file():
        metric = (yaml.safe_load((folder / SWEEP_COPY).read_text()) or {}).get("metric") or {}
    _fit(folder, args, metric, Path(args.out) if args.out else None)
    return 0


def _fit(folder: Path, args: argparse.Namespace, file_metric: dict, out: Path | None = None) -> None:
    from mmrep.sweeps import report
    from mmrep.train.summary import read_summary

    name = args.metric or file_metric.get("name") or DEFAULT_METRIC["name"]
    goal = args.goal or file_metric.get("goal") or ("maximize" if name == DEFAULT_METRIC["name"] else "minimize")
    checks = []
    for d in args.check:
        s = read_summary(d)
        if s is None or not s.get("train_flops"):
            raise MmrepError(f"--check {d}: no summary.json with train_flops there (a finished mmrep training run?)")
        checks.append(s)
    check_dirs = {str(Path(s["output_dir"]).resolve()) for s in checks if s.get("output_dir")}
    summaries = [s for s in report.load_summaries(folder)
                 if str(Path(s.get("output_dir", "")).resolve()) not in check_dirs]
    points, skipped = report.to_points(summaries, name, goal)
    if skipped:
        print(f"{skipped} run(s) lack {name!r}, FLOPs or parameters (failed, or no heldout.bench): left out")
    doc = report.build(points, name, goal, checks, n_boot=args.n_boot, level=args.level, extrapolate=args.extrapolate)
    files = report.write(doc, out or folder)
    for axis, a in doc["axes"].items():
        f = a["fit"]
        ci = f"[{f['b_ci'][0]:.3f}, {f['b_ci'][1]:.3f}]" if f and f["b_ci"] else "(no interval)"
        print(f"{axis:8s} " + (f"b = {f['b']:.3f} {ci}, c = {f['c']:.4f} ({f['n']} runs: {a['fitted_on']})"
                                if f else f"not fitted: {a['skipped']}"))
    mode = report.log_to_wandb(doc, files, args.wandb, args.project, out or folder)
    print(f"wrote {files['fits']}, {files['report']} and {sum(p.suffix == '.png' for p in files.values())} plots"
          + ("" if mode == "disabled" else f" (W&B {mode})"))
