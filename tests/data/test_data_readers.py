import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_helpers import encode, img2dataset_folder, product, write_set, write_tar
from mmrep.config import load
from mmrep.data.collate import Collator
from mmrep.data.readers import (DataConfig, SkipStats, count_samples, decode_sample, eval_loader, iter_products,
                                train_loader)
from mmrep.data.transforms import CorruptSample, ImageTransform
from mmrep.errors import MmrepError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def collator(tokenizer):
    return Collator(tokenizer, ImageTransform(8), max_images=2)


def _ids(loader) -> list[str]:
    return [i for batch in loader for i in batch.ids]


def test_img2dataset_shards_read_without_conversion(tmp_path, collator):
    folder = img2dataset_folder(tmp_path / "i2d")
    products = list(iter_products(folder))
    assert [p.id for p in products] == ["000000000", "000000001", "000000003", "000000004"]  # the gap is just absent
    p = products[1]
    assert p.title == "blue jeans 1" and p.image_exts == ["jpg"] and p.images[0][:2] == b"\xff\xd8"
    assert p.attributes == {"brand": "acme", "price": "12.5"}  # bookkeeping (url, sha256, sizes, ...) dropped
    assert count_samples(folder) == 4  # from 00000_stats.json
    batches = list(eval_loader(DataConfig(shards=str(folder), batch_size=3, num_workers=0), collator))
    assert [len(b) for b in batches] == [3, 1] and batches[0].inputs.image_mask.all()


def test_img2dataset_empty_text_is_masked(tmp_path, collator):
    write_tar(tmp_path / "00000.tar", [("a.jpg", encode()), ("a.txt", b""), ("b.txt", b"only text")])
    batch = collator.products(list(iter_products(tmp_path / "00000.tar")))
    assert batch.ids == ["a", "b"]
    assert batch.inputs.has_text.tolist() == [False, True] and batch.inputs.has_image.tolist() == [True, False]


@pytest.mark.parametrize("n_shards, mode", [(9, "shard"), (2, "sample"), (9, "sample")])
def test_eval_every_sample_exactly_once(tmp_path, collator, n_shards, mode):
    products = [product(i) for i in range(37)]
    sizes = [37 // n_shards + (1 if k < 37 % n_shards else 0) for k in range(n_shards)]
    write_set(tmp_path / "val", products, sizes)
    cfg = DataConfig(shards=str(tmp_path / "val"), batch_size=4, num_workers=2, eval_split="auto" if mode == "shard" else mode)
    parts = [_ids(eval_loader(cfg, collator, rank=r, world_size=2)) for r in range(2)]
    assert set(parts[0]).isdisjoint(parts[1]) and all(parts)
    assert sorted(parts[0] + parts[1]) == sorted(p.id for p in products)


@pytest.mark.slow
def test_eval_two_real_processes(tmp_path):
    products = [product(i) for i in range(25)]
    write_set(tmp_path / "val", products, 7)
    script = (
        "import json, sys\n"
        "from mmrep.data.collate import Collator\n"
        "from mmrep.data.readers import DataConfig, eval_loader\n"
        "from mmrep.data.tokenize import ProductTokenizer, TokenizerConfig\n"
        "from mmrep.data.transforms import ImageTransform\n"
        "rank, folder, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
        "col = Collator(ProductTokenizer(TokenizerConfig()), ImageTransform(8), 2)\n"
        "cfg = DataConfig(shards=folder, batch_size=3, num_workers=2)\n"
        "ids = [i for b in eval_loader(cfg, col, rank=rank, world_size=2) for i in b.ids]\n"
        "open(out, 'w').write(json.dumps(ids))\n"
    )
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r), str(tmp_path / "val"), str(tmp_path / f"{r}.json")],
                              cwd=REPO, env=env) for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    parts = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert set(parts[0]).isdisjoint(parts[1]) and sorted(parts[0] + parts[1]) == sorted(p.id for p in products)


def test_resampled_training_gives_equal_batches_per_rank(tmp_path, collator):
    products = [product(i) for i in range(40)]
    write_set(tmp_path / "train", products, [27, 1, 3, 9])  # very uneven shards
    cfg = DataConfig(shards=str(tmp_path / "train"), batch_size=4, num_workers=2, resampled=True, epoch_length=26,
                     shuffle_buffer=8, seed=5)
    loaders = [train_loader(cfg, collator, rank=r, world_size=2) for r in range(2)]
    epochs = [[[b.ids for b in loader] for _ in range(2)] for loader in loaders]
    for loader, runs in zip(loaders, epochs):
        assert len(loader) == 6 and [len(run) for run in runs] == [6, 6]  # 26 // 4 on every rank, every epoch
        assert all(len(ids) == 4 for run in runs for ids in run)  # full batches only
        assert runs[0] != runs[1]  # a new epoch reshuffles
    assert epochs[0][0] != epochs[1][0]  # ranks draw different streams
    loaders[0].set_epoch(0)
    assert [b.ids for b in loaders[0]] == epochs[0][0]  # an epoch is reproducible
    with pytest.raises(MmrepError, match="epoch_length"):  # no manifest to count samples from
        train_loader(DataConfig(shards=str(tmp_path / "train"), resampled=True), collator, rank=0, world_size=2)


