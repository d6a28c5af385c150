"""Retrieval and classification metrics: pure functions (numpy / torch in, numbers out).

Ranking rule (used everywhere in mmrep): gallery items are ordered by score, highest first; ties are
broken by the lower gallery index. So the rank of item g for a query is
    rank(g) = #{j : s_j > s_g} + #{j : s_j == s_g and j < g}          (0-based)
Recall@k follows CLIP_benchmark's retrieval recall: a query counts as a hit when *any* of its
ground-truth items is in the top k (`(nb_true_positive > 0)`), averaged over queries. MRR uses the
first relevant rank; nDCG@k uses binary relevance over all positives, ideal DCG = min(|P|, k) hits.
Classification: accuracy and macro precision / recall / F1 over the union of labels seen in y_true
and y_pred (sklearn's default label set), a class with no predictions has precision 0
(sklearn's `zero_division=0`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:  # imported where used: image search (numpy + faiss) runs without torch
    import torch

DEFAULT_KS = (1, 5, 10)


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    import torch

    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def positive_ranks(scores: np.ndarray | torch.Tensor, positives: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """0-based rank of every positive of every query under the ranking rule.

    scores: (Q, G) similarities; positives[q]: gallery indices relevant to query q (non-empty).
    Returns one int64 array per query, ranks in the order of `positives[q]`.
    """
    import torch

    s = _as_tensor(scores)
    if s.ndim != 2 or s.shape[0] != len(positives):
        raise ValueError(f"scores must be (Q, G) with Q == len(positives), got {tuple(s.shape)} and {len(positives)}")
    nq, g = s.shape
    lengths = [len(p) for p in positives]
    if nq and min(lengths) == 0:
        raise ValueError(f"query {lengths.index(0)} has no positives")
    width = max(lengths, default=0)
    pidx = torch.zeros(nq, width, dtype=torch.long)
    for q, pos in enumerate(positives):
        pidx[q, : len(pos)] = torch.as_tensor(list(pos), dtype=torch.long)
    if pidx.numel() and (pidx.min() < 0 or pidx.max() >= g):
        raise ValueError("positive index outside the gallery")
    cols = torch.arange(g)
    ranks = torch.zeros(nq, width, dtype=torch.long)
    for j in range(width):  # one positive slot at a time keeps memory at (Q, G)
        pj = pidx[:, j : j + 1]
        sp = s.gather(1, pj)
        ranks[:, j] = ((s > sp) | ((s == sp) & (cols[None, :] < pj))).sum(dim=1)
    return [ranks[q, :n].numpy() for q, n in enumerate(lengths)]


def first_relevant_ranks(
    query_emb: np.ndarray | torch.Tensor,
    gallery_emb: np.ndarray | torch.Tensor,
    positives: Sequence[Sequence[int]],
    chunk: int = 65536,
) -> np.ndarray:
    """(Q,) rank of the best-ranked positive of each query, scores = query_emb @ gallery_emb.T.

    Exact under the ranking rule, memory O(Q * chunk): the best positive is the highest-scoring one
    (lowest index on ties); its rank counts the gallery items that beat it, computed chunk by chunk.
    """
    import torch

    qe = _as_tensor(query_emb).float()
    ge = _as_tensor(gallery_emb).float()
    nq, g = qe.shape[0], ge.shape[0]
    if len(positives) != nq:
        raise ValueError("one positive list per query is needed")
    pq = np.concatenate([np.full(len(p), q, dtype=np.int64) for q, p in enumerate(positives)]) if nq else np.zeros(0, np.int64)
    pg = np.concatenate([np.asarray(list(p), dtype=np.int64) for p in positives]) if nq else np.zeros(0, np.int64)
    if any(len(p) == 0 for p in positives):
        raise ValueError("every query needs at least one positive")
    if pg.size and (pg.min() < 0 or pg.max() >= g):
        raise ValueError("positive index outside the gallery")
    # Pass 1: the positives' scores, taken from the same blocked matmul as pass 2 so that equal
    # vectors compare equal (a separately computed dot product can differ in the last bit).
    ps = np.empty(pg.size, dtype=np.float32)
    for start in range(0, g, chunk):
        block = (qe @ ge[start : start + chunk].T).numpy()
        sel = np.nonzero((pg >= start) & (pg < start + block.shape[1]))[0]
        ps[sel] = block[pq[sel], pg[sel] - start]
    order = np.lexsort((pg, -ps, pq))  # per query: highest score, then lowest index
    first = np.ones(order.size, dtype=bool)
    first[1:] = pq[order][1:] != pq[order][:-1]
    best = order[first]
    best_idx = torch.from_numpy(pg[best].copy())
    best_score = torch.from_numpy(ps[best].copy())
    # Pass 2: count the gallery items that beat each query's best positive.
    ranks = torch.zeros(nq, dtype=torch.long)
    for start in range(0, g, chunk):
        block = qe @ ge[start : start + chunk].T
        cols = torch.arange(start, start + block.shape[1])
        beats = (block > best_score[:, None]) | ((block == best_score[:, None]) & (cols[None, :] < best_idx[:, None]))
        ranks += beats.sum(dim=1)
    return ranks.numpy()


def retrieval_from_ranks(ranks: Sequence[np.ndarray], ks: Iterable[int] = DEFAULT_KS, ndcg_k: int = 10) -> dict[str, float]:
    """R@k, MRR and nDCG@ndcg_k from the positives' ranks of each query (see `positive_ranks`)."""
    ks = list(ks)
    if not ranks:
        raise ValueError("no queries to score")
    first = np.array([int(np.min(r)) for r in ranks])
    out = {f"R@{k}": float(np.mean(first < k)) for k in ks}
    out["MRR"] = float(np.mean(1.0 / (first + 1)))
    disc = 1.0 / np.log2(np.arange(ndcg_k) + 2.0)
    nd = []
    for r in ranks:
        r = np.asarray(r)
        dcg = float(disc[r[r < ndcg_k]].sum())
        idcg = float(disc[: min(len(r), ndcg_k)].sum())
        nd.append(dcg / idcg)
    out[f"nDCG@{ndcg_k}"] = float(np.mean(nd))
    out["queries"] = len(ranks)
    return out


