"""`mmrep augment`: a new shard set with entity-preserving rewrites, a consistency filter, eval guard."""

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrep import cli, config
from mmrep.data.readers import iter_products
from mmrep.data.shards import ShardWriter, read_manifest
from mmrep.errors import MmrepError
from mmrep.records import Product, sample_key
from mmrep.augment import consistency, images, titles
from mmrep.augment.config import AugmentConfig, AugmentRun
from mmrep.augment.job import augment_shards
from mmrep.augment.registry import AUGMENTERS, build_augmenter

ROOT = Path(__file__).resolve().parents[2]
COLOURS = {"red": (210, 30, 30), "blue": (30, 40, 210), "green": (30, 170, 40), "yellow": (230, 210, 20)}


def square(rgb, size=32):
    """A coloured product on a white background (PNG bytes)."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    img.paste(Image.new("RGB", (size // 2 + 4, size // 2 + 4), rgb), (size // 4 - 2, size // 4 - 2))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def products(split="train"):
    out = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        cat = ["Apparel", "Shirts"] if i % 2 else ["Footwear", "Shoes"]
        out.append(Product(id=f"item.{i}", title=f"{name} {cat[-1].lower()}", category=cat,
                           attributes={"baseColour": name.capitalize(), "usage": "Casual"},
                           images=[square(rgb)], image_exts=["png"], split=split))
    return out


def write_set(root: Path, split: str, items) -> Path:
    with ShardWriter(root / split, prefix=split, max_count=3) as w:
        for p in items:
            w.write({"__key__": sample_key(p.id), **p.to_sample()})
    return root / split


def dominant(data: bytes) -> np.ndarray:
    """Mean colour of the centre patch (the product; crops keep the centre inside it)."""
    a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
    h, w = a.shape[0] // 2, a.shape[1] // 2
    return a[h - 2:h + 2, w - 2:w + 2].reshape(-1, 3).mean(0)


def test_builtin_augmentation_writes_a_new_set_and_keeps_entities(tmp_path):
    src = write_set(tmp_path / "in", "train", products())
    before = sorted(p.name for p in src.iterdir())
    cfg = AugmentConfig(shards=str(src), out=str(tmp_path / "out"), images_per_product=3, seed=3)
    manifest = augment_shards(cfg)
    dest = tmp_path / "out" / "train"
    assert sorted(p.name for p in src.iterdir()) == before  # the input set is untouched
    assert read_manifest(dest)["count"] == 4 and manifest["augment"]["products"] == 4
    assert (dest / "augment_config.yaml").is_file()
    resolved = config.load(AugmentRun, dest / "augment_config.yaml")
    assert resolved.augment.images_per_product == 3
    out = {p.id: p for p in iter_products(dest)}
    originals = {p.id: p for p in products()}
    assert set(out) == set(originals)
    stats = manifest["augment"]
    assert stats["images_generated"] + stats["images_skipped"] == 12
    assert sum(len(p.images) - 1 for p in out.values()) == stats["images_kept"] == stats["images_generated"]
    for pid, p in out.items():
        o = originals[pid]
        assert p.title != o.title and o.title in p.title  # enriched, original words kept
        title = p.title.lower()  # entities kept (case-insensitive, as the tokenizer lowercases)
        assert o.attributes["baseColour"].lower() in title and o.category[-1].lower() in title and "casual" in title
        assert p.images[0] == o.images[0] and len(p.images) >= 2
        want = np.array(COLOURS[o.title.split()[0]], dtype=np.float32)
        for img in p.images[1:]:  # generated images keep the colour attribute plausible
            assert np.abs(dominant(img) - want).max() < 60
    with pytest.raises(MmrepError, match="already exists"):
        augment_shards(cfg)
    augment_shards(cfg, overwrite=True)


def test_builtin_augmenters_preserve_the_product():
    p = products()[0]
    img = Image.open(io.BytesIO(p.images[0])).convert("RGB")
    rng = random.Random(0)
    swapped = build_augmenter("background_swap")(img, p, rng)
    a, b = np.asarray(img), np.asarray(swapped)
    assert (a[16, 16] == b[16, 16]).all() and not (a[0, 0] == b[0, 0]).all()  # product kept, background changed
    plain = Image.new("RGB", (32, 32), (200, 30, 30))  # no separable subject: skipped, not recoloured
    assert build_augmenter("background_swap")(plain, p, rng) is None
    with pytest.raises(MmrepError, match="colour attribute"):
        build_augmenter("color_jitter", {"brightness": 0.9})
    with pytest.raises(MmrepError, match="augment.options.flip"):
        build_augmenter("flip", {"bogus": 1})
    assert titles.ensure_entities("nice tee", p) == "nice tee Red Casual Shoes"
    priced = Product(id="x", title="tee", attributes={"colour": "red", "price": "19.99"})
    assert titles.product_entities(priced) == ["red"]  # a price is not a title entity


@pytest.mark.parametrize("split", ["test", "val", "Eval"])
def test_refuses_evaluation_splits_unless_forced(tmp_path, split):
    src = write_set(tmp_path / "in", split, products(split))
    cfg = AugmentConfig(shards=str(src), out=str(tmp_path / "out"))
    with pytest.raises(MmrepError, match="never augmented"):
        augment_shards(cfg)
    assert not (tmp_path / "out" / split).exists()
    # renaming the output does not launder an eval split, nor does a train-named folder of test products
    with pytest.raises(MmrepError, match="never augmented"):
        augment_shards(AugmentConfig(shards=str(src), out=str(tmp_path / "out"), split="train"))
    disguised = write_set(tmp_path / "in2", "train", products(split))
    with pytest.raises(MmrepError, match="never augmented"):
        augment_shards(AugmentConfig(shards=str(disguised), out=str(tmp_path / "out2")))
    assert not (tmp_path / "out2" / "train").exists()  # atomic: nothing half-written
    forced = augment_shards(AugmentConfig(shards=str(src), out=str(tmp_path / "out"), unsafe_allow_eval_split=True))
    assert forced["count"] == 4


def test_cli_main_and_errors(tmp_path, capsys):
    src = write_set(tmp_path / "in", "test", products("test"))
    assert cli.main(["augment", "--shards", str(src), "--out", str(tmp_path / "o")]) == 2
    assert "never augmented" in capsys.readouterr().err
    train = write_set(tmp_path / "in", "train", products())
    code = cli.main(["augment", "--shards", str(train), "--out", str(tmp_path / "o"), "--augment.images_per_product=1",
                     "--augment.image_augmenters=[flip]"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 4 and report["images_kept"] == 4
    assert cli.main(["augment", "--shards", str(train), "--out", str(tmp_path / "o"),
                     "--augment.image_augmenters=[nope]"]) == 2
    assert "not registered" in capsys.readouterr().err
    assert cli.main(["augment", "--shards", str(train), "--out", str(tmp_path / "p"), "--augment.filter=open_clip"]) == 2
    assert "filter_checkpoint" in capsys.readouterr().err


def test_hf_vlm_augmenter_names_a_missing_path(tmp_path):
    with pytest.raises(MmrepError, match="hf_vlm.path .* is not a directory"):
        build_augmenter("hf_vlm", {"path": str(tmp_path / "no-such-model")})
    with pytest.raises(MmrepError, match="cannot load a vision-language model"):
        build_augmenter("hf_vlm", {"path": str(tmp_path)})  # a directory without a model


def test_scorer_checkpoint_errors(tmp_path):
    with pytest.raises(MmrepError, match="open_clip_config.json"):
        consistency.build_scorer("open_clip", f"local-dir:{tmp_path}")
    with pytest.raises(MmrepError, match="not an mmrep encoder directory"):
        consistency.build_scorer("mmrep", str(tmp_path))


class Recolour:
    """A bad 'editor': repaints the product in another colour (the filter must drop it)."""

    kind = "image"

    def __call__(self, image, product, rng):
        colour = product.title.split()[0]
        other = [c for c in COLOURS if c != colour][0]
        return Image.open(io.BytesIO(square(COLOURS[other])))


class WrongColourTitle:
    kind = "title"


    def __call__(self, product, rng):
        """Another product's title (a rewrite that describes the wrong item)."""
        titles = [p.title for p in products()]
        return titles[(titles.index(product.title) + 1) % len(titles)]


