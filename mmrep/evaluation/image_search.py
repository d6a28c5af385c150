"""Image search recall: query image -> item recall@K over galleries up to millions, bounded memory.

The gallery is streamed in chunks (from memory or from `mmrep export` part files); each chunk is
searched with faiss's flat inner-product kernel (`faiss.knn`, what `IndexFlatIP.search` runs) and
merged into a running top-K under mmrep's ranking rule (score desc, lower gallery index on ties).
After the first n gallery rows the running top-K *is* the exact top-K of that prefix, so one pass reports recall at every nested gallery size
(`sizes`) when the gallery is ordered ground-truth items first, then distractors.
Memory: queries (Q, D) + one gallery chunk (C, D) + top-K lists (Q, K) + scores (q_chunk, C).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from mmrep.errors import MmrepError
from mmrep.evaluation.metrics import recall_from_topk

DEFAULT_RECALL_KS = (1, 5, 10, 50, 100)


@dataclass
class SearchConfig:
    k: int = 100  # result list length (largest recall@K)
    query_chunk: int = 4096  # queries scored per faiss call
    gallery_chunk: int = 131072  # gallery rows per faiss index
    threads: int = 0  # faiss OpenMP threads (0 = faiss default)

    def __post_init__(self) -> None:
        for name in ("k", "query_chunk", "gallery_chunk"):
            if getattr(self, name) < 1:
                raise MmrepError(f"image_search.{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class SearchResult:
    """Running top-K of every query: scores (Q, K) float32, indices (Q, K) int64 (-1 = empty)."""

    scores: np.ndarray
    indices: np.ndarray
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)  # gallery size -> indices copy
    seconds: float = 0.0


def iter_chunks(gallery: np.ndarray | Iterable[np.ndarray], chunk: int) -> Iterator[np.ndarray]:
    """Gallery rows as (C, D) float32 chunks from an array or an iterable of arrays."""
    if isinstance(gallery, np.ndarray):
        for start in range(0, gallery.shape[0], chunk):
            yield np.ascontiguousarray(gallery[start : start + chunk], dtype=np.float32)
        return
    for part in gallery:
        part = np.asarray(part)
        for start in range(0, part.shape[0], chunk):
            yield np.ascontiguousarray(part[start : start + chunk], dtype=np.float32)


class RunningTopK:
    """Exact running top-K of fixed queries over gallery blocks fed in gallery order.

    After `add` has seen n rows, `scores` / `indices` hold the exact top-K of those n rows under the
    ranking rule. Memory: the queries + (Q, K) lists; the blocks are not kept.
    """

    def __init__(self, queries: np.ndarray, k: int, query_chunk: int = 4096) -> None:
        self.q = np.ascontiguousarray(queries, dtype=np.float32)
        nq = self.q.shape[0]
        self.k, self.query_chunk, self.seen = k, query_chunk, 0
        self.scores = np.full((nq, k), -np.inf, dtype=np.float32)
        self.indices = np.full((nq, k), -1, dtype=np.int64)

    def add(self, block: np.ndarray) -> None:
        if block.shape[1] != self.q.shape[1]:
            raise MmrepError(f"gallery embeddings have dimension {block.shape[1]} but queries have {self.q.shape[1]}; "
                             "use embeddings from the same encoder and --dim")
        kk = min(self.k, block.shape[0])
        for qs in range(0, self.q.shape[0], self.query_chunk):
            rows = slice(qs, qs + self.query_chunk)
            s, i = _block_topk(block, self.q[rows], kk)
            i += self.seen
            self.scores[rows], self.indices[rows] = _merge_sorted(self.scores[rows], self.indices[rows], s, i)
        self.seen += block.shape[0]


@dataclass
class ExportGallery:
    """An export-folder gallery in search order: ground-truth rows first, then everything else.

    `relevant_ids[j]` is gallery position j; `total` rows in all; `chunks()` streams them.
    """

    relevant_ids: list[str]
    dim: int
    total: int
    rows: object  # mmrep.export.format.ExportRows over the folders
    keep: list  # per part: None (stream every row) or a bool mask of the rows streamed after the ground truth
    relevant_rows: np.ndarray  # positions (in part order) of the ground-truth rows, in gallery order

    def chunks(self) -> Iterator[np.ndarray]:
        """One pass over the parts: the ground-truth rows first (read alone, through memory maps that
        touch only their pages), then each part's other rows, a part at a time, read straight into a
        buffer reused across parts (memory: one part), so a yielded array is valid only until the next
        one is requested."""
        from mmrep.export.format import read_part_into

        if self.relevant_rows.size:
            yield self.rows.take(self.relevant_rows)
            self.rows.close()
        buf = None
        for p, keep in enumerate(self.keep):
            emb = read_part_into(self.rows.files[p], buf, keep)  # the ground-truth rows are skipped, not copied
            buf = emb.base  # the whole buffer, reused for the next part
            yield emb


def export_gallery(paths: Sequence, relevant: set[str]) -> ExportGallery:
    """Plan a one-pass search over export folders (gallery first, then distractors).

    Reads only the part headers (ids) here. Rows whose id is in `relevant` are put first, in the order
    they are found, each id once (an item in both the gallery and a distractor set is searched once);
    the other rows follow in part order.
    """
    from mmrep.export.format import ExportRows, part_layout

    rows = ExportRows(list(paths))
    relevant_ids: list[str] = []
    relevant_rows: list[int] = []
    seen: set[str] = set()
    keep: list = []
    repeats = 0
    for p, file in enumerate(rows.files):
        ids, _, shape, _ = part_layout(file)  # the header alone; a truncated part fails here, before searching
        if shape != (rows.offsets[p + 1] - rows.offsets[p], rows.dim):
            raise MmrepError(f"{file} holds {shape[0]} x {shape[1]} embeddings, its index.json says "
                             f"{rows.offsets[p + 1] - rows.offsets[p]} x {rows.dim}")
        hit = [j for j, i in enumerate(ids) if i in relevant]
        if not hit:
            keep.append(None)
            continue
        mask = np.ones(len(ids), dtype=bool)
        mask[hit] = False
        keep.append(mask)
        for j in hit:
            if ids[j] in seen:
                repeats += 1
                continue
            seen.add(ids[j])
            relevant_ids.append(ids[j])
            relevant_rows.append(int(rows.offsets[p]) + j)
    return ExportGallery(relevant_ids, rows.dim, len(rows) - repeats, rows, keep, np.asarray(relevant_rows, np.int64))


def chunked_search(
    queries: np.ndarray,
    gallery: np.ndarray | Iterable[np.ndarray],
    cfg: SearchConfig = SearchConfig(),
    sizes: Sequence[int] = (),
) -> SearchResult:
    """Exact inner-product top-K of each query over a streamed gallery; see the module docstring.

    queries: (Q, D); gallery: (G, D) array or iterable of (n_i, D) arrays in gallery order.
    `sizes`: gallery prefix sizes at which to snapshot the top-K indices (chunks are split there).
    """
    import faiss

    if cfg.threads:
        faiss.omp_set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    top = RunningTopK(queries, cfg.k, cfg.query_chunk)
    cuts = sorted(set(int(s) for s in sizes if s > 0))
    snapshots: dict[int, np.ndarray] = {}
    for block in _split_at(iter_chunks(gallery, cfg.gallery_chunk), cuts):
        top.add(block)
        if top.seen in cuts:
            snapshots[top.seen] = top.indices.copy()
    if top.seen == 0:
        raise MmrepError("the gallery is empty: nothing to search")
    missing = [c for c in cuts if c > top.seen]
    if missing:
        raise MmrepError(f"gallery size {missing[0]} requested but the gallery holds only {top.seen} items; lower --sizes")
    snapshots.setdefault(top.seen, top.indices.copy())
    return SearchResult(top.scores, top.indices, snapshots, time.perf_counter() - t0)


def _block_topk(block: np.ndarray, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss top-kk of one gallery block under the ranking rule (score desc, lower index on ties).

    faiss (`faiss.knn`, the kernel under IndexFlatIP, without copying the block into an index)
    returns the right scores but picks arbitrarily among items tied with the kk-th score, and orders
    equal scores arbitrarily. Asking for kk+1 results reveals rows with a tie at the cut (the
    (kk+1)-th score equals the kk-th); only those rows are re-ranked exactly. Rows with equal
    adjacent scores are re-sorted by index. On real-valued embeddings neither happens, so the cost is
    one extra result per query and two vectorised comparisons.
    """
    import faiss

    n = block.shape[0]
    s, i = faiss.knn(q, block, min(kk + 1, n), faiss.METRIC_INNER_PRODUCT)
    if s.shape[1] > kk:
        tied = np.flatnonzero(s[:, kk] == s[:, kk - 1])
        s, i = s[:, :kk], i[:, :kk]
        if tied.size:
            s, i = s.copy(), i.copy()
        for r in tied:
            row = block @ q[r]
            cut = np.partition(row, n - kk)[n - kk]  # the kk-th largest score
            above = np.flatnonzero(row > cut)
            sel = np.concatenate([above, np.flatnonzero(row == cut)[: kk - above.size]])
            i[r], s[r] = sel, row[sel]
    s, i = np.ascontiguousarray(s), np.ascontiguousarray(i)
    ties = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1)) if kk > 1 else np.zeros(0, np.int64)
    if ties.size:
        order = np.lexsort((i[ties], -s[ties]), axis=1)
        s[ties], i[ties] = np.take_along_axis(s[ties], order, 1), np.take_along_axis(i[ties], order, 1)
    return s, i


