import json
import math

import numpy as np
import pandas as pd
import pytest

from mmrep.application.embeddings import save_item_embeddings
from mmrep.errors import MmrepError
from mmrep.evaluation import exchange_rate as er

AUC = {"A": 0.70, "B": 0.71, "C": 0.73, "D": 0.72}
METRICS = {
    v: {"lin": (a - 0.6) * 2, "rev": -(a - 0.6) * 2, "hand": float(i + 1)}
    for i, (v, a) in enumerate(AUC.items())
}
METRICS["A"]["partial"] = 0.1
METRICS["B"]["partial"] = 0.3
SEGMENTS = {v: {"s1": a, "s2": 1 - a, "s3": a + 0.01} for v, a in AUC.items()}


def test_exchange_rates_on_a_hand_made_table():
    r = er.exchange_rates(METRICS, AUC, SEGMENTS, n_boot=500)
    lin, rev, hand = r["metrics"]["lin"], r["metrics"]["rev"], r["metrics"]["hand"]
    assert lin["slope"] == pytest.approx(0.5) and rev["slope"] == pytest.approx(-0.5)
    assert [s["rate"] for s in lin["steps"]] == pytest.approx([0.5, 0.5, 0.5])
    assert [(s["from"], s["to"]) for s in lin["steps"]] == [("A", "B"), ("B", "D"), ("D", "C")]
    assert lin["pearson"] == pytest.approx(1.0) and lin["spearman"] == pytest.approx(1.0)
    assert rev["pearson"] == pytest.approx(-1.0) and rev["positive_step_fraction"] == 0.0
    # hand-computed: dx = [-1.5,-.5,.5,1.5], dy = [-.015,-.005,.015,.005] -> slope .04/5, r = .04/.05
    assert hand["slope"] == pytest.approx(0.008)
    assert hand["pearson"] == pytest.approx(0.8)
    assert hand["spearman"] == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert [s["rate"] for s in hand["steps"]] == pytest.approx([0.01, 0.02, -0.01])
    assert hand["positive_step_fraction"] == pytest.approx(2 / 3)
    lo, hi = hand["pearson_fisher_ci"]
    assert lo == pytest.approx(math.tanh(math.atanh(0.8) - 1.959964)) and hi == pytest.approx(
        math.tanh(math.atanh(0.8) + 1.959964))
    blo, bhi = hand["pearson_bootstrap_ci"]
    assert -1 <= blo <= 0.8 <= bhi <= 1
    # segments: s1, s3 rise with AUC, s2 falls
    assert lin["sign_stability"] == pytest.approx(2 / 3) and rev["sign_stability"] == pytest.approx(1 / 3)
    assert lin["segment_slopes"]["s2"] == pytest.approx(-0.5)
    assert r["metrics"]["partial"]["n_versions"] == 2
    assert r["metrics"]["partial"]["pearson_fisher_ci"] == [None, None] or math.isnan(
        r["metrics"]["partial"]["pearson_fisher_ci"][0])
    assert r["ranking"][:2] == ["lin", "partial"] or r["ranking"][0] == "lin"
    assert r["ranking"][-1] == "rev"
    assert r["ranking"].index("hand") < r["ranking"].index("rev")


def test_equal_metric_values_give_no_rate():
    r = er.exchange_rates({"A": {"m": 1.0}, "B": {"m": 1.0}}, {"A": 0.6, "B": 0.7}, n_boot=50)
    m = r["metrics"]["m"]
    assert m["steps"][0]["rate"] is None and math.isnan(m["slope"]) and math.isnan(m["pearson"])


def test_rejects_fewer_than_two_versions(tmp_path):
    with pytest.raises(MmrepError, match="at least 2 representation versions, got 1"):
        er.exchange_rates({"A": {"m": 1.0}}, {"A": 0.7})
    with pytest.raises(MmrepError, match="at least 2 representation versions, got 1"):
        er.main(["--versions", f"A={tmp_path}", "--log", "x.csv", "--out", str(tmp_path / "o")])
    (tmp_path / "t.json").write_text(json.dumps({"metrics": {"A": {"m": 1}}, "auc": {"A": 0.7}}))
    with pytest.raises(MmrepError, match="at least 2"):
        er.main(["--table", str(tmp_path / "t.json"), "--out", str(tmp_path / "o")])
    with pytest.raises(MmrepError, match="unique"):
        er.parse_versions("A=x,A=y")


