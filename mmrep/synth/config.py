"""`WorldConfig`: every knob of the built-in product world, with size presets (`PRESETS`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmrep.errors import MmrepError
from mmrep.synth.catalog import CATALOG


@dataclass
class WorldConfig:
    """Everything that shapes the world; `seed` makes it reproducible byte for byte."""

    seed: int = 0
    n_items: int = 400
    n_users: int = 150
    n_queries: int = 500
    image_size: int = 64
    views_per_item: list[int] = field(default_factory=lambda: [2, 3])  # [min, max] catalogue images
    image_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = 90
    query_jpeg_quality: int = 70
    n_top_categories: int = 8  # at most 8
    n_sub_categories: int = 3  # per top category, at most 3
    n_brands: int = 24
    train_frac: float = 0.8
    val_frac: float = 0.1  # test gets the rest
    # text noise
    typo_rate: float = 0.03  # per word
    synonym_rate: float = 0.4
    word_order_rate: float = 0.3
    title_drop_rate: float = 0.15  # each optional title word (colour, pattern, brand, ...) left out
    # missing fields: absent from the record, never faked
    missing_title_rate: float = 0.03
    missing_description_rate: float = 0.3
    missing_attribute_rate: float = 0.2  # each attribute independently
    missing_image_rate: float = 0.03
    occlusion_rate: float = 0.2
    # queries
    text_query_rate: float = 0.4
    image_query_rate: float = 0.3  # text+image gets the rest
    n_negatives: int = 4
    hard_negative_rate: float = 0.75  # share of negatives from the positive's subcategory
    query_affinity_scale: float = 1.0
    # label noise: this share of *training* triplets has its positive swapped with its first negative
    # (a skipped exposure logged as the purchase); held-out triplets stay clean
    triplet_noise_rate: float = 0.0
    # behaviour log
    sessions_per_user: float = 40.0
    session_size: int = 6
    exposure_popularity: float = 1.0  # exposure weight = exp(this * popularity): the long tail
    click_bias: float = -1.5
    affinity_scale: float = 1.0
    popularity_scale: float = 0.7
    click_noise: float = 0.5
    purchase_rate: float = 0.1
    copurchase_window_days: int = 7
    ctr_test_frac: float = 0.2  # the last share of the 90-day log forms the CTR test period
    new_item_rate: float = 0.1  # items launched during the CTR test period (cold for id features)
    shard_size: int = 1000

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise MmrepError(f"world.{key} = {getattr(self, key)!r}: {what}")

        for key in ("n_items", "n_users", "n_queries", "n_brands", "shard_size", "session_size"):
            need(getattr(self, key) >= 1, key, "must be at least 1")
        need(self.image_size >= 16, "image_size", "must be at least 16 pixels")
        need(1 <= self.n_top_categories <= len(CATALOG), "n_top_categories", f"must be in 1..{len(CATALOG)}")
        need(1 <= self.n_sub_categories <= 3, "n_sub_categories", "must be in 1..3")
        need(len(self.views_per_item) == 2 and 1 <= self.views_per_item[0] <= self.views_per_item[1],
             "views_per_item", "must be [min, max] with 1 <= min <= max")
        for key in ("typo_rate", "synonym_rate", "word_order_rate", "title_drop_rate", "missing_title_rate",
                    "missing_description_rate", "missing_attribute_rate", "missing_image_rate", "occlusion_rate",
                    "text_query_rate", "image_query_rate", "hard_negative_rate", "purchase_rate", "triplet_noise_rate", "train_frac",
                    "val_frac", "ctr_test_frac", "new_item_rate"):
            need(0.0 <= getattr(self, key) <= 1.0, key, "must be a rate in [0, 1]")
        need(self.text_query_rate + self.image_query_rate <= 1.0, "image_query_rate",
             "text_query_rate + image_query_rate must be at most 1")
        need(self.train_frac + self.val_frac < 1.0 and self.train_frac > 0, "val_frac",
             "train_frac + val_frac must be below 1 (test gets the rest) and train_frac above 0")
        need(0 < self.ctr_test_frac < 1, "ctr_test_frac", "must be strictly between 0 and 1")
        need(1 <= self.jpeg_quality <= 95 and 1 <= self.query_jpeg_quality <= 95, "jpeg_quality",
             "JPEG qualities must be in 1..95")
        need(self.n_negatives >= 1, "n_negatives", "must be at least 1")
        need(self.n_brands >= self.n_top_categories, "n_brands", "must be at least n_top_categories (every "
             "top category needs a brand)")
        need(self.n_items >= 10 * (self.n_negatives + 1), "n_items",
             f"must be at least {10 * (self.n_negatives + 1)} so each split can hold a query and its negatives")
        need(self.sessions_per_user > 0, "sessions_per_user", "must be positive")
        need(self.copurchase_window_days >= 0, "copurchase_window_days", "must be non-negative")


# n_items, users and queries per preset; everything else keeps the defaults
PRESETS: dict[str, dict] = {
    "tiny": {"n_items": 400, "n_users": 150, "n_queries": 500, "shard_size": 500},
    "small": {"n_items": 5000, "n_users": 1500, "n_queries": 6000},
    "medium": {"n_items": 20000, "n_users": 5000, "n_queries": 20000},
    "large": {"n_items": 100000, "n_users": 20000, "n_queries": 60000},
}


@dataclass
class SynthConfig:
    """The `mmrep data synth` config file: one `world:` section."""

    world: WorldConfig = field(default_factory=WorldConfig)
