"""The Qwen2-VL-family backbone: offline tiny config, forward/backward, upcycling, batch independence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmrep.batch import TokenType
from mmrep.errors import MmrepError
from mmrep.model import build_encoder, load_encoder, save_encoder
from mmrep.model.backbones.mllm import masked_mean, qwen_patches, tiny_config as qwen_tiny_config
from mmrep.model.moe import RoutedFFN
from model_helpers import random_inputs, tiny_config


def build(*overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_encoder(tiny_config("mllm-tiny.yaml", *overrides))


def test_tiny_config_builds_offline_and_trains_on_cpu():
    enc = build().train()
    assert all(isinstance(layer.mlp, RoutedFFN) for layer in enc.model.language_model.layers)
    x = random_inputs(6, n=2, length=10, seed=0)
    out = enc(x, torch.arange(6) % 3)
    assert out.embedding.shape == (6, 64) and out.gates.shape == (6, 4)
    torch.testing.assert_close(out.embedding.norm(dim=-1), torch.ones(6))
    (out.embedding[:, 0].sum() + out.aux_loss + out.sparsity_loss).backward()
    grads = {n: p.grad for n, p in enc.named_parameters()}
    assert grads["preference_logits"].abs().sum() > 0
    layer = enc.model.language_model.layers[0].mlp.moe
    assert layer.gate.weight.grad.abs().sum() > 0
    assert enc.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0  # images really flow through the tower


def test_image_tokens_are_routed_with_their_type():
    enc = build().eval()
    x = random_inputs(3, n=2, length=6, seed=1)
    kwargs, mask, types = enc.prepare(x)
    n_img = int(x.image_mask.sum())
    per_image = (32 // 8) ** 2 // 4
    assert int((types == int(TokenType.IMAGE)).sum()) == n_img * per_image
    assert int((kwargs["input_ids"] == enc.image_token).sum()) == n_img * per_image
    assert kwargs["pixel_values"].shape[0] == n_img * (32 // 8) ** 2
    assert int(mask.sum()) == n_img * (per_image + 2) + int(x.text_mask.sum())


def test_qwen_patches_match_the_processor_layout():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    img = torch.rand(1, 3, 32, 32)
    proc = Qwen2VLImageProcessor(do_resize=False, do_rescale=False, do_normalize=False, patch_size=8,
                                 temporal_patch_size=2, merge_size=2)
    ref = proc(images=[img[0]], return_tensors="pt")
    flat, grid = qwen_patches(img, 8, 2, 2)
    assert torch.equal(grid, ref["image_grid_thw"])
    torch.testing.assert_close(flat, ref["pixel_values"].to(flat.dtype))


@pytest.mark.parametrize("mode,k", [("modality", 1), ("modality", 2), ("guided", 1)])
def test_item_alone_equals_item_in_batch_of_64(mode, k):
    enc = build(f"--moe.mode={mode}", f"--moe.top_k={k}").eval()
    x = random_inputs(64, n=2, length=12, seed=5)
    with torch.no_grad():
        full = enc(x).embedding
        worst = max((enc(x.select([i])).embedding - full[i]).abs().max().item() for i in range(0, 64, 9))
    assert worst < 1e-5


@pytest.mark.parametrize("k", [1, 2])
def test_upcycling_reproduces_the_dense_checkpoint(tmp_path, k):
    from transformers import Qwen2VLModel

    torch.manual_seed(0)
    cfg = tiny_config("mllm-tiny.yaml")
    dense = Qwen2VLModel._from_config(qwen_tiny_config(cfg)).eval()
    dense.save_pretrained(tmp_path / "dense")
    enc = build(f"--mllm.path={tmp_path / 'dense'}", f"--moe.top_k={k}").eval()
    assert all(isinstance(layer.mlp, RoutedFFN) for layer in enc.model.language_model.layers)
    x = random_inputs(5, n=2, length=10, seed=2)
    kwargs, mask, _ = enc.prepare(x)
    with torch.no_grad():
        reference = F.normalize(enc.proj(masked_mean(dense(**kwargs).last_hidden_state, mask)), dim=-1)
        ours = enc(x).embedding
    assert (ours - reference).abs().max() < 1e-5
    # the experts are distinct modules (they will specialise), not one shared module
    experts = enc.model.language_model.layers[0].mlp.moe.experts
    assert experts[0].gate_proj.weight.data_ptr() != experts[1].gate_proj.weight.data_ptr()


def test_save_load_round_trip(tmp_path):
    enc = build(seed=4).eval()
    save_encoder(enc, tmp_path / "enc")
    again = load_encoder(tmp_path / "enc")
    x = random_inputs(3, n=2, length=8, seed=3)
    with torch.no_grad():
        assert torch.equal(enc(x).embedding, again(x).embedding)


def test_bad_checkpoint_path_is_a_user_error(tmp_path):
    with pytest.raises(MmrepError, match="mllm.path"):
        build(f"--mllm.path={tmp_path / 'missing'}")
    with pytest.raises(MmrepError, match="image_size"):
        tiny_config("mllm-tiny.yaml", "--image_size=24")


def test_qwen2_5_vl_family_builds_and_is_batch_independent():
    enc = build("--mllm.family=qwen2_5_vl").eval()
    assert type(enc.model).__name__ == "Qwen2_5_VLModel"
    x = random_inputs(8, n=2, length=10, seed=0)
    with torch.no_grad():
        full = enc(x).embedding
        worst = max((enc(x.select([i])).embedding - full[i]).abs().max().item() for i in range(8))
    assert worst < 1e-5
