"""One preprocessing builder: training, export and evaluation feed an item the same tensors."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from mmrep.config import load
from mmrep.data.tokenize import ProductTokenizer, TextViews
from mmrep.errors import MmrepError
from mmrep.model import ModelConfig
from mmrep.records import Product


def tiny_config(th):
    return load(ModelConfig, th.repo / "configs" / "model" / "tiny.yaml")


def _photo(colour=(200, 30, 30)) -> bytes:
    img = Image.new("RGB", (60, 80), (255, 255, 255))
    img.paste(Image.new("RGB", (30, 40), colour), (15, 20))  # a product on a white background: the crop shrinks
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def _product(n_images: int = 1) -> Product:
    return Product(id="p1", title="red shirt", category=["Apparel", "Shirts"], attributes={"colour": "red"},
                   images=[_photo() for _ in range(n_images)])


def test_trainer_and_export_feed_identical_tensors_crops_included(th, tiny_world, tmp_path):
    from mmrep.inference import open_encoder
    from mmrep.train.trainer import Trainer

    cfg = th.config(tiny_world, tmp_path / "run", **{"model.crop": "extra_image", "data.max_images": 2})
    trainer = Trainer(cfg, build_loader=False)
    handle = open_encoder(trainer.export_encoder(), max_images=2)

    item = _product(n_images=1)
    train_eval = trainer.collator(train=False).products([item]).inputs
    export = handle.collator.products([item]).inputs
    assert train_eval.image_mask.tolist() == [[True, True]]  # the original and its core-region crop
    torch.testing.assert_close(train_eval.pixels, export.pixels, rtol=0, atol=0)
    assert torch.equal(train_eval.text_ids, export.text_ids)
    assert not torch.equal(export.pixels[0, 0], export.pixels[0, 1])  # the second slot really is the crop

    # training itself (random crops, sampled text views) sees the crop as a second image too
    train = trainer.collator(train=True).products([_product(n_images=3)]).inputs
    assert train.image_mask.tolist() == [[True, True]]  # max_images 2: o0, c0


def test_text_views_cover_short_query_like_texts(th):
    tok = ProductTokenizer(tiny_config(th).tokenizer)
    p = _product()
    full, title, title_cat = (tok.encode_product(p, v)[0] for v in ("full", "title", "title_category"))
    assert len(title) < len(title_cat) < len(full)
    assert title == tok.encode_segments([(p.title, 1)])[0]
    no_title = Product(id="x", category=["Shoes"], attributes={"colour": "red"})
    assert tok.encode_product(no_title, "title") == tok.encode_product(no_title, "full")  # never an empty text

    views = TextViews({"title": 0.5, "full": 0.5}, seed=3)
    drawn = [views.sample() for _ in range(400)]
    assert 150 < drawn.count("title") < 250 and set(drawn) == {"title", "full"}
    again = TextViews({"title": 0.5, "full": 0.5}, seed=3)
    assert [again.sample() for _ in range(20)] == drawn[:20]  # seeded: reproducible
    with pytest.raises(MmrepError, match="text_views"):
        TextViews({"headline": 1.0})


def test_training_collator_samples_views_and_eval_encodes_the_full_text(th):
    from mmrep.model.preprocess import build_preprocess

    cfg = tiny_config(th)
    p = _product()
    full = ProductTokenizer(cfg.tokenizer).encode_product(p)[0]
    train = build_preprocess(cfg, 1, train=True, seed=0, text_views={"title": 1.0})
    evaluation = build_preprocess(cfg, 1, train=False, seed=0, text_views={"title": 1.0})
    assert len(train.prepare_product(p).tokens[0]) < len(full)
    assert evaluation.prepare_product(p).tokens[0] == full