@pytest.fixture(scope="module")
def trained_clip(tmp_path_factory):
    """A tiny open_clip two-tower (mmrep backbone "clip") trained to match colour images and titles."""
    from mmrep.model.backbones.clip import export_open_clip
    from mmrep.model.config import ModelConfig
    from mmrep.model import build_encoder, save_encoder
    from mmrep.model.preprocess import build_preprocess
    from mmrep.train.losses import ContrastiveLoss

    cfg = config.load(ModelConfig, ROOT / "configs" / "model" / "clip-tiny.yaml")
    torch.manual_seed(0)
    enc = build_encoder(cfg, load_pretrained=False)
    col = build_preprocess(cfg, max_images=1)
    items = products()
    images = col.products([Product(id=p.id, images=p.images) for p in items]).inputs
    titles = col.products([Product(id=p.id, title=p.title) for p in items]).inputs
    loss_fn = ContrastiveLoss(temperature=0.1)
    opt = torch.optim.Adam([*enc.parameters(), *loss_fn.parameters()], lr=2e-3)
    for _ in range(60):
        loss = loss_fn(enc(images).embedding, enc(titles).embedding)
        opt.zero_grad()
        loss.backward()
        opt.step()
    root = tmp_path_factory.mktemp("clip")
    enc.eval()
    return export_open_clip(enc, root / "open_clip"), save_encoder(enc, root / "mmrep"), float(loss.detach())


