import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mmrep import cli
from mmrep.data.shards import read_manifest
from mmrep.errors import MmrepError
from mmrep.synth.catalog import CATALOG, COLOURS, MATERIALS, PATTERNS, STYLES
from mmrep.synth.cli import main as synth_main, resolve_config
from mmrep.synth.text import ATTRIBUTE_KEYS
from mmrep.synth.records import WorldRecords
from mmrep.synth.world import WorldConfig, generate_world
from synth_helpers import SMALL, SPLITS, read_products, read_triplets


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    a = generate_world(WorldConfig(seed=3, **SMALL), tmp_path / "a")
    generate_world(WorldConfig(seed=3, **SMALL), tmp_path / "b", workers=2)  # worker processes: same bytes
    generate_world(WorldConfig(seed=4, **SMALL), tmp_path / "c")
    ha, hb, hc = (_hashes(tmp_path / x) for x in "abc")
    assert ha == hb
    assert set(ha) == set(hc)
    for name in ("items/train/train-000000.tar", "triplets/train/train-000000.tar", "interactions.csv",
                 "pairs.csv", "item_factors.csv", "users.csv"):
        assert ha[name] != hc[name], name
    assert a["counts"]["items"]["train"] + a["counts"]["items"]["val"] + a["counts"]["items"]["test"] == 120


def test_no_item_leakage_between_splits(tiny_world):
    world, summary = tiny_world
    ids = {s: {p.id for p in read_products(world, s)} for s in SPLITS}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert sum(len(v) for v in ids.values()) == summary["config"]["n_items"]
    assert min(len(v) for v in ids.values()) >= 30
    factors = pd.read_csv(world / "item_factors.csv", keep_default_na=False)
    for s in SPLITS:
        assert set(factors.item[factors.split == s]) == ids[s]
        triplets = read_triplets(world, s)
        assert len(triplets) == summary["counts"]["triplets"][s] > 0
        for t in triplets:
            assert t.positive.id in ids[s] and t.positive.split == s
            assert all(n.id in ids[s] for n in t.negatives)


def test_triplets_positive_is_relevant_and_negatives_are_distinct(tiny_world):
    world, summary = tiny_world
    cfg = summary["config"]
    factors = pd.read_csv(world / "item_factors.csv", keep_default_na=False).set_index("item")
    modes, same_cat, overlap_wins = Counter(), [], []
    for s in SPLITS:
        catalogue = {p.id: p for p in read_products(world, s)}
        for t in read_triplets(world, s):
            q = t.query
            assert t.positive.category == q.category and q.item_ids == [t.positive.id]
            assert t.positive == catalogue[t.positive.id]  # the triplet carries the catalogue record
            neg_ids = [n.id for n in t.negatives]
            assert len(neg_ids) == cfg["n_negatives"] == len(set(neg_ids)) and t.positive.id not in neg_ids
            pos = factors.loc[t.positive.id]
            for n in neg_ids:
                if factors.loc[n, "category"] == pos.category:
                    same_cat.append(n)
                    # a same-category negative has the wrong colour or pattern
                    assert (factors.loc[n, "colour"], factors.loc[n, "pattern"]) != (pos.colour, pos.pattern)
            mode = "text+image" if q.has_text and q.has_image else "text" if q.has_text else "image"
            modes[mode] += 1
            if q.has_text:
                words = set(q.text.split())
                pos_overlap = len(words & set(t.positive.title.lower().split()))
                for n in t.negatives:
                    neg_overlap = len(words & set(n.title.lower().split()))
                    overlap_wins.append(1.0 if pos_overlap > neg_overlap else 0.5 if pos_overlap == neg_overlap else 0.0)
            assert q.has_text or q.has_image
            if q.has_image:  # a user photo: a view the catalogue does not contain
                assert q.images[0] not in t.positive.images
                assert Image.open(io.BytesIO(q.images[0])).size == (cfg["image_size"],) * 2
    assert modes == summary["counts"]["queries"] and min(modes.values()) > 0
    # query words point at the positive more than at the negatives, but not always (learnable, not trivial)
    assert 0.6 < np.mean(overlap_wins) < 0.95, np.mean(overlap_wins)
    n_neg = sum(summary["counts"]["triplets"].values()) * cfg["n_negatives"]
    assert len(same_cat) / n_neg > 0.6  # mostly hard negatives


