"""Item and query records of the world: latent factors -> `Product` / `Query` (images, text, labels).

Each record is a pure function of (config, index), so `RecordBuilder` may build them in worker processes
in any order and the output stays byte-identical. Workers import only this module's light dependencies.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator


from mmrep.records import Product, Query
from mmrep.synth import behaviour as bh
from mmrep.synth.catalog import COLOURS, PATTERNS, Brands, Items, Users, make_brands, make_items, make_users, \
    stream_rng, subcategories
from mmrep.synth.config import WorldConfig
from mmrep.synth.render import ItemLook, encode, product_layer, render_view
from mmrep.synth.text import product_text, query_text

SPLITS = ("train", "val", "test")


def _ids(prefix: str, n: int) -> list[str]:
    width = max(5, len(str(max(n - 1, 0))))
    return [f"{prefix}{k:0{width}d}" for k in range(n)]


class WorldRecords:
    """Latent tables + the helpers that turn an item index into its record."""

    def __init__(self, cfg: WorldConfig):
        self.cfg = cfg
        self.subs = subcategories(cfg.n_top_categories, cfg.n_sub_categories)
        self.brands: Brands = make_brands(cfg.seed, cfg.n_brands, cfg.n_top_categories)
        self.items: Items = make_items(cfg.seed, cfg.n_items, cfg.n_top_categories, cfg.n_sub_categories,
                                       self.brands, (cfg.train_frac, cfg.val_frac))
        self.users: Users = make_users(cfg.seed, cfg.n_users, cfg.n_top_categories, cfg.n_sub_categories,
                                       cfg.n_brands)
        self.item_ids = _ids("i", cfg.n_items)
        self.user_ids = _ids("u", cfg.n_users)
        no_image = stream_rng(cfg.seed, "missing").random(cfg.n_items) < cfg.missing_image_rate
        self.has_image = ~no_image

    def look(self, i: int) -> ItemLook:
        it, b = self.items, int(self.items.brand[i])
        return ItemLook(shape=self.subs[it.sub[i]][3], colour=int(it.colour[i]),
                        pattern_colour=int(it.pattern_colour[i]), pattern=int(it.pattern[i]),
                        material=int(it.material[i]), style=int(it.style[i]), mark=int(self.brands.mark[b]),
                        mark_colour=int(self.brands.mark_colour[b]))

    def layer(self, i: int):
        """Item i drawn alone (RGBA, 2x image_size): every view of the item starts from it."""
        return product_layer(self.look(i), self.cfg.image_size, stream_rng(self.cfg.seed, "layer", i))

    def factors(self, i: int) -> dict:
        """Item i's factor values by name, as the text templates need them."""
        it = self.items
        return {"colour": int(it.colour[i]), "pattern": int(it.pattern[i]), "material": int(it.material[i]),
                "style": int(it.style[i]), "tier": int(it.tier[i]), "price": float(it.price[i]),
                "brand_name": self.brands.names[int(it.brand[i])], "has_image": bool(self.has_image[i])}

    def product(self, i: int) -> Product:
        """Item i's catalogue record: title/description/attributes with noise, catalogue views, labels."""
        cfg, it = self.cfg, self.items
        top, sub, nouns, _ = self.subs[it.sub[i]]
        text = product_text(stream_rng(cfg.seed, "text", i), self.factors(i), nouns, cfg)
        images: list[bytes] = []
        if self.has_image[i]:
            layer = self.layer(i)
            rng = stream_rng(cfg.seed, "view", i)
            n_views = int(rng.integers(cfg.views_per_item[0], cfg.views_per_item[1] + 1))
            images = [encode(render_view(layer, cfg.image_size, rng, "catalog", cfg.occlusion_rate),
                             cfg.image_format, cfg.jpeg_quality) for _ in range(n_views)]
        labels = {"category": sub, "top_category": top, "colour": COLOURS[it.colour[i]][0],
                  "pattern": PATTERNS[it.pattern[i]][0], "brand": self.brands.names[int(it.brand[i])]}
        return Product(id=self.item_ids[i], title=text["title"], description=text["description"],
                       category=[top, sub], attributes=text["attributes"], images=images,
                       image_exts=[cfg.image_format] * len(images), labels=labels, split=SPLITS[it.split[i]])

    def query(self, q: bh.QueryPlan) -> Query:
        """The shopper's query for plan q: typed words and/or a user photo of the positive item."""
        cfg = self.cfg
        top, sub, nouns, _ = self.subs[self.items.sub[q.positive]]
        text, images = "", []
        if q.mode != "image":
            text = query_text(stream_rng(cfg.seed, "qtext", q.index), self.factors(q.positive), nouns, cfg,
                              short=q.mode == "text+image")
        if q.mode != "text":
            img = render_view(self.layer(q.positive), cfg.image_size, stream_rng(cfg.seed, "qphoto", q.index),
                              "photo", cfg.occlusion_rate)
            images = [encode(img, cfg.image_format, cfg.query_jpeg_quality)]
        return Query(id=f"q{q.index:06d}", text=text, images=images, image_exts=[cfg.image_format] * len(images),
                     item_ids=[self.item_ids[q.positive]], user=self.user_ids[q.user], category=[top, sub])


# Records are pure functions of (config, index), so worker processes can build them in any order and
# the output stays byte-identical; each worker rebuilds the latent tables from the config once.
_WORKER_WORLD: WorldRecords | None = None


def _init_worker(cfg: WorldConfig) -> None:
    global _WORKER_WORLD
    _WORKER_WORLD = WorldRecords(cfg)


def _worker_product(i: int) -> Product:
    return _WORKER_WORLD.product(i)


def _worker_query(q: bh.QueryPlan) -> Query:
    return _WORKER_WORLD.query(q)


class RecordBuilder:
    """Builds records in this process (workers <= 1) or in a process pool, always in input order."""

    def __init__(self, world: WorldRecords, workers: int):
        self.world = world
        self.pool = None
        if workers > 1:
            import multiprocessing as mp

            self.pool = mp.get_context("spawn").Pool(workers, _init_worker, (world.cfg,))

    def products(self, idx: list[int]) -> Iterator[Product]:
        if self.pool is None:
            return map(self.world.product, idx)
        return self.pool.imap(_worker_product, idx, chunksize=16)

    def queries(self, plans: list[bh.QueryPlan]) -> Iterator[Query]:
        if self.pool is None:
            return map(self.world.query, plans)
        return self.pool.imap(_worker_query, [dataclasses.replace(q, session=None) for q in plans], chunksize=16)

    def __enter__(self) -> "RecordBuilder":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
