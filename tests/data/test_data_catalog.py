import json
from pathlib import Path

import pandas as pd
import pytest

from data_helpers import FASHION, encode
from mmrep.cli import main as mmrep_main
from mmrep.data.catalog import ImportConfig, import_catalog
from mmrep.data.cli import import_main
from mmrep.data.readers import iter_products
from mmrep.data.shards import read_manifest
from mmrep.errors import MmrepError

REPO = Path(__file__).resolve().parents[2]


def _read_all(out: Path) -> dict[str, list]:
    return {d.name: list(iter_products(d)) for d in sorted(out.iterdir()) if d.is_dir()}


@pytest.mark.skipif(not FASHION.is_dir(), reason="shared Fashion data not present")
def test_fashion_subset_roundtrip(tmp_path):
    styles = pd.read_csv(FASHION / "styles.csv", dtype=str, keep_default_na=False).iloc[:300]
    splits = pd.read_csv(FASHION / "splits.csv", dtype=str, keep_default_na=False).iloc[:300]
    src = tmp_path / "src"
    src.mkdir()
    styles.to_csv(src / "styles.csv", index=False)
    splits.to_csv(src / "splits.csv", index=False)
    (src / "images").symlink_to(FASHION / "images")
    out = tmp_path / "out"
    assert import_main(["--preset", "fashion", "--source", str(src), "--out", str(out)]) == 0

    has_image = {r.id for r in styles.itertuples() if (FASHION / "images" / f"{r.id}.jpg").is_file()}
    split_of = dict(zip(splits.id, splits.split))
    back = _read_all(out)
    summary = json.loads((out / "import.json").read_text())
    assert summary["count"] == len(has_image) and summary["skipped_missing_image"] == 300 - len(has_image)
    assert {s: read_manifest(out / s)["count"] for s in back} == {s: len(v) for s, v in back.items()}
    assert sum(read_manifest(out / s)["skipped_missing_image"] for s in back) == summary["skipped_missing_image"]
    rows = styles.set_index("id")
    seen = []
    for split, products in back.items():
        for p in products:
            r = rows.loc[p.id]
            seen.append(p.id)
            assert p.split == split == split_of[p.id]
            assert p.title == r.productDisplayName
            assert p.category == [r.masterCategory, r.subCategory, r.articleType]
            assert p.attributes == {k: r[k] for k in ("gender", "baseColour", "season", "usage", "year") if r[k]}
            assert p.labels["articleType"] == r.articleType
            assert p.images == [(FASHION / "images" / f"{p.id}.jpg").read_bytes()]  # byte-identical
    assert sorted(seen) == sorted(has_image)
    # the YAML mapping in configs/data/fashion.yaml is the same mapping as the preset
    out2 = tmp_path / "out2"
    assert import_main(["--config", str(REPO / "configs/data/fashion.yaml"), "--csv", str(src / "styles.csv"),
                        "--images", str(src / "images"), "--splits-csv", str(src / "splits.csv"),
                        "--out", str(out2)]) == 0
    assert _read_all(out2) == back


