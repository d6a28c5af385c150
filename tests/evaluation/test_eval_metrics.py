"""Metrics equal a brute-force reference on fixtures with ties and multiple positives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmrep.evaluation import metrics


def brute_ranking(row: list[float]) -> list[int]:
    """Gallery indices best first: score descending, lower index first among equal scores."""
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def brute_retrieval(scores: np.ndarray, positives: list[list[int]], ks=(1, 5, 10), ndcg_k=10) -> dict:
    out = {f"R@{k}": 0.0 for k in ks}
    mrr = ndcg = 0.0
    for row, pos in zip(scores.tolist(), positives):
        ranking = brute_ranking(row)
        for k in ks:
            out[f"R@{k}"] += any(j in pos for j in ranking[:k])
        first = next(r for r, j in enumerate(ranking) if j in pos)
        mrr += 1 / (first + 1)
        dcg = sum(1 / math.log2(r + 2) for r, j in enumerate(ranking[:ndcg_k]) if j in pos)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(pos), ndcg_k)))
        ndcg += dcg / idcg
    n = len(positives)
    return {**{k: v / n for k, v in out.items()}, "MRR": mrr / n, f"nDCG@{ndcg_k}": ndcg / n}


def tie_fixture(seed: int, q: int = 40, g: int = 30):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(q, g)).astype(np.float32)  # 4 distinct values: ties everywhere
    positives = [sorted(rng.choice(g, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(q)]
    return scores, positives


@pytest.mark.parametrize("seed", range(5))
def test_retrieval_equals_brute_force_with_ties(seed):
    scores, positives = tie_fixture(seed)
    got = metrics.retrieval_metrics(scores, positives)
    want = brute_retrieval(scores, positives)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k
    assert got["queries"] == len(positives)


def test_tie_rule_by_hand():
    # positive at index 2 ties with indices 0 and 3: only index 0 (lower) ranks above it.
    scores = np.array([[1.0, 0.0, 1.0, 1.0, 0.5]])
    assert metrics.positive_ranks(scores, [[2]])[0].tolist() == [1]
    assert metrics.retrieval_metrics(scores, [[2]], ks=(1, 2))["R@1"] == 0.0
    assert metrics.retrieval_metrics(scores, [[2]], ks=(1, 2))["R@2"] == 1.0
    # any of several positives counts (CLIP_benchmark: nb_true_positive > 0)
    assert metrics.retrieval_metrics(scores, [[4, 3]], ks=(1, 3))["R@3"] == 1.0


def test_first_relevant_ranks_chunked_matches_brute_force():
    rng = np.random.default_rng(0)
    g = rng.integers(-2, 3, size=(200, 4)).astype(np.float32)  # integer vectors: exact, many ties
    q = rng.integers(-2, 3, size=(25, 4)).astype(np.float32)
    positives = [sorted(rng.choice(200, size=rng.integers(1, 5), replace=False).tolist()) for _ in range(25)]
    scores = q @ g.T
    want = [min(brute_ranking(row).index(p) for p in pos) for row, pos in zip(scores.tolist(), positives)]
    for chunk in (7, 64, 1000):
        assert metrics.first_relevant_ranks(q, g, positives, chunk=chunk).tolist() == want


def test_merge_topk_and_recall_from_topk_match_full_sort():
    scores, positives = tie_fixture(3, q=20, g=50)
    k = 10
    best_v = np.full((20, k), -np.inf, np.float32)
    best_i = np.full((20, k), -1, np.int64)
    for s in range(0, 50, 13):  # uneven chunks
        v, i = metrics.topk_sorted(torch.from_numpy(scores[:, s : s + 13]), k, offset=s)
        best_v, best_i = metrics.merge_topk(best_v, best_i, v.numpy(), i.numpy(), k)
    full = np.array([brute_ranking(r)[:k] for r in scores.tolist()])
    np.testing.assert_array_equal(best_i, full)
    got = metrics.recall_from_topk(best_i, positives, (1, 5, 10))
    want = brute_retrieval(scores, positives)
    for key in ("R@1", "R@5", "R@10"):
        assert got[key] == pytest.approx(want[key])


def brute_classification(y_true, y_pred):
    labels = sorted(set(y_true) | set(y_pred))
    ps, rs, fs = [], [], []
    for c in labels:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        npred = sum(p == c for p in y_pred)
        ntrue = sum(t == c for t in y_true)
        p = tp / npred if npred else 0.0
        r = tp / ntrue if ntrue else 0.0
        ps.append(p)
        rs.append(r)
        fs.append(2 * p * r / (p + r) if p + r else 0.0)
    acc = sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)
    return acc, sum(ps) / len(ps), sum(rs) / len(rs), sum(fs) / len(fs)


def test_classification_metrics_equal_brute_force():
    rng = np.random.default_rng(1)
    y_true = rng.choice(["a", "b", "c", "d"], size=60).tolist()
    y_pred = rng.choice(["a", "b", "c", "e"], size=60).tolist()  # "d" never predicted, "e" never true
    got = metrics.classification_metrics(y_true, y_pred)
    acc, p, r, f = brute_classification(y_true, y_pred)
    assert got["accuracy"] == pytest.approx(acc)
    assert got["macro_precision"] == pytest.approx(p)
    assert got["macro_recall"] == pytest.approx(r)
    assert got["macro_f1"] == pytest.approx(f)
    assert got["classes"] == 5
    assert got["majority_accuracy"] == pytest.approx(max(y_true.count(c) for c in "abcd") / 60)
    # a perfect prediction scores 1 everywhere
    perfect = metrics.classification_metrics(y_true, y_true)
    assert perfect["accuracy"] == perfect["macro_f1"] == 1.0


def test_argmax_labels_breaks_ties_by_lower_index():
    items = np.array([[1.0, 0.0], [0.0, 1.0]])
    labels = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    assert metrics.argmax_labels(items, labels).tolist() == [1, 0]


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        metrics.positive_ranks(np.zeros((2, 3)), [[0]])
    with pytest.raises(ValueError):
        metrics.positive_ranks(np.zeros((1, 3)), [[]])
    with pytest.raises(ValueError):
        metrics.classification_metrics([], [])
