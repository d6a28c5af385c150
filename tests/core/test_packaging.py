"""The package works outside the checkout: `pip install .` into a fresh venv, then train on a packaged config
from another folder; `python -m mmrep --version`; config paths resolve against the file that names them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mmrep.config_files import find_config, list_configs, packaged_root
from mmrep.errors import MmrepError

REPO = Path(__file__).resolve().parents[2]


def test_relative_config_paths_resolve_against_the_naming_file_then_the_packaged_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "deepspeed").mkdir(parents=True)
    (tmp_path / "mine" / "deepspeed" / "zero1.json").write_text("{}")
    naming = tmp_path / "mine" / "train.yaml"
    assert find_config("deepspeed/zero1.json", naming) == tmp_path / "mine" / "deepspeed" / "zero1.json"
    assert find_config("configs/deepspeed/zero1.json", naming) == packaged_root() / "deepspeed" / "zero1.json"
    assert find_config("train/pretrain-tiny") == packaged_root() / "train" / "pretrain-tiny.yaml"
    assert "train/pretrain-tiny.yaml" in list_configs() and "deepspeed/zero1.json" in list_configs()
    with pytest.raises(MmrepError, match="mmrep configs list"):
        find_config("nope.yaml", naming)


def test_train_config_from_another_folder_finds_its_model_and_deepspeed_files(tmp_path, monkeypatch):
    from mmrep.train.trainer import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config("train/pretrain-tiny.yaml")
    assert cfg.model.backbone == "fusion"
    assert Path(cfg.deepspeed.config).is_file() and Path(cfg.deepspeed.config).name == "zero1.json"


def test_configs_command_lists_and_shows(capsys):
    from mmrep.cli import main

    assert main(["configs", "list"]) == 0
    assert "train/pretrain-tiny.yaml" in capsys.readouterr().out.splitlines()
    assert main(["configs", "show", "train/pretrain-tiny.yaml"]) == 0
    assert capsys.readouterr().out == (REPO / "configs" / "train" / "pretrain-tiny.yaml").read_text()
    assert main(["configs", "show", "nope"]) == 2
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("mmrep ")


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_then_train_from_tmp(tmp_path):
    from mmrep.synth.world import WorldConfig, generate_world

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # the dependencies come from this environment (offline, no 6 GB reinstall); mmrep itself from the wheel
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    py = venv / "bin" / "python"
    # pip builds in the source tree (build/, *.egg-info): build from a copy of the tracked files instead
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src)],
                   check=True, env=env, cwd=tmp_path, capture_output=True)

    def run(*args: str) -> str:
        proc = subprocess.run([*args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    assert run(str(py), "-c", "import mmrep; print(mmrep.__file__)").startswith(str(site))
    assert run(str(py), "-m", "mmrep", "--version").strip() == "mmrep 0.1.0"
    assert "train/pretrain-tiny.yaml" in run(str(venv / "bin" / "mmrep"), "configs", "list")
    generate_world(WorldConfig(seed=0, n_items=60, n_users=10, n_queries=20, image_size=32, sessions_per_user=2.0,
                               shard_size=100), tmp_path / "world")
    run(str(venv / "bin" / "mmrep"), "train", "--config", "train/pretrain-tiny.yaml",
        f"--data.shards={tmp_path / 'world' / 'items' / 'train'}", "--data.num_workers=0", "--data.batch_size=8",
        f"--output_dir={tmp_path / 'run'}", "--logging.wandb=disabled", "--optim.total_steps=2",
        "--checkpoint.every_steps=0")
    assert (tmp_path / "run" / "encoder" / "model.safetensors").is_file()
