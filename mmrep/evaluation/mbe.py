"""Zero-shot evaluation under the MBE2.0 protocol: retrieval per modality pair, classification, attributes.

Retrieval tasks (query view -> gallery item view):
    t2mm: query text -> item image+text     i2mm: query image -> item image+text
    mm2mm: query image+text -> item image+text
    t2i: query text -> item image only      i2t: query image -> item text only
A task uses the queries that have its modality (mm needs both) and the items that have the gallery
view's modality; a query whose ground-truth items are all outside that gallery is dropped (counted).
Metrics: R@1/5/10 (any ground-truth item in the top k), MRR, nDCG@10 (`mmrep.evaluation.metrics`).
Classification / attributes: each class or value string is embedded with the field's prompt
templates (text only, mean over templates, re-normalised); an item (image+text, evaluated fields
removed from its text) is assigned the most similar one: accuracy and macro P/R/F1 per field, and the
mean over fields ("classification", "attributes" summary rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from mmrep.errors import MmrepError
from mmrep.evaluation import metrics
from mmrep.evaluation.benchmark import Benchmark, label_of
from mmrep.evaluation.report import TASK_LABELS
from mmrep.inference import EncoderHandle, check_dim, embed_records, embed_texts, has_view

TASKS: dict[str, tuple[str, str]] = {
    "t2mm": ("text", "mm"),
    "i2mm": ("image", "mm"),
    "mm2mm": ("both", "mm"),
    "t2i": ("text", "image"),
    "i2t": ("image", "text"),
}


@dataclass
class MbeConfig:
    """The `mbe` config section."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    ndcg_k: int = 10
    batch_size: int = 64
    dim: int = 0  # Matryoshka dimension (0 = full)
    max_images: int = 4
    query_chunk: int = 1024  # queries scored at once against the whole gallery
    labels: bool = True  # also classification + attribute prediction (when the benchmark has label spaces)

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise MmrepError(f"config key 'mbe.tasks': unknown task {bad[0]!r} (choose from {', '.join(TASKS)})")
        if not self.ks or min(self.ks) < 1:
            raise MmrepError("config key 'mbe.ks' must list positive integers")
        for key in ("ndcg_k", "batch_size", "query_chunk"):
            if getattr(self, key) < 1:
                raise MmrepError(f"config key 'mbe.{key}' must be positive")


def _query_ok(q, view: str) -> bool:
    if view == "both":
        return q.has_text and q.has_image
    return has_view(q, view)  # type: ignore[arg-type]


