"""The world must be learnable but not trivial: clicks follow taste x item factors (so a representation
that captures the factors helps a CTR model, most on rare items), and views of one item resemble each
other more than other items of the category do, without being copies."""

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmrep.synth.catalog import affinity
from mmrep.synth.records import WorldRecords
from mmrep.synth.world import WorldConfig
from synth_helpers import SPLITS, ctr_table, read_products, read_triplets


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    r = pd.Series(s).rank().to_numpy()
    n1 = y.sum()
    n0 = len(y) - n1
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_click_rate_rises_with_taste_factor_affinity(tiny_world):
    world, summary = tiny_world
    w = WorldRecords(WorldConfig(**summary["config"]))
    users = pd.read_csv(world / "users.csv", keep_default_na=False)
    # users.csv holds the same tastes the log was generated from
    taste = json.loads(users.taste[7])
    assert np.allclose(taste["colour_pref"], w.users.colour_pref[7], atol=1e-4)
    d = ctr_table(world)
    u = d.user.str[1:].astype(int).to_numpy()
    i = d.item.str[1:].astype(int).to_numpy()
    aff = affinity(w.users, w.items, u, i)
    bins = pd.qcut(aff, 5, labels=False)
    rates = d.y.groupby(bins).mean().to_numpy()
    assert (np.diff(rates) > 0).all(), rates
    assert rates[-1] - rates[0] > 0.2
    assert _auc(d.y.to_numpy(), aff) > 0.7
    assert rates[-1] < 0.9  # noisy, not deterministic


def _fit_ctr(train: pd.DataFrame, test: pd.DataFrame, item_feats: torch.Tensor | None, n_users: int,
             n_items: int, epochs: int = 8, dim: int = 8) -> np.ndarray:
    """Logistic matrix factorisation: user . item (+ biases); items by id (item_feats None) or by the sum
    of their factor embeddings (item_feats: (n_items, F) indices). Returns test logits."""
    torch.manual_seed(0)
    n_rows = n_items if item_feats is None else int(item_feats.max()) + 1
    user, user_b = torch.nn.Embedding(n_users, dim), torch.nn.Embedding(n_users, 1)
    emb, emb_b = torch.nn.Embedding(n_rows, dim), torch.nn.Embedding(n_rows, 1)
    mods = (user, user_b, emb, emb_b)
    for m in mods:
        torch.nn.init.normal_(m.weight, std=0.01)

    def logits(u, i):
        if item_feats is None:
            e, b = emb(i), emb_b(i).squeeze(-1)
        else:
            e, b = emb(item_feats[i]).sum(1), emb_b(item_feats[i]).sum((1, 2))
        return (user(u) * e).sum(1) + user_b(u).squeeze(-1) + b

    opt = torch.optim.Adam([p for m in mods for p in m.parameters()], lr=0.02)
    u, i = torch.tensor(train.u.to_numpy()), torch.tensor(train.i.to_numpy())
    y = torch.tensor(train.y.to_numpy(), dtype=torch.float32)
    for _ in range(epochs):
        perm = torch.randperm(len(u))
        for b in range(0, len(u), 1024):
            ix = perm[b:b + 1024]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(u[ix], i[ix]), y[ix])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return logits(torch.tensor(test.u.to_numpy()), torch.tensor(test.i.to_numpy())).numpy()


@pytest.mark.slow
def test_item_factors_beat_item_ids_for_ctr_on_rare_items(tiny_world):
    world, summary = tiny_world
    torch.set_num_threads(1)
    d = ctr_table(world)
    factors = pd.read_csv(world / "item_factors.csv", keep_default_na=False)
    d["u"] = d.user.str[1:].astype(int)
    d["i"] = d.item.str[1:].astype(int)
    cols, offset = [], 0
    for c in ("category", "colour", "pattern", "brand", "material", "style", "price_tier"):
        codes = factors[c].astype("category").cat.codes.to_numpy()
        cols.append(codes + offset)
        offset += codes.max() + 1
    feats = torch.tensor(np.stack(cols, 1), dtype=torch.long)
    train, test = d[d.train], d[~d.train]
    n_users, n_items = summary["config"]["n_users"], len(factors)
    by_id = _fit_ctr(train, test, None, n_users, n_items)
    by_factor = _fit_ctr(train, test, feats, n_users, n_items)
    seen = np.bincount(train.i, minlength=n_items)
    rare = seen[test.i] <= np.quantile(seen, 0.3)
    y = test.y.to_numpy()
    assert rare.sum() > 300 and y[rare].sum() > 50
    auc_id, auc_factor = _auc(y, by_id), _auc(y, by_factor)
    rare_id, rare_factor = _auc(y[rare], by_id[rare]), _auc(y[rare], by_factor[rare])
    assert auc_factor > auc_id + 0.01, (auc_id, auc_factor)
    assert rare_factor > rare_id + 0.04, (rare_id, rare_factor)
    assert rare_id > 0.5  # ids still carry something (user bias, popularity)


def _pixels(b: bytes) -> np.ndarray:
    """A deliberately simple feature: the centre half of the image at 8x8 RGB."""
    img = Image.open(io.BytesIO(b)).convert("RGB")
    s = img.size[0]
    img = img.crop((s // 4, s // 4, 3 * s // 4, 3 * s // 4)).resize((8, 8), Image.BILINEAR)
    return np.asarray(img, np.float32).ravel() / 255


def test_views_of_an_item_are_closer_than_other_items_of_its_category(tiny_world):
    world, _ = tiny_world
    by_cat: dict[str, list] = {}
    for s in SPLITS:
        for p in read_products(world, s):
            if len(p.images) >= 2:
                by_cat.setdefault(p.category[1], []).append([_pixels(b) for b in p.images[:2]])
    same, other = [], []
    for views in by_cat.values():
        for a in range(len(views)):
            same.append(np.linalg.norm(views[a][0] - views[a][1]))
            other += [np.linalg.norm(views[a][0] - views[b][1]) for b in range(len(views)) if b != a]
    same, other = np.array(same), np.array(other)
    assert len(same) > 200
    assert same.mean() < 0.9 * other.mean(), (same.mean(), other.mean())
    assert same.min() > 0.1  # never a copy: views differ in placement, background, occlusion
    # non-trivial: a random same-category item is often closer than the item's own second view
    p_closer = (same[:, None] < np.random.default_rng(0).choice(other, (1, 2000))).mean()
    assert 0.55 < p_closer < 0.9, p_closer


def test_query_photos_resemble_their_purchase_more_than_the_skipped_items(tiny_world):
    world, _ = tiny_world
    wins = []
    for s in SPLITS:
        for t in read_triplets(world, s):
            if not (t.query.has_image and t.positive.images):
                continue
            q = _pixels(t.query.images[0])
            d_pos = min(np.linalg.norm(q - _pixels(b)) for b in t.positive.images)
            wins += [d_pos < min(np.linalg.norm(q - _pixels(b)) for b in n.images) for n in t.negatives if n.images]
    assert len(wins) > 500
    assert 0.6 < np.mean(wins) < 0.95, np.mean(wins)  # findable, but a user photo is not a catalogue copy
