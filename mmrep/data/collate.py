"""Records -> `EncoderInput` batches: image tensors + modality masks + typed tokens.

Two steps so that loaders can decode per sample (and skip a corrupt one) before batching:
`Collator.prepare(record)` decodes and tokenizes one record, `Collator.collate(prepared)` pads a list
of them into a batch. `products` / `queries` / `triplets` / `texts` do both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from mmrep.batch import EncoderInput
from mmrep.data.tokenize import ProductTokenizer, TextViews, pad_tokens
from mmrep.data.transforms import CorruptSample, ImageTransform
from mmrep.errors import MmrepError
from mmrep.records import Product, Query, Triplet

ImageFn = Callable[[bytes], torch.Tensor]
ImagesPrep = Callable[[list[bytes]], list[bytes]]  # a product's encoded images -> the images it is fed with


@dataclass
class ProductBatch:
    """B products. `category` is each item's category path joined with " > " ("" when unknown)."""

    ids: list[str]
    inputs: EncoderInput
    category: list[str]
    labels: list[dict]
    view: EncoderInput | None = None  # a second view of the same items (crop / augmentation)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TripletBatch:
    """B triplets; `negatives` holds B*K rows (row b*K + k), padded rows False in `negative_mask`."""

    ids: list[str]
    query: EncoderInput
    positive: EncoderInput
    negatives: EncoderInput
    negative_mask: torch.Tensor  # (B, K) bool
    category: list[str]  # the positive item's category path
    positive_ids: list[str]
    negative_ids: list[list[str]]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PairBatch:
    """B item-item pairs (QARM alignment): a[b] and b[b] are behaviourally linked items."""

    a: EncoderInput
    b: EncoderInput
    ids_a: list[str]
    ids_b: list[str]

    def __len__(self) -> int:
        return len(self.ids_a)


@dataclass
class PreparedItem:
    """One decoded + tokenized product or query, ready to be padded into a batch."""

    id: str
    images: list[torch.Tensor]  # each (3, H, W)
    tokens: tuple[list[int], list[int]]  # (ids, types); ([], []) when there is no text
    category: str = ""
    labels: dict = field(default_factory=dict)
    view: list[torch.Tensor] | None = None


@dataclass
class PreparedTriplet:
    id: str
    query: PreparedItem
    positive: PreparedItem
    negatives: list[PreparedItem]


def category_key(path: Sequence[str]) -> str:
    return " > ".join(str(c) for c in path)


