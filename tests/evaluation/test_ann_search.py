"""Approximate search: IVF-PQ built from a stream, nprobe tuned to a target recall vs exact search."""

from __future__ import annotations

import numpy as np
import pytest

from mmrep.errors import MmrepError
from mmrep.evaluation.ann_search import AnnConfig, auto_nlist, build_ivfpq, recall_vs_exact, tune_nprobe
from mmrep.evaluation.image_search import RunningTopK, chunked_search, SearchConfig


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((64, dim)).astype(np.float32)
    x = centers[rng.integers(0, 64, n)] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_recall_vs_exact_counts_shared_items():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 9, 1], [7, 8, -1]])
    assert recall_vs_exact(found, exact, 3) == pytest.approx(2 / 6)
    assert recall_vs_exact(exact, exact, 2) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("refine", ["SQ8", "none"])
def test_streamed_ivfpq_reaches_target_recall_with_the_smallest_nprobe(refine):
    g = clustered(20_000, 32, 0)
    rng = np.random.default_rng(1)
    q = g[rng.choice(len(g), 200, replace=False)] + 0.05 * rng.standard_normal((200, 32)).astype(np.float32)
    top = RunningTopK(q, 10)
    cfg = AnnConfig(nlist=64, pq_m=8, refine=refine, target_recall=0.9 if refine == "SQ8" else 0.5, train_size=10_000)
    ann = build_ivfpq((g[s : s + 3000] for s in range(0, len(g), 3000)), 32, len(g), cfg, on_chunk=top.add)
    assert ann.count == len(g) and ann.nlist == 64
    # the ground truth accumulated during the build equals a separate exact search
    np.testing.assert_array_equal(top.indices, chunked_search(q, g, SearchConfig(k=10)).indices)
    cal, held = slice(0, 100), slice(100, 200)
    tuning = tune_nprobe(ann, q[cal], top.indices[cal], 10, cfg.target_recall, k_factor=cfg.k_factor)
    assert tuning.reached and tuning.curve[-1]["nprobe"] == tuning.nprobe
    assert all(c["recall"] < cfg.target_recall for c in tuning.curve[:-1])  # smaller settings miss the target
    assert tuning.k_factor == (cfg.k_factor if refine == "SQ8" else 1)
    _, found = ann.search(q[held], 10)
    assert recall_vs_exact(found, top.indices[held], 10) > cfg.target_recall - 0.1  # held-out queries
    per_item = cfg.pq_m + 8 + (32 if refine == "SQ8" else 0)
    assert ann.code_bytes() == per_item * len(g)
    if refine == "SQ8":  # re-ranking with 8-bit codes is close to exact at full nprobe
        ann.set_nprobe(64)
        assert recall_vs_exact(ann.search(q, 10)[1], top.indices, 10) > 0.93


def test_tuning_raises_the_rerank_depth_when_recall_saturates():
    g = clustered(20_000, 32, 3)
    q = clustered(100, 32, 4)
    top = RunningTopK(q, 10)
    ann = build_ivfpq([g], 32, len(g), AnnConfig(nlist=16, pq_m=4, train_size=10_000), on_chunk=top.add)
    tuning = tune_nprobe(ann, q, top.indices, 10, 0.85, k_factor=1, max_k_factor=64)
    assert tuning.reached and tuning.k_factor > 1  # 4-byte PQ alone cannot reach 85%
    at_k1 = [c["recall"] for c in tuning.curve if c["k_factor"] == 1]
    assert len(at_k1) == 5 and max(at_k1) < 0.85  # every nprobe up to nlist was tried first
    # an unreachable target: the cheapest setting within 0.5 points of the best recall, not the largest
    tuning = tune_nprobe(ann, q, top.indices, 10, 1.01, k_factor=1, max_k_factor=8)
    best = max(c["recall"] for c in tuning.curve)
    chosen = next(c for c in tuning.curve if (c["nprobe"], c["k_factor"]) == (tuning.nprobe, tuning.k_factor))
    assert not tuning.reached and chosen["recall"] >= best - 0.005
    assert all(c["nprobe"] >= tuning.nprobe for c in tuning.curve if c["recall"] >= best - 0.005)
    assert ann.ivf.nprobe == tuning.nprobe and ann.index.k_factor == tuning.k_factor


