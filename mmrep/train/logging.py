"""Training observability: W&B (online / offline / disabled), a console progress bar, and a JSONL log.

Only rank 0 logs. W&B never crashes a run: without a key or a server it falls back to offline, and an
init failure falls back to disabled with one warning. `metrics.jsonl` (one JSON object per logged
step) is written beside the checkpoints for users without W&B.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mmrep.errors import MmrepError

WandbMode = Literal["auto", "online", "offline", "disabled"]


@dataclass
class LoggingConfig:
    wandb: WandbMode = "auto"  # auto: WANDB_MODE env if set, else online when logged in, else offline
    project: str = "mmrep"
    run_name: str = ""  # default: the output folder's name
    jsonl: bool = True  # OUT/metrics.jsonl
    every_steps: int = 1  # log every N optimizer steps (the last step is always logged)
    progress: bool = True  # console progress bar on rank 0 (a plain line per log when not a TTY)

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            raise MmrepError("logging.every_steps must be at least 1")


def resolve_wandb_mode(mode: WandbMode) -> str:
    """The W&B mode to use: an explicit config wins, then WANDB_MODE, then online only when a key exists."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled", "dryrun", "run"):
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled"
    return "online" if _wandb_logged_in() else "offline"


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text() or "wandb" in netrc.read_text()
    except OSError:
        return False


class MetricsLogger:
    """Rank-0 sink for step metrics: W&B, `metrics.jsonl`, and the console."""

    def __init__(self, cfg: LoggingConfig, out_dir: str | Path, run_config: dict[str, Any], total_steps: int,
                 start_step: int = 0, rank: int = 0, append: bool = False):
        self.cfg = cfg
        self.rank = rank
        self.enabled = rank == 0
        self.out_dir = Path(out_dir)
        self.total_steps = total_steps
        self.wandb_run = None
        self.wandb_mode = "disabled"
        self._jsonl = None
        self._bar = None
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.jsonl:
            # A resumed run appends to its log: the steps up to the checkpoint are kept, those logged after it
            # (by the run that was killed) are dropped, since the resumed run logs them again.
            path = self.out_dir / "metrics.jsonl"
            if append:
                truncate_log(path, start_step)
            self._jsonl = open(path, "a" if append else "w", buffering=1)
        self.wandb_mode = resolve_wandb_mode(cfg.wandb)
        if self.wandb_mode != "disabled":
            self.wandb_run = self._init_wandb(run_config, resume=append)
        if cfg.progress and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def _init_wandb(self, run_config: dict[str, Any], resume: bool = False):
        import wandb

        from mmrep.fsutil import atomic_write

        wandb_dir = os.environ.get("WANDB_DIR") or str(self.out_dir)
        Path(wandb_dir).mkdir(parents=True, exist_ok=True)
        name = self.cfg.run_name or self.out_dir.name
        # A resumed training run continues its W&B run (same id) instead of opening a new one.
        id_file = self.out_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        for mode in dict.fromkeys([self.wandb_mode, "offline"]):
            try:
                run = wandb.init(project=self.cfg.project, name=name, dir=wandb_dir, mode=mode,
                                 config=run_config, reinit="finish_previous", id=run_id,
                                 resume="allow" if run_id else None,
                                 settings=wandb.Settings(init_timeout=60, console="off", silent=True))
                self.wandb_mode = mode
                if run.id != run_id:
                    with atomic_write(id_file, "w") as f:
                        f.write(run.id + "\n")
                return run
            except Exception as e:  # no key, no server, ...: fall back, never crash the run
                warnings.warn(f"wandb {mode} init failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                              f"{'trying offline' if mode != 'offline' else 'W&B logging disabled'}")
        self.wandb_mode = "disabled"
        return None

    def log(self, step: int, metrics: dict[str, float], force: bool = False) -> None:
        """Record `metrics` for optimizer step `step` (1-based) if it is due."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(_short(metrics), refresh=False)
            self._bar.refresh()
        if not (force or step % self.cfg.every_steps == 0 or step == self.total_steps):
            return
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(clean, step=step)
        if self._bar is None and self.cfg.progress:
            print(f"step {step}/{self.total_steps} " + " ".join(f"{k}={v:.4g}" for k, v in _short(clean).items()),
                  flush=True)

    def note(self, text: str) -> None:
        """A one-line message on the console (rank 0), kept clear of the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def truncate_log(path: Path, step: int) -> None:
    """Keep only the complete lines of a metrics log whose step is <= `step` (atomically)."""
    from mmrep.fsutil import atomic_write

    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if line.endswith("\n") and isinstance(row, dict) and int(row.get("step", 0)) <= step:
            keep.append(line)
    with atomic_write(path, "w") as f:
        f.writelines(keep)


_SHORT_KEYS = ("loss", "samples_per_s", "data_wait_s", "compute_s", "lr")


def _short(metrics: dict[str, float]) -> dict[str, float]:
    return {k.replace("samples_per_s", "sps"): round(float(metrics[k]), 4) for k in _SHORT_KEYS if k in metrics}


class StepTimer:
    """Splits wall time into waiting for data and computing; `samples_per_s` over the last interval."""

    def __init__(self) -> None:
        self.data_wait = 0.0
        self.compute = 0.0
        self.samples = 0
        self._t = time.perf_counter()

    def data_ready(self) -> None:
        now = time.perf_counter()
        self.data_wait += now - self._t
        self._t = now

    def step_done(self, samples: int) -> None:
        now = time.perf_counter()
        self.compute += now - self._t
        self._t = now
        self.samples += samples

    def pop(self) -> dict[str, float]:
        """Metrics since the last pop, then reset."""
        total = self.data_wait + self.compute
        out = {"data_wait_s": self.data_wait, "compute_s": self.compute,
               "samples_per_s": self.samples / total if total > 0 else 0.0}
        self.data_wait = self.compute = 0.0
        self.samples = 0
        return out
