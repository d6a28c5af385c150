"""The tensor contract between the data pipeline and the encoder.

Every encoder call takes one `EncoderInput`: a batch of products or queries with any modality
subset. Missing modalities are masked, never filled with fake data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

import torch


class TokenType(enum.IntEnum):
    """Per-token type ids; the guided MoE routes CATEGORY / ATTRIBUTE tokens to their experts."""

    PAD = 0
    SPECIAL = 1  # start / end of text
    TITLE = 2
    CATEGORY = 3
    ATTRIBUTE = 4
    DESCRIPTION = 5
    QUERY = 6
    IMAGE = 7  # assigned by the encoder to vision tokens


@dataclass
class EncoderInput:
    """A batch of B products / queries.

    pixels:     (B, N, 3, H, W) float, N = most images of any sample in the batch (may be 0)
    image_mask: (B, N) bool, True where an image slot holds a real image
    text_ids:   (B, L) long token ids (0 where padded), L may be 0
    text_types: (B, L) long `TokenType` per token
    text_mask:  (B, L) bool, True on real tokens
    """

    pixels: torch.Tensor
    image_mask: torch.Tensor
    text_ids: torch.Tensor
    text_types: torch.Tensor
    text_mask: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.image_mask.shape[0]

    @property
    def has_image(self) -> torch.Tensor:
        """(B,) bool: the sample has at least one image."""
        return self.image_mask.any(dim=1)

    @property
    def has_text(self) -> torch.Tensor:
        """(B,) bool: the sample has at least one text token."""
        return self.text_mask.any(dim=1)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "EncoderInput":
        return EncoderInput(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def select(self, rows: torch.Tensor | slice | list[int]) -> "EncoderInput":
        """A sub-batch (rows of every tensor)."""
        return EncoderInput(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def text_only(self) -> "EncoderInput":
        """The same samples with their images masked out (the text-only view)."""
        return EncoderInput(self.pixels[:, :0], self.image_mask[:, :0], self.text_ids, self.text_types, self.text_mask)

    def image_only(self) -> "EncoderInput":
        """The same samples with their text masked out (the image-only view)."""
        b = self.batch_size
        empty_l = self.text_ids[:, :0]
        return EncoderInput(self.pixels, self.image_mask, empty_l, self.text_types[:, :0], self.text_mask[:, :0].reshape(b, 0))

    @staticmethod
    def concat(parts: list["EncoderInput"]) -> "EncoderInput":
        """Stack batches along B, padding images (N) and tokens (L) to the largest."""
        n = max(p.pixels.shape[1] for p in parts)
        length = max(p.text_ids.shape[1] for p in parts)
        shape = next((p.pixels.shape[2:] for p in parts if p.pixels.numel()), parts[0].pixels.shape[2:])

        def pad(t: torch.Tensor, size: int, dim: int = 1) -> torch.Tensor:
            extra = size - t.shape[dim]
            if extra == 0:
                return t
            pad_shape = list(t.shape)
            pad_shape[dim] = extra
            return torch.cat([t, t.new_zeros(pad_shape)], dim=dim)

        pixels = [pad(p.pixels if p.pixels.numel() or p.pixels.shape[1] else p.pixels.new_zeros(p.batch_size, 0, *shape), n) for p in parts]
        return EncoderInput(
            pixels=torch.cat(pixels),
            image_mask=torch.cat([pad(p.image_mask, n) for p in parts]),
            text_ids=torch.cat([pad(p.text_ids, length) for p in parts]),
            text_types=torch.cat([pad(p.text_types, length) for p in parts]),
            text_mask=torch.cat([pad(p.text_mask, length) for p in parts]),
        )


@dataclass
class TowerFeatures:
    """A batch of B products given as the outputs of their encoder's frozen towers (a feature cache).

    Only the trainable heads run on it (see `mmrep.train.feature_cache`); it mirrors `EncoderInput`'s
    masks and views, so objectives treat both alike.

    image:      (B, N, Di) the vision trunk's pooled features, one row per image slot
    image_mask: (B, N) bool, True where a slot holds a real image
    text:       (B, T, Dt) the text tower's pooled features, T = 1 (or 0 in an image-only view)
    text_mask:  (B, T) bool, True where the product has text
    """

    image: torch.Tensor
    image_mask: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.image_mask.shape[0]

    @property
    def has_image(self) -> torch.Tensor:
        return self.image_mask.any(dim=1)

    @property
    def has_text(self) -> torch.Tensor:
        return self.text_mask.any(dim=1)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TowerFeatures":
        return TowerFeatures(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def select(self, rows: torch.Tensor | slice | list[int]) -> "TowerFeatures":
        return TowerFeatures(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def text_only(self) -> "TowerFeatures":
        return TowerFeatures(self.image[:, :0], self.image_mask[:, :0], self.text, self.text_mask)

    def image_only(self) -> "TowerFeatures":
        return TowerFeatures(self.image, self.image_mask, self.text[:, :0], self.text_mask[:, :0])
