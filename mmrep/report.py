"""The main job's report folder: one Markdown page + PNG plots, read from the steps' own outputs.

Reads files only (training metrics.jsonl, the MBE / CTR / exchange-rate reports); it imports no
training or evaluation code, so it can be rerun on a finished run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmrep.fsutil import atomic_write

TASK_ORDER = ("t→mm", "i→mm", "mm→mm", "t→i", "i→t")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a partial last line from an interrupted run
            continue
    return rows


def plot_training_curves(out: Path, stages: list[str], png: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {s: _read_jsonl(out / s / "metrics.jsonl") for s in stages}
    curves = {s: [r for r in rows if "loss" in r] for s, rows in curves.items()}
    curves = {s: rows for s, rows in curves.items() if rows}
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, (stage, rows) in zip(axes[0], curves.items()):
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", lw=1)
        ax.set_title(f"{stage} loss")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _retrieval(enc: dict) -> dict[str, dict]:
    """Task label -> metrics, from one encoder's MBE results (labels as in the report's summary)."""
    out = {}
    for label, value in enc["results"].get("summary", {}).items():
        if label.endswith(" R@10"):
            out[label[: -len(" R@10")]] = value
    return out


def plot_recall_by_pair(mbe: dict, png: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    encs = mbe.get("encoders", [])
    if not encs:
        return None
    tasks = [t for t in TASK_ORDER if any(t in _retrieval(e) for e in encs)] or sorted(
        {t for e in encs for t in _retrieval(e)})
    if not tasks:
        return None
    width = 0.8 / len(encs)
    fig, ax = plt.subplots(figsize=(1.4 * len(tasks) + 2.5, 3.4))
    for i, e in enumerate(encs):
        r = _retrieval(e)
        ax.bar(np.arange(len(tasks)) + i * width, [100 * (r.get(t) or 0) for t in tasks], width, label=e["name"])
    ax.set_xticks(np.arange(len(tasks)) + width * (len(encs) - 1) / 2, tasks)
    ax.set_ylabel("R@10 (%)")
    ax.set_title("retrieval recall@10 by query→candidate modality")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def results_table(mbe: dict | None, ctr: dict | None, exchange: dict | None) -> str:
    lines: list[str] = []
    if mbe:
        encs = mbe["encoders"]
        keys = list(dict.fromkeys(k for e in encs for k in e["results"].get("summary", {})))
        lines += ["## MBE2.0-protocol evaluation (test split, zero-shot)", "",
                  "| encoder | " + " | ".join(keys) + " |", "| --- | " + " | ".join("---:" for _ in keys) + " |"]
        for e in encs:
            s = e["results"].get("summary", {})
            lines.append(f"| {e['name']} | " + " | ".join(
                "" if s.get(k) is None else f"{100 * s[k]:.1f}" for k in keys) + " |")
        lines.append("")
    if ctr:
        lines += ["## Downstream CTR model (final encoder's items)", "",
                  "| features | AUC | GAUC | log-loss |", "| --- | ---: | ---: | ---: |"]
        for name, r in ctr["results"].items():
            s = r["summary"]
            lines.append(f"| {name} | {s['auc']['mean']:.4f} ± {s['auc']['std']:.4f} | "
                         f"{s['gauc']['mean']:.4f} ± {s['gauc']['std']:.4f} | {s['logloss']['mean']:.4f} |")
        lines.append("")
    if exchange and exchange.get("ranking"):
        lines += ["## Exchange rate: which intermediate metric predicts downstream AUC", "",
                  "| rank | metric | slope ΔAUC/Δmetric | Pearson r | Spearman ρ | sign stability |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for i, name in enumerate(exchange["ranking"], 1):
            m = exchange["metrics"][name]
            lines.append(f"| {i} | {name} | {_fmt(m.get('slope'))} | {_fmt(m.get('pearson'))} | "
                         f"{_fmt(m.get('spearman'))} | {_fmt(m.get('sign_stability'))} |")
        lines.append("")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_run_report(out: Path, stages: list[str], job: Any = None) -> dict[str, Any]:
    """Write OUT/report/{report.md, *.png}; returns {"table": markdown, "report": path}."""
    rdir = out / "report"
    rdir.mkdir(parents=True, exist_ok=True)
    mbe = _read_json(out / "eval" / "mbe" / "report.json")
    ctr = _read_json(out / "ctr" / "ctr.json")
    exchange = _read_json(out / "exchange-rate" / "report.json")
    curves = plot_training_curves(out, [s for s in stages if (out / s).is_dir()], rdir / "training_curves.png")
    recall = plot_recall_by_pair(mbe, rdir / "recall_by_modality.png") if mbe else None
    table = results_table(mbe, ctr, exchange)
    md = ["# mmrep run report", "", f"Run folder: `{out}`", ""]
    timings = ""
    if job is not None:
        rows = job.step_times()
        total = sum(r[1] for r in rows)
        md += [f"Steps: {len(rows)}, {total:.0f} s of step time (see `run.yaml` for the resolved config).", ""]
        timings = step_time_table(rows)
    md.append(table)
    if timings:
        md += ["", timings]
    for png, caption in ((curves, "Training loss per stage"), (recall, "Recall@10 by modality pair")):
        if png:
            md += [f"![{caption}]({png.name})", ""]
    if exchange:
        md += ["Exchange-rate details, with what every column means: `exchange-rate/report.md`; "
               "scatter plots: `exchange-rate/plots/`.", ""]
    path = rdir / "report.md"
    with atomic_write(path, "w") as f:
        f.write("\n".join(md))
    return {"table": table, "report": str(path), "timings": timings}


def step_time_table(rows: list[tuple[str, float, float | None]]) -> str:
    """Markdown table of per-step wall times (steps finished in an earlier run keep their time)."""
    lines = ["| step | seconds | load avg at end |", "| --- | ---: | ---: |"]
    for name, sec, load in rows:
        lines.append(f"| {name} | {sec:.1f} | {'' if load is None else load} |")
    lines.append(f"| total | {sum(r[1] for r in rows):.1f} | |")
    return "\n".join(lines)
