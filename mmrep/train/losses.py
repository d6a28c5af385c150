"""Contrastive losses: InfoNCE with extra negatives, symmetric image<->text, Matryoshka, gathering.

Distributed use follows open_clip's `ClipLoss(local_loss=True, gather_with_grad=True)`: each rank's
queries are its own samples, candidates are gathered from every rank with autograd, and per-rank
losses are normalised by *global* counts so that the mean of the ranks' losses equals the
single-process loss on the same global batch (and DDP/DeepSpeed gradient averaging gives its gradient).
All similarities are cosines of L2-normalised embeddings times a learnable logit scale.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmrep.distributed import gather_no_grad, gather_with_grad, global_sum, rank_world
from mmrep.errors import MmrepError


# ----------------------------------------------------------------------------- distributed helpers
def global_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of per-sample `values` (B,) over the valid samples of ALL ranks, as this rank's share.

    Returns W * sum_local / count_global, so averaging it over ranks gives the global mean; 0 (with
    grad) when no rank has a valid sample."""
    _, size = rank_world()
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    local = torch.where(mask, values, values.new_zeros(())).sum()
    count = global_sum(mask.sum().to(values.dtype))
    return local * size / count.clamp(min=1)


def id_hash(ids: Sequence[str]) -> torch.Tensor:
    """Stable int64 hashes of string ids (B,), so ids can be compared and gathered as tensors."""
    out = [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little", signed=True) for i in ids]
    return torch.tensor(out, dtype=torch.long)


# ----------------------------------------------------------------------------- temperature
class LogitScale(nn.Module):
    """Learnable inverse temperature exp(s), clamped to `max_scale`.

    The parameter has shape [1], not 0-dim: DeepSpeed 0.19.8 crashes on 0-dim parameters."""

    def __init__(self, temperature: float = 0.07, max_scale: float = 100.0, learnable: bool = True):
        super().__init__()
        if temperature <= 0:
            raise MmrepError(f"loss temperature must be > 0, got {temperature}")
        self.max_log = math.log(max_scale)
        self.log_scale = nn.Parameter(torch.full([1], math.log(1.0 / temperature)), requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        """(1,) the logit scale."""
        return self.log_scale.clamp(max=self.max_log).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self().detach())


# ----------------------------------------------------------------------------- InfoNCE
def info_nce(
    query: torch.Tensor,
    pool: torch.Tensor,
    positive_index: torch.Tensor,
    scale: torch.Tensor,
    pool_mask: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample InfoNCE loss (B,): -log softmax of each query's positive among its candidates.

    query (B, D); pool (C, D) shared candidates holding each query's positive at `positive_index` (B,);
    pool_mask (B, C) False where a pool row must not serve as that query's negative (false negatives:
    the same item id, invalid rows; all False = no shared negatives; the positive is always kept);
    negatives (B, K, D) per-sample extra negatives with negative_mask (B, K).
    """
    rows = torch.arange(query.shape[0], device=query.device)
    query = query * scale  # scaling the (B, D) side is cheaper than the (B, C) logits
    logits = query @ pool.T  # (B, C)
    positive = logits[rows, positive_index]
    if pool_mask is not None:
        allowed = pool_mask.clone()
        allowed[rows, positive_index] = True
        logits = logits.masked_fill(~allowed, float("-inf"))
    # log-sum-exp over the pool, then merged with the per-sample negatives: no (B, C + K) copy
    lse = torch.logsumexp(logits, dim=1)
    if negatives is not None and negatives.shape[1] > 0:
        extra = torch.einsum("bd,bkd->bk", query, negatives)
        if negative_mask is not None:
            extra = extra.masked_fill(~negative_mask, float("-inf"))
        lse = torch.logsumexp(torch.cat([lse[:, None], extra], dim=1), dim=1)  # lse is finite: no NaN grads
    return lse - positive


def duplicate_mask(query_ids: torch.Tensor, pool_ids: torch.Tensor) -> torch.Tensor:
    """(B, C) True where pool row j may be a negative for query i (its item id differs)."""
    return query_ids[:, None] != pool_ids[None, :]


def symmetric_contrastive(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    valid: torch.Tensor | None = None,
    ids: torch.Tensor | None = None,
    ids_b: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-style a<->b loss with negatives gathered from all ranks (local-loss style).

    a, b (B, D) paired rows; valid (B,) rows that hold both sides; ids (B,) int64 item ids of the a
    side (ids_b of the b side, default = ids) so that duplicates of an item are not negatives. Returns (per-sample loss (B,) = mean of both
    directions, zero where invalid; this rank's share of the global mean loss, a scalar)."""
    rank, _ = rank_world()
    n = a.shape[0]
    if valid is None:
        valid = torch.ones(n, dtype=torch.bool, device=a.device)
    all_a, all_b = gather_with_grad(a), gather_with_grad(b)
    all_valid = gather_no_grad(valid)
    # no mask at all when every row is valid and no ids are given (the plain CLIP case: no masked_fill)
    mask_a2b = mask_b2a = None if bool(all_valid.all()) else all_valid[None, :].expand(n, -1)
    if ids is not None:
        mask_a2b = mask_b2a = all_valid[None, :].expand(n, -1)
        ids_b = ids if ids_b is None else ids_b
        mask_a2b = mask_a2b & duplicate_mask(ids_b, gather_no_grad(ids_b))
        mask_b2a = mask_b2a & duplicate_mask(ids, gather_no_grad(ids))
    index = torch.arange(n, device=a.device) + rank * n
    a2b = info_nce(a, all_b, index, scale, mask_a2b)
    b2a = info_nce(b, all_a, index, scale, mask_b2a)
    per = torch.where(valid, 0.5 * (a2b + b2a), a2b.new_zeros(()))
    return per, global_mean(per, valid)


class ContrastiveLoss(nn.Module):
    """Symmetric image<->text (or view<->view) loss module with its own learnable temperature."""

    def __init__(self, temperature: float = 0.07, max_scale: float = 100.0, learnable: bool = True):
        super().__init__()
        self.logit_scale = LogitScale(temperature, max_scale, learnable)

    def forward(self, a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
        """a, b (B, D) -> scalar loss (this rank's share of the global mean)."""
        return symmetric_contrastive(a, b, self.logit_scale(), valid, ids)[1]


# ----------------------------------------------------------------------------- Matryoshka
def truncate(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """(..., D) -> (..., dim) re-normalised; `None` or `dim >= D` keeps x. Zero rows stay zero."""
    if dim is None or dim >= x.shape[-1]:
        return x
    return F.normalize(x[..., :dim], dim=-1)


def matryoshka_weights(dims: Sequence[int], weights: Sequence[float] | None) -> list[float]:
    """Normalised weights (sum 1) for the sub-dimensions; equal when `weights` is empty."""
    if weights and len(weights) != len(dims):
        raise MmrepError(f"loss.matryoshka_weights needs one weight per entry of loss.matryoshka_dims ({len(dims)})")
    w = list(weights) if weights else [1.0] * len(dims)
    total = sum(w)
    if total <= 0 or min(w) < 0:
        raise MmrepError("loss.matryoshka_weights must be >= 0 with a positive sum")
    return [x / total for x in w]


class MatryoshkaLoss(nn.Module):
    """Wraps a loss over embeddings: weighted mean of the loss on every leading sub-dimension.

    `loss(*embeddings, **kw)`: every tensor argument whose last dim is the full embedding dim is
    truncated and re-normalised to each of `dims` (None/full dim = unchanged)."""

    def __init__(self, loss: Callable[..., torch.Tensor] | nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None):
        super().__init__()
        if not dims:
            raise MmrepError("loss.matryoshka_dims must list at least one dimension")
        self.loss = loss
        self.dims = list(dims)
        self.weights = matryoshka_weights(dims, weights)

    def forward(self, *embeddings: torch.Tensor, **kwargs) -> torch.Tensor:
        full = max(e.shape[-1] for e in embeddings)
        total = 0.0
        for dim, w in zip(self.dims, self.weights):
            if dim > full:
                raise MmrepError(f"loss.matryoshka_dims entry {dim} exceeds the embedding dim {full}")
            parts = [truncate(e, dim) if e.shape[-1] == full else e for e in embeddings]
            total = total + w * self.loss(*parts, **kwargs)
        return total
