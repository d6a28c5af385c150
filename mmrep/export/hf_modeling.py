"""Standalone inference code for an exported mmrep encoder (copied as `modeling_mmrep.py` into HF exports).

This file must NOT import mmrep: it is the custom code (`auto_map`) a user opts into with
`trust_remote_code=True` to load the encoder with `transformers.AutoModel`, and it needs only torch,
transformers and (for open_clip / timm towers) open_clip_torch / timm. It mirrors mmrep's inference
path (backbones fusion / clip / mllm, native MoE, tokenizer segments, eval image transform); the export
tests compare it with mmrep to 1e-5.

    model = AutoModel.from_pretrained(DIR, trust_remote_code=True).eval()
    emb = model.encode(texts=["red shirt"], images=[pil_image])            # (B, D), L2-normalised
    emb = model.encode(texts=[{"title": ..., "category": [...], "attributes": {...}}], kind="product")
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

# Token types (mmrep.batch.TokenType): the fusion reads them as embeddings, the guided MoE routes on them.
PAD, SPECIAL, TITLE, CATEGORY, ATTRIBUTE, DESCRIPTION, QUERY, IMAGE = range(8)
NUM_TOKEN_TYPES = 8
CATEGORY_EXPERT, ATTRIBUTE_EXPERT = 0, 1


class MmrepEncoderConfig(PretrainedConfig):
    """`mmrep`: the encoder's ModelConfig as a dict; `towers`: resolved tower configs (no names to look up)."""

    model_type = "mmrep_encoder"

    def __init__(self, mmrep: Optional[dict] = None, towers: Optional[dict] = None, **kwargs: Any):
        self.mmrep = mmrep or {}
        self.towers = towers or {}
        super().__init__(**kwargs)


@dataclass
class MmrepEncoderOutput(ModelOutput):
    """embedding (B, D) L2-normalised (also under `pooler_output` for generic callers)."""

    embedding: Optional[torch.Tensor] = None
    pooler_output: Optional[torch.Tensor] = None


# ----------------------------------------------------------------------------------------------- MoE


class ExpertMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MoELayer(nn.Module):
    """Token-level MoE FFN (mmrep's native layer, inference only): x (T, D), types (T,) -> (T, D)."""

    def __init__(self, dim: int, experts: list, mode: str, top_k: int, raw_top1: bool = False):
        super().__init__()
        self.mode, self.top_k = mode, top_k
        self.raw_top1 = raw_top1  # DeepSpeed's MoE (training backend) scales a top-1 expert by its gate probability
        self.experts = nn.ModuleList(experts)
        self.num_experts = len(experts)
        self.first_gated = 2 if mode == "guided" else 0
        self.gate = nn.Linear(dim, self.num_experts - self.first_gated, bias=False) if mode != "dense" else None

    def forward(self, x: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.experts[0](x)
        t = x.shape[0]
        routed = None
        if self.mode == "guided":
            fixed = torch.full((t,), -1, dtype=torch.long, device=x.device)
            fixed[types == CATEGORY] = CATEGORY_EXPERT
            fixed[types == ATTRIBUTE] = ATTRIBUTE_EXPERT
            routed = (fixed < 0).nonzero(as_tuple=True)[0]
            pinned = (fixed >= 0).nonzero(as_tuple=True)[0]
        xr = x if routed is None else x[routed]
        probs = F.softmax(self.gate(xr).float(), dim=-1)
        top_p, idx = probs.topk(self.top_k, dim=-1)
        if self.top_k == 1:
            w = top_p if self.raw_top1 else top_p / top_p
        else:
            w = top_p / top_p.sum(dim=-1, keepdim=True)
        idx = idx + self.first_gated
        tok = torch.arange(t, device=x.device) if routed is None else routed
        tok = tok[:, None].expand_as(idx)
        if routed is not None:
            tok = torch.cat([tok.reshape(-1), pinned])
            idx = torch.cat([idx.reshape(-1), fixed[pinned]])
            w = torch.cat([w.reshape(-1), w.new_ones(pinned.shape[0])])
        tok, idx, w = tok.reshape(-1), idx.reshape(-1), w.reshape(-1)
        order = torch.argsort(idx, stable=True)
        tok, w = tok[order], w[order]
        counts = torch.bincount(idx, minlength=self.num_experts).tolist()
        y = torch.zeros_like(x)
        start = 0
        for e, n in enumerate(counts):
            if n:
                rows = tok[start:start + n]
                y.index_add_(0, rows, (self.experts[e](x[rows]) * w[start:start + n, None]).to(y.dtype))
                start += n
        return y


def build_moe(dim: int, hidden: int, moe: dict) -> MoELayer:
    mode = moe["mode"]
    n = moe["num_experts"] if mode != "dense" else 1
    return MoELayer(dim, [ExpertMLP(dim, hidden) for _ in range(n)], mode, moe["top_k"], _raw_top1(moe))


def _raw_top1(moe: dict) -> bool:
    return moe.get("backend") == "deepspeed" and moe["mode"] != "dense"


# -------------------------------------------------------------------------------------------- towers


def _open_clip_model():
    try:
        import open_clip.model as oc_model
    except ImportError as e:
        raise ImportError("this encoder uses open_clip towers: pip install open_clip_torch") from e
    return oc_model


class VisionTokens(nn.Module):
    """images (n, 3, H, W) -> patch tokens (n, P, width)."""

    def __init__(self, vision: dict, image_size: int, resolved: dict):
        super().__init__()
        self.backend = vision["backend"]
        if self.backend == "open_clip":
            oc = _open_clip_model()
            self.vit = oc._build_vision_tower(16, oc.CLIPVisionCfg(**resolved["vision_cfg"]))
            self.vit.proj = None
        else:
            try:
                import timm
                from timm.models.vision_transformer import VisionTransformer
            except ImportError as e:
                raise ImportError("this encoder uses a timm vision tower: pip install timm") from e
            if vision["name"]:
                self.vit = timm.create_model(vision["name"], num_classes=0, img_size=image_size, pretrained=False)
            else:
                self.vit = VisionTransformer(img_size=image_size, patch_size=vision["patch_size"], embed_dim=vision["width"],
                                             depth=vision["layers"], num_heads=vision["heads"],
                                             mlp_ratio=vision["mlp_ratio"], num_classes=0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.backend == "open_clip":
            v = self.vit
            return v.ln_post(v.transformer(v._embeds(images)))[:, 1:]
        return self.vit.forward_features(images)[:, self.vit.num_prefix_tokens:]


class TextTokens(nn.Module):
    """ids (B, L), mask (B, L) -> token states (B, L, width)."""

    def __init__(self, text: dict, resolved: dict):
        super().__init__()
        self.backend = text["backend"]
        if self.backend == "open_clip":
            oc = _open_clip_model()
            tower = oc._build_text_tower(16, oc.CLIPTextCfg(**resolved["text_cfg"]))
            self.token_embedding = tower.token_embedding
            self.positional_embedding = tower.positional_embedding
            self.transformer = tower.transformer
            self.ln_final = tower.ln_final
        else:
            hf_cfg = dict(resolved["text_hf_config"])
            self.hf = AutoModel.from_config(AutoConfig.for_model(**hf_cfg))
            if getattr(self.hf, "pooler", None) is not None:
                self.hf.pooler = None

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.backend == "open_clip":
            length = ids.shape[1]
            x = self.token_embedding(ids) + self.positional_embedding[:length]
            causal = torch.full((length, length), float("-inf"), device=ids.device).triu(1)
            return self.ln_final(self.transformer(x, attn_mask=causal))
        return self.hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state


# ------------------------------------------------------------------------------------------ backbones


class FusionLayer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, moe: dict):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.ffn = build_moe(width, hidden, moe)

    def forward(self, x, mask, types, rows):
        b, s, w = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = x + self.out(a.transpose(1, 2).reshape(b, s, w))
        real = x[rows]
        return x.index_put(rows, real + self.ffn(self.ln_2(real), types[rows]))


class FusionBackbone(nn.Module):
    """Vision + text tokens -> fusion transformer with MoE FFNs -> masked mean -> (B, embed_dim)."""

    def __init__(self, m: dict, resolved: dict):
        super().__init__()
        fc = m["fusion"]
        self.vision = VisionTokens(m["vision"], m["image_size"], resolved)
        self.text = TextTokens(m["text"], resolved)
        self.vision_proj = nn.Linear(resolved["vision_width"], fc["width"])
        self.text_proj = nn.Linear(resolved["text_width"], fc["width"])
        self.type_embedding = nn.Embedding(NUM_TOKEN_TYPES, fc["width"])
        self.slot_embedding = nn.Embedding(fc["max_images"], fc["width"])
        hidden = int(fc["width"] * fc["mlp_ratio"])
        dense = {"mode": "dense", "num_experts": 1, "top_k": 1}
        n = fc["layers"]
        self.layers = nn.ModuleList(
            FusionLayer(fc["width"], fc["heads"], hidden, m["moe"] if (n - 1 - i) % fc["moe_every"] == 0 else dense)
            for i in range(n))
        self.ln_post = nn.LayerNorm(fc["width"])
        self.proj = nn.Linear(fc["width"], m["embed_dim"])
        if m["moe"]["mode"] != "dense":  # W* is a training-time parameter; kept so the weights load strictly
            self.preference_logits = nn.Parameter(torch.zeros(m["moe"]["num_experts"], m["moe"]["num_objectives"]))

    def forward(self, pixels, image_mask, ids, types, mask):
        b, n = image_mask.shape
        seq, masks, kinds = [], [], []
        if n and image_mask.any():
            patches = self.vision_proj(self.vision(pixels[image_mask]))
            p, w = patches.shape[1], patches.shape[2]
            grid = patches.new_zeros(b, n, p, w).index_put((*image_mask.nonzero(as_tuple=True),), patches)
            slot_ids = torch.arange(n, device=patches.device)
            slots = (self.slot_embedding(slot_ids) + self.type_embedding(torch.full_like(slot_ids, IMAGE)))[:, None, :]
            seq.append((grid + slots).reshape(b, n * p, w))
            masks.append(image_mask[:, :, None].expand(b, n, p).reshape(b, n * p))
            kinds.append(torch.full((b, n * p), IMAGE, dtype=torch.long, device=grid.device))
        if ids.shape[1] and mask.any():
            seq.append(self.text_proj(self.text(ids, mask)) + self.type_embedding(types))
            masks.append(mask)
            kinds.append(types)
        x, mask, types = torch.cat(seq, 1), torch.cat(masks, 1), torch.cat(kinds, 1)
        rows = mask.nonzero(as_tuple=True)
        for layer in self.layers:
            x = layer(x, mask, types, rows)
        m = mask[..., None].to(x.dtype)
        return self.proj(self.ln_post((x * m).sum(1) / m.sum(1)))


class ClipBackbone(nn.Module):
    """open_clip two-tower: image / text / normalised sum of both."""

    def __init__(self, m: dict, resolved: dict):
        super().__init__()
        oc = _open_clip_model()
        model_cfg = json.loads(json.dumps(resolved["open_clip_model_cfg"]))
        self.hf_text = "hf_model_name" in model_cfg["text_cfg"]
        if self.hf_text:
            # open_clip's HF tower reads its config from a folder: give it one built from the stored dict
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "config.json"), "w") as f:
                    json.dump(resolved["text_hf_config"], f)
                model_cfg["text_cfg"].update(hf_model_name=tmp, hf_tokenizer_name=tmp, hf_model_pretrained=False)
                self.clip = oc.CustomTextCLIP(**model_cfg)
        else:
            self.clip = oc.CLIP(**model_cfg)
        self.context_length = m["tokenizer"]["context_length"] if self.hf_text else self.clip.context_length

    def forward(self, pixels, image_mask, ids, types, mask):
        b = image_mask.shape[0]
        has_image, has_text = image_mask.any(dim=1), mask.any(dim=1)
        out = None
        if image_mask.shape[1] and image_mask.any():
            rows = image_mask.nonzero(as_tuple=True)[0]
            img = self.clip.encode_image(pixels[image_mask], normalize=True)
            total = img.new_zeros(b, img.shape[1]).index_add(0, rows, img)
            count = torch.bincount(rows, minlength=b).clamp_min(1).to(img.dtype)
            out = F.normalize(total / count[:, None], dim=-1) * has_image[:, None]
        if ids.shape[1] and mask.any():
            ids = ids * mask
            if not self.hf_text:
                ids = F.pad(ids, (0, self.context_length - ids.shape[1]))
                # open_clip's causal mask is a non-persistent buffer: transformers' meta-device init leaves it unset
                n = self.clip.positional_embedding.shape[0]
                self.clip.attn_mask = torch.full((n, n), float("-inf"), device=ids.device).triu(1)
            txt = self.clip.encode_text(ids, normalize=True) * has_text[:, None]
            out = txt if out is None else out + txt
        return out


