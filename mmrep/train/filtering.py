"""Dynamic sample filtering (MOON2.0): phi = sigmoid(kappa * (g - m)), m decaying over training.

g is a triplet's gap s_qp - s_qn (cosine to the positive minus cosine to the hardest own negative).
Triplets whose negative scores about as high as (or above) the positive are likely noisy (a relevant
item logged as a low-relevance exposure); those with phi below the threshold are down-weighted.

`reference` says what g is measured against:
- "absolute": the raw gap (the paper's formula). Its margin (0.1 -> 0) is in cosine units, which only
  fits a well-trained model: on the demo's post-training it down-weighted 92% of triplets early and
  52-65% at the end, i.e. most of the clean data.
- "batch" (default): the gap standardised by the batch's robust statistics, g = (gap - median) /
  (1.4826 MAD), so the margin is in standard deviations below the batch's typical triplet. A clean batch
  loses only its far tail (about 7% at m = -1.5, 2% at m = -2), while label-noise triplets (negative
  above the positive, far below the median gap) fall under it; median and MAD do not move when noise
  is present, unlike a mean and std.
`warmup` (a share of training) keeps every weight at 1 while the embeddings cannot yet tell noise from
hard-but-clean triplets.
"""

from __future__ import annotations

import math

import torch

from mmrep.errors import MmrepError

SCHEDULES = ("linear", "cosine", "constant")
REFERENCES = ("batch", "absolute")
MIN_BATCH = 4  # fewer judged triplets than this: no robust statistics, nothing is filtered (batch mode)


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


def robust_standardise(gap: torch.Tensor, reference: torch.Tensor) -> torch.Tensor | None:
    """(gap - median(reference)) / (1.4826 MAD(reference)); None when `reference` is too small or flat."""
    if reference.numel() < MIN_BATCH:
        return None
    med = reference.median()
    mad = (reference - med).abs().median() * 1.4826
    if float(mad) < 1e-6:
        return None
    return (gap - med) / mad


class DynamicFilter:
    """Per-sample loss weights from triplet similarities; holds no trainable state."""

    def __init__(self, kappa: float = 10.0, margin_start: float = 0.1, margin_end: float = 0.0,
                 schedule: str = "linear", threshold: float = 0.6, down_weight: float = 0.1,
                 reference: str = "absolute", warmup: float = 0.0):
        if kappa <= 0:
            raise MmrepError(f"loss.filter_kappa must be > 0, got {kappa}")
        if not 0.0 <= threshold <= 1.0:
            raise MmrepError(f"loss.filter_threshold must be in [0, 1], got {threshold}")
        if not 0.0 <= down_weight <= 1.0:
            raise MmrepError(f"loss.filter_down_weight must be in [0, 1], got {down_weight}")
        if reference not in REFERENCES:
            raise MmrepError(f"loss.filter_reference must be one of {REFERENCES}, got {reference!r}")
        if not 0.0 <= warmup < 1.0:
            raise MmrepError(f"loss.filter_warmup must be a share of training in [0, 1), got {warmup}")
        margin_at(0, 1, margin_start, margin_end, schedule)  # validates the schedule name
        self.kappa, self.threshold, self.down_weight = kappa, threshold, down_weight
        self.margin_start, self.margin_end, self.schedule = margin_start, margin_end, schedule
        self.reference, self.warmup = reference, warmup

    def margin(self, step: int, total_steps: int) -> float:
        return margin_at(step, total_steps, self.margin_start, self.margin_end, self.schedule)

    def active(self, step: int, total_steps: int) -> bool:
        """False during the warm-up share of training."""
        return total_steps <= 0 or step >= self.warmup * total_steps

    def phi(self, s_qp: torch.Tensor, s_qn: torch.Tensor, step: int, total_steps: int,
            reference: torch.Tensor | None = None) -> torch.Tensor | None:
        """(B,) phi from cosine similarities to the positive and to the (hardest) negative; None when the
        batch reference cannot be judged. `reference`: the gaps the batch statistics come from (e.g. the
        valid triplets of every rank); default: all of `s_qp - s_qn`."""
        gap = s_qp.detach() - s_qn.detach()
        if self.reference == "batch":
            gap = robust_standardise(gap, gap if reference is None else reference.detach())
            if gap is None:
                return None
        return torch.sigmoid(self.kappa * (gap - self.margin(step, total_steps)))

    def weights(self, s_qp: torch.Tensor, s_qn: torch.Tensor, has_negative: torch.Tensor,
                step: int, total_steps: int, reference: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi (B,), weight (B,)): weight is `down_weight` where phi < threshold, else 1; samples
        without a negative (has_negative False) cannot be judged and keep weight 1, and so does every
        sample during the warm-up or when the batch reference is too small (phi reported as 1)."""
        if reference is None and self.reference == "batch":
            reference = (s_qp.detach() - s_qn.detach())[has_negative]
        phi = self.phi(s_qp, s_qn, step, total_steps, reference) if self.active(step, total_steps) else None
        if phi is None:
            return torch.ones_like(s_qp.detach()), torch.ones_like(s_qp.detach())
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
