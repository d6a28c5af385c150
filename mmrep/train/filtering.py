"""Dynamic sample filtering (MOON2.0): phi = sigmoid(kappa * (s_qp - s_qn - m)), m decaying over training.

Triplets whose negative scores about as high as (or above) the positive are likely noisy (a relevant
item logged as a low-relevance exposure); those with phi below the threshold are down-weighted.
"""

from __future__ import annotations

import math

import torch

from mmrep.errors import MmrepError

SCHEDULES = ("linear", "cosine", "constant")


def margin_at(step: int, total_steps: int, start: float, end: float, schedule: str = "linear") -> float:
    """The margin m at `step` of `total_steps`, going from `start` to `end` (held at `end` after)."""
    if schedule not in SCHEDULES:
        raise MmrepError(f"loss.margin_schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "constant" or total_steps <= 0:
        return start
    t = min(max(step / total_steps, 0.0), 1.0)
    if schedule == "cosine":
        t = 0.5 * (1 - math.cos(math.pi * t))
    return start + (end - start) * t


class DynamicFilter:
    """Per-sample loss weights from triplet similarities; holds no trainable state."""

    def __init__(self, kappa: float = 10.0, margin_start: float = 0.1, margin_end: float = 0.0,
                 schedule: str = "linear", threshold: float = 0.6, down_weight: float = 0.1):
        if kappa <= 0:
            raise MmrepError(f"loss.filter_kappa must be > 0, got {kappa}")
        if not 0.0 <= threshold <= 1.0:
            raise MmrepError(f"loss.filter_threshold must be in [0, 1], got {threshold}")
        if not 0.0 <= down_weight <= 1.0:
            raise MmrepError(f"loss.filter_down_weight must be in [0, 1], got {down_weight}")
        margin_at(0, 1, margin_start, margin_end, schedule)  # validates the schedule name
        self.kappa, self.threshold, self.down_weight = kappa, threshold, down_weight
        self.margin_start, self.margin_end, self.schedule = margin_start, margin_end, schedule

    def margin(self, step: int, total_steps: int) -> float:
        return margin_at(step, total_steps, self.margin_start, self.margin_end, self.schedule)

    def phi(self, s_qp: torch.Tensor, s_qn: torch.Tensor, step: int, total_steps: int) -> torch.Tensor:
        """(B,) phi from cosine similarities to the positive and to the (hardest) negative."""
        m = self.margin(step, total_steps)
        return torch.sigmoid(self.kappa * (s_qp.detach() - s_qn.detach() - m))

    def weights(self, s_qp: torch.Tensor, s_qn: torch.Tensor, has_negative: torch.Tensor,
                step: int, total_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi (B,), weight (B,)): weight is `down_weight` where phi < threshold, else 1; samples
        without a negative (has_negative False) cannot be judged and keep weight 1."""
        phi = self.phi(s_qp, s_qn, step, total_steps)
        filtered = (phi < self.threshold) & has_negative
        weight = torch.where(filtered, torch.full_like(phi, self.down_weight), torch.ones_like(phi))
        return phi, weight


def hardest_negative(query: torch.Tensor, negatives: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """query (B, D), negatives (B, K, D), mask (B, K) -> (max cosine over valid negatives (B,), any valid (B,))."""
    sims = torch.einsum("bd,bkd->bk", query, negatives).masked_fill(~mask, float("-inf"))
    has = mask.any(dim=1)
    top = sims.max(dim=1).values if sims.shape[1] else sims.new_full((sims.shape[0],), float("-inf"))
    return torch.where(has, top, torch.zeros_like(top)), has


def filter_stats(phi: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """Mean phi and the fraction of (valid) samples down-weighted, for logging."""
    n = int(valid.sum())
    if n == 0:
        return {}
    return {"phi_mean": float(phi[valid].mean()), "filtered_frac": float((weight[valid] < 1).float().mean())}
