"""Item encoders: MoE layer, backbones (fusion, clip, mllm), core-region crop, save / load."""

from mmrep.model.config import ClipConfig, FusionConfig, MllmConfig, ModelConfig, MoEConfig, TextConfig, VisionConfig
from mmrep.model.encoder import (Encoder, EncoderOutput, build_encoder, image_transform, load_config, load_encoder,
                                 matryoshka, save_encoder)
from mmrep.model.moe import objective_weights

__all__ = [
    "ClipConfig", "Encoder", "EncoderOutput", "FusionConfig", "MllmConfig", "ModelConfig", "MoEConfig", "TextConfig",
    "VisionConfig", "build_encoder", "image_transform", "load_config", "load_encoder", "matryoshka", "objective_weights", "save_encoder",
]