def _catalogue(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("a.jpg", "b.png", "c.jpg", "e_0.jpg", "e_1.jpg"):
        (images / name).write_bytes(encode(fmt="PNG" if name.endswith("png") else "JPEG"))
    df = pd.DataFrame([
        {"sku": "a", "name": "Red shirt, cotton", "cat": "Apparel > Topwear", "colour": "red", "img": "a.jpg", "part": "train"},
        {"sku": "b", "name": "", "cat": "Apparel", "colour": "NA", "img": "b.png", "part": "val"},  # no title: kept
        {"sku": "c", "name": "Blue jeans", "cat": "", "colour": "", "img": "c.jpg|a.jpg", "part": ""},  # 2 images
        {"sku": "d", "name": "Lost image", "cat": "Apparel", "colour": "green", "img": "missing.jpg", "part": "train"},
        {"sku": "a", "name": "duplicate", "cat": "", "colour": "", "img": "a.jpg", "part": "train"},
    ])
    csv = tmp_path / "cat.csv"
    df.to_csv(csv, index=False)
    return csv, images


def test_csv_import_with_flags(tmp_path, capsys):
    csv, images = _catalogue(tmp_path)
    out = tmp_path / "out"
    args = ["--csv", str(csv), "--images", str(images), "--out", str(out), "--id-col", "sku", "--title-col", "name",
            "--image-col", "img", "--category-cols", "cat", "--attribute-cols", "colour", "--label-cols", "colour",
            "--split-col", "part", "--shard-size", "1"]
    assert import_main(args) == 0
    assert "imported 3 products" in capsys.readouterr().out
    back = {p.id: p for ps in _read_all(out).values() for p in ps}
    assert set(back) == {"a", "b", "c"}
    assert back["a"].title == "Red shirt, cotton" and back["a"].category == ["Apparel", "Topwear"]
    assert back["b"].title == "" and back["b"].attributes == {"colour": "NA"} and back["b"].image_exts == ["png"]
    assert back["c"].images == [(images / "c.jpg").read_bytes(), (images / "a.jpg").read_bytes()]
    assert back["c"].split == "train" and back["c"].attributes == {}  # empty split -> default_split
    summary = json.loads((out / "import.json").read_text())
    assert summary["splits"] == {"train": 2, "val": 1}
    assert (summary["skipped_missing_image"], summary["skipped_duplicate_id"], summary["missing_title"]) == (1, 1, 1)
    assert [s["name"] for s in read_manifest(out / "train")["shards"]] == ["train-000000.tar", "train-000001.tar"]
    assert (out / "import_config.yaml").is_file()

    # refuses to overwrite; --overwrite replaces; a failing run leaves the old output intact
    with pytest.raises(MmrepError, match="--overwrite"):
        import_main(args)
    with pytest.raises(MmrepError, match="available columns: sku, name, cat, colour, img, part"):
        import_main(args[:-2] + ["--overwrite", "--title-col", "title"])
    assert {p.id for ps in _read_all(out).values() for p in ps} == {"a", "b", "c"}
    assert import_main(args + ["--overwrite", "--keep-text-only"]) == 0
    back = {p.id: p for ps in _read_all(out).values() for p in ps}
    assert back["d"].images == [] and back["d"].title == "Lost image"


def test_jsonl_import_with_glob_pattern_and_reencode(tmp_path):
    _, images = _catalogue(tmp_path)
    jsonl = tmp_path / "cat.jsonl"
    rows = [{"id": "e", "title": "two views", "category": ["Home", "Lamps"], "brand": "acme"},
            {"id": "x", "title": "no image files"}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    cfg = ImportConfig(table=str(jsonl), images=str(images), image_pattern="{id}_*.jpg", title_col="title",
                       category_cols=["category"], attribute_cols=["brand"], reencode=True)
    summary = import_catalog(cfg, out)
    assert summary["count"] == 1 and summary["skipped_missing_image"] == 1
    (p,) = list(iter_products(out / "train"))
    assert p.category == ["Home", "Lamps"] and len(p.images) == 2 and p.images[0][:2] == b"\xff\xd8"
    assert p.images[0] != (images / "e_0.jpg").read_bytes()  # re-encoded, as asked


def test_import_errors_are_one_line(tmp_path, capsys):
    csv, images = _catalogue(tmp_path)
    bad_yaml = tmp_path / "map.yaml"
    bad_yaml.write_text("id_col: sku\ntitle_column: name\n")
    code = mmrep_main(["data", "import", "--csv", str(csv), "--images", str(images), "--config", str(bad_yaml),
                       "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key 'title_column'" in err and err.count("\n") == 1
    with pytest.raises(MmrepError, match=r"settings live under --import\."):
        import_main(["--csv", str(csv), "--out", str(tmp_path / "o"), "--data.x=1"])
    with pytest.raises(MmrepError, match="not found"):
        import_main(["--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")])
    with pytest.raises(MmrepError, match="no products imported"):
        import_main(["--csv", str(csv), "--images", str(images), "--id-col", "sku", "--image-pattern", "{sku}.webp",
                     "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()  # nothing half-written
    assert import_main(["--csv", str(csv), "--images", str(images), "--id-col", "sku", "--image-col", "img",
                        "--import.title_col=name", "--out", str(tmp_path / "o")]) == 0
    assert {p.title for p in iter_products(tmp_path / "o" / "train")} >= {"Red shirt, cotton"}


ABO = FASHION.parent / "abo_sample"


@pytest.mark.skipif(not ABO.is_dir(), reason="shared ABO sample not present")
def test_abo_multi_image_products(tmp_path, tokenizer):
    from mmrep.data.collate import Collator
    from mmrep.data.readers import DataConfig, eval_loader
    from mmrep.data.transforms import ImageTransform

    asins = sorted(d.name for d in ABO.iterdir() if d.is_dir())
    jsonl = tmp_path / "abo.jsonl"
    jsonl.write_text("\n".join(json.dumps({"asin": a, "name": f"product {a}"}) for a in asins))
    out = tmp_path / "abo"
    assert import_main(["--jsonl", str(jsonl), "--images", str(ABO), "--id-col", "asin", "--title-col", "name",
                        "--image-pattern", "{asin}/*.jpg", "--out", str(out)]) == 0
    back = {p.id: p for p in iter_products(out / "train")}
    for a in asins:
        files = sorted((ABO / a).glob("*.jpg"))
        assert back[a].images == [f.read_bytes() for f in files] and len(files) >= 3
    collator = Collator(tokenizer, ImageTransform(32), max_images=2)
    (batch,) = list(eval_loader(DataConfig(shards=str(out / "train"), num_workers=0), collator))
    assert batch.inputs.pixels.shape == (3, 2, 3, 32, 32) and batch.inputs.image_mask.all()


def test_config_layers(tmp_path):
    from mmrep.data.catalog import resolve_import_config

    yaml_file = tmp_path / "m.yaml"
    yaml_file.write_text("title_col: name\nimage_col: img\nshard_size: 50\n")
    cfg = resolve_import_config("fashion", str(tmp_path), str(yaml_file), ["--import.shard_size=7"],
                                id_col="sku", label_cols=None, split_col="part")
    assert (cfg.title_col, cfg.image_col, cfg.image_pattern, cfg.shard_size, cfg.id_col) == ("name", "img", "", 7, "sku")
    assert cfg.split_col == "part" and cfg.splits_csv == "" and cfg.label_cols[0] == "articleType"
    assert cfg.table == str(tmp_path / "styles.csv")
    with pytest.raises(MmrepError, match="unknown preset"):
        resolve_import_config("books")
    with pytest.raises(MmrepError, match="shard_size"):
        resolve_import_config(None, None, None, ["--import.shard_size=0"])


def test_import_reads_images_only_under_the_image_folder(tmp_path):
    """Paths that climb out of --images, absolute paths and symlinks leaving it are skipped and counted (their
    bytes never reach a shard); undecodable images likewise; strict mode names the row; an explicit flag allows."""
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "ok.jpg").write_bytes(encode())
    (images / "sub").mkdir()
    (images / "sub" / "in.jpg").write_bytes(encode())
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(encode(color=(1, 2, 3)))  # a real image: only the location makes it forbidden
    (images / "link.jpg").symlink_to(secret)
    (images / "inner-link.jpg").symlink_to(images / "ok.jpg")  # a symlink that stays inside is fine
    (images / "broken.jpg").write_bytes(encode()[:60])  # truncated JPEG
    (images / "text.jpg").write_bytes(b"not an image at all")
    climb = "../" * 12 + str(secret).lstrip("/")
    df = pd.DataFrame([
        {"id": "p1", "title": "fine", "img": "ok.jpg"},
        {"id": "p2", "title": "fine too", "img": "sub/in.jpg|inner-link.jpg"},
        {"id": "p3", "title": "climbs", "img": climb},
        {"id": "p4", "title": "absolute", "img": str(secret)},
        {"id": "p5", "title": "symlink out", "img": "link.jpg"},
        {"id": "p6", "title": "truncated", "img": "broken.jpg"},
        {"id": "p7", "title": "not an image", "img": "text.jpg"},
        {"id": "p8", "title": "dot dot inside", "img": "sub/../ok.jpg"},
    ])
    csv = tmp_path / "cat.csv"
    df.to_csv(csv, index=False)
    base = ["--csv", str(csv), "--images", str(images), "--title-col", "title", "--image-col", "img"]
    out = tmp_path / "out"
    assert import_main(base + ["--out", str(out)]) == 0
    summary = json.loads((out / "import.json").read_text())
    assert (summary["skipped_outside_images"], summary["skipped_bad_image"], summary["count"]) == (3, 2, 3)
    stored = [img for p in iter_products(out / "train") for img in p.images]
    assert {p.id for p in iter_products(out / "train")} == {"p1", "p2", "p8"}
    assert secret.read_bytes() not in stored and len(stored) == 4

    with pytest.raises(MmrepError, match=r"row 3 \(id 'p3'\): image path .* is outside the image folder") as e:
        import_main(base + ["--out", str(tmp_path / "strict"), "--strict"])
    assert "\n" not in str(e.value) and not (tmp_path / "strict").exists()
    df[df.id.isin(["p1", "p5"])].to_csv(csv, index=False)
    with pytest.raises(MmrepError, match=r"row 2 \(id 'p5'\): .* is a symlink leaving the image folder"):
        import_main(base + ["--out", str(tmp_path / "strict"), "--strict"])
    df[df.id.isin(["p1", "p6"])].to_csv(csv, index=False)
    with pytest.raises(MmrepError, match=r"row 2 \(id 'p6'\): image .*broken.jpg does not decode"):
        import_main(base + ["--out", str(tmp_path / "strict"), "--strict"])

    df[df.id.isin(["p1", "p4"])].to_csv(csv, index=False)
    assert import_main(base + ["--out", str(tmp_path / "allowed"), "--allow-outside-images"]) == 0
    assert secret.read_bytes() in [img for p in iter_products(tmp_path / "allowed" / "train") for img in p.images]


def test_import_overwrite_replaces_only_an_earlier_import(tmp_path):
    csv, images = _catalogue(tmp_path)
    args = ["--csv", str(csv), "--images", str(images), "--id-col", "sku", "--image-col", "img"]
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(MmrepError, match="did not write"):
        import_main(args + ["--out", str(mine), "--overwrite"])
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    out = tmp_path / "out"
    assert import_main(args + ["--out", str(out)]) == 0
    assert (out / ".mmrep").is_file()
    assert import_main(args + ["--out", str(out), "--overwrite"]) == 0
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(MmrepError, match="is a file"):
        import_main(args + ["--out", str(afile), "--overwrite"])
