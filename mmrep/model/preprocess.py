"""The one preprocessing builder: a model's `Collator` for training, export and evaluation alike.

It matches the model's tokenizer, image size and normalisation, and its core-region crop setting
(`crop: view` adds a second view, `crop: extra_image` feeds each image followed by its crop). Training
adds random crops / flips and sampled text views; everything else is identical, so an item gives the
same input tensors wherever it is encoded (tests/train/test_preprocess.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmrep.data.collate import Collator
from mmrep.data.tokenize import ProductTokenizer, TextViews
from mmrep.data.transforms import ImageAugment, ImageTransform
from mmrep.model.config import ModelConfig
from mmrep.model.crop import collator_hooks


def image_transform(cfg: ModelConfig, train: bool = False, seed: int | None = None,
                    augment: ImageAugment | None = None) -> ImageTransform:
    """The ImageTransform matching this model (size, mean, std); `train` applies `augment` (default: crops, flips)."""
    return ImageTransform(cfg.image_size, cfg.image_mean, cfg.image_std, train=train, seed=seed, augment=augment)


def build_preprocess(cfg: ModelConfig, max_images: int, train: bool = False, seed: int | None = None,
                     text_views: dict[str, float] | None = None, tokenizer: ProductTokenizer | None = None,
                     augment: ImageAugment | None = None) -> Collator:
    """The Collator for `cfg`; `text_views` ({view: weight}) and `augment` apply in training only (eval encodes
    the "full" text of un-augmented images)."""
    view_seed = None if seed is None else seed + 1
    view, images_prep = collator_hooks(cfg, image_transform(cfg, train, view_seed, augment))
    sampler = TextViews(text_views, seed) if train and text_views else None
    return Collator(tokenizer or ProductTokenizer(cfg.tokenizer), image_transform(cfg, train, seed, augment), max_images,
                    view_transform=view, images_prep=images_prep, text_views=sampler)


@dataclass(frozen=True)
class Preprocess:
    """A model's preprocessing, as `mmrep.model.factory` returns it beside the encoder.

    `collator(train)` builds a fresh Collator each call (its random crops / text views start from `seed`),
    so a rebuilt training loader replays the same stream."""

    cfg: ModelConfig
    max_images: int
    seed: int | None = None
    text_views: dict[str, float] | None = field(default=None)
    augment: ImageAugment | None = None  # training image augmentation (data.image_augment)

    def collator(self, train: bool = False) -> Collator:
        return build_preprocess(self.cfg, self.max_images, train=train, seed=self.seed, text_views=self.text_views,
                                augment=self.augment)
