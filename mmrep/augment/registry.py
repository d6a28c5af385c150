"""Pluggable augmenters: a title augmenter maps a product to a new title, an image augmenter maps
(PIL image, product) to a new image or None. `@register_augmenter("name")` adds one."""

from __future__ import annotations

import random
from typing import Any, Callable, Protocol

from PIL import Image

from mmrep.errors import MmrepError
from mmrep.records import Product


class TitleAugmenter(Protocol):
    kind: str  # "title"

    def __call__(self, product: Product, rng: random.Random) -> str: ...


class ImageAugmenter(Protocol):
    kind: str  # "image"

    def __call__(self, image: Image.Image, product: Product, rng: random.Random) -> Image.Image | None: ...


AUGMENTERS: dict[str, Any] = {}


def register_augmenter(name: str) -> Callable[[type], type]:
    """Class decorator: `@register_augmenter("mine")` on a class with `kind = "title" | "image"`."""
    def add(cls: type) -> type:
        if getattr(cls, "kind", None) not in ("title", "image"):
            raise TypeError(f"augmenter {name!r} needs a class attribute kind = 'title' or 'image'")
        AUGMENTERS[name] = cls
        return cls
    return add


def build_augmenter(name: str, options: dict[str, Any] | None = None) -> TitleAugmenter | ImageAugmenter:
    if name not in AUGMENTERS:
        raise MmrepError(f"augmenter {name!r} is not registered (known: {', '.join(sorted(AUGMENTERS))})")
    try:
        return AUGMENTERS[name](**(options or {}))
    except TypeError as e:
        raise MmrepError(f"augment.options.{name}: {e}") from None
