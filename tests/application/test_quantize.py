import json

import numpy as np
import pandas as pd
import pytest

from mmrep.application import quantize as q
from mmrep.application.cli import quantize_main
from mmrep.application.embeddings import load_item_embeddings, save_item_embeddings
from mmrep.errors import MmrepError


def clustered(n=3000, d=24, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(30, d))
    x = centers[rng.integers(0, 30, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


CFG = dict(levels=3, centroids=16, vq_k=5, eval_queries=100, eval_k=5)


def test_codes_are_deterministic_for_a_seed():
    x = clustered()
    a = q.quantize(x, q.QuantizeConfig(seed=3, **CFG))
    b = q.quantize(x, q.QuantizeConfig(seed=3, **CFG))
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.codebooks, b.codebooks)
    np.testing.assert_array_equal(a.vq, b.vq)
    c = q.quantize(x, q.QuantizeConfig(seed=4, **CFG))
    assert not np.array_equal(a.codebooks, c.codebooks)  # the seed is really used


@pytest.mark.parametrize("method", ["kmeans", "progressive", "faiss-rq"])
def test_encode_only_reproduces_training_codes(tmp_path, method):
    x = clustered()
    cfg = q.QuantizeConfig(method=method, **CFG)
    trained = q.quantize(x, cfg)
    q.save_codebooks(tmp_path / "cb.safetensors", trained.codebooks, cfg)
    books = q.load_codebooks(tmp_path / "cb.safetensors")
    again = q.quantize(x, cfg, codebooks=books)
    np.testing.assert_array_equal(trained.codes, again.codes)
    # chunking does not change codes either
    codes, _ = q.encode_rq(x, books, chunk=7)
    np.testing.assert_array_equal(trained.codes, codes)
    assert again.report["method"] == "encode-only"


def test_rq_reduces_error_level_by_level_and_uses_codebooks():
    x = clustered()
    r = q.quantize(x, q.QuantizeConfig(levels=3, centroids=12, vq_k=0, eval_queries=0))  # K not a power of 2
    errs = []
    for level in range(1, 4):
        rec = q.reconstruct(r.codes[:, :level], r.codebooks[:level])
        errs.append(float(((x - rec) ** 2).sum(1).mean()))
    assert errs[0] > errs[1] > errs[2]
    assert r.report["reconstruction"]["mse"] == pytest.approx(errs[2], rel=1e-4)
    assert r.codes.max() < 12 and r.codes.dtype == np.int32
    assert all(u["used_fraction"] > 0.5 for u in r.report["utilisation"])


def test_collision_stats_exact_on_hand_made_codes():
    codes = np.array([[0, 1], [0, 1], [0, 1], [2, 3], [2, 4], [5, 5], [2, 3]])
    s = q.collision_stats(codes)
    # buckets: (0,1)x3, (2,3)x2, (2,4)x1, (5,5)x1 -> 5 of 7 items share a full code
    assert s["distinct_codes"] == 4
    assert s["collision_rate"] == pytest.approx(5 / 7)
    assert s["largest_bucket"] == 3
    assert s["mean_bucket_size_per_item"] == pytest.approx((3 * 3 + 2 * 2 + 1 + 1) / 7)
    assert q.collision_stats(codes[:, :1])["collision_rate"] == pytest.approx(6 / 7)
    np.testing.assert_array_equal(q.dedup_digits(codes), [0, 1, 2, 0, 0, 0, 1])
    assert q.collision_stats(np.c_[codes, q.dedup_digits(codes)])["collision_rate"] == 0.0


def test_utilisation_hand_made():
    codes = np.array([[0, 0], [1, 0], [0, 0], [1, 0]])
    u = q.utilisation(codes, 4)
    assert u[0]["used_fraction"] == 0.5 and u[0]["perplexity"] == pytest.approx(2.0)
    assert u[1]["used_fraction"] == 0.25 and u[1]["perplexity"] == pytest.approx(1.0)


def test_vq_neighbours_match_brute_force_and_exclude_self():
    x = clustered(n=300)
    x[10] = x[11]  # exact duplicates: the item itself may not come first
    nb = q.vq_neighbours(x, 6, index="flat")
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    for i in range(len(x)):
        assert i not in nb[i]
        top = np.sort(sims[i])[::-1][:6]
        np.testing.assert_allclose(np.sort(sims[i, nb[i]])[::-1], top, rtol=1e-5, atol=1e-6)
    assert 11 in nb[10] and 10 in nb[11]
    small = q.vq_neighbours(x[:4], 6)  # fewer items than k: padded with -1
    assert (small[:, 3:] == -1).all() and (small[:, :3] >= 0).all()


def test_retrieval_recall_against_brute_force():
    x = clustered(n=400)
    r = q.quantize(x, q.QuantizeConfig(levels=2, centroids=8, vq_k=0, eval_queries=0))
    queries = np.arange(0, 400, 7)
    rep = q.retrieval_recall(x, r.codes, r.codebooks, queries, k=5, chunk=64)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    truth = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    for p in (1, 2):
        expect = np.mean([(r.codes[truth[i], :p] == r.codes[i, :p]).all(1).mean() for i in queries])
        assert rep["prefix"][p - 1]["recall"] == pytest.approx(expect)
    # reconstruction ranking, brute force: order all other items by reconstruction score and give
    # each group of identical codes its share of the k slots (ties broken at random, in expectation)
    rec = q.reconstruct(r.codes, r.codebooks)
    expect = []
    for i in queries:
        groups = {}
        for j in range(len(x)):
            if j != i:
                groups.setdefault(tuple(r.codes[j]), []).append(j)
        ranked = sorted(groups.values(), key=lambda g: -float(x[i] @ rec[g[0]]))
        prob, used = {}, 0
        for g in ranked:
            for j in g:
                prob[j] = min(max((5 - used) / len(g), 0.0), 1.0)
            used += len(g)
        expect.append(np.mean([prob[j] for j in truth[i]]))
    assert rep["reconstruction_recall"] == pytest.approx(np.mean(expect))


def test_config_validation():
    with pytest.raises(MmrepError, match="power of two"):
        q.QuantizeConfig(method="faiss-rq", centroids=12)
    with pytest.raises(MmrepError, match="quantize.levels"):
        q.QuantizeConfig(levels=0)
    with pytest.raises(MmrepError, match="centroids"):
        q.quantize(clustered(n=10), q.QuantizeConfig(centroids=16))


def test_cli_writes_joinable_codes_and_encode_only_matches(tmp_path, capsys):
    x = clustered(n=500)
    ids = [f"item-{i}" for i in range(len(x))]
    save_item_embeddings(tmp_path / "emb", ids, x)
    out = tmp_path / "codes"
    args = ["--emb", str(tmp_path / "emb"), "--out", str(out), "--levels", "2", "--centroids", "8",
            "--vq-k", "4", "--dedup", "--seed", "1"]
    assert quantize_main(args) == 0
    table = pd.read_csv(out / "codes.csv", dtype={"item_id": str})
    assert list(table.columns) == ["item_id", "rq_0", "rq_1", "rq_dedup"] + [f"vq_{j}" for j in range(4)]
    assert table["item_id"].tolist() == ids
    assert not table.duplicated(["rq_0", "rq_1", "rq_dedup"]).any()
    assert set(table["vq_0"]) <= set(ids)
    report = json.loads((out / "report.json").read_text())
    assert report["levels"] == 2 and 0 <= report["collisions"]["collision_rate"] <= 1
    assert (out / "config.yaml").is_file()
    with pytest.raises(MmrepError, match="already exists"):
        quantize_main(args)
    # encode-only on the saved codebooks gives the training codes
    out2 = tmp_path / "codes2"
    assert quantize_main(["--emb", str(tmp_path / "emb"), "--out", str(out2), "--codebooks", str(out),
                          "--encode-only", "--vq-k", "0"]) == 0
    t2 = pd.read_csv(out2 / "codes.csv")
    np.testing.assert_array_equal(t2[["rq_0", "rq_1"]].to_numpy(), table[["rq_0", "rq_1"]].to_numpy())
    with pytest.raises(MmrepError, match="encode-only"):
        quantize_main(["--emb", str(tmp_path / "emb"), "--out", str(tmp_path / "x"), "--encode-only"])


def test_bad_inputs_raise_user_errors(tmp_path):
    with pytest.raises(MmrepError, match="not found"):
        load_item_embeddings(tmp_path / "nope")
    (tmp_path / "e").mkdir()
    np.save(tmp_path / "e" / "embeddings.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(MmrepError, match="ids.txt"):
        load_item_embeddings(tmp_path / "e")
    (tmp_path / "e" / "ids.txt").write_text("a\nb\n")
    with pytest.raises(MmrepError, match="2 ids but the embeddings have 3 rows"):
        load_item_embeddings(tmp_path / "e")
    (tmp_path / "cb.safetensors").write_bytes(b"garbage")
    with pytest.raises(MmrepError, match="not a codebooks file"):
        q.load_codebooks(tmp_path / "cb.safetensors")


def test_non_finite_rows_are_skipped_and_counted(tmp_path, capsys):
    x = clustered(n=200).astype(np.float32)
    x[[5, 17, 100]] = np.nan
    x[50, 3] = np.inf
    ids = [f"item-{i}" for i in range(len(x))]
    save_item_embeddings(tmp_path / "emb", ids, x)
    args = ["--emb", str(tmp_path / "emb"), "--levels", "2", "--centroids", "8", "--vq-k", "0"]
    assert quantize_main(args + ["--out", str(tmp_path / "codes")]) == 0
    out = capsys.readouterr().out
    assert f"quantize {tmp_path / 'emb'}: skipped 4 samples: 4 corrupt (non_finite: 4)" in out.splitlines()
    table = pd.read_csv(tmp_path / "codes" / "codes.csv", dtype={"item_id": str})
    assert len(table) == 196 and not {"item-5", "item-17", "item-50", "item-100"} & set(table["item_id"])
    with pytest.raises(MmrepError, match="item 'item-5' has a non-finite embedding"):
        quantize_main(args + ["--out", str(tmp_path / "strict"), "--strict"])
