"""Item encoders: MoE layer, backbones (fusion, clip, mllm), core-region crop, save / load."""

from mmrep.model.clip import export_open_clip
from mmrep.model.config import ClipConfig, FusionConfig, MllmConfig, ModelConfig, MoEConfig, TextConfig, VisionConfig
from mmrep.model.crop import CoreRegionCrop, collator_hooks, core_region_view
from mmrep.model.encoder import (Encoder, EncoderOutput, build_encoder, load_config, load_encoder, matryoshka,
                                 save_encoder)
from mmrep.model.preprocess import build_preprocess, image_transform
from mmrep.model.moe import objective_weights

__all__ = [
    "ClipConfig", "CoreRegionCrop", "Encoder", "EncoderOutput", "FusionConfig", "MllmConfig", "ModelConfig", "MoEConfig",
    "TextConfig", "VisionConfig", "build_encoder", "build_preprocess", "collator_hooks", "core_region_view", "export_open_clip",
    "image_transform", "load_config", "load_encoder", "matryoshka", "objective_weights", "save_encoder",
]
