"""The encoder interface on the fusion and clip backbones: shapes, masks, batch independence, save/load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmrep.batch import EncoderInput
from mmrep.errors import MmrepError
from mmrep.model import (ModelConfig, build_encoder, load_config, load_encoder, matryoshka, objective_weights,
                         save_encoder)
from model_helpers import CONFIGS, random_inputs, tiny_config

ROOT = Path(__file__).resolve().parents[2]


def build(name: str = "tiny.yaml", *overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_encoder(tiny_config(name, *overrides))


def combos(size: int = 32) -> dict[str, EncoderInput]:
    """Every modality mix, with multi-image items."""
    x = random_inputs(6, n=3, length=10, size=size, seed=1)
    x.image_mask[:] = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    x.text_mask[:] = False
    x.text_mask[3:, :6] = True
    x.text_mask[4, :] = True
    x.text_types[~x.text_mask], x.text_ids[~x.text_mask] = 0, 0
    x.text_types[x.text_mask & (x.text_types == 0)] = 2
    x.text_ids[x.text_mask & (x.text_ids == 0)] = 5
    return {"mixed": x, "image_only": x.select([0, 1, 2]).image_only(), "text_only": x.select([3, 4, 5]).text_only(),
            "both": x.select([4]), "multi_image": x.select([1, 2])}


@pytest.mark.parametrize("config", ["tiny.yaml", "clip-tiny.yaml"])
def test_shapes_for_every_modality_combination(config):
    enc = build(config).eval()
    for name, x in combos().items():
        out = enc(x, objective=torch.zeros(x.batch_size, dtype=torch.long))
        assert out.embedding.shape == (x.batch_size, 64), name
        torch.testing.assert_close(out.embedding.norm(dim=-1), torch.ones(x.batch_size))
        assert torch.isfinite(out.embedding).all()
        if config == "tiny.yaml":
            assert out.gates.shape == (x.batch_size, 4) and out.preference.shape == (4, 3)
            torch.testing.assert_close(out.gates.sum(1), torch.ones(x.batch_size))
            assert out.aux_loss.ndim == 0 and out.sparsity_loss.ndim == 0
            assert {"moe/aux_loss", "moe/load_0", "moe/omega_0"} <= set(out.stats)
        else:
            assert out.gates is None and out.preference is None and float(out.aux_loss) == 0


def test_masked_images_and_tokens_do_not_matter():
    enc = build().eval()
    x = combos()["mixed"]
    y = EncoderInput(x.pixels.clone(), x.image_mask, x.text_ids.clone(), x.text_types.clone(), x.text_mask)
    y.pixels[~x.image_mask] = 7.0  # garbage in padded image slots
    y.text_ids[~x.text_mask] = 123
    with torch.no_grad():
        torch.testing.assert_close(enc(x).embedding, enc(y).embedding, atol=1e-6, rtol=0)
    # the image of an item matters (it is really used) and so is the slot order of several images
    z = EncoderInput(x.pixels.flip(1), x.image_mask.flip(1), x.text_ids, x.text_types, x.text_mask)
    with torch.no_grad():
        assert (enc(x).embedding[1] - enc(z).embedding[1]).abs().max() > 1e-4


def test_sample_with_no_modality_raises():
    enc = build()
    x = combos()["mixed"]
    x.image_mask[5] = False
    x.text_mask[5] = False
    with pytest.raises(ValueError, match=r"\[5\]"):
        enc(x)
    with pytest.raises(ValueError, match="empty"):
        enc(x.select([]))
    with pytest.raises(ValueError, match="shapes"):
        enc(EncoderInput(x.pixels, x.image_mask[:, :1], x.text_ids, x.text_types, x.text_mask))


def check_batch_independence(enc, size: int = 32, n_batch: int = 64) -> float:
    x = random_inputs(n_batch, n=3, length=12, size=size, seed=5)
    worst = 0.0
    with torch.no_grad():
        full = enc(x).embedding
        for i in range(0, n_batch, 9):
            alone = enc(x.select([i])).embedding
            worst = max(worst, (alone - full[i]).abs().max().item())
    return worst


@pytest.mark.parametrize("overrides", [
    ("--moe.mode=modality", "--moe.top_k=1"),
    ("--moe.mode=modality", "--moe.top_k=2"),
    ("--moe.mode=guided", "--moe.num_experts=4"),
    ("--moe.mode=dense",),
    ("--vision.backend=timm", "--text.backend=hf"),
])
def test_item_alone_equals_item_in_batch_of_64(overrides):
    enc = build("tiny.yaml", *overrides).eval()
    assert check_batch_independence(enc) < 1e-5


def test_clip_alone_equals_item_in_batch_of_64():
    assert check_batch_independence(build("clip-tiny.yaml").eval()) < 1e-5


def test_gradients_reach_preference_gate_and_every_expert():
    for mode in ("modality", "guided"):
        enc = build("tiny.yaml", f"--moe.mode={mode}", "--moe.top_k=2").train()
        x = random_inputs(16, seed=2)
        objective = torch.arange(16) % 3
        out = enc(x, objective)
        omega = objective_weights(out.gates, out.preference, objective)
        loss = out.embedding[:, 0].sum() + (omega * torch.tensor([1.0, 2.0, 3.0])).sum() + out.aux_loss + out.sparsity_loss
        loss.backward()
        assert enc.preference_logits.grad.abs().sum() > 0
        for i, layer in enumerate(enc.layers):
            assert layer.ffn.gate.weight.grad.abs().sum() > 0, (mode, i)
            for e, expert in enumerate(layer.ffn.experts):
                assert expert.fc2.weight.grad.abs().sum() > 0, (mode, i, e)
        missing = [n for n, p in enc.named_parameters() if p.grad is None]
        assert missing == [], missing


@pytest.mark.parametrize("config", ["tiny.yaml", "clip-tiny.yaml"])
def test_save_load_round_trip_is_exact(tmp_path, config):
    enc = build(config, seed=3).eval()
    save_encoder(enc, tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "model.safetensors"]
    again = load_encoder(tmp_path / "enc")
    assert again.cfg == enc.cfg and not again.training
    for (k, a), (k2, b) in zip(enc.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = combos()["mixed"]
    with torch.no_grad():
        assert torch.equal(enc(x).embedding, again(x).embedding)


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(MmrepError, match="not an mmrep encoder"):
        load_encoder(tmp_path)
    save_encoder(build(), tmp_path / "enc")
    (tmp_path / "enc" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(MmrepError, match="cannot load"):
        load_encoder(tmp_path / "enc")
    meta = json.loads((tmp_path / "enc" / "config.json").read_text())
    meta["model"]["moe"]["top_k"] = 9
    (tmp_path / "enc" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(MmrepError, match="top_k"):
        load_config(tmp_path / "enc")


def test_matryoshka():
    e = torch.nn.functional.normalize(torch.randn(5, 64), dim=-1)
    m = matryoshka(e, 16)
    assert m.shape == (5, 16)
    torch.testing.assert_close(m.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(m, torch.nn.functional.normalize(e[:, :16], dim=-1))
    with pytest.raises(MmrepError):
        matryoshka(e, 65)


def test_all_model_configs_load_and_validate():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert {"tiny.yaml", "small.yaml", "base.yaml", "mllm-tiny.yaml", "clip-tiny.yaml", "clip-small.yaml"} <= set(names)
    for name in names:
        cfg = tiny_config(name)
        assert isinstance(cfg, ModelConfig)
        assert all(d <= cfg.embed_dim for d in cfg.matryoshka_dims)


@pytest.mark.parametrize("overrides,key", [
    (("--embed_dim=0",), "embed_dim"),
    (("--image_size=30",), "image_size"),
    (("--vision.width=65",), "vision.width"),
    (("--moe.top_k=7",), "top_k"),
    (("--fusion.heads=3",), "fusion.width"),
    (("--backbone=clip",), "moe.mode"),
    (("--matryoshka_dims=[128]",), "matryoshka_dims"),
    (("--bogus=1",), "bogus"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(MmrepError, match=key.replace(".", r"\.")):
        tiny_config("tiny.yaml", *overrides)


def test_too_many_images_is_a_user_error():
    enc = build("tiny.yaml", "--fusion.max_images=2")
    with pytest.raises(MmrepError, match="max_images"):
        enc(random_inputs(2, n=3, seed=0).select([0, 1]))


DEEPSPEED_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, "tests/model")
    from model_helpers import random_inputs, tiny_config
    from mmrep.model import build_encoder
    from mmrep.model.moe import DeepSpeedMoELayer
    for k in (1, 2):
        torch.manual_seed(0)
        enc = build_encoder(tiny_config("tiny.yaml", "--moe.backend=deepspeed", f"--moe.top_k={k}")).eval()
        assert isinstance(enc.layers[-1].ffn, DeepSpeedMoELayer)
        x = random_inputs(64, n=3, length=12, seed=5)
        with torch.no_grad():
            full = enc(x).embedding
            worst = max((enc(x.select([i])).embedding - full[i]).abs().max().item() for i in range(0, 64, 9))
        assert worst < 1e-5, worst
        enc.train()
        out = enc(random_inputs(8, seed=1), torch.arange(8) % 3)
        (out.embedding[:, 0].sum() + out.aux_loss + out.sparsity_loss).backward()
        missing = [n for n, p in enc.named_parameters() if p.grad is None]
        assert not missing, missing
        assert out.gates.shape == (8, 4)
        print("deepspeed ok", k, worst)
    # under a DeepSpeed engine (which sets the expert groups itself), with MoE-aware param groups
    import deepspeed
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer
    torch.manual_seed(0)
    enc = build_encoder(tiny_config("tiny.yaml", "--moe.backend=deepspeed"))
    groups = split_params_into_different_moe_groups_for_optimizer({"params": list(enc.parameters()), "name": "all"})
    engine, *_ = deepspeed.initialize(model=enc, optimizer=torch.optim.AdamW(groups, lr=1e-3),
                                      config={"train_micro_batch_size_per_gpu": 8})
    before = enc.layers[-1].ffn.moe.deepspeed_moe.gate.wg.weight.detach().clone()
    out = engine(random_inputs(8, seed=1))
    engine.backward(out.embedding[:, 0].sum() + out.aux_loss)
    engine.step()
    assert not torch.equal(before, enc.layers[-1].ffn.moe.deepspeed_moe.gate.wg.weight)
    print("engine ok")
""")


