"""Export outputs: Parquet equals the safetensors parts, faiss IVF/HNSW saved with a tuned search knob, files
follow the umask (group-readable), quantize codes as Parquet."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from mmrep.cli import main as mmrep_main
from mmrep.export import embeddings as ex
from mmrep.inference import open_encoder
from mmrep.export.faiss_index import build_index
from mmrep.export.format import load_embeddings
from mmrep.export.parquet import read_embeddings_parquet


@pytest.fixture(scope="module")
def handle(encoder_dir):
    return open_encoder(encoder_dir)


def test_parquet_embeddings_read_back_equal_the_safetensors(handle, products_dir, tmp_path):
    import pyarrow.parquet as pq

    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        index = ex.export(ex.ExportConfig(shards=str(products_dir), out=str(out), part_size=3, batch_size=4,
                                          progress=False, dtype=dtype, format="parquet"), handle)
        assert index["parquet"] == "embeddings.parquet"
        ids, emb = load_embeddings(out)
        table = pq.read_table(out / "embeddings.parquet")  # plain pyarrow, as a feature store would
        assert table.column("id").to_pylist() == ids
        got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
        assert got.dtype == np.dtype(dtype) and np.array_equal(got, emb)
        assert read_embeddings_parquet(out / "embeddings.parquet")[0] == ids


def test_outputs_follow_the_umask(handle, products_dir, tmp_path):
    old = os.umask(0o027)  # a team umask: group may read, others nothing
    try:
        ex.export(ex.ExportConfig(shards=str(products_dir), out=str(tmp_path / "emb"), part_size=5, progress=False,
                                  faiss="flat", format="parquet"), handle)
    finally:
        os.umask(old)
    paths = [tmp_path / "emb", *(tmp_path / "emb").rglob("*")]
    assert len(paths) > 3
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o750 if p.is_dir() else 0o640), (p, oct(mode))


def clustered(n: int = 4000, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, d))
    x = centers[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind,param", [("ivf", "nprobe"), ("hnsw", "efSearch")])
def test_index_saved_with_a_search_setting_that_reaches_the_target_recall(tmp_path, kind, param):
    import faiss

    data = clustered(4300)
    xb, xq = data[:4000], data[4000:]  # held-out queries from the same distribution, not the tuning sample
    index, report = build_index(xb, kind, target_recall=0.95)
    assert report.param == param and report.recall_at_10 >= 0.95
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    loaded = faiss.read_index(str(tmp_path / "i.faiss"))
    saved = loaded.nprobe if kind == "ivf" else loaded.hnsw.efSearch
    assert saved == report.value  # the file itself carries the tuned knob
    exact = faiss.IndexFlatIP(xb.shape[1])
    exact.add(xb)
    truth = exact.search(xq, 10)[1]
    found = loaded.search(xq, 10)[1]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.9
    if kind == "ivf":
        loaded.nprobe = 1
        one = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(loaded.search(xq, 10)[1], truth)])
        assert one < recall  # what the default would have given


def test_export_cli_prints_recall_and_records_it(encoder_dir, products_dir, tmp_path, capsys):
    assert mmrep_main(["export", "--encoder", str(encoder_dir), "--shards", str(products_dir), "--out",
                       str(tmp_path / "e"), "--faiss", "hnsw", "--no-progress"]) == 0
    assert "faiss hnsw efSearch=" in capsys.readouterr().out
    import json

    index = json.loads((tmp_path / "e" / "index.json").read_text())
    assert index["faiss_type"] == "hnsw" and index["faiss_search"]["recall_at_10"] >= 0.95


def test_quantize_codes_as_parquet(tmp_path):
    import pyarrow.parquet as pq
    from safetensors.numpy import load_file, save_file

    x = clustered(300, 16)
    save_file({"embeddings": x}, str(tmp_path / "x.safetensors"))
    (tmp_path / "ids.txt").write_text("".join(f"item{i}\n" for i in range(len(x))))
    assert mmrep_main(["quantize", "--emb", str(tmp_path / "x.safetensors"), "--out", str(tmp_path / "q"),
                       "--levels", "2", "--centroids", "8", "--vq-k", "3", "--format", "parquet"]) == 0
    table = pq.read_table(tmp_path / "q" / "codes.parquet")
    codes = load_file(str(tmp_path / "q" / "codes.safetensors"))
    assert table.column("id").to_pylist() == (tmp_path / "q" / "ids.txt").read_text().split()
    assert np.array_equal(np.stack(table.column("rq").to_numpy(zero_copy_only=False)), codes["rq"])
    assert np.array_equal(np.stack(table.column("vq").to_numpy(zero_copy_only=False)), codes["vq"])