class RoutedFFN(nn.Module):
    """MoE in place of a Qwen decoder MLP; the backbone sets `context` (types, mask) before each forward."""

    def __init__(self, moe: MoELayer):
        super().__init__()
        self.moe = moe
        self.context = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        types, mask = self.context
        rows = mask.nonzero(as_tuple=True)
        out = torch.zeros_like(h)
        out[rows] = self.moe(h[rows], types[rows]).to(h.dtype)
        return out


class MllmBackbone(nn.Module):
    """Qwen2-VL-family model with upcycled MoE decoder MLPs -> masked mean of the last layer -> (B, embed_dim)."""

    def __init__(self, m: dict, resolved: dict):
        super().__init__()
        import transformers

        qcfg = dict(resolved["mllm_hf_config"])
        model_type = qcfg.pop("model_type")
        config = AutoConfig.for_model(model_type, **qcfg)
        model_cls = {"qwen2_vl": "Qwen2VLModel", "qwen2_5_vl": "Qwen2_5_VLModel"}[model_type]
        self.model = getattr(transformers, model_cls)._from_config(config)
        self.model.config.use_cache = False
        c = self.model.config
        self.native_ids = m["tokenizer"]["backend"] == "hf"
        self.vocab = c.text_config.vocab_size
        self.image_token, self.start_token, self.end_token = c.image_token_id, c.vision_start_token_id, c.vision_end_token_id
        vc = c.vision_config
        self.patch, self.temporal, self.merge = vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size
        hidden = c.text_config.hidden_size
        self.proj = nn.Linear(hidden, m["embed_dim"])
        self.routed = []
        moe = m["moe"]
        if moe["mode"] != "dense":
            self.preference_logits = nn.Parameter(torch.zeros(moe["num_experts"], moe["num_objectives"]))
            layers = self.model.language_model.layers
            for i in (m["mllm"]["moe_layers"] or range(len(layers))):
                experts = [_copy_module(layers[i].mlp) for _ in range(moe["num_experts"])]
                layers[i].mlp = RoutedFFN(MoELayer(hidden, experts, moe["mode"], moe["top_k"], _raw_top1(moe)))
                self.routed.append(layers[i].mlp)

    def patches(self, images: torch.Tensor):
        n, c, height, width = images.shape
        p, t, mg = self.patch, self.temporal, self.merge
        gh, gw = height // p, width // p
        x = images[:, None].expand(n, t, c, height, width)
        x = x.reshape(n, 1, t, c, gh // mg, mg, p, gw // mg, mg, p).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
        flat = x.reshape(n * gh * gw, c * t * p * p)
        return flat, torch.tensor([[1, gh, gw]] * n, dtype=torch.long, device=images.device)

    def forward(self, pixels, image_mask, ids, types, mask):
        b, n = image_mask.shape
        kwargs = {}
        per_image = 0
        if n and image_mask.any():
            flat, grid = self.patches(pixels[image_mask])
            kwargs.update(pixel_values=flat, image_grid_thw=grid)
            per_image = int(grid[0, 1] * grid[0, 2]) // self.merge ** 2
        block = [self.start_token] + [self.image_token] * per_image + [self.end_token]
        block_types = [SPECIAL] + [IMAGE] * per_image + [SPECIAL]
        text_ids = ids if self.native_ids else 1 + ids % (self.vocab - 4)
        seqs, kinds = [], []
        for i in range(b):
            k = int(image_mask[i].sum()) if n else 0
            seqs.append(block * k + text_ids[i][mask[i]].tolist())
            kinds.append(block_types * k + types[i][mask[i]].tolist())
        length = max(len(s) for s in seqs)
        all_ids = torch.zeros(b, length, dtype=torch.long, device=ids.device)
        all_types = torch.zeros(b, length, dtype=torch.long, device=ids.device)
        for i, (s, t) in enumerate(zip(seqs, kinds)):
            all_ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            all_types[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        real = all_types != PAD
        kwargs.update(input_ids=all_ids, attention_mask=real.long(), mm_token_type_ids=(all_ids == self.image_token).int())
        for ffn in self.routed:
            ffn.context = (all_types, real)
        try:
            hidden = self.model(**kwargs).last_hidden_state
        finally:
            for ffn in self.routed:
                ffn.context = None
        m = real[..., None].to(hidden.dtype)
        return self.proj((hidden * m).sum(1) / m.sum(1).clamp_min(1))


def _copy_module(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


BACKBONES = {"fusion": FusionBackbone, "clip": ClipBackbone, "mllm": MllmBackbone}


# ------------------------------------------------------------------------------------ inputs (no mmrep)


class ProductTokenizer:
    """mmrep's segment tokenizer: [start] title | category path | "key: value" ... | description [end]."""

    def __init__(self, tok_cfg: dict, folder: Optional[str]):
        self.context_length = tok_cfg["context_length"]
        self.lowercase = tok_cfg["lowercase"]
        if tok_cfg["backend"] == "open_clip":
            try:
                from open_clip.tokenizer import SimpleTokenizer
            except ImportError as e:
                raise ImportError("this encoder uses open_clip's tokenizer: pip install open_clip_torch") from e
            tok = SimpleTokenizer()
            self._encode = tok.encode
            self.sot_id, self.eot_id = tok.sot_token_id, tok.eot_token_id
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(folder)
            self._encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]
            self.sot_id = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
            self.eot_id = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id

    def _text(self, text: str) -> list:
        text = text.strip()
        return list(self._encode(text.lower() if self.lowercase else text)) if text else []

    def segments(self, item: Any, kind: str) -> list:
        if isinstance(item, str):
            return [(item, QUERY if kind == "query" else TITLE)]
        segs = [(item.get("title", ""), TITLE)]
        if item.get("category"):
            cat = item["category"]
            segs.append((" > ".join(cat) if isinstance(cat, (list, tuple)) else str(cat), CATEGORY))
        segs += [(f"{k}: {v}", ATTRIBUTE) for k, v in (item.get("attributes") or {}).items() if str(v).strip()]
        segs.append((item.get("description", ""), DESCRIPTION))
        return segs

    def encode(self, item: Any, kind: str = "query") -> tuple:
        ids, types = [], []
        for text, ttype in self.segments(item, kind):
            toks = self._text(text)
            ids += toks
            types += [ttype] * len(toks)
        if not ids:
            return [], []
        budget = self.context_length - 2 + (self.sot_id is None)
        ids, types = ids[:budget], types[:budget]
        head = [] if self.sot_id is None else [self.sot_id]
        return head + ids + [self.eot_id], [SPECIAL] * len(head) + types + [SPECIAL]


def image_to_pixels(img: Any, size: int, mean: list, std: list) -> torch.Tensor:
    """PIL image -> (3, S, S) float32: centre square crop, bicubic resize, normalise (mmrep's eval transform).
    A float tensor (3, S, S) is taken as already-normalised pixels."""
    if isinstance(img, torch.Tensor):
        return img.float()
    from PIL import Image

    img = img.convert("RGB") if img.mode != "RGB" else img
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    img = img.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
    a = torch.tensor([1.0 / (255.0 * s) for s in std]).view(3, 1, 1)
    b = torch.tensor([-m / s for m, s in zip(mean, std)]).view(3, 1, 1)
    return torch.mul(torch.from_numpy(np.array(img)).permute(2, 0, 1), a).add_(b)


# --------------------------------------------------------------------------------------------- model


class MmrepEncoderModel(PreTrainedModel):
    """An exported mmrep encoder. forward(...) takes mmrep's tensors; encode(...) takes texts / images."""

    config_class = MmrepEncoderConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    _no_split_modules: list = []

    def __init__(self, config: MmrepEncoderConfig):
        super().__init__(config)
        m = config.mmrep
        self.backbone = BACKBONES[m["backbone"]](m, config.towers)
        self._tokenizer = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # every weight comes from the checkpoint

    def forward(self, pixel_values: Optional[torch.Tensor] = None, image_mask: Optional[torch.Tensor] = None,
                input_ids: Optional[torch.Tensor] = None, token_types: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, **_: Any) -> MmrepEncoderOutput:
        """pixel_values (B, N, 3, H, W) normalised, image_mask (B, N) bool; input_ids / token_types /
        attention_mask (B, L). Either modality may be absent (None or width 0)."""
        ref = input_ids if input_ids is not None else pixel_values
        if ref is None:
            raise ValueError("give input_ids (text), pixel_values (images) or both")
        b = ref.shape[0]
        dev = ref.device
        size = self.config.mmrep["image_size"]
        if pixel_values is None:
            pixel_values = torch.zeros(b, 0, 3, size, size, device=dev)
            image_mask = torch.zeros(b, 0, dtype=torch.bool, device=dev)
        elif image_mask is None:
            image_mask = torch.ones(pixel_values.shape[:2], dtype=torch.bool, device=dev)
        if input_ids is None:
            input_ids = torch.zeros(b, 0, dtype=torch.long, device=dev)
            attention_mask = torch.zeros(b, 0, dtype=torch.bool, device=dev)
            token_types = torch.zeros(b, 0, dtype=torch.long, device=dev)
        attention_mask = input_ids != 0 if attention_mask is None else attention_mask.bool()
        if token_types is None:
            token_types = torch.where(attention_mask, QUERY, PAD)
        empty = ~(image_mask.bool().any(dim=1) | attention_mask.any(dim=1))
        if empty.any():
            raise ValueError(f"samples {empty.nonzero().flatten().tolist()[:8]} have neither an image nor text")
        pixels = pixel_values.to(next(self.parameters()).dtype)
        emb = F.normalize(self.backbone(pixels, image_mask.bool(), input_ids.long(), token_types.long(),
                                        attention_mask).float(), dim=-1)
        return MmrepEncoderOutput(embedding=emb, pooler_output=emb)

    # --- convenience: raw inputs -> tensors -> embeddings

    @property
    def tokenizer(self) -> ProductTokenizer:
        if self._tokenizer is None:
            self._tokenizer = ProductTokenizer(self.config.mmrep["tokenizer"], self.config.name_or_path or None)
        return self._tokenizer

    def prepare(self, texts: Optional[list] = None, images: Optional[list] = None, kind: str = "query") -> dict:
        """texts: str (a query, or a title when kind='product') / product dict / None per sample; images: a PIL
        image, a normalised (3, S, S) tensor, a list of those, or None per sample -> forward kwargs."""
        b = len(texts if texts is not None else images)
        texts = texts if texts is not None else [None] * b
        images = images if images is not None else [None] * b
        if len(texts) != len(images):
            raise ValueError(f"texts ({len(texts)}) and images ({len(images)}) must have the same length")
        m = self.config.mmrep
        encoded = [self.tokenizer.encode(t, kind) if t is not None else ([], []) for t in texts]
        length = max((len(ids) for ids, _ in encoded), default=0)
        ids = torch.zeros(b, length, dtype=torch.long)
        types = torch.zeros(b, length, dtype=torch.long)
        for i, (s, t) in enumerate(encoded):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            types[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        per = [[] if im is None else (list(im) if isinstance(im, (list, tuple)) else [im]) for im in images]
        n = max((len(p) for p in per), default=0)
        size = m["image_size"]
        pixels = torch.zeros(b, n, 3, size, size)
        image_mask = torch.zeros(b, n, dtype=torch.bool)
        for i, p in enumerate(per):
            for j, im in enumerate(p):
                pixels[i, j] = image_to_pixels(im, size, m["image_mean"], m["image_std"])
                image_mask[i, j] = True
        dev = self.device
        return dict(pixel_values=pixels.to(dev), image_mask=image_mask.to(dev), input_ids=ids.to(dev),
                    token_types=types.to(dev), attention_mask=(types != PAD).to(dev))

    @torch.no_grad()
    def encode(self, texts: Optional[list] = None, images: Optional[list] = None, kind: str = "query",
               dim: Optional[int] = None) -> torch.Tensor:
        """-> (B, D) L2-normalised embeddings; `dim` keeps the first `dim` (Matryoshka) coordinates, re-normalised."""
        emb = self(**self.prepare(texts, images, kind)).embedding
        return F.normalize(emb[:, :dim], dim=-1) if dim else emb
