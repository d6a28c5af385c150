"""The backbone registry: packaged backbones are found, a new one is one decorated class, bad names fail clearly."""

from __future__ import annotations

import pytest
import torch

from mmrep.batch import EncoderInput
from mmrep.config import from_dict
from mmrep.errors import MmrepError
from mmrep.model import Encoder, ModelConfig, backbone_names, build_encoder, get_backbone, register_backbone
from mmrep.model import registry


def test_packaged_backbones_register_themselves_with_their_facts():
    assert backbone_names() == ["clip", "fusion", "mllm"]
    assert get_backbone("fusion").uniform_calls and not get_backbone("clip").uniform_calls
    with pytest.raises(MmrepError, match="model.backbone 'fusoin' is not a known backbone; choose one of clip, fusion"):
        from_dict(ModelConfig, {"backbone": "fusoin"}, "model")
    with pytest.raises(MmrepError, match="moe.mode"):  # the clip backbone's own check
        from_dict(ModelConfig, {"backbone": "clip"}, "model")


def test_a_new_backbone_is_one_decorated_class():
    def check(cfg: ModelConfig) -> None:
        if cfg.embed_dim > 32:
            raise MmrepError("model.embed_dim must be <= 32 for backbone 'mean_pixels'")

    @register_backbone("mean_pixels", check)
    class MeanPixels(Encoder):
        def __init__(self, cfg: ModelConfig, load_pretrained: bool = True):
            super().__init__(cfg)
            self.proj = torch.nn.Linear(3, cfg.embed_dim)

        def encode(self, inputs: EncoderInput):
            return self.proj(inputs.pixels.mean(dim=(1, 3, 4))), []

    try:
        cfg = from_dict(ModelConfig, {"backbone": "mean_pixels", "embed_dim": 8, "moe": {"mode": "dense"}}, "model")
        encoder = build_encoder(cfg)
        assert isinstance(encoder, MeanPixels)
        inputs = EncoderInput(torch.rand(2, 1, 3, 32, 32), torch.ones(2, 1, dtype=torch.bool),
                              torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long),
                              torch.zeros(2, 0, dtype=torch.bool))
        assert encoder(inputs).embedding.shape == (2, 8)
        with pytest.raises(MmrepError, match="embed_dim must be <= 32"):
            from_dict(ModelConfig, {"backbone": "mean_pixels", "embed_dim": 64}, "model")
    finally:
        registry._REGISTRY.pop("mean_pixels", None)
