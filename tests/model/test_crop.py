"""Core-region crop: the border heuristic finds the product box; bytes in -> bytes out; fallbacks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrep.errors import MmrepError
from mmrep.model.crop import BorderCropper, CoreRegionCrop, core_region_view, register_cropper

DATA = Path("/work/shared/data/fashion_product_images_small/images")


def product_photo(box=(30, 50, 90, 130), size=(120, 160), bg=(250, 250, 250), fg=(180, 20, 40)) -> Image.Image:
    a = np.full((size[1], size[0], 3), bg, dtype=np.uint8)
    a[box[1]:box[3], box[0]:box[2]] = fg
    rng = np.random.default_rng(0)
    a = np.clip(a.astype(int) + rng.integers(-4, 5, a.shape), 0, 255).astype(np.uint8)  # JPEG-like noise
    return Image.fromarray(a)


def to_bytes(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_border_heuristic_finds_the_product_with_a_margin():
    crop = CoreRegionCrop("border")
    left, top, right, bottom = crop.box(product_photo())
    assert 24 <= left <= 30 and 44 <= top <= 50 and 90 <= right <= 96 and 130 <= bottom <= 136


def test_blank_image_falls_back_to_the_full_image():
    blank = Image.new("RGB", (64, 80), (255, 255, 255))
    assert CoreRegionCrop().box(blank) == (0, 0, 64, 80)


def test_tiny_object_is_grown_to_the_minimum_size():
    img = product_photo(box=(58, 78, 62, 82))
    left, top, right, bottom = BorderCropper(min_size=0.3).box(img)
    assert right - left >= 0.3 * 120 - 1 and bottom - top >= 0.3 * 160 - 1
    assert left <= 58 and right >= 62


def test_bytes_in_bytes_out_and_pil_in_pil_out():
    crop = CoreRegionCrop()
    out = crop(to_bytes(product_photo()))
    assert isinstance(out, bytes)
    w, h = Image.open(io.BytesIO(out)).size
    assert w < 120 and h < 160
    assert isinstance(crop(product_photo()), Image.Image)
    transparent = crop(to_bytes(product_photo().convert("RGBA"), "PNG"))
    assert transparent[:2] == b"\xff\xd8" and Image.open(io.BytesIO(transparent)).mode == "RGB"  # JPEG, as labelled


def test_view_transform():
    raw = to_bytes(product_photo())
    sizes = []
    view = core_region_view(lambda data: sizes.append(Image.open(io.BytesIO(data)).size) or "tensor")
    assert view(raw) == "tensor" and sizes[0][0] < 120


def test_corrupt_bytes_and_unknown_cropper_are_user_errors():
    with pytest.raises(MmrepError, match="decoded"):
        CoreRegionCrop()(b"not an image")
    with pytest.raises(MmrepError, match="cropper"):
        CoreRegionCrop("grounding-dino")


def test_registry_plugs_in_a_cropper():
    class Centre:
        def box(self, image):
            w, h = image.size
            return w // 4, h // 4, 3 * w // 4, 3 * h // 4

    register_cropper("centre-test", Centre)
    assert CoreRegionCrop("centre-test").box(product_photo()) == (30, 40, 90, 120)


@pytest.mark.skipif(not DATA.is_dir(), reason="shared fashion data not present")
def test_real_catalogue_photos_keep_most_foreground():
    files = sorted(DATA.glob("*.jpg"))[:20]
    crop = CoreRegionCrop()
    shrunk = 0
    for f in files:
        img = Image.open(f).convert("RGB")
        left, top, right, bottom = crop.box(img)
        assert 0 <= left < right <= img.width and 0 <= top < bottom <= img.height
        shrunk += (right - left) * (bottom - top) < 0.95 * img.width * img.height
    assert shrunk >= 5  # catalogue photos on plain backgrounds usually get a tighter box


def test_collator_hooks_follow_the_model_config():
    from mmrep.model.crop import collator_hooks
    from model_helpers import tiny_config

    raw = to_bytes(product_photo())
    assert collator_hooks(tiny_config("tiny.yaml"), lambda b: b) == (None, None)
    view, prep = collator_hooks(tiny_config("tiny.yaml", "--crop=view"), lambda b: Image.open(io.BytesIO(b)).size)
    assert prep is None and view(raw)[0] < 120
    view, prep = collator_hooks(tiny_config("tiny.yaml", "--crop=extra_image"), lambda b: b)
    crops = prep([raw, raw])
    assert view is None and len(crops) == 2 and Image.open(io.BytesIO(crops[0])).size[0] < 120