def _ranks(q_emb: np.ndarray, g_emb: np.ndarray, positives: list[list[int]], chunk: int) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    g = torch.from_numpy(g_emb)
    chunk = max(1, min(chunk, (1 << 26) // max(1, g.shape[0])))  # score block <= 64M floats (256 MB)
    for s in range(0, len(positives), chunk):
        scores = torch.from_numpy(q_emb[s : s + chunk]) @ g.T
        out += metrics.positive_ranks(scores, positives[s : s + chunk])
    return out


def evaluate(handle: EncoderHandle, bench: Benchmark, cfg: MbeConfig, item_emb: tuple[list[str], np.ndarray] | None = None,
             log=print) -> dict:
    """All MBE metrics for one encoder. `item_emb`: precomputed mm item embeddings (ids, (N, D)) from
    `mmrep export`, used instead of encoding the gallery in the mm view."""
    dim = cfg.dim
    if dim and dim > handle.embed_dim:
        raise MmrepError(f"--dim {dim} exceeds encoder {handle.name}'s embedding size {handle.embed_dim}")
    item_views: dict[str, tuple[list[int], np.ndarray]] = {}

    def items_in(view: str) -> tuple[list[int], np.ndarray]:
        if view not in item_views:
            rows = [i for i, p in enumerate(bench.items) if has_view(p, view)]  # type: ignore[arg-type]
            if view == "mm" and item_emb is not None:
                ids, emb = item_emb
                check_dim(emb.shape[1], handle, dim, "stored item embeddings (--items-emb)")
                where = {x: j for j, x in enumerate(ids)}
                missing = [bench.items[i].id for i in rows if bench.items[i].id not in where]
                if missing:
                    raise MmrepError(f"--items-emb lacks item {missing[0]!r} of the benchmark; export the benchmark's items/")
                item_views[view] = (rows, emb[[where[bench.items[i].id] for i in rows]].astype(np.float32))
            else:
                log(f"  [{handle.name}] encoding {len(rows)} items ({view})")
                item_views[view] = (rows, embed_records(handle, [bench.items[i] for i in rows], view,  # type: ignore[arg-type]
                                                        cfg.batch_size, dim))
        return item_views[view]

    query_views: dict[str, tuple[list[int], np.ndarray]] = {}

    def queries_in(view: str) -> tuple[list[int], np.ndarray]:
        if view not in query_views:
            rows = [i for i, q in enumerate(bench.queries) if _query_ok(q, view)]
            log(f"  [{handle.name}] encoding {len(rows)} queries ({view})")
            query_views[view] = (rows, embed_records(handle, [bench.queries[i] for i in rows],
                                                     "mm" if view == "both" else view, cfg.batch_size, dim))  # type: ignore[arg-type]
        return query_views[view]

    results: dict = {"retrieval": {}, "classification": {}, "attributes": {}}
    for task in cfg.tasks:
        qview, gview = TASKS[task]
        q_rows, q_emb = queries_in(qview)
        g_rows, g_emb = items_in(gview)
        pos_of = {bench.items[i].id: j for j, i in enumerate(g_rows)}
        keep, positives = [], []
        for j, qi in enumerate(q_rows):
            pos = sorted({pos_of[x] for x in bench.queries[qi].item_ids if x in pos_of})
            if pos:
                keep.append(j)
                positives.append(pos)
        if not positives:
            results["retrieval"][task] = {"queries": 0, "dropped": len(q_rows)}
            continue
        ranks = _ranks(q_emb[keep], g_emb, positives, cfg.query_chunk)
        r = metrics.retrieval_from_ranks(ranks, cfg.ks, cfg.ndcg_k)
        r.update({"dropped": len(q_rows) - len(keep), "gallery": len(g_rows)})
        results["retrieval"][task] = r
    if cfg.labels and (bench.labels.get("classification") or bench.labels.get("attributes")):
        rows, emb = items_in("mm")
        for group, key in (("classification", "classes"), ("attributes", "values")):
            for spec in bench.labels.get(group, []):
                results[group][spec["field"]] = _label_task(handle, bench, spec, spec[key], rows, emb, dim)
    results["summary"] = summary(results)
    return results


def _label_task(handle: EncoderHandle, bench: Benchmark, spec: dict, values: Sequence[str], rows: list[int],
                emb: np.ndarray, dim: int) -> dict:
    """Zero-shot prediction of one field: argmax over prompt-embedded value strings."""
    templates = spec.get("prompts") or ["{}"]
    texts = [t.format(v) for v in values for t in templates]
    label_emb = embed_texts(handle, texts, dim=dim).reshape(len(values), len(templates), -1).mean(axis=1)
    label_emb /= np.linalg.norm(label_emb, axis=1, keepdims=True).clip(min=1e-12)
    sel = [j for j, i in enumerate(rows) if label_of(bench.items[i], spec["field"]) in set(values)]
    if not sel:
        return {"samples": 0}
    pred = metrics.argmax_labels(emb[sel], label_emb)
    truth = [label_of(bench.items[rows[j]], spec["field"]) for j in sel]
    return metrics.classification_metrics(truth, [values[k] for k in pred])


def summary(results: dict) -> dict:
    """Headline numbers: R@10 per task, mean accuracy over classification / attribute fields."""
    out = {}
    for task, r in results["retrieval"].items():
        if r.get("queries"):
            out[f"{TASK_LABELS[task]} R@10"] = r.get("R@10")
    for group in ("classification", "attributes"):
        accs = [v["accuracy"] for v in results[group].values() if v.get("samples")]
        if accs:
            out[f"{group} accuracy"] = float(np.mean(accs))
    return out
