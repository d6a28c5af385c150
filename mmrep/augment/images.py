"""Built-in image augmenters. Flip, crop-and-resize and colour jitter are torchvision's functional
transforms, with their parameters drawn from the product's own `random.Random` (so a seed gives the same
shards, and no global RNG is touched); background swap is ours.
"""

from __future__ import annotations

import io
import random

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from mmrep.augment.registry import register_augmenter
from mmrep.errors import MmrepError
from mmrep.records import Product


def decode_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def encode_image(image: Image.Image, ext: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if ext.lower() in ("jpg", "jpeg"):
        image.save(buf, "JPEG", quality=95)
        return buf.getvalue(), "jpg"
    image.save(buf, "PNG")
    return buf.getvalue(), "png"


@register_augmenter("flip")
class Flip:
    kind = "image"

    def __call__(self, image: Image.Image, product: Product, rng: random.Random) -> Image.Image:
        return TF.hflip(image)


@register_augmenter("crop_scale")
class CropScale:
    """Random crop covering `min_area`..1 of the image, resized back (the subject stays mostly in view)."""

    kind = "image"

    def __init__(self, min_area: float = 0.7):
        if not 0 < min_area <= 1:
            raise MmrepError(f"augment.options.crop_scale.min_area must be in (0, 1], got {min_area}")
        self.min_area = min_area

    def __call__(self, image: Image.Image, product: Product, rng: random.Random) -> Image.Image:
        w, h = image.size
        side = rng.uniform(self.min_area, 1.0) ** 0.5
        cw, ch = max(1, round(w * side)), max(1, round(h * side))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return TF.resized_crop(image, y, x, ch, cw, [h, w], InterpolationMode.BICUBIC)


@register_augmenter("background_swap")
class BackgroundSwap:
    """Replace a plain studio background by a random light grey; the product's pixels are untouched.

    The background colour is the border's median; background = pixels within `tolerance` of it that
    connect to the border (a flood fill, so white parts inside the product stay). Skipped (None) when
    under `min_border` of the border is plain (a scene, not a studio shot) or when the background
    would cover more than `max_fraction` (no separable subject)."""

    kind = "image"

    def __init__(self, tolerance: float = 30.0, min_border: float = 0.75, max_fraction: float = 0.9):
        self.tolerance, self.min_border, self.max_fraction = tolerance, min_border, max_fraction

    def __call__(self, image: Image.Image, product: Product, rng: random.Random) -> Image.Image | None:
        a = np.asarray(image.convert("RGB"), dtype=np.float32)
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        bg = np.median(border, axis=0)
        if (np.linalg.norm(border - bg, axis=-1) < self.tolerance).mean() < self.min_border:
            return None
        near = np.linalg.norm(a - bg, axis=-1) < self.tolerance
        mask = np.zeros_like(near)
        mask[0], mask[-1], mask[:, 0], mask[:, -1] = near[0], near[-1], near[:, 0], near[:, -1]
        while True:  # grow from the border through background-coloured pixels (4-neighbourhood)
            grown = mask.copy()
            grown[1:] |= mask[:-1]
            grown[:-1] |= mask[1:]
            grown[:, 1:] |= mask[:, :-1]
            grown[:, :-1] |= mask[:, 1:]
            grown &= near
            if (grown == mask).all():
                break
            mask = grown
        if mask.mean() > self.max_fraction or not mask.any():
            return None
        # a light, low-saturation backdrop so that it never reads as the product's colour
        grey = rng.randint(190, 250)
        a[mask] = np.array([min(255, max(0, grey + rng.randint(-12, 12))) for _ in range(3)], dtype=np.float32)
        return Image.fromarray(a.clip(0, 255).astype(np.uint8))


@register_augmenter("color_jitter")
class ColorJitter:
    """Brightness / contrast / saturation jitter, no hue shift: the colour attribute stays plausible."""

    kind = "image"

    def __init__(self, brightness: float = 0.15, contrast: float = 0.15, saturation: float = 0.1):
        if max(brightness, contrast, saturation) > 0.3:
            raise MmrepError("augment.options.color_jitter: keep brightness/contrast/saturation <= 0.3 "
                             "so that the product's colour attribute stays true")
        self.factors = (brightness, contrast, saturation)

    def __call__(self, image: Image.Image, product: Product, rng: random.Random) -> Image.Image:
        b, c, s = self.factors
        image = TF.adjust_brightness(image, rng.uniform(1 - b, 1 + b))
        image = TF.adjust_contrast(image, rng.uniform(1 - c, 1 + c))
        return TF.adjust_saturation(image, rng.uniform(1 - s, 1 + s))
