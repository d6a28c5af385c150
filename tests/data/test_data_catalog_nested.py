"""Nested JSONL fields by dotted path, list values, and img2dataset / WebDataset shards as an import source."""

from __future__ import annotations

import json

import pytest

from mmrep.cli import main as mmrep_main
from mmrep.data.readers import iter_products
from mmrep.data.rows import attribute_items, get_field
from data_helpers import encode, write_tar

ROW = {"id": "a1", "info": {"name": "Wool coat"}, "attributes": {"size": {"eu": 40, "us": 10}, "colors": ["red", "blue"]},
       "variants": [{"sku": "x"}, {"sku": "y"}]}


def test_dotted_paths_lists_and_objects():
    assert get_field(ROW, "attributes.size.eu") == 40
    assert get_field(ROW, "variants.1.sku") == "y"
    assert get_field(ROW, "attributes.size.cn") is None
    assert attribute_items(ROW, "attributes.size.eu") == [("attributes.size.eu", "40")]
    assert attribute_items(ROW, "size=attributes.size.eu") == [("size", "40")]
    assert attribute_items(ROW, "colors=attributes.colors") == [("colors", "red, blue")]
    assert attribute_items(ROW, "size=attributes.size") == [("size.eu", "40"), ("size.us", "10")]


def test_nested_jsonl_attributes_import_as_separate_attributes(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a1.jpg").write_bytes(encode())
    (tmp_path / "img" / "a2.jpg").write_bytes(encode((0, 0, 200)))
    rows = [ROW, {"id": "a2", "info": {"name": "Silk scarf"}, "attributes": {"size": {"eu": 1}, "colors": "green"}}]
    (tmp_path / "cat.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    args = ["data", "import", "--jsonl", str(tmp_path / "cat.jsonl"), "--images", str(tmp_path / "img"),
            "--image-pattern", "{id}.jpg", "--title-col", "info.name", "--out", str(tmp_path / "out"),
            "--attribute-cols", "attributes.size.eu,colors=attributes.colors"]
    assert mmrep_main(args) == 0
    items = {p.id: p for p in iter_products(tmp_path / "out" / "train")}
    assert items["a1"].title == "Wool coat"
    assert items["a1"].attributes == {"attributes.size.eu": "40", "colors": "red, blue"}
    assert items["a2"].attributes == {"attributes.size.eu": "1", "colors": "green"}
    capsys.readouterr()
    assert mmrep_main([*args[:-1], "attributes.size.cn", "--overwrite"]) == 2
    assert "attributes.size.cn" in capsys.readouterr().err  # a path no row has is named, with what exists


def test_img2dataset_shards_import_with_the_users_id_and_text_fields(tmp_path):
    members = []
    for n in range(3):
        key = f"00000000{n}"
        members += [(f"{key}.jpg", encode((40 * n, 100, 100))), (f"{key}.txt", f"blue jeans {n}".encode()),
                    (f"{key}.json", json.dumps({"url": "http://x", "key": key, "status": "success", "item_id": 15970 + n,
                                                "brand": "acme", "specs": {"size": {"eu": 40 + n}},
                                                "internal_score": 0.3}).encode())]
    (tmp_path / "i2d").mkdir()
    write_tar(tmp_path / "i2d" / "00000.tar", members)
    assert mmrep_main(["data", "import", "--wds", str(tmp_path / "i2d"), "--id-col", "item_id", "--title-col", "txt",
                       "--attribute-cols", "brand,size=specs.size.eu", "--out", str(tmp_path / "out")]) == 0
    items = {p.id: p for p in iter_products(tmp_path / "out" / "train")}
    assert sorted(items) == ["15970", "15971", "15972"]
    p = items["15971"]
    assert p.title == "blue jeans 1" and p.attributes == {"brand": "acme", "size": "41"}  # nothing else becomes text
    assert len(p.images) == 1 and p.image_exts == ["jpg"]


@pytest.mark.parametrize("bad", ["nope", "specs.size.cn"])
def test_wds_unknown_field_is_a_one_line_error(tmp_path, capsys, bad):
    (tmp_path / "i2d").mkdir()
    write_tar(tmp_path / "i2d" / "00000.tar", [("k.jpg", encode()), ("k.json", b'{"specs": {"size": {"eu": 1}}}')])
    assert mmrep_main(["data", "import", "--wds", str(tmp_path / "i2d"), "--id-col", bad,
                       "--out", str(tmp_path / "out")]) == 2
    assert bad in capsys.readouterr().err and not (tmp_path / "out").exists()
