import json

from data_helpers import encode, img2dataset_folder, product, write_set, write_tar
from mmrep.data.cli import inspect_main
from mmrep.data.inspect import inspect_shards
from mmrep.records import Product, Query, Triplet


def test_inspect_mmrep_set_with_corruption(tmp_path):
    whole = encode(size=(120, 90))
    TRUNCATED = whole[:-50]  # header intact, scan data cut
    products = [product(0, n_images=2), product(1, n_images=0), product(2, title=""),
                Product("big", title="poster", images=[encode(size=(300, 200))])]
    write_set(tmp_path / "train", products, 2)
    good = product(3).to_sample()
    write_tar(tmp_path / "train" / "extra.tar", [
        ("bad.product.json", json.dumps(good["product.json"]).encode()), ("bad.0.jpg", TRUNCATED),
        ("item-3.product.json", json.dumps(good["product.json"]).encode()), ("item-3.0.jpg", good["0.jpg"]),
    ])
    (tmp_path / "train" / "manifest.json").unlink()  # a plain *.tar folder now
    report = inspect_shards(tmp_path / "train")
    s = report["sets"]["train"]
    assert (s["products"], s["shards"], s["expected"]) == (5, 3, None)
    assert s["coverage"]["title"] == 0.8 and s["coverage"]["image"] == 0.8 and s["coverage"]["text"] == 1.0
    assert s["attribute_coverage"] == {"colour": 0.8} and s["label_coverage"] == {"articleType": 0.8}  # "big" has none
    assert s["images_per_item"] == {"0": 1, "1": 3, "2": 1}
    assert s["image_size_hist"] == {"32-63": 4, "256-511": 1} and s["image_sizes_top"] == {"40x30": 4, "300x200": 1}
    assert s["corrupt"] == {"bad_image": 1}
    (c,) = s["corrupt_samples"]
    assert c["key"] == "bad" and c["shard"].endswith("extra.tar")
    # header-only mode misses the truncated JPEG (documented trade-off)
    assert inspect_shards(tmp_path / "train", verify=False)["sets"]["train"]["corrupt"] == {}


def test_inspect_cli_on_import_root_img2dataset_and_triplets(tmp_path, capsys):
    img2dataset_folder(tmp_path / "root" / "web")
    write_set(tmp_path / "root" / "val", [product(i) for i in range(3)], 10)
    t = Triplet("t0", Query("q", text="shirt"), product(5), [product(6), product(7)])
    write_tar(tmp_path / "root" / "trip" / "t.tar", [(f"t0.{k}", v if isinstance(v, bytes) else json.dumps(v).encode())
                                                      for k, v in t.to_sample().items() if k != "__key__"])
    assert inspect_main([str(tmp_path / "root"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    sets = report["sets"]
    assert set(sets) == {"web", "val", "trip"} and report["total"] == 4 + 3 + 1
    assert sets["web"]["layout"] == {"img2dataset": 4} and sets["web"]["expected"] == 4
    assert sets["web"]["attribute_coverage"] == {"brand": 1.0, "price": 1.0}
    assert sets["val"]["expected"] == 3 and sets["trip"]["negatives_per_triplet"] == {"2": 1}
    assert inspect_main([str(tmp_path / "root" / "val")]) == 0
    text = capsys.readouterr().out
    assert "3 products" in text and "coverage: title 100.0%" in text
