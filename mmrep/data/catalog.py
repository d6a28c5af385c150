"""Importing a product catalogue (CSV / JSONL + an image folder) into one shard set per split.

Columns are mapped by an `ImportConfig` (flags, a small YAML file, or a preset). Images are stored
as their original bytes unless `reencode` is set. The output folder is built under a temp name and
renamed when complete; an existing non-empty output is only replaced with `overwrite`.
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

from mmrep.config import from_dict, parse_override, read_yaml, save_resolved, set_dotted, to_dict
from mmrep.data.rows import WDS_IMAGES, attribute_items, field_paths, get_field, split_spec, text_of, wds_rows
from mmrep.data.shards import ShardWriter
from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_dir, atomic_write, check_replaceable
from mmrep.records import Product, sample_key

SUMMARY = "import.json"
IMPORT_FILES = (SUMMARY, "import_config.yaml")  # an import from before the mmrep marker is recognised by these
log = logging.getLogger(__name__)


@dataclass
class ImportConfig:
    """How catalogue columns become Product fields (the YAML mapping config holds these keys)."""

    table: str = ""  # the CSV or JSONL file, or a WebDataset / img2dataset shard folder or .tar (format wds)
    format: Literal["auto", "csv", "jsonl", "wds"] = "auto"
    images: str = ""  # image folder; image paths / patterns are relative to it
    id_col: str = "id"
    title_col: str = ""
    description_col: str = ""
    image_col: str = ""  # column holding image path(s): "a.jpg", "a.jpg|b.jpg" or a JSON list
    image_pattern: str = ""  # e.g. "{id}.jpg" or "{id}_*.jpg" (glob, sorted); fields are row columns
    category_cols: list[str] = field(default_factory=list)  # coarse -> fine
    category_sep: str = ">"  # splits a single category column holding a path "A > B > C"
    # columns may be dotted paths into nested JSON (attributes.size.eu) and `NAME=PATH` names the attribute;
    # an object value becomes one attribute per leaf, a list one comma-joined value
    attribute_cols: list[str] = field(default_factory=list)
    label_cols: list[str] = field(default_factory=list)
    split_col: str = ""
    splits_csv: str = ""  # a CSV with the id column and `split`, joined on id
    default_split: str = "train"  # for rows with no split
    keep_text_only: bool = False  # keep rows whose images are missing (as text-only items)
    shard_size: int = 10_000
    reencode: bool = False  # re-encode images as JPEG (quality 95) instead of storing original bytes
    # image paths must stay inside `images` (after following symlinks); true reads any path the table names
    allow_outside_images: bool = False
    strict: bool = False  # fail on the first row with a bad image or a path outside `images`, naming the row

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise MmrepError(f"config key 'shard_size' must be >= 1, got {self.shard_size}")
        if not self.id_col:
            raise MmrepError("config key 'id_col' must name the id column")
        if self.image_col and self.image_pattern:
            raise MmrepError("give either image_col or image_pattern, not both")
        if self.split_col and self.splits_csv:
            raise MmrepError("give either split_col or splits_csv, not both")
        if not self.default_split or not sample_key(self.default_split) == self.default_split:
            raise MmrepError(f"config key 'default_split' must be a plain name, got {self.default_split!r}")


def shared_data_dir() -> Path:
    """The shared read-only data folder: $MMREP_DATA_DIR, else `../shared/data` beside the checkout."""
    env = os.environ.get("MMREP_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


def preset(name: str, source: str | Path | None = None) -> ImportConfig:
    """A named mapping. `fashion`: Fashion Product Images (Small) — styles.csv + splits.csv + images/."""
    if name != "fashion":
        raise MmrepError(f"unknown preset {name!r}; available presets: fashion")
    root = Path(source) if source else shared_data_dir() / "fashion_product_images_small"
    return ImportConfig(
        table=str(root / "styles.csv"),
        format="csv",
        images=str(root / "images"),
        id_col="id",
        title_col="productDisplayName",
        image_pattern="{id}.jpg",
        category_cols=["masterCategory", "subCategory", "articleType"],
        attribute_cols=["gender", "baseColour", "season", "usage", "year"],
        label_cols=["articleType", "subCategory", "masterCategory", "baseColour", "gender", "usage"],
        splits_csv=str(root / "splits.csv"),
        shard_size=1000,  # small enough that val/test split over ranks x workers by shard
    )


def read_table(path: str | Path, fmt: str = "auto") -> tuple[Iterable[dict[str, Any]], list[str]]:
    """Rows (dicts) and column names of a CSV (all strings; "NA" stays a string), a JSONL file (names include
    dotted paths into nested objects) or WebDataset shards (rows stream; names from the first samples)."""
    path = Path(path)
    if fmt == "wds" or (fmt == "auto" and (path.is_dir() or path.suffix == ".tar")):
        if not path.exists():
            raise MmrepError(f"shard folder not found: {path} (check --wds)")
        rows = wds_rows(path)
        head = list(itertools.islice(rows, 200))
        columns = {k: None for row in head for k in field_paths(row) if k != WDS_IMAGES}
        return itertools.chain(head, rows), list(columns)
    if not path.is_file():
        raise MmrepError(f"catalogue file not found: {path} (check --csv / --jsonl)")
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv"
    if fmt == "csv":
        import pandas as pd

        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as e:
            raise MmrepError(f"cannot read CSV {path}: {str(e).splitlines()[0]}") from None
        return df.to_dict("records"), [str(c) for c in df.columns]
    rows, columns = [], {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MmrepError(f"{path} line {n} is not valid JSON ({e}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise MmrepError(f"{path} line {n} is not a JSON object")
            rows.append(row)
            columns.update(dict.fromkeys(field_paths(row)))
    return rows, list(columns)


def _check_columns(cfg: ImportConfig, columns: list[str]) -> None:
    wanted = {"id_col": cfg.id_col, "title_col": cfg.title_col, "description_col": cfg.description_col,
              "image_col": cfg.image_col, "split_col": cfg.split_col}
    named = [(k, v) for k, v in wanted.items() if v]
    named += [(k, split_spec(c)[1]) for k in ("category_cols", "attribute_cols", "label_cols") for c in getattr(cfg, k)]
    for key, col in named:
        if col not in columns:
            raise MmrepError(f"column {col!r} (from {key}) is not in the catalogue; available columns: "
                             f"{', '.join(columns)}")


def _text(value: Any) -> str:
    return text_of(value)  # lists joined, objects as JSON, None / NaN empty


def _list(value: Any, sep: str) -> list[str]:
    if isinstance(value, list):
        return [_text(v) for v in value if _text(v)]
    text = _text(value)
    if text.startswith("["):
        try:
            return [_text(v) for v in json.loads(text) if _text(v)]
        except json.JSONDecodeError:
            pass
    return [p.strip() for p in text.split(sep) if p.strip()] if text else []


def _image_paths(cfg: ImportConfig, row: dict[str, Any], image_dir: Path) -> list[Path]:
    if cfg.image_col:
        names = _list(get_field(row, cfg.image_col), "|")
    elif cfg.image_pattern:
        try:
            name = cfg.image_pattern.format_map({k: _text(v) for k, v in row.items()})
        except KeyError as e:
            raise MmrepError(f"image_pattern {cfg.image_pattern!r} names column {e} which the catalogue lacks") from None
        if any(ch in name for ch in "*?["):
            return [Path(p) for p in sorted(glob.glob(str(image_dir / name)))]
        names = [name]
    else:
        return []
    return [p for p in (image_dir / n for n in names) if p.is_file()]


class RowError(Exception):
    """A row that cannot be imported as written: skipped and counted, or fatal in strict mode."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _confined(paths: list[Path], image_dir: Path, allow_outside: bool) -> list[Path]:
    """`paths` if each (symlinks followed) lies inside `image_dir`; a catalogue must not read other files."""
    if allow_outside:
        return paths
    root = image_dir.resolve()
    for p in paths:
        if not p.resolve().is_relative_to(root):
            inside_by_name = Path(os.path.normpath(p.absolute())).is_relative_to(image_dir.absolute())
            what = "a symlink leaving" if inside_by_name else "outside"
            raise RowError("skipped_outside_images", f"image path {str(p)!r} is {what} the image folder {image_dir} "
                                                      "(pass --allow-outside-images to read it anyway)")
    return paths


