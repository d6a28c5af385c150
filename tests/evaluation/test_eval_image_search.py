"""Chunked image search equals a full sort; recall vs nested gallery sizes; the CLI on files and encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmrep.cli import main as mmrep_main
from mmrep.evaluation.image_search import SearchConfig, chunked_search, default_sizes, evaluate_embeddings
from mmrep.export.embeddings import save_embeddings


def brute_topk(q: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    s = q @ g.T
    return np.array([sorted(range(g.shape[0]), key=lambda j: (-row[j], j))[:k] for row in s.tolist()])


@pytest.mark.parametrize("gchunk,qchunk", [(7, 3), (64, 100), (1000, 5)])
def test_chunked_search_is_exact_with_ties(gchunk, qchunk):
    rng = np.random.default_rng(0)
    g = rng.integers(-1, 2, size=(150, 3)).astype(np.float32)  # integer vectors: exact scores, many ties
    q = rng.integers(-1, 2, size=(12, 3)).astype(np.float32)
    res = chunked_search(q, g, SearchConfig(k=20, query_chunk=qchunk, gallery_chunk=gchunk), sizes=(30, 100))
    np.testing.assert_array_equal(res.indices, brute_topk(q, g, 20))
    for n in (30, 100):  # the running top-k after n rows is the top-k of that prefix
        np.testing.assert_array_equal(res.snapshots[n], brute_topk(q, g[:n], 20))
    # streamed parts give the same answer
    parts = (g[s : s + 40] for s in range(0, 150, 40))
    np.testing.assert_array_equal(chunked_search(q, parts, SearchConfig(k=20, gallery_chunk=gchunk)).indices,
                                  res.indices)


@pytest.mark.parametrize("k", [1, 5, 30])
def test_faiss_kernel_ties_follow_the_ranking_rule(k):
    """faiss picks arbitrarily among equal scores; the search must still return lower indices first."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        g = rng.integers(-1, 2, size=(400, 2)).astype(np.float32)  # 9 distinct vectors: ties everywhere
        q = rng.integers(-1, 2, size=(40, 2)).astype(np.float32)  # >= 20 queries: faiss's BLAS path
        for gchunk in (50, 400):
            res = chunked_search(q, g, SearchConfig(k=k, gallery_chunk=gchunk))
            np.testing.assert_array_equal(res.indices, brute_topk(q, g, k))
            np.testing.assert_array_equal(res.scores, np.take_along_axis(q @ g.T, res.indices, 1))


def test_recall_falls_with_distractors():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(50, 16)).astype(np.float32)
    distractors = rng.normal(size=(2000, 16)).astype(np.float32)
    queries = items + 0.9 * rng.normal(size=items.shape).astype(np.float32)
    positives = [[i] for i in range(50)]
    rep = evaluate_embeddings(queries, np.concatenate([items, distractors]), positives,
                              SearchConfig(gallery_chunk=300), sizes=[50, 500, 2050], ks=[1, 10])
    r1 = [row["R@1"] for row in rep.rows]
    assert [row["gallery"] for row in rep.rows] == [50, 500, 2050]
    assert r1[0] >= r1[1] >= r1[2] and r1[0] > r1[2]
    brute = brute_topk(queries, np.concatenate([items, distractors]), 1)[:, 0]
    assert rep.rows[-1]["R@1"] == pytest.approx(np.mean(brute == np.arange(50)))
    assert "| 2,050 |" in rep.markdown()
    assert default_sizes(2_500_000, 300) == [300, 1000, 10000, 100000, 1000000, 2500000]


