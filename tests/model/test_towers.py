"""Tower initialisation from local weights (timm ViT, HF encoder + its tokenizer) and parameter shapes."""

from __future__ import annotations

import pytest
import torch

from mmrep.batch import TokenType
from mmrep.data.tokenize import ProductTokenizer
from mmrep.model import build_encoder, load_encoder, save_encoder
from mmrep.records import Product
from model_helpers import random_inputs, tiny_config


@pytest.mark.parametrize("config", ["tiny.yaml", "clip-tiny.yaml", "mllm-tiny.yaml"])
def test_no_zero_dim_parameters(config):
    # DeepSpeed 0.19.8 crashes in deepspeed.initialize on 0-dim parameters.
    enc = build_encoder(tiny_config(config))
    assert [n for n, p in enc.named_parameters() if p.dim() == 0] == []


def test_timm_vision_tower_from_a_local_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    cfg = tiny_config("tiny.yaml", "--vision.backend=timm", "--vision.name=vit_tiny_patch16_224",
                      f"--vision.pretrained={tmp_path / 'vit.safetensors'}")
    enc = build_encoder(cfg).eval()
    for k, v in ref.state_dict().items():
        assert torch.equal(enc.vision.vit.state_dict()[k], v), k
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = enc.vision(images)
        torch.testing.assert_close(tokens, ref.forward_features(images)[:, ref.num_prefix_tokens:])
    assert tokens.shape == (3, 4, 192)
    # a saved encoder reloads without the original weights file
    save_encoder(enc, tmp_path / "enc")
    (tmp_path / "vit.safetensors").unlink()
    x = random_inputs(4, seed=1)
    with torch.no_grad():
        assert torch.equal(load_encoder(tmp_path / "enc")(x).embedding, enc(x).embedding)


def test_hf_text_encoder_from_a_local_dir_with_its_tokenizer(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["red", "blue", "shirt", "cotton", "shoes", "men", "women", "apparel", "topwear", "colour", ":", ">"]
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    hf_dir = tmp_path / "bert"
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(hf_dir)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(hf_dir)
    cfg = tiny_config("tiny.yaml", "--text.backend=hf", f"--text.name={hf_dir}", "--tokenizer.backend=hf",
                      f"--tokenizer.path={hf_dir}")
    enc = build_encoder(cfg).eval()
    ref = BertModel.from_pretrained(hf_dir).eval()
    assert torch.equal(enc.text.hf.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight)
    tok = ProductTokenizer(cfg.tokenizer)
    ids, types = tok.encode_product(Product(id="p1", title="red cotton shirt", description="", category=["apparel", "topwear"],
                                            attributes={"colour": "red"}, images=[], image_exts=[], labels={}, split="train"))
    assert TokenType.CATEGORY in types and TokenType.ATTRIBUTE in types and ids[0] == tok.sot_id
    t = torch.tensor([ids])
    with torch.no_grad():
        states = enc.text(t, torch.ones_like(t, dtype=torch.bool))
        torch.testing.assert_close(states, ref(input_ids=t).last_hidden_state)


def test_tiny_open_clip_and_timm_towers_are_not_pooled():
    enc = build_encoder(tiny_config("tiny.yaml"))
    assert enc.vision(torch.randn(2, 3, 32, 32)).shape == (2, 16, 64)  # 4x4 patches, no class token
    ids = torch.randint(1, 100, (2, 7))
    assert enc.text(ids, torch.ones_like(ids, dtype=torch.bool)).shape == (2, 7, 64)
