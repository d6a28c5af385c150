import io
import tarfile

import webdataset as wds

from mmrep.data.shards import ShardWriter, read_manifest, shard_paths
from mmrep.records import Product, Query, Triplet, sample_key


def _product(i, n_img=2):
    return Product(id=f"p.{i}", title=f"red shirt {i}", category=["Apparel", "Topwear"],
                   attributes={"colour": "red"}, images=[bytes([i, k]) for k in range(n_img)],
                   image_exts=["jpg", "png"][:n_img], labels={"articleType": "Shirts"}, split="train")


def test_product_and_triplet_roundtrip_through_shards(tmp_path):
    products = [_product(i) for i in range(5)]
    with ShardWriter(tmp_path / "train", "train", max_count=2) as w:
        for p in products:
            w.write({"__key__": sample_key(p.id), **p.to_sample()})
    manifest = read_manifest(tmp_path / "train")
    assert manifest["count"] == 5 and [s["count"] for s in manifest["shards"]] == [2, 2, 1]
    back = [Product.from_sample(s) for s in wds.WebDataset(shard_paths(tmp_path / "train"), shardshuffle=False)]
    assert back == products

    t = Triplet("t1", Query("q1", text="red shirt", images=[b"q"], item_ids=["p.0"]), products[0], products[1:3])
    buf = io.BytesIO()
    with wds.TarWriter(buf) as tw:
        tw.write(t.to_sample())
    path = tmp_path / "t.tar"
    path.write_bytes(buf.getvalue())
    (back_t,) = [Triplet.from_sample(s) for s in wds.WebDataset(str(path), shardshuffle=False)]
    assert back_t == t


def test_no_partial_shard_on_error(tmp_path):
    try:
        with ShardWriter(tmp_path, "x", max_count=10) as w:
            w.write({"__key__": "a", **_product(1).to_sample()})
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []
