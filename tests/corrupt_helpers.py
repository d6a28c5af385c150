"""A product shard set with 5% corrupt samples and one truncated shard, and its exact expected counts."""

from __future__ import annotations

import tarfile
from pathlib import Path

from embedding_helpers import write_products
from mmrep.data.shards import ShardWriter
from mmrep.records import sample_key

N, SHARD_SIZE = 100, 20
BAD_IMAGE = {3: b"not an image at all", 63: b"\x89PNG\r\n\x1a\n" + b"\x00" * 40}  # + one truncated JPEG (21)
BAD_JSON = {42: b"{not json", 77: b"[1, 2]"}
TRUNCATED_AT = 90  # shard 4 (items 80-99) is cut inside item 90's first member: 80-89 read, 90-99 lost
CORRUPT = 5  # 3 bad images + 2 bad JSON = 5% of 100
LOST = 10
GOOD = N - CORRUPT - LOST


def good_ids() -> list[str]:
    bad = {*BAD_IMAGE, 21, *BAD_JSON} | set(range(TRUNCATED_AT, N))
    return [f"item-{i:03d}" for i in range(N) if i not in bad]


def write_corrupt_set(out: Path, prefix: str = "train") -> Path:
    """100 products in 5 shards of 20 (a manifest with their counts), damaged as described above."""
    products = write_products(out.with_name(out.name + "-clean"), N, SHARD_SIZE, prefix)
    with ShardWriter(out, prefix, SHARD_SIZE) as w:
        for i, p in enumerate(products):
            sample = {"__key__": sample_key(p.id), **p.to_sample()}
            if i in BAD_IMAGE:
                sample["0.jpg"] = BAD_IMAGE[i]
            if i == 21:
                sample["0.jpg"] = sample["0.jpg"][: len(sample["0.jpg"]) // 2]
            if i in BAD_JSON:
                sample["product.json"] = BAD_JSON[i]
            w.write(sample)
    shard = out / f"{prefix}-000004.tar"
    with tarfile.open(shard) as tar:
        first = next(m for m in tar.getmembers() if m.name.startswith(f"item-{TRUNCATED_AT:03d}."))
    data = shard.read_bytes()
    shard.write_bytes(data[: first.offset_data + first.size // 2])
    return out