class CountedFlip(images.Flip):
    """The consistent editor (a mirror image), counting its generations."""

    calls = 0

    def __call__(self, image, product, rng):
        CountedFlip.calls += 1
        return super().__call__(image, product, rng)


@pytest.mark.slow
@pytest.mark.parametrize("backend,rule", [("open_clip", "threshold"), ("mmrep", "threshold"), ("open_clip", "rank"),
                                          ("mmrep", "rank")])
def test_consistency_filter_drops_mismatched_generations(tmp_path, monkeypatch, trained_clip, backend, rule):
    """Consistent generations (mirror images) are kept, inconsistent ones (a recoloured product, another
    product's title) dropped: by a threshold calibrated on this scorer, and by the relative rules at
    their defaults (no calibration: they only compare a generation with the batch's other products)."""
    oc_dir, mm_dir, final_loss = trained_clip
    checkpoint = f"local-dir:{oc_dir}" if backend == "open_clip" else str(mm_dir)
    scorer = consistency.build_scorer(backend, checkpoint)
    items = products()
    sims = np.array([[scorer.score([p.images[0]], [q.title])[0] for q in items] for p in items])
    matched, mismatched = np.diag(sims), sims[~np.eye(4, dtype=bool)]
    assert matched.min() > mismatched.max(), (final_loss, sims)
    threshold = float(matched.min() + mismatched.max()) / 2

    monkeypatch.setitem(AUGMENTERS, "recolour", Recolour)
    monkeypatch.setitem(AUGMENTERS, "wrong_colour_title", WrongColourTitle)
    monkeypatch.setitem(AUGMENTERS, "counted_flip", CountedFlip)
    monkeypatch.setattr(CountedFlip, "calls", 0)
    src = write_set(tmp_path / "in", "train", items)
    rule_keys = {"filter_threshold": threshold} if rule == "threshold" else {}
    cfg = AugmentConfig(shards=str(src), out=str(tmp_path / "out"), title_augmenters=["wrong_colour_title"],
                        image_augmenters=["counted_flip", "recolour"], images_per_product=6, seed=1, filter=backend,
                        filter_checkpoint=checkpoint, filter_rule=rule, **rule_keys)
    stats = augment_shards(cfg)["augment"]
    assert stats["titles_generated"] == 4 and stats["titles_dropped"] == 4 and stats["titles_kept"] == 0
    assert stats["images_generated"] == 24 and stats["images_dropped"] > 0 and stats["images_kept"] > 0
    assert stats["images_kept"] + stats["images_dropped"] == 24
    assert stats["images_kept"] == CountedFlip.calls  # every consistent generation kept, every recolour dropped
    assert stats["images_unjudged"] == 0 and stats["titles_unjudged"] == 0
    out = {p.id: p for p in iter_products(tmp_path / "out" / "train")}
    for p in items:
        got = out[p.id]
        assert got.title == p.title  # the wrong-colour rewrite was dropped
        want = np.array(COLOURS[p.title.split()[0]], dtype=np.float32)
        assert all(np.abs(dominant(img) - want).max() < 30 for img in got.images)  # no recoloured image kept


