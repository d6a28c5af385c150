import itertools

import numpy as np
import pytest

from mmrep.application.metrics import auc, gauc, log_loss


def brute_auc(y, s):
    pos = [b for a, b in zip(y, s) if a]
    neg = [b for a, b in zip(y, s) if not a]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_gauc(g, y, s):
    num = den = 0.0
    for u in set(g):
        rows = [i for i in range(len(g)) if g[i] == u]
        yy = [y[i] for i in rows]
        if all(yy) or not any(yy):
            continue
        num += brute_auc(yy, [s[i] for i in rows]) * len(rows)
        den += len(rows)
    return num / den


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_counting_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(60) < 0.4
    s = rng.integers(0, 6, 60).astype(float)  # many ties
    assert auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_auc_hand_values():
    assert auc([1, 0], [0.9, 0.1]) == 1.0
    assert auc([1, 0], [0.1, 0.9]) == 0.0
    assert auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert np.isnan(auc([1, 1], [0.1, 0.2]))


@pytest.mark.parametrize("seed", range(3))
def test_gauc_matches_brute_force_and_skips_one_class_users(seed):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 8, 120)
    y = rng.random(120) < 0.3
    y[g == 7] = False  # a user with only negatives is skipped
    s = np.round(rng.random(120), 1)
    assert gauc(g, y, s) == pytest.approx(brute_gauc(list(g), list(y), list(s)), abs=1e-12)
    # skipping matters: giving the one-class user weight would change nothing in AUC but in weights
    assert gauc(g[g != 7], y[g != 7], s[g != 7]) == pytest.approx(gauc(g, y, s))


def test_gauc_weights_by_impressions():
    g = ["a", "a", "b", "b", "b", "b"]
    y = [1, 0, 1, 0, 1, 0]
    s = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]  # user a AUC 1 (2 imps), user b AUC 0 (4 imps)
    assert gauc(g, y, s) == pytest.approx(2 / 6)


def test_log_loss():
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))
    assert log_loss([1], [1.0]) < 1e-6
