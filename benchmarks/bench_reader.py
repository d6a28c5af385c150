"""Reader throughput: images/s decoded + transformed through mmrep's training loader vs a bare
webdataset pipeline (WebDataset -> decode("pil") -> torchvision transform -> batched) on the same
shards, same run, same worker count.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reader.py [--n 4000] [--workers 2] [--sizes 64 224]

Shards are built from the first N Fashion Product Images (../shared/data) or, when that folder is
absent or --synthetic W H is given, from synthetic JPEGs (60x80 by default). mmrep's loader does more work per sample than
the bare one (product JSON, tokenization, modality masks, skip accounting); both read, decode and
transform every image.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torchvision import transforms as T

from mmrep.data.catalog import ImportConfig, import_catalog, shared_data_dir
from mmrep.data.collate import Collator
from mmrep.data.readers import DataConfig, resolve_shards, train_loader
from mmrep.data.shards import ShardWriter
from mmrep.data.tokenize import ProductTokenizer, TokenizerConfig
from mmrep.data.transforms import CLIP_MEAN, CLIP_STD, ImageTransform
from mmrep.records import Product, sample_key


def build_shards(root: Path, n: int, synthetic: tuple[int, int] | None = None) -> tuple[str, str]:
    fashion = shared_data_dir() / "fashion_product_images_small"
    shard_size = max(n // 8, 1)
    if fashion.is_dir() and synthetic is None:
        import pandas as pd

        styles = pd.read_csv(fashion / "styles.csv", dtype=str, keep_default_na=False)
        styles = styles[[(fashion / "images" / f"{i}.jpg").is_file() for i in styles.id]].iloc[:n]
        styles.to_csv(root / "subset.csv", index=False)
        cfg = ImportConfig(table=str(root / "subset.csv"), images=str(fashion / "images"), title_col="productDisplayName",
                           image_pattern="{id}.jpg", category_cols=["masterCategory", "subCategory", "articleType"],
                           attribute_cols=["gender", "baseColour", "season", "usage", "year"], shard_size=shard_size)
        import_catalog(cfg, root / "shards")
        return str(root / "shards" / "train"), f"Fashion Product Images, first {len(styles)} items (60x80 JPEG)"
    rng = np.random.default_rng(0)
    w_, h_ = synthetic or (60, 80)
    with ShardWriter(root / "shards" / "train", "train", max_count=shard_size) as w:
        for i in range(n):
            arr = (rng.random((h_, w_, 3)) * 64 + np.linspace(0, 190, w_)[None, :, None]).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=75)
            p = Product(id=str(i), title=f"synthetic item {i}", category=["A", "B"], images=[buf.getvalue()])
            w.write({"__key__": sample_key(p.id), **p.to_sample()})
    return str(root / "shards" / "train"), f"synthetic {w_}x{h_} JPEGs, {n} items"


def bare_pipeline(urls: list[str], size: int, workers: int, batch: int) -> wds.WebLoader:
    tf = T.Compose([T.RandomResizedCrop(size, scale=(0.7, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                    T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    ds = (wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.single_node_only,
                         workersplitter=wds.split_by_worker, seed=0)
          .shuffle(1000).decode("pil").to_tuple("0.jpg").map_tuple(tf).batched(batch, partial=False))
    return wds.WebLoader(ds, batch_size=None, num_workers=workers)


def timed(loader, count) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    for batch in loader:
        n += count(batch)
    return time.perf_counter() - start, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--synthetic", type=int, nargs=2, metavar=("W", "H"),
                    help="use synthetic W x H JPEGs instead of Fashion (e.g. 800 600: large photos, JPEG draft mode)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tokenizer = ProductTokenizer(TokenizerConfig())
    with tempfile.TemporaryDirectory() as tmp:
        folder, what = build_shards(Path(tmp), args.n, tuple(args.synthetic) if args.synthetic else None)
        urls = resolve_shards(folder)
        print(f"shards: {what}; {len(urls)} shards; {args.workers} workers; batch {args.batch}; "
              f"medians of {args.repeats} alternating passes; paired ratio = median of per-pass ratios")
        print(f"{'size':>5} {'bare wds img/s':>15} {'mmrep img/s':>12} {'ratio':>6} {'paired ratio':>13}")
        for size in args.sizes:
            cfg = DataConfig(shards=folder, batch_size=args.batch, num_workers=args.workers, max_images=1,
                             shuffle_buffer=1000)
            collator = Collator(tokenizer, ImageTransform(size, train=True, seed=0), max_images=1)
            mm = train_loader(cfg, collator, rank=0, world_size=1)
            bare = bare_pipeline(urls, size, args.workers, args.batch)
            rates: dict[str, list[float]] = {"bare": [], "mmrep": []}
            for _ in range(args.repeats):
                t, n = timed(bare, lambda b: len(b[0]))
                rates["bare"].append(n / t)
                t, n = timed(mm, lambda b: int(b.inputs.image_mask.sum()))
                rates["mmrep"].append(n / t)
            b, m = statistics.median(rates["bare"]), statistics.median(rates["mmrep"])
            paired = statistics.median(x / y for x, y in zip(rates["mmrep"], rates["bare"]))
            print(f"{size:>5} {b:>15.0f} {m:>12.0f} {m / b:>6.2f} {paired:>13.2f}   (best {max(rates['bare']):.0f} / "
                  f"{max(rates['mmrep']):.0f})")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
