"""The `augment` config section (validated against the augmenter registry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mmrep.augment.registry import AUGMENTERS
from mmrep.errors import MmrepError


@dataclass
class AugmentConfig:
    """The `augment` config section."""

    shards: str = ""  # input shard set (a split folder with manifest.json)
    out: str = ""  # output root: the new set is written to <out>/<split>/
    split: str = ""  # output split name (default: the input's)
    title_augmenters: list[str] = field(default_factory=lambda: ["attribute_title"])
    image_augmenters: list[str] = field(default_factory=lambda: ["flip", "crop_scale", "background_swap", "color_jitter"])
    titles_per_product: int = 1  # candidate rewrites per product (the best accepted one is kept)
    images_per_product: int = 2  # generated images per product (each from a random image augmenter)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-augmenter kwargs, e.g. {hf_vlm: {path: ...}}
    filter: Literal["none", "mmrep", "open_clip"] = "none"
    filter_checkpoint: str = ""  # mmrep encoder dir, or open_clip `local-dir:PATH` / PATH
    filter_rule: Literal["rank", "margin", "threshold"] = "rank"
    filter_beat_frac: float = 0.9  # rank: share of in-batch mismatched candidates the matched cosine must beat
    filter_rank_slack: float = 0.1  # rank: how far below its original's beat fraction a generation may fall
    filter_margin: float = 0.05  # margin: matched cosine - mean mismatched cosine must reach this
    filter_threshold: float = 0.2  # threshold: image-title cosine below which a generation is dropped
    filter_batch: int = 64  # products scored together (each other's mismatched candidates)
    seed: int = 0
    shard_size: int = 1000
    max_products: int = 0  # 0 = all
    unsafe_allow_eval_split: bool = False  # UNSAFE: augmenting val/test leaks generated data into evaluation
    strict: bool = False  # fail on the first corrupt input sample / damaged shard instead of skipping and counting

    def __post_init__(self) -> None:
        for key in ("titles_per_product", "images_per_product", "max_products"):
            if getattr(self, key) < 0:
                raise MmrepError(f"augment.{key} must be >= 0, got {getattr(self, key)}")
        if self.shard_size < 1:
            raise MmrepError(f"augment.shard_size must be >= 1, got {self.shard_size}")
        if self.filter_batch < 2:
            raise MmrepError(f"augment.filter_batch must be >= 2 (products are each other's mismatched candidates), "
                             f"got {self.filter_batch}")
        if not 0.0 <= self.filter_beat_frac <= 1.0:
            raise MmrepError(f"augment.filter_beat_frac must be in [0, 1], got {self.filter_beat_frac}")
        for name in [*self.title_augmenters, *self.image_augmenters]:
            if name not in AUGMENTERS:
                raise MmrepError(f"augmenter {name!r} is not registered (known: {', '.join(sorted(AUGMENTERS))})")
        for name in self.title_augmenters:
            if AUGMENTERS[name].kind != "title":
                raise MmrepError(f"augment.title_augmenters: {name!r} is an image augmenter")
        for name in self.image_augmenters:
            if AUGMENTERS[name].kind != "image":
                raise MmrepError(f"augment.image_augmenters: {name!r} is a title augmenter")
        if self.filter != "none" and not self.filter_checkpoint:
            raise MmrepError(f"augment.filter is {self.filter!r}: set augment.filter_checkpoint to its checkpoint")


@dataclass
class AugmentRun:
    augment: AugmentConfig = field(default_factory=AugmentConfig)
