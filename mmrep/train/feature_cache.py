"""Training on cached tower features: frozen towers run once per item and view, the heads train many epochs.

A recipe whose pretrained towers are frozen (LiT-style, `trainable_layers: 0`, only the heads learn)
spends nearly all of a live step in forward passes whose results never change: the same image crop and
text view give the same trunk output every epoch. With `feature_cache.enabled` the trainer runs each
tower once per item and view before the first step (inside the time budget: the build time counts),
then trains the heads on batches drawn from the cache. On the Fashion recipe a step costs ~100x less,
so a 15-minute budget covers tens of epochs instead of about one.

Views: `image_views` draws of every image (the first un-augmented when `clean_view`, the others through the
live training transform, `data.image_augment`; core-region crops included), and every text view of `data.text_views` with a positive weight. Each
step takes one image view per item uniformly and one text view by its weight, as the live loader does.
Memory: items x (image_views x images x Di + text views x Dt) x 4 bytes per rank (Fashion: ~0.5 GB).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from mmrep.batch import TowerFeatures
from mmrep.data.collate import Collator, ProductBatch
from mmrep.data.readers import DataConfig, SkipStats, iter_products, resolve_shards
from mmrep.data.tokenize import pad_tokens
from mmrep.data.transforms import CorruptSample
from mmrep.errors import MmrepError


@dataclass
class FeatureCacheConfig:
    """The `feature_cache` section of a training config (pretrain stage, frozen towers only)."""

    enabled: bool = False
    image_views: int = 2  # draws of every image computed once (uniformly sampled per step)
    # the first draw is the un-augmented evaluation input: galleries hold clean catalogue photos, so the heads
    # see them as they will be searched, and the other draws as shoppers photograph them
    clean_view: bool = True
    batch_size: int = 256  # rows per tower forward while the cache is built

    def __post_init__(self) -> None:
        for name in ("image_views", "batch_size"):
            if getattr(self, name) < 1:
                raise MmrepError(f"config key 'feature_cache.{name}' must be >= 1, got {getattr(self, name)}")


def check_cacheable(encoder: nn.Module, stage: str) -> None:
    """One-line errors for a feature cache that cannot reproduce the live training inputs."""
    if stage != "pretrain":
        raise MmrepError(f"feature_cache works for the pretrain stage only (this run is {stage!r}); "
                         "set feature_cache.enabled: false")
    reason = getattr(encoder, "frozen_towers", f"backbone {encoder.cfg.backbone!r} has no cacheable towers")
    if reason:
        raise MmrepError(f"feature_cache needs frozen towers under trainable heads: {reason} "
                         "(or set feature_cache.enabled: false)")
    if encoder.cfg.crop == "view":
        raise MmrepError("feature_cache does not hold a second crop view: use model.crop 'extra_image' or 'none', "
                         "or set feature_cache.enabled: false")


@dataclass
class FeatureCache:
    """One rank's cached tower outputs for N items."""

    ids: list[str]
    category: list[str]
    labels: list[dict]
    image: torch.Tensor  # (N, K, S, Di): K image views, S image slots
    image_mask: torch.Tensor  # (N, S)
    text: torch.Tensor  # (N, V, Dt): V text views
    has_text: torch.Tensor  # (N,)
    text_weights: torch.Tensor  # (V,) the views' sampling weights

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return self.image.numel() * self.image.element_size() + self.text.numel() * self.text.element_size()


@torch.inference_mode()
def build_feature_cache(encoder: nn.Module, collator: Collator, data: DataConfig, cfg: FeatureCacheConfig,
                        rank: int = 0, world: int = 1, stats: SkipStats | None = None,
                        clean: Collator | None = None) -> FeatureCache:
    """Run the frozen towers over this rank's shards (shard i goes to rank i % world). `collator` is the
    training preprocessing; `clean` (the evaluation one) gives the first image view when cfg.clean_view."""
    urls = resolve_shards(data.shards)[rank::world]
    if not urls:
        raise MmrepError(f"data.shards {data.shards!r} has fewer shards than the {world} ranks; write more shards "
                         "or train on fewer ranks")
    stats = stats if stats is not None else SkipStats()
    weights = {v: w for v, w in data.text_views.items() if w > 0}
    modes = _eval_towers(encoder)
    try:
        ids, category, labels, image_chunks, mask_chunks, tokens = [], [], [], [], [], {v: [] for v in weights}
        chunk: list = []
        # verify_images: undecodable images are skipped and counted (or fail in strict mode) by the shared reader,
        # with the same one-line messages as every other loader
        for product in iter_products(urls, strict=data.strict, stats=stats, verify_images=True):
            try:  # every view of a product, or none of it: an image that fails later drops the item, counted
                views = [(clean if cfg.clean_view and k == 0 and clean is not None else collator).prepare_product(product)
                         for k in range(cfg.image_views)]
            except CorruptSample as e:
                if data.strict:
                    raise
                stats.record(e.reason or "bad_image", str(e), key=product.id)
                continue
            ids.append(product.id)
            category.append(views[0].category)
            labels.append(views[0].labels)
            for v in weights:
                tokens[v].append(collator.tokenizer.encode_product(product, v))
            chunk.append(views)
            if len(chunk) == cfg.batch_size:
                _encode_images(encoder, chunk, image_chunks, mask_chunks)
                chunk = []
        if chunk:
            _encode_images(encoder, chunk, image_chunks, mask_chunks)
        if not ids:
            raise MmrepError(f"data.shards {data.shards!r} gave no usable product on rank {rank}; check the shards "
                             "(mmrep data inspect)")
        slots = max(m.shape[1] for m in mask_chunks)
        image = torch.cat([_pad_dim(x, slots, 2) for x in image_chunks])
        image_mask = torch.cat([_pad_dim(m, slots, 1) for m in mask_chunks])
        text = torch.stack([_encode_texts(encoder, tokens[v], cfg.batch_size) for v in weights], dim=1)
        has_text = torch.tensor([len(ids_) > 0 for ids_, _ in tokens[next(iter(weights))]])
    finally:
        _restore(modes)
    return FeatureCache(ids, category, labels, image, image_mask, text, has_text,
                        torch.tensor(list(weights.values()), dtype=torch.float64))


