"""Click-model metrics: AUC (ties count one half), GAUC (per-user AUC weighted by impressions), log-loss."""

from __future__ import annotations

import numpy as np

# sklearn loads inside the functions: `mmrep.application.ctr` (and the config sections it holds) stays light


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties = 0.5 (sklearn's ROC AUC); nan if one class."""
    labels = np.asarray(labels).astype(bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.all() or not labels.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


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
    """Mean binary cross-entropy (sklearn's log_loss) of probabilities clipped to [eps, 1-eps]."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1 - eps)
    from sklearn.metrics import log_loss as sklearn_log_loss

    return float(sklearn_log_loss(y, p, labels=[0.0, 1.0]))
