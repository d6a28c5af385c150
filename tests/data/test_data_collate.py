import pytest
import torch

from data_helpers import encode, product
from mmrep.batch import TokenType
from mmrep.data.collate import Collator, ProductBatch, TripletBatch
from mmrep.data.transforms import CorruptSample, ImageTransform
from mmrep.records import Product, Query, Triplet


def test_products_masks_and_max_images(tokenizer):
    col = Collator(tokenizer, ImageTransform(16), max_images=2)
    items = [product(0, n_images=3), product(1, n_images=0), product(2, n_images=1, title=""),
             Product("img-only", images=[encode()])]
    batch = col.products(items)
    assert isinstance(batch, ProductBatch) and batch.ids == ["item-0", "item-1", "item-2", "img-only"]
    x = batch.inputs
    assert x.pixels.shape == (4, 2, 3, 16, 16)
    assert x.image_mask.tolist() == [[True, True], [False, False], [True, False], [True, False]]
    assert x.pixels[1].abs().sum() == 0  # no fake pixels for the text-only item
    assert torch.equal(x.pixels[0, 1], ImageTransform(16)(items[0].images[1]))  # first max_images kept, in order
    assert x.has_text.tolist() == [True, True, True, False]  # item-2 still has category/attributes
    types = x.text_types[2][x.text_mask[2]].tolist()
    assert TokenType.TITLE not in types and TokenType.CATEGORY in types
    assert batch.category == ["Apparel > Topwear"] * 3 + [""] and batch.labels[0] == {"articleType": "Shirts"}
    assert batch.view is None


def test_all_text_and_all_image_batches(tokenizer):
    col = Collator(tokenizer, ImageTransform(8), max_images=4)
    text_only = col.products([product(0, n_images=0), product(1, n_images=0)])
    assert text_only.inputs.pixels.shape == (2, 0, 3, 8, 8) and not text_only.inputs.has_image.any()
    empty_text = col.products([Product("a", images=[encode()]), Product("b", title="  ", images=[encode()])])
    assert empty_text.inputs.text_ids.shape == (2, 0) and not empty_text.inputs.has_text.any()
    texts = col.texts(["red shirt", ""])
    assert texts.has_text.tolist() == [True, False] and texts.pixels.shape[1] == 0


def test_view_transform(tokenizer):
    calls = []

    def crop(data: bytes) -> torch.Tensor:
        calls.append(len(data))
        return torch.full((3, 8, 8), 7.0)

    col = Collator(tokenizer, ImageTransform(8), max_images=1, view_transform=crop)
    batch = col.products([product(0, n_images=2), product(1, n_images=0)])
    assert batch.view is not None and batch.view.pixels.shape == (2, 1, 3, 8, 8)
    assert batch.view.image_mask.tolist() == [[True], [False]] and len(calls) == 1
    assert (batch.view.pixels[0] == 7).all() and torch.equal(batch.view.text_ids, batch.inputs.text_ids)


def test_triplets_and_queries(tokenizer):
    col = Collator(tokenizer, ImageTransform(8), max_images=2)
    q_text = Query("q0", text="red shirt")
    q_img = Query("q1", images=[encode()])
    ts = [Triplet("t0", q_text, product(0), [product(1), product(2)]), Triplet("t1", q_img, product(3), [])]
    batch = col.triplets(ts)
    assert isinstance(batch, TripletBatch) and batch.ids == ["t0", "t1"]
    assert batch.query.has_text.tolist() == [True, False] and batch.query.has_image.tolist() == [False, True]
    assert batch.negatives.batch_size == 4 and batch.negative_mask.tolist() == [[True, True], [False, False]]
    assert batch.negatives.has_image.tolist() == [True, True, False, False]
    assert batch.positive_ids == ["item-0", "item-3"] and batch.negative_ids == [["item-1", "item-2"], []]
    assert batch.category == ["Apparel > Topwear"] * 2
    q = col.queries([q_text, q_img])
    assert q.text_types[0][1].item() == TokenType.QUERY


def test_corrupt_image_raises_with_id(tokenizer):
    col = Collator(tokenizer, ImageTransform(8), max_images=2)
    bad = Product("broken-1", title="x", images=[b"not an image"])
    with pytest.raises(CorruptSample, match="broken-1"):
        col.products([product(0), bad])
