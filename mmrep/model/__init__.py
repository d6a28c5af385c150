"""Item encoders: MoE layer, backbones (fusion, clip, mllm) and their registry, core-region crop,
the model factory (encoder + matching preprocessing), save / load."""

from mmrep.model.backbones.clip import export_open_clip
from mmrep.model.config import ClipConfig, FusionConfig, MllmConfig, ModelConfig, MoEConfig, TextConfig, VisionConfig
from mmrep.model.crop import CoreRegionCrop, collator_hooks, core_region_view
from mmrep.model.encoder import Encoder, EncoderOutput, load_config, load_encoder, matryoshka, save_encoder
from mmrep.model.factory import create_model_and_preprocess, load_model_and_preprocess
from mmrep.model.moe import objective_weights
from mmrep.model.preprocess import Preprocess, build_preprocess, image_transform
from mmrep.model.registry import backbone_names, build_encoder, get_backbone, register_backbone

__all__ = [
    "ClipConfig", "CoreRegionCrop", "Encoder", "EncoderOutput", "FusionConfig", "MllmConfig", "ModelConfig", "MoEConfig",
    "Preprocess", "TextConfig", "VisionConfig", "backbone_names", "build_encoder", "build_preprocess", "collator_hooks",
    "core_region_view", "create_model_and_preprocess", "export_open_clip", "get_backbone", "image_transform",
    "load_config", "load_encoder", "load_model_and_preprocess", "matryoshka", "objective_weights", "register_backbone",
    "save_encoder",
]