def test_missing_fields_follow_the_rates_and_are_absent_not_faked(tiny_world):
    world, summary = tiny_world
    cfg = summary["config"]
    products = [p for s in SPLITS for p in read_products(world, s)]
    n = len(products)
    for key in ATTRIBUTE_KEYS:
        rate = sum(key not in p.attributes for p in products) / n
        assert abs(rate - cfg["missing_attribute_rate"]) < 0.08, key
    assert abs(sum(not p.description for p in products) / n - cfg["missing_description_rate"]) < 0.08
    assert 0 < sum(not p.images for p in products) / n < 0.08
    assert 0 < sum(not p.title for p in products) / n < 0.08
    for p in products:
        assert p.title or p.images  # never an item with neither
        assert all(v.strip() and v.lower() not in ("unknown", "none", "nan", "n/a") for v in p.attributes.values())
        assert p.category and p.labels["category"] == p.category[1]
    assert summary["missing_rates"]["attributes.colour"] == pytest.approx(
        sum("colour" not in p.attributes for p in products) / n, abs=1e-4)


def test_configured_rates_change_the_output(tmp_path):
    cfg = WorldConfig(**SMALL | {"n_items": 300, "n_queries": 20, "n_users": 10, "sessions_per_user": 2.0},
                      missing_attribute_rate=0.6, missing_image_rate=0.3, missing_description_rate=0.0,
                      typo_rate=0.0, synonym_rate=0.0)
    generate_world(cfg, tmp_path / "w")
    products = [p for s in SPLITS for p in read_products(tmp_path / "w", s)]
    assert abs(sum("brand" not in p.attributes for p in products) / len(products) - 0.6) < 0.1
    assert abs(sum(not p.images for p in products) / len(products) - 0.3) < 0.1
    assert all(p.description for p in products)
    # no synonyms, no typos: every title names its category with the canonical noun, spelled right
    nouns = {sub: ns[0] for _, subs in CATALOG for sub, ns, _ in subs}
    assert all(nouns[p.category[1]] in p.title for p in products if p.title)


def test_titles_use_synonyms_and_typos_at_default_rates(tiny_world):
    world, _ = tiny_world
    products = [p for s in SPLITS for p in read_products(world, s) if p.title]
    nouns = {sub: ns[0] for _, subs in CATALOG for sub, ns, _ in subs}
    without_canonical = sum(nouns[p.category[1]] not in p.title for p in products) / len(products)
    assert 0.15 < without_canonical < 0.7
    vocab = {w for _, subs in CATALOG for _, ns, _ in subs for n in ns for w in n.split()}
    vocab |= {w for c in COLOURS for s in c[2] for w in s.split()} | {w for p in PATTERNS for s in p[1] for w in s.split()}
    vocab |= {w for st in STYLES for w in st[1]} | set(MATERIALS) | {"by", "|", "-"}
    words = [w.strip(",").lower() for p in products for w in p.title.split()]
    brands = {p.attributes.get("brand", "").lower() for p in products}
    unknown = [w for w in words if w not in vocab and w not in brands]
    assert 0 < len(unknown) / len(words) < 0.08  # typos: present, but rare


def test_records_round_trip_through_shards_and_regenerate_identically(tiny_world):
    world, summary = tiny_world
    cfg = WorldConfig(**summary["config"])
    w = WorldRecords(cfg)
    products = read_products(world, "val")
    assert read_manifest(world / "items" / "val")["count"] == len(products)
    for p in products[:10]:
        assert p == w.product(int(p.id[1:]))
        lo, hi = cfg.views_per_item
        assert not p.images or lo <= len(p.images) <= hi
        for b in p.images:
            img = Image.open(io.BytesIO(b))
            assert img.format == "JPEG" and img.size == (64, 64)
        assert len(set(p.images)) == len(p.images)  # views differ


