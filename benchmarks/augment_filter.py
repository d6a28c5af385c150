"""Co-augmentation consistency filter on the built-in world: what each rule drops, consistent vs not.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/augment_filter.py --world runs/moon-ablation/world
        --scorer runs/moon-ablation/learned-s0/encoder [--products 256]

Generates for the first `--products` training items of a world (`mmrep data synth`): consistent
generations (the built-in title rewrite and image editors) and deliberately inconsistent ones (another
product's title; another product's image), scores them with a trained mmrep encoder (`MmrepScorer`) and
prints, per filter rule at its defaults (rank, margin, the old absolute threshold 0.2), the share of
each kind that is dropped. A good rule drops the inconsistent generations and keeps the consistent.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from mmrep.data.readers import iter_products
from mmrep.augment.config import AugmentConfig
from mmrep.augment.consistency import MmrepScorer
from mmrep.augment.images import decode_image
from mmrep.augment.job import CoAugmenter
from mmrep.augment.registry import AUGMENTERS

POOL: list = []  # the world's products the inconsistent editors borrow from


class OtherTitle:
    kind = "title"

    def __call__(self, product, rng):
        other = rng.choice([p for p in POOL if p.id != product.id and p.title])
        return other.title


class OtherImage:
    kind = "image"

    def __call__(self, image, product, rng):
        other = rng.choice([p for p in POOL if p.id != product.id and p.images])
        return decode_image(other.images[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", required=True)
    p.add_argument("--scorer", required=True, help="a trained mmrep encoder dir")
    p.add_argument("--products", type=int, default=256)
    a = p.parse_args()
    products = []
    for prod in iter_products(Path(a.world) / "items" / "train"):
        products.append(prod)
        if len(products) >= a.products:
            break
    POOL[:] = products
    AUGMENTERS["other_title"], AUGMENTERS["other_image"] = OtherTitle, OtherImage
    scorer = MmrepScorer(a.scorer)
    kinds = {"consistent": (["attribute_title"], ["flip", "crop_scale", "background_swap", "color_jitter"]),
             "inconsistent": (["other_title"], ["other_image"])}
    print(f"{len(products)} products of {a.world}, scorer {a.scorer}\n")
    print("| rule | generations | titles dropped | images dropped |\n|---|---|---:|---:|")
    for rule in ("rank", "margin", "threshold"):
        for kind, (titles, images) in kinds.items():
            cfg = AugmentConfig(title_augmenters=titles, image_augmenters=images, filter="mmrep",
                                filter_checkpoint=a.scorer, filter_rule=rule)
            job = CoAugmenter(cfg, scorer)
            rng = random.Random(0)
            for start in range(0, len(products), cfg.filter_batch):
                chunk = products[start:start + cfg.filter_batch]
                job.augment(chunk, [random.Random(rng.getrandbits(64)) for _ in chunk])
            s = job.stats
            t = s["titles_dropped"] / max(1, s["titles_generated"] - s["titles_unscored"])
            i = s["images_dropped"] / max(1, s["images_generated"])
            print(f"| {rule} | {kind} | {100 * t:.0f}% of {s['titles_generated'] - s['titles_unscored']} | "
                  f"{100 * i:.0f}% of {s['images_generated']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
