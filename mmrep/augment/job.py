"""The augment job: products in batches -> generations -> consistency filter -> a new shard set."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mmrep import config
from mmrep.augment.config import AugmentConfig, AugmentRun
from mmrep.augment.consistency import ConsistencyScorer, beat_fraction, build_scorer, keep_generation
from mmrep.augment.images import decode_image, encode_image
from mmrep.augment.registry import build_augmenter
from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_dir, check_replaceable
from mmrep.records import Product, sample_key

EVAL_SPLITS = frozenset({"val", "valid", "validation", "dev", "test", "testing", "eval", "evaluation", "heldout"})


@dataclass
class _Generated:
    """One product's generations before the consistency filter."""

    product: Product
    titles: list[str]
    images: list[tuple[bytes, str]]


class CoAugmenter:
    """Augments products in batches (`augment` = generate + filter); counts generations and drops in `stats`."""

    def __init__(self, cfg: AugmentConfig, scorer: ConsistencyScorer | None = None):
        self.cfg = cfg
        self.titles = [(n, build_augmenter(n, cfg.options.get(n))) for n in cfg.title_augmenters]
        self.images = [(n, build_augmenter(n, cfg.options.get(n))) for n in cfg.image_augmenters]
        self.scorer = scorer
        self.stats = {k: 0 for k in ("products", "titles_generated", "titles_kept", "titles_dropped", "titles_unscored",
                                     "images_generated", "images_kept", "images_dropped", "images_skipped",
                                     "titles_unjudged", "images_unjudged")}

    def __call__(self, p: Product, rng: random.Random) -> Product:
        """One product alone (no in-batch candidates: the relative rules keep its generations)."""
        return self.augment([p], [rng])[0]

    def augment(self, products: Sequence[Product], rngs: Sequence[random.Random]) -> list[Product]:
        """A batch of products: generate for each, then filter all generations against the batch."""
        return self._filter([self._generate(p, rng) for p, rng in zip(products, rngs)])

    def _generate(self, p: Product, rng: random.Random) -> _Generated:
        self.stats["products"] += 1
        titles: list[str] = []
        if self.titles and self.cfg.titles_per_product and (p.title.strip() or p.attributes):
            cands = [rng.choice(self.titles)[1](p, rng) for _ in range(self.cfg.titles_per_product)]
            titles = [c for c in cands if c and c != p.title]
            self.stats["titles_generated"] += len(titles)
        images: list[tuple[bytes, str]] = []
        if self.images and p.images and self.cfg.images_per_product:
            for _ in range(self.cfg.images_per_product):
                k = rng.randrange(len(p.images))
                out = rng.choice(self.images)[1](decode_image(p.images[k]), p, rng)
                if out is None:
                    self.stats["images_skipped"] += 1
                    continue
                images.append(encode_image(out, p.image_exts[k]))
            self.stats["images_generated"] += len(images)
        return _Generated(p, titles, images)

    def _filter(self, gens: list[_Generated]) -> list[Product]:
        scorer, cfg = self.scorer, self.cfg
        n = len(gens)
        # the batch's originals: main images and titles, each product's mismatched candidates
        has_img = [bool(g.product.images) for g in gens]
        has_txt = [bool(g.product.title.strip()) for g in gens]
        if scorer is not None:
            img_rows = [i for i in range(n) if has_img[i]]
            txt_rows = [i for i in range(n) if has_txt[i]]
            main = scorer.image_embeddings([gens[i].product.images[0] for i in img_rows]) if img_rows else None
            orig = scorer.text_embeddings([gens[i].product.title for i in txt_rows]) if txt_rows else None
        out = []
        for j, g in enumerate(gens):
            p, title = g.product, g.product.title
            # titles: candidates scored against the main image; the best kept one replaces the title
            if g.titles:
                if scorer is None or not has_img[j]:
                    self.stats["titles_unscored"] += len(g.titles)
                    title = g.titles[0]
                else:
                    cand = scorer.text_embeddings(g.titles)  # (C, D)
                    sims = cand @ main.T  # (C, n_img)
                    own = img_rows.index(j)
                    others = np.delete(sims, own, axis=1)
                    ref = None  # how the original title ranks against the same images
                    if has_txt[j]:
                        ref_sims = main @ orig[txt_rows.index(j)]
                        ref = beat_fraction(float(ref_sims[own]), np.delete(ref_sims, own))
                    kept = []
                    for c, text in enumerate(g.titles):
                        keep, judged = keep_generation(float(sims[c, own]), others[c], cfg, ref)
                        self.stats["titles_unjudged"] += int(not judged)
                        self.stats["titles_dropped"] += int(not keep)
                        if keep:
                            kept.append((float(sims[c, own]), text))
                    if kept:
                        title = max(kept)[1]
                self.stats["titles_kept"] += int(title != p.title)
            # images: generated from the originals, scored against the (final) title
            new_images = g.images
            if g.images and title.strip() and scorer is not None:
                emb = scorer.image_embeddings([b for b, _ in g.images])  # (G, D)
                own_txt = orig[txt_rows.index(j)] if (has_txt[j] and title == p.title) else scorer.text_embeddings([title])[0]
                other_txt = np.delete(orig, txt_rows.index(j), axis=0) if has_txt[j] else orig
                others = emb @ other_txt.T if other_txt is not None else np.zeros((len(g.images), 0))
                ref = None  # how the original main image ranks against the same titles
                if has_img[j] and other_txt is not None:
                    main_j = main[img_rows.index(j)]
                    ref = beat_fraction(float(main_j @ own_txt), other_txt @ main_j)
                new_images = []
                for k, gen in enumerate(g.images):
                    keep, judged = keep_generation(float(emb[k] @ own_txt), others[k], cfg, ref)
                    self.stats["images_unjudged"] += int(not judged)
                    self.stats["images_dropped"] += int(not keep)
                    if keep:
                        new_images.append(gen)
            self.stats["images_kept"] += len(new_images)
            out.append(Product(id=p.id, title=title, description=p.description, category=list(p.category),
                               attributes=dict(p.attributes), images=[*p.images, *(b for b, _ in new_images)],
                               image_exts=[*p.image_exts, *(e for _, e in new_images)], labels=dict(p.labels),
                               split=p.split))
        return out


