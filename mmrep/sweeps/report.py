"""A sweep's results -> the points a law is fitted to -> fits.json, one PNG per axis, report.md (and W&B).

Points come from each run's summary.json: the sweep folder's results.json (written by `mmrep sweep`)
or, for runs `wandb agent` started elsewhere, every `*/summary.json` under the folder. The fitted
quantity is a loss: the metric itself when the sweep minimises it, 1 − metric when it maximises a
fraction such as recall (so L = a·x^(−b) + c decreases with scale and c is the irreducible error).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_write
from mmrep.sweeps.laws import AXES, AXIS_LABELS, fit_axes, frontier

FITS_FILE = "fits.json"
REPORT_FILE = "report.md"
NEEDED = ("train_flops", "samples_seen", "params_non_embedding")


def load_summaries(folder: str | Path) -> list[dict[str, Any]]:
    """Run summaries of a sweep folder: results.json's (when `mmrep sweep` wrote it) or every */summary.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MmrepError(f"sweep folder not found: {folder}")
    results = folder / "results.json"
    if results.is_file():
        try:
            records = json.loads(results.read_text())
        except ValueError as e:
            raise MmrepError(f"{results} is not valid JSON ({e})") from None
        return [dict(r["summary"], run_id=r["run_id"], params=r.get("params", {})) for r in records
                if r.get("summary")]
    out = []
    for path in sorted(folder.glob("**/summary.json")):
        try:
            out.append(json.loads(path.read_text()))
        except ValueError:
            continue  # a run killed mid-write; atomic writes make this rare
    return out


def to_points(summaries: list[dict[str, Any]], metric: str, goal: str) -> tuple[list[dict[str, Any]], int]:
    """(points with `loss`, runs skipped for lacking the metric / FLOPs / parameters)."""
    points, skipped = [], 0
    for s in summaries:
        v = s.get(metric)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or any(not s.get(k) for k in NEEDED):
            skipped += 1
            continue
        if goal == "maximize":
            if not 0 <= v <= 1:
                raise MmrepError(f"metric {metric!r} is maximised but {v} is not a fraction in [0, 1]; fit a loss "
                                 "(minimised) or a recall / accuracy")
            loss = 1.0 - v
        else:
            loss = float(v)
        points.append({**{k: s.get(k) for k in ("run_id", "steps", "params_total", *NEEDED)},
                       "metric": float(v), "loss": loss, "params": s.get("params", {})})
    return points, skipped


def build(points: list[dict[str, Any]], metric: str, goal: str, checks: Sequence[dict[str, Any]] = (),
          n_boot: int = 1000, level: float = 0.9, extrapolate: float = 10.0) -> dict[str, Any]:
    """The fits document: per-axis laws, the compute-optimal frontier, the extrapolated prediction, checks."""
    if len(points) < 3:
        raise MmrepError(f"only {len(points)} run(s) report {metric!r} with FLOPs and parameters; a fit needs >= 3")
    axes = fit_axes(points, n_boot, level)
    doc: dict[str, Any] = {"metric": metric, "goal": goal,
                           "loss": metric if goal == "minimize" else f"1 - {metric}", "runs": points, "axes": {}}
    for axis, entry in axes.items():
        fit = entry["fit"]
        doc["axes"][axis] = {"x": entry["x_key"], "fitted_on": entry["chosen"], "run_ids": [p["run_id"] for p in entry["points"]],
                             "fit": fit.to_dict() if fit else None, "skipped": entry["skipped"]}
    doc["frontier"] = [{k: p[k] for k in ("run_id", "train_flops", "params_non_embedding", "samples_seen", "loss", "metric")}
                       for p in frontier(points)]
    doc["prediction"] = {"factor": extrapolate}  # each law at `extrapolate` x its largest fitted x
    for axis, entry in axes.items():
        fit = entry["fit"]
        if fit is not None:
            x = extrapolate * max(p[AXES[axis]] for p in entry["points"])
            doc["prediction"][axis] = {"x": x, "loss": float(fit.predict([x])[0]), "interval": _interval(fit, x)}
    doc["checks"] = [_check(s, axes, metric, goal) for s in checks]
    doc["_fits"] = axes  # live objects for plotting; not serialised
    return doc


def _interval(fit, x: float) -> list[float] | None:
    if fit.b_ci is None:
        return None
    lo, hi = fit.band([x])
    return [float(lo[0]), float(hi[0])]