def _merge_sorted(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge a block's ranked lists into the running top-K (both sorted by the ranking rule).

    Every index of the block is larger than every index already held, so on equal scores the held
    entry wins: a stable sort on score alone, running lists first, is the ranking rule. Each row is two
    sorted runs, which a stable (merge) sort joins in linear time. Rows the block cannot enter (its
    best score <= the running K-th) are skipped.
    """
    k = best_s.shape[1]
    enter = np.flatnonzero(s[:, 0] > best_s[:, -1])
    if enter.size == 0:
        return best_s, best_i
    vals = np.concatenate([best_s[enter], s[enter]], axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")[:, :k]
    best_s[enter] = np.take_along_axis(vals, order, 1)
    best_i[enter] = np.take_along_axis(np.concatenate([best_i[enter], i[enter]], axis=1), order, 1)
    return best_s, best_i


def _split_at(chunks: Iterator[np.ndarray], cuts: Sequence[int]) -> Iterator[np.ndarray]:
    """Re-chunk so that every cut position falls on a chunk boundary."""
    pos = 0
    for c in chunks:
        start = 0
        n = c.shape[0]
        for cut in cuts:
            if pos + start < cut < pos + n:
                yield c[start : cut - pos]
                start = cut - pos
        if start < n:
            yield c[start:]
        pos += n


def recall_vs_size(result: SearchResult, positives: Sequence[Sequence[int]], ks: Sequence[int] = DEFAULT_RECALL_KS) -> list[dict]:
    """Recall@K at every snapshotted gallery size: [{"gallery": n, "R@1": ..., ...}, ...]."""
    ks = [k for k in ks if k <= result.indices.shape[1]]
    rows = []
    for size in sorted(result.snapshots):
        # Queries whose ground truth lies beyond this prefix cannot hit: order ground truth first.
        rows.append({"gallery": size, **recall_from_topk(result.snapshots[size], positives, ks)})
    return rows


def nested_order(n_gallery: int, relevant: Iterable[int], seed: int = 0) -> np.ndarray:
    """A gallery permutation: relevant items first (in index order), then distractors shuffled."""
    rel = np.unique(np.asarray(list(relevant), dtype=np.int64))
    rest = np.setdiff1d(np.arange(n_gallery), rel)
    rng = np.random.default_rng(seed)
    return np.concatenate([rel, rng.permutation(rest)])


def default_sizes(total: int, start: int) -> list[int]:
    """Nested gallery sizes: `start` (the relevant items), then x10 steps, then `total`."""
    sizes, n = [], max(1, start)
    while n < total:
        sizes.append(n)
        n = n * 10 if n >= 1000 else 1000
    sizes.append(total)
    return sorted(set(sizes))


@dataclass
class ImageSearchReport:
    queries: int
    dim: int
    rows: list[dict]
    seconds: float
    source: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def markdown(self) -> str:
        ks = [k for k in self.rows[0] if k.startswith("R@")] if self.rows else []
        lines = [f"Image search: {self.queries} queries, {self.dim}-d, {self.seconds:.1f} s", ""]
        lines.append("| gallery | " + " | ".join(ks) + " |")
        lines.append("| ---: | " + " | ".join("---:" for _ in ks) + " |")
        for r in self.rows:
            lines.append(f"| {r['gallery']:,} | " + " | ".join(f"{100 * r[k]:.2f}" for k in ks) + " |")
        return "\n".join(lines) + "\n"


def evaluate_embeddings(
    query_emb: np.ndarray,
    gallery: np.ndarray | Iterable[np.ndarray],
    positives: Sequence[Sequence[int]],
    cfg: SearchConfig = SearchConfig(),
    sizes: Sequence[int] = (),
    ks: Sequence[int] = DEFAULT_RECALL_KS,
) -> ImageSearchReport:
    """Search + recall@K per nested gallery size (positives index the gallery's streamed order)."""
    if query_emb.shape[0] == 0:
        raise MmrepError("no queries to evaluate (the query set is empty)")
    ks = sorted(set(ks))
    cfg = dataclasses.replace(cfg, k=max(cfg.k, max(ks)))
    res = chunked_search(query_emb, gallery, cfg, sizes)
    rows = recall_vs_size(res, positives, ks)
    return ImageSearchReport(int(query_emb.shape[0]), int(query_emb.shape[1]), rows, res.seconds)