def test_one_pass_training_splits_shards_and_shuffles(tmp_path, collator):
    products = [product(i) for i in range(40)]
    write_set(tmp_path / "train", products, 5)  # 8 shards of 5
    cfg = DataConfig(shards=str(tmp_path / "train"), batch_size=5, num_workers=2, shuffle_buffer=10)
    parts = [_ids(train_loader(cfg, collator, rank=r, world_size=2)) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(p.id for p in products)  # 5 | shard size: no partial batches
    assert parts[0] + parts[1] != [p.id for p in products]
    with pytest.raises(MmrepError, match="resampled"):
        train_loader(DataConfig(shards=str(tmp_path / "train"), num_workers=8), collator, rank=0, world_size=2)
    resampled = DataConfig(shards=str(tmp_path / "train"), resampled=True, batch_size=4)
    assert len(train_loader(resampled, collator, rank=1, world_size=2)) == 40 // 2 // 4  # manifest count / ranks


def _corrupt_set(folder: Path) -> tuple[list[str], dict[str, int]]:
    """Good products plus one of each kind of corruption, in separate shards."""
    folder.mkdir()
    good = [product(i) for i in range(6)]
    write_set(folder / "ok", good, 3)
    members = []
    bad_image = product(100).to_sample()
    members += [("bad-image.product.json", json.dumps(bad_image["product.json"]).encode()),
                ("bad-image.0.jpg", b"<html>404</html>")]
    members += [("bad-json.product.json", b"{not json"), ("bad-json.0.jpg", encode())]
    members += [("no-meta.bin", b"stray file")]
    members += [("no-id.product.json", json.dumps({"title": "x", "images": []}).encode())]
    members += [("empty.product.json", json.dumps({"id": "empty", "images": []}).encode())]
    no_title = product(7, title="")
    members += [("item-7.product.json", json.dumps(no_title.to_sample()["product.json"]).encode()),
                ("item-7.0.jpg", no_title.images[0])]
    write_tar(folder / "mixed.tar", members)
    # a truncated shard: a complete tar of 4 products, cut in the middle of its third sample
    write_set(folder / "cut", [product(i) for i in range(20, 24)], 4)
    data = (folder / "cut" / "cut-000000.tar").read_bytes()
    (folder / "cut.tar").write_bytes(data[: len(data) // 2 + 700])
    for p in (folder / "ok").iterdir():
        p.rename(folder / p.name)
    # missing_field: the stray file with no metadata, and the metadata without an id
    expected = {"truncated_tar": 1, "bad_image": 1, "bad_json": 1, "missing_field": 2, "empty_sample": 1}
    return [p.id for p in good] + ["item-7"], expected


def test_corrupt_samples_are_skipped_and_counted(tmp_path, collator):
    good, expected = _corrupt_set(tmp_path / "set")
    (tmp_path / "set" / "manifest.json").unlink()
    cfg = DataConfig(shards=str(tmp_path / "set"), batch_size=2, num_workers=2)
    loader = eval_loader(cfg, collator)
    ids = _ids(loader)
    assert set(good) <= set(ids) and set(ids) - set(good) <= {"item-20", "item-21", "item-22", "item-23"}
    counts = loader.skip_stats.counts()  # summed over both worker processes
    assert counts == expected
    assert {"item-20", "item-21"} <= set(ids)  # samples before the truncation point are kept
    assert loader.skip_stats.as_dict()["data/skipped"] == sum(counts.values())
    single = eval_loader(DataConfig(shards=str(tmp_path / "set"), batch_size=2, num_workers=0), collator)
    assert sorted(_ids(single)) == sorted(ids) and single.skip_stats.counts() == counts
    examples = single.skip_stats.examples  # messages are kept by the process that saw them (here: this one)
    assert any(e["key"] == "bad-json" and e["shard"].endswith("mixed.tar") for e in examples)
    assert any(e["reason"] == "truncated_tar" and e["shard"].endswith("cut.tar") for e in examples)
    # plain iteration yields records with their bytes: the undecodable image is the consumer's to find
    stats = SkipStats()
    assert {p.id for p in iter_products(tmp_path / "set", stats=stats)} == set(ids) | {"item-100"}
    assert stats.counts() == {k: v for k, v in counts.items() if k != "bad_image"}


@pytest.mark.parametrize("workers", [0, 2])
def test_strict_mode_fails_naming_shard_and_key(tmp_path, collator, workers):
    write_tar(tmp_path / "s.tar", [("good.product.json", json.dumps(product(1).to_sample()["product.json"]).encode()),
                                   ("good.0.jpg", encode()),
                                   ("bad.product.json", json.dumps(product(2).to_sample()["product.json"]).encode()),
                                   ("bad.0.jpg", b"GIF89a garbage")])
    cfg = DataConfig(shards=str(tmp_path / "s.tar"), batch_size=1, num_workers=workers, strict=True, eval_split="sample")
    with pytest.raises(CorruptSample, match=r"s\.tar.*sample bad") as e:
        _ids(eval_loader(cfg, collator))
    assert "\n" not in str(e.value) and e.value.key == "bad"
    write_tar(tmp_path / "j.tar", [("bad.product.json", b"{oops")])
    with pytest.raises(CorruptSample, match=r"j\.tar, sample bad: metadata JSON"):
        list(iter_products(tmp_path / "j.tar", strict=True))


def test_strict_mode_on_truncated_tar(tmp_path):
    write_set(tmp_path / "t", [product(i) for i in range(4)], 4)
    data = (tmp_path / "t" / "t-000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:1500])
    with pytest.raises(CorruptSample, match="cut.tar"):
        list(iter_products(tmp_path / "cut.tar", strict=True))


def test_decode_sample_errors_name_key():
    with pytest.raises(CorruptSample, match="k1") as e:
        decode_sample({"__key__": "k1", "__url__": "a.tar", "product.json": b"[1, 2]"})
    assert e.value.reason == "bad_json"
    p = decode_sample({"__key__": "k2", "__url__": "a.tar", "txt": "caf\u00e9".encode()})
    assert p.title == "café" and p.images == []


def test_data_config_validation(tmp_path):
    cfg_file = tmp_path / "data.yaml"
    cfg_file.write_text("batch_size: 8\nbatch_sise: 4\n")
    with pytest.raises(MmrepError, match="batch_sise"):
        load(DataConfig, cfg_file)
    with pytest.raises(MmrepError, match="data.batch_size"):
        DataConfig(batch_size=0)
    with pytest.raises(MmrepError, match="must be true or false"):
        load(DataConfig, None, ["--resampled=maybe"])
    assert load(DataConfig, REPO / "configs" / "data" / "default.yaml") == DataConfig()
    with pytest.raises(MmrepError, match="not found"):
        list(iter_products(tmp_path / "nowhere"))


def test_triplet_shards_through_loaders(tmp_path, collator):
    from mmrep.data.collate import TripletBatch
    from mmrep.data.readers import iter_triplets
    from mmrep.data.shards import ShardWriter
    from mmrep.records import Query, Triplet

    triplets = [Triplet(f"t{i}", Query(f"q{i}", text=f"shirt {i}", images=[encode()] if i % 2 else []),
                        product(i), [product(100 + i + k) for k in range(i % 3)]) for i in range(6)]
    with ShardWriter(tmp_path / "trip", "trip", max_count=3, kind="triplets") as w:
        for t in triplets:
            w.write(t.to_sample())
    assert list(iter_triplets(tmp_path / "trip")) == triplets
    cfg = DataConfig(shards=str(tmp_path / "trip"), batch_size=3, num_workers=0, resampled=True, epoch_length=6)
    batches = list(train_loader(cfg, collator, kind="triplets"))
    assert len(batches) == 2 and all(isinstance(b, TripletBatch) for b in batches)
    b = batches[0]
    assert b.negatives.batch_size == 3 * b.negative_mask.shape[1]
    assert b.negative_mask.sum(1).tolist() == [len(n) for n in b.negative_ids]
    # a product-only reader refuses a triplet set up front (its manifest says so) instead of mixing kinds
    with pytest.raises(MmrepError, match="holds triplets, but this stage reads products"):
        eval_loader(DataConfig(shards=str(tmp_path / "trip"), num_workers=0), collator, kind="products")
    (tmp_path / "trip" / "manifest.json").unlink()  # no manifest: the first triplet stops the read, one line
    loader = eval_loader(DataConfig(shards=str(tmp_path / "trip"), num_workers=0), collator, kind="products")
    with pytest.raises(MmrepError, match="holds triplets, but this stage reads products"):
        _ids(loader)


def test_missing_shard_is_counted_as_unreadable(tmp_path, collator):
    write_set(tmp_path / "v", [product(i) for i in range(4)], 2)
    (tmp_path / "v" / "v-000001.tar").unlink()  # listed in the manifest, gone from disk
    loader = eval_loader(DataConfig(shards=str(tmp_path / "v"), num_workers=0), collator)
    assert _ids(loader) == ["item-0", "item-1"]
    assert loader.skip_stats.counts() == {"unreadable_shard": 1, "lost_in_damaged_shard": 2}  # per the manifest
    assert loader.skip_stats.summary() == "skipped 2 samples: 2 lost with 1 damaged shard(s) (unreadable_shard: 1)"
    assert loader.skip_stats.examples[0]["shard"].endswith("v-000001.tar")


def test_resampling_unreadable_shards_fails_instead_of_spinning(tmp_path, collator):
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 100)
    cfg = DataConfig(shards=str(tmp_path / "junk.tar"), num_workers=0, resampled=True, epoch_length=64)
    with pytest.raises(MmrepError, match="in a row"):
        list(train_loader(cfg, collator))
