"""QARM quantized item codes: residual k-means (RQ) codes and VQ (nearest-item) codes.

RQ: L levels of K centroids; level l clusters the residuals left by levels < l, and an item's code is
its nearest centroid per level, `(N, L)`. Codebooks are trained on a sample and items are encoded in
chunks, so a million items need memory for one chunk plus the codes. VQ: each item's K nearest other
items in the aligned space (inner product), `(N, K)` row indices.

Codes are always produced by `encode_rq` with the final codebooks (never read off the last k-means
assignment), so encode-only mode on saved codebooks reproduces training-mode codes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmrep.application.embeddings import release_pages
from mmrep.errors import MmrepError

CODEBOOKS_FILE = "codebooks.safetensors"


@dataclass
class QuantizeConfig:
    """`mmrep quantize` settings (config section `quantize`)."""

    levels: int = 3
    centroids: int = 256
    # kmeans: faiss.Kmeans per level on residuals (any K); progressive: the same with faiss's
    # progressive-dimension k-means (better codebooks, ~3x slower to train); faiss-rq:
    # faiss.ResidualQuantizer with max_beam_size=1 (progressive-dim too; K a power of two).
    method: Literal["kmeans", "progressive", "faiss-rq"] = "kmeans"
    niter: int = 20
    train_sample: int = 100_000  # codebooks are trained on at most this many items
    vq_k: int = 25  # 0 disables VQ codes
    vq_index: Literal["auto", "flat", "ivf"] = "auto"  # auto: exact up to 200k items, IVF above
    dedup: bool = False  # append a digit that separates items sharing a full code
    seed: int = 0
    chunk: int = 65_536  # rows encoded at a time
    eval_queries: int = 1000  # items whose dense neighbours are compared with code retrieval
    eval_k: int = 10

    def __post_init__(self) -> None:
        for key in ("levels", "centroids", "niter", "train_sample", "chunk", "eval_k"):
            if getattr(self, key) < 1:
                raise MmrepError(f"config key 'quantize.{key}' must be >= 1, got {getattr(self, key)}")
        if self.centroids < 2:
            raise MmrepError(f"config key 'quantize.centroids' must be >= 2, got {self.centroids}")
        if self.vq_k < 0 or self.eval_queries < 0:
            raise MmrepError("config keys 'quantize.vq_k' and 'quantize.eval_queries' must be >= 0")
        if self.method == "faiss-rq" and self.centroids & (self.centroids - 1):
            raise MmrepError(f"quantize.method=faiss-rq needs quantize.centroids to be a power of two "
                             f"(got {self.centroids}); use method=kmeans for other sizes")


@dataclass
class QuantizeResult:
    """Codes for N items plus the codebooks that produced them and the quality report."""

    codes: np.ndarray  # (N, L) int32 RQ codes
    codebooks: np.ndarray  # (L, K, D) float32
    vq: np.ndarray | None = None  # (N, K) int64 row indices of nearest items, -1 = none
    dedup: np.ndarray | None = None  # (N,) int32 de-duplication digit
    report: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# residual k-means


def train_codebooks(x: np.ndarray, cfg: QuantizeConfig) -> np.ndarray:
    """Residual k-means codebooks `(L, K, D)` trained on a seeded sample of `x (N, D)`."""
    import faiss

    n, d = x.shape
    rng = np.random.default_rng(cfg.seed)
    rows = np.sort(rng.choice(n, size=cfg.train_sample, replace=False)) if n > cfg.train_sample else np.arange(n)
    # gather chunk by chunk, dropping mapped pages as we go: random rows touch most of a memory-mapped file
    parts = []
    for start in range(0, n, cfg.chunk):
        lo, hi = np.searchsorted(rows, [start, start + cfg.chunk])
        parts.append(np.array(x[rows[lo:hi]], dtype=np.float32))
        release_pages(x)
    sample = np.concatenate(parts)
    if len(sample) < cfg.centroids:
        raise MmrepError(f"{len(sample)} items cannot train {cfg.centroids} centroids per level; "
                         f"lower --centroids or quantize more items")
    if cfg.method == "faiss-rq":
        rq = faiss.ResidualQuantizer(d, cfg.levels, int(math.log2(cfg.centroids)))
        rq.max_beam_size = 1
        rq.cp.seed = cfg.seed
        rq.cp.niter = cfg.niter
        rq.train(sample)
        return faiss.vector_to_array(rq.codebooks).reshape(cfg.levels, cfg.centroids, d).astype(np.float32)
    books = np.zeros((cfg.levels, cfg.centroids, d), dtype=np.float32)
    residual = sample.copy()
    for level in range(cfg.levels):
        if cfg.method == "progressive":
            pc = faiss.ProgressiveDimClustering(d, cfg.centroids)
            pc.seed, pc.niter = cfg.seed + level, cfg.niter
            pc.train(len(residual), faiss.swig_ptr(residual), faiss.ProgressiveDimIndexFactory())
            books[level] = faiss.vector_to_array(pc.centroids).reshape(cfg.centroids, d)
        else:
            # max_points_per_centroid: use the whole (already bounded) sample, not faiss's subsample
            km = faiss.Kmeans(d, cfg.centroids, niter=cfg.niter, seed=cfg.seed + level, verbose=False,
                              max_points_per_centroid=max(256, math.ceil(len(sample) / cfg.centroids)))
            km.train(residual)
            books[level] = km.centroids
        idx = _nearest(residual, books[level])
        residual -= books[level][idx]
    return books


def _nearest(r: np.ndarray, book: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for each row: argmin ||r - c||² = argmin ||c||² - 2 r·c."""
    dist = (book * book).sum(1)[None, :] - 2.0 * (r @ book.T)
    return dist.argmin(1)


def encode_rq(x: np.ndarray, codebooks: np.ndarray, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Greedy residual encoding: codes `(N, L)` int32 and squared residual norms `(N,)` float64."""
    n, d = x.shape
    if codebooks.ndim != 3 or codebooks.shape[2] != d:
        raise MmrepError(f"codebooks of shape {codebooks.shape} do not fit {d}-d embeddings; "
                         f"use the codebooks trained on this representation")
    levels = codebooks.shape[0]
    codes = np.empty((n, levels), dtype=np.int32)
    err = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        r = np.array(x[start:start + chunk], dtype=np.float32)  # copy: x may be a read-only memmap
        for level in range(levels):
            idx = _nearest(r, codebooks[level])
            codes[start:start + len(r), level] = idx
            r -= codebooks[level][idx]
        err[start:start + len(r)] = (r.astype(np.float64) ** 2).sum(1)
        release_pages(x)
    return codes, err


def reconstruct(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Sum of each item's chosen centroids, `(N, D)`."""
    out = np.zeros((len(codes), codebooks.shape[2]), dtype=np.float32)
    for level in range(codes.shape[1]):
        out += codebooks[level][codes[:, level]]
    return out


# ---------------------------------------------------------------------------------------------
# VQ codes (nearest items)


def vq_neighbours(x: np.ndarray, k: int, index: str = "auto", seed: int = 0,
                  chunk: int = 16_384) -> np.ndarray:
    """Each row's k nearest other rows by inner product, `(N, k)` int64 (-1 pads when N-1 < k)."""
    import faiss

    n, d = x.shape
    use_ivf = index == "ivf" or (index == "auto" and n > 200_000)
    data = np.ascontiguousarray(x, dtype=np.float32)
    if use_ivf:
        nlist = max(1, int(4 * math.sqrt(n)))
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = seed
        rng = np.random.default_rng(seed)
        train = data[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
        ivf.train(train)
        ivf.nprobe = 16
        idx_obj = ivf
    else:
        idx_obj = faiss.IndexFlatIP(d)
    idx_obj.add(data)
    out = np.full((n, k), -1, dtype=np.int64)
    want = min(k + 1, n)
    for start in range(0, n, chunk):
        _, found = idx_obj.search(data[start:start + chunk], want)
        rows = np.arange(start, start + len(found))[:, None]
        # drop the item itself wherever it lands (exact duplicates may outrank it); a stable sort
        # moves dropped entries to the end and keeps the rest in score order
        drop = (found == rows) | (found < 0)
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]
        keep = np.take_along_axis(found, order, 1)
        keep[np.take_along_axis(drop, order, 1)] = -1
        out[start:start + len(found), :keep.shape[1]] = keep
    return out


# ---------------------------------------------------------------------------------------------
# statistics


def collision_stats(codes: np.ndarray) -> dict[str, Any]:
    """Collisions of full codes: rate = fraction of items sharing their full code with another item."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    per_item = counts[inverse]
    return {
        "items": int(len(codes)),
        "distinct_codes": int(len(counts)),
        "collision_rate": float((per_item > 1).mean()),
        "largest_bucket": int(counts.max()),
        "mean_bucket_size_per_item": float(per_item.mean()),
    }


def utilisation(codes: np.ndarray, centroids: int) -> list[dict[str, float]]:
    """Per level: fraction of centroids used and normalised perplexity (1 = uniform use)."""
    out = []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=centroids).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        perplexity = float(np.exp(-(p * np.log(p)).sum()))
        out.append({"level": level, "used_fraction": float((counts > 0).mean()),
                    "perplexity": perplexity, "perplexity_fraction": perplexity / centroids})
    return out


def dedup_digits(codes: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each group of items sharing a full code (in row order), `(N,)` int32."""
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    sorted_groups = inverse[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    digits = np.empty(len(codes), dtype=np.int32)
    digits[order] = np.arange(len(order)) - group_start
    return digits


def retrieval_recall(x: np.ndarray, codes: np.ndarray, codebooks: np.ndarray, queries: np.ndarray,
                     k: int, chunk: int = 65_536) -> dict[str, Any]:
    """Code retrieval against exact dense retrieval for the query rows `queries (Q,)`.

    Dense truth: each query's k nearest other items by inner product. Reports, per prefix length p,
    the fraction of the truth sharing the query's first p code digits (bucket recall) and the mean
    bucket size (candidates to score); and the recall@k of ranking all other items by their
    reconstruction. Items with one full code share one reconstruction, so that ranking has ties:
    the expected recall under random tie-breaking is reported.
    """
    n = len(x)
    k = min(k, n - 1)
    if k < 1 or len(queries) == 0:
        return {}
    q = np.asarray(x[queries], dtype=np.float32)
    best = _TopK(len(q), k)
    chunk = min(chunk, 8192)  # (Q, chunk) score blocks: bounded memory for any N
    for start in range(0, n, chunk):
        block = np.asarray(x[start:start + chunk], dtype=np.float32)
        cols = np.arange(start, start + len(block))
        best.push(np.where(queries[:, None] == cols[None, :], -np.inf, q @ block.T), cols)
        release_pages(x)
    truth = best.indices()
    out: dict[str, Any] = {"k": k, "queries": int(len(queries)), "prefix": []}
    for p in range(1, codes.shape[1] + 1):
        qcode = codes[queries, :p]
        shares = (codes[truth][:, :, :p] == qcode[:, None, :]).all(-1)
        _, inv, counts = np.unique(codes[:, :p], axis=0, return_inverse=True, return_counts=True)
        bucket = counts[inv.reshape(-1)[queries]] - 1
        out["prefix"].append({"length": p, "recall": float(shares.mean()),
                              "mean_candidates": float(bucket.mean())})
    out["reconstruction_recall"] = _reconstruction_recall(q, queries, truth, codes, codebooks, k, chunk)
    return out


def _reconstruction_recall(q, queries, truth, codes, codebooks, k: int, chunk: int) -> float:
    """Expected recall@k of ranking items by reconstruction, ties (same full code) broken at random.

    Distinct codes are ranked by score; walking down them, a code holding c items (the query itself
    not counted) that starts after `before` retrieved items contributes each item with probability
    clip((k - before) / c, 0, 1).
    """
    uniq, inv, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    top = _TopK(len(q), k + 1)  # k+1: the query's own code may hold no other item
    for start in range(0, len(uniq), chunk):
        rec = reconstruct(uniq[start:start + chunk], codebooks)
        top.push(q @ rec.T, np.arange(start, start + len(rec)))
    recall = np.empty(len(q))
    for row, (qi, cand) in enumerate(zip(queries, top.indices())):
        c = counts[cand] - (cand == inv[qi])  # the query is not its own neighbour
        before = np.concatenate([[0], np.cumsum(c)[:-1]])
        prob = np.clip((k - before) / np.maximum(c, 1), 0.0, 1.0) * (c > 0)
        p_of_code = dict(zip(cand.tolist(), prob.tolist()))
        recall[row] = np.mean([p_of_code.get(int(inv[t]), 0.0) for t in truth[row]])
    return float(recall.mean())


class _TopK:
    """Running top-k (largest scores) over column blocks."""

    def __init__(self, rows: int, k: int) -> None:
        self.k = k
        self.scores = np.full((rows, 0), -np.inf, dtype=np.float32)
        self.idx = np.zeros((rows, 0), dtype=np.int64)

    def push(self, scores: np.ndarray, cols: np.ndarray) -> None:
        """Merge a block `scores (rows, c)` for columns `cols (c,)` into the running top-k."""
        if scores.shape[1] > self.k:  # shrink the block to its own top-k before merging
            part = np.argpartition(-scores, self.k - 1, axis=1)[:, :self.k]
            scores = np.take_along_axis(scores, part, 1)
            cols = cols[part]
        else:
            cols = np.broadcast_to(cols, scores.shape)
        s = np.concatenate([self.scores, scores.astype(np.float32)], 1)
        i = np.concatenate([self.idx, cols], 1)
        # ties: the lower column index first, as a stable sort over all columns would give
        keep = np.lexsort((i, -s), axis=1)[:, :self.k]
        self.scores = np.take_along_axis(s, keep, 1)
        self.idx = np.take_along_axis(i, keep, 1)

    def indices(self) -> np.ndarray:
        return self.idx


# ---------------------------------------------------------------------------------------------
# the whole step


def quantize(x: np.ndarray, cfg: QuantizeConfig, codebooks: np.ndarray | None = None) -> QuantizeResult:
    """Codes for embeddings `x (N, D)`: trains codebooks unless `codebooks (L, K, D)` are given."""
    if x.ndim != 2 or len(x) == 0:
        raise MmrepError(f"embeddings must be a non-empty (N, D) array, got shape {x.shape}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    trained = codebooks is None
    if trained:
        codebooks = train_codebooks(x, cfg)
    timings["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes, err = encode_rq(x, codebooks, cfg.chunk)
    timings["encode_s"] = time.perf_counter() - t0
    sq_norm = 0.0
    for s in range(0, len(x), cfg.chunk):
        sq_norm += float((np.asarray(x[s:s + cfg.chunk], dtype=np.float64) ** 2).sum())
        release_pages(x)
    levels, centroids = codebooks.shape[:2]
    report: dict[str, Any] = {
        "items": int(len(x)), "dim": int(x.shape[1]), "levels": int(levels), "centroids": int(centroids),
        "method": cfg.method if trained else "encode-only", "seed": cfg.seed,
        "reconstruction": {"mse": float(err.mean()), "relative": float(err.sum() / max(sq_norm, 1e-30))},
        "utilisation": utilisation(codes, centroids),
        "collisions": collision_stats(codes),
        "collisions_by_prefix": [collision_stats(codes[:, :p]) | {"length": p} for p in range(1, levels + 1)],
    }
    dedup = None
    if cfg.dedup:
        dedup = dedup_digits(codes)
        report["dedup"] = {"max_digit": int(dedup.max()),
                           "collisions_after": collision_stats(np.c_[codes, dedup])["collision_rate"]}
    vq = None
    if cfg.vq_k > 0 and len(x) > 1:
        t0 = time.perf_counter()
        vq = vq_neighbours(x, cfg.vq_k, cfg.vq_index, cfg.seed)
        timings["vq_s"] = time.perf_counter() - t0
    if cfg.eval_queries > 0 and len(x) > 1:
        t0 = time.perf_counter()
        rng = np.random.default_rng(cfg.seed + 1)
        queries = np.sort(rng.choice(len(x), size=min(cfg.eval_queries, len(x)), replace=False))
        report["retrieval"] = retrieval_recall(x, codes, codebooks, queries, cfg.eval_k, cfg.chunk)
        timings["eval_s"] = time.perf_counter() - t0
    report["timings"] = timings
    return QuantizeResult(codes=codes, codebooks=codebooks, vq=vq, dedup=dedup, report=report)


# ---------------------------------------------------------------------------------------------
# files


def save_codebooks(path: str | Path, codebooks: np.ndarray, cfg: QuantizeConfig) -> None:
    """Codebooks as safetensors (no pickle) with the settings that made them in the metadata."""
    from safetensors.numpy import save

    from mmrep.fsutil import atomic_write

    meta = {"method": cfg.method, "levels": str(codebooks.shape[0]),
            "centroids": str(codebooks.shape[1]), "seed": str(cfg.seed)}
    with atomic_write(path) as f:
        f.write(save({"codebooks": np.ascontiguousarray(codebooks, dtype=np.float32)}, metadata=meta))


def load_codebooks(path: str | Path) -> np.ndarray:
    """`(L, K, D)` codebooks from a codebooks.safetensors file (or the folder holding it) or .npz."""
    path = Path(path)
    if path.is_dir():
        path = path / CODEBOOKS_FILE
    if not path.is_file():
        raise MmrepError(f"codebooks not found: {path} (pass the codebooks.safetensors of a quantize run)")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                books = z["codebooks"]
        else:
            from safetensors.numpy import load_file

            books = load_file(str(path))["codebooks"]
    except Exception as e:  # corrupt or foreign file
        raise MmrepError(f"{path} is not a codebooks file ({type(e).__name__}: {e})") from None
    if books.ndim != 3:
        raise MmrepError(f"{path}: codebooks must be (levels, centroids, dim), got {books.shape}")
    return books.astype(np.float32)


def code_table(ids: list[str], result: QuantizeResult):
    """A pandas DataFrame users join to feature tables: item_id, rq_0..rq_{L-1}, [rq_dedup], vq_0.."""
    import pandas as pd

    cols: dict[str, Any] = {"item_id": ids}
    for level in range(result.codes.shape[1]):
        cols[f"rq_{level}"] = result.codes[:, level]
    if result.dedup is not None:
        cols["rq_dedup"] = result.dedup
    if result.vq is not None:
        names = np.asarray(list(ids) + [""], dtype=object)  # -1 (no neighbour) -> empty cell
        for j in range(result.vq.shape[1]):
            cols[f"vq_{j}"] = names[result.vq[:, j]]
    return pd.DataFrame(cols)


def write_outputs(out_dir: Path, ids: list[str], result: QuantizeResult, cfg: QuantizeConfig) -> None:
    """codes.csv, codes.safetensors (+ ids.txt), codebooks.safetensors, report.json into `out_dir`."""
    from safetensors.numpy import save

    out_dir.mkdir(parents=True, exist_ok=True)
    code_table(ids, result).to_csv(out_dir / "codes.csv", index=False)
    arrays = {"rq": np.ascontiguousarray(result.codes)}
    if result.dedup is not None:
        arrays["dedup"] = result.dedup
    if result.vq is not None:
        arrays["vq"] = np.ascontiguousarray(result.vq)
    (out_dir / "codes.safetensors").write_bytes(save(arrays))
    (out_dir / "ids.txt").write_text("\n".join(ids) + "\n")
    save_codebooks(out_dir / CODEBOOKS_FILE, result.codebooks, cfg)
    (out_dir / "report.json").write_text(json.dumps(result.report, indent=2) + "\n")


def read_codes(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """ids, RQ codes `(N, L)` and VQ neighbour rows `(N, K)` (or None) from a quantize output folder."""
    from safetensors.numpy import load_file

    path = Path(path)
    file = path / "codes.safetensors"
    if not file.is_file() or not (path / "ids.txt").is_file():
        raise MmrepError(f"no codes in {path}: pass the --out folder of `mmrep quantize`")
    arrays = load_file(str(file))
    ids = (path / "ids.txt").read_text().splitlines()
    return ids, arrays["rq"], arrays.get("vq")


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few human-readable lines for the terminal."""
    c = report["collisions"]
    lines = [f"{report['items']} items, {report['levels']} x {report['centroids']} codes "
             f"({report['method']}); relative reconstruction error {report['reconstruction']['relative']:.4f}",
             f"collision rate {c['collision_rate']:.4f}, distinct codes {c['distinct_codes']}, "
             f"largest bucket {c['largest_bucket']}",
             "utilisation per level: " + ", ".join(f"{u['used_fraction']:.3f}" for u in report["utilisation"])]
    if report.get("retrieval"):
        r = report["retrieval"]
        lines.append(f"recall@{r['k']} of dense neighbours in the query's bucket by prefix length: "
                     + ", ".join(f"{p['length']}:{p['recall']:.3f} (~{p['mean_candidates']:.0f} cand.)"
                                 for p in r["prefix"])
                     + f"; reconstruction ranking recall {r['reconstruction_recall']:.3f}")
    return lines


def config_dict(cfg: QuantizeConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
