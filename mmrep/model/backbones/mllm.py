"""Backbone "mllm": a Qwen2-VL / Qwen2.5-VL model whose decoder MLPs become upcycled MoE layers.

Every expert starts as a copy of the dense MLP and the top-k weights sum to 1, so at init the
MoE model reproduces the dense one. The embedding is the masked mean of the last hidden layer
(after the final norm) over all real tokens, projected to `embed_dim`, as MOON does.

Sequence per sample: for each image `<vision_start> <image_pad> x n <vision_end>`, then the text
tokens; right padding (causal attention: padding never reaches a real token). Images become
Qwen's flattened patches (`pixel_values`, `image_grid_thw`) exactly as its image processor lays
them out, from our already-normalised (3, H, W) tensors.

Token ids: with `tokenizer.backend: hf` pointing at the checkpoint's tokenizer the ids are native.
Otherwise (the tiny random config, open_clip ids) ids are folded into the model's vocabulary as
`1 + id % (vocab - 4)`: 0 stays padding and the top three ids are the image/vision-start/end
specials. Collisions are possible (49,408 ids into a small vocab); it is for tests and CPU runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmrep.batch import EncoderInput, TokenType
from mmrep.errors import MmrepError
from mmrep.model.config import ModelConfig
from mmrep.model.encoder import Encoder
from mmrep.model.moe import Routing, RoutedFFN, upcycle
from mmrep.model.qwen import qwen_classes
from mmrep.model.registry import register_backbone


def tiny_config(cfg: ModelConfig) -> Any:
    """A small random Qwen2-VL-family config built offline from `cfg.mllm`."""
    m = cfg.mllm
    config_cls, _ = qwen_classes(m.family)
    head_dim = m.hidden_size // m.heads
    if head_dim % 2 or head_dim < 8:
        raise MmrepError("model.mllm.hidden_size / heads must be an even head size of at least 8")
    half = head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]  # temporal, height, width rotary split
    v = m.vocab_size
    text = dict(vocab_size=v, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                num_hidden_layers=m.layers, num_attention_heads=m.heads, num_key_value_heads=m.kv_heads,
                max_position_embeddings=4096, bos_token_id=None, eos_token_id=None, pad_token_id=0,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                               "mrope_section": section})
    vision = dict(depth=m.vision_depth, embed_dim=m.vision_width, hidden_size=m.hidden_size, num_heads=m.vision_heads,
                  patch_size=m.patch_size, spatial_merge_size=2, temporal_patch_size=2)
    if m.family == "qwen2_5_vl":
        vision = dict(depth=m.vision_depth, hidden_size=m.vision_width, intermediate_size=2 * m.vision_width,
                      out_hidden_size=m.hidden_size, num_heads=m.vision_heads, patch_size=m.patch_size,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=4 * m.patch_size,
                      fullatt_block_indexes=[m.vision_depth - 1])
    return config_cls(text_config=text, vision_config=vision, image_token_id=v - 3, video_token_id=v - 4,
                      vision_start_token_id=v - 2, vision_end_token_id=v - 1)


def qwen_patches(images: torch.Tensor, patch: int, temporal: int, merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, H, W) -> flattened patches (Σ t·h·w, 3·temporal·patch²) and grid_thw (n, 3), Qwen's layout."""
    n, c, height, width = images.shape
    gh, gw = height // patch, width // patch
    x = images[:, None].expand(n, temporal, c, height, width)  # a still image fills the temporal patch
    x = x.reshape(n, 1, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    flat = x.reshape(n * gh * gw, c * temporal * patch * patch)
    grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long, device=images.device)
    return flat, grid


def check_config(cfg: ModelConfig) -> None:
    if cfg.image_size % (2 * cfg.mllm.patch_size):
        raise MmrepError("model.image_size must be a multiple of 2 * model.mllm.patch_size (Qwen2-VL merges 2x2)")


def assets(model: dict) -> tuple[str, ...]:
    return ("mllm",) if model["mllm"]["path"] else ()