@pytest.mark.slow
def test_deepspeed_backend_is_batch_independent_and_trains():
    # A subprocess: DeepSpeed initialises torch.distributed, which must not leak into other tests.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", DEEPSPEED_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("deepspeed ok") == 2 and "engine ok" in proc.stdout


def test_image_transform_matches_the_model(tmp_path):
    import io

    from PIL import Image

    from mmrep.model import image_transform

    cfg = tiny_config("tiny.yaml", "--image_mean=[0.5,0.5,0.5]", "--image_std=[0.25,0.25,0.25]")
    buf = io.BytesIO()
    Image.new("RGB", (60, 80), (255, 255, 255)).save(buf, format="PNG")
    x = image_transform(cfg)(buf.getvalue())
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x, torch.full((3, 32, 32), 2.0))  # (1 - 0.5) / 0.25


@pytest.mark.parametrize("overrides", [(), ("--moe.mode=guided", "--moe.top_k=2")])
def test_runs_under_bf16_autocast(overrides):
    # GPU training runs under autocast; routing stays fp32, outputs come back fp32 and normalised.
    enc = build("tiny.yaml", *overrides).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(random_inputs(4, seed=0), torch.arange(4) % 3)
    assert out.embedding.dtype == torch.float32 and out.gates.dtype == torch.float32
    torch.testing.assert_close(out.embedding.norm(dim=-1), torch.ones(4))
    (out.embedding.sum() + out.aux_loss).backward()
    assert enc.preference_logits.grad is None or torch.isfinite(enc.preference_logits.grad).all()
    assert enc.layers[-1].ffn.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["modality", "guided", "dense"])
def test_identity_init_fusion_starts_as_the_identity_and_still_learns(mode):
    enc = build("tiny.yaml", "--fusion.identity_init=true", f"--moe.mode={mode}")
    x = random_inputs(4, seed=2)
    seq, mask, types = enc.tokens(x)
    rows = mask.nonzero(as_tuple=True)
    h = seq
    for layer in enc.layers:
        h, _ = layer(h, mask, types, rows)
    torch.testing.assert_close(h, seq)  # every fusion layer passes its input through unchanged
    enc.train()
    target = torch.randn(4, enc.embed_dim, generator=torch.Generator().manual_seed(0))
    (enc(x).embedding * target).sum().backward()  # any loss: gradients reach the zeroed branches
    layer = enc.layers[-1]
    assert layer.out.weight.grad.abs().sum() > 0
    fc2 = [m.fc2 for m in layer.ffn.modules() if hasattr(m, "fc2")]
    assert fc2 and any(lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0 for lin in fc2)