def _eval_towers(encoder: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Put the frozen towers in eval mode (BatchNorm statistics, no dropout); returns what to restore."""
    towers = [encoder.clip.visual.trunk, encoder.clip.text.transformer]
    modes = [(m, m.training) for t in towers for m in t.modules()]
    for t in towers:
        t.eval()
    return modes


def _restore(modes: list[tuple[nn.Module, bool]]) -> None:
    for m, training in modes:
        m.training = training


def _pad_dim(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    extra = size - x.shape[dim]
    if extra <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def _encode_images(encoder: nn.Module, chunk: list, image_out: list, mask_out: list) -> None:
    """(B products x K views of prepared items) -> features (B, K, S, Di) and the slot mask (B, S)."""
    b, k = len(chunk), len(chunk[0])
    slots = max(len(item.images) for views in chunk for item in views)
    flat = [img for views in chunk for item in views for img in item.images]
    mask = torch.zeros(b, slots, dtype=torch.bool)
    for i, views in enumerate(chunk):
        mask[i, : len(views[0].images)] = True
    if not flat:
        image_out.append(torch.zeros(b, k, slots, 0))
        mask_out.append(mask)
        return
    feats = encoder.image_trunk(torch.stack(flat))
    out = feats.new_zeros(b, k, slots, feats.shape[1])
    row = 0
    for i, views in enumerate(chunk):
        for j, item in enumerate(views):
            n = len(item.images)
            out[i, j, :n] = feats[row: row + n]
            row += n
    image_out.append(out)
    mask_out.append(mask)


def _encode_texts(encoder: nn.Module, tokens: list, batch_size: int) -> torch.Tensor:
    """One text view of every item -> (N, Dt), in batches of similar length (little padding)."""
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i][0]))
    out: torch.Tensor | None = None
    for start in range(0, len(order), batch_size):
        rows = [i for i in order[start: start + batch_size] if tokens[i][0]]
        if not rows:
            continue
        ids, _, mask = pad_tokens([tokens[i] for i in rows])
        feats = encoder.text_trunk(ids * mask)
        if out is None:
            out = feats.new_zeros(len(tokens), feats.shape[1])
        out[torch.tensor(rows)] = feats
    return out if out is not None else torch.zeros(len(tokens), 0)


class FeatureCacheLoader:
    """The trainer's loader over a feature cache: `set_epoch`, `len()` and `skip_stats`, like `readers.Loader`.

    The cache is built at the first iteration, so its time falls inside the training loop's clock (and
    budget); `build_seconds` says how long it took. Each epoch is one seeded permutation of the items
    (per rank), cut into full batches; every item draws its image and text view for that epoch."""

    resampled = False

    def __init__(self, cfg: FeatureCacheConfig, data: DataConfig, encoder: nn.Module, collator: Collator,
                 rank: int = 0, world: int = 1, clean: Collator | None = None):
        self.cfg, self.data, self.encoder, self.collator, self.clean = cfg, data, encoder, collator, clean
        self.rank, self.world = rank, world
        self.skip_stats = SkipStats()
        self.cache: FeatureCache | None = None
        self.build_seconds = 0.0
        self.epoch = 0

    def build(self) -> FeatureCache:
        if self.cache is None:
            t0 = time.perf_counter()
            self.cache = build_feature_cache(self.encoder, self.collator, self.data, self.cfg, self.rank, self.world,
                                             self.skip_stats, self.clean)
            self.build_seconds = time.perf_counter() - t0
            if self.rank == 0:
                c = self.cache
                print(f"feature cache: {len(c)} items x {self.cfg.image_views} image views, {c.text.shape[1]} text "
                      f"views ({c.nbytes / 2**20:.0f} MiB) built in {self.build_seconds:.1f} s", flush=True)
        return self.cache

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.build()) // self.data.batch_size

    def __iter__(self) -> Iterator[ProductBatch]:
        cache = self.build()
        g = torch.Generator().manual_seed(zlib.crc32(f"{self.data.seed}/{self.rank}/{self.epoch}".encode()))
        n, b = len(cache), self.data.batch_size
        order = torch.randperm(n, generator=g)
        image_view = torch.randint(cache.image.shape[1], (n,), generator=g)
        text_view = torch.multinomial(cache.text_weights, n, replacement=True, generator=g)
        for start in range(0, n - b + 1, b):
            rows = order[start: start + b]
            yield self._batch(cache, rows, image_view[rows], text_view[rows])
        self.epoch += 1

    @staticmethod
    def _batch(cache: FeatureCache, rows: torch.Tensor, image_view: torch.Tensor, text_view: torch.Tensor) -> ProductBatch:
        features = TowerFeatures(image=cache.image[rows, image_view], image_mask=cache.image_mask[rows],
                                 text=cache.text[rows, text_view][:, None], text_mask=cache.has_text[rows][:, None])
        idx: list[Any] = rows.tolist()
        return ProductBatch(ids=[cache.ids[i] for i in idx], inputs=features, category=[cache.category[i] for i in idx],
                            labels=[cache.labels[i] for i in idx])
