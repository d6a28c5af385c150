"""Shared builders for the model tests: hand-made EncoderInputs covering every modality mix."""

from __future__ import annotations

from pathlib import Path

import torch

from mmrep.batch import EncoderInput, TokenType
from mmrep.config import load
from mmrep.model import ModelConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


def random_inputs(b: int, n: int = 3, length: int = 12, size: int = 32, seed: int = 0) -> EncoderInput:
    """B samples with 0..n images and 0..length tokens each (never both empty); product-like token types."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(b, n, 3, size, size, generator=g)
    counts = torch.randint(0, n + 1, (b,), generator=g)
    image_mask = torch.arange(n)[None, :] < counts[:, None]
    lengths = torch.randint(0, length + 1, (b,), generator=g)
    lengths[counts == 0] = lengths[counts == 0].clamp_min(3)
    text_mask = torch.arange(length)[None, :] < lengths[:, None]
    ids = torch.randint(1, 49000, (b, length), generator=g)
    layout = [TokenType.SPECIAL, TokenType.TITLE, TokenType.TITLE, TokenType.CATEGORY, TokenType.CATEGORY,
              TokenType.ATTRIBUTE, TokenType.ATTRIBUTE, TokenType.ATTRIBUTE, TokenType.DESCRIPTION]
    types = torch.tensor([int(layout[min(i, len(layout) - 1)]) for i in range(length)]).repeat(b, 1)
    ids[~text_mask], types[~text_mask] = 0, 0
    pixels[~image_mask] = 0
    return EncoderInput(pixels, image_mask, ids, types, text_mask)


def tiny_config(name: str = "tiny.yaml", *overrides: str) -> ModelConfig:
    return load(ModelConfig, CONFIGS / name, overrides)

