"""The Python API: load an encoder with its matching preprocessing, embed products, queries, texts, images.

    handle = open_encoder("runs/pretrain/encoder")          # or checkpoint="runs/pretrain/checkpoints"
    emb = embed_records(handle, products, view="mm", dim=64)  # (N, 64) float32, L2-normalised

An `EncoderHandle` holds the encoder and the eval `Collator` the model factory builds for it (the same
preprocessing as training, core-region crops included). Views: "mm" (every modality the record has),
"text" (text only) and "image" (images only); `dim` truncates to a Matryoshka prefix and re-normalises
(0 = the full embedding). Export (`mmrep.export.embeddings`) and evaluation call these functions.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from mmrep.batch import EncoderInput
from mmrep.errors import MmrepError
from mmrep.records import Product, Query

View = Literal["mm", "text", "image"]
VIEWS: tuple[str, ...] = ("mm", "text", "image")


@dataclass
class EncoderHandle:
    """An encoder ready for inference plus what the data side needs to feed it."""

    encoder: Any  # mmrep.model.Encoder
    collator: Any  # mmrep.data.collate.Collator (eval mode)
    name: str
    fingerprint: str  # identifies the weights (and config): exports reuse parts only from the same one
    device: str = "cpu"

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.embed_dim)


def _sha256_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def resolve_device(device: str = "auto") -> str:
    """`auto` -> this rank's GPU (cuda:LOCAL_RANK) when CUDA is usable, else the CPU."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        from mmrep.distributed import local_rank

        return f"cuda:{local_rank() % torch.cuda.device_count()}"
    return "cpu"


def open_encoder(path: str | Path | None = None, config: str | Path | None = None,
                 checkpoint: str | Path | None = None, tag: str = "latest", seed: int = 0, max_images: int = 4,
                 name: str = "", device: str = "auto") -> EncoderHandle:
    """Exactly one of: `path`, an encoder dir (`save_encoder` output, or a run dir holding `encoder/`);
    `config`, a model config YAML (random init with `seed`); `checkpoint`, a run's DeepSpeed checkpoint
    folder (or the run dir) at `tag` ("latest" or global_stepN), rebuilt from the run's config.yaml."""
    from mmrep.config import from_dict, read_yaml, to_dict
    from mmrep.model.config import ModelConfig
    from mmrep.model.encoder import CONFIG_FILE, WEIGHTS_FILE
    from mmrep.model.factory import create_model_and_preprocess, load_model_and_preprocess
    from mmrep.model.preprocess import Preprocess

    if sum(x is not None for x in (path, config, checkpoint)) != 1:
        raise MmrepError("give exactly one of an encoder dir (--encoder), a model config (--encoder-config) "
                         "or a training checkpoint")
    if path is not None:
        path = Path(path)
        if not path.is_dir():
            raise MmrepError(f"encoder dir not found: {path} (pass the encoder/ folder of a training run)")
        if not (path / CONFIG_FILE).is_file() and (path / "encoder" / CONFIG_FILE).is_file():
            path = path / "encoder"  # a training run folder: use its inference export
        encoder, preprocess = load_model_and_preprocess(path, max_images)
        fingerprint = _sha256_files([path / CONFIG_FILE, path / WEIGHTS_FILE])
        label = name or (path.parent.name + "/" + path.name if path.name == "encoder" else path.name)
    elif config is not None:
        raw = read_yaml(config)
        if isinstance(raw.get("model"), dict):
            raw = raw["model"]
        cfg = from_dict(ModelConfig, raw, "model")
        torch.manual_seed(seed)
        encoder, preprocess = create_model_and_preprocess(cfg, max_images)
        encoder.eval()
        fingerprint = hashlib.sha256(json.dumps([to_dict(cfg), seed], sort_keys=True).encode()).hexdigest()[:16]
        label = name or f"{Path(config).stem} (random init, seed {seed})"
    else:
        from mmrep.model.from_checkpoint import encoder_from_checkpoint

        encoder = encoder_from_checkpoint(checkpoint, tag)
        preprocess = Preprocess(encoder.cfg, max_images)
        state = encoder.state_dict()
        h = hashlib.sha256(json.dumps(to_dict(encoder.cfg), sort_keys=True).encode())
        for key in sorted(state):
            h.update(key.encode() + state[key].detach().cpu().contiguous().numpy().tobytes())
        fingerprint = h.hexdigest()[:16]
        run = Path(checkpoint)
        label = name or f"{run.parent.name if run.name == 'checkpoints' else run.name}@{tag}"
    device = resolve_device(device)
    return EncoderHandle(encoder.to(device), preprocess.collator(train=False), label, fingerprint, device)


