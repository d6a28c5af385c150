"""The encoder interface shared by every backbone, plus save / load / matryoshka (build: mmrep.model.registry).

`Encoder.forward(inputs, objective=None) -> EncoderOutput`. Backbones implement `encode(inputs)`
returning un-normalised (B, D) embeddings and the MoE routing records; this base class turns them
into gates, preference, auxiliary losses and stats in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmrep.batch import EncoderInput, TowerFeatures
from mmrep.config import from_dict, to_dict
from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_dir
from mmrep.model.config import ModelConfig
from mmrep.model.moe import Routing, expert_preference, objective_weights, sample_mean, sparsity_loss

FORMAT = "mmrep-encoder"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class EncoderOutput:
    """embedding (B, D) L2-normalised; aux_loss / sparsity_loss 0-dim (0 without MoE);
    gates (B, Z) per-sample mean G̃ over real tokens and MoE layers; preference (Z, M) p_{z,m}."""

    embedding: torch.Tensor
    aux_loss: torch.Tensor
    sparsity_loss: torch.Tensor
    gates: torch.Tensor | None = None
    preference: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)


class Encoder(nn.Module):
    """Base: owns W* (Z, M) when the MoE is on; subclasses implement `encode`.

    `uniform_calls` (set by the trainer under ZeRO-3 on several ranks): every call runs every tower, on a
    dummy input where the batch has no such modality, with a zero-valued term in the output, so all ranks
    make the same module calls and every parameter gets a (zero) gradient (ZeRO-3 gathers per module).
    """

    uniform_calls: bool = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        moe = cfg.moe
        if moe.enabled:
            self.preference_logits = nn.Parameter(torch.randn(moe.num_experts, moe.num_objectives) * 0.02)
        else:
            self.preference_logits = None

    def encode(self, inputs: EncoderInput) -> tuple[torch.Tensor, list[tuple[Routing, torch.Tensor]]]:
        """-> (embedding (B, D) before normalisation, [(Routing over T tokens, sample id (T,))] per MoE layer)."""
        raise NotImplementedError

    def forward(self, inputs: EncoderInput | TowerFeatures, objective: torch.Tensor | None = None) -> EncoderOutput:
        check_inputs(inputs)
        emb, records = self.encode(inputs)
        emb = F.normalize(emb.float(), dim=-1)
        zero = emb.new_zeros(())
        out = EncoderOutput(emb, zero, zero)
        records = [(r, s) for r, s in records if r.gates is not None]
        if not records or self.preference_logits is None:
            return out
        b = inputs.batch_size
        out.gates = torch.stack([sample_mean(r.gates.float(), s, b) for r, s in records]).mean(dim=0)
        out.aux_loss = torch.stack([r.aux_loss.float() for r, _ in records]).mean()
        out.preference = expert_preference(self.preference_logits)
        out.sparsity_loss = sparsity_loss(out.preference)
        load = out.gates.detach().mean(dim=0)
        out.stats = {"moe/aux_loss": float(out.aux_loss.detach()), "moe/sparsity_loss": float(out.sparsity_loss.detach())}
        out.stats.update({f"moe/load_{z}": float(v) for z, v in enumerate(load)})
        if objective is not None:
            omega = objective_weights(out.gates.detach(), out.preference.detach(), objective.to(emb.device))
            out.stats.update({f"moe/omega_{m}": float(v) for m, v in enumerate(omega)})
        return out


def check_inputs(inputs: EncoderInput | TowerFeatures) -> None:
    """Every sample needs at least one modality; shapes must agree."""
    b = inputs.batch_size
    if b == 0:
        raise ValueError("empty batch: nothing to encode")
    if isinstance(inputs, TowerFeatures):
        if inputs.image.shape[:2] != inputs.image_mask.shape or inputs.text.shape[:2] != inputs.text_mask.shape:
            raise ValueError(f"TowerFeatures shapes disagree: image {tuple(inputs.image.shape)} vs image_mask "
                             f"{tuple(inputs.image_mask.shape)}, text {tuple(inputs.text.shape)} vs text_mask "
                             f"{tuple(inputs.text_mask.shape)}")
    elif inputs.pixels.shape[:2] != inputs.image_mask.shape or inputs.text_ids.shape != inputs.text_mask.shape:
        raise ValueError(f"EncoderInput shapes disagree: pixels {tuple(inputs.pixels.shape)} vs image_mask "
                         f"{tuple(inputs.image_mask.shape)}, text_ids {tuple(inputs.text_ids.shape)} vs text_mask "
                         f"{tuple(inputs.text_mask.shape)}")
    empty = ~(inputs.has_image | inputs.has_text)
    if empty.any():
        rows = empty.nonzero(as_tuple=True)[0].tolist()
        raise ValueError(f"samples {rows[:8]} have neither an image nor text; drop them before encoding")


def matryoshka(embedding: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, D) -> the first `dim` coordinates, re-normalised: (B, dim)."""
    if not 0 < dim <= embedding.shape[-1]:
        raise MmrepError(f"matryoshka dim {dim} must be in 1..{embedding.shape[-1]}")
    return F.normalize(embedding[..., :dim], dim=-1)


def save_encoder(encoder: Encoder, out_dir: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` (atomically; an existing dir is replaced whole)."""
    from safetensors.torch import save_model

    from mmrep.model.assets import bundle

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        # assets (tokenizer, configs) are copied in: the folder loads anywhere, no machine paths are stored
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "model": bundle(to_dict(encoder.cfg), tmp)}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        save_model(encoder, str(tmp / WEIGHTS_FILE))
    return out_dir


def load_config(path: str | Path) -> ModelConfig:
    """The ModelConfig stored in an encoder dir."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise MmrepError(f"{path} is not an mmrep encoder directory (no {CONFIG_FILE}); pass the dir save_encoder wrote")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise MmrepError(f"{file} is not valid JSON ({e.msg}); the encoder dir is corrupt") from None
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise MmrepError(f"{file} is not an {FORMAT} v{FORMAT_VERSION} config; re-export the encoder")
    from mmrep.model.assets import resolve

    return from_dict(ModelConfig, resolve(meta["model"], Path(path)), "model")


def load_encoder(path: str | Path, map_location: str = "cpu") -> Encoder:
    """Rebuild the encoder from its dir (no pickle): exact weights, eval mode."""
    from safetensors.torch import load_model

    cfg = load_config(path)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise MmrepError(f"{weights} is missing; the encoder dir is incomplete")
    from mmrep.model.registry import build_encoder

    encoder = build_encoder(cfg, load_pretrained=False)
    try:
        load_model(encoder, str(weights), strict=True, device=map_location)
    except Exception as e:  # safetensors header errors, shape mismatches
        raise MmrepError(f"cannot load {weights}: {str(e).splitlines()[0]}") from None
    return encoder.eval()