def _check(s: dict[str, Any], axes: dict[str, Any], metric: str, goal: str) -> dict[str, Any]:
    """A run left out of the fit: its measured loss against each law's prediction at its x.

    Data and model laws describe the best run per x over the sizes / budgets tried, so a run that lands
    above them is not a miss, one far below them is."""
    measured = s.get(metric)
    loss = None if measured is None else (float(measured) if goal == "minimize" else 1 - float(measured))
    out: dict[str, Any] = {"run_id": s.get("run_id", ""), "output_dir": s.get("output_dir", ""),
                           "train_flops": s["train_flops"], "params_non_embedding": s.get("params_non_embedding"),
                           "samples_seen": s.get("samples_seen"), "measured_loss": loss, "predictions": {}}
    for axis, entry in axes.items():
        fit, key = entry["fit"], AXES[axis]
        if fit is None or not s.get(key):
            continue
        band = _interval(fit, s[key])
        out["predictions"][axis] = {"x": s[key], "loss": float(fit.predict([s[key]])[0]), "interval": band,
                                    "inside": loss is not None and band is not None and band[0] <= loss <= band[1]}
    return out


def _draw(ax, doc: dict[str, Any], axis: str, entry: dict[str, Any], small: bool = False) -> None:
    key = AXES[axis]
    factor = doc.get("prediction", {}).get("factor", 10.0)
    xs = np.array([p[key] for p in doc["runs"]], float)
    ax.scatter(xs, [p["loss"] for p in doc["runs"]], s=14, c="0.65", label="runs")
    chosen = entry["points"]
    ax.scatter([p[key] for p in chosen], [p["loss"] for p in chosen], s=22, c="C0", label=entry["chosen"])
    fit = entry["fit"]
    if fit is not None:
        grid = np.geomspace(xs.min(), xs.max() * factor, 200)
        lo, hi = fit.band(grid)
        ax.fill_between(grid, lo, hi, color="C1", alpha=0.25, label=f"{int(fit.level * 100)}% bootstrap band")
        ci = f" [{fit.b_ci[0]:.2f}, {fit.b_ci[1]:.2f}]" if fit.b_ci else " (3 points: no interval)"
        ax.plot(grid, fit.predict(grid), c="C1", label=f"b={fit.b:.2f}{ci}, c={fit.c:.3f}")
        ax.axvline(xs.max(), c="0.8", lw=0.8, ls="--")
    for c in doc.get("checks", []):
        if c["measured_loss"] is not None and axis in c["predictions"]:
            ax.scatter([c[key]], [c["measured_loss"]], marker="*", s=80, c="C3", label="check run (not fitted)")
    ax.set_xscale("log")
    ax.set_xlabel(AXIS_LABELS[axis], fontsize=8 if small else 10)
    ax.set_ylabel(doc["loss"], fontsize=8 if small else 10)
    ax.set_title(f"{axis}: L = a·(x/x0)^(−b) + c" + ("" if fit else " (not fitted)"), fontsize=8 if small else 9)
    ax.tick_params(labelsize=7 if small else 9)
    ax.legend(fontsize=5.5 if small else 6.5)


