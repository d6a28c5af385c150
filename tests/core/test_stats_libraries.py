"""Cross-check: the statistics mmrep takes from scipy.stats / sklearn.metrics equal the textbook formulas,
written out by hand here (and only here): Pearson, Spearman (average ranks), least-squares slope,
Fisher-z interval, percentile bootstrap, AUC (Mann-Whitney U with ties), log-loss."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from mmrep.application.metrics import auc, log_loss
from mmrep.evaluation import exchange_rate as er


def hand_ranks(x):
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(x)]
    r = np.empty(len(x))
    r[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return r


def hand_pearson(x, y):
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx * dy).sum() / math.sqrt((dx * dx).sum() * (dy * dy).sum()))


def hand_fisher(r, n, level):
    half = NormalDist().inv_cdf(0.5 + level / 2) / math.sqrt(n - 3)
    return math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)


def hand_bootstrap(x, y, stat, n_boot, level, seed):
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0:
            vals.append(stat(x[idx], y[idx]))
    return np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])


def hand_auc(y, s):
    r = hand_ranks(s)
    pos, neg = int(y.sum()), int((~y).sum())
    return (r[y].sum() - pos * (pos + 1) / 2) / (pos * neg)


@pytest.mark.parametrize("seed", range(3))
def test_library_statistics_equal_the_hand_formulas(seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=30), 1)  # rounded: ties for the rank statistics
    y = 0.6 * x + rng.normal(size=30)
    assert er.pearson(x, y) == pytest.approx(hand_pearson(x, y), abs=1e-12)
    assert er.spearman(x, y) == pytest.approx(hand_pearson(hand_ranks(x), hand_ranks(y)), abs=1e-12)
    dx = x - x.mean()
    b = float((dx * (y - y.mean())).sum() / (dx * dx).sum())
    assert er.slope(x, y) == pytest.approx((b, y.mean() - b * x.mean()), abs=1e-12)
    assert er.fisher_ci(x, y, 0.9) == pytest.approx(hand_fisher(hand_pearson(x, y), len(x), 0.9), abs=1e-9)
    # bootstrap: different resampling streams, so the intervals agree to Monte Carlo precision
    lib = er.bootstrap_ci(x, y, er._pearson_along, n_boot=4000, level=0.9, seed=seed)
    hand = hand_bootstrap(x, y, hand_pearson, 4000, 0.9, seed + 100)
    assert lib == pytest.approx(tuple(hand), abs=0.03)
    lib_rho = er.bootstrap_ci(x, y, er._spearman_along, n_boot=2000, level=0.9, seed=seed)
    hand_rho = hand_bootstrap(x, y, lambda a, c: hand_pearson(hand_ranks(a), hand_ranks(c)), 2000, 0.9, seed + 100)
    assert lib_rho == pytest.approx(tuple(hand_rho), abs=0.04)

    labels = rng.random(200) < 0.3
    scores = rng.integers(0, 8, 200).astype(float)  # many ties
    assert auc(labels, scores) == pytest.approx(hand_auc(labels, scores), abs=1e-12)
    p = np.clip(rng.random(200), 1e-9, 1 - 1e-9)
    q = np.clip(p, 1e-7, 1 - 1e-7)
    assert log_loss(labels, p) == pytest.approx(float(-(labels * np.log(q) + (1 - labels) * np.log1p(-q)).mean()),
                                                abs=1e-12)


def test_degenerate_inputs_stay_nan():
    const = np.ones(5)
    assert math.isnan(er.pearson(const, np.arange(5.0))) and math.isnan(er.spearman(const, np.arange(5.0)))
    assert all(math.isnan(v) for v in er.fisher_ci(np.arange(3.0), np.arange(3.0)))  # n <= 3: no interval
    assert all(math.isnan(v) for v in er.slope(const, np.arange(5.0)))
    assert math.isnan(auc([1, 1], [0.1, 0.2]))
    # four versions: some resamples repeat one version; the interval comes from the defined ones
    lo, hi = er.bootstrap_ci(np.array([1.0, 2, 3, 4]), np.array([0.70, 0.71, 0.73, 0.72]), n_boot=500)
    assert -1 <= lo <= hi <= 1
