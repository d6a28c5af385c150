"""Evaluation reports: one JSON file + one Markdown table, several encoders side by side."""

from __future__ import annotations

import json
from pathlib import Path

from mmrep.fsutil import atomic_write

TASK_LABELS = {"t2mm": "t→mm", "i2mm": "i→mm", "mm2mm": "mm→mm", "t2i": "t→i", "i2t": "i→t"}


def _pct(v) -> str:
    return "–" if v is None else f"{100 * float(v):.2f}"


def mbe_rows(report: dict) -> list[tuple[str, list[str]]]:
    """(row label, one cell per encoder) for every metric any encoder has."""
    encs = report["encoders"]
    rows: list[tuple[str, list[str]]] = []
    tasks = [t for t in TASK_LABELS if any(t in e["results"]["retrieval"] for e in encs)]
    metric_names: list[str] = []
    for e in encs:
        for r in e["results"]["retrieval"].values():
            for k in r:
                if (k.startswith("R@") or k in ("MRR",) or k.startswith("nDCG")) and k not in metric_names:
                    metric_names.append(k)
    for t in tasks:
        for m in metric_names:
            rows.append((f"{TASK_LABELS[t]} {m}", [_pct(e["results"]["retrieval"].get(t, {}).get(m)) for e in encs]))
    for group in ("classification", "attributes"):
        fields = []
        for e in encs:
            fields += [f for f in e["results"][group] if f not in fields]
        short = "class" if group == "classification" else "attr"
        for f in fields:
            for m, label in (("accuracy", "acc"), ("macro_precision", "macro P"), ("macro_recall", "macro R"),
                             ("macro_f1", "macro F1")):
                rows.append((f"{short}: {f} {label}", [_pct(e["results"][group].get(f, {}).get(m)) for e in encs]))
    for key in ("classification accuracy", "attributes accuracy"):
        if any(key in e["results"].get("summary", {}) for e in encs):
            rows.append((f"**{key} (mean over fields)**", [_pct(e["results"]["summary"].get(key)) for e in encs]))
    return rows


def mbe_markdown(report: dict) -> str:
    bench = report["benchmark"]
    encs = report["encoders"]
    counts = bench.get("counts", {})
    lines = [f"# MBE2.0-protocol evaluation: {bench.get('name', '')}", "",
             f"{counts.get('items', '?')} items, {counts.get('queries', '?')} queries; numbers in %. "
             "R@k = a ground-truth item in the top k; ties broken by lower gallery index.", ""]
    lines.append("| metric | " + " | ".join(e["name"] for e in encs) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in encs) + " |")
    for label, cells in mbe_rows(report):
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    q = [f"{TASK_LABELS[t]}: {r.get('queries', 0)} queries / {r.get('gallery', 0)} items"
         + (f" ({r['dropped']} dropped)" if r.get("dropped") else "")
         for t, r in encs[0]["results"]["retrieval"].items()] if encs else []
    if q:
        lines += ["", "Task sizes: " + "; ".join(q) + "."]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, report: dict, markdown: str, stem: str = "report") -> tuple[Path, Path]:
    """`<out>/<stem>.json` + `<out>/<stem>.md`, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / f"{stem}.json", out / f"{stem}.md"
    with atomic_write(jp, "w") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    with atomic_write(mp, "w") as f:
        f.write(markdown)
    return jp, mp
