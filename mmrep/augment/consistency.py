"""The image-title consistency filter: scorers (a trained mmrep encoder dir or an open_clip `local-dir:`
checkpoint) and the rules that keep or drop a generation (see the package docstring)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from mmrep.augment.config import AugmentConfig
from mmrep.augment.images import decode_image
from mmrep.errors import MmrepError
from mmrep.records import Product


class ConsistencyScorer(Protocol):
    def image_embeddings(self, images: Sequence[bytes]) -> np.ndarray:
        """(N, D) L2-normalised image embeddings."""

    def text_embeddings(self, titles: Sequence[str]) -> np.ndarray:
        """(N, D) L2-normalised title embeddings, in the images' space."""

    def score(self, images: Sequence[bytes], titles: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each (image, title) pair: (N,)."""


class OpenClipScorer:
    """open_clip model from `local-dir:PATH` (open_clip_config.json + open_clip_model.safetensors)."""

    def __init__(self, checkpoint: str):
        import open_clip

        path = checkpoint.removeprefix("local-dir:")
        if not Path(path, "open_clip_config.json").is_file():
            raise MmrepError(f"augment.filter_checkpoint {checkpoint!r}: no open_clip_config.json there; pass an "
                             "open_clip local-dir checkpoint (e.g. from `export_open_clip`)")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}")
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")

    def image_embeddings(self, images: Sequence[bytes]) -> np.ndarray:
        import torch

        with torch.no_grad():
            pix = torch.stack([self.preprocess(decode_image(b)) for b in images])
            return self.model.encode_image(pix, normalize=True).float().numpy()

    def text_embeddings(self, titles: Sequence[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model.encode_text(self.tokenizer(list(titles)), normalize=True).float().numpy()

    def score(self, images: Sequence[bytes], titles: Sequence[str]) -> np.ndarray:
        return (self.image_embeddings(images) * self.text_embeddings(titles)).sum(-1)


class MmrepScorer:
    """A trained mmrep encoder dir: cosine of the image-only and title-only embeddings."""

    def __init__(self, checkpoint: str):
        from mmrep.model.factory import load_model_and_preprocess

        self.encoder, preprocess = load_model_and_preprocess(checkpoint, max_images=1)
        self.collator = preprocess.collator(train=False)

    def image_embeddings(self, images: Sequence[bytes]) -> np.ndarray:
        import torch

        inputs = self.collator.products([Product(id=str(i), images=[b]) for i, b in enumerate(images)]).inputs
        with torch.no_grad():
            return self.encoder(inputs).embedding.float().numpy()

    def text_embeddings(self, titles: Sequence[str]) -> np.ndarray:
        import torch

        inputs = self.collator.products([Product(id=str(i), title=t) for i, t in enumerate(titles)]).inputs
        with torch.no_grad():
            return self.encoder(inputs).embedding.float().numpy()

    def score(self, images: Sequence[bytes], titles: Sequence[str]) -> np.ndarray:
        return (self.image_embeddings(images) * self.text_embeddings(titles)).sum(-1)


def build_scorer(kind: str, checkpoint: str) -> ConsistencyScorer | None:
    if kind == "none":
        return None
    if kind == "open_clip":
        return OpenClipScorer(checkpoint)
    if kind == "mmrep":
        return MmrepScorer(checkpoint)
    raise MmrepError(f"augment.filter must be 'none', 'mmrep' or 'open_clip', got {kind!r}")


def beat_fraction(matched: float, mismatched: np.ndarray) -> float | None:
    """Share of the mismatched candidates' cosines below the matched one (None without candidates)."""
    return float((mismatched < matched).mean()) if mismatched.size else None


def keep_generation(matched: float, mismatched: np.ndarray, cfg: AugmentConfig,
                    original: float | None = None) -> tuple[bool, bool]:
    """(keep, judged) for one generation from its matched cosine and its cosines to the mismatched
    candidates (the batch's other products). Relative rules cannot judge without candidates: kept.

    rank: the generation must beat `filter_beat_frac` of the candidates, or, when the product's own
    original pair (`original`: its beat fraction) ranks lower than that under this scorer, as many as
    the original less `filter_rank_slack`: a generation is dropped for being less consistent than the
    data it came from, not for the scorer's own limits."""
    if cfg.filter_rule == "threshold":
        return matched >= cfg.filter_threshold, True
    if mismatched.size == 0:
        return True, False
    if cfg.filter_rule == "margin":
        return matched - float(mismatched.mean()) >= cfg.filter_margin, True
    frac = cfg.filter_beat_frac if original is None else min(cfg.filter_beat_frac, original - cfg.filter_rank_slack)
    need = math.ceil(frac * mismatched.size - 1e-9)
    return int((mismatched < matched).sum()) >= need, True
