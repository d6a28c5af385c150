"""Core-region crop (MOON): find the product in a catalogue photo and cut it out.

MOON used a grounding model that finds the subject named in the title; croppers here are
pluggable (`register_cropper`). The default `border` heuristic is fast and works on catalogue
photos: the background is the colour of the image border, the product is the bounding box of
pixels that differ from it, grown by a margin and kept above a minimum size; when no clear
foreground exists it returns the full image.

The data layer calls it (ModelConfig.crop says how): `core_region_view(transform)` is the
collator's `view_transform` (a second view); `collator_hooks` feeds crops as extra images (each after its original).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmrep.errors import MmrepError

ImageLike = Union[bytes, Image.Image]
Box = tuple[int, int, int, int]  # left, top, right, bottom (PIL convention)


@dataclass
class BorderCropper:
    """Foreground box against the border colour.

    tolerance: per-channel distance (0-255) under which a pixel counts as background;
    margin: fraction of the box size added on each side; min_size: the box's side is at least this
    fraction of the image side; min_foreground: below this foreground fraction keep the full image.
    """

    tolerance: float = 24.0
    margin: float = 0.05
    min_size: float = 0.2
    min_foreground: float = 0.005
    work_size: int = 128  # find the box on a thumbnail, apply it to the original

    def box(self, image: Image.Image) -> Box:
        w, h = image.size
        scale = min(1.0, self.work_size / max(w, h))
        thumb = image.convert("RGB")
        if scale < 1.0:
            thumb = thumb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        a = np.asarray(thumb, dtype=np.int16)
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        background = np.median(border, axis=0)
        fg = (np.abs(a - background).max(axis=-1) > self.tolerance)
        if fg.mean() < self.min_foreground or fg.all():
            return 0, 0, w, h
        rows, cols = np.nonzero(fg.any(axis=1))[0], np.nonzero(fg.any(axis=0))[0]
        th, tw = fg.shape
        box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)
        box /= np.array([tw, th, tw, th])  # fractions of the image
        return _grow(box, self.margin, self.min_size, w, h)


def _grow(box: np.ndarray, margin: float, min_size: float, w: int, h: int) -> Box:
    """Fractional box -> integer box with a margin, at least `min_size` of each side, inside the image."""
    left, top, right, bottom = box
    bw, bh = right - left, bottom - top
    left, right = left - margin * bw, right + margin * bw
    top, bottom = top - margin * bh, bottom + margin * bh
    cx, cy = (left + right) / 2, (top + bottom) / 2
    bw, bh = max(right - left, min_size), max(bottom - top, min_size)
    left, right = np.clip([cx - bw / 2, cx + bw / 2], 0, 1)
    top, bottom = np.clip([cy - bh / 2, cy + bh / 2], 0, 1)
    box_px = (int(np.floor(left * w)), int(np.floor(top * h)), int(np.ceil(right * w)), int(np.ceil(bottom * h)))
    return box_px[0], box_px[1], max(box_px[2], box_px[0] + 1), max(box_px[3], box_px[1] + 1)


CROPPERS: dict[str, Callable[[], object]] = {"border": BorderCropper}


def register_cropper(name: str, factory: Callable[[], object]) -> None:
    """Add a cropper: `factory()` returns an object with `.box(PIL.Image) -> (left, top, right, bottom)`."""
    CROPPERS[name] = factory


def _open(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    try:
        img = Image.open(io.BytesIO(image))
        img.load()
        return img
    except (UnidentifiedImageError, OSError) as e:
        raise MmrepError(f"core-region crop: image bytes cannot be decoded ({e}); drop or re-encode the image") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white (catalogue backgrounds)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


class CoreRegionCrop:
    """image (PIL or encoded bytes) -> the cropped product region, same kind as given (bytes: re-encoded JPEG)."""

    def __init__(self, name: str = "border", **kwargs):
        if name not in CROPPERS:
            raise MmrepError(f"unknown cropper {name!r} (model.cropper); registered: {', '.join(sorted(CROPPERS))}")
        self.cropper = CROPPERS[name](**kwargs)

    def box(self, image: ImageLike) -> Box:
        return self.cropper.box(_open(image))

    def __call__(self, image: ImageLike) -> ImageLike:
        img = _open(image)
        cropped = img.crop(self.cropper.box(img))
        if isinstance(image, Image.Image):
            return cropped
        buf = io.BytesIO()
        _to_rgb(cropped).save(buf, format="JPEG", quality=95)  # always JPEG: callers label crops "jpg"
        return buf.getvalue()


def core_region_view(transform: Callable[[bytes], object] | None = None, name: str = "border") -> Callable[[bytes], object]:
    """bytes -> crop -> `transform` (e.g. the model's ImageTransform): pass as `Collator(view_transform=...)`."""
    crop = CoreRegionCrop(name)
    if transform is None:
        return crop

    def view(data: bytes) -> object:
        return transform(crop(data))

    return view


def collator_hooks(cfg, transform: Callable[[bytes], object]) -> tuple[Callable | None, Callable | None]:
    """What `ModelConfig.crop` asks of the data layer: (view_transform for the Collator, images -> their crops).

    "view": the crop is a second view (pretraining view alignment); "extra_image": each image is fed
    followed by its crop (the Collator interleaves them); "none": (None, None).
    """
    if cfg.crop == "view":
        return core_region_view(transform, cfg.cropper), None
    if cfg.crop == "extra_image":
        crop = CoreRegionCrop(cfg.cropper)
        return None, lambda images: [crop(im) for im in images]
    return None, None
