"""`mmrep eval mbe` and `mmrep eval image-search`.

    mmrep eval mbe --make-bench --from-shards /tmp/fashion_shards/test --out BENCH [--max-items N]
    mmrep eval mbe --make-bench --from-world WORLD [--split test] --out BENCH
    mmrep eval mbe --bench BENCH --encoder-config configs/model/tiny.yaml --encoder RUN/encoder --out REPORT
        (columns in command-line order; CONFIG@SEED gives a random-init column its own seed)
    mmrep eval image-search --encoder RUN/encoder --items SHARDS --query-set augment|crop|heldout --out REPORT
    mmrep eval image-search --queries-emb Q --gallery-emb G --gt gt.json [--distractors-emb D] --out REPORT
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmrep.cli_support import CommandParser, command_line
from mmrep.errors import MmrepError


class _EncoderSpec(argparse.Action):
    """--encoder / --encoder-config append to one list so report columns keep the command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        specs = list(getattr(namespace, "specs", None) or [])
        specs.append(("dir" if option_string == "--encoder" else "config", values))
        namespace.specs = specs


def _open_encoders(specs: Sequence[tuple[str, str]], seed: int, max_images: int) -> list:
    from mmrep.inference import open_encoder

    if not specs:
        raise MmrepError("no encoder: pass --encoder RUN/encoder and/or --encoder-config configs/model/tiny.yaml")
    handles = []
    for kind, value in specs:
        if kind == "dir":
            handles.append(open_encoder(path=value, max_images=max_images))
            continue
        path, _, suffix = value.rpartition("@") if "@" in value else (value, "", "")
        if suffix and not suffix.isdigit():
            raise MmrepError(f"--encoder-config {value!r}: the part after @ must be an integer seed (e.g. tiny.yaml@1)")
        handles.append(open_encoder(config=path, seed=int(suffix) if suffix else seed, max_images=max_images))
    names = [h.name for h in handles]
    for i, h in enumerate(handles):  # report columns need distinct names
        if names.count(h.name) > 1:
            h.name = f"{h.name} #{names[: i + 1].count(h.name)}"
    return handles


def _check_out(out: str | None, stem: str, overwrite: bool) -> Path:
    if not out:
        raise MmrepError("no report folder: pass --out DIR")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise MmrepError(f"--out {path} is a file; give a folder")
    if (path / f"{stem}.json").exists() and not overwrite:
        raise MmrepError(f"{path / (stem + '.json')} exists; pass --overwrite to replace it or choose another --out")
    return path


def _csv_list(text: str | None, default: Sequence[str]) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()] if text else list(default)


# ---------------------------------------------------------------------------------------------
# mbe


def mbe_parser() -> CommandParser:
    from mmrep.evaluation.mbe import MbeConfig

    p = CommandParser("mmrep eval mbe", "MBE2.0-protocol zero-shot evaluation", sections={"mbe": MbeConfig})
    p.add_argument("--make-bench", action="store_true", help="build a benchmark folder instead of evaluating")
    p.add_argument("--from-shards", help="(make-bench) a product shard set, e.g. /tmp/fashion_shards/test")
    p.add_argument("--from-world", help="(make-bench) a built-in world folder (mmrep data synth)")
    p.add_argument("--split", default="test", help="(make-bench, world) which split (default test)")
    p.add_argument("--max-items", type=int, default=0, help="(make-bench, shards) keep the first N items")
    p.add_argument("--classify", help="(make-bench) comma-separated classification fields")
    p.add_argument("--attributes", help="(make-bench) comma-separated attribute fields")
    p.add_argument("--name", default="", help="(make-bench) benchmark name")
    p.add_argument("--bench", help="benchmark folder to evaluate on")
    p.add_argument("--encoder", action=_EncoderSpec, help="encoder dir (repeatable: one report column each)")
    p.add_argument("--encoder-config", action=_EncoderSpec,
                   help="model config YAML: random-init baseline column (CONFIG@SEED picks its seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of random-init encoders without @SEED")
    p.add_argument("--items-emb", help="precomputed mm item embeddings (mmrep export of BENCH/items); one encoder only")
    p.add_argument("--out", help="report folder (report.json + report.md) / benchmark folder with --make-bench")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first corrupt sample or damaged shard instead of skipping and counting it")
    return p


