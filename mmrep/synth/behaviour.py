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

from mmrep.errors import MmrepError
from mmrep.synth.catalog import Items, Users, affinity, stream_rng

EXPOSURE, CLICK, PURCHASE = 0, 1, 2
HORIZON_S = 90 * 24 * 3600  # the log spans 90 days


@dataclass
class Session:
    """One page shown to one user at one time: browsing a subcategory or a query's results."""

    user: int
    items: list[int]  # exposed items, distinct
    clicked: list[bool]
    purchased: list[bool]
    query: int = -1  # query index, -1 for browsing
    time: int = 0


@dataclass
class QueryPlan:
    """A search query before rendering: who asks, in which item split, what they buy, what they skip."""

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
    """(K,) click probability of user u[k] on item i[k] (noise: (K,) standard normal)."""
    logit = (cfg.click_bias + cfg.affinity_scale * affinity(users, items, u, i)
             + cfg.popularity_scale * items.popularity[i] + cfg.click_noise * noise)
    return _sigmoid(logit)


def decide(cfg, users: Users, items: Items, rng: np.random.Generator, sessions: list[Session]) -> None:
    """Fill every session's clicks and purchases from the click model (one vectorised draw)."""
    n = np.array([len(s.items) for s in sessions])
    if not n.sum():
        return
    u = np.repeat(np.array([s.user for s in sessions]), n)
    i = np.fromiter((x for s in sessions for x in s.items), np.int64, int(n.sum()))
    p = click_prob(cfg, users, items, u, i, rng.standard_normal(len(i)))
    clicked = rng.random(len(i)) < p
    bought = clicked & (rng.random(len(i)) < cfg.purchase_rate)
    ends = np.cumsum(n)
    for s, c, b in zip(sessions, np.split(clicked, ends[:-1]), np.split(bought, ends[:-1])):
        s.clicked, s.purchased = c.tolist(), b.tolist()


def ctr_split_time(cfg) -> int:
    """CTR train = events before this time; sessions are uniform over the horizon, so about
    `ctr_test_frac` of them come after it."""
    return int(round((1 - cfg.ctr_test_frac) * HORIZON_S))


def launch_times(cfg, n_items: int) -> np.ndarray:
    """(N,) time each item goes on sale: 0, or for a `new_item_rate` share a time inside the CTR test
    period (cold items: no id can have been learned for them, only their content can score them)."""
    rng = stream_rng(cfg.seed, "launch")
    late = rng.random(n_items) < cfg.new_item_rate
    start = ctr_split_time(cfg)
    when = rng.uniform(start, start + 0.75 * cfg.ctr_test_frac * HORIZON_S, n_items)
    return np.where(late, when, 0).astype(np.int64)


def browse_sessions(cfg, users: Users, items: Items, launch: np.ndarray) -> list[Session]:
    """Each user browses subcategories they like; exposure follows popularity (long tail) among the
    items already launched."""
    rng = stream_rng(cfg.seed, "sessions")
    n_users, n_sub = users.sub_pref.shape
    counts = rng.poisson(cfg.sessions_per_user * users.activity)
    sess_user = np.repeat(np.arange(n_users), counts)
    sess_time = rng.integers(0, HORIZON_S, len(sess_user))
    # each session's subcategory ~ the user's preference (+15% exploration): one searchsorted over
    # the users' CDFs laid end to end
    pref = 0.85 * users.sub_pref + 0.15 / n_sub
    cdf = np.cumsum(pref / pref.sum(1, keepdims=True), 1)
    cdf[:, -1] = 1.0
    flat = (cdf + np.arange(n_users)[:, None]).ravel()
    pos = np.searchsorted(flat, rng.random(len(sess_user)) + sess_user, side="right")
    sess_sub = np.minimum(pos - sess_user * n_sub, n_sub - 1)
    weights = np.exp(cfg.exposure_popularity * items.popularity)
    shown: list[list[int] | None] = [None] * len(sess_user)
    for s in range(n_sub):
        ix = np.flatnonzero(items.sub == s)
        rows = np.flatnonzero(sess_sub == s)
        if not len(ix) or not len(rows):
            continue
        item_cdf = np.cumsum(weights[ix])
        draws = np.searchsorted(item_cdf / item_cdf[-1], rng.random((len(rows), 2 * cfg.session_size)), side="right")
        draws = ix[np.minimum(draws, len(ix) - 1)]
        for r, row in zip(rows.tolist(), draws.tolist()):
            t = sess_time[r]
            shown[r] = list(dict.fromkeys(x for x in row if launch[x] <= t))[: cfg.session_size]
    sessions = [Session(int(u), its, [], [], time=int(t))
                for u, its, t in zip(sess_user.tolist(), shown, sess_time.tolist()) if its]
    decide(cfg, users, items, rng, sessions)
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
            key = ("train_frac", "val_frac", "val_frac")[split]
            raise MmrepError(f"world.{key}: split {('train', 'val', 'test')[split]} gets {len(split_items)} items, "
                             f"fewer than n_negatives + 1 = {cfg.n_negatives + 1}; raise n_items or the split's share")
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


def query_sessions(cfg, users: Users, items: Items, plans: list[QueryPlan], launch: np.ndarray) -> list[Session]:
    """The search result page of each query: the positive is clicked and bought, negatives only exposed;
    it happens after every shown item has launched."""
    rng = stream_rng(cfg.seed, "queries", 1)
    when = rng.integers(0, HORIZON_S, len(plans))
    out = [Session(q.user, [q.positive] + q.negatives, [], [], query=q.index,
                   time=int(max(t, launch[[q.positive] + q.negatives].max()))) for q, t in zip(plans, when)]
    decide(cfg, users, items, rng, out)
    for q, s in zip(plans, out):
        s.clicked[0] = True
        s.purchased = [True] + [False] * len(q.negatives)
        q.session = s
    return out


def coverage_sessions(cfg, users: Users, items: Items, sessions: list[Session], launch: np.ndarray
                      ) -> list[Session]:
    """One single-item exposure for every item nobody saw, so the log covers the whole catalogue."""
    rng = stream_rng(cfg.seed, "sessions", 1)
    seen = np.zeros(len(items), bool)
    for s in sessions:
        seen[s.items] = True
    unseen = np.flatnonzero(~seen)
    who = rng.choice(len(users), size=len(unseen), p=users.activity / users.activity.sum())
    when = launch[unseen] + rng.random(len(unseen)) * (HORIZON_S - launch[unseen])
    out = [Session(int(u), [int(i)], [], [], time=int(t)) for u, i, t in zip(who, unseen, when)]
    decide(cfg, users, items, rng, out)
    return out


def unique_times(sessions: list[Session]) -> None:
    """Make session times distinct, moving a tied session a second later (never earlier: a session
    stays after its items' launch), so that (user, item, time) identifies an exposure."""
    t = np.array([s.time for s in sessions], np.int64)
    order = np.argsort(t, kind="stable")
    steps = np.arange(len(t))
    new = np.empty_like(t)
    new[order] = np.maximum.accumulate(t[order] - steps) + steps
    for s, x in zip(sessions, new.tolist()):
        s.time = x


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
