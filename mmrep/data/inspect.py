"""What a shard folder holds: counts, field coverage, images per item, image sizes, corrupt samples.

Works on mmrep shard sets (manifest.json), img2dataset folders (*.tar + *_stats.json) and an import
root holding one shard set per split.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from mmrep.data.readers import (ShardSamples, SkipStats, _Skipper, count_samples, decode_sample, resolve_shards,
                                 shard_counts)
from mmrep.data.shards import MANIFEST
from mmrep.data.transforms import CorruptSample
from mmrep.errors import MmrepError
from mmrep.records import Product, Triplet

SIZE_BINS = (32, 64, 128, 256, 512, 1024)


def _is_shard_set(d: Path) -> bool:
    return (d / MANIFEST).is_file() or any(d.glob("*.tar"))


def shard_sets(root: str | Path) -> dict[str, Path]:
    """{name: folder}: the folder itself if it holds shards, else its sub-folders that do."""
    root = Path(root)
    if not root.is_dir():
        raise MmrepError(f"shard folder not found: {root} (check the path)")
    if _is_shard_set(root):
        return {root.name: root}
    subs = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".") and _is_shard_set(d)}
    if not subs:
        raise MmrepError(f"no shards in {root}: expected *.tar files or split folders holding them")
    return subs


def _size_bin(w: int, h: int) -> str:
    side = max(w, h)
    lo = 0
    for b in SIZE_BINS:
        if side < b:
            return f"{lo}-{b - 1}"
        lo = b
    return f">={SIZE_BINS[-1]}"


def inspect_set(folder: str | Path, verify: bool = True, limit: int | None = None,
                max_corrupt: int = 100) -> dict[str, Any]:
    """Statistics of one shard set; `verify` fully decodes every image (finds truncated JPEGs)."""
    stats = SkipStats(max_examples=max_corrupt)
    skipper = _Skipper(stats, strict=False)
    layouts: Counter = Counter()
    fields: Counter = Counter()
    attr_keys: Counter = Counter()
    label_keys: Counter = Counter()
    per_item: Counter = Counter()
    sizes: Counter = Counter()
    bins: Counter = Counter()
    n_products = n_triplets = 0
    negatives: Counter = Counter()
    urls = resolve_shards(folder)
    counts = shard_counts(urls)
    logger = logging.getLogger("mmrep.data.readers")
    level = logger.level
    logger.setLevel(logging.ERROR)  # every skip is reported in the result instead of logged
    try:
        for url in urls:
            # the shared reader: a damaged shard also counts the samples its manifest says were lost with it
            for sample in ShardSamples(skipper, counts)(iter([{"url": url}])):
                if limit is not None and n_products + n_triplets >= limit:
                    break
                key = str(sample.get("__key__", ""))
                try:
                    record = decode_sample(sample)
                    products = [record] if isinstance(record, Product) else [record.positive, *record.negatives]
                    for p in products:
                        for data in p.images:
                            sizes_of = _image_size(data, verify)
                            sizes[f"{sizes_of[0]}x{sizes_of[1]}"] += 1
                            bins[_size_bin(*sizes_of)] += 1
                except CorruptSample as e:
                    skipper.skip(e.reason, url, key, e.detail)
                    continue
                if isinstance(record, Triplet):
                    n_triplets += 1
                    layouts["mmrep-triplet"] += 1
                    negatives[len(record.negatives)] += 1
                    continue
                n_products += 1
                layouts["mmrep" if "product.json" in sample else "img2dataset"] += 1
                p = record
                per_item[len(p.images)] += 1
                for name, present in (("title", bool(p.title.strip())), ("description", bool(p.description.strip())),
                                      ("category", bool(p.category)), ("attributes", bool(p.attributes)),
                                      ("labels", bool(p.labels)), ("image", p.has_image), ("text", p.has_text)):
                    fields[name] += present
                attr_keys.update(list(p.attributes))
                label_keys.update(list(p.labels))
    finally:
        logger.setLevel(level)
    n = max(n_products, 1)
    expected = count_samples(urls)
    return {
        "folder": str(folder),
        "shards": len(urls),
        "products": n_products,
        "triplets": n_triplets,
        "expected": expected,
        "layout": dict(layouts),
        "coverage": {k: round(fields[k] / n, 4) for k in ("title", "description", "category", "attributes", "labels",
                                                          "image", "text")},
        "attribute_coverage": {k: round(v / n, 4) for k, v in attr_keys.most_common()},
        "label_coverage": {k: round(v / n, 4) for k, v in label_keys.most_common()},
        "images_per_item": {str(k): v for k, v in sorted(per_item.items())},
        "negatives_per_triplet": {str(k): v for k, v in sorted(negatives.items())},
        "image_size_hist": {k: bins[k] for k in _bin_order() if bins[k]},
        "image_sizes_top": dict(sizes.most_common(10)),
        "corrupt": stats.counts(),
        "skipped_samples": stats.samples,  # corrupt samples + samples lost with damaged shards
        "damaged_shards": stats.damaged_shards,
        "corrupt_samples": stats.examples,
    }


def _bin_order() -> list[str]:
    lo, out = 0, []
    for b in SIZE_BINS:
        out.append(f"{lo}-{b - 1}")
        lo = b
    return out + [f">={SIZE_BINS[-1]}"]


def _image_size(data: bytes, verify: bool) -> tuple[int, int]:
    try:
        img = Image.open(io.BytesIO(data))
        if verify:
            img.load()
        return img.size
    except Exception as e:
        detail = f"image bytes cannot be decoded ({type(e).__name__}: {e})"
        raise CorruptSample(detail, reason="bad_image", detail=detail) from None


def inspect_shards(root: str | Path, verify: bool = True, limit: int | None = None) -> dict[str, Any]:
    """{"sets": {name: inspect_set(...)}, "total": products + triplets over all sets}."""
    sets = {name: inspect_set(d, verify, limit) for name, d in shard_sets(root).items()}
    return {"root": str(root), "sets": sets,
            "total": sum(s["products"] + s["triplets"] for s in sets.values()),
            "corrupt_total": sum(s["skipped_samples"] for s in sets.values()),
            "damaged_shards": sum(s["damaged_shards"] for s in sets.values())}


def format_report(report: dict[str, Any]) -> str:
    """A plain-text rendering of `inspect_shards`' result."""
    lines = [f"{report['root']}: {report['total']} samples, {report['corrupt_total']} corrupt or lost"
             + (f" ({report['damaged_shards']} damaged shards)" if report.get("damaged_shards") else "")]
    for name, s in report["sets"].items():
        exp = f" (manifest/stats say {s['expected']})" if s["expected"] is not None else ""
        lines.append(f"\n[{name}] {s['shards']} shards, {s['products']} products, {s['triplets']} triplets{exp}")
        lines.append("  layout: " + ", ".join(f"{k} {v}" for k, v in s["layout"].items()))
        lines.append("  coverage: " + ", ".join(f"{k} {v:.1%}" for k, v in s["coverage"].items()))
        if s["attribute_coverage"]:
            lines.append("  attributes: " + ", ".join(f"{k} {v:.1%}" for k, v in s["attribute_coverage"].items()))
        if s["label_coverage"]:
            lines.append("  labels: " + ", ".join(f"{k} {v:.1%}" for k, v in s["label_coverage"].items()))
        lines.append("  images per item: " + ", ".join(f"{k}: {v}" for k, v in s["images_per_item"].items()))
        lines.append("  image size (longer side): " + ", ".join(f"{k}: {v}" for k, v in s["image_size_hist"].items()))
        lines.append("  most common sizes: " + ", ".join(f"{k}: {v}" for k, v in s["image_sizes_top"].items()))
        if s["corrupt"]:
            lines.append("  corrupt: " + ", ".join(f"{k} {v}" for k, v in s["corrupt"].items()))
            lines += [f"    {c['message']}" for c in s["corrupt_samples"]]
    return "\n".join(lines)