class Collator:
    """Builds `EncoderInput`s; items keep their first `max_images` images, missing modalities are masked.

    `images_prep` rewrites a product's image list before decoding (MOON's core-region crops fed as extra
    images); `text_views` samples which text fields each product presents (training only). Build one
    for a model with `mmrep.model.preprocess`, so training, export and evaluation feed the same inputs.
    """

    def __init__(self, tokenizer: ProductTokenizer, transform: ImageFn, max_images: int,
                 view_transform: ImageFn | None = None, images_prep: ImagesPrep | None = None,
                 text_views: TextViews | None = None):
        if max_images < 0:
            raise MmrepError(f"max_images must be >= 0, got {max_images}")
        self.tokenizer = tokenizer
        self.transform = transform
        self.max_images = max_images
        self.view_transform = view_transform
        self.images_prep = images_prep
        self.text_views = text_views
        self.image_size = getattr(transform, "image_size", None)

    # -- per record ---------------------------------------------------------------------------
    def _images(self, fn: ImageFn, images: Sequence[bytes], key: str, limit: int | None = None) -> list[torch.Tensor]:
        out = []
        for data in images[: self.max_images if limit is None else limit]:
            try:
                out.append(fn(data, key) if _takes_key(fn) else fn(data))
            except CorruptSample:
                raise
            except Exception as e:  # a user-supplied callable failing on bad bytes
                detail = f"image cannot be transformed ({type(e).__name__}: {e})"
                raise CorruptSample(f"sample {key}: {detail}", key=key, reason="bad_image", detail=detail) from None
        return out

    def prepare_product(self, p: Product) -> PreparedItem:
        view = self._images(self.view_transform, p.images, p.id) if self.view_transform else None
        images, limit = p.images, self.max_images
        if self.images_prep is not None and images:
            # MOON's "original + core-region crop": each image followed by its crop, [o0, c0, o1, c1, ...], so the
            # first pair survives any max_images >= 2 and a slot means the same in training, export and eval
            limit = max(self.max_images, 2)
            images = images[: (limit + 1) // 2]  # the originals that survive the cut; crop only those
            try:
                crops = self.images_prep(list(images))
            except Exception as e:  # undecodable bytes: the same skip-and-count path as a bad image
                detail = f"image cannot be cropped ({type(e).__name__}: {e})"
                raise CorruptSample(f"sample {p.id}: {detail}", key=p.id, reason="bad_image", detail=detail) from None
            images = [im for pair in zip(images, crops) for im in pair]
        text_view = self.text_views.sample() if self.text_views is not None else "full"
        return PreparedItem(p.id, self._images(self.transform, images, p.id, limit),
                            self.tokenizer.encode_product(p, text_view), category_key(p.category), dict(p.labels), view)

    def prepare_query(self, q: Query) -> PreparedItem:
        return PreparedItem(q.id, self._images(self.transform, q.images, q.id), self.tokenizer.encode_query(q),
                            category_key(q.category))

    def prepare_triplet(self, t: Triplet) -> PreparedTriplet:
        return PreparedTriplet(t.id, self.prepare_query(t.query), self.prepare_product(t.positive),
                               [self.prepare_product(n) for n in t.negatives])

    def prepare(self, record: Product | Query | Triplet) -> PreparedItem | PreparedTriplet:
        if isinstance(record, Product):
            return self.prepare_product(record)
        if isinstance(record, Triplet):
            return self.prepare_triplet(record)
        if isinstance(record, Query):
            return self.prepare_query(record)
        raise TypeError(f"cannot prepare a {type(record).__name__}")

    # -- batches -----------------------------------------------------------------------------
    def _stack(self, items: Sequence[PreparedItem], view: bool = False) -> EncoderInput:
        """Pad prepared items into one EncoderInput (pixels (B, N, 3, H, W), N = most images)."""
        per_item = [(it.view or []) if view else it.images for it in items]
        n = max((len(x) for x in per_item), default=0)
        first = next((x[0] for x in per_item if x), None)
        if first is not None:
            shape = tuple(first.shape)
        else:
            s = self.image_size or 0
            shape = (3, s, s)
        pixels = torch.empty(len(items), n, *shape)  # not zeros: most slots are overwritten at once
        mask = torch.zeros(len(items), n, dtype=torch.bool)
        for b, imgs in enumerate(per_item):
            for k, img in enumerate(imgs):
                if tuple(img.shape) != shape:
                    raise ValueError(f"image tensors differ in shape in one batch: {tuple(img.shape)} vs {shape}")
                pixels[b, k] = img
                mask[b, k] = True
            if len(imgs) < n:
                pixels[b, len(imgs):] = 0  # empty slots hold zeros, never stale memory
        ids, types, tmask = pad_tokens([it.tokens for it in items])
        return EncoderInput(pixels, mask, ids, types, tmask)

    def collate_products(self, items: Sequence[PreparedItem]) -> ProductBatch:
        has_view = self.view_transform is not None
        return ProductBatch(
            ids=[it.id for it in items],
            inputs=self._stack(items),
            category=[it.category for it in items],
            labels=[it.labels for it in items],
            view=self._stack(items, view=True) if has_view else None,
        )

    def collate_triplets(self, items: Sequence[PreparedTriplet]) -> TripletBatch:
        k = max((len(t.negatives) for t in items), default=0)
        empty = PreparedItem("", [], ([], []))
        negs = [t.negatives[j] if j < len(t.negatives) else empty for t in items for j in range(k)]
        negative_mask = torch.zeros(len(items), k, dtype=torch.bool)
        for b, t in enumerate(items):
            negative_mask[b, : len(t.negatives)] = True
        return TripletBatch(
            ids=[t.id for t in items],
            query=self._stack([t.query for t in items]),
            positive=self._stack([t.positive for t in items]),
            negatives=self._stack(negs),
            negative_mask=negative_mask,
            category=[t.positive.category for t in items],
            positive_ids=[t.positive.id for t in items],
            negative_ids=[[n.id for n in t.negatives] for t in items],
        )

    def collate(self, items: Sequence[Any]) -> ProductBatch | TripletBatch | EncoderInput:
        """Batch prepared records of one kind (products -> ProductBatch, triplets -> TripletBatch)."""
        if not items:
            raise ValueError("cannot collate an empty batch")
        if isinstance(items[0], PreparedTriplet):
            return self.collate_triplets(items)
        return self.collate_products(items)

    # -- one-call helpers (the contract) -------------------------------------------------------
    def products(self, items: Sequence[Product]) -> ProductBatch:
        return self.collate_products([self.prepare_product(p) for p in items])

    def queries(self, items: Sequence[Query]) -> EncoderInput:
        return self._stack([self.prepare_query(q) for q in items])

    def triplets(self, items: Sequence[Triplet]) -> TripletBatch:
        return self.collate_triplets([self.prepare_triplet(t) for t in items])

    def texts(self, texts: Sequence[str]) -> EncoderInput:
        """Plain strings (queries, class prompts) -> a text-only EncoderInput."""
        return self._stack([PreparedItem(str(i), [], self.tokenizer.encode_query(t)) for i, t in enumerate(texts)])

    def __call__(self, items: Sequence[Any]) -> ProductBatch | TripletBatch:
        """Records (Product / Triplet) straight to a batch."""
        return self.collate([self.prepare(r) for r in items])


def _takes_key(fn: Callable) -> bool:
    # ImageTransform accepts the sample key for error messages; other callables take bytes only.
    return isinstance(fn, ImageTransform)