def retrieval_metrics(
    scores: np.ndarray | torch.Tensor, positives: Sequence[Sequence[int]], ks: Iterable[int] = DEFAULT_KS, ndcg_k: int = 10
) -> dict[str, float]:
    """R@k (any positive in top k), MRR, nDCG@k for a (Q, G) score matrix."""
    return retrieval_from_ranks(positive_ranks(scores, positives), ks, ndcg_k)


def recall_from_topk(topk_idx: np.ndarray, positives: Sequence[Sequence[int]], ks: Iterable[int]) -> dict[str, float]:
    """R@k from ranked result lists: topk_idx (Q, K) gallery indices, best first (-1 = no result)."""
    topk_idx = np.asarray(topk_idx)
    out = {}
    none = np.iinfo(np.int64).max
    hit_rank = np.full(len(positives), none)
    # Vectorised over (query, positive) pairs, a batch at a time: rank of each pair's item in its
    # query's list, then the best rank per query (a per-query np.isin loop cost ~25 us a query).
    lens = np.fromiter((len(p) for p in positives), np.int64, len(positives))
    qs = np.repeat(np.arange(len(positives)), lens)
    items = np.fromiter((i for p in positives for i in p), np.int64, int(lens.sum()))
    step = max(1, 4_000_000 // max(1, topk_idx.shape[1]))
    for a in range(0, qs.size, step):
        eq = topk_idx[qs[a : a + step]] == items[a : a + step, None]
        rank = np.where(eq.any(axis=1), eq.argmax(axis=1), none)
        np.minimum.at(hit_rank, qs[a : a + step], rank)
    for k in ks:
        if k > topk_idx.shape[1]:
            raise ValueError(f"R@{k} needs at least {k} results per query, got {topk_idx.shape[1]}")
        out[f"R@{k}"] = float(np.mean(hit_rank < k))
    return out


def topk_sorted(scores: torch.Tensor, k: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of (Q, G) `scores` under the ranking rule -> (values (Q,k), indices + offset)."""
    import torch

    k = min(k, scores.shape[1])
    # A stable sort of -scores keeps lower indices first among equal scores.
    vals, idx = torch.sort(scores, dim=1, descending=True, stable=True)
    return vals[:, :k], idx[:, :k] + offset


def merge_topk(
    vals_a: np.ndarray, idx_a: np.ndarray, vals_b: np.ndarray, idx_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two (Q, *) ranked lists into the top k under the ranking rule (-1 index = empty slot)."""
    vals = np.concatenate([vals_a, vals_b], axis=1)
    idx = np.concatenate([idx_a, idx_b], axis=1)
    # Empty slots sort last: score -inf and a huge index.
    key_idx = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    key_val = np.where(idx < 0, -np.inf, vals)
    order = np.lexsort((key_idx, -key_val), axis=1)[:, :k]
    return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)


def classification_metrics(y_true: Sequence, y_pred: Sequence) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 (labels = union of y_true and y_pred), and the accuracy of
    always predicting the most frequent true label (`majority_accuracy`: the bar a classifier must clear)."""
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    if not len(y_true):
        raise ValueError("no samples to score")
    yt = np.asarray([str(v) for v in y_true])
    yp = np.asarray([str(v) for v in y_pred])
    labels = np.unique(np.concatenate([yt, yp]))
    ps, rs, fs = [], [], []
    for c in labels:
        tp = float(np.sum((yp == c) & (yt == c)))
        pred = float(np.sum(yp == c))
        true = float(np.sum(yt == c))
        p = tp / pred if pred else 0.0
        r = tp / true if true else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        ps.append(p)
        rs.append(r)
        fs.append(f)
    return {
        "accuracy": float(np.mean(yt == yp)),
        "macro_precision": float(np.mean(ps)),
        "macro_recall": float(np.mean(rs)),
        "macro_f1": float(np.mean(fs)),
        "majority_accuracy": float(np.unique(yt, return_counts=True)[1].max() / len(yt)),
        "samples": int(len(yt)),
        "classes": int(len(labels)),
    }


def argmax_labels(item_emb: np.ndarray | torch.Tensor, label_emb: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N,) index of the most similar label embedding for each item (lower index on ties)."""
    import torch

    s = _as_tensor(item_emb).float() @ _as_tensor(label_emb).float().T
    # torch.argmax returns the first maximal index, matching the tie rule.
    return torch.argmax(s, dim=1).numpy()
