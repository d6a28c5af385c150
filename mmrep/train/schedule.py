"""Learning-rate schedule: linear warmup then cosine decay, as a multiplier of the base LR."""

from __future__ import annotations

import math
from typing import Callable

import torch


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0,
                  progress: float | None = None) -> float:
    """LR multiplier at optimizer step `step` (0-based): 0 -> 1 over warmup, then cosine to `min_ratio`.

    The cosine follows the steps after warmup, or `progress` in [0, 1] when given (a time budget's fraction).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if progress is None:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, progress))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0,
    progress: Callable[[], float] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping once per optimizer step; DeepSpeed steps it and saves it in checkpoints.

    `progress` (optional) returns how far through a time budget the run is; the cosine then spans the budget.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_ratio,
                                              progress() if progress is not None else None)
    )
