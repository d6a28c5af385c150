"""Held-out quality of a trained encoder on a val benchmark: the numbers sweeps report and fit laws to.

MBE retrieval R@10 per modality pair (`mmrep.evaluation.mbe`), their mean, zero-shot classification /
attribute accuracy when the benchmark has label spaces, and image-search recall@10: each query's
user-photo-like image against the gallery items' own images (`mmrep.evaluation.image_search`), which
no MBE task covers (i→mm also sees the item text). Build the benchmark once from a val split:
    mmrep eval mbe --make-bench --from-shards data/fashion/val --max-items 500 --out benches/fashion-val500
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmrep.errors import MmrepError

ALL_TASKS = ["t2mm", "i2mm", "mm2mm", "t2i", "i2t"]


@dataclass
class HeldoutConfig:
    """The `heldout` section of a training config: evaluated on rank 0 after the encoder export."""

    bench: str = ""  # MBE benchmark folder (`mmrep eval mbe --make-bench`); "" = no held-out evaluation
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))
    image_search: bool = True  # also query image -> item image recall@10
    labels: bool = True  # zero-shot classification / attribute accuracy (when the benchmark has label spaces)
    dim: int = 0  # Matryoshka dimension (0 = full)
    batch_size: int = 64

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in ALL_TASKS]
        if bad:
            raise MmrepError(f"config key 'heldout.tasks': unknown task {bad[0]!r} (choose from {', '.join(ALL_TASKS)})")
        if self.dim < 0 or self.batch_size < 1:
            raise MmrepError("heldout.dim must be >= 0 and heldout.batch_size >= 1")


def check_bench(cfg: HeldoutConfig) -> None:
    """Fail before training, not after it, when the benchmark folder is wrong."""
    from mmrep.evaluation.benchmark import BENCH_FILE

    if cfg.bench and not (Path(cfg.bench) / BENCH_FILE).is_file():
        raise MmrepError(f"heldout.bench {cfg.bench!r} is not a benchmark folder (no {BENCH_FILE}); build one with "
                         "`mmrep eval mbe --make-bench --from-shards VAL_SHARDS --out BENCH`")


def evaluate(encoder_dir: str | Path, cfg: HeldoutConfig) -> dict[str, float]:
    """Flat `val_*` metrics of the encoder in `encoder_dir` (R@10 as fractions in [0, 1])."""
    import numpy as np

    from mmrep.evaluation import mbe
    from mmrep.evaluation.benchmark import load_benchmark
    from mmrep.inference import open_encoder

    check_bench(cfg)
    bench = load_benchmark(cfg.bench)
    handle = open_encoder(path=encoder_dir)
    mcfg = mbe.MbeConfig(tasks=list(cfg.tasks), ks=[1, 5, 10], batch_size=cfg.batch_size, dim=cfg.dim,
                         labels=cfg.labels)
    res = mbe.evaluate(handle, bench, mcfg, log=lambda *_: None)
    out: dict[str, float] = {}
    for task, r in res["retrieval"].items():
        if r.get("R@10") is not None:
            out[f"val_{task}_r10"] = float(r["R@10"])
    if out:
        out["val_mean_r10"] = float(np.mean(list(out.values())))
    for group, key in (("classification", "val_classification_acc"), ("attributes", "val_attributes_acc")):
        accs = [v["accuracy"] for v in res[group].values() if v.get("samples")]
        if accs:
            out[key] = float(np.mean(accs))
    if cfg.image_search:
        r10 = image_search_r10(handle, bench, cfg)
        if r10 is not None:
            out["val_image_search_r10"] = r10
    return out


def image_search_r10(handle, bench, cfg: HeldoutConfig) -> float | None:
    """Recall@10 of query image -> item image over the benchmark's whole gallery (None: no image queries)."""
    from mmrep.evaluation.image_search import SearchConfig, evaluate_embeddings
    from mmrep.inference import embed_records

    items = [p for p in bench.items if p.has_image]
    where = {p.id: j for j, p in enumerate(items)}
    queries, positives = [], []
    for q in bench.queries:
        pos = sorted(where[i] for i in q.item_ids if i in where)
        if q.has_image and pos:
            queries.append(q)
            positives.append(pos)
    if not queries:
        return None
    q_emb = embed_records(handle, queries, "image", cfg.batch_size, cfg.dim)
    g_emb = embed_records(handle, items, "image", cfg.batch_size, cfg.dim)
    report = evaluate_embeddings(q_emb, g_emb, positives, SearchConfig(k=10), sizes=[len(items)], ks=[10])
    return float(report.rows[-1]["R@10"])
