"""User behaviour: browse sessions (exposures, clicks, purchases), search queries with their purchased
item and exposed-but-not-bought negatives, and co-click / co-purchase item pairs.

Click model: P(click | u, i) = sigmoid(bias + a * affinity(u, i) + p * popularity_i + noise). The
affinity (taste x item factors) is visible in an item's images and text, the popularity is not, so an
id embedding wins on frequent items and a content representation wins on rare ones.
Every event of one session carries the session's time, which is unique per session: an exposure is
clicked iff a click row with the same (user, item, time) exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmrep.synth.catalog import Items, Users, affinity, stream_rng

EXPOSURE, CLICK, PURCHASE = 0, 1, 2
HORIZON_S = 90 * 24 * 3600  # the log spans 90 days


@dataclass
class Session:
    user: int
    items: list[int]  # exposed items, distinct
    clicked: list[bool]
    purchased: list[bool]
    query: int = -1  # query index, -1 for browsing
    time: int = 0


@dataclass
class QueryPlan:
    index: int
    user: int
    split: int
    positive: int
    negatives: list[int]
    mode: str  # "text" | "image" | "text+image"
    session: Session | None = field(repr=False, default=None)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def click_prob(cfg, users: Users, items: Items, u: np.ndarray, i: np.ndarray, noise: np.ndarray) -> np.ndarray:
    logit = (cfg.click_bias + cfg.affinity_scale * affinity(users, items, u, i)
             + cfg.popularity_scale * items.popularity[i] + cfg.click_noise * noise)
    return _sigmoid(logit)


def _decide(cfg, users, items, rng, u: int, its: list[int]) -> tuple[list[bool], list[bool]]:
    """Clicks and purchases for one exposure list."""
    arr = np.asarray(its)
    p = click_prob(cfg, users, items, np.full(len(arr), u), arr, rng.normal(size=len(arr)))
    clicked = rng.random(len(arr)) < p
    bought = clicked & (rng.random(len(arr)) < cfg.purchase_rate)
    return clicked.tolist(), bought.tolist()


def browse_sessions(cfg, users: Users, items: Items) -> list[Session]:
    """Each user browses subcategories they like; exposure follows popularity (long tail)."""
    rng = stream_rng(cfg.seed, "sessions")
    n_sub = users.sub_pref.shape[1]
    weights = np.exp(cfg.exposure_popularity * items.popularity)
    by_sub = [np.flatnonzero(items.sub == s) for s in range(n_sub)]
    cdfs = [np.cumsum(weights[ix]) / weights[ix].sum() if len(ix) else None for ix in by_sub]
    counts = rng.poisson(cfg.sessions_per_user * users.activity)
    sessions = []
    for u in range(len(users)):
        pref = 0.85 * users.sub_pref[u] + 0.15 / n_sub
        subs = rng.choice(n_sub, size=int(counts[u]), p=pref / pref.sum())
        for s in subs:
            ix = by_sub[s]
            if not len(ix):
                continue
            draws = ix[np.searchsorted(cdfs[s], rng.random(2 * cfg.session_size), side="right").clip(0, len(ix) - 1)]
            shown = list(dict.fromkeys(draws.tolist()))[: cfg.session_size]
            clicked, bought = _decide(cfg, users, items, rng, u, shown)
            sessions.append(Session(u, shown, clicked, bought))
    return sessions


def plan_queries(cfg, users: Users, items: Items) -> list[QueryPlan]:
    """Search queries per item split: a user looks for an item they like; they buy it and skip the rest."""
    rng = stream_rng(cfg.seed, "queries")
    n_sub = users.sub_pref.shape[1]
    fracs = [cfg.train_frac, cfg.val_frac, 1 - cfg.train_frac - cfg.val_frac]
    per_split = [int(round(cfg.n_queries * f)) for f in fracs]
    per_split[0] = cfg.n_queries - per_split[1] - per_split[2]
    user_p = users.activity / users.activity.sum()
    mode_p = np.array([cfg.text_query_rate, cfg.image_query_rate, 1 - cfg.text_query_rate - cfg.image_query_rate])
    plans: list[QueryPlan] = []
    for split, n in enumerate(per_split):
        in_split = items.split == split
        by_sub = [np.flatnonzero(in_split & (items.sub == s)) for s in range(n_sub)]
        has = np.array([len(ix) > 0 for ix in by_sub])
        split_items = np.flatnonzero(in_split)
        if n and len(split_items) < cfg.n_negatives + 1:
            continue  # not enough items in this split to form a query with its negatives
        for _ in range(n):
            u = int(rng.choice(len(users), p=user_p))
            pref = (0.85 * users.sub_pref[u] + 0.15 / n_sub) * has
            s = int(rng.choice(n_sub, p=pref / pref.sum()))
            cands = by_sub[s]
            logits = 0.5 * items.popularity[cands] + cfg.query_affinity_scale * affinity(
                users, items, np.full(len(cands), u), cands)
            w = np.exp(logits - logits.max())
            pos = int(cands[rng.choice(len(cands), p=w / w.sum())])
            negs = _negatives(cfg, rng, items, pos, cands, split_items)
            mode = ("text", "image", "text+image")[int(rng.choice(3, p=mode_p))]
            plans.append(QueryPlan(len(plans), u, split, pos, negs, mode))
    return plans


def _negatives(cfg, rng, items: Items, pos: int, same_sub: np.ndarray, split_items: np.ndarray) -> list[int]:
    """Mostly same-subcategory items with a different colour or pattern; the rest random (same split)."""
    wrong = same_sub[(items.colour[same_sub] != items.colour[pos]) | (items.pattern[same_sub] != items.pattern[pos])]
    n_hard = min(int(round(cfg.hard_negative_rate * cfg.n_negatives)), len(wrong))
    negs = [int(x) for x in rng.choice(wrong, size=n_hard, replace=False)] if n_hard else []
    taken = set(negs) | {pos}
    while len(negs) < cfg.n_negatives:
        x = int(split_items[rng.integers(0, len(split_items))])
        if x not in taken:
            negs.append(x)
            taken.add(x)
    return negs


def query_sessions(cfg, users: Users, items: Items, plans: list[QueryPlan]) -> list[Session]:
    """The search result page of each query: the positive is clicked and bought, negatives only exposed."""
    rng = stream_rng(cfg.seed, "queries", 1)
    out = []
    for q in plans:
        shown = [q.positive] + q.negatives
        clicked, _ = _decide(cfg, users, items, rng, q.user, shown)
        clicked[0] = True
        q.session = Session(q.user, shown, clicked, [True] + [False] * len(q.negatives), query=q.index)
        out.append(q.session)
    return out


def coverage_sessions(cfg, users: Users, items: Items, sessions: list[Session]) -> list[Session]:
    """One single-item exposure for every item nobody saw, so the log covers the whole catalogue."""
    rng = stream_rng(cfg.seed, "sessions", 1)
    seen = np.zeros(len(items), bool)
    for s in sessions:
        seen[s.items] = True
    user_p = users.activity / users.activity.sum()
    out = []
    for i in np.flatnonzero(~seen):
        u = int(rng.choice(len(users), p=user_p))
        clicked, bought = _decide(cfg, users, items, rng, u, [int(i)])
        out.append(Session(u, [int(i)], clicked, bought))
    return out


def assign_times(cfg, sessions: list[Session]) -> None:
    """A distinct integer time (seconds) per session, uniform over the horizon."""
    rng = stream_rng(cfg.seed, "sessions", 2)
    times = rng.choice(max(HORIZON_S, 2 * len(sessions)), size=len(sessions), replace=False)
    for s, t in zip(sessions, times):
        s.time = int(t)


def event_table(sessions: list[Session]) -> dict[str, np.ndarray]:
    """Rows (user, item, time, event code, query index) sorted by (time, event, item)."""
    n = np.array([len(s.items) for s in sessions])
    item = np.fromiter((i for s in sessions for i in s.items), np.int64, int(n.sum()))
    clicked = np.fromiter((c for s in sessions for c in s.clicked), bool, int(n.sum()))
    bought = np.fromiter((b for s in sessions for b in s.purchased), bool, int(n.sum()))
    per_row = {k: np.repeat(np.array([getattr(s, k) for s in sessions], np.int64), n)
               for k in ("user", "time", "query")}
    parts = [(np.ones_like(clicked), EXPOSURE), (clicked, CLICK), (bought, PURCHASE)]
    arr = {k: np.concatenate([v[m] for m, _ in parts]) for k, v in per_row.items()}
    arr["item"] = np.concatenate([item[m] for m, _ in parts])
    arr["event"] = np.concatenate([np.full(int(m.sum()), code, np.int64) for m, code in parts])
    order = np.lexsort((arr["item"], arr["event"], arr["time"]))
    return {k: v[order] for k, v in arr.items()}


def item_pairs(cfg, items: Items, sessions: list[Session]) -> list[tuple[int, int, str]]:
    """Co-click pairs (clicked in one session) and co-purchase pairs (one user's successive purchases
    within `copurchase_window_days`); both items always come from the same item split."""
    pairs: set[tuple[int, int, str]] = set()
    bought: dict[int, list[tuple[int, int]]] = {}
    for s in sessions:
        clicked = [i for i, c in zip(s.items, s.clicked) if c]
        for a in range(len(clicked)):
            for b in range(a + 1, len(clicked)):
                x, y = sorted((clicked[a], clicked[b]))
                if items.split[x] == items.split[y]:
                    pairs.add((x, y, "co-click"))
        for i, b in zip(s.items, s.purchased):
            if b:
                bought.setdefault(s.user, []).append((s.time, i))
    window = cfg.copurchase_window_days * 24 * 3600
    for events in bought.values():
        events.sort()
        for (t0, a), (t1, b) in zip(events, events[1:]):
            if a != b and t1 - t0 <= window and items.split[a] == items.split[b]:
                x, y = sorted((a, b))
                pairs.add((x, y, "co-purchase"))
    return sorted(pairs, key=lambda p: (p[2], p[0], p[1]))