def test_ctr_log_covers_all_items_and_splits_by_time(tiny_world):
    world, summary = tiny_world
    ev = pd.read_csv(world / "interactions.csv", keep_default_na=False)
    assert list(ev.columns) == ["user", "item", "time", "event", "query"]
    assert set(ev.event) == {"exposure", "click", "purchase"}
    exposures = ev[ev.event == "exposure"]
    assert exposures.item.nunique() == summary["config"]["n_items"]  # items of every split
    key = ["user", "item", "time"]
    exp_keys = set(map(tuple, exposures[key].values))
    clicks = set(map(tuple, ev[ev.event == "click"][key].values))
    buys = set(map(tuple, ev[ev.event == "purchase"][key].values))
    assert clicks <= exp_keys and buys <= clicks
    assert not exposures.duplicated(key).any()
    split_time = summary["ctr_split_time"]
    test_share = (exposures.time >= split_time).mean()
    assert 0.1 < test_share < 0.3
    assert ev.time.is_monotonic_increasing
    ctr = len(clicks) / len(exp_keys)
    assert 0.1 < ctr < 0.5
    # each query's purchase is logged under its id
    bought = ev[(ev.event == "purchase") & (ev["query"] != "")]
    by_query = dict(zip(bought["query"], bought["item"]))
    for t in read_triplets(world, "val"):
        assert by_query[t.query.id] == t.positive.id


def test_pairs_stay_within_a_split_and_share_factors(tiny_world):
    world, _ = tiny_world
    pairs = pd.read_csv(world / "pairs.csv", keep_default_na=False)
    f = pd.read_csv(world / "item_factors.csv", keep_default_na=False).set_index("item")
    assert set(pairs.kind) == {"co-click", "co-purchase"}
    assert (pairs.item_a < pairs.item_b).all() and not pairs.duplicated().any()
    assert (f.split[pairs.item_a].values == f.split[pairs.item_b].values).all()
    co_click = pairs[pairs.kind == "co-click"]
    same_cat = (f.category[co_click.item_a].values == f.category[co_click.item_b].values).mean()
    assert same_cat > 0.8
    # random pairs of items share a category far less often
    rng = np.random.default_rng(0)
    a, b = rng.choice(f.index, 2000), rng.choice(f.index, 2000)
    assert (f.category[a].values == f.category[b].values).mean() < 0.2


def test_users_table_and_world_json(tiny_world):
    world, summary = tiny_world
    users = pd.read_csv(world / "users.csv", keep_default_na=False)
    assert len(users) == summary["config"]["n_users"] and users.user.is_unique
    taste = json.loads(users.taste[0])
    assert len(taste["colour_pref"]) == len(summary["vocabulary"]["colours"])
    assert json.loads((world / "world.json").read_text()) == summary
    saved = yaml.safe_load((world / "config.yaml").read_text())
    assert saved["world"] == summary["config"]