@dataclass
class BenchJob:
    """`mmrep eval mbe --make-bench`: a benchmark folder from a product shard set or a built-in world."""

    out: str
    from_shards: str = ""
    from_world: str = ""
    split: str = "test"
    max_items: int = 0
    classify: str = ""  # comma-separated; empty = the source's defaults
    attributes: str = ""
    name: str = ""
    seed: int = 0
    overwrite: bool = False
    strict: bool = False

    def argv(self) -> list[str]:
        return command_line("eval mbe", flags={
            "make-bench": True, "from-shards": self.from_shards, "from-world": self.from_world,
            "split": self.split if self.from_world and self.split != "test" else None,
            "max-items": self.max_items or None, "classify": self.classify, "attributes": self.attributes,
            "name": self.name, "seed": self.seed or None, "out": self.out, "overwrite": self.overwrite,
            "strict": self.strict})


@dataclass
class BenchResult:
    name: str
    path: str
    counts: dict[str, Any]


def make_bench(job: BenchJob) -> BenchResult:
    from mmrep.evaluation import benchmark as bm

    if bool(job.from_shards) == bool(job.from_world):
        raise MmrepError("--make-bench needs exactly one of --from-shards DIR or --from-world DIR")
    if not job.out:
        raise MmrepError("--make-bench needs --out BENCH (the benchmark folder to write)")
    if job.from_shards:
        meta = bm.from_catalogue(job.from_shards, job.out, job.name, _csv_list(job.classify, bm.FASHION_CLASSIFICATION),
                                 _csv_list(job.attributes, bm.FASHION_ATTRIBUTES), job.max_items, job.seed,
                                 job.overwrite, strict=job.strict)
    else:
        meta = bm.from_world(job.from_world, job.out, job.split, job.name,
                             _csv_list(job.classify, bm.WORLD_CLASSIFICATION),
                             _csv_list(job.attributes, bm.WORLD_ATTRIBUTES), job.overwrite, strict=job.strict)
    return BenchResult(str(meta["name"]), str(job.out), dict(meta["counts"]))


@dataclass
class MbeJob:
    """`mmrep eval mbe --bench ...`: one report column per encoder, in order."""

    bench: str
    out: str
    encoders: list[tuple[str, str]] = field(default_factory=list)  # ("dir", RUN/encoder) | ("config", YAML[@SEED])
    seed: int = 0
    items_emb: str = ""
    overwrite: bool = False
    strict: bool = False
    mbe: Any = None  # MbeConfig (None: its defaults)

    def argv(self) -> list[str]:
        argv = ["eval", "mbe", "--bench", self.bench]
        for kind, value in self.encoders:
            argv += ["--encoder" if kind == "dir" else "--encoder-config", value]
        return argv + command_line("", flags={"seed": self.seed or None, "items-emb": self.items_emb, "out": self.out,
                                              "overwrite": self.overwrite, "strict": self.strict},
                                   sections={"mbe": self.mbe} if self.mbe is not None else None)


@dataclass
class MbeEncoderResult:
    name: str
    fingerprint: str
    embed_dim: int
    dim: int
    results: dict[str, Any]  # per task; `summary` holds the headline numbers (metric -> value)


@dataclass
class MbeReport:
    """What `report.json` holds."""

    benchmark: dict[str, Any]
    protocol: str
    encoders: list[MbeEncoderResult]
    seconds: float

    def summary(self, version: str) -> dict[str, float]:
        """The headline numbers of the encoder column named `version` (its name up to a "/")."""
        enc = next((e for e in self.encoders if e.name.split("/")[0] == version), None)
        return {k: v for k, v in (enc.results.get("summary", {}) if enc else {}).items() if v is not None}


