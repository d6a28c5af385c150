import io

import numpy as np
import pytest
import torch
from PIL import Image

from data_helpers import encode
from mmrep.data.transforms import CLIP_MEAN, CLIP_STD, CorruptSample, ImageTransform
from mmrep.errors import MmrepError


def _reference(data: bytes, size: int) -> torch.Tensor:
    """Shorter side -> size, centre crop, normalise (the textbook pipeline, no draft mode)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def test_eval_transform_matches_resize_and_centre_crop():
    # a photo-like image: smooth gradient + noise, 3:4 like Fashion items
    rng = np.random.default_rng(0)
    arr = (np.linspace(0, 255, 60 * 80 * 3).reshape(80, 60, 3) + rng.normal(0, 8, (80, 60, 3))).clip(0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "PNG")
    t = ImageTransform(32, train=False)
    out = t(buf.getvalue())
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    ref = _reference(buf.getvalue(), 32)
    assert (out - ref).abs().mean() < 0.05  # same geometry; only resampling rounding differs


def test_draft_mode_on_large_jpeg_stays_close_to_full_decode():
    rng = np.random.default_rng(1)
    arr = np.kron(rng.integers(0, 255, (20, 16, 3)), np.ones((40, 40, 1))).astype(np.uint8)  # 800x640 blocks
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    out = ImageTransform(64)(buf.getvalue())
    ref = _reference(buf.getvalue(), 64)
    assert (out - ref).abs().mean() < 0.1


def test_modes_formats_and_normalisation():
    t = ImageTransform(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    white = encode((255, 255, 255), size=(20, 20), fmt="PNG")
    assert torch.allclose(t(white)[:, 5:, :], torch.ones(3, 11, 16), atol=1e-5)  # (1 - .5) / .5
    for data in (encode(fmt="PNG", mode="L"), encode(fmt="PNG", mode="RGBA"), encode(fmt="WEBP"), encode(fmt="GIF")):
        assert t(data).shape == (3, 16, 16)


def test_train_transform_is_seeded_and_varies():
    data = encode(size=(64, 48))
    a = ImageTransform(24, train=True, seed=3)
    b = ImageTransform(24, train=True, seed=3)
    xs, ys = [a(data) for _ in range(6)], [b(data) for _ in range(6)]
    assert all(torch.equal(x, y) for x, y in zip(xs, ys))  # same seed, same crops/flips
    assert any(not torch.equal(xs[0], x) for x in xs[1:])  # crops differ from call to call
    ev = ImageTransform(24)
    assert torch.equal(ev(data), ev(data))


def test_corrupt_bytes_raise_named_error():
    t = ImageTransform(16)
    with pytest.raises(CorruptSample, match="item-7") as e:
        t(b"<html>not an image</html>", key="item-7")
    assert isinstance(e.value, MmrepError) and e.value.reason == "bad_image"
    truncated = encode(size=(200, 200))[:300]
    with pytest.raises(CorruptSample):
        t(truncated, key="x")
    with pytest.raises(MmrepError, match="image_size"):
        ImageTransform(0)


def test_training_augment_tilts_and_jitters_only_when_asked():
    from mmrep.data.transforms import ImageAugment

    data = encode(size=(48, 48))  # square: a full-area crop of aspect 1 has one position
    plain = ImageTransform(24, train=True, seed=3, augment=ImageAugment(flip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0)))
    assert torch.equal(plain(data), plain(data))  # no random geometry left: every call is the same
    tilt = ImageTransform(24, train=True, seed=3,
                          augment=ImageAugment(flip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate=15, jitter=0.3, blur=0.5))
    xs = [tilt(data) for _ in range(4)]
    assert all(not torch.equal(x, plain(data)) for x in xs) and not torch.equal(xs[0], xs[1])
    same = ImageTransform(24, train=True, seed=3,
                          augment=ImageAugment(flip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate=15, jitter=0.3, blur=0.5))
    assert all(torch.equal(x, same(data)) for x in xs)  # seeded
    ev = ImageTransform(24, augment=ImageAugment(rotate=15, jitter=0.3))
    assert torch.equal(ev(data), ImageTransform(24)(data))  # evaluation never augments
    for bad in (dict(scale=(0.0, 1.0)), dict(jitter=1.5), dict(rotate=-1), dict(ratio=(2.0, 1.0)), dict(blur=2.0)):
        with pytest.raises(MmrepError, match="data.image_augment"):
            ImageAugment(**bad)