@pytest.mark.slow  # matplotlib import + 4 plots: ~4 s on a loaded CPU
def test_cli_from_a_table_writes_json_markdown_and_plots(tmp_path):
    table = {"metrics": METRICS, "auc": AUC, "segment_auc": SEGMENTS}
    (tmp_path / "t.json").write_text(json.dumps(table))
    out = tmp_path / "report"
    assert er.main(["--table", str(tmp_path / "t.json"), "--out", str(out), "--exchange.bootstrap=200"]) == 0

    def no_nan(x):
        raise ValueError(x)

    report = json.loads((out / "report.json").read_text(), parse_constant=no_nan)  # strict JSON
    assert report["ranking"][0] == "lin"
    md = (out / "report.md").read_text()
    for column in ("slope ΔAUC/Δmetric", "step rates", "sign stability", "Pearson r", "Spearman ρ"):
        assert column in md and f"**{column.split(' [')[0]}" in md  # every column is explained
    for name in ("lin", "rev", "hand", "partial"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(MmrepError, match="already exists"):
        er.main(["--table", str(tmp_path / "t.json"), "--out", str(out)])


def test_pair_recall_brute_force():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    ids = [f"i{k}" for k in range(50)]
    pairs = [(f"i{a}", f"i{b}") for a, b in rng.integers(0, 50, (40, 2)) if a != b]
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :5]
    expect = np.mean([int(b[1:]) in top[int(a[1:])] for a, b in pairs])
    assert er.pair_recall(ids, emb, pairs, k=5) == pytest.approx(expect)


def small_world(seed=0, n_users=80, n_items=240, n_cats=6, steps=16):
    """Users with category tastes; items launch over time; clicks follow taste (a compact click world)."""
    rng = np.random.default_rng(seed)
    cats = rng.integers(0, n_cats, n_items)
    launch = rng.integers(0, steps, n_items)
    launch[: n_items // 8] = 0
    prefs = rng.normal(size=(n_users, n_cats)) * 1.5
    rows = []
    for t in range(steps):
        live = np.flatnonzero(launch <= t)
        for u in range(n_users):
            for j in rng.choice(live, size=5, replace=False):
                rows.append((f"u{u}", f"i{j}", t, "exposure", ""))
                if rng.random() < 1 / (1 + np.exp(-(prefs[u, cats[j]] - 1.5))):
                    rows.append((f"u{u}", f"i{j}", t, "click", ""))
    log = pd.DataFrame(rows, columns=["user", "item", "time", "event", "query"])
    return log, [f"i{j}" for j in range(n_items)], cats


@pytest.mark.slow
def test_end_to_end_over_versions_of_differing_quality(tmp_path):
    log, ids, cats = small_world()
    log.to_csv(tmp_path / "interactions.csv", index=False)
    rng = np.random.default_rng(1)
    onehot = np.eye(cats.max() + 1)[cats]
    same_cat = [(ids[a], ids[b]) for a in range(0, len(ids), 3) for b in [rng.choice(np.flatnonzero(cats == cats[a]))]
                if a != b]
    pd.DataFrame(same_cat, columns=["item_a", "item_b"]).to_csv(tmp_path / "pairs.csv", index=False)
    pd.DataFrame({"item": ids, "segment": [f"c{c % 2}" for c in cats]}).to_csv(tmp_path / "seg.csv", index=False)
    specs = []
    for name, noise in (("good", 0.2), ("mid", 1.0), ("bad", 4.0)):
        e = onehot + noise * rng.normal(size=onehot.shape) / np.sqrt(onehot.shape[1])
        save_item_embeddings(tmp_path / name, ids, (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32))
        (tmp_path / name / "metrics.json").write_text(json.dumps({"noise": {"level": noise}}))
        specs.append(f"{name}={tmp_path / name}")
    out = tmp_path / "er"
    assert er.main(["--versions", ",".join(specs), "--log", str(tmp_path / "interactions.csv"),
                    "--pairs", str(tmp_path / "pairs.csv"), "--segments", str(tmp_path / "seg.csv"),
                    "--out", str(out), "--quantize.centroids=6", "--quantize.levels=2", "--quantize.vq_k=5",
                    "--ctr.seeds=1", "--ctr.epochs=3", "--exchange.bootstrap=100"]) == 0
    report = json.loads((out / "report.json").read_text())
    recall = report["metrics"]["pair_recall@10"]
    assert recall["values"]["good"] > recall["values"]["mid"] > recall["values"]["bad"]
    assert report["auc"]["good"] > report["auc"]["bad"]
    assert recall["slope"] > 0 and recall["pearson"] > 0
    assert report["metrics"]["noise.level"]["slope"] < 0  # more noise, lower AUC
    assert recall["sign_stability"] is not None