def evaluate_mbe(job: MbeJob) -> MbeReport:
    """Evaluate every encoder on the benchmark; writes OUT/report.json, report.md and mbe.yaml."""
    from mmrep.config import save_resolved
    from mmrep.evaluation import benchmark as bm
    from mmrep.evaluation.mbe import MbeConfig, evaluate
    from mmrep.evaluation.report import mbe_markdown, write_report

    cfg = job.mbe if job.mbe is not None else MbeConfig()
    if not job.bench:
        raise MmrepError("pass --bench BENCH (or --make-bench to build one)")
    if job.items_emb and len(job.encoders) != 1:
        raise MmrepError("--items-emb holds one encoder's embeddings: pass exactly one --encoder with it")
    out = _check_out(job.out, "report", job.overwrite)
    bench = bm.load_benchmark(job.bench, strict=job.strict)
    handles = _open_encoders(job.encoders, job.seed, cfg.max_images)
    item_emb = None
    if job.items_emb:
        from mmrep.export.format import EmbeddingFormatError, load_embeddings

        try:
            ids, emb = load_embeddings(job.items_emb)
        except EmbeddingFormatError as e:
            raise MmrepError(str(e)) from None
        item_emb = (ids, emb)
    t0 = time.perf_counter()
    encoders = []
    for h in handles:
        print(f"evaluating {h.name} on {bench.name}")
        results = evaluate(h, bench, cfg, item_emb)
        encoders.append(MbeEncoderResult(h.name, h.fingerprint, h.embed_dim, cfg.dim or h.embed_dim, results))
    report = MbeReport({"name": bench.name, "path": str(bench.path), "counts": bench.meta.get("counts", {}),
                        "provenance": bench.meta.get("provenance", {})},
                       "MBE2.0", encoders, round(time.perf_counter() - t0, 2))
    write_report(out, dataclasses.asdict(report), mbe_markdown(dataclasses.asdict(report)))
    save_resolved(cfg, out, "mbe.yaml")
    return report


def parse_mbe(argv: list[str]) -> BenchJob | MbeJob:
    from mmrep.evaluation.mbe import MbeConfig
    from mmrep.export.cli import flags_of

    call = mbe_parser().invoke(argv)
    args = call.args
    cfg = call.build(MbeConfig, flags_of(MbeConfig, "mbe", args), section="mbe")
    if args.make_bench:
        return BenchJob(args.out or "", args.from_shards or "", args.from_world or "", args.split, args.max_items,
                        args.classify or "", args.attributes or "", args.name, args.seed, args.overwrite, args.strict)
    return MbeJob(args.bench or "", args.out or "", list(getattr(args, "specs", None) or []), args.seed,
                  args.items_emb or "", args.overwrite, args.strict, cfg)


def mbe_main(argv: list[str]) -> int:
    from mmrep.evaluation.report import mbe_markdown

    job = parse_mbe(argv)
    if isinstance(job, BenchJob):
        made = make_bench(job)
        print(f"wrote benchmark {made.name} to {made.path}: {json.dumps(made.counts)}")
        return 0
    report = evaluate_mbe(job)
    print(mbe_markdown(dataclasses.asdict(report)))
    out = Path(job.out)
    print(f"report: {out / 'report.json'}, {out / 'report.md'}")
    return 0


# ---------------------------------------------------------------------------------------------
# image search


def image_search_parser() -> CommandParser:
    from mmrep.evaluation.image_search import SearchConfig

    p = CommandParser("mmrep eval image-search", "query image -> item recall@K vs gallery size",
                      sections={"image_search": SearchConfig})
    p.add_argument("--queries-emb", help="query embeddings (an mmrep export folder)")
    p.add_argument("--gallery-emb", help="gallery item embeddings (an mmrep export folder)")
    p.add_argument("--gt", help="ground truth: JSON {query_id: [item_id, ...]} or CSV with columns query,item")
    p.add_argument("--distractors-emb", action="append", default=[], help="extra gallery embeddings (repeatable)")
    p.add_argument("--encoder", action=_EncoderSpec, help="encoder dir: embed queries (and the gallery) here")
    p.add_argument("--encoder-config", action=_EncoderSpec, help="model config YAML (random-init encoder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--items", help="product shard set the query images are built from (with --encoder)")
    p.add_argument("--query-set", choices=["augment", "crop", "heldout"], default="augment",
                   help="augment: user-photo-like view; crop: core-region crop; heldout: an item's last image, "
                        "left out of its gallery entry (items with >= 2 images)")
    p.add_argument("--gallery-view", choices=["mm", "image"], default="mm")
    p.add_argument("--max-items", type=int, default=0)
    p.add_argument("--sizes", help="comma-separated nested gallery sizes (default: ground truth, 1k, 10k, ... all)")
    p.add_argument("--ks", default="1,5,10,50,100", help="recall@K cut-offs (K <= 100 by default k)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--strict", action="store_true",
                   help="fail on the first corrupt item in --items instead of skipping and counting it")
    p.add_argument("--dim", type=int, default=0, help="Matryoshka dimension for encoder embeddings")
    p.add_argument("--query-chunk", type=int, help="queries scored per faiss call (default 4096)")
    p.add_argument("--gallery-chunk", type=int, help="gallery rows per faiss index (default 131072)")
    p.add_argument("--out", help="report folder (image_search.json + .md)")
    p.add_argument("--overwrite", action="store_true")
    return p