def test_background_swap_on_real_catalogue_images_keeps_the_product():
    """Myntra studio shots (white background, product touching the frame): the product's pixels stay."""
    import csv

    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion_product_images_small"
    if not (root / "styles.csv").is_file():
        pytest.skip("fashion_product_images_small is not available")
    with open(root / "styles.csv", newline="") as f:
        rows = [r for _, r in zip(range(10), csv.DictReader(f))]
    swap, rng, changed = build_augmenter("background_swap"), random.Random(0), 0
    for r in rows:
        path = root / "images" / f"{r['id']}.jpg"
        if not path.is_file():
            continue
        img = Image.open(path).convert("RGB")
        out = swap(img, Product(id=r["id"]), rng)
        if out is None:
            continue
        a, b = np.asarray(img, dtype=np.float32), np.asarray(out, dtype=np.float32)
        diff = np.abs(a - b).sum(-1) > 0
        bg = np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0)  # the studio white
        product_px = np.linalg.norm(a - bg, axis=-1) >= 30
        assert not (diff & product_px).any()  # only background-coloured pixels were repainted
        changed += int(diff.mean() > 0.3)
    assert changed >= 5


def test_relative_filter_rules_compare_with_the_batch():
    cfg = AugmentConfig()  # rank rule: beat 90% of the in-batch mismatched candidates
    others = np.array([0.70, 0.71, 0.72, 0.73, 0.74, 0.75, 0.76, 0.77, 0.78, 0.80])
    assert consistency.keep_generation(0.79, others, cfg) == (True, True)  # beats 9 of 10 (the 0.79 of a typical match)
    assert consistency.keep_generation(0.775, others, cfg) == (False, True)  # 8 of 10: as good as a mismatch
    assert consistency.keep_generation(0.1, np.zeros(0), cfg) == (True, False)  # nothing to compare with: kept, unjudged
    # a weak scorer ranks the product's own original pair at 0.8: the generation needs 0.7 of the candidates
    assert consistency.keep_generation(0.765, others, cfg, original=0.8) == (True, True)
    assert consistency.keep_generation(0.745, others, cfg, original=0.8) == (False, True)
    assert consistency.keep_generation(0.775, others, cfg, original=1.0) == (False, True)  # a strong one: still 0.9
    strict = AugmentConfig(filter_beat_frac=1.0)
    assert consistency.keep_generation(0.79, others, strict)[0] is False
    margin = AugmentConfig(filter_rule="margin", filter_margin=0.03)
    assert consistency.keep_generation(0.79, others, margin)[0] and not consistency.keep_generation(0.76, others, margin)[0]
    threshold = AugmentConfig(filter_rule="threshold")  # the absolute rule at 0.2 keeps both (what it did before)
    assert consistency.keep_generation(0.79, others, threshold)[0] and consistency.keep_generation(0.71, others, threshold)[0]
    with pytest.raises(MmrepError, match="filter_batch"):
        AugmentConfig(filter_batch=1)
    with pytest.raises(MmrepError, match="filter_beat_frac"):
        AugmentConfig(filter_beat_frac=1.5)


def test_torchvision_transforms_match_the_pil_reference():
    """Flip / crop-resize / colour jitter run through torchvision; for the same draws they equal PIL's own ops."""
    from PIL import ImageEnhance, ImageOps

    arr = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    img, p = Image.fromarray(arr), Product(id="x")
    assert np.array_equal(np.asarray(images.Flip()(img, p, random.Random(0))), np.asarray(ImageOps.mirror(img)))
    for seed in range(5):
        rng = random.Random(seed)  # the draws CropScale makes, in its order
        side = rng.uniform(0.7, 1.0) ** 0.5
        cw, ch = max(1, round(53 * side)), max(1, round(37 * side))
        x, y = rng.randint(0, 53 - cw), rng.randint(0, 37 - ch)
        ref = img.crop((x, y, x + cw, y + ch)).resize((53, 37), Image.BICUBIC)
        assert np.array_equal(np.asarray(images.CropScale()(img, p, random.Random(seed))), np.asarray(ref))
        rng = random.Random(seed)
        ref = ImageEnhance.Brightness(img).enhance(rng.uniform(0.85, 1.15))
        ref = ImageEnhance.Contrast(ref).enhance(rng.uniform(0.85, 1.15))
        ref = ImageEnhance.Color(ref).enhance(rng.uniform(0.9, 1.1))
        assert np.array_equal(np.asarray(images.ColorJitter()(img, p, random.Random(seed))), np.asarray(ref))
