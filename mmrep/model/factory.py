"""One call for an encoder and its matching preprocessing (open_clip's `create_model_and_transforms`).

Training, export and evaluation all get their `Collator`s from the `Preprocess` returned here, so an item
is fed the same tensors everywhere (crops included); the backbone comes from `mmrep.model.registry`.
"""

from __future__ import annotations

from pathlib import Path

from mmrep.data.transforms import ImageAugment
from mmrep.model.config import ModelConfig
from mmrep.model.encoder import Encoder, load_encoder
from mmrep.model.preprocess import Preprocess
from mmrep.model.registry import build_encoder


def create_model_and_preprocess(cfg: ModelConfig, max_images: int = 4, seed: int | None = None,
                                text_views: dict[str, float] | None = None, load_pretrained: bool = True,
                                augment: ImageAugment | None = None) -> tuple[Encoder, Preprocess]:
    """A new encoder for `cfg` (random init, plus any pretrained tower weights it names) and its preprocessing."""
    encoder = build_encoder(cfg, load_pretrained=load_pretrained)
    return encoder, Preprocess(encoder.cfg, max_images, seed, text_views, augment)


def load_model_and_preprocess(path: str | Path, max_images: int = 4, seed: int | None = None,
                              text_views: dict[str, float] | None = None, map_location: str = "cpu",
                              augment: ImageAugment | None = None) -> tuple[Encoder, Preprocess]:
    """An encoder dir written by `save_encoder` (eval mode, exact weights) and its preprocessing."""
    encoder = load_encoder(path, map_location)
    return encoder, Preprocess(encoder.cfg, max_images, seed, text_views, augment)
