"""The records every stage exchanges: products, queries, triplets, item pairs, interactions.

Missing modalities are normal: a product may have no images or no title; nothing is faked. Text
fields stay separate (title, category path, attributes, description) so that the encoder can tell
token types apart (MOON's guided routing sends category / attribute tokens to their own experts).

On disk (WebDataset), a product sample is:
    <key>.product.json   {"id", "title", "description", "category", "attributes", "labels", "split",
                          "images": ["0.jpg", "1.png", ...]}
    <key>.0.jpg, <key>.1.png, ...   original image bytes, in order
A query sample (benchmarks' query sets) is:
    <key>.query.json     {"id", "text", "item_ids", "user", "category", "images": ["q.0.jpg", ...]}
    <key>.q.0.jpg, ...
A triplet sample holds the query and its items inline so that a shard is self-contained:
    <key>.triplet.json   {"id", "query": {...}, "positive": {...product...}, "negatives": [...]}
    <key>.q.0.jpg, <key>.p.0.jpg, <key>.n0.0.jpg, ...
img2dataset samples (<key>.jpg / .txt / .json) are read by `mmrep.data` without conversion.
Tables (interactions, item pairs) are CSV files with the columns of the dataclasses below.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from mmrep.errors import MmrepError

PRODUCT_EXT = "product.json"
TRIPLET_EXT = "triplet.json"
QUERY_EXT = "query.json"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
EVENTS = ("exposure", "click", "purchase")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def sample_key(item_id: str) -> str:
    """A WebDataset key for an id: webdataset splits names at the first dot, so dots are replaced."""
    key = _KEY_UNSAFE.sub("_", str(item_id))
    if not key:
        raise MmrepError(f"id {item_id!r} gives an empty sample key; give every record a non-empty id")
    return key


def sample_meta(sample: dict[str, Any], ext: str) -> dict[str, Any]:
    """A sample's metadata entry `ext`, decoded from JSON unless a reader already decoded it."""
    meta = sample[ext]
    return json.loads(meta) if isinstance(meta, (bytes, str)) else meta


@dataclass
class Product:
    """One catalogue item: several images + separate text fields."""

    id: str
    title: str = ""
    description: str = ""
    category: list[str] = field(default_factory=list)  # category path, coarse -> fine
    attributes: dict[str, str] = field(default_factory=dict)
    images: list[bytes] = field(default_factory=list, repr=False)  # original encoded bytes
    image_exts: list[str] = field(default_factory=list)  # "jpg", "png", ... one per image
    labels: dict[str, str] = field(default_factory=dict)  # e.g. {"articleType": "Shirts"}
    split: str = ""

    def __post_init__(self) -> None:
        if len(self.image_exts) != len(self.images):
            if self.image_exts:
                raise ValueError("image_exts must have one entry per image")
            self.image_exts = ["jpg"] * len(self.images)

    @property
    def has_text(self) -> bool:
        return bool(self.title.strip() or self.description.strip() or self.category or self.attributes)

    @property
    def has_image(self) -> bool:
        return bool(self.images)

    def meta(self) -> dict[str, Any]:
        """JSON-able metadata (everything but the image bytes)."""
        d = asdict(self)
        d.pop("images")
        d.pop("image_exts")
        return d

    def to_sample(self, prefix: str = "") -> dict[str, Any]:
        """WebDataset sample fields (without `__key__`); `prefix` namespaces nested products."""
        names = [f"{prefix}{i}.{ext}" for i, ext in enumerate(self.image_exts)]
        meta = self.meta() | {"images": names}
        sample: dict[str, Any] = {f"{prefix}{PRODUCT_EXT}" if not prefix else f"{prefix}json": meta}
        sample.update(zip(names, self.images))
        return sample

    @classmethod
    def from_meta(cls, meta: dict[str, Any], files: dict[str, bytes]) -> "Product":
        """Rebuild from metadata + the sample's files (image names are looked up in `files`)."""
        names = meta.get("images", [])
        missing = [n for n in names if n not in files]
        if missing:
            raise KeyError(f"image file {missing[0]!r} listed in metadata is missing from the sample")
        return cls(
            id=str(meta["id"]),
            title=meta.get("title") or "",
            description=meta.get("description") or "",
            category=list(meta.get("category") or []),
            attributes={str(k): str(v) for k, v in (meta.get("attributes") or {}).items()},
            images=[files[n] for n in names],
            image_exts=[n.rsplit(".", 1)[-1] for n in names],
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
            split=meta.get("split") or "",
        )

    @classmethod
    def from_sample(cls, sample: dict[str, Any]) -> "Product":
        meta = sample_meta(sample, PRODUCT_EXT)
        return cls.from_meta(meta, sample)