@pytest.fixture()
def emb_files(tmp_path):
    rng = np.random.default_rng(2)
    g = rng.normal(size=(300, 8)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = g[:40] + 0.3 * rng.normal(size=(40, 8)).astype(np.float32)
    gids = [f"i{k}" for k in range(300)]
    save_embeddings(tmp_path / "gallery", gids[:200], g[:200], part_size=64)
    save_embeddings(tmp_path / "distract", gids[200:], g[200:], part_size=64)
    save_embeddings(tmp_path / "queries", [f"q{k}" for k in range(40)], q, kind="queries")
    (tmp_path / "gt.json").write_text(json.dumps({f"q{k}": [f"i{k}"] for k in range(40)}))
    return tmp_path, q, g


def test_cli_on_embedding_files(emb_files, capsys):
    d, q, g = emb_files
    assert mmrep_main(["eval", "image-search", "--queries-emb", str(d / "queries"), "--gallery-emb", str(d / "gallery"),
                       "--distractors-emb", str(d / "distract"), "--gt", str(d / "gt.json"), "--sizes", "40,300",
                       "--ks", "1,10", "--out", str(d / "rep")]) == 0
    rep = json.loads((d / "rep" / "image_search.json").read_text())
    assert [r["gallery"] for r in rep["rows"]] == [40, 300]
    brute = brute_topk(q, g, 10)  # relevant items i0..i39 are the first 40 gallery rows here too
    assert rep["rows"][1]["R@10"] == pytest.approx(np.mean([k in brute[k] for k in range(40)]))
    assert (d / "rep" / "image_search.md").read_text().startswith("Image search: 40 queries")


def test_cli_errors_are_one_line(emb_files, encoder_dir, products_dir, tmp_path, capsys):
    d, _, _ = emb_files
    save_embeddings(d / "wide", [f"i{k}" for k in range(10)], np.ones((10, 12), np.float32))
    base = ["eval", "image-search", "--queries-emb", str(d / "queries"), "--gt", str(d / "gt.json")]
    assert mmrep_main([*base, "--gallery-emb", str(d / "nope"), "--out", str(tmp_path / "a")]) == 2
    assert mmrep_main([*base, "--gallery-emb", str(d / "wide"), "--out", str(tmp_path / "b")]) == 2
    (d / "empty").mkdir()
    assert mmrep_main([*base, "--gallery-emb", str(d / "empty"), "--out", str(tmp_path / "c")]) == 2
    # an encoder (16-d) against stored 8-d gallery embeddings
    assert mmrep_main(["eval", "image-search", "--encoder", str(encoder_dir), "--items", str(products_dir),
                       "--gallery-emb", str(d / "gallery"), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(e.startswith("mmrep: error: ") for e in err)
    assert "not found" in err[0] and "12-d" in err[1] and "index.json" in err[2]
    assert "16-d embeddings" in err[3] and "8-d" in err[3]
    # a truncated part is named before any search starts
    import shutil

    shutil.copytree(d / "gallery", d / "cut")
    part = sorted((d / "cut").glob("part-*.safetensors"))[-1]
    part.write_bytes(part.read_bytes()[:-40])
    assert mmrep_main([*base, "--gallery-emb", str(d / "cut"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and part.name in err[0] and "truncated" in err[0]


@pytest.mark.parametrize("query_set", ["augment", "crop", "heldout"])
def test_cli_with_encoder(query_set, encoder_dir, products_dir, tmp_path):
    assert mmrep_main(["eval", "image-search", "--encoder", str(encoder_dir), "--items", str(products_dir),
                       "--query-set", query_set, "--ks", "1,5", "--out", str(tmp_path / "r")]) == 0
    rep = json.loads((tmp_path / "r" / "image_search.json").read_text())
    n = 4 if query_set == "heldout" else 13  # items with >= 2 images: 0, 4, 8, 12
    assert rep["queries"] == n and rep["rows"][-1]["gallery"] == n
    assert 0.0 <= rep["rows"][-1]["R@1"] <= rep["rows"][-1]["R@5"] <= 1.0


def test_encoder_queries_against_exported_gallery(encoder_dir, products_dir, tmp_path):
    base = ["eval", "image-search", "--encoder", str(encoder_dir), "--items", str(products_dir), "--ks", "1,5"]
    assert mmrep_main(["export", "--encoder", str(encoder_dir), "--shards", str(products_dir),
                       "--out", str(tmp_path / "emb"), "--no-progress"]) == 0
    assert mmrep_main([*base, "--gallery-emb", str(tmp_path / "emb"), "--out", str(tmp_path / "a")]) == 0
    assert mmrep_main([*base, "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "image_search.json").read_text())["rows"]
    b = json.loads((tmp_path / "b" / "image_search.json").read_text())["rows"]
    assert a == b  # the exported gallery and the in-process one rank identically


def test_export_gallery_streams_ground_truth_first_in_one_pass(tmp_path):
    from mmrep.evaluation.image_search import export_gallery

    rng = np.random.default_rng(7)
    g = rng.normal(size=(230, 8)).astype(np.float32)
    save_embeddings(tmp_path / "gallery", [f"i{k}" for k in range(200)], g[:200], part_size=64)
    # distractors stored as float16, repeating relevant item i5 (searched once) and holding relevant i210
    d_ids = ["i5"] + [f"i{k}" for k in range(201, 230)]
    d_emb = np.concatenate([g[5:6], g[201:230]]).astype(np.float16)
    save_embeddings(tmp_path / "distract", d_ids, d_emb, part_size=16)
    relevant = {"i150", "i5", "i70", "i210", "i999"}  # i999 is absent
    plan = export_gallery([tmp_path / "gallery", tmp_path / "distract"], relevant)
    assert plan.relevant_ids == ["i5", "i70", "i150", "i210"] and plan.total == 229 and plan.dim == 8
    want_ids = plan.relevant_ids + [f"i{k}" for k in range(200) if f"i{k}" not in relevant] + \
        [i for i in d_ids if i not in relevant]
    rows = {f"i{k}": g[k] for k in range(200)} | {i: e.astype(np.float32) for i, e in zip(d_ids[1:], d_emb[1:])}
    want = np.stack([rows[i] for i in want_ids])
    got = np.concatenate([c.copy() for c in plan.chunks()])  # copies: a streamed chunk's buffer is reused
    np.testing.assert_array_equal(got, want)
    q = rng.normal(size=(12, 8)).astype(np.float32)
    res = chunked_search(q, plan.chunks(), SearchConfig(k=20, gallery_chunk=50), sizes=[4, 100])
    np.testing.assert_array_equal(res.indices, brute_topk(q, want, 20))
    np.testing.assert_array_equal(res.snapshots[100], brute_topk(q, want[:100], 20))
