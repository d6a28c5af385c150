"""A training run's final summary, and the conventions that let launchers such as `wandb agent` start runs.

Agent-started runs: `wandb agent` (and `mmrep sweep`, which builds the same commands) starts
`python posttrain/train.py --config=X --optim.total_steps=40 ...` with WANDB_RUN_ID set and no
`--output_dir`; each such run gets its own folder, `<output_dir of the config>/<run id>` (or
`$MMREP_RUNS_DIR/<run id>` when the local agent names a folder), so the second run of a sweep does not
find the first one's checkpoints. Without a run id but inside a sweep (WANDB_SWEEP_ID) the folder is
named by a short hash of the overrides. Plain runs keep the config's output_dir.

The summary (written to `OUT/summary.json` and to the W&B run's summary) holds what scaling laws need:
training FLOPs (`mmrep.train.flops`, measured on a real step), parameters (total and non-embedding),
samples seen, and the held-out metrics (`mmrep.evaluation.heldout`) when `heldout.bench` is set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from mmrep.fsutil import atomic_write

SUMMARY_FILE = "summary.json"
_NOT_IDENTITY = ("checkpoint.resume", "overwrite")  # resuming / overwriting does not make another run


def agent_output_dir(base: str, overrides: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The run folder when no --output_dir was given: per run under an agent, else `base` unchanged."""
    from mmrep.config import parse_override

    env = os.environ if env is None else env
    run_id = env.get("WANDB_RUN_ID", "").strip()
    if not run_id and not env.get("WANDB_SWEEP_ID"):
        return base
    if not run_id:
        keyed = sorted(f"{k}={v!r}" for k, v in map(parse_override, overrides) if k not in _NOT_IDENTITY)
        run_id = "h" + hashlib.sha256("\n".join(keyed).encode()).hexdigest()[:10]
    if any(c in run_id for c in "/\\") or run_id in (".", ".."):
        from mmrep.errors import MmrepError

        raise MmrepError(f"WANDB_RUN_ID {run_id!r} cannot name a folder; unset it or pass --output_dir")
    root = env.get("MMREP_RUNS_DIR", "").strip() or base
    return str(Path(root) / run_id)


def param_counts(module: nn.Module) -> dict[str, int]:
    """Total and non-embedding parameters (token / position embedding tables excluded, as in Kaplan et al.)."""
    embedding = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    total = non_emb = 0
    for name, p in module.named_parameters():
        total += p.numel()
        leaf = name.rsplit(".", 1)[-1]
        if id(p) not in embedding and leaf not in ("positional_embedding", "pos_embed", "position_embeddings"):
            non_emb += p.numel()
    return {"params_total": total, "params_non_embedding": non_emb}


def build_summary(trainer) -> dict[str, Any]:
    """Everything but the held-out metrics, from a trainer that has finished `fit`."""
    cfg = trainer.cfg
    per_step = trainer.flops.per_step
    out: dict[str, Any] = {
        "run_id": os.environ.get("WANDB_RUN_ID", ""),
        "sweep_id": os.environ.get("WANDB_SWEEP_ID") or os.environ.get("MMREP_SWEEP_ID", ""),
        "output_dir": str(trainer.out_dir), "stage": cfg.stage, "steps": trainer.step,
        "samples_seen": trainer.samples_seen, "global_batch": cfg.data.batch_size * cfg.optim.accum_steps * trainer.world,
        "flops_per_step": per_step, "train_flops": per_step * trainer.step if per_step is not None else None,
        "train_seconds": round(trainer.train_seconds, 3),
    }
    out.update(param_counts(trainer.engine.module.encoder))
    return out


def finish(trainer, logger) -> dict[str, Any] | None:
    """`Trainer.fit` end hook: held-out evaluation + summary.json + the W&B run summary (rank 0)."""
    summary = build_summary(trainer)  # the parameter count reads every rank's copy; cheap
    if trainer.rank != 0:
        return None
    if trainer.cfg.heldout.bench:
        from mmrep.evaluation.heldout import evaluate

        logger.note(f"held-out evaluation on {trainer.cfg.heldout.bench}")
        summary.update(evaluate(trainer.out_dir / "encoder", trainer.cfg.heldout))
    write_summary(trainer.out_dir, summary)
    run = getattr(logger, "wandb_run", None)
    if run is not None:
        run.summary.update({k: v for k, v in summary.items() if _plain(v)})
    shown = {k: v for k, v in summary.items() if k.startswith("val_") or k in ("train_flops", "params_non_embedding")}
    logger.note("summary: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    return summary


def _plain(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def write_summary(out_dir: str | Path, summary: dict[str, Any]) -> Path:
    path = Path(out_dir) / SUMMARY_FILE
    with atomic_write(path, "w") as f:
        json.dump(summary, f, indent=1)
    return path


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run(cfg) -> dict[str, Any]:
    """Train one stage and write its summary (the body of `mmrep train` and the entry scripts)."""
    from mmrep.evaluation.heldout import check_bench
    from mmrep.train.trainer import Trainer

    check_bench(cfg.heldout)
    return Trainer(cfg).fit(on_end=finish)
