import json

import numpy as np
import pandas as pd
import pytest

from click_world import make_world, noisy_embeddings
from mmrep.application import ctr
from mmrep.application.cli import ctr_main, quantize_main
from mmrep.application.embeddings import save_item_embeddings
from mmrep.application.quantize import QuantizeConfig, quantize
from mmrep.errors import MmrepError

LOG = [
    ("u1", "a", 1, "exposure"), ("u1", "a", 2, "click"),  # clicked after the exposure
    ("u1", "b", 1, "exposure"),  # not clicked
    ("u1", "c", 3, "click"),  # a click without exposure: history only
    ("u1", "a", 5, "exposure"),  # re-exposed, not clicked this time
    ("u1", "b", 6, "exposure"), ("u1", "b", 6, "click"),  # same-time click (the synth world's rule)
    ("u2", "c", 4, "exposure"), ("u2", "c", 4, "purchase"),
    ("u2", "a", 7, "exposure"),
]


def hand_log():
    return pd.DataFrame([(u, i, t, e, "") for u, i, t, e in LOG], columns=["user", "item", "time", "event", "query"])


def test_impressions_labels_histories_and_time_split():
    items = ctr.ItemFeatures(ids=["a", "b"], codes=np.array([[0, 1], [1, 0]]))
    ds = ctr.build_dataset(hand_log(), items, ctr.CtrConfig(history=3, split_time=5))
    tr, te = ds.train, ds.test
    assert [(u, i, t, y) for u, i, t, y in zip(tr.user_name, tr.item_name, tr.time, tr.label)] == [
        ("u1", "a", 1, 1.0), ("u1", "b", 1, 0.0), ("u2", "c", 4, 1.0)]
    assert [(u, i, t, y) for u, i, t, y in zip(te.user_name, te.item_name, te.time, te.label)] == [
        ("u1", "a", 5, 0.0), ("u1", "b", 6, 1.0), ("u2", "a", 7, 0.0)]
    # histories: clicks strictly before the impression, most recent last, left-padded
    assert not tr.hist_mask[0].any()
    np.testing.assert_array_equal(te.hist_mask[0], [False, True, True])
    feat = {"a": 0, "b": 1, "c": 2}  # c has no features: the extra row
    np.testing.assert_array_equal(te.hist_feat[0, 1:], [feat["a"], feat["c"]])
    np.testing.assert_array_equal(te.hist_feat[1, 1:], [feat["a"], feat["c"]])  # b's own click at 6 is not history
    np.testing.assert_array_equal(te.hist_mask[2], [False, False, True])
    assert te.hist_feat[2, 2] == feat["c"] and te.item_feat[2] == feat["a"]
    assert (te.item_id > 0).all()  # every test item was seen in training
    assert ds.stats["items_without_features"] == 1


def test_unseen_items_share_the_unseen_id_row():
    log = hand_log()
    log.loc[len(log)] = ("u1", "z", 9, "exposure", "")
    ds = ctr.build_dataset(log, ctr.ItemFeatures(ids=[]), ctr.CtrConfig(split_time=5))
    assert ds.test.item_id[ds.test.item_name == "z"][0] == 0
    assert ds.stats["test_cold_item_fraction"] == pytest.approx(1 / 4)


def test_log_and_feature_errors(tmp_path):
    with pytest.raises(MmrepError, match="unknown CTR feature"):
        ctr.parse_features("codes+magic")
    assert ctr.parse_features("codes+att") == {"id", "codes", "att"}
    bad = hand_log()
    bad.loc[0, "event"] = "like"
    with pytest.raises(MmrepError, match="unknown event"):
        ctr.build_dataset(bad, ctr.ItemFeatures(ids=[]), ctr.CtrConfig())
    (tmp_path / "log.csv").write_text("user,item\nu,i\n")
    with pytest.raises(MmrepError, match="lacks column"):
        ctr.read_log(tmp_path / "log.csv")
    ds = ctr.build_dataset(hand_log(), ctr.ItemFeatures(ids=["a"]), ctr.CtrConfig(split_time=5))
    with pytest.raises(MmrepError, match="need item codes"):
        ctr.train_eval(ds, ctr.ItemFeatures(ids=["a"]), "codes", ctr.CtrConfig(epochs=1), 0)
    with pytest.raises(MmrepError, match="ctr.test_fraction"):
        ctr.CtrConfig(test_fraction=1.5)


@pytest.mark.slow
def test_code_features_beat_id_only_on_a_latent_factor_world(world):
    """Clicks follow user x item-factor affinity and half the test items are new: codes must help."""
    emb = noisy_embeddings(world, noise=0.3)
    codes = quantize(emb, QuantizeConfig(levels=3, centroids=16, vq_k=10, eval_queries=0))
    items = ctr.ItemFeatures(ids=world["ids"], emb=emb, codes=codes.codes, vq=codes.vq)
    cfg = ctr.CtrConfig(seeds=1, epochs=4)
    ds = ctr.build_dataset(world["log"], items, cfg)
    assert ds.stats["test_cold_item_fraction"] > 0.3
    id_only = ctr.train_eval(ds, items, "id", cfg, seed=0)
    with_codes = ctr.train_eval(ds, items, "codes", cfg, seed=0)
    assert with_codes["auc"] > id_only["auc"] + 0.03, (id_only, with_codes)
    assert with_codes["gauc"] > id_only["gauc"]
    assert with_codes["logloss"] < id_only["logloss"]
    again = ctr.train_eval(ds, items, "codes", cfg, seed=0)
    assert again["auc"] == with_codes["auc"]  # a fixed seed reproduces the run


@pytest.mark.slow
def test_ctr_cli_with_history_modules_and_error_bars(tmp_path):
    w = make_world(seed=1, n_users=60, n_items=200, steps=16)
    w["log"].to_csv(tmp_path / "interactions.csv", index=False)
    save_item_embeddings(tmp_path / "emb", w["ids"], noisy_embeddings(w, 0.3))
    assert quantize_main(["--emb", str(tmp_path / "emb"), "--out", str(tmp_path / "codes"), "--centroids", "8",
                          "--vq-k", "5"]) == 0
    out = tmp_path / "ctr"
    assert ctr_main(["--log", str(tmp_path / "interactions.csv"), "--emb", str(tmp_path / "emb"),
                     "--codes", str(tmp_path / "codes"), "--features", "id,emb+att,codes+att+prefix",
                     "--seeds", "2", "--epochs", "1", "--out", str(out)]) == 0
    report = json.loads((out / "ctr.json").read_text())
    assert set(report["results"]) == {"id", "emb+att", "codes+att+prefix"}
    for r in report["results"].values():
        runs = [x["auc"] for x in r["runs"]]
        assert len(runs) == 2
        assert r["summary"]["auc"]["mean"] == pytest.approx(np.mean(runs))
        assert r["summary"]["auc"]["std"] == pytest.approx(np.std(runs, ddof=1))
        assert 0.0 <= r["summary"]["auc"]["mean"] <= 1.0
    md = (out / "ctr.md").read_text()
    assert "| codes+att+prefix |" in md and "GAUC" in md
