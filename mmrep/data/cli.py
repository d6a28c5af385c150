"""`mmrep data import` and `mmrep data inspect`: thin argument parsing over catalog.py / inspect.py."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from mmrep.cli_support import CommandParser, command_line
from mmrep.data.catalog import ImportConfig, import_catalog, resolve_import_config


def _cols(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


@dataclass
class ImportJob:
    """`mmrep data import --preset NAME`: a known catalogue layout into `out` (the main job's catalogue step)."""

    out: str
    preset: str
    source: str = ""  # the preset's data folder (default: ../shared/data/<dataset> or $MMREP_DATA_DIR)
    overwrite: bool = False

    def argv(self) -> list[str]:
        return command_line("data import", flags={"preset": self.preset, "out": self.out, "overwrite": self.overwrite,
                                                  "source": self.source})


@dataclass
class ImportResult:
    out: str
    count: int
    splits: dict[str, int]
    rows: int
    seconds: float
    skipped: dict[str, int]  # reason -> rows (only reasons that happened)
    missing_title: int
    text_only: int


def import_shards(cfg: ImportConfig, out: str, overwrite: bool = False) -> ImportResult:
    """One WebDataset shard set per split under `out` (atomic), from a resolved `ImportConfig`."""
    summary = import_catalog(cfg, out, overwrite=overwrite)
    return ImportResult(str(out), int(summary["count"]), dict(summary["splits"]), int(summary["rows"]),
                        float(summary["seconds"]),
                        {k: int(v) for k, v in summary.items() if k.startswith("skipped_") and v},
                        int(summary["missing_title"]), int(summary["text_only"]))


def run_import(job: ImportJob) -> ImportResult:
    return import_shards(resolve_import_config(job.preset, job.source or None), job.out, job.overwrite)


def import_main(argv: list[str]) -> int:
    ap = CommandParser(
        "mmrep data import",
        "catalogue CSV/JSONL + image folder -> one WebDataset shard set per split. The mapping comes from "
        "--preset, then --config FILE, then --import.KEY=VALUE overrides, then the flags.",
        sections={"import": ImportConfig},
        config_help="YAML mapping of the import keys at its top level (no `import:` section)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--csv", help="catalogue CSV file")
    src.add_argument("--jsonl", help="catalogue JSONL file (one product object per line)")
    src.add_argument("--wds", help="WebDataset / img2dataset shards (folder or .tar): each sample's .json fields, "
                                   "'txt' and '__key__' are columns; its images are the product's")
    ap.add_argument("--images", help="image folder (paths and patterns are relative to it)")
    ap.add_argument("--out", required=True, help="output folder (<out>/<split>/ shard sets + import.json)")
    ap.add_argument("--preset", choices=["fashion"], help="a known layout (fashion: Fashion Product Images Small)")
    ap.add_argument("--source", help="the preset's data folder (default: ../shared/data/<dataset> or $MMREP_DATA_DIR)")
    ap.add_argument("--id-col", help="id column / JSON field (dotted paths allowed; img2dataset: __key__ or yours)")
    ap.add_argument("--title-col")
    ap.add_argument("--description-col")
    ap.add_argument("--image-col", help="column with image path(s): 'a.jpg', 'a.jpg|b.jpg' or a JSON list")
    ap.add_argument("--image-pattern", help="image path from row fields, e.g. '{id}.jpg' or '{id}_*.jpg'")
    ap.add_argument("--category-cols", help="comma-separated, coarse -> fine")
    ap.add_argument("--attribute-cols", help="comma-separated; dotted paths reach nested JSON (attributes.size.eu), "
                                             "NAME=PATH names the attribute")
    ap.add_argument("--label-cols", help="comma-separated")
    ap.add_argument("--split-col")
    ap.add_argument("--splits-csv", help="CSV with the id column and 'split', joined on id")
    ap.add_argument("--default-split")
    ap.add_argument("--shard-size", type=int)
    ap.add_argument("--keep-text-only", action="store_true", default=None, help="keep rows without image files")
    ap.add_argument("--reencode", action="store_true", default=None, help="re-encode images as JPEG q95")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier import in --out")
    ap.add_argument("--allow-outside-images", action="store_true", default=None,
                    help="read image paths outside --images too (by default they are skipped and counted)")
    ap.add_argument("--strict", action="store_true", default=None,
                    help="fail on the first row with an undecodable image or a path outside --images")
    call = ap.invoke(argv)
    args = call.args
    cfg = resolve_import_config(
        args.preset, args.source, call.config, call.overrides,
        table=args.csv or args.jsonl or args.wds,
        format="csv" if args.csv else "jsonl" if args.jsonl else "wds" if args.wds else None,
        images=args.images, id_col=args.id_col, title_col=args.title_col, description_col=args.description_col,
        image_col=args.image_col, image_pattern=args.image_pattern, category_cols=_cols(args.category_cols),
        attribute_cols=_cols(args.attribute_cols), label_cols=_cols(args.label_cols), split_col=args.split_col,
        splits_csv=args.splits_csv, default_split=args.default_split, shard_size=args.shard_size,
        keep_text_only=args.keep_text_only, reencode=args.reencode,
        allow_outside_images=args.allow_outside_images, strict=args.strict)
    done = import_shards(cfg, args.out, args.overwrite)
    splits = ", ".join(f"{k} {v}" for k, v in done.splits.items())
    print(f"imported {done.count} products into {done.out} ({splits}) in {done.seconds} s")
    print(f"rows {done.rows}; skipped: {done.skipped or 'none'}; missing titles kept: {done.missing_title}; "
          f"text-only kept: {done.text_only}")
    return 0


def inspect_main(argv: list[str]) -> int:
    ap = CommandParser("mmrep data inspect", "counts, field coverage, images per item, image sizes, corrupt samples",
                       config_help=None)  # reads nothing but the shards: no config
    ap.add_argument("dir", help="a shard set (mmrep or img2dataset) or an import root with split folders")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--no-verify", action="store_true", help="read image headers only (faster; misses truncated images)")
    ap.add_argument("--limit", type=int, help="look at the first N samples of each set only")
    args = ap.invoke(argv).args
    from mmrep.data.inspect import format_report, inspect_shards

    report = inspect_shards(args.dir, verify=not args.no_verify, limit=args.limit)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print(format_report(report))
    return 0