def test_cli_writes_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "w"
    args = ["--out", str(out), "--seed", "5", "--quiet"] + [f"--world.{k}={v}" for k, v in SMALL.items()]
    assert synth_main(args) == 0
    printed = capsys.readouterr().out
    assert "items/s" in printed and "triplets" in printed
    cfg = yaml.safe_load((out / "config.yaml").read_text())["world"]
    assert cfg["seed"] == 5 and cfg["n_items"] == 120
    before = (out / "interactions.csv").read_bytes()
    with pytest.raises(MmrepError, match="--overwrite"):
        synth_main(args)
    assert cli.main(["data", "synth"] + args) == 2  # the router prints one line, exit 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "interactions.csv").read_bytes() == before
    assert synth_main(args + ["--world.seed=6", "--overwrite"]) == 0  # --seed wins over --world.seed
    assert yaml.safe_load((out / "config.yaml").read_text())["world"]["seed"] == 5
    assert (out / "interactions.csv").read_bytes() == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MmrepError, match="is a file"):
        synth_main(["--out", str(tmp_path / "afile")])


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(MmrepError, match="world.typo_rate"):
        WorldConfig(typo_rate=1.5)
    with pytest.raises(MmrepError, match="world.views_per_item"):
        WorldConfig(views_per_item=[3, 2])
    with pytest.raises(MmrepError, match="world.n_itemz"):
        resolve_config("tiny", overrides=["--world.n_itemz=5"])
    with pytest.raises(MmrepError, match="--size"):
        resolve_config("huge")
    cfg_file = tmp_path / "w.yaml"
    cfg_file.write_text("world:\n  n_items: 777\n  seed: 2\ntrain:\n  lr: 0.1\n")  # other stages' sections
    cfg = resolve_config("small", str(cfg_file), ["--world.n_users=9"]).world
    assert (cfg.n_items, cfg.seed, cfg.n_users, cfg.n_queries) == (777, 2, 9, 6000)
    cfg_file.write_text("wrld:\n  n_items: 777\n")
    with pytest.raises(MmrepError, match="wrld"):
        resolve_config("tiny", str(cfg_file))


def test_image_size_format_and_view_count_are_configurable(tmp_path):
    cfg = WorldConfig(**SMALL | {"n_queries": 30}, image_size=32, image_format="png", views_per_item=[1, 1],
                      missing_image_rate=0.0, n_top_categories=3, n_sub_categories=2)
    generate_world(cfg, tmp_path / "w")
    products = read_products(tmp_path / "w", "train")
    assert len({tuple(p.category) for p in products}) == 6
    assert all(len(p.images) == 1 and p.image_exts == ["png"] for p in products)
    img = Image.open(io.BytesIO(products[0].images[0]))
    assert img.format == "PNG" and img.size == (32, 32)
    queries = [t.query for s in SPLITS for t in read_triplets(tmp_path / "w", s) if t.query.has_image]
    assert queries and all(Image.open(io.BytesIO(q.images[0])).size == (32, 32) for q in queries)


def test_example_config_file_loads():
    path = Path(__file__).parents[2] / "configs" / "data" / "world-example.yaml"
    cfg = resolve_config("small", str(path), ["--world.n_negatives=3"]).world
    assert cfg.n_items == 5000 and cfg.n_negatives == 3 and cfg.views_per_item == [2, 3]


def test_a_split_too_small_for_its_queries_is_a_clear_error(tmp_path):
    cfg = WorldConfig(**SMALL | {"val_frac": 0.02})
    with pytest.raises(MmrepError, match="world.val_frac"):
        generate_world(cfg, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_new_items_launch_in_the_ctr_test_period_and_are_never_shown_before(tiny_world):
    world, summary = tiny_world
    ev = pd.read_csv(world / "interactions.csv", keep_default_na=False)
    f = pd.read_csv(world / "item_factors.csv", keep_default_na=False).set_index("item")
    assert (ev.time.to_numpy() >= f.launch_time[ev.item].to_numpy()).all()
    new = f.index[f.launch_time > 0]
    assert abs(len(new) / len(f) - summary["config"]["new_item_rate"]) < 0.05
    assert (f.launch_time[new] >= summary["ctr_split_time"]).all()
    assert summary["counts"]["items_launched_in_ctr_test"] == len(new)
    exposed = ev[ev.event == "exposure"]
    cold = exposed[exposed.item.isin(new)]
    assert len(cold) > 0 and (cold.time >= summary["ctr_split_time"]).all()  # cold items for id features


def test_a_failed_run_leaves_nothing_behind(tmp_path):
    def fail_late(msg):
        if msg == "triplets/val":
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        generate_world(WorldConfig(**SMALL), tmp_path / "w", log=fail_late)
    assert list(tmp_path.iterdir()) == []
