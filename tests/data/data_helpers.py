"""Helpers for the data-layer tests: tiny real images, shard sets, img2dataset folders."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from mmrep.data.shards import ShardWriter
from mmrep.records import Product, sample_key

FASHION = Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion_product_images_small"


def encode(color=(200, 30, 30), size=(40, 30), fmt="JPEG", mode="RGB") -> bytes:
    buf = io.BytesIO()
    img = Image.new(mode, size, color if mode == "RGB" else color[0])
    # a gradient so that crops and flips change the pixels
    for x in range(size[0]):
        img.putpixel((x, 0), (x * 5 % 256, 0, 0) if mode == "RGB" else x)
    img.save(buf, fmt)
    return buf.getvalue()


def product(i: int, n_images: int = 1, title: str | None = None) -> Product:
    return Product(id=f"item-{i}", title=f"red shirt {i}" if title is None else title, category=["Apparel", "Topwear"],
                   attributes={"colour": "red"}, images=[encode((i % 256, 10 * k, 5)) for k in range(n_images)],
                   labels={"articleType": "Shirts"}, split="train")


def write_set(folder: Path, products: list[Product], per_shard: list[int] | int) -> list[str]:
    """A manifest shard set; `per_shard` a size or a list of sizes (uneven shards)."""
    sizes = per_shard if isinstance(per_shard, list) else None
    if sizes is None:
        with ShardWriter(folder, folder.name, max_count=per_shard) as w:
            for p in products:
                w.write({"__key__": sample_key(p.id), **p.to_sample()})
        return [str(p) for p in sorted(folder.glob("*.tar"))]
    assert sum(sizes) == len(products)
    shards, start = [], 0
    folder.mkdir(parents=True, exist_ok=True)
    for n, size in enumerate(sizes):
        with ShardWriter(folder, f"{folder.name}{n}", max_count=size) as w:
            for p in products[start:start + size]:
                w.write({"__key__": sample_key(p.id), **p.to_sample()})
        start += size
        shards.append(str(folder / f"{folder.name}{n}-000000.tar"))
    (folder / "manifest.json").unlink()  # several writers: keep the folder a plain *.tar set
    return shards


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar written with the standard library only (what other tools produce)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def img2dataset_folder(root: Path) -> Path:
    """img2dataset output: 00000.tar (keys 000000000.. with a failed-download gap), _stats.json, .parquet."""
    root.mkdir(parents=True, exist_ok=True)
    members = []
    ok_keys = ["000000000", "000000001", "000000003", "000000004"]  # 000000002 failed to download
    for n, key in enumerate(ok_keys):
        members += [
            (f"{key}.jpg", encode((40 * n, 100, 100), size=(64, 48))),
            (f"{key}.txt", f"blue jeans {n}".encode()),
            (f"{key}.json", json.dumps({"url": f"http://x/{key}.jpg", "key": key, "status": "success",
                                        "error_message": None, "width": 64, "height": 48, "original_width": 640,
                                        "original_height": 480, "sha256": "ab" * 32, "brand": "acme",
                                        "price": 12.5}).encode()),
        ]
    write_tar(root / "00000.tar", members)
    (root / "00000_stats.json").write_text(json.dumps({"count": 5, "successes": 4, "failed_to_download": 1}))
    (root / "00000.parquet").write_bytes(b"PAR1 not read by mmrep PAR1")
    return root
