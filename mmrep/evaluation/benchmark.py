"""The MBE2.0-protocol benchmark layout, converters into it, and its loader.

A benchmark folder (full description: docs/benchmark-layout.md):
    benchmark.json   {"format": "mmrep-bench", "version": 1, "name", "protocol": "MBE2.0",
                      "counts": {"items", "queries", "query_modalities": {"text", "image", "text+image"}},
                      "provenance": {...}}
    labels.json      {"classification": [{"field", "classes": [...], "prompts": ["a photo of {}.", ...]}],
                      "attributes":     [{"field", "values":  [...], "prompts": [...]}]}
    items/           product shard set (manifest.json + items-NNNNNN.tar); ground-truth labels in
                     each product's `labels`; the evaluated fields are removed from the item text
    queries/         query shard set: `<key>.query.json` ({"id", "text", "images", "item_ids", ...})
                     + `<key>.q.N.<ext>` images; item_ids = ground-truth gallery items
Converters: `from_catalogue` (a product shard set, e.g. Fashion Product Images' test split) and
`from_world` (the built-in world's triplets: its queries and purchases).
"""

from __future__ import annotations

import io
import json
import random
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_dir, check_replaceable
from mmrep.records import Product, Query, sample_key

FORMAT = "mmrep-bench"
VERSION = 1
BENCH_FILE = "benchmark.json"
LABELS_FILE = "labels.json"

# Prompt templates per field ("{}" = the class / value string); the default covers the rest.
PROMPTS: dict[str, list[str]] = {
    "articleType": ["a photo of {}.", "{}"],
    "subCategory": ["a photo of {}.", "{}"],
    "category": ["a photo of {}.", "{}"],
    "top_category": ["a photo of {}.", "{}"],
    "baseColour": ["a {} product.", "{}"],
    "colour": ["a {} product.", "{}"],
    "gender": ["a product for {}.", "{}"],
    "usage": ["a product for {} use.", "{}"],
    "pattern": ["a product with a {} pattern.", "{}"],
}
DEFAULT_PROMPTS = ["a product: {}.", "{}"]

FASHION_CLASSIFICATION = ("articleType", "subCategory")
FASHION_ATTRIBUTES = ("baseColour", "gender", "usage")
WORLD_CLASSIFICATION = ("category", "top_category")
WORLD_ATTRIBUTES = ("colour", "pattern")


@dataclass
class Benchmark:
    """A loaded benchmark: gallery items, queries, label spaces, and benchmark.json."""

    path: Path
    items: list[Product]
    queries: list[Query]
    labels: dict
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))


# ---------------------------------------------------------------------------------------------
# user-photo-like query images


def user_photo(data: bytes, seed: int, ext: str = "jpg") -> bytes:
    """A user-photo-like view of a catalogue image: off-centre crop, tilt, lighting, blur, low JPEG quality.

    Deterministic in `seed`. Fashion Product Images has one image per item, so its image queries use
    this view of the item image (the gallery keeps the original).
    """
    from PIL import Image, ImageEnhance, ImageFilter

    rng = random.Random(seed)
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    area = rng.uniform(0.6, 0.9)
    cw, ch = max(1, int(w * area ** 0.5)), max(1, int(h * area ** 0.5))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((left, top, left + cw, top + ch))
    fill = tuple(int(v) for v in img.resize((1, 1)).getpixel((0, 0)))
    img = img.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, fillcolor=fill)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.25))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.75, 1.25))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.3))
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    img = img.resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(45, 75))
    return buf.getvalue()


