"""Item pairs: the alignment loader (pair CSV over a shard set) and user-to-item pair mining."""

from __future__ import annotations

import numpy as np
import pytest

from data_helpers import product, write_set
from mmrep.data.collate import Collator, PairBatch
from mmrep.data.pairs import PairLoader, mine_user_item_pairs
from mmrep.data.readers import DataConfig
from mmrep.data.transforms import ImageTransform
from mmrep.errors import MmrepError
from mmrep.records import Interaction


def test_pair_loader_splits_pairs_over_ranks(tmp_path, tokenizer):
    items = tmp_path / "items"
    write_set(items, [product(i) for i in range(6)], 3)
    csv = tmp_path / "pairs.csv"
    csv.write_text("item_a,item_b,kind\n" + "".join(f"item-{i},item-{(i + 1) % 6},co-click\n" for i in range(6))
                   + "item-0,item-99,co-click\n")  # names an item the shards lack: skipped and counted
    data = DataConfig(shards=str(items), batch_size=2, seed=3)
    col = Collator(tokenizer, ImageTransform(8), max_images=1)
    ranks = [PairLoader(str(csv), data, col, rank, 2) for rank in range(2)]
    assert [len(r) for r in ranks] == [1, 1] and ranks[0].missing == 1
    seen = []
    for loader in ranks:
        for batch in loader:
            assert isinstance(batch, PairBatch) and len(batch) == 2
            assert batch.a.pixels.shape[0] == 2 and batch.b.text_ids.shape[0] == 2
            seen += list(zip(batch.ids_a, batch.ids_b))
    assert len(set(seen)) == 4  # the ranks draw disjoint pairs from one shared permutation
    with pytest.raises(MmrepError, match="cannot fill one batch"):
        PairLoader(str(csv), DataConfig(shards=str(items), batch_size=4), col, 0, 2)
    with pytest.raises(MmrepError, match="not found"):
        PairLoader(str(tmp_path / "nope.csv"), data, col, 0, 1)


def test_user_item_mining():
    emb = {"x": [1.0, 0.0], "y": [0.0, 1.0], "z": [0.9, 0.1], "w": [0.1, 0.9]}
    log = [Interaction("u1", "x", 1, "click"), Interaction("u1", "y", 2, "click"), Interaction("u1", "z", 3, "purchase"),
           Interaction("u1", "w", 4, "exposure"), Interaction("u2", "y", 1, "click"), Interaction("u2", "w", 5, "click"),
           Interaction("u1", "w", 9, "click")]
    pairs = mine_user_item_pairs(log, emb, window=2)
    got = [(p.item_a, p.item_b) for p in pairs]
    # u1: y<-x, z<-x (most similar of [x, y]), w<-y (window 2 = [y, z]); exposures are ignored; u2: w<-y
    assert got == [("x", "y"), ("x", "z"), ("y", "w"), ("y", "w")]
    assert all(p.kind == "user-item" for p in pairs)
    ids, matrix = list(emb), np.array(list(emb.values()))
    assert [(p.item_a, p.item_b) for p in mine_user_item_pairs(log, (ids, matrix), window=2)] == got
