"""Catalogue rows: nested fields by dotted path, list / object values as text, and rows read from WebDataset
(img2dataset or any `<key>.json` + `<key>.txt` + image) shards, so every source maps columns the same way.

`attributes.size.eu` reads {"attributes": {"size": {"eu": 40}}}; `variants.0.color` indexes a list. An
attribute spec `NAME=PATH` names the attribute; an object value becomes one attribute per leaf.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from mmrep.records import IMAGE_EXTS

WDS_KEY, WDS_TEXT, WDS_IMAGES = "__key__", "txt", "__images__"


def get_field(row: dict[str, Any], path: str) -> Any:
    """row[path], else the value at dotted `path` through nested objects / list indices; None when absent."""
    if path in row:
        return row[path]
    node: Any = row
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def field_paths(row: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every key of `row` and, for nested objects, every dotted path into them."""
    for key, value in row.items():
        name = f"{prefix}{key}"
        yield name
        if isinstance(value, dict):
            yield from field_paths(value, name + ".")


def text_of(value: Any) -> str:
    """A field as text: lists joined with ', ', objects as compact JSON, None / NaN as ''."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(t for t in (text_of(v) for v in value) if t)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value).strip()


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}")
    else:
        yield prefix, value


def split_spec(spec: str) -> tuple[str, str]:
    """`NAME=PATH` -> (NAME, PATH); `PATH` -> (PATH, PATH)."""
    name, sep, path = spec.partition("=")
    return (name.strip(), path.strip()) if sep else (spec.strip(), spec.strip())


def attribute_items(row: dict[str, Any], spec: str) -> list[tuple[str, str]]:
    """(name, text) attributes one spec yields: an object value gives one per leaf (`size.eu`, `size.us`)."""
    name, path = split_spec(spec)
    value = get_field(row, path)
    if isinstance(value, dict):
        return [(k, t) for k, v in _leaves(value, name) if (t := text_of(v))]
    text = text_of(value)
    return [(name, text)] if text else []


def wds_rows(source: str | Path) -> Iterator[dict[str, Any]]:
    """Samples of WebDataset shards as rows: the `.json` object's fields, `txt` (the caption / title text),
    `__key__` (the shard key) and `__images__` [(ext, bytes)] in IMAGE_EXTS order."""
    import webdataset as wds

    from mmrep.data.readers import resolve_shards

    for sample in wds.WebDataset(resolve_shards(source), shardshuffle=False, empty_check=False):
        row: dict[str, Any] = {}
        if "json" in sample:
            meta = json.loads(sample["json"])
            if isinstance(meta, dict):
                row.update(meta)
        if WDS_TEXT in sample:
            row[WDS_TEXT] = sample[WDS_TEXT].decode("utf-8", errors="replace").strip()
        row[WDS_KEY] = str(sample["__key__"])
        row[WDS_IMAGES] = [(ext, sample[ext]) for ext in IMAGE_EXTS if ext in sample]
        yield row