@dataclass
class Query:
    """A search query: text and/or image(s), with ground-truth item ids where known."""

    id: str
    text: str = ""
    images: list[bytes] = field(default_factory=list, repr=False)
    image_exts: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)  # ground truth (purchased / relevant)
    user: str = ""
    category: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.image_exts) != len(self.images):
            if self.image_exts:
                raise ValueError("image_exts must have one entry per image")
            self.image_exts = ["jpg"] * len(self.images)

    @property
    def has_text(self) -> bool:
        return bool(self.text.strip())

    @property
    def has_image(self) -> bool:
        return bool(self.images)

    def meta(self, prefix: str = "q.") -> dict[str, Any]:
        d = asdict(self)
        d.pop("images")
        d.pop("image_exts")
        d["images"] = [f"{prefix}{i}.{ext}" for i, ext in enumerate(self.image_exts)]
        return d

    def to_sample(self) -> dict[str, Any]:
        """`<key>.query.json` + `<key>.q.N.<ext>` images."""
        meta = self.meta("q.")
        sample: dict[str, Any] = {"__key__": sample_key(self.id), QUERY_EXT: meta}
        sample.update(zip(meta["images"], self.images))
        return sample

    @classmethod
    def from_sample(cls, sample: dict[str, Any]) -> "Query":
        meta = sample_meta(sample, QUERY_EXT)
        return cls.from_meta(meta, sample)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], files: dict[str, bytes]) -> "Query":
        names = meta.get("images", [])
        return cls(
            id=str(meta["id"]),
            text=meta.get("text") or "",
            images=[files[n] for n in names],
            image_exts=[n.rsplit(".", 1)[-1] for n in names],
            item_ids=[str(x) for x in meta.get("item_ids") or []],
            user=str(meta.get("user") or ""),
            category=list(meta.get("category") or []),
        )


@dataclass
class Triplet:
    """(query, purchased item, low-relevance exposed items): one post-training example."""

    id: str
    query: Query
    positive: Product
    negatives: list[Product] = field(default_factory=list)

    def to_sample(self) -> dict[str, Any]:
        sample: dict[str, Any] = {"__key__": sample_key(self.id)}
        qmeta = self.query.meta("q.")
        sample.update(zip(qmeta["images"], self.query.images))
        pos = self.positive.to_sample("p.")
        negs = [n.to_sample(f"n{i}.") for i, n in enumerate(self.negatives)]
        meta = {
            "id": self.id,
            "query": qmeta,
            "positive": pos.pop("p.json"),
            "negatives": [n.pop(f"n{i}.json") for i, n in enumerate(negs)],
        }
        sample[TRIPLET_EXT] = meta
        sample.update(pos)
        for n in negs:
            sample.update(n)
        return sample

    @classmethod
    def from_sample(cls, sample: dict[str, Any]) -> "Triplet":
        meta = sample_meta(sample, TRIPLET_EXT)
        return cls(
            id=str(meta["id"]),
            query=Query.from_meta(meta["query"], sample),
            positive=Product.from_meta(meta["positive"], sample),
            negatives=[Product.from_meta(n, sample) for n in meta.get("negatives", [])],
        )


@dataclass
class ItemPair:
    """Two items linked by behaviour (co-purchase / co-click): QARM item alignment data."""

    item_a: str
    item_b: str
    kind: str = "co-purchase"


@dataclass
class Interaction:
    """One row of a behaviour log."""

    user: str
    item: str
    time: int
    event: str  # one of EVENTS
    query: str = ""  # query id when the event followed a search

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise MmrepError(f"interaction event {self.event!r} is not one of {EVENTS}")
