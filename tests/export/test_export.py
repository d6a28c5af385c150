"""mmrep export: layout, equality with direct encoding, atomic parts, resume, refusal to clobber."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mmrep.cli import main as mmrep_main
from mmrep.data.readers import iter_products
from mmrep.errors import MmrepError
from mmrep.export import embeddings as ex
from mmrep.inference import embed_records, open_encoder
from mmrep.export.format import INDEX, load_embeddings, read_part

from embedding_helpers import image_bytes, write_products


@pytest.fixture(scope="module")
def handle(encoder_dir):
    return open_encoder(encoder_dir)


def run(handle, shards, out, **kw):
    cfg = ex.ExportConfig(encoder="", shards=str(shards), out=str(out), part_size=kw.pop("part_size", 3),
                          batch_size=kw.pop("batch_size", 4), progress=False, **kw)
    return ex.export(cfg, handle)


def test_export_layout_and_values(handle, products_dir, tmp_path):
    index = run(handle, products_dir, tmp_path / "emb", faiss="flat")
    # 13 items in shards of 5, 5, 3 -> parts of 3 rows: (0,0) (0,1) (1,0) (1,1) (2,0)
    assert [p["name"] for p in index["parts"]] == [f"part-{s:05d}-{c:05d}.safetensors" for s, c in
                                                    [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]]
    assert index["count"] == 13 and index["dim"] == 16 and index["faiss"] == "index.faiss"
    ids, emb = load_embeddings(tmp_path / "emb")
    products = list(iter_products(str(products_dir)))
    assert ids == [p.id for p in products]
    direct = embed_records(handle, products, "mm", batch_size=13)
    np.testing.assert_allclose(emb, direct, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    import faiss

    fi = faiss.read_index(str(tmp_path / "emb" / "index.faiss"))
    assert fi.ntotal == 13
    _, nn = fi.search(emb[:4], 1)
    assert nn[:, 0].tolist() == [0, 1, 2, 3]
    assert not list((tmp_path / "emb").glob(".*tmp"))


def test_matryoshka_fp16_and_query_views(handle, products_dir, tmp_path):
    run(handle, products_dir, tmp_path / "full")
    run(handle, products_dir, tmp_path / "half", dim=8, dtype="float16")
    _, full = load_embeddings(tmp_path / "full")
    ids, half = load_embeddings(tmp_path / "half")
    assert half.dtype == np.float16 and half.shape == (13, 8)
    ref = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(half.astype(np.float32), ref, atol=2e-3)
    img = run(handle, products_dir, tmp_path / "img", view="image")
    assert img["view"] == "image" and img["count"] == 13
    with pytest.raises(MmrepError, match="product shard set"):
        run(handle, products_dir, tmp_path / "q", kind="queries")


def test_interrupted_export_resumes_with_every_id_once(handle, products_dir, tmp_path, monkeypatch):
    run(handle, products_dir, tmp_path / "clean")
    real = ex.atomic_write
    calls = {"n": 0}

    class Crash(RuntimeError):
        pass

    def crashing_atomic_write(path, mode="wb"):
        calls["n"] += 1
        if calls["n"] == 3:  # die half-way through writing the third part
            cm = real(path, mode)
            f = cm.__enter__()
            f.write(b"partial bytes")
            cm.__exit__(Crash, Crash("killed"), None)
            raise Crash("killed while writing")
        return real(path, mode)

    monkeypatch.setattr(ex, "atomic_write", crashing_atomic_write)
    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        run(handle, products_dir, out)
    done = sorted(p.name for p in out.glob("part-*.safetensors"))
    assert len(done) == 2 and not (out / INDEX).exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no partial file left anywhere
    mtimes = {n: os.stat(out / n).st_mtime_ns for n in done}
    monkeypatch.setattr(ex, "atomic_write", real)
    index = run(handle, products_dir, out)
    assert {n: os.stat(out / n).st_mtime_ns for n in done} == mtimes  # finished parts were reused
    ids, emb = load_embeddings(out)
    ref_ids, ref = load_embeddings(tmp_path / "clean")
    assert ids == ref_ids and len(set(ids)) == 13 == index["count"]
    np.testing.assert_array_equal(emb, ref)


def test_part_with_wrong_count_is_redone(handle, products_dir, tmp_path):
    out = tmp_path / "emb"
    run(handle, products_dir, out)
    (out / INDEX).unlink()
    victim = out / "part-00001-00000.safetensors"
    ids, emb, meta = read_part(victim)
    ex.write_part(victim, ids[:1], emb[:1], {k: v for k, v in meta.items() if k not in ("ids", "count")})
    index = run(handle, products_dir, out)
    assert index["count"] == 13 and read_part(victim)[1].shape[0] == 3


def test_refuses_to_clobber_and_other_encoders(handle, encoder_dir, products_dir, tmp_path):
    out = tmp_path / "emb"
    run(handle, products_dir, out)
    with pytest.raises(MmrepError, match="--overwrite"):
        run(handle, products_dir, out)
    assert run(handle, products_dir, out, overwrite=True)["count"] == 13
    (out / INDEX).unlink()
    other = open_encoder(config=None, path=encoder_dir)
    other.fingerprint = "someoneelse"
    with pytest.raises(MmrepError, match="another encoder"):
        run(other, products_dir, out)
    with pytest.raises(MmrepError, match="settings"):
        run(handle, products_dir, out, dim=8)
    with pytest.raises(MmrepError, match="part_size=3"):  # other chunking: parts would not line up
        run(handle, products_dir, out, part_size=4)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MmrepError, match="not an mmrep export"):
        run(handle, products_dir, foreign)


def test_duplicate_ids_are_reported(handle, tmp_path):
    shards = tmp_path / "dup"
    write_products(shards, 4, shard_size=2)
    write_products(tmp_path / "dup2", 2, shard_size=2, prefix="extra")
    manifest = json.loads((shards / "manifest.json").read_text())
    os.replace(tmp_path / "dup2" / "extra-000000.tar", shards / "extra-000000.tar")
    manifest["shards"].append({"name": "extra-000000.tar", "count": 2})
    manifest["count"] += 2
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MmrepError, match="more than once"):
        run(handle, shards, tmp_path / "emb")


def test_cli_errors_are_one_line(encoder_dir, products_dir, tmp_path, capsys):
    assert mmrep_main(["export", "--encoder", str(tmp_path / "nope"), "--shards", str(products_dir),
                       "--out", str(tmp_path / "o")]) == 2
    assert mmrep_main(["export", "--encoder", str(encoder_dir), "--shards", str(tmp_path / "missing"),
                       "--out", str(tmp_path / "o")]) == 2
    assert mmrep_main(["export", "--encoder", str(encoder_dir), "--shards", str(products_dir),
                       "--out", str(tmp_path / "o"), "--dim", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("mmrep: error: ") for line in err)
    assert "encoder dir not found" in err[0] and "missing" in err[1] and "exceeds" in err[2]
    assert mmrep_main(["export", "--encoder", str(encoder_dir), "--shards", str(products_dir),
                       "--out", str(tmp_path / "o"), "--no-progress", "--export.part_size=4"]) == 0
    assert json.loads((tmp_path / "o" / INDEX).read_text())["count"] == 13
    assert len(list((tmp_path / "o").glob("part-*"))) == 5  # ceil(5/4) + ceil(5/4) + 1


def test_corrupt_samples_are_skipped_and_counted(handle, tmp_path):
    from mmrep.data.shards import ShardWriter
    from mmrep.records import Product, sample_key

    shards = tmp_path / "bad"
    with ShardWriter(shards, "bad", 10) as w:
        for i in range(5):
            p = Product(id=f"p{i}", title=f"item {i}", images=[b"not an image" if i == 2 else image_bytes(i)])
            w.write({"__key__": sample_key(p.id), **p.to_sample()})
    index = run(handle, shards, tmp_path / "emb")
    assert index["count"] == 4 and index["skipped"] == 1
    assert load_embeddings(tmp_path / "emb")[0] == ["p0", "p1", "p3", "p4"]
    with pytest.raises(MmrepError, match="corrupt sample"):
        run(handle, shards, tmp_path / "strict", strict=True)


def test_img2dataset_folder_without_manifest(handle, tmp_path):
    import webdataset as wds

    d = tmp_path / "i2d"
    d.mkdir()
    for s in range(2):
        with wds.TarWriter(str(d / f"{s:05d}.tar")) as w:
            for i in range(3):
                key = f"{s}{i:04d}"
                w.write({"__key__": key, "jpg": image_bytes(10 * s + i), "txt": f"caption {key}",
                         "json": json.dumps({"key": key, "url": "http://x"}).encode()})
    index = run(handle, d, tmp_path / "emb")
    assert [p["name"] for p in index["parts"]] == ["part-00000-00000.safetensors", "part-00001-00000.safetensors"]
    assert index["count"] == 6


@pytest.mark.slow
def test_killed_export_process_resumes(handle, encoder_dir, tmp_path):
    """SIGKILL the real CLI right after its first part appears; the rerun completes the export."""
    import signal
    import subprocess
    import sys
    import time

    shards = tmp_path / "many"
    write_products(shards, 40, shard_size=40)
    out = tmp_path / "emb"
    cmd = [sys.executable, "-m", "mmrep.cli", "export", "--encoder", str(encoder_dir), "--shards", str(shards),
           "--out", str(out), "--part-size", "1", "--batch-size", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, env=os.environ | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob("part-*.safetensors")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts = list(out.glob("part-*.safetensors"))
    assert parts and not (out / INDEX).exists()
    for p in parts:  # whatever is visible under a final name is complete
        assert read_part(p)[1].shape == (1, 16)
    index = run(handle, shards, out, part_size=1)
    assert not list(out.glob(".*tmp")) and index["count"] == 40
    ids, emb = load_embeddings(out)
    assert ids == [f"item-{i:03d}" for i in range(40)]
    products = list(iter_products(str(shards)))
    np.testing.assert_allclose(emb, embed_records(handle, products, "mm", batch_size=8), atol=1e-5)


def test_overwrite_deletes_only_the_exports_own_files_and_stale_temps_go(handle, products_dir, tmp_path):
    out = tmp_path / "emb"
    run(handle, products_dir, out)
    assert (out / ".mmrep").is_file()
    (out / "NOTES.md").write_text("what this export was for")
    (out / "analysis").mkdir()
    (out / "analysis" / "plot.png").write_bytes(b"png")
    # what a kill during finalize leaves behind (atomic_write's temp names), never visible as results
    (out / f".{INDEX}.abc123.tmp").write_text("{half")
    (out / ".part-00000-00000.safetensors.x1.tmp").write_bytes(b"half")
    assert run(handle, products_dir, out, overwrite=True)["count"] == 13
    assert (out / "NOTES.md").read_text() == "what this export was for"
    assert (out / "analysis" / "plot.png").read_bytes() == b"png"
    assert not list(out.glob(".*.tmp"))
    # an interrupted export (no index.json yet) rerun without --overwrite also drops the stale temps
    (out / INDEX).unlink()
    (out / f".{INDEX}.zzz.tmp").write_text("{half")
    assert run(handle, products_dir, out)["count"] == 13
    assert not list(out.glob(".*.tmp")) and (out / "NOTES.md").is_file()