def _checked_image(path: Path) -> bytes:
    """The file's bytes after a full decode (a truncated or non-image file raises RowError)."""
    from PIL import Image

    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise RowError("skipped_bad_image", f"image {path} does not decode ({type(e).__name__}: "
                                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return data


def _reencode(data: bytes) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _split_map(cfg: ImportConfig) -> dict[str, str]:
    rows, columns = read_table(cfg.splits_csv, "csv")
    id_col = cfg.id_col if cfg.id_col in columns else "id"
    if id_col not in columns or "split" not in columns:
        raise MmrepError(f"splits file {cfg.splits_csv} needs columns {cfg.id_col!r} (or 'id') and 'split'; "
                         f"it has: {', '.join(columns)}")
    return {_text(r[id_col]): _text(r["split"]) for r in rows}


def products_from_table(cfg: ImportConfig, counts: dict[str, int]) -> Iterator[Product]:
    """Rows -> Products (images read from disk); `counts` collects why rows were skipped or degraded."""
    rows, columns = read_table(cfg.table, cfg.format)
    _check_columns(cfg, columns)
    image_dir = Path(cfg.images) if cfg.images else Path(cfg.table).parent
    if (cfg.image_col or cfg.image_pattern) and not image_dir.is_dir():
        raise MmrepError(f"image folder not found: {image_dir} (check --images)")
    splits = _split_map(cfg) if cfg.splits_csv else None
    seen: set[str] = set()
    for n, row in enumerate(rows, 1):
        counts["rows"] += 1
        item_id = _text(get_field(row, cfg.id_col))
        if not item_id:
            counts["skipped_no_id"] += 1
            continue
        key = sample_key(item_id)
        if key in seen:
            counts["skipped_duplicate_id"] += 1
            continue
        seen.add(key)
        if cfg.split_col:
            split = _text(get_field(row, cfg.split_col))
        else:
            split = splits.get(item_id, "") if splits is not None else ""
        if not split:
            counts["default_split"] += 1
            split = cfg.default_split
        try:
            paths = _confined(_image_paths(cfg, row, image_dir), image_dir, cfg.allow_outside_images)
            images = [_checked_image(p) for p in paths]
        except RowError as e:
            if cfg.strict:
                raise MmrepError(f"{cfg.table} row {n} (id {item_id!r}): {e.detail} (strict mode; fix the row or "
                                 "drop --strict to skip and count such rows)") from None
            counts[e.reason] += 1
            log.warning("skipped %s row %d (id %r): %s", cfg.table, n, item_id, e.detail)
            continue
        shard_images = row.get(WDS_IMAGES, []) if not (cfg.image_col or cfg.image_pattern) else []
        if not paths and (cfg.image_col or cfg.image_pattern):
            if not cfg.keep_text_only:
                counts["skipped_missing_image"] += 1
                counts[f"skipped_missing_image/{split}"] += 1
                continue
            counts["text_only"] += 1
        images += [data for _, data in shard_images]
        exts = [p.suffix.lstrip(".").lower() or "jpg" for p in paths] + [ext for ext, _ in shard_images]
        if cfg.reencode:
            images = [_reencode(b) for b in images]
        category = _list(get_field(row, cfg.category_cols[0]), cfg.category_sep) if len(cfg.category_cols) == 1 else \
            [_text(get_field(row, c)) for c in cfg.category_cols if _text(get_field(row, c))]
        p = Product(
            id=item_id,
            title=_text(get_field(row, cfg.title_col)) if cfg.title_col else "",
            description=_text(get_field(row, cfg.description_col)) if cfg.description_col else "",
            category=category,
            attributes=dict(kv for c in cfg.attribute_cols for kv in attribute_items(row, c)),
            images=images,
            image_exts=["jpg" if cfg.reencode else ext for ext in exts],
            labels={c: _text(get_field(row, c)) for c in cfg.label_cols if _text(get_field(row, c))},
            split=split,
        )
        if not p.title:
            counts["missing_title"] += 1  # kept: the text tokens of its other fields (if any) remain
        if not (p.has_image or p.has_text):
            counts["skipped_empty"] += 1
            continue
        yield p


def import_catalog(cfg: ImportConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write `<out>/<split>/` shard sets + `<out>/import.json`; returns that summary."""
    out = Path(out)
    if not cfg.table:
        raise MmrepError("no catalogue given: pass --csv FILE or --jsonl FILE (or --preset fashion)")
    check_replaceable(out, overwrite, IMPORT_FILES)  # only an earlier import is ever replaced
    counts: dict[str, int] = Counter({k: 0 for k in ("rows", "skipped_no_id", "skipped_duplicate_id", "skipped_missing_image",
                                             "skipped_outside_images", "skipped_bad_image", "skipped_empty",
                                             "text_only", "missing_title", "default_split")})
    start = time.time()
    with atomic_dir(out, "import", IMPORT_FILES) as tmp:
        writers: dict[str, ShardWriter] = {}
        try:
            for p in products_from_table(cfg, counts):
                if p.split not in writers:
                    split = sample_key(p.split)
                    writers[p.split] = ShardWriter(tmp / split, split, max_count=cfg.shard_size, kind="products")
                writers[p.split].write({"__key__": sample_key(p.id), **p.to_sample()})
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        if not writers:
            raise MmrepError(f"no products imported from {cfg.table} ({counts['rows']} rows; {_why(counts)}); "
                             "check the column mapping and --images")
        splits = {s: w.close({"source": str(cfg.table),
                              "skipped_missing_image": counts.get(f"skipped_missing_image/{s}", 0)})["count"]
                  for s, w in sorted(writers.items())}
        summary = {"splits": splits, "count": sum(splits.values()), **counts,
                   "seconds": round(time.time() - start, 2), "config": to_dict(cfg)}
        with atomic_write(tmp / SUMMARY, "w") as f:
            json.dump(summary, f, indent=1)
        save_resolved(cfg, tmp, "import_config.yaml")
        _relax_permissions(tmp)
    return summary


def _relax_permissions(root: Path) -> None:
    # temp dirs/files are created private (0700/0600); the finished output follows the umask like
    # any other file the user writes, so that other users/jobs can read the shards
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _why(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items() if k != "rows" and v) or "none skipped"


def resolve_import_config(preset_name: str | None = None, source: str | None = None, config: str | None = None,
                          overrides: Sequence[str] = (), **flags: Any) -> ImportConfig:
    """preset < YAML mapping file < `--import.key=value` overrides < explicit flags (None = not given)."""
    raw = to_dict(preset(preset_name, source) if preset_name else ImportConfig())
    layers: list[dict[str, Any]] = [read_yaml(config)] if config else []
    over: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        if not key.startswith("import."):
            raise MmrepError(f"override '{item}' must look like --import.key=value")
        set_dotted(over, key.split(".", 1)[1], value)
    layers += [over, {k: v for k, v in flags.items() if v is not None}]
    for layer in layers:
        # a layer naming one of two exclusive keys replaces the other from lower layers
        for a, b in (("image_col", "image_pattern"), ("split_col", "splits_csv")):
            if layer.get(a):
                raw[b] = ""
            if layer.get(b):
                raw[a] = ""
        raw.update(layer)
    return from_dict(ImportConfig, raw)
