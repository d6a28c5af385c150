"""Approximate image search for galleries beyond exact search: faiss IVF-PQ, tuned to a target recall.

The gallery is streamed once, in chunks: the first `train_size` rows train the coarse quantizer
(k-means, `nlist` cells) and the product quantizer (`pq_m` sub-vectors x 8 bits = `pq_m` bytes per
item), then every chunk is encoded and added. Optionally (`refine`, default "SQ8") each item also
keeps an 8-bit scalar-quantised copy (D bytes) used to re-rank the `k * k_factor` best PQ candidates,
which lifts recall close to exact at a small cost. Memory: the codes (pq_m + 8 id bytes [+ D] per
item) + one chunk + the training sample; the float gallery is never held.
With `refine="exact"` no re-ranking codes are stored (pq_m + 8 bytes per item): the `k * k_factor`
PQ candidates are re-ranked with the exact float vectors read back from the export parts on disk
(`ExportRows`: memory maps, only the candidate rows are touched), so recall is limited by the
candidate list alone, not by a second quantiser.

`nprobe` (cells visited per query) is chosen from a target recall: recall@k against the exact top-k
(from `RunningTopK`, measured on a calibration query subset during the same streaming pass) is
measured for nprobe = 1, 2, 4, ..., and the smallest nprobe that reaches the target is kept; if
recall saturates below the target at every nprobe, the re-ranking depth k_factor is doubled and the
scan repeated.
Recall is then reported on held-out queries, not the calibration ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from mmrep.errors import MmrepError


@dataclass
class AnnConfig:
    nlist: int = 0  # IVF cells (0 = a power of two near sqrt(N) / 4, N = the expected gallery size)
    pq_m: int = 32  # PQ sub-vectors = bytes per item (must divide the dimension)
    refine: str = "SQ8"  # re-ranking: "exact" (float vectors from the export on disk), "SQ8" (D bytes per item), "none"
    k_factor: int = 8  # PQ candidates re-ranked per result when refining
    train_size: int = 0  # training rows from the start of the stream (0 = 64 per cell, at least 10k)
    target_recall: float = 0.95  # recall@k vs exact that nprobe is chosen for
    k: int = 10

    def __post_init__(self) -> None:
        if self.pq_m < 1 or self.k < 1 or self.k_factor < 1 or self.nlist < 0 or self.train_size < 0:
            raise MmrepError("ann: pq_m, k and k_factor must be >= 1; nlist and train_size >= 0")
        if not 0 < self.target_recall <= 1:
            raise MmrepError(f"ann.target_recall must be in (0, 1], got {self.target_recall}")
        if self.refine not in ("exact", "SQ8", "none"):
            raise MmrepError(f"ann.refine must be exact, SQ8 or none, got {self.refine!r}")


def auto_nlist(n: int) -> int:
    """A power of two near sqrt(n) / 4 (>= 16): ~4 sqrt(n) items per cell keeps the coarse step cheap."""
    return max(16, 2 ** round(math.log2(max(1.0, math.sqrt(n) / 4))))


@dataclass
class AnnIndex:
    index: object  # faiss index (IndexIVFPQ, or IndexRefine around it)
    ivf: object  # the IndexIVFPQ inside (nprobe lives here)
    nlist: int
    build_seconds: float = 0.0
    train_seconds: float = 0.0
    count: int = 0
    vectors: object = None  # exact re-ranking: the gallery's float rows by position (`ExportRows.take`)
    k_factor: int = 8  # candidates per result for exact re-ranking

    def set_nprobe(self, nprobe: int) -> None:
        self.ivf.nprobe = int(nprobe)

    @property
    def refines(self) -> bool:
        return self.index is not self.ivf or self.vectors is not None

    def set_k_factor(self, k_factor: int) -> None:
        self.k_factor = int(k_factor)
        if self.index is not self.ivf:
            self.index.k_factor = float(k_factor)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.vectors is None:
            return self.index.search(q, k)
        _, cand = self.ivf.search(q, k * self.k_factor)
        return rerank_exact(q, cand, self.vectors, k)

    def code_bytes(self) -> int:
        """Bytes held by the stored codes and ids (the index's size in memory, quantizers aside)."""
        import faiss

        inv = self.ivf.invlists
        total = sum(inv.list_size(i) for i in range(inv.nlist)) * (self.ivf.code_size + 8)
        if self.index is not self.ivf:
            total += self.count * faiss.downcast_index(self.index.refine_index).code_size
        return int(total)


def rerank_exact(queries: np.ndarray, candidates: np.ndarray, vectors, k: int,
                 batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query among its candidate ids (-1 = none), scored with the float rows
    `vectors.take(ids)`; only the candidate rows are read. Ranking rule: score desc, lower id on ties."""
    nq = candidates.shape[0]
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    ids = np.full((nq, k), -1, dtype=np.int64)
    for a in range(0, nq, batch):
        c = candidates[a : a + batch]
        valid = c >= 0
        # Sort each row's candidates by id first (and read the rows in file order): a stable sort on
        # score then keeps the lower id first among equal scores.
        c = np.sort(np.where(valid, c, np.iinfo(np.int64).max), axis=1)
        valid = c != np.iinfo(np.int64).max
        rows = np.unique(c[valid])
        if rows.size == 0:
            continue
        vec = vectors.take(rows)  # (n_unique, D) float32, each candidate row read once per batch
        where = np.searchsorted(rows, np.where(valid, c, rows[0]))
        s = np.matmul(vec[where], queries[a : a + batch, :, None])[..., 0]
        s = np.where(valid, s, -np.inf).astype(np.float32)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        top_s = np.take_along_axis(s, order, 1)
        top_i = np.where(np.isfinite(top_s), np.take_along_axis(c, order, 1), -1)
        scores[a : a + batch, : top_s.shape[1]], ids[a : a + batch, : top_i.shape[1]] = top_s, top_i
    return scores, ids


def build_ivfpq(chunks: Iterable[np.ndarray], dim: int, expected: int, cfg: AnnConfig,
                on_chunk=None, vectors=None) -> AnnIndex:
    """Train on the stream's first rows, then add every chunk (one pass; see the module docstring).

    `on_chunk(block)` is called with every chunk in gallery order (e.g. `RunningTopK.add` for ground
    truth), so the gallery is generated or read once. `vectors` (refine="exact"): the same gallery's
    float rows by position, e.g. `ExportRows(export_dir)`; see `build_from_export`.
    """
    import faiss

    if cfg.refine == "exact" and vectors is None:
        raise MmrepError("ann.refine=exact re-ranks with the exported float vectors: pass the export (build_from_export)")
    if dim % cfg.pq_m:
        raise MmrepError(f"ann.pq_m={cfg.pq_m} must divide the embedding dimension {dim}")
    nlist = cfg.nlist or auto_nlist(expected)
    train_size = cfg.train_size or max(10_000, 64 * nlist)
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, cfg.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    index = ivf
    if cfg.refine == "SQ8":
        index = faiss.IndexRefine(ivf, faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit,
                                                                   faiss.METRIC_INNER_PRODUCT))
        index.k_factor = float(cfg.k_factor)
    pending: list[np.ndarray] = []
    held = 0
    t0 = time.perf_counter()
    train_s = 0.0
    for block in chunks:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if on_chunk is not None:
            on_chunk(block)
        if not index.is_trained:
            pending.append(block)
            held += block.shape[0]
            if held < train_size:
                continue
            sample = np.concatenate(pending)
            ts = time.perf_counter()
            index.train(sample[:train_size])
            train_s = time.perf_counter() - ts
            for b in pending:
                index.add(b)
            pending = []
            continue
        index.add(block)
    if not index.is_trained:  # a gallery smaller than the training sample
        if not pending:
            raise MmrepError("the gallery is empty: nothing to index")
        sample = np.concatenate(pending)
        if sample.shape[0] < nlist:
            raise MmrepError(f"{sample.shape[0]} gallery items are too few for {nlist} IVF cells; lower ann.nlist")
        ts = time.perf_counter()
        index.train(sample)
        train_s = time.perf_counter() - ts
        index.add(sample)
    ann = AnnIndex(index, ivf, nlist, time.perf_counter() - t0, train_s, int(index.ntotal))
    if cfg.refine == "exact":
        if len(vectors) != ann.count:
            raise MmrepError(f"the re-ranking vectors hold {len(vectors)} rows but {ann.count} were indexed")
        ann.vectors, ann.k_factor = vectors, cfg.k_factor
    return ann


def build_from_export(paths, cfg: AnnConfig, on_chunk=None) -> AnnIndex:
    """IVF-PQ over export folders (streamed part by part, one pass); with refine="exact" the index
    re-ranks with the exported float vectors themselves (ids = positions in part order)."""
    from mmrep.export.format import EmbeddingFormatError, ExportRows, read_part_into

    try:
        rows = ExportRows(paths)
    except EmbeddingFormatError as e:
        raise MmrepError(f"ann gallery: {e}") from None

    def chunks():  # a fresh array per part: build_ivfpq keeps the first ones until it has trained
        for file in rows.files:
            yield read_part_into(file)

    return build_ivfpq(chunks(), rows.dim, len(rows), cfg, on_chunk, rows if cfg.refine == "exact" else None)


def recall_vs_exact(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """k-recall@k: the share of each query's exact top-k found in its approximate top-k, averaged."""
    f, e = found[:, :k], exact[:, :k]
    hits = sum(np.intersect1d(a[a >= 0], b[b >= 0]).size for a, b in zip(f, e))
    return hits / max(1, int((e >= 0).sum()))


@dataclass
class Tuning:
    nprobe: int
    k_factor: int  # candidates re-ranked per result (1 without re-ranking)
    reached: bool  # False: even the largest setting tried stays below the target
    curve: list[dict] = field(default_factory=list)  # [{"k_factor", "nprobe", "recall", "ms_per_query"}, ...]


def tune_nprobe(ann: AnnIndex, queries: np.ndarray, exact: np.ndarray, k: int, target: float,
                k_factor: int = 8, max_k_factor: int = 64, tolerance: float = 0.005) -> Tuning:
    """The smallest nprobe in 1, 2, 4, ... (<= nlist) whose recall@k vs `exact` reaches `target`.

    With SQ8 re-ranking, recall can saturate below the target at every nprobe when too few PQ
    candidates are re-ranked; the search then doubles k_factor (up to `max_k_factor`) and retries.
    If no setting reaches the target, the cheapest one within `tolerance` of the best recall is kept.
    """
    curve: list[dict] = []
    kf = k_factor if ann.refines else 1
    while True:
        ann.set_k_factor(kf)
        nprobe = 1
        while True:
            ann.set_nprobe(nprobe)
            t0 = time.perf_counter()
            _, found = ann.search(queries, k)
            ms = 1000 * (time.perf_counter() - t0) / max(1, len(queries))
            r = recall_vs_exact(found, exact, k)
            curve.append({"k_factor": kf, "nprobe": nprobe, "recall": r, "ms_per_query": ms})
            if r >= target:
                return Tuning(nprobe, kf, True, curve)
            if nprobe >= ann.nlist:
                break
            nprobe = min(2 * nprobe, ann.nlist)
        if not ann.refines or 2 * kf > max_k_factor:
            # Unreachable: the cheapest setting (fewest cells, then fewest candidates) within
            # `tolerance` of the best recall seen, rather than the most expensive one.
            best = max(c["recall"] for c in curve)
            pick = min((c for c in curve if c["recall"] >= best - tolerance), key=lambda c: (c["nprobe"], c["k_factor"]))
            ann.set_nprobe(pick["nprobe"])
            ann.set_k_factor(pick["k_factor"])
            return Tuning(pick["nprobe"], pick["k_factor"], False, curve)
        kf *= 2
