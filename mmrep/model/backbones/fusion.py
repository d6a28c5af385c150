"""Backbone "fusion": a product as one sequence [image patch tokens ... | text tokens], fused by
transformer layers whose feed-forward blocks are MoE, masked-mean pooled, projected, normalised.

Each token gets a type embedding (`TokenType`: IMAGE for vision tokens, the tokenizer's per-field
types for text, which the guided router also reads) and vision tokens an image-slot embedding so
several images of one item stay distinguishable. Padding (missing images, short texts) is masked
in attention and pooling and skipped by the MoE, so a sample's output never depends on its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmrep.batch import EncoderInput, TokenType
from mmrep.errors import MmrepError
from mmrep.model.config import ModelConfig, MoEConfig, check_towers
from mmrep.model.encoder import Encoder
from mmrep.model.moe import Routing, build_moe
from mmrep.model.registry import register_backbone
from mmrep.model.towers import TextTokens, VisionTokens

NUM_TOKEN_TYPES = len(TokenType)


class FusionLayer(nn.Module):
    """Pre-LN transformer layer: masked self-attention, then an MoE (or dense) FFN on real tokens only."""

    def __init__(self, width: int, heads: int, hidden: int, moe: MoEConfig):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.ffn = build_moe(width, hidden, moe)

    def zero_residual_branches(self) -> None:
        """Make the layer the identity at init (pre-LN: x + 0 + 0); gradients still reach every weight."""
        branch_outputs = [self.out, *(m.fc2 for m in self.ffn.modules() if isinstance(getattr(m, "fc2", None), nn.Linear))]
        for linear in branch_outputs:
            nn.init.zeros_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, types: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, Routing]:
        """x (B, S, W), mask (B, S) bool, types (B, S), rows = mask.nonzero() -> (x, Routing over the T real tokens)."""
        b, s, w = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = x + self.out(a.transpose(1, 2).reshape(b, s, w))
        real = x[rows]
        y, routing = self.ffn(self.ln_2(real), types[rows])
        return x.index_put(rows, real + y), routing


def assets(model: dict) -> tuple[str, ...]:
    return ("text",) if model["text"]["backend"] == "hf" and model["text"]["name"] else ()


@register_backbone("fusion", check_towers, assets, uniform_calls=True)
class FusionEncoder(Encoder):
    """Vision tower + text tower -> fusion transformer with MoE FFNs -> masked mean -> (B, embed_dim)."""

    def __init__(self, cfg: ModelConfig, load_pretrained: bool = True):
        super().__init__(cfg)
        fc = cfg.fusion
        self.vision = VisionTokens(cfg.vision, cfg.image_size, load_pretrained)
        self.text = TextTokens(cfg.text, cfg.tokenizer.context_length, load_pretrained)
        self.vision_proj = nn.Linear(self.vision.width, fc.width)
        self.text_proj = nn.Linear(self.text.width, fc.width)
        self.type_embedding = nn.Embedding(NUM_TOKEN_TYPES, fc.width)
        self.slot_embedding = nn.Embedding(fc.max_images, fc.width)
        nn.init.normal_(self.type_embedding.weight, std=0.02)
        nn.init.normal_(self.slot_embedding.weight, std=0.02)
        hidden = int(fc.width * fc.mlp_ratio)
        dense = MoEConfig(mode="dense")
        self.layers = nn.ModuleList(
            FusionLayer(fc.width, fc.heads, hidden, cfg.moe if (fc.layers - 1 - i) % fc.moe_every == 0 else dense)
            for i in range(fc.layers))
        if fc.identity_init:
            for layer in self.layers:
                layer.zero_residual_branches()
        self.ln_post = nn.LayerNorm(fc.width)
        self.proj = nn.Linear(fc.width, cfg.embed_dim)
        self.max_images = fc.max_images

    def tokens(self, inputs: EncoderInput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> sequence (B, S, W), mask (B, S) bool, token types (B, S)."""
        b, n = inputs.image_mask.shape
        seq, masks, types = [], [], []
        touch = None  # uniform_calls: a zero-valued term through a tower this batch has no input for
        if self.uniform_calls and not (n and inputs.image_mask.any()):
            s = self.cfg.image_size
            dummy = self.vision_proj(self.vision(inputs.pixels.new_zeros(1, 3, s, s)))
            slot = torch.zeros(1, dtype=torch.long, device=dummy.device)
            touch = 0 * (dummy.sum() + self.slot_embedding(slot).sum() + self.type_embedding(slot).sum())
        if n and inputs.image_mask.any():
            if n > self.max_images:
                raise MmrepError(f"a batch holds items with {n} images but model.fusion.max_images is "
                                 f"{self.max_images}; raise it or cap images in the data config")
            patches = self.vision_proj(self.vision(inputs.pixels[inputs.image_mask]))  # (n_real, P, W)
            p, w = patches.shape[1], patches.shape[2]
            grid = patches.new_zeros(b, n, p, w).index_put((*inputs.image_mask.nonzero(as_tuple=True),), patches)
            # module calls, not `.weight` slicing: ZeRO-3 gathers a partitioned parameter only inside its module
            slot_ids = torch.arange(n, device=patches.device)
            slots = (self.slot_embedding(slot_ids) + self.type_embedding(torch.full_like(slot_ids, int(TokenType.IMAGE))))[:, None, :]
            seq.append((grid + slots).reshape(b, n * p, w))
            masks.append(inputs.image_mask[:, :, None].expand(b, n, p).reshape(b, n * p))
            types.append(torch.full((b, n * p), int(TokenType.IMAGE), dtype=torch.long, device=grid.device))
        if inputs.text_ids.shape[1] and inputs.text_mask.any():
            states = self.text_proj(self.text(inputs.text_ids, inputs.text_mask))
            seq.append(states + self.type_embedding(inputs.text_types))
            masks.append(inputs.text_mask)
            types.append(inputs.text_types)
        elif self.uniform_calls:
            ids = torch.ones(1, 2, dtype=torch.long, device=inputs.image_mask.device)
            dummy = self.text_proj(self.text(ids, torch.ones_like(ids, dtype=torch.bool)))
            term = 0 * (dummy.sum() + self.type_embedding(ids).sum())
            touch = term if touch is None else touch + term
        x = torch.cat(seq, 1)
        return (x if touch is None else x + touch), torch.cat(masks, 1), torch.cat(types, 1)

    def encode(self, inputs: EncoderInput) -> tuple[torch.Tensor, list[tuple[Routing, torch.Tensor]]]:
        x, mask, types = self.tokens(inputs)
        rows = mask.nonzero(as_tuple=True)
        records = []
        for layer in self.layers:
            x, routing = layer(x, mask, types, rows)
            records.append((routing, rows[0]))
        m = mask[..., None].to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1)
        return self.proj(self.ln_post(pooled)), records

