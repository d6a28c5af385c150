"""Qwen2-VL / Qwen2.5-VL checkpoints as they ship (no bos, eos <|im_end|>, chat specials) load from a local folder,
train, save as a movable encoder folder, and export to a transformers folder that loads without mmrep."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from mmrep.batch import EncoderInput
from mmrep.data.tokenize import ProductTokenizer, pad_tokens
from mmrep.model import build_encoder, load_encoder, save_encoder
from interop_helpers import QUERIES, mmrep_embeddings, pixels_for, run_isolated, tiny_config
from qwen_folder import build_qwen_folder

REPO = Path(__file__).resolve().parents[2]


def qwen_model_yaml(folder: Path, family: str, out: Path) -> Path:
    base = yaml.safe_load((REPO / "configs/model/mllm-tiny.yaml").read_text())
    base.update(tokenizer={"backend": "hf", "path": str(folder), "context_length": 24})
    base["mllm"] = {"family": family, "path": str(folder), "patch_size": 8}
    out.write_text(yaml.safe_dump(base))
    return out


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_shipped_style_tokenizer_loads_and_the_encoder_folder_moves(tmp_path, family):
    folder = build_qwen_folder(tmp_path / "Qwen-tiny", family)
    cfg = tiny_config(str(qwen_model_yaml(folder, family, tmp_path / "m.yaml")))
    tok = ProductTokenizer(cfg.tokenizer)
    ids, types = tok.encode_query("red shirt")
    assert tok.sot_id is None and ids[-1] == tok.eot_id  # no bos: text ... <|im_end|>
    enc = build_encoder(cfg).eval()
    assert enc.native_ids and enc.image_token == json.loads((folder / "config.json").read_text())["image_token_id"]
    t_ids, t_types, t_mask = pad_tokens([tok.encode_query(q) for q in QUERIES])
    x = EncoderInput(pixels_for(cfg, 3)[:, None], torch.ones(3, 1, dtype=torch.bool), t_ids, t_types, t_mask)
    with torch.no_grad():
        before = enc(x).embedding
    save_encoder(enc, tmp_path / "run" / "encoder")
    stored = (tmp_path / "run" / "encoder" / "config.json").read_text()
    assert str(tmp_path) not in stored and json.loads(stored)["model"]["mllm"]["path"] == "assets/mllm"
    shutil.move(tmp_path / "run" / "encoder", tmp_path / "moved")
    shutil.rmtree(folder)  # the base checkpoint is gone too: the folder must carry what it needs
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(tmp_path / "moved")(x).embedding, before, atol=1e-6, rtol=1e-6)


LOADER = """
import json
from safetensors.torch import load_file, save_file
from transformers import AutoModel
px = load_file("inputs.safetensors")["pixels"]
queries = json.load(open("queries.json"))
model = AutoModel.from_pretrained("{out}", trust_remote_code=True).eval()
save_file({{"text": model.encode(texts=queries), "image": model.encode(images=list(px)),
           "both": model.encode(texts=queries, images=list(px))}}, "out.safetensors")
"""


@pytest.mark.slow
def test_qwen_folder_trains_two_steps_and_exports(tmp_path):
    from mmrep.synth.world import WorldConfig, generate_world

    world = tmp_path / "world"
    generate_world(WorldConfig(seed=0, n_items=60, n_users=10, n_queries=20, image_size=32, sessions_per_user=2.0,
                               shard_size=100), world)
    folder = build_qwen_folder(tmp_path / "Qwen2-VL-tiny")
    model_yaml = qwen_model_yaml(folder, "qwen2_vl", tmp_path / "qwen.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(REPO))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mmrep", "train", "--stage", "pretrain", "--config",
           str(REPO / "configs/train/pretrain-tiny.yaml"), f"--model={model_yaml}", f"--data.shards={world / 'items/train'}",
           "--data.num_workers=0", "--data.batch_size=4", "--data.epoch_length=16", f"--output_dir={run}",
           "--logging.wandb=disabled", "--optim.total_steps=2", "--optim.warmup_steps=1", "--checkpoint.every_steps=0",
           "--loss.matryoshka_dims=[32,64]"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "mmrep", "export-model", "--encoder", str(run), "--out",
                           str(tmp_path / "hf")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    encoder = load_encoder(run / "encoder")
    px = pixels_for(encoder.cfg, len(QUERIES))
    save_file({"pixels": px}, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "queries.json").write_text(json.dumps(QUERIES))
    run_isolated(LOADER.format(out=tmp_path / "hf"), tmp_path)
    got = load_file(str(tmp_path / "out.safetensors"))
    for key, ref in {"text": mmrep_embeddings(encoder, QUERIES, None), "image": mmrep_embeddings(encoder, None, px),
                     "both": mmrep_embeddings(encoder, QUERIES, px)}.items():
        assert (got[key] - ref).abs().max().item() <= 1e-5, key
