"""`generate_world(cfg, out_dir)`: the built-in product world, written as shard sets + CSV tables.

Layout (documented in mmrep/synth/__init__.py):
    world.json, config.yaml, items/{train,val,test}/, triplets/{train,val,test}/, interactions.csv,
    pairs.csv, item_factors.csv (ground truth, analysis only), users.csv
The output is a pure function of the config: the same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mmrep.config import save_resolved, to_dict
from mmrep.data.shards import ShardWriter
from mmrep.fsutil import atomic_dir, atomic_write, check_replaceable
from mmrep.records import Product, Triplet, sample_key
from mmrep.synth import behaviour as bh
from mmrep.synth.catalog import COLOURS, MARK_SHAPES, MATERIALS, PATTERNS, STYLES, TIERS, stream_rng
from mmrep.synth.config import SynthConfig, WorldConfig
from mmrep.synth.records import SPLITS, RecordBuilder, WorldRecords
from mmrep.synth.text import ATTRIBUTE_KEYS

WORLD_FILES = ("world.json", "items")  # what a world folder from before the mmrep marker is recognised by

FORMAT = "mmrep-world/1"
EVENT_NAMES = ("exposure", "click", "purchase")


def _csv_bytes(header: list[str], rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def _write(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def check_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    return check_replaceable(out_dir, overwrite, WORLD_FILES)


@dataclass
class Behaviour:
    """The simulated log: query plans, all sessions, their event rows, item pairs, the CTR split time."""

    plans: list[bh.QueryPlan]
    sessions: list[bh.Session]
    events: dict[str, np.ndarray]
    pairs: list[tuple[int, int, str]]
    split_time: int
    launch: np.ndarray  # (N,) item launch times


def simulate(cfg: WorldConfig, w: WorldRecords) -> Behaviour:
    """Browse sessions, search queries, coverage exposures -> timed event rows and item pairs."""
    launch = bh.launch_times(cfg, cfg.n_items)
    browse = bh.browse_sessions(cfg, w.users, w.items, launch)
    plans = bh.plan_queries(cfg, w.users, w.items)
    searches = bh.query_sessions(cfg, w.users, w.items, plans, launch)
    cover = bh.coverage_sessions(cfg, w.users, w.items, browse + searches, launch)
    sessions = browse + searches + cover
    bh.unique_times(sessions)
    split_time = bh.ctr_split_time(cfg)
    return Behaviour(plans, sessions, bh.event_table(sessions), bh.item_pairs(cfg, w.items, sessions), split_time,
                     launch)


def _noisy_triplets(cfg: WorldConfig, plans) -> set[int]:
    """Query indices whose training triplet gets its positive swapped with a negative (triplet_noise_rate)."""
    if cfg.triplet_noise_rate <= 0 or not plans:
        return set()
    rng = stream_rng(cfg.seed, "triplet-noise")
    pick = rng.random(len(plans)) < cfg.triplet_noise_rate
    return {q.index for q, p in zip(plans, pick) if p}


def generate_world(cfg: WorldConfig, out_dir: str | Path, overwrite: bool = False,
                   log: Callable[[str], None] | None = None, workers: int = 0) -> dict:
    """Generate the world into `out_dir` (built under a temp name, renamed when complete); returns the
    summary that is also stored in world.json. `workers` > 1 renders in that many processes (same bytes)."""
    out = check_out_dir(out_dir, overwrite)
    say = log or (lambda msg: None)
    w = WorldRecords(cfg)
    say("behaviour log")
    b = simulate(cfg, w)
    counts: dict = {"items": {}, "triplets": {}, "images": 0, "query_images": 0}
    missing = {"title": 0, "description": 0, "images": 0, **{f"attributes.{k}": 0 for k in ATTRIBUTE_KEYS}}
    needed = {q.positive for q in b.plans} | {n for q in b.plans for n in q.negatives}
    with RecordBuilder(w, workers) as builder, atomic_dir(out, "world", WORLD_FILES) as tmp:
        kept: dict[int, Product] = {}  # the items triplets carry inline
        for s, split in enumerate(SPLITS):
            say(f"items/{split}")
            with ShardWriter(tmp / "items" / split, split, cfg.shard_size, kind="products", mtime=0) as sw:
                idx = np.flatnonzero(w.items.split == s).tolist()
                for i, p in zip(idx, builder.products(idx)):
                    sw.write({"__key__": sample_key(p.id), **p.to_sample()})
                    counts["images"] += len(p.images)
                    missing["title"] += not p.title
                    missing["description"] += not p.description
                    missing["images"] += not p.images
                    for k in ATTRIBUTE_KEYS:
                        missing[f"attributes.{k}"] += k not in p.attributes
                    if i in needed:
                        kept[i] = p
            counts["items"][split] = sw.count
        for s, split in enumerate(SPLITS):
            say(f"triplets/{split}")
            with ShardWriter(tmp / "triplets" / split, split, cfg.shard_size, kind="triplets", mtime=0) as sw:
                plans = [q for q in b.plans if q.split == s]
                noisy = _noisy_triplets(cfg, plans) if split == "train" else set()
                for q, query in zip(plans, builder.queries(plans)):
                    counts["query_images"] += len(query.images)
                    pos, negs = q.positive, list(q.negatives)
                    if q.index in noisy:  # label noise: a skipped item logged as the purchase, and vice versa
                        pos, negs[0] = negs[0], pos
                    sw.write(Triplet(f"t{q.index:06d}", query, kept[pos], [kept[n] for n in negs]).to_sample())
            counts["triplets"][split] = sw.count
            if noisy:
                counts["noisy_triplets"] = len(noisy)
        say("tables")
        _write_tables(tmp, w, b)
        summary = _summary(cfg, w, b, counts, missing)
        _write(tmp / "world.json", (json.dumps(summary, indent=1) + "\n").encode())
        save_resolved(SynthConfig(world=cfg), tmp)
    return summary


def _write_tables(out: Path, w: WorldRecords, b: Behaviour) -> None:
    ev, items = b.events, w.items
    qids = {q.index: f"q{q.index:06d}" for q in b.plans}
    _write(out / "interactions.csv", _csv_bytes(["user", "item", "time", "event", "query"], (
        (w.user_ids[u], w.item_ids[i], t, EVENT_NAMES[e], qids.get(q, ""))
        for u, i, t, e, q in zip(ev["user"].tolist(), ev["item"].tolist(), ev["time"].tolist(),
                                 ev["event"].tolist(), ev["query"].tolist()))))
    _write(out / "pairs.csv", _csv_bytes(["item_a", "item_b", "kind"],
                                         ((w.item_ids[a], w.item_ids[c], k) for a, c, k in b.pairs)))
    _write(out / "item_factors.csv", _csv_bytes(
        ["item", "split", "top_category", "category", "colour", "pattern", "pattern_colour", "brand", "material",
         "style", "price_tier", "price", "popularity", "launch_time"],
        ((w.item_ids[i], SPLITS[items.split[i]], w.subs[items.sub[i]][0], w.subs[items.sub[i]][1],
          COLOURS[items.colour[i]][0], PATTERNS[items.pattern[i]][0], COLOURS[items.pattern_colour[i]][0],
          w.brands.names[items.brand[i]], MATERIALS[items.material[i]], STYLES[items.style[i]][0],
          TIERS[items.tier[i]], f"{items.price[i]:.2f}", f"{items.popularity[i]:.4f}", int(b.launch[i]))
         for i in range(len(items)))))
    _write(out / "users.csv", _csv_bytes(["user", "favourite_categories", "favourite_colours", "favourite_brands",
                                          "price_tier", "taste"], (_user_row(w, u) for u in range(len(w.users)))))


def _summary(cfg: WorldConfig, w: WorldRecords, b: Behaviour, counts: dict, missing: dict) -> dict:
    ev = b.events
    n_ev = np.bincount(ev["event"], minlength=3)
    exposure = ev["event"] == 0
    train_rows = ev["time"] < b.split_time
    modes = [q.mode for q in b.plans]
    counts = counts | {
        "users": cfg.n_users, "queries": {m: modes.count(m) for m in ("text", "image", "text+image")},
        "sessions": len(b.sessions), "interactions": {EVENT_NAMES[k]: int(n_ev[k]) for k in range(3)},
        "ctr_exposures": {"train": int((exposure & train_rows).sum()), "test": int((exposure & ~train_rows).sum())},
        "pairs": {k: sum(p[2] == k for p in b.pairs) for k in ("co-click", "co-purchase")},
        "items_launched_in_ctr_test": int((b.launch >= b.split_time).sum()),
    }
    return {
        "format": FORMAT, "config": to_dict(cfg), "counts": counts,
        "missing_rates": {k: round(v / cfg.n_items, 4) for k, v in missing.items()},
        "ctr_split_time": b.split_time,
        "ctr_split_rule": "CTR train = rows with time < ctr_split_time; test = the rest",
        "label_rule": "an exposure is clicked iff a click row with the same (user, item, time) exists",
        "vocabulary": {"categories": [[t, s] for t, s, _, _ in w.subs],
                       "colours": [c[0] for c in COLOURS], "patterns": [p[0] for p in PATTERNS],
                       "materials": MATERIALS, "styles": [s[0] for s in STYLES], "price_tiers": TIERS,
                       "brands": w.brands.names,
                       "brand_marks": [f"{COLOURS[c][0]} {MARK_SHAPES[m]}"
                                       for m, c in zip(w.brands.mark, w.brands.mark_colour)]},
    }


def _user_row(w: WorldRecords, u: int) -> tuple:
    us = w.users
    top_subs = np.argsort(-us.sub_pref[u])[:2]
    top_cols = np.argsort(-us.colour_pref[u])[:2]
    top_brands = np.argsort(-us.brand_pref[u])[:3]
    taste = {"sub_pref": np.round(us.sub_pref[u], 4).tolist(), "colour_pref": np.round(us.colour_pref[u], 4).tolist(),
             "pattern_pref": np.round(us.pattern_pref[u], 4).tolist(),
             "style_pref": np.round(us.style_pref[u], 4).tolist(),
             "brand_pref": np.round(us.brand_pref[u], 4).tolist(), "tier_pref": int(us.tier_pref[u])}
    return (w.user_ids[u], "|".join(w.subs[s][1] for s in top_subs), "|".join(COLOURS[c][0] for c in top_cols),
            "|".join(w.brands.names[b] for b in top_brands), TIERS[us.tier_pref[u]],
            json.dumps(taste, separators=(",", ":")))
