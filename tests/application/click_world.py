"""A small latent-factor click world for the application tests: users, items, exposures and clicks."""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_world(seed: int = 0, n_users: int = 200, n_items: int = 600, n_cats: int = 8, steps: int = 40,
               per_step: int = 5) -> dict:
    """Items belong to latent categories and launch over time; clicks follow user-category affinity.

    Returns the interaction log (exposure + click rows), item ids, the true item factors `(N, C)`
    and item categories; items launched late are cold in the later (test) period.
    """
    rng = np.random.default_rng(seed)
    cats = rng.integers(0, n_cats, n_items)
    factors = np.eye(n_cats)[cats] + 0.15 * rng.normal(size=(n_items, n_cats))
    launch = rng.integers(0, steps, n_items)
    launch[: n_items // 10] = 0  # a catalogue exists at the start
    prefs = rng.normal(size=(n_users, n_cats)) * 1.5
    bias = rng.normal(size=n_users) * 0.3 - 1.5
    item_ids = [f"i{j}" for j in range(n_items)]
    rows = []
    for t in range(steps):
        live = np.flatnonzero(launch <= t)
        # newer items are shown more (as in a real catalogue with fresh stock)
        w = np.exp(-(t - launch[live]) / 8.0)
        w /= w.sum()
        for u in range(n_users):
            shown = rng.choice(live, size=min(per_step, len(live)), replace=False, p=w)
            logit = (factors[shown] @ prefs[u]) + bias[u]
            clicked = rng.random(len(shown)) < 1 / (1 + np.exp(-logit))
            for j, c in zip(shown, clicked):
                rows.append((f"u{u}", item_ids[j], t * 10, "exposure", ""))
                if c:
                    rows.append((f"u{u}", item_ids[j], t * 10 + 1, "click", ""))
    log = pd.DataFrame(rows, columns=["user", "item", "time", "event", "query"])
    return {"log": log, "ids": item_ids, "factors": factors.astype(np.float32), "cats": cats}


def noisy_embeddings(world: dict, noise: float, seed: int = 0, dim: int = 32) -> np.ndarray:
    """Item factors through a random projection plus noise, L2-normalised: a representation of given quality."""
    rng = np.random.default_rng(seed)
    f = world["factors"]
    proj = rng.normal(size=(f.shape[1], dim)) / np.sqrt(f.shape[1])
    e = f @ proj + noise * rng.normal(size=(len(f), dim)) / np.sqrt(dim) * np.linalg.norm(f @ proj, axis=1).mean()
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
