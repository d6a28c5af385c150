"""`mmrep export-model`: encoder folders and any DeepSpeed checkpoint tag (ZeRO-1 and ZeRO-3) -> exports."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrep.cli import main as mmrep_main
from mmrep.data.readers import iter_products
from mmrep.inference import embed_records, open_encoder
from mmrep.model import load_encoder

REPO = Path(__file__).resolve().parents[2]


def train(world: Path, out: Path, *extra: str) -> None:
    """A 3-step pretrain run in a child process (DeepSpeed's process group stays out of the test process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "mmrep", "train", "--stage", "pretrain",
           "--config", str(REPO / "configs/train/pretrain-tiny.yaml"), f"--data.shards={world / 'items/train'}",
           "--data.num_workers=0", "--data.batch_size=8", "--data.epoch_length=64", f"--output_dir={out}",
           "--logging.wandb=disabled", "--optim.total_steps=3", "--checkpoint.every_steps=2", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from mmrep.synth.world import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world") / "tiny"
    generate_world(WorldConfig(seed=0, n_items=60, n_users=10, n_queries=20, image_size=32, sessions_per_user=2.0,
                               shard_size=100), out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["1", "3"])
def test_any_checkpoint_tag_becomes_an_encoder_folder(world, tmp_path, zero):
    extra = ["--deepspeed.zero_stage=3", "--model.moe.mode=dense"] if zero == "3" else []
    train(world, tmp_path / "run", *extra)
    final = load_encoder(tmp_path / "run" / "encoder")
    assert mmrep_main(["export-model", "--checkpoint", str(tmp_path / "run" / "checkpoints"), "--tag", "global_step3",
                       "--out", str(tmp_path / "e3"), "--format", "encoder"]) == 0
    assert same_weights(load_encoder(tmp_path / "e3"), final)  # the last tag is the encoder training exported
    # the Python API loads the same tag directly: bit-identical embeddings to the run's encoder folder
    items = list(itertools.islice(iter_products(str(world / "items" / "train")), 4))
    from_tag = open_encoder(checkpoint=tmp_path / "run" / "checkpoints", tag="global_step3", device="cpu")
    np.testing.assert_array_equal(embed_records(from_tag, items), embed_records(open_encoder(tmp_path / "run"), items))
    assert mmrep_main(["export-model", "--checkpoint", str(tmp_path / "run"), "--tag", "global_step2",
                       "--out", str(tmp_path / "e2"), "--format", "all", "--data", "tiny synthetic world"]) == 0
    assert not same_weights(load_encoder(tmp_path / "e2" / "encoder"), final)  # an intermediate step: other weights
    card = (tmp_path / "e2" / "hf" / "README.md").read_text()
    assert "tiny synthetic world" in card and "trust_remote_code=True" in card
    assert json.loads((tmp_path / "e2" / "hf" / "config.json").read_text())["model_type"] == "mmrep_encoder"


@pytest.mark.slow
def test_deepspeed_moe_checkpoint_tag_merges_its_expert_files(world, tmp_path):
    train(world, tmp_path / "run", "--model.moe.backend=deepspeed", "--checkpoint.every_steps=0")
    assert list((tmp_path / "run" / "checkpoints" / "global_step3").glob("layer_*_expert_*_model_states.pt"))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    check = f"""
import torch
from mmrep.model.from_checkpoint import encoder_from_checkpoint
from mmrep.model import load_encoder
a = encoder_from_checkpoint("{tmp_path / 'run'}", "global_step3").state_dict()
b = load_encoder("{tmp_path / 'run' / 'encoder'}").state_dict()
assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "checkpoint != final encoder"
print("same")
"""
    proc = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "same" in proc.stdout, proc.stderr[-3000:]


def test_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    assert mmrep_main(["export-model", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "ck").mkdir()
    assert mmrep_main(["export-model", "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "o")]) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert mmrep_main(["export-model", "--encoder", str(tmp_path / "ck"), "--out", str(tmp_path / "o")]) == 2
    assert "not an mmrep encoder directory" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    assert mmrep_main(["export-model", "--encoder", str(tmp_path / "ck"), "--out", str(tmp_path / "o")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert not any((tmp_path / "o").iterdir())
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert mmrep_main(["export-model", "--encoder", str(tmp_path / "ck"), "--out", str(tmp_path / "o"),
                       "--overwrite"]) == 2
    assert "not written by mmrep export-model" in capsys.readouterr().err
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_an_earlier_export(tmp_path, capsys):
    from mmrep.model import build_encoder, save_encoder
    from embedding_helpers import tiny_config

    save_encoder(build_encoder(tiny_config()), tmp_path / "enc")
    args = ["export-model", "--encoder", str(tmp_path / "enc"), "--out", str(tmp_path / "o"), "--format", "encoder"]
    assert mmrep_main(args) == 0
    assert (tmp_path / "o" / "mmrep_export.json").is_file()
    assert mmrep_main(args) == 2
    assert mmrep_main([*args, "--overwrite"]) == 0
    assert same_weights(load_encoder(tmp_path / "o"), load_encoder(tmp_path / "enc"))
