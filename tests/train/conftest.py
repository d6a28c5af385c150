"""Shared fixtures for the training tests: one tiny synthetic world per session, tiny run configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
# Process-group variables that an in-process Trainer sets in this process; a child must not inherit them
# (it would try to bind the same MASTER_PORT).
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A small built-in world (120 items, 150 queries, 32 px images), generated once per test session."""
    from mmrep.synth.world import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world") / "tiny"
    cfg = WorldConfig(seed=0, n_items=120, n_users=30, n_queries=150, image_size=32, sessions_per_user=10.0,
                      shard_size=200)
    generate_world(cfg, out)
    return out


def train_overrides(world: Path, out: Path, stage: str = "pretrain", **extra) -> list[str]:
    """Overrides that make a tiny config tiny enough for a test: a few steps, no W&B, one data worker."""
    shards = {"pretrain": world / "items" / "train", "posttrain": world / "triplets" / "train",
              "align": world / "items" / "train"}[stage]
    base = {"data.shards": shards, "data.num_workers": 0, "data.batch_size": 8, "data.epoch_length": 64,
            "data.shuffle_buffer": 32, "output_dir": out, "logging.wandb": "disabled", "logging.every_steps": 1,
            "optim.total_steps": 4, "optim.warmup_steps": 1, "checkpoint.every_steps": 0, "loss.queue_size": 64}
    base.update(extra)
    return [f"--{k}={v}" for k, v in base.items()]


def tiny_config(world: Path, out: Path, stage: str = "pretrain", **extra):
    from mmrep.train.trainer import load_config

    return load_config(str(REPO / "configs" / "train" / f"{stage}-tiny.yaml"),
                       train_overrides(world, out, stage, **extra))


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a training subprocess: no inherited process-group variables, 1 thread per rank."""
    # WANDB_SERVICE: a W&B service an in-process test started here; a child must start its own, or its run
    # files are written (and lost) by a service that goes away with that test
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS and k != "WANDB_SERVICE"}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1", **extra)
    return env


class TrainHelpers:
    """Helpers handed to tests as a fixture (test modules here are not a package, so no imports)."""

    repo = REPO
    python = PYTHON
    overrides = staticmethod(train_overrides)
    config = staticmethod(tiny_config)
    env = staticmethod(child_env)


@pytest.fixture(scope="session")
def th() -> TrainHelpers:
    return TrainHelpers()