def _is_eval(name: str) -> bool:
    return name.strip().lower() in EVAL_SPLITS


def input_split(shards: str | Path) -> str:
    """The split name of a shard set: its manifest's, else the folder name."""
    from mmrep.data.shards import MANIFEST, read_manifest

    path = Path(shards)
    if (path / MANIFEST).is_file():
        return str(read_manifest(path).get("split") or path.name)
    return path.name


def guard_eval(names: Iterable[str], allow: bool) -> None:
    bad = sorted({n for n in names if n and _is_eval(n)})
    if bad and not allow:
        raise MmrepError(f"refusing to augment evaluation split {bad[0]!r}: evaluation data are never augmented "
                         "(pass --unsafe-allow-eval-split only if you really mean to contaminate it)")


def augment_shards(cfg: AugmentConfig, overwrite: bool = False, scorer: ConsistencyScorer | None = None) -> dict[str, Any]:
    """Run the job: <cfg.shards> -> <cfg.out>/<split>/ (atomic). Returns the manifest (with stats)."""
    from mmrep.data.readers import SkipStats, iter_products
    from mmrep.data.shards import ShardWriter

    if not cfg.shards or not cfg.out:
        raise MmrepError("augment needs an input shard set and an output folder (--shards DIR --out DIR)")
    src_split = input_split(cfg.shards)
    split = cfg.split or src_split
    guard_eval([src_split, split], cfg.unsafe_allow_eval_split)
    dest = Path(cfg.out) / split
    if dest.resolve() == Path(cfg.shards).resolve():
        raise MmrepError(f"augment output {dest} is the input shard set; write a new set elsewhere")
    check_replaceable(dest, overwrite, ("manifest.json", "augment_config.yaml"))
    if scorer is None:
        scorer = build_scorer(cfg.filter, cfg.filter_checkpoint)
    job = CoAugmenter(cfg, scorer)
    skipped = SkipStats()
    rng = random.Random(cfg.seed)
    with atomic_dir(dest, "augment", ("manifest.json", "augment_config.yaml")) as tmp:
        writer = ShardWriter(tmp, prefix=split, max_count=cfg.shard_size, kind="products")
        try:
            batch: list[Product] = []
            rngs: list[random.Random] = []

            def flush() -> None:
                for out in job.augment(batch, rngs):
                    writer.write({"__key__": sample_key(out.id), **out.to_sample()})
                batch.clear()
                rngs.clear()

            for n, p in enumerate(iter_products(cfg.shards, cfg.strict, skipped, verify_images=True)):
                if cfg.max_products and n >= cfg.max_products:
                    break
                guard_eval([p.split], cfg.unsafe_allow_eval_split)
                batch.append(p)
                rngs.append(random.Random(rng.getrandbits(64)))
                if len(batch) >= cfg.filter_batch:
                    flush()
            if batch:
                flush()
        except BaseException:
            writer.abort()
            raise
        skipped.report(f"augment {cfg.shards}")
        stats = dict(job.stats, input_skipped=skipped.samples)
        manifest = writer.close({"augment": stats, "source": str(cfg.shards)})
        config.save_resolved(AugmentRun(cfg), tmp, "augment_config.yaml")
    return manifest
