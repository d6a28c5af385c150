"""Backbone "clip": the dense open_clip two-tower baseline, and its export to open_clip's format.

image-only -> encode_image (several images: mean of the normalised image embeddings);
text-only -> encode_text on the open_clip ids our tokenizer emits (SOT/EOT included);
image + text -> the normalised sum of both. Output is L2-normalised by `Encoder.forward`.
`TowerFeatures` (cached outputs of frozen towers, `mmrep.train.feature_cache`) -> the same, heads only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmrep.batch import EncoderInput, TowerFeatures
from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_dir
from mmrep.model.config import ModelConfig, check_towers
from mmrep.model.encoder import Encoder
from mmrep.model.moe import Routing
from mmrep.model.registry import register_backbone
from mmrep.model.towers import OPEN_CLIP_VOCAB, freeze_hf_below, open_clip_model_cfg, open_clip_state

# HF text towers encode a batch in up to TEXT_BUCKETS length buckets of at least MIN_BUCKET_ROWS rows each
TEXT_BUCKETS = 4
MIN_BUCKET_ROWS = 16


def clip_model_cfg(cfg: ModelConfig, load_pretrained: bool = True) -> dict[str, Any]:
    """open_clip `model_cfg` (the dict `open_clip_config.json` holds) for this ModelConfig.

    `text.backend: hf` gives open_clip's HF text tower (mean-pooled, linear projection), i.e. a
    `CustomTextCLIP`; `load_pretrained` says whether it loads the HF weights (False: load_encoder fills them).
    """
    if cfg.clip.name:
        model_cfg = dict(open_clip_model_cfg(cfg.clip.name))
        if model_cfg["embed_dim"] != cfg.embed_dim:
            raise MmrepError(f"model.embed_dim ({cfg.embed_dim}) must equal {cfg.clip.name}'s {model_cfg['embed_dim']}")
        model_cfg["vision_cfg"] = dict(model_cfg["vision_cfg"], image_size=cfg.image_size)
    elif cfg.vision.backend == "timm" and cfg.vision.name:
        t = cfg.text
        model_cfg = {
            "embed_dim": cfg.embed_dim,
            # open_clip's timm tower: the trunk's pooled features, then a linear projection (weights: see below)
            "vision_cfg": {"image_size": cfg.image_size, "timm_model_name": cfg.vision.name,
                           "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": cfg.vision.proj},
            "text_cfg": {"context_length": cfg.tokenizer.context_length, "vocab_size": OPEN_CLIP_VOCAB,
                         "width": t.width, "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio},
        }
    else:
        v, t = cfg.vision, cfg.text
        model_cfg = {
            "embed_dim": cfg.embed_dim,
            "vision_cfg": {"image_size": cfg.image_size, "layers": v.layers, "width": v.width,
                           "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio, "patch_size": v.patch_size},
            "text_cfg": {"context_length": cfg.tokenizer.context_length, "vocab_size": OPEN_CLIP_VOCAB,
                         "width": t.width, "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio},
        }
    if cfg.text.backend == "hf":
        if not cfg.text.name:
            raise MmrepError("model.text.name must name an HF text model (a directory or python:PACKAGE) for a "
                             "clip backbone with text.backend 'hf'")
        from mmrep.pretrained import resolve_model_dir

        path = resolve_model_dir(cfg.text.name, "model.text.name")
        model_cfg["text_cfg"] = {"hf_model_name": path, "hf_tokenizer_name": path, "hf_model_pretrained": load_pretrained,
                                 "hf_pooler_type": "mean_pooler", "hf_proj_type": cfg.text.proj,
                                 "context_length": cfg.tokenizer.context_length}
    # DeepSpeed 0.19.8 crashes on 0-dim parameters (logit_scale): keep it shape [1].
    model_cfg["nonscalar_logit_scale"] = True
    return model_cfg


def check_config(cfg: ModelConfig) -> None:
    check_towers(cfg)
    if cfg.vision.proj != "linear" and not (cfg.vision.backend == "timm" and cfg.vision.name and not cfg.clip.name):
        raise MmrepError("model.vision.proj 'mlp' needs a timm vision tower (model.vision.backend: timm and a name)")
    if cfg.text.proj != "linear" and cfg.text.backend != "hf":
        raise MmrepError("model.text.proj 'mlp' needs an HF text tower (model.text.backend: hf)")
    if cfg.moe.enabled:
        raise MmrepError("model.backbone 'clip' is the dense two-tower baseline: set model.moe.mode to 'dense'")


def assets(model: dict) -> tuple[str, ...]:
    return ("text",) if model["text"]["backend"] == "hf" and model["text"]["name"] else ()


@register_backbone("clip", check_config, assets)
class ClipEncoder(Encoder):
    """open_clip `CLIP` behind the Encoder interface; `self.clip` is a plain open_clip model."""

    def __init__(self, cfg: ModelConfig, load_pretrained: bool = True):
        super().__init__(cfg)
        from open_clip.model import CLIP, CustomTextCLIP

        self.model_cfg = clip_model_cfg(cfg, load_pretrained)
        self.hf_text = cfg.text.backend == "hf"
        self.clip = (CustomTextCLIP if self.hf_text else CLIP)(**self.model_cfg)
        if self.hf_text:
            # export writes a config that open_clip can rebuild; the weights come from the safetensors file
            self.model_cfg["text_cfg"]["hf_model_pretrained"] = False
            if cfg.text.trainable_layers >= 0:
                # our own lock: open_clip 3.3's HF lock knows no layer list for BERT-style models
                freeze_hf_below(self.clip.text.transformer, cfg.text.trainable_layers)
        self.timm_vision = "timm_model_name" in self.model_cfg["vision_cfg"]
        if self.timm_vision and cfg.vision.pretrained and load_pretrained:
            from mmrep.pretrained import load_weights, resolve_weights_file
            from mmrep.model.towers import load_ported_state

            path = resolve_weights_file(cfg.vision.pretrained, "model.vision.pretrained")
            load_ported_state(self.clip.visual.trunk, load_weights(path), f"model.vision.pretrained {path}")
        if cfg.vision.trainable_layers >= 0:
            self.clip.lock_image_tower(unlocked_groups=cfg.vision.trainable_layers)
        if self.timm_vision:
            # CNN trunks run 1.85x faster on CPU in channels-last layout (benchmarks/bench_trunk_layout.py), same results
            self.clip.visual.trunk.to(memory_format=torch.channels_last)
        if cfg.clip.name and cfg.clip.pretrained and load_pretrained:
            from open_clip.model import resize_pos_embed

            state = open_clip_state(cfg.clip.name, cfg.clip.pretrained)
            state["logit_scale"] = state["logit_scale"].reshape(1)
            resize_pos_embed(state, self.clip)
            self.clip.load_state_dict(state)
        self.context_length = cfg.tokenizer.context_length if self.hf_text else self.clip.context_length
        if cfg.tokenizer.context_length > self.context_length:
            raise MmrepError(f"model.tokenizer.context_length ({cfg.tokenizer.context_length}) exceeds the CLIP "
                             f"text context ({self.context_length})")

    def train(self, mode: bool = True) -> "ClipEncoder":
        super().train(mode)
        if self.hf_text and self.cfg.text.trainable_layers == 0:
            self.clip.text.transformer.eval()  # a frozen tower is a fixed feature extractor: no dropout noise
        if mode and self.cfg.vision.trainable_layers >= 0:
            # a locked pretrained tower keeps its BatchNorm statistics: small CPU batches would only add noise
            for m in self.clip.visual.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    @property
    def frozen_towers(self) -> str:
        """Why the towers' outputs cannot be cached (`mmrep.train.feature_cache`), or "" when both are frozen
        feature extractors under trainable heads."""
        if not self.timm_vision or self.cfg.vision.trainable_layers != 0:
            return "the vision tower must be a timm tower with model.vision.trainable_layers: 0"
        if not self.hf_text or self.cfg.text.trainable_layers != 0:
            return "the text tower must be an HF tower with model.text.trainable_layers: 0"
        return ""

    def image_trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) -> (M, Di): the timm trunk's pooled features (what the vision head reads)."""
        return self.clip.visual.trunk(pixels.contiguous(memory_format=torch.channels_last))

    def text_trunk(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) HF ids, 0-padded -> (B, Dt): the HF tower's mean-pooled features (what the text head reads)."""
        text = self.clip.text
        mask = (ids != text.config.pad_token_id).long()
        return text.pooler(text.transformer(input_ids=ids, attention_mask=mask), mask)

    def _images(self, flat: torch.Tensor, features: bool) -> torch.Tensor:
        """Normalised embeddings of M images given as pixels (M, 3, H, W) or trunk features (M, Di)."""
        if features:
            return F.normalize(self.clip.visual.head(flat), dim=-1)
        if self.timm_vision:
            return F.normalize(self.clip.visual.head(self.image_trunk(flat)), dim=-1)
        return self.clip.encode_image(flat, normalize=True)

    def encode(self, inputs: EncoderInput | TowerFeatures) -> tuple[torch.Tensor, list[tuple[Routing, torch.Tensor]]]:
        b = inputs.batch_size
        out = None
        cached = isinstance(inputs, TowerFeatures)
        images = inputs.image if cached else inputs.pixels
        if inputs.image_mask.shape[1] == 1 and inputs.image_mask.all():  # one image each: no gather / scatter
            out = self._images(images[:, 0], cached)
        elif inputs.image_mask.shape[1] and inputs.image_mask.any():
            rows = inputs.image_mask.nonzero(as_tuple=True)[0]
            img = self._images(images[inputs.image_mask], cached)
            total = img.new_zeros(b, img.shape[1]).index_add(0, rows, img)
            count = torch.bincount(rows, minlength=b).clamp_min(1).to(img.dtype)
            out = F.normalize(total / count[:, None], dim=-1) * inputs.has_image[:, None]
        if cached:
            if inputs.text_mask.shape[1]:
                txt = F.normalize(self.clip.text.proj(inputs.text[:, 0]), dim=-1) * inputs.has_text[:, None]
                out = txt if out is None else out + txt
            return out, []
        if inputs.text_ids.shape[1] and inputs.text_mask.any():
            ids = inputs.text_ids * inputs.text_mask
            if ids.shape[1] > self.context_length:
                raise ValueError(f"text length {ids.shape[1]} exceeds the CLIP context {self.context_length}")
            if not self.hf_text:
                # open_clip adds all context_length positions: pad on the right (causal mask -> no effect on real
                # tokens). The HF tower masks padding (id 0 for BERT-style vocabularies) and needs no padding.
                ids = F.pad(ids, (0, self.context_length - ids.shape[1]))
            txt = (self._encode_hf_text(ids, inputs.text_mask) if self.hf_text
                   else self.clip.encode_text(ids, normalize=True)) * inputs.has_text[:, None]
            out = txt if out is None else out + txt
        return out, []

    def _encode_hf_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The HF text tower over length buckets: rows sorted by length, each bucket padded to its own longest.

        A transformer's cost grows with the padded length, and sampled text views mix short titles with
        full records, so one batch-wide padding would spend most of the text tower on padding. The
        masked mean pooling makes the result independent of the padding (equal up to float rounding).
        """
        lengths = mask.sum(1)
        b = ids.shape[0]
        buckets = min(TEXT_BUCKETS, max(1, b // MIN_BUCKET_ROWS))
        if buckets == 1 or int(lengths.min()) == ids.shape[1]:
            return self.clip.encode_text(ids, normalize=True)
        order = lengths.argsort(descending=True)
        parts = []
        for rows in order.tensor_split(buckets):
            length = max(int(lengths[rows].max()), 1)
            parts.append(self.clip.encode_text(ids[rows, :length], normalize=True))
        out = torch.cat(parts)
        return out.new_empty(out.shape).index_copy(0, order, out)


def export_open_clip(encoder: ClipEncoder, out_dir: str | Path) -> Path:
    """Write `open_clip_config.json` + `open_clip_model.safetensors`, loadable as `local-dir:DIR` by open_clip."""
    from safetensors.torch import save_file

    if not isinstance(encoder, ClipEncoder):
        raise MmrepError("only backbone 'clip' encoders export to the open_clip format")
    cfg = encoder.cfg
    meta = {
        "model_cfg": encoder.model_cfg,
        "preprocess_cfg": {"size": cfg.image_size, "mean": list(cfg.image_mean), "std": list(cfg.image_std),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / "open_clip_config.json").write_text(json.dumps(meta, indent=2))
        state = {k: v.detach().contiguous() for k, v in encoder.clip.state_dict().items()}
        save_file(state, str(tmp / "open_clip_model.safetensors"))
    return out_dir