def plot(doc: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per axis (the runs, the fitted law, its bootstrap band out to the extrapolation), and
    `laws.png` with the three side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [(f"law-{axis}.png", [axis], (5, 3.6), 100) for axis in doc["_fits"]]
    figures.append(("laws.png", list(doc["_fits"]), (12, 3.6), 80))
    paths = []
    for name, axes, size, dpi in figures:
        fig, subplots = plt.subplots(1, len(axes), figsize=size, dpi=dpi, squeeze=False)
        for ax, axis in zip(subplots[0], axes):
            _draw(ax, doc, axis, doc["_fits"][axis], small=len(axes) > 1)
        fig.tight_layout()
        path = out / name
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def markdown(doc: dict[str, Any], plots: Sequence[Path] = ()) -> str:
    def sci(v: Any) -> str:
        return "–" if v is None else f"{float(v):.3g}"

    lines = [f"# Scaling laws: {doc['loss']}", "",
             f"Metric `{doc['metric']}` ({doc['goal']}), {len(doc['runs'])} runs; loss L = {doc['loss']}; "
             "fits L(x) = a·(x/x0)^(−b) + c (scipy curve_fit), exponent intervals from a residual bootstrap.", "",
             "## Runs", "", "| run | steps | samples | non-emb. params | params | train FLOPs | metric | L |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in sorted(doc["runs"], key=lambda p: (p["params_non_embedding"], p["samples_seen"])):
        lines.append(f"| {p['run_id']} | {p['steps']} | {p['samples_seen']:,} | {p['params_non_embedding']:,} | "
                     f"{p['params_total']:,} | {sci(p['train_flops'])} | {p['metric']:.4f} | {p['loss']:.4f} |")
    lines += ["", "## Fits", "", "| axis | x | fitted on | n | b (exponent) | interval | c (floor) | a | x0 | RMSE |",
              "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for axis, a in doc["axes"].items():
        f = a["fit"]
        if f is None:
            lines.append(f"| {axis} | {a['x']} | {a['fitted_on']} | – | not fitted: {a['skipped']} | | | | | |")
            continue
        ci = f"[{f['b_ci'][0]:.3f}, {f['b_ci'][1]:.3f}] ({int(f['level'] * 100)}%)" if f["b_ci"] else "– (3 points)"
        lines.append(f"| {axis} | {a['x']} | {a['fitted_on']} | {f['n']} | {f['b']:.3f} | {ci} | {f['c']:.4f} | "
                     f"{f['a']:.4f} | {sci(f['x0'])} | {f['rmse']:.4f} |")
    lines += ["", "## Compute-optimal frontier", "",
              "Runs that reach a lower loss than every run with less training compute:", "",
              "| run | train FLOPs | non-emb. params | samples | L |", "| --- | ---: | ---: | ---: | ---: |"]
    for p in doc["frontier"]:
        lines.append(f"| {p['run_id']} | {sci(p['train_flops'])} | {p['params_non_embedding']:,} | "
                     f"{p['samples_seen']:,} | {p['loss']:.4f} |")
    pred = doc.get("prediction", {})
    rows = [(axis, pred[axis]) for axis in AXES if axis in pred]
    if rows:
        lines += ["", "## Extrapolation", "", f"Each law at {pred['factor']:g}× the largest x it was fitted on:", "",
                  "| law | x | predicted L | band |", "| --- | ---: | ---: | --- |"]
        lines += [f"| {axis} | {sci(p['x'])} {AXIS_LABELS[axis]} | {p['loss']:.4f} | {_band(p['interval'])} |"
                  for axis, p in rows]
    if doc.get("checks"):
        lines += ["", "## Check runs (not used in the fit)", "",
                  "| run | train FLOPs | samples | law | predicted L | band | measured L | inside |",
                  "| --- | ---: | ---: | --- | ---: | --- | ---: | --- |"]
        for c in doc["checks"]:
            m = "–" if c["measured_loss"] is None else f"{c['measured_loss']:.4f}"
            for axis, p in c["predictions"].items():
                lines.append(f"| {c['run_id'] or c['output_dir']} | {sci(c['train_flops'])} | {c['samples_seen']:,} | "
                             f"{axis} | {p['loss']:.4f} | {_band(p['interval'])} | {m} | "
                             f"{'yes' if p['inside'] else ('no' if p['interval'] else '–')} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _band(interval: list[float] | None) -> str:
    return "– (3 points)" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def write(doc: dict[str, Any], out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(doc, out)
    serial = {k: v for k, v in doc.items() if not k.startswith("_")}
    with atomic_write(out / FITS_FILE, "w") as f:
        json.dump(serial, f, indent=1, default=_json_default)
    with atomic_write(out / REPORT_FILE, "w") as f:
        f.write(markdown(doc, plots))
    return {"fits": out / FITS_FILE, "report": out / REPORT_FILE, **{p.stem: p for p in plots}}


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v)}")


def log_to_wandb(doc: dict[str, Any], files: dict[str, Path], mode: str, project: str, out: Path) -> str:
    """The plots, the runs table and the exponents as one W&B run (`sweep-fit`); returns the mode used."""
    from mmrep.train.logging import resolve_wandb_mode

    mode = resolve_wandb_mode(mode)  # type: ignore[arg-type]
    if mode == "disabled":
        return mode
    import wandb

    run = wandb.init(project=project, name=f"sweep-fit-{out.name}", dir=str(out), mode=mode, job_type="sweep-fit",
                     reinit="finish_previous", settings=wandb.Settings(console="off", silent=True))
    try:
        run.log({name: wandb.Image(str(p)) for name, p in files.items() if p.suffix == ".png"})
        cols = ["run_id", "train_flops", "samples_seen", "params_non_embedding", "metric", "loss"]
        run.log({"runs": wandb.Table(columns=cols, data=[[p[c] for c in cols] for p in doc["runs"]])})
        for axis, a in doc["axes"].items():
            f = a["fit"]
            if f:
                run.summary.update({f"{axis}_b": f["b"], f"{axis}_c": f["c"]})
                if f["b_ci"]:
                    run.summary.update({f"{axis}_b_lo": f["b_ci"][0], f"{axis}_b_hi": f["b_ci"][1]})
    finally:
        run.finish()
    return mode
