"""Image bytes -> normalised tensors: decode (PIL, JPEG draft mode), RGB, square resize / crop.

The whole geometric step is one `Image.resize(box=...)` call: the crop box is chosen in source
coordinates and resized straight to (S, S), which equals "resize shorter side + centre crop" (eval)
or a random-resized-crop (train) without a second pass over the pixels.
"""

from __future__ import annotations

import io
import math
import random
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from mmrep.errors import MmrepError

# open_clip's defaults (OPENAI_DATASET_MEAN / STD); models carry their own in their config.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CorruptSample(MmrepError):
    """A sample whose bytes cannot be decoded (non-image data, truncated image, bad JSON, ...)."""

    def __init__(self, message: str, key: str = "", shard: str = "", reason: str = "other", detail: str = ""):
        super().__init__(message)
        self.key, self.shard, self.reason = key, shard, reason
        self.detail = detail or message  # the message without the "shard ..., sample ..." prefix


class WorkerRandom:
    """A `random.Random` per DataLoader worker and pass, seeded from `seed` (and `salt`).

    Each worker draws its own stream, re-seeded for every pass from the loader's per-pass worker seed
    (reproducible under torch.manual_seed), so workers and epochs differ."""

    def __init__(self, seed: int | None, salt: str | None = None):
        self.seed, self.salt = seed, salt
        self._rng: random.Random | None = None
        self._owner: tuple | None = None

    def __call__(self) -> random.Random:
        info = torch.utils.data.get_worker_info()
        owner = (info.id, info.seed) if info else None
        if self._rng is None or owner != self._owner:
            base = self.seed if self.seed is not None else random.randrange(2**31)
            key = (base, owner) if self.salt is None else (base, owner, self.salt)
            self._rng = random.Random(zlib.crc32(repr(key).encode()))
            self._owner = owner
        return self._rng


@dataclass
class ImageAugment:
    """The `data.image_augment` section: training-time image augmentation (evaluation never augments).

    Geometry: a random-resized crop (area fraction `scale`, aspect `ratio`) and a horizontal flip.
    Photometric / pose (off by default): a tilt of up to `rotate` degrees and brightness, contrast and
    saturation factors drawn from [1 - jitter, 1 + jitter], and with probability `blur` a Gaussian blur of
    radius 0.2-1.5 px at the model's resolution. They make catalogue-photo training robust to shopper
    photos (off-centre, tilted, other lighting, out of focus), which is what image search is queried with.
    """

    scale: tuple[float, float] = (0.7, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    rotate: float = 0.0
    jitter: float = 0.0
    blur: float = 0.0

    def __post_init__(self) -> None:
        self.scale, self.ratio = tuple(self.scale), tuple(self.ratio)  # YAML lists -> tuples
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise MmrepError(f"config key 'data.image_augment.scale' must be [low, high] with 0 < low <= high <= 1, "
                             f"got {list(self.scale)}")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise MmrepError(f"config key 'data.image_augment.ratio' must be [low, high] with 0 < low <= high, "
                             f"got {list(self.ratio)}")
        for name, high in (("flip", 1.0), ("rotate", 180.0), ("jitter", 1.0), ("blur", 1.0)):
            if not 0 <= getattr(self, name) <= high:
                raise MmrepError(f"config key 'data.image_augment.{name}' must be in [0, {high:g}], "
                                 f"got {getattr(self, name)}")


class ImageTransform:
    """Encoded image bytes -> (3, S, S) float32, normalised with `mean` / `std`.

    Eval: centre square crop of the shorter side, resized to S. Train: the `augment` policy (by default a
    mild random-resized-crop and a horizontal flip), applied after resizing to S, where it is cheap.
    """

    def __init__(
        self,
        image_size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        train: bool = False,
        seed: int | None = None,
        augment: ImageAugment | None = None,
        resample: int = Image.BICUBIC,
    ):
        if image_size < 1:
            raise MmrepError(f"image_size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise MmrepError(f"mean/std must hold 3 values (std > 0), got mean={mean} std={std}")
        self.image_size = int(image_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.train, self.seed = train, seed
        self.augment = augment or ImageAugment()
        self.resample = resample
        # x_norm = x_uint8 * a + b, folded into one multiply-add per element
        self._a = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(3, 1, 1)
        self._b = torch.tensor([-m / s for m, s in zip(self.mean, self.std)]).view(3, 1, 1)
        self._random = WorkerRandom(seed)

    def decode(self, data: bytes, key: str = "") -> Image.Image:
        """Bytes -> RGB PIL image, using JPEG draft mode to decode at a reduced scale when possible."""
        try:
            img = Image.open(io.BytesIO(data))
            if img.format == "JPEG":
                # draft keeps both sides >= the request, so the crop below never upsamples more
                img.draft("RGB", (self.image_size, self.image_size))
            img.load()
            if img.mode != "RGB":
                img = img.convert("RGB")
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
            detail = f"image bytes cannot be decoded ({type(e).__name__}: {e})"
            raise CorruptSample(f"sample {key or '?'}: {detail}; drop or re-export this image", key=key,
                                reason="bad_image", detail=detail) from None
        return img

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The source crop box (left, top, right, bottom) for an image of this size."""
        if not self.train:
            side = min(width, height)
            left, top = (width - side) / 2, (height - side) / 2
            return (left, top, left + side, top + side)
        rng = self._random()
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.augment.scale)
            ratio = self.augment.ratio
            aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
            if w <= width and h <= height:
                left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
                return (left, top, left + w, top + h)
        side = min(width, height)  # fallback: a random square of the shorter side
        left, top = rng.uniform(0, width - side), rng.uniform(0, height - side)
        return (left, top, left + side, top + side)

    def __call__(self, data: bytes, key: str = "") -> torch.Tensor:
        """bytes -> (3, S, S) float32 normalised."""
        img = self.decode(data, key)
        s = self.image_size
        img = img.resize((s, s), self.resample, box=self.box(*img.size))
        if self.train:
            img = self.photometric(img)
        return self.to_tensor(img)

    def photometric(self, img: Image.Image) -> Image.Image:
        """Flip, tilt, colour jitter and blur of an already resized training image."""
        aug, rng = self.augment, self._random()
        if aug.flip > 0 and rng.random() < aug.flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if aug.rotate > 0:
            fill = img.resize((1, 1), Image.BILINEAR).getpixel((0, 0))  # the corners take the image's mean colour
            img = img.rotate(rng.uniform(-aug.rotate, aug.rotate), resample=Image.BILINEAR, fillcolor=fill)
        if aug.jitter > 0:
            for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                img = enhance(img).enhance(rng.uniform(1 - aug.jitter, 1 + aug.jitter))
        if aug.blur > 0 and rng.random() < aug.blur:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.5)))
        return img

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        """RGB PIL image (S, S) -> (3, S, S) float32 normalised."""
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)
        return torch.mul(x, self._a).add_(self._b)  # uint8 * float32 -> float32 in one pass

    def __repr__(self) -> str:
        return f"ImageTransform(image_size={self.image_size}, train={self.train})"
