"""Extra negatives: a memory queue of past batches (temporal) and same-category hard negatives.

MOON draws negatives from the batch, from other GPUs ("spatial", see `losses.gather_with_grad`),
from past batches ("temporal": `MemoryQueue`) and from same-category items (`mine_hard_negatives`).
"""

from __future__ import annotations

import torch
from torch import nn

from mmrep.errors import MmrepError


class MemoryQueue(nn.Module):
    """FIFO of the last `size` item embeddings (detached) with their int64 item ids.

    Buffers (so the queue is saved with the objective's state and resumes exactly): embeddings
    (size, D), ids (size,), valid (size,), ptr (1,). Push the *gathered* batch so every rank holds the
    same queue."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise MmrepError(f"loss.queue_size must be >= 1 (got {size}) and the embedding dim known (got {dim})")
        self.size = size
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("ids", torch.zeros(size, dtype=torch.long))
        self.register_buffer("valid", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.valid.sum())

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, ids: torch.Tensor) -> None:
        """Enqueue (N, D) embeddings with their (N,) ids, overwriting the oldest entries."""
        embeddings = embeddings.detach()[-self.size :]
        ids = ids[-self.size :]
        n = embeddings.shape[0]
        if n == 0:
            return
        slots = (int(self.ptr) + torch.arange(n, device=self.ids.device)) % self.size
        self.embeddings[slots] = embeddings.to(self.embeddings.dtype)
        self.ids[slots] = ids.to(self.ids.device)
        self.valid[slots] = True
        self.ptr[0] = (int(self.ptr) + n) % self.size

    def candidates(self, positive_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, D) queued embeddings and a (B, Q) mask, False where an entry is the query's own
        positive item (or an empty slot)."""
        mask = self.valid[None, :] & (self.ids[None, :] != positive_ids[:, None].to(self.ids.device))
        return self.embeddings, mask


@torch.no_grad()
def mine_hard_negatives(
    query: torch.Tensor,
    items: torch.Tensor,
    query_category: torch.Tensor,
    item_category: torch.Tensor,
    positive_ids: torch.Tensor,
    item_ids: torch.Tensor,
    k: int,
    item_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k items most similar to each query among those sharing its category, excluding its
    positive item (any row with the positive's id).

    query (B, D); items (N, D); categories int64 (B,) / (N,); positive_ids (B,); item_ids (N,).
    Returns (index (B, k) into items, mask (B, k) True where a hard negative was found).
    Selection is not differentiated; gather `items[index]` with grad to use them."""
    eligible = (query_category[:, None] == item_category[None, :]) & (positive_ids[:, None] != item_ids[None, :])
    if item_valid is not None:
        eligible &= item_valid[None, :]
    k = min(k, items.shape[0])
    sims = (query @ items.T).masked_fill(~eligible, float("-inf"))
    top, index = sims.topk(k, dim=1)
    return index, torch.isfinite(top)