def read_ground_truth(path: str | Path) -> dict[str, list[str]]:
    """{query_id: [item ids]} from JSON (a mapping) or CSV (columns query,item; one row per pair)."""
    path = Path(path)
    if not path.is_file():
        raise MmrepError(f"ground-truth file not found: {path} (check --gt)")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise MmrepError(f"{path} is not valid JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise MmrepError(f"{path} must map each query id to a list of item ids")
        return {str(k): [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in data.items()}
    gt: dict[str, list[str]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"query", "item"} <= set(reader.fieldnames):
            raise MmrepError(f"{path} needs a header with columns query,item")
        for row in reader:
            gt.setdefault(row["query"], []).append(row["item"])
    return gt


def _load_emb(path: str, what: str):
    from mmrep.export.format import EmbeddingFormatError, load_embeddings, read_index

    try:
        return read_index(path), load_embeddings(path, np.float32)
    except EmbeddingFormatError as e:
        raise MmrepError(f"{what}: {e}") from None


def _stream_gallery(gallery: list[str], relevant: set[str]):
    """Ground-truth rows first, then the rest: one pass over the parts (see `export_gallery`)."""
    from mmrep.evaluation.image_search import export_gallery
    from mmrep.export.format import EmbeddingFormatError

    try:
        g = export_gallery(gallery, relevant)
    except EmbeddingFormatError as e:
        if "differ in dimension" in str(e):
            raise MmrepError(f"gallery / distractor {e}; use one encoder and --dim") from None
        raise MmrepError(f"gallery: {e}") from None
    return g.relevant_ids, g.dim, g.total, g.chunks


@dataclass
class ImageSearchJob:
    """`mmrep eval image-search`: embeddings files (queries, gallery, ground truth) or one encoder + --items."""

    out: str
    encoders: list[tuple[str, str]] = field(default_factory=list)  # at most one ("dir" | "config", value)
    items: str = ""
    query_set: str = "augment"
    gallery_view: str = "mm"
    queries_emb: str = ""
    gallery_emb: str = ""
    gt: str = ""
    distractors_emb: list[str] = field(default_factory=list)
    seed: int = 0
    max_items: int = 0
    sizes: str = ""  # comma-separated; empty = ground truth, 1k, 10k, ... all
    ks: str = "1,5,10,50,100"
    batch_size: int = 64
    dim: int = 0
    strict: bool = False
    overwrite: bool = False
    search: Any = None  # SearchConfig (None: its defaults; k follows --ks)

    def argv(self) -> list[str]:
        argv = ["eval", "image-search"]
        for kind, value in self.encoders:
            argv += ["--encoder" if kind == "dir" else "--encoder-config", value]
        defaults = ImageSearchJob("")
        changed = lambda k: getattr(self, k) if getattr(self, k) != getattr(defaults, k) else None  # noqa: E731
        search = None
        if self.search is not None:
            search = dataclasses.replace(self.search, k=type(self.search)().k)  # k comes from --ks
        return argv + command_line("", flags={
            "items": self.items, "query-set": changed("query_set"), "gallery-view": changed("gallery_view"),
            "queries-emb": self.queries_emb, "gallery-emb": self.gallery_emb, "gt": self.gt,
            "distractors-emb": self.distractors_emb, "seed": changed("seed"), "max-items": changed("max_items"),
            "sizes": self.sizes, "ks": changed("ks"), "batch-size": changed("batch_size"), "dim": changed("dim"),
            "out": self.out, "overwrite": self.overwrite, "strict": self.strict},
            sections={"image_search": search} if search is not None else None)


def image_search(job: ImageSearchJob):
    """Recall@K per nested gallery size; writes OUT/image_search.json, .md and image_search.yaml.
    Returns the `ImageSearchReport`."""
    from mmrep.config import save_resolved
    from mmrep.evaluation.image_search import SearchConfig, default_sizes, evaluate_embeddings
    from mmrep.evaluation.report import write_report

    try:
        ks = sorted({int(k) for k in _csv_list(job.ks, [])})
        sizes = [int(s) for s in _csv_list(job.sizes, [])]
    except ValueError:
        raise MmrepError("--ks and --sizes take comma-separated integers, e.g. --ks 1,10,100") from None
    if not ks or ks[0] < 1:
        raise MmrepError("--ks must list positive integers")
    out = _check_out(job.out, "image_search", job.overwrite)
    scfg = dataclasses.replace(job.search if job.search is not None else SearchConfig(), k=max(ks))
    if job.encoders:
        if len(job.encoders) != 1:
            raise MmrepError("image-search evaluates one encoder at a time: pass one --encoder or --encoder-config")
        q_emb, positives, gallery, total, n_rel, source = _encoder_queries(job, job.encoders[0])
    else:
        q_emb, positives, gallery, total, n_rel, source = _file_queries(job)
    sizes = sorted(set(min(s, total) for s in (sizes or default_sizes(total, n_rel))))
    if sizes and sizes[0] < n_rel:
        raise MmrepError(f"gallery size {sizes[0]} is smaller than the {n_rel} ground-truth items; every size "
                         "must hold them (they come first)")
    report = evaluate_embeddings(q_emb, gallery, positives, scfg, sizes, ks)
    report.source = source | {"sizes": sizes, "ks": ks}
    write_report(out, report.to_dict(), report.markdown(), stem="image_search")
    save_resolved(scfg, out, "image_search.yaml")
    return report


def parse_image_search(argv: list[str]) -> ImageSearchJob:
    from mmrep.evaluation.image_search import SearchConfig

    call = image_search_parser().invoke(argv)
    args = call.args
    search = call.build(SearchConfig, {"image_search.query_chunk": args.query_chunk,
                                       "image_search.gallery_chunk": args.gallery_chunk}, section="image_search")
    return ImageSearchJob(args.out or "", list(getattr(args, "specs", None) or []), args.items or "", args.query_set,
                          args.gallery_view, args.queries_emb or "", args.gallery_emb or "", args.gt or "",
                          list(args.distractors_emb), args.seed, args.max_items, args.sizes or "", args.ks,
                          args.batch_size, args.dim, args.strict, args.overwrite, search)


def image_search_main(argv: list[str]) -> int:
    print(image_search(parse_image_search(argv)).markdown())
    return 0


def _file_queries(args: ImageSearchJob):
    """Queries, ground truth and a streamed gallery from export folders (--queries-emb/--gallery-emb/--gt)."""
    if not (args.queries_emb and args.gallery_emb and args.gt):
        raise MmrepError("pass --queries-emb, --gallery-emb and --gt (or --encoder with --items)")
    _, (q_ids, q_emb) = _load_emb(args.queries_emb, "queries")
    gt = read_ground_truth(args.gt)
    paths = [args.gallery_emb, *args.distractors_emb]
    rel_ids, dim, total, chunks = _stream_gallery(paths, {i for q in q_ids for i in gt.get(q, [])})
    if q_emb.shape[1] != dim:
        raise MmrepError(f"query embeddings are {q_emb.shape[1]}-d but the gallery is {dim}-d; export both with the "
                         "same encoder and --dim")
    where = {i: j for j, i in enumerate(rel_ids)}
    keep, positives = [], []
    for j, q in enumerate(q_ids):
        pos = sorted(where[i] for i in gt.get(q, []) if i in where)
        if pos:
            keep.append(j)
            positives.append(pos)
    if not positives:
        raise MmrepError("no query has a ground-truth item in the gallery: check --gt ids against the exports")
    source = {"queries": args.queries_emb, "gallery": args.gallery_emb, "distractors": args.distractors_emb,
              "dropped_queries": len(q_ids) - len(keep)}
    return q_emb[keep], positives, chunks(), total, len(rel_ids), source


def _encoder_queries(args: ImageSearchJob, spec: tuple[str, str]):
    """Queries built from a product shard set's images + the gallery (computed or --gallery-emb)."""
    from mmrep.data.readers import SkipStats, iter_products
    from mmrep.evaluation.benchmark import user_photo
    from mmrep.inference import check_dim, embed_records
    from mmrep.records import Product, Query

    if not args.items:
        raise MmrepError("--encoder needs --items SHARDS (the product shard set to build query images from)")
    (handle,) = _open_encoders([spec], args.seed, 4)
    items: list[Product] = []
    skipped = SkipStats()
    for p in iter_products(args.items, args.strict, skipped, verify_images=True):
        if p.images and (args.query_set != "heldout" or len(p.images) >= 2):
            items.append(p)
            if args.max_items and len(items) >= args.max_items:
                break
    skipped.report(f"image-search {args.items}")
    if not items:
        need = "two or more images" if args.query_set == "heldout" else "an image"
        raise MmrepError(f"no item in {args.items} has {need}: nothing to build queries from")
    queries, gallery_items = [], []
    if args.query_set == "crop":
        from mmrep.model.crop import CoreRegionCrop

        crop = CoreRegionCrop()
    for k, p in enumerate(items):
        if args.query_set == "heldout":
            img, ext = p.images[-1], p.image_exts[-1]
            gallery_items.append(Product(id=p.id, title=p.title, description=p.description, category=p.category,
                                         attributes=p.attributes, images=p.images[:-1], image_exts=p.image_exts[:-1]))
        else:
            img, ext = (crop(p.images[0]), "jpg") if args.query_set == "crop" else (user_photo(p.images[0], k), "jpg")
            gallery_items.append(p)
        queries.append(Query(id=f"q-{p.id}", images=[img], image_exts=[ext], item_ids=[p.id]))
    print(f"encoding {len(queries)} {args.query_set} query images with {handle.name}")
    q_emb = embed_records(handle, queries, "image", args.batch_size, args.dim)
    if args.gallery_emb:
        if args.query_set == "heldout":
            raise MmrepError("--query-set heldout leaves the query image out of the gallery: it cannot use --gallery-emb")
        meta, (ids, g_emb) = _load_emb(args.gallery_emb, "gallery")
        check_dim(int(meta["dim"]), handle, args.dim, f"gallery embeddings in {args.gallery_emb}")
        where = {i: j for j, i in enumerate(ids)}
        missing = [p.id for p in items if p.id not in where]
        if missing:
            raise MmrepError(f"--gallery-emb lacks item {missing[0]!r} of --items; export the same shard set")
        order = [where[p.id] for p in items]
        rest = np.setdiff1d(np.arange(len(ids)), order)
        gallery_arrays = [g_emb[order], g_emb[rest]]
    else:
        print(f"encoding {len(gallery_items)} gallery items ({args.gallery_view})")
        gallery_arrays = [embed_records(handle, gallery_items, args.gallery_view, args.batch_size, args.dim)]
    extra = []
    for d in args.distractors_emb:
        meta, (_, emb) = _load_emb(d, "distractors")
        check_dim(int(meta["dim"]), handle, args.dim, f"distractor embeddings in {d}")
        extra.append(emb)
    gallery = gallery_arrays + extra
    total = sum(a.shape[0] for a in gallery)
    positives = [[k] for k in range(len(items))]
    source = {"encoder": handle.name, "items": args.items, "query_set": args.query_set, "gallery_view": args.gallery_view}
    return q_emb, positives, iter(gallery), total, len(items), source
