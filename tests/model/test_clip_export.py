"""The dense two-tower baseline exports to open_clip's format and open_clip reproduces its embeddings."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from mmrep.data.tokenize import ProductTokenizer
from mmrep.errors import MmrepError
from mmrep.model import build_encoder
from mmrep.model.backbones.clip import export_open_clip
from model_helpers import random_inputs, tiny_config


def test_export_loads_with_local_dir_and_gives_the_same_embeddings(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config("clip-tiny.yaml")
    enc = build_encoder(cfg).eval()
    out = export_open_clip(enc, tmp_path / "oc")
    assert sorted(p.name for p in out.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert json.loads((out / "open_clip_config.json").read_text())["preprocess_cfg"]["size"] == cfg.image_size
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    model.eval()
    assert all(p.dim() > 0 for p in model.parameters())  # nonscalar logit_scale survives (DeepSpeed 0.19.8)

    # text: our tokenizer's ids, read by open_clip's own tokenizer and text tower
    tok = ProductTokenizer(cfg.tokenizer)
    texts = ["red cotton shirt", "blue denim jeans for men", "a"]
    ours = [tok.encode_query(t) for t in texts]
    ids = torch.zeros(3, cfg.tokenizer.context_length, dtype=torch.long)
    for i, (s, _) in enumerate(ours):
        ids[i, :len(s)] = torch.tensor(s)
    oc_ids = open_clip.get_tokenizer(f"local-dir:{out}")(texts)
    assert torch.equal(oc_ids[:, :ids.shape[1]], ids)
    x = random_inputs(3, n=1, length=cfg.tokenizer.context_length, seed=0)
    x.text_ids, x.text_mask = ids, ids != 0
    x.text_types = x.text_mask.long() * 2
    x.image_mask[:] = True
    with torch.no_grad():
        mine_text = enc(x.text_only()).embedding
        theirs_text = model.encode_text(oc_ids, normalize=True)
        mine_image = enc(x.image_only()).embedding
        theirs_image = model.encode_image(x.pixels[:, 0], normalize=True)
    torch.testing.assert_close(mine_text, theirs_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine_image, theirs_image, atol=1e-5, rtol=1e-5)


def test_multi_image_and_both_modalities_combine_normalised_parts():
    torch.manual_seed(0)
    enc = build_encoder(tiny_config("clip-tiny.yaml")).eval()
    x = random_inputs(4, n=2, length=8, seed=3)
    x.image_mask[:] = True
    x.text_mask[:, :4] = True
    x.text_ids[x.text_mask & (x.text_ids == 0)] = 7
    with torch.no_grad():
        img = F.normalize(enc.clip.encode_image(x.pixels.flatten(0, 1), normalize=True).view(4, 2, -1).mean(1), dim=-1)
        torch.testing.assert_close(enc(x.image_only()).embedding, img)
        txt = enc(x.text_only()).embedding
        torch.testing.assert_close(enc(x).embedding, F.normalize(img + txt, dim=-1))


def test_only_clip_encoders_export(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(MmrepError, match="clip"):
        export_open_clip(build_encoder(tiny_config("tiny.yaml")), tmp_path / "x")