@register_backbone("mllm", check_config, assets)
class MllmEncoder(Encoder):
    """Qwen2-VL-family model (HF transformers) with upcycled MoE decoder MLPs -> (B, embed_dim)."""

    def __init__(self, cfg: ModelConfig, load_pretrained: bool = True):
        super().__init__(cfg)
        m = cfg.mllm
        config_cls, model_cls = qwen_classes(m.family)
        if m.path:
            if not Path(m.path).is_dir():
                raise MmrepError(f"model.mllm.path {m.path!r} is not a directory; point it at a local checkpoint")
            if load_pretrained:
                self.model = model_cls.from_pretrained(m.path, trust_remote_code=False)
            else:
                self.model = model_cls._from_config(config_cls.from_pretrained(m.path, trust_remote_code=False))
        else:
            self.model = model_cls._from_config(tiny_config(cfg))
        self.model.config.use_cache = False
        config = self.model.config
        self.native_ids = cfg.tokenizer.backend == "hf"
        self.vocab = config.text_config.vocab_size
        self.image_token, self.start_token, self.end_token = (
            config.image_token_id, config.vision_start_token_id, config.vision_end_token_id)
        vc = config.vision_config
        self.patch, self.temporal, self.merge = vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size
        if cfg.image_size % (self.patch * self.merge):
            raise MmrepError(f"model.image_size ({cfg.image_size}) must be a multiple of {self.patch * self.merge} "
                             "(patch size x spatial merge) for this checkpoint")
        hidden = config.text_config.hidden_size
        self.proj = nn.Linear(hidden, cfg.embed_dim)
        self.routed: list[RoutedFFN] = []
        if cfg.moe.enabled:
            layers = self.model.language_model.layers
            chosen = m.moe_layers or list(range(len(layers)))
            for i in chosen:
                if not 0 <= i < len(layers):
                    raise MmrepError(f"model.mllm.moe_layers entry {i} is outside 0..{len(layers) - 1}")
                layers[i].mlp = RoutedFFN(upcycle(layers[i].mlp, hidden, cfg.moe))
                self.routed.append(layers[i].mlp)

    def map_ids(self, ids: torch.Tensor) -> torch.Tensor:
        if self.native_ids:
            return ids
        return 1 + ids % (self.vocab - 4)

    def prepare(self, inputs: EncoderInput) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """-> (HF forward kwargs, mask (B, S) bool, TokenType per position (B, S))."""
        b, n = inputs.image_mask.shape
        device = inputs.text_ids.device
        per_image = 0
        kwargs: dict[str, torch.Tensor] = {}
        if n and inputs.image_mask.any():
            flat, grid = qwen_patches(inputs.pixels[inputs.image_mask], self.patch, self.temporal, self.merge)
            kwargs.update(pixel_values=flat, image_grid_thw=grid)
            per_image = int(grid[0, 1] * grid[0, 2]) // self.merge ** 2
        block = [self.start_token] + [self.image_token] * per_image + [self.end_token]
        block_types = [int(TokenType.SPECIAL)] + [int(TokenType.IMAGE)] * per_image + [int(TokenType.SPECIAL)]
        text_ids = self.map_ids(inputs.text_ids)
        seqs, kinds = [], []
        for i in range(b):
            k = int(inputs.image_mask[i].sum()) if n else 0
            real = inputs.text_mask[i]
            seqs.append(block * k + text_ids[i][real].tolist())
            kinds.append(block_types * k + inputs.text_types[i][real].tolist())
        length = max(len(s) for s in seqs)
        ids = torch.zeros(b, length, dtype=torch.long, device=device)
        types = torch.zeros(b, length, dtype=torch.long, device=device)
        for i, (s, t) in enumerate(zip(seqs, kinds)):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            types[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        mask = types != int(TokenType.PAD)
        kwargs.update(input_ids=ids, attention_mask=mask.long(),
                      mm_token_type_ids=(ids == self.image_token).int())
        return kwargs, mask, types

    def encode(self, inputs: EncoderInput) -> tuple[torch.Tensor, list[tuple[Routing, torch.Tensor]]]:
        kwargs, mask, types = self.prepare(inputs)
        for ffn in self.routed:
            ffn.context, ffn.records = (types, mask), []
        try:
            hidden = self.model(**kwargs).last_hidden_state
        finally:
            records = [rec for ffn in self.routed for rec in ffn.records]
            for ffn in self.routed:
                ffn.context, ffn.records = None, []
        return self.proj(masked_mean(hidden, mask)), records


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, S, H), (B, S) bool -> (B, H) mean over real positions."""
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)
