"""Fixtures: a tiny saved encoder and a small product shard set (several shards, distinct images)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrep.data.shards import ShardWriter
from mmrep.model.config import ModelConfig
from mmrep.model import build_encoder, save_encoder
from mmrep.records import Product, sample_key

TINY = dict(embed_dim=16, image_size=16, matryoshka_dims=[8, 16], tokenizer={"context_length": 16},
            vision={"width": 32, "layers": 1, "heads": 2, "patch_size": 8},
            text={"width": 32, "layers": 1, "heads": 2}, fusion={"width": 32, "layers": 1, "heads": 2, "max_images": 4})


def tiny_config() -> ModelConfig:
    from mmrep.config import from_dict

    return from_dict(ModelConfig, TINY, "model")


def image_bytes(seed: int, size: tuple[int, int] = (20, 24)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_products(out: Path, n: int, shard_size: int, prefix: str = "test") -> list[Product]:
    products = []
    colours = ["Red", "Blue", "Black"]
    types = ["Shirts", "Tshirts", "Jeans"]
    with ShardWriter(out, prefix, shard_size) as w:
        for i in range(n):
            p = Product(id=f"item-{i:03d}", title=f"{colours[i % 3]} {types[i % 3 - 1]} number {i}",
                        attributes={"gender": "Men" if i % 2 else "Women"},
                        images=[image_bytes(i)] + ([image_bytes(1000 + i)] if i % 4 == 0 else []),
                        labels={"articleType": types[i % 3 - 1], "baseColour": colours[i % 3],
                                "gender": "Men" if i % 2 else "Women"})
            w.write({"__key__": sample_key(p.id), **p.to_sample()})
            products.append(p)
    return products


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "encoder"
    save_encoder(build_encoder(tiny_config()).eval(), path)
    return path


@pytest.fixture(scope="session")
def products_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shards") / "test"
    write_products(path, 13, shard_size=5)
    return path