def select_view(inputs: EncoderInput, view: View) -> EncoderInput:
    if view not in VIEWS:
        raise MmrepError(f"view {view!r} is not one of {', '.join(VIEWS)}")
    if view == "text":
        return inputs.text_only()
    if view == "image":
        return inputs.image_only()
    return inputs


def has_view(record: Product | Query, view: View) -> bool:
    """Whether a record can be embedded in this view (mm needs at least one modality)."""
    if view == "text":
        return record.has_text
    if view == "image":
        return record.has_image
    return record.has_text or record.has_image


def prepare_record(handle: EncoderHandle, record: Product | Query):
    """Decode + resize + tokenize one record for `handle` (its collator adds MOON's core-region crops)."""
    return handle.collator.prepare(record)


@torch.inference_mode()
def embed_prepared(handle: EncoderHandle, prepared: Sequence[Any], view: View = "mm", dim: int = 0) -> np.ndarray:
    """(B, D') embeddings of one batch of prepared records (`prepare_record`): collate + forward."""
    from mmrep.model.encoder import matryoshka

    inputs = handle.collator.collate_products(prepared).inputs  # pads images + tokens (products and queries)
    emb = handle.encoder(select_view(inputs, view).to(handle.device)).embedding.float()
    if dim:
        emb = matryoshka(emb, dim)
    return emb.cpu().numpy()


@torch.inference_mode()
def embed_records(handle: EncoderHandle, records: Sequence[Product | Query], view: View = "mm",
                  batch_size: int = 64, dim: int = 0) -> np.ndarray:
    """(N, D') float32 L2-normalised embeddings of products / queries in one view (D' = dim or D).

    Every record must have the view's modality (`has_view`); batches never mix products and queries.
    """
    out = []
    for start in range(0, len(records), batch_size):
        out.append(embed_prepared(handle, [prepare_record(handle, r) for r in records[start : start + batch_size]],
                                  view, dim))
    return np.concatenate(out) if out else np.zeros((0, dim or handle.embed_dim), dtype=np.float32)


@torch.inference_mode()
def embed_texts(handle: EncoderHandle, texts: Sequence[str], batch_size: int = 256, dim: int = 0) -> np.ndarray:
    """(N, D') embeddings of plain strings (search queries, class prompts), text-only."""
    from mmrep.model.encoder import matryoshka

    out = []
    for start in range(0, len(texts), batch_size):
        emb = handle.encoder(handle.collator.texts(texts[start : start + batch_size]).to(handle.device)).embedding.float()
        out.append((matryoshka(emb, dim) if dim else emb).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, dim or handle.embed_dim), dtype=np.float32)


def embed_images(handle: EncoderHandle, images: Sequence[bytes], batch_size: int = 64, dim: int = 0) -> np.ndarray:
    """(N, D') embeddings of encoded images (JPEG / PNG / ... bytes), one image per row, image-only."""
    queries = [Query(id=str(i), images=[img]) for i, img in enumerate(images)]
    return embed_records(handle, queries, "image", batch_size, dim)


def check_dim(stored: int, handle: EncoderHandle, dim: int = 0, what: str = "stored embeddings") -> None:
    """A clear error when an encoder's output size differs from embeddings computed elsewhere."""
    mine = dim or handle.embed_dim
    if mine != stored:
        raise MmrepError(f"encoder {handle.name} gives {mine}-d embeddings but the {what} are {stored}-d; "
                         "use the encoder that produced them (or the matching --dim)")


__all__ = ["EncoderHandle", "View", "VIEWS", "check_dim", "embed_images", "embed_prepared", "embed_records",
           "embed_texts", "has_view", "open_encoder", "prepare_record", "resolve_device", "select_view"]
