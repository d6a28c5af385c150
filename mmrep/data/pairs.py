"""Item pairs (QARM item alignment): `PairLoader` yields `PairBatch`es from a pair CSV over a product
shard set; `mine_user_item_pairs` derives user-to-item pairs from an interaction log.

Pair CSVs (`item_a,item_b,kind`) come from the built-in world (`pairs.csv`: co-click / co-purchase)
or from `mine_user_item_pairs` over a catalogue's embeddings.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from mmrep.data.collate import Collator, PairBatch
from mmrep.data.readers import DataConfig, SkipStats, iter_products
from mmrep.errors import MmrepError
from mmrep.records import Interaction, ItemPair


class PairLoader:
    """Item-alignment batches (`PairBatch`) from a pair CSV over a product shard set, for one rank.

    Products are decoded once into memory (alignment sets are catalogue-sized); pairs whose items are
    missing are skipped and counted. Every rank yields the same number of batches per epoch."""

    def __init__(self, pairs_csv: str, data: DataConfig, collator: Collator, rank: int, world: int):
        path = Path(pairs_csv)
        if not path.is_file():
            raise MmrepError(f"pairs file {pairs_csv!r} not found (an item-pair CSV with columns item_a,item_b,kind)")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"item_a", "item_b"} <= set(reader.fieldnames):
                raise MmrepError(f"{pairs_csv}: needs columns item_a,item_b (got {reader.fieldnames})")
            rows = [(r["item_a"], r["item_b"]) for r in reader]
        self.skip_stats = SkipStats()
        self.products = {p.id: p for p in iter_products(data.shards, data.strict, self.skip_stats)}
        self.pairs = [(a, b) for a, b in rows if a in self.products and b in self.products]
        self.missing = len(rows) - len(self.pairs)
        self.data, self.collator, self.rank, self.world = data, collator, rank, world
        self.epoch = 0
        self.num_batches = len(self.pairs) // world // data.batch_size
        if self.num_batches < 1:
            raise MmrepError(f"{pairs_csv}: {len(self.pairs)} usable pairs ({self.missing} name items missing from "
                             f"{data.shards}) cannot fill one batch of {data.batch_size} per rank on {world} ranks")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[PairBatch]:
        order = list(range(len(self.pairs)))
        random.Random(f"{self.data.seed}-{self.epoch}").shuffle(order)  # same permutation on every rank
        mine = order[self.rank::self.world][: self.num_batches * self.data.batch_size]
        for start in range(0, len(mine), self.data.batch_size):
            chunk = [self.pairs[i] for i in mine[start:start + self.data.batch_size]]
            a = self.collator.products([self.products[x] for x, _ in chunk])
            b = self.collator.products([self.products[y] for _, y in chunk])
            yield PairBatch(a.inputs, b.inputs, [x for x, _ in chunk], [y for _, y in chunk])


def mine_user_item_pairs(
    interactions: Sequence[Interaction],
    embeddings: Mapping[str, Sequence[float]] | tuple[Sequence[str], np.ndarray],
    window: int = 10,
    events: Sequence[str] = ("click", "purchase"),
) -> list[ItemPair]:
    """QARM user-to-item pairs: each interacted item paired with the most similar (cosine) of the same
    user's previous `window` interacted items (other items only). Items without an embedding are skipped."""
    if window < 1:
        raise MmrepError(f"window must be >= 1, got {window}")
    if isinstance(embeddings, tuple):
        ids, matrix = embeddings
        matrix = np.asarray(matrix, dtype=np.float32)
        if len(ids) != matrix.shape[0]:
            raise MmrepError(f"embeddings: {len(ids)} ids for {matrix.shape[0]} rows")
        table = {str(i): matrix[n] for n, i in enumerate(ids)}
    else:
        table = {str(k): np.asarray(v, dtype=np.float32) for k, v in embeddings.items()}
    unit = {k: v / max(float(np.linalg.norm(v)), 1e-12) for k, v in table.items()}
    by_user: dict[str, list[Interaction]] = {}
    for it in interactions:
        if it.event in events and str(it.item) in unit:
            by_user.setdefault(it.user, []).append(it)
    pairs: list[ItemPair] = []
    for user in sorted(by_user):
        history = sorted(by_user[user], key=lambda it: it.time)
        for n, it in enumerate(history):
            recent = [h.item for h in history[max(0, n - window):n] if h.item != it.item]
            if not recent:
                continue
            sims = np.stack([unit[r] for r in recent]) @ unit[it.item]
            pairs.append(ItemPair(item_a=recent[int(np.argmax(sims))], item_b=it.item, kind="user-item"))
    return pairs