def test_small_gallery_and_bad_settings():
    g = clustered(500, 16, 2)
    ann = build_ivfpq([g], 16, 500, AnnConfig(nlist=16, pq_m=4, train_size=10_000))  # trains on what there is
    assert ann.count == 500
    with pytest.raises(MmrepError, match="must divide"):
        build_ivfpq([g], 16, 500, AnnConfig(pq_m=5))
    with pytest.raises(MmrepError, match="too few"):
        build_ivfpq([g[:10]], 16, 10, AnnConfig(nlist=16, pq_m=4))
    with pytest.raises(MmrepError, match="target_recall"):
        AnnConfig(target_recall=1.5)
    assert auto_nlist(10_000_000) == 1024 and auto_nlist(100) == 16


class CountingRows:
    """ExportRows that records every row position read."""

    def __init__(self, rows) -> None:
        self.rows, self.read = rows, []

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, positions):
        self.read.append(np.asarray(positions).copy())
        return self.rows.take(positions)


def test_exact_reranking_reads_the_export_and_matches_exact_search(tmp_path):
    from mmrep.evaluation.ann_search import build_from_export, rerank_exact
    from mmrep.export.embeddings import save_embedding_parts

    g = clustered(3_000, 32, 5)
    save_embedding_parts(tmp_path / "g", ((["i%d" % j for j in range(s, s + 700)], g[s : s + 700])
                                          for s in range(0, 2_800, 700)))  # 4 parts: candidates span parts
    q = clustered(40, 32, 6)
    top = RunningTopK(q, 10)
    cfg = AnnConfig(nlist=16, pq_m=4, refine="exact", k_factor=2, train_size=1_000)
    ann = build_from_export([tmp_path / "g"], cfg, on_chunk=top.add)
    assert ann.count == 2_800 and ann.refines and ann.code_bytes() == (4 + 8) * 2_800  # no re-ranking codes
    np.testing.assert_array_equal(top.indices, chunked_search(q, g[:2_800], SearchConfig(k=10)).indices)
    # candidates covering the whole gallery: the re-ranked top-10 is the exact top-10, ids and order
    ann.set_nprobe(16)
    ann.set_k_factor(280)
    scores, found = ann.search(q, 10)
    np.testing.assert_array_equal(found, top.indices)
    np.testing.assert_allclose(scores, top.scores, rtol=1e-5, atol=1e-6)
    # only the candidate rows are read
    ann.vectors = CountingRows(ann.vectors)
    ann.set_nprobe(2)
    ann.set_k_factor(3)
    _, cand = ann.ivf.search(q, 30)
    _, found = ann.search(q, 10)
    read = np.concatenate(ann.vectors.read)
    assert set(read.tolist()) == set(cand[cand >= 0].tolist()) and read.size < 2_800 // 2
    assert set(found[found >= 0].tolist()) <= set(cand[cand >= 0].tolist())
    # ties follow the ranking rule (lower id first), and a missing candidate (-1) stays out
    dup = np.repeat(g[:1], 3, axis=0)
    s, i = rerank_exact(g[:1], np.array([[2, -1, 0, 1]]), CountingRows(_Rows(dup)), 4)
    assert i.tolist() == [[0, 1, 2, -1]] and np.isneginf(s[0, 3])


class _Rows:
    def __init__(self, a) -> None:
        self.a = a

    def __len__(self) -> int:
        return len(self.a)

    def take(self, rows):
        return self.a[rows]


def test_exact_reranking_needs_the_vectors():
    with pytest.raises(MmrepError, match="refine=exact"):
        build_ivfpq([clustered(500, 16, 2)], 16, 500, AnnConfig(nlist=16, pq_m=4, refine="exact"))
