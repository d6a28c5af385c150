"""Readers the synth tests share: shard sets back into records, the CTR table with click labels."""

import json

import pandas as pd
import webdataset as wds

from mmrep.data.shards import shard_paths
from mmrep.records import Product, Triplet

SPLITS = ("train", "val", "test")
# a cut-down world for tests that generate several worlds (about 1 s each)
SMALL = dict(n_items=120, n_users=40, n_queries=60, sessions_per_user=10.0, shard_size=50)


def read_products(world, split):
    return [Product.from_sample(s) for s in wds.WebDataset(shard_paths(world / "items" / split), shardshuffle=False)]


def read_triplets(world, split):
    return [Triplet.from_sample(s) for s in wds.WebDataset(shard_paths(world / "triplets" / split), shardshuffle=False)]


def ctr_table(world):
    """Exposure rows with y = 1 when a click row has the same (user, item, time); `train` by ctr_split_time."""
    ev = pd.read_csv(world / "interactions.csv", keep_default_na=False)
    split_time = json.loads((world / "world.json").read_text())["ctr_split_time"]
    exp = ev[ev.event == "exposure"][["user", "item", "time"]]
    clk = ev[ev.event == "click"][["user", "item", "time"]].assign(y=1)
    d = exp.merge(clk, on=["user", "item", "time"], how="left").fillna({"y": 0})
    d["y"] = d.y.astype(int)
    d["train"] = d.time < split_time
    return d