def _seed(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


# ---------------------------------------------------------------------------------------------
# writing


def label_of(p: Product, key: str) -> str:
    """A product's value for an evaluated field: its labels first, then its attributes."""
    return str(p.labels.get(key) or p.attributes.get(key) or "").strip()


def strip_evaluated(p: Product, fields: Iterable[str]) -> Product:
    """The item as the benchmark stores it: evaluated fields moved out of the text (into labels).

    The category path is dropped too: in catalogues it spells out the classes (Fashion:
    masterCategory > subCategory > articleType), which would make classification a lookup.
    """
    fields = set(fields)
    labels = dict(p.labels)
    for key in fields:
        if label_of(p, key):
            labels[key] = label_of(p, key)
    attributes = {k: v for k, v in p.attributes.items() if k not in fields}
    return Product(id=p.id, title=p.title, description=p.description, category=[], attributes=attributes,
                   images=p.images, image_exts=p.image_exts, labels=labels, split=p.split)


def label_spaces(items: Sequence[Product], classification: Sequence[str], attributes: Sequence[str]) -> dict:
    """labels.json content: sorted value lists of each field (fields absent from every item are dropped)."""
    def space(key: str) -> list[str]:
        return sorted({label_of(p, key) for p in items} - {""})

    out: dict = {"classification": [], "attributes": []}
    for group, keys, name in (("classification", classification, "classes"), ("attributes", attributes, "values")):
        for key in keys:
            values = space(key)
            if len(values) >= 2:
                out[group].append({"field": key, name: values, "prompts": PROMPTS.get(key, DEFAULT_PROMPTS)})
    return out


def write_benchmark(out: str | Path, name: str, items: Sequence[Product], queries: Sequence[Query], labels: dict,
                    provenance: dict, overwrite: bool = False, shard_size: int = 5000) -> dict:
    """Write a benchmark folder atomically; returns benchmark.json."""
    from mmrep.data.shards import ShardWriter

    out = check_replaceable(out, overwrite, (BENCH_FILE,))
    if not items:
        raise MmrepError("the benchmark would have no items; check the source split")
    if not queries:
        raise MmrepError("the benchmark would have no queries; check the source (items need a title or an image)")
    ids = [p.id for p in items]
    if len(set(ids)) != len(ids):
        raise MmrepError("the source has duplicate item ids; a benchmark gallery needs unique ids")
    known = set(ids)
    missing = [q.id for q in queries if not set(q.item_ids) & known]
    if missing:
        raise MmrepError(f"query {missing[0]} has no ground-truth item in the gallery ({len(missing)} such queries)")
    modes = {"text": 0, "image": 0, "text+image": 0}
    for q in queries:
        modes["text+image" if q.has_text and q.has_image else "text" if q.has_text else "image"] += 1
    meta = {"format": FORMAT, "version": VERSION, "name": name, "protocol": "MBE2.0",
            "counts": {"items": len(items), "queries": len(queries), "query_modalities": modes,
                       "classification": {c["field"]: len(c["classes"]) for c in labels["classification"]},
                       "attributes": {a["field"]: len(a["values"]) for a in labels["attributes"]}},
            "provenance": provenance | {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    with atomic_dir(out, "benchmark", (BENCH_FILE,)) as tmp:
        with ShardWriter(tmp / "items", "items", shard_size, kind="products", mtime=0) as w:
            for p in items:
                w.write({"__key__": sample_key(p.id), **p.to_sample()})
        with ShardWriter(tmp / "queries", "queries", shard_size, kind="queries", mtime=0) as w:
            for q in queries:
                w.write(q.to_sample())
        (tmp / LABELS_FILE).write_text(json.dumps(labels, indent=1, ensure_ascii=False))
        (tmp / BENCH_FILE).write_text(json.dumps(meta, indent=1))
    return meta


# ---------------------------------------------------------------------------------------------
# converters


def from_catalogue(shards: str | Path, out: str | Path, name: str = "", classification: Sequence[str] = FASHION_CLASSIFICATION,
                   attributes: Sequence[str] = FASHION_ATTRIBUTES, max_items: int = 0, seed: int = 0,
                   overwrite: bool = False, strict: bool = False) -> dict:
    """A product shard set (e.g. Fashion test split) -> benchmark.

    Per item one query: text = the title (t→mm, t→i), image = a user-photo-like view of the first
    image (i→mm, i→t), both (mm→mm); ground truth = the item. Classification / attribute labels
    come from the items' labels (or attributes).
    """
    from mmrep.data.readers import SkipStats, iter_products

    fields = [*classification, *attributes]
    items: list[Product] = []
    skipped = SkipStats()
    for p in iter_products(str(shards), strict, skipped, verify_images=True):
        items.append(strip_evaluated(p, fields))
        if max_items and len(items) >= max_items:
            break
    skipped.report(f"make-bench {shards}")
    queries = []
    for p in items:
        images = [user_photo(p.images[0], _seed(seed, p.id))] if p.images else []
        if not (p.title.strip() or images):
            continue
        queries.append(Query(id=f"q-{p.id}", text=p.title, images=images, image_exts=["jpg"] * len(images),
                             item_ids=[p.id], category=[]))
    labels = label_spaces(items, classification, attributes)
    provenance = {"converter": "catalogue", "source": str(shards), "max_items": max_items, "seed": seed,
                  "queries": "one per item: text = title; image = user-photo-like augmentation of the item's first "
                             "image (the gallery keeps the original); ground truth = the item itself",
                  "items": "evaluated label fields and the category path removed from the item text"}
    return write_benchmark(out, name or "-".join(Path(str(shards)).resolve().parts[-2:]), items, queries, labels, provenance, overwrite)


def from_world(world: str | Path, out: str | Path, split: str = "test", name: str = "",
               classification: Sequence[str] = WORLD_CLASSIFICATION, attributes: Sequence[str] = WORLD_ATTRIBUTES,
               overwrite: bool = False, strict: bool = False) -> dict:
    """The built-in world's `split` -> benchmark: triplet queries (ground truth = their purchases),
    gallery = items/<split> plus every purchased item the queries point to."""
    from mmrep.data.readers import SkipStats, iter_products, iter_triplets

    world = Path(world)
    tdir, idir = world / "triplets" / split, world / "items" / split
    for d in (tdir, idir):
        if not d.is_dir():
            raise MmrepError(f"{d} not found: --from-world needs a folder written by `mmrep data synth`")
    fields = [*classification, *attributes]
    skipped = SkipStats()
    items: dict[str, Product] = {p.id: strip_evaluated(p, fields)
                                 for p in iter_products(str(idir), strict, skipped, verify_images=True)}
    queries: dict[str, Query] = {}
    for t in iter_triplets(str(tdir), strict, skipped, verify_images=True):
        if t.positive.id not in items:
            items[t.positive.id] = strip_evaluated(t.positive, fields)
        q = queries.get(t.query.id)
        if q is None:
            q = Query(id=t.query.id, text=t.query.text, images=t.query.images, image_exts=t.query.image_exts,
                      item_ids=[], user=t.query.user, category=t.query.category)
            queries[q.id] = q
        for i in [*t.query.item_ids, t.positive.id]:
            if i not in q.item_ids and i in items:
                q.item_ids.append(i)
    skipped.report(f"make-bench {world}")
    item_list = list(items.values())
    labels = label_spaces(item_list, classification, attributes)
    provenance = {"converter": "world", "source": str(world), "split": split,
                  "queries": "the split's triplet queries (deduplicated by query id); ground truth = purchased items",
                  "items": f"items/{split} plus purchased items from other splits; evaluated fields removed from the text"}
    return write_benchmark(out, name or f"world-{split}", item_list, list(queries.values()), labels, provenance, overwrite)


# ---------------------------------------------------------------------------------------------
# loading


def _shard_count(d: Path) -> int | None:
    """0 when a shard folder is missing / has no tars / its manifest counts 0; else the count (None = unknown)."""
    if not d.is_dir() or not any(d.glob("*.tar")):
        return 0
    manifest = d / "manifest.json"
    return int(json.loads(manifest.read_text()).get("count", 0)) if manifest.is_file() else None


def load_benchmark(path: str | Path, strict: bool = False) -> Benchmark:
    """Read a benchmark folder; MmrepError when it is missing, foreign or empty. Corrupt items / queries
    (images included) are skipped and counted with one summary line, or fail when `strict`."""
    from mmrep.data.readers import (ShardSamples, SkipStats, _Skipper, check_images, decode_record, iter_products,
                                    shard_counts)
    from mmrep.data.shards import shard_paths
    from mmrep.data.transforms import CorruptSample

    path = Path(path)
    if not path.is_dir():
        raise MmrepError(f"benchmark folder not found: {path} (make one with `mmrep eval mbe --make-bench`)")
    meta_file = path / BENCH_FILE
    if not meta_file.is_file():
        raise MmrepError(f"{path} has no {BENCH_FILE}: not a benchmark folder (make one with `mmrep eval mbe --make-bench`)")
    try:
        meta = json.loads(meta_file.read_text())
        labels = json.loads((path / LABELS_FILE).read_text()) if (path / LABELS_FILE).is_file() else {}
    except json.JSONDecodeError as e:
        raise MmrepError(f"{path}: benchmark.json / labels.json is not valid JSON ({e.msg})") from None
    if meta.get("format") != FORMAT:
        raise MmrepError(f"{meta_file} is not an {FORMAT} file (format={meta.get('format')!r})")
    for sub in ("items", "queries"):
        if _shard_count(path / sub) == 0:
            raise MmrepError(f"benchmark {path} is empty: {sub}/ holds no samples; rebuild it with `mmrep eval mbe --make-bench`")
    skipped = SkipStats()
    items = list(iter_products(str(path / "items"), strict, skipped, verify_images=True))
    queries: list[Query] = []
    skipper = _Skipper(skipped, strict)
    urls = shard_paths(path / "queries")
    for sample in ShardSamples(skipper, shard_counts(urls))({"url": u} for u in urls):
        try:
            record = decode_record(sample)
            check_images(record)
        except CorruptSample as e:
            skipper.skip(e.reason, str(sample.get("__url__", "")), str(sample.get("__key__", "")), e.detail)
            continue
        if isinstance(record, Query):
            queries.append(record)
    skipped.report(f"benchmark {path}")
    if not items:
        raise MmrepError(f"benchmark {path} is empty: items/ holds no products")
    if not queries:
        raise MmrepError(f"benchmark {path} is empty: queries/ holds no queries")
    labels.setdefault("classification", [])
    labels.setdefault("attributes", [])
    return Benchmark(path, items, queries, labels, meta)
