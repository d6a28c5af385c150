"""Click-model metrics: AUC (ties count one half), GAUC (per-user AUC weighted by impressions), log-loss."""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties = 0.5; nan if one class."""
    labels = np.asarray(labels).astype(bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    # Mann-Whitney U: sum of positive ranks minus the ranks positives would have among themselves
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values share the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends, averaged
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def gauc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Impression-weighted mean of per-group (user) AUC; groups with one class are skipped."""
    groups = np.asarray(groups).reshape(-1)
    labels = np.asarray(labels).astype(bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1, len(order)]
    total, weight = 0.0, 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        rows = order[a:b]
        y = labels[rows]
        if y.all() or not y.any():
            continue
        total += auc(y, scores[rows]) * len(rows)
        weight += len(rows)
    return total / weight if weight else float("nan")


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1-eps])."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())
