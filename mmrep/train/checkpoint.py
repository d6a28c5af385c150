"""DeepSpeed checkpoints that are never visible half-written, a `latest` tag, and keep-last-K.

Layout under `dir`: `global_stepN/` (DeepSpeed's files + `rank<r>_state.pt` with RNG and data position + `trainer_state.json`) and
`latest` (the newest complete tag). A save goes into `.tmp-<tag>/` on every rank; after a barrier rank
0 renames it to `<tag>` and only then rewrites `latest`, so a crash at any point leaves either the
previous checkpoint or the new one, never a partial one (stale temp dirs are removed on the next start).
Pruning and re-saving rename a checkpoint to a temp name before deleting it, for the same reason.

Loading never unpickles arbitrary objects: every `.pt` file a resume reads (ours and DeepSpeed's) goes through
`torch.load(weights_only=True)` with an explicit allow-list of the few plain DeepSpeed types its optimizer
files hold (`SAFE_GLOBALS`). A file that needs anything else is refused with one line, unless the user
passes `--trust-checkpoint` (checkpoint.trust) for a checkpoint they wrote themselves.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrep.distributed import barrier, rank_world
from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_write
from mmrep.model.from_checkpoint import LATEST, list_tags, read_latest, resolve_tag, tag_for  # the folder layout

TMP_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.json"


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0: only at the end (and when the time budget runs out)
    keep_last: int = 2  # complete checkpoints kept; older ones are deleted after a new one lands
    dir: str = ""  # default: <output_dir>/checkpoints
    resume: str = ""  # "latest", a tag (global_stepN), or "" to start fresh
    # unpickle checkpoint files without the safe allow-list (`--trust-checkpoint`): only for checkpoints you
    # wrote yourself, since a pickle can run code when loaded
    trust: bool = False

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise MmrepError("checkpoint.every_steps must be >= 0 (0 saves only at the end)")
        if self.keep_last < 1:
            raise MmrepError("checkpoint.keep_last must be at least 1")


def clean_stale(ckpt_dir: str | Path) -> list[str]:
    """Remove temp dirs left by a save that was killed (rank 0, before any new save)."""
    ckpt_dir = Path(ckpt_dir)
    removed = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def _safe_globals() -> list[Any]:
    """The only non-tensor types DeepSpeed (0.19) stores in its checkpoint files: plain enums / value objects."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """`torch.load` that cannot run code: tensors, containers, primitives and `_safe_globals()` only."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e)) or re.search(r"Unsupported operand (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise MmrepError(f"checkpoint file {path} holds objects outside the safe allow-list{what}; loading it could "
                         "run code. Resume only from checkpoints you trust; if you wrote this one, pass "
                         "--trust-checkpoint") from None


def _safe_engine(config: Any):
    """DeepSpeed's torch checkpoint engine, loading through `safe_load` (class built lazily: DeepSpeed is heavy)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return safe_load(path, map_location)

    return SafeTorchCheckpointEngine(config)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and numbers only, so that it loads with `weights_only=True`."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()) if torch.is_tensor(mt) else tuple(mt), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys.numpy() if torch.is_tensor(keys) else keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _discard(path: Path) -> None:
    """Delete a checkpoint dir without ever exposing a half-deleted one under its tag: rename it to a
    temp name first (a kill mid-delete leaves only a temp dir, which `clean_stale` removes)."""
    trash = path.with_name(f"{TMP_PREFIX}old-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save(engine, ckpt_dir: str | Path, step: int, trainer_state: dict[str, Any], keep_last: int,
         rank_state: dict[str, Any] | None = None) -> str:
    """Save a complete checkpoint for optimizer step `step` on every rank; returns its tag.

    `trainer_state` (step, samples seen, ...) is rank 0's; `rank_state` (data position) is kept per rank
    beside that rank's RNG states."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    tmp_tag = TMP_PREFIX + tag
    rank = rank_world()[0]
    if rank == 0:
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state={"trainer": trainer_state}, save_latest=False)
    (ckpt_dir / tmp_tag).mkdir(parents=True, exist_ok=True)
    torch.save({"rng": rng_state(), "state": rank_state or {}}, ckpt_dir / tmp_tag / f"rank{rank}_state.pt")
    barrier()  # every rank's files are on disk
    if rank == 0:
        with atomic_write(ckpt_dir / tmp_tag / STATE_FILE, "w") as f:
            json.dump(trainer_state, f, indent=1)
        final = ckpt_dir / tag
        if final.exists():  # re-saving the same step (e.g. end of run right after a periodic save)
            _discard(final)
        os.replace(ckpt_dir / tmp_tag, final)
        with atomic_write(ckpt_dir / LATEST, "w") as f:
            f.write(tag)
        for old in list_tags(ckpt_dir)[:-keep_last]:
            _discard(ckpt_dir / old)
    barrier()
    return tag


def load(engine, ckpt_dir: str | Path, tag: str, trust: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore module, optimizer, LR schedule and this rank's RNG; -> (trainer state, this rank's state).

    Every file is read with `safe_load` unless `trust` (the user vouches for the checkpoint)."""
    ckpt_dir = Path(ckpt_dir)
    rank = rank_world()[0]
    rank_file = ckpt_dir / tag / f"rank{rank}_state.pt"
    # the small per-rank file first: a refused file then stops the resume before any weights are touched
    saved = (torch.load(rank_file, weights_only=False) if trust else safe_load(rank_file)) if rank_file.is_file() else None
    original = engine.checkpoint_engine
    if not trust:
        engine.checkpoint_engine = _safe_engine(getattr(engine, "_config", None))
    try:
        path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
    except RuntimeError as e:  # the model in the config is not the one the checkpoint holds
        if "state_dict" not in str(e) and "size mismatch" not in str(e):
            raise
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln or "key(s)" in ln), "")
        raise MmrepError(f"checkpoint {ckpt_dir / tag} holds another model than this config builds ({detail[:200]}); "
                         "resume with the run's own config.yaml, or start a new --output_dir") from None
    finally:
        engine.checkpoint_engine = original
    if path is None:
        raise MmrepError(f"checkpoint {ckpt_dir / tag} could not be loaded (is it from another model or world size?)")
    rank_state: dict[str, Any] = {}
    if saved is not None:
        set_rng_state(saved["rng"])
        rank_state = saved["state"]
    return dict(client.get("trainer", {})), rank_state
