"""Embedding export: every item (or query) of a shard set -> sharded safetensors files + index.json.

Embedding itself is `mmrep.inference` (the Python API); this module plans, runs and verifies an export.

Layout: see `mmrep.export.format` (and docs/benchmark-layout.md). Work is split into deterministic
parts: part (s, c) = rows [c*part_size, (c+1)*part_size) of input shard s, by raw sample position
(from the shard set's manifest counts; shard sets without a manifest get one part per shard). Part i
goes to rank i % world_size, so every input row is read by exactly one rank, and the part files do
not depend on the world size (a 2-rank export equals a 1-rank one). Each part is written to a temp
file and renamed; a rerun skips parts whose file already holds the expected rows from the same
encoder/settings. Rank 0 verifies the total count and id uniqueness, then writes index.json last.

Inputs: product shard sets (items), query shard sets (`<key>.query.json` + `q.N.ext` images, written
by `mmrep eval mbe --make-bench`) and triplet shard sets (their queries; row id = the triplet id).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np

from mmrep import distributed
from mmrep.errors import MmrepError
from mmrep.export.format import FAISS_FILE, FORMAT, INDEX, TENSOR, VERSION, part_name, read_part, read_part_meta
from mmrep.fsutil import MARKER, atomic_write, has_marker, write_marker
from mmrep.inference import EncoderHandle, View, embed_prepared, has_view, open_encoder, prepare_record
from mmrep.records import Product, Query, Triplet

def as_exportable(record: Product | Query | Triplet, kind: str) -> Product | Query:
    """The record to embed for `kind` ("items" or "queries")."""
    if isinstance(record, Triplet):
        if kind == "items":
            raise MmrepError("this is a triplet shard set: export its queries with --kind queries, "
                             "or export items from a product shard set (items/<split>)")
        return Query(id=record.id, text=record.query.text, images=record.query.images,
                     image_exts=record.query.image_exts, item_ids=record.query.item_ids)
    if kind == "items" and not isinstance(record, Product):
        raise MmrepError("this is a query shard set: pass --kind queries")
    if kind == "queries" and isinstance(record, Product):
        raise MmrepError("this is a product shard set: pass --kind items (or a query / triplet shard set)")
    return record


# ---------------------------------------------------------------------------------------------
# export


@dataclass
class ExportConfig:
    """The `export` section (`mmrep export --config ... --export.key=value`, or the flags)."""

    encoder: str = ""  # encoder dir written by training (RUN/encoder)
    shards: str = ""  # a shard-set folder: products (items), queries or triplets (queries)
    out: str = ""
    kind: Literal["items", "queries"] = "items"
    view: Literal["auto", "mm", "both", "text", "image"] = "auto"  # auto = mm; "both" = mm
    dim: int = 0  # Matryoshka dimension (0 = the encoder's full embed_dim)
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int = 64
    part_size: int = 4096  # input rows per part file
    max_images: int = 4  # images per item fed to the encoder
    faiss: Literal["none", "flat", "ivf", "hnsw"] = "none"
    ivf_lists: int = 0  # IVF cells (0 = about 4 * sqrt(count))
    target_recall: float = 0.95  # ivf / hnsw: the saved nprobe / efSearch reaches this recall@10 vs exact
    hnsw_m: int = 32  # hnsw: graph degree
    format: Literal["safetensors", "parquet"] = "safetensors"  # parquet: also embeddings.parquet (id, embedding)
    overwrite: bool = False  # replace a finished export / parts from another encoder
    strict: bool = False  # fail on a corrupt sample instead of skipping (and counting) it
    progress: bool = True
    device: str = "auto"  # "auto": cuda:<LOCAL_RANK> when available, else cpu

    def __post_init__(self) -> None:
        for key in ("batch_size", "part_size", "max_images"):
            if getattr(self, key) < (0 if key == "max_images" else 1):
                raise MmrepError(f"config key 'export.{key}' must be positive, got {getattr(self, key)}")
        if self.dim < 0 or self.ivf_lists < 0:
            raise MmrepError("config keys 'export.dim' and 'export.ivf_lists' must be >= 0")
        if not 0 < self.target_recall <= 1 or self.hnsw_m < 2:
            raise MmrepError("config key 'export.target_recall' must be in (0, 1] and 'export.hnsw_m' >= 2")

    @property
    def resolved_view(self) -> View:
        return "mm" if self.view in ("auto", "both") else self.view  # type: ignore[return-value]


@dataclass
class Part:
    index: int  # position in the plan (decides the rank)
    shard: int
    chunk: int
    url: str
    start: int
    stop: int | None  # None: to the end of the shard (count unknown)

    @property
    def name(self) -> str:
        return part_name(self.shard, self.chunk)

    @property
    def expected(self) -> int | None:
        return None if self.stop is None else self.stop - self.start


def plan_parts(shards: str | Path, part_size: int) -> list[Part]:
    """Deterministic parts of a shard set (see the module docstring)."""
    from mmrep.data.readers import resolve_shards
    from mmrep.data.shards import MANIFEST

    urls = resolve_shards(str(shards))
    counts: dict[str, int] = {}
    for d in {Path(u).parent for u in urls}:
        if (d / MANIFEST).is_file():
            for s in json.loads((d / MANIFEST).read_text()).get("shards", []):
                counts[str(d / s["name"])] = int(s["count"])
    parts: list[Part] = []
    for s, url in enumerate(urls):
        n = counts.get(str(Path(url)))
        if n is None:
            parts.append(Part(len(parts), s, 0, url, 0, None))
            continue
        for c, start in enumerate(range(0, n, part_size)):
            parts.append(Part(len(parts), s, c, url, start, min(start + part_size, n)))
    return parts


def _settings(cfg: ExportConfig, handle: EncoderHandle) -> dict[str, str]:
    """What a part's contents depend on: a finished part is reused only when all of these match."""
    return {"fingerprint": handle.fingerprint, "kind": cfg.kind, "view": cfg.resolved_view,
            "dim": str(cfg.dim or handle.embed_dim), "dtype": cfg.dtype, "max_images": str(cfg.max_images),
            "part_size": str(cfg.part_size)}


def part_is_done(file: Path, part: Part, settings: dict[str, str]) -> bool:
    """True when `file` is a complete part from the same settings; raises if it is from another encoder."""
    if not file.is_file():
        return False
    try:
        meta = read_part_meta(file)
    except Exception:  # an unreadable file under a final name cannot come from us; redo it
        return False
    if meta.get("fingerprint") != settings["fingerprint"]:
        raise MmrepError(f"{file.parent} holds parts from another encoder; pass --overwrite to replace them or use a new --out")
    if any(meta.get(k) != v for k, v in settings.items()):
        raise MmrepError(f"{file.parent} holds parts exported with other settings "
                         f"({', '.join(f'{k}={meta.get(k)}' for k in settings if meta.get(k) != settings[k])}); "
                         "pass --overwrite or use a new --out")
    if meta.get("source") != str(part.url) or meta.get("start") != str(part.start):
        return False  # another input (or the data moved): recompute
    if part.expected is None:
        return True
    return int(meta.get("count", -1)) + int(meta.get("skipped", -1)) == part.expected


def write_part(file: Path, ids: list[str], emb: np.ndarray, meta: dict[str, str]) -> None:
    """Atomic: serialise to memory, write a temp file, rename."""
    from safetensors.numpy import save

    data = save({TENSOR: np.ascontiguousarray(emb)}, metadata=meta | {"ids": json.dumps(ids), "count": str(len(ids))})
    with atomic_write(file, "wb") as f:
        f.write(data)


# What an export writes (and so all that --overwrite may delete): temp files are `.<name>.<random>.tmp`.
OWN_FILES = (INDEX, FAISS_FILE, "export.yaml", MARKER, "part-*.safetensors", f".{INDEX}.*.tmp", f".{FAISS_FILE}.tmp",
             ".part-*.tmp", ".export.yaml.*.tmp")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to clobber: a finished export needs --overwrite; a foreign non-empty folder is refused; only the
    export's own files are ever deleted (a user's notes beside them stay)."""
    if out.exists() and not out.is_dir():
        raise MmrepError(f"--out {out} is a file; give a folder")
    if not out.exists():
        out.mkdir(parents=True)
        write_marker(out, "export")
        return
    ours = has_marker(out) or (out / INDEX).exists() or any(out.glob("part-*.safetensors")) or \
        (out / "export.yaml").exists()
    if any(out.iterdir()) and not ours:
        raise MmrepError(f"--out {out} is a non-empty folder that is not an mmrep export; choose another path")
    if (out / INDEX).exists() and not overwrite:
        raise MmrepError(f"{out} already holds a finished export; pass --overwrite to replace it")
    # With --overwrite every file of ours goes; otherwise only temp files of a killed run (SIGKILL skips
    # atomic_write's cleanup), which are never visible as parts.
    for pattern in OWN_FILES if overwrite else [p for p in OWN_FILES if p.endswith(".tmp")]:
        for p in out.glob(pattern):
            if p.is_file() and p.name != MARKER:
                p.unlink()
    write_marker(out, "export")


def export(cfg: ExportConfig, handle: EncoderHandle | None = None) -> dict[str, Any]:
    """Run (or resume) an export on this rank; rank 0 returns the index.json content (others: {})."""
    from mmrep.config import save_resolved

    if not cfg.shards:
        raise MmrepError("no input shard set: pass --shards DIR (a products, queries or triplets shard set)")
    if not cfg.out:
        raise MmrepError("no output folder: pass --out DIR")
    if handle is None:
        if not cfg.encoder:
            raise MmrepError("no encoder: pass --encoder RUN/encoder")
        handle = open_encoder(cfg.encoder, max_images=cfg.max_images, device=cfg.device)
    if cfg.dim and cfg.dim > handle.embed_dim:
        raise MmrepError(f"--dim {cfg.dim} exceeds the encoder's embedding size {handle.embed_dim}")
    out = Path(cfg.out)
    parts = plan_parts(cfg.shards, cfg.part_size)
    rank, world = distributed.init_gloo_from_launcher()
    if rank == 0:
        _prepare_out(out, cfg.overwrite)
        save_resolved(cfg, out, "export.yaml")
    distributed.barrier()
    settings = _settings(cfg, handle)
    mine = [p for p in parts if p.index % world == rank]
    todo = [p for p in mine if not part_is_done(out / p.name, p, settings)]
    _export_parts(cfg, handle, todo, out, settings, show=cfg.progress and rank == 0,
                  reused=len(mine) - len(todo))
    distributed.barrier()
    index = finalize(cfg, handle, parts, out, settings) if rank == 0 else {}
    distributed.barrier()
    return index


def _export_parts(cfg: ExportConfig, handle: EncoderHandle, todo: list[Part], out: Path, settings: dict[str, str],
                  show: bool, reused: int) -> None:
    """Embed and write `todo`. Reading + decoding runs in a background thread one batch ahead of the
    forward pass, and a part holds only its embeddings: memory is bounded by the batch size and
    part_size, never by the number of items."""
    from tqdm import tqdm

    from mmrep.data.readers import SkipStats, _Skipper

    stats = SkipStats()
    skipper = _Skipper(stats, cfg.strict)
    view = cfg.resolved_view
    known = [p.expected for p in todo]
    total = sum(known) if all(k is not None for k in known) else None
    bar = tqdm(total=total, unit="item", desc=f"export ({reused} parts reused)", disable=not show, dynamic_ncols=True)
    t0, done = time.perf_counter(), 0
    ids: list[str] = []
    embs: list[np.ndarray] = []
    dtype = np.float16 if cfg.dtype == "float16" else np.float32
    for part, batch, skipped in _prefetch(_prepared_batches(cfg, handle, todo, view, bar, skipper), depth=2):
        if batch:
            embs.append(embed_prepared(handle, batch, view, cfg.dim).astype(dtype))
            ids += [it.id for it in batch]
            done += len(batch)
        if skipped is None:
            continue
        emb = np.concatenate(embs) if embs else np.zeros((0, cfg.dim or handle.embed_dim), dtype=dtype)
        write_part(out / part.name, ids, emb, settings | {
            "format": FORMAT, "version": str(VERSION), "part": part.name, "skipped": str(skipped),
            "source": str(part.url), "start": str(part.start)})
        ids, embs = [], []
    bar.close()
    rank, world = distributed.launcher_rank_world()
    stats.report(f"export {cfg.shards}" + (f" (rank {rank})" if world > 1 else ""))
    if show and done:
        dt = time.perf_counter() - t0
        print(f"exported {done} rows in {dt:.1f} s ({done / max(dt, 1e-9):.0f} items/s) on this rank")


def _prepared_batches(cfg: ExportConfig, handle: EncoderHandle, todo: list[Part], view: View,
                      bar, skipper) -> Iterator[tuple[Part, list, int | None]]:
    """Read + decode the parts' rows into batches: (part, prepared batch, None) while a part fills,
    then (part, last batch, skipped count) when it is complete. Corrupt samples and damaged shards are
    skipped and counted by `skipper` (which raises in strict mode)."""
    from mmrep.data.readers import decode_record, iter_raw
    from mmrep.data.transforms import CorruptSample

    by_url: dict[str, list[Part]] = {}
    for p in todo:
        by_url.setdefault(p.url, []).append(p)
    for url, url_parts in by_url.items():
        url_parts.sort(key=lambda p: p.start)
        pending = iter(url_parts)
        part = next(pending)
        batch: list = []
        rows, skipped = 0, 0  # rows of the current part kept / skipped so far

        shard_stop = url_parts[-1].stop
        for pos, sample in enumerate(iter_raw(url, skipper, shard_stop)):
            while part is not None and part.stop is not None and pos >= part.stop:
                yield part, batch, skipped
                batch, rows, skipped = [], 0, 0
                part = next(pending, None)
            if part is None:
                break
            if pos < part.start:
                continue
            try:
                record = as_exportable(decode_record(sample), cfg.kind)
                if not has_view(record, view):
                    raise CorruptSample(f"{record.id} has no {view} modality", key=record.id, reason="empty_sample",
                                        detail=f"no {view} modality to embed")
                # Decoded per sample so that a corrupt image skips its sample instead of failing a batch.
                batch.append(prepare_record(handle, record))
                rows += 1
            except CorruptSample as e:
                skipper.skip(e.reason, url, str(sample.get("__key__", "")), e.detail)  # raises when strict
                skipped += 1
            bar.update(1)
            if len(batch) == cfg.batch_size:
                yield part, batch, None
                batch = []
        while part is not None:  # the shard ended: flush what remains
            if part.stop is not None and part.start + rows + skipped < part.stop:
                # a damaged shard (counted by the reader): its unread rows are skipped rows of their parts
                skipped = part.stop - part.start - rows
            yield part, batch, skipped
            batch, rows, skipped = [], 0, 0
            part = next(pending, None)


def _prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Iterate `items` in a background thread, up to `depth` results ahead of the consumer.

    Decoding (PIL, which releases the GIL) then overlaps the forward pass. The producer's
    exceptions are re-raised here; if the consumer stops early, the producer stops at its next item.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(msg: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(msg, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in items:
                if not put(("item", x)):
                    return
            put(("done", None))
        except BaseException as e:  # handed to the consumer
            put(("error", e))

    thread = threading.Thread(target=run, name="mmrep-export-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "item":
                yield x
            elif kind == "done":
                return
            else:
                raise x
    finally:
        stop.set()
        thread.join()


def finalize(cfg: ExportConfig, handle: EncoderHandle, parts: list[Part], out: Path, settings: dict[str, str]) -> dict:
    """Verify every part (present, expected count, ids unique across the export), faiss, index.json last."""
    seen: set[str] = set()
    entries, total, skipped = [], 0, 0
    for p in parts:
        file = out / p.name
        if not part_is_done(file, p, settings):
            raise MmrepError(f"part {file} is missing or incomplete after export (a rank failed?); rerun to resume")
        meta = read_part_meta(file)
        ids = json.loads(meta["ids"])
        dup = next((i for i in ids if i in seen), None)
        if dup is not None or len(set(ids)) != len(ids):
            dup = dup if dup is not None else next(i for i in ids if ids.count(i) > 1)
            raise MmrepError(f"id {dup!r} occurs more than once in {cfg.shards}; ids must be unique for an export")
        seen.update(ids)
        entries.append({"name": p.name, "count": len(ids)})
        total += len(ids)
        skipped += int(meta.get("skipped", 0))
    expected = sum(p.expected for p in parts) if all(p.expected is not None for p in parts) else None
    if expected is not None and total + skipped != expected:
        raise MmrepError(f"export holds {total} rows + {skipped} skipped but the shard set has {expected}; rerun with --overwrite")
    if total == 0:
        raise MmrepError(f"nothing to export: {cfg.shards} has no usable {cfg.kind}")
    dim = cfg.dim or handle.embed_dim
    faiss_name, search = build_faiss(out, [e["name"] for e in entries], cfg, dim) if cfg.faiss != "none" else (None, None)
    if cfg.format == "parquet":
        from mmrep.export.parquet import PARQUET_FILE, parts_to_parquet

        parts_to_parquet(out, [e["name"] for e in entries], out / PARQUET_FILE)
    index = {
        "format": FORMAT, "version": VERSION, "kind": cfg.kind, "view": cfg.resolved_view, "dim": dim,
        "dtype": cfg.dtype, "count": total, "skipped": skipped, "normalized": True, "parts": entries,
        "encoder": {"name": handle.name, "path": cfg.encoder, "fingerprint": handle.fingerprint,
                    "embed_dim": handle.embed_dim},
        "source": str(cfg.shards), "faiss": faiss_name, "faiss_type": cfg.faiss if faiss_name else None,
        "faiss_search": search, "parquet": "embeddings.parquet" if cfg.format == "parquet" else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_write(out / INDEX, "w") as f:
        json.dump(index, f, indent=1)
    return index


def build_faiss(out: Path, names: list[str], cfg: ExportConfig, dim: int) -> tuple[str, dict[str, Any]]:
    """An inner-product faiss index over every part (row order = part order), written atomically;
    -> (file name, its search setting and measured recall@10 vs exact)."""
    import faiss

    from mmrep.export.faiss_index import build_index

    chunks = [read_part(out / n)[1].astype(np.float32) for n in names]
    index, report = build_index(np.concatenate(chunks), cfg.faiss, cfg.ivf_lists, cfg.target_recall, cfg.hnsw_m)
    print(report.line(), flush=True)
    tmp = out / f".{FAISS_FILE}.tmp"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, out / FAISS_FILE)
    return FAISS_FILE, dataclasses.asdict(report)


__all__ = ["ExportConfig", "Part", "export", "finalize", "plan_parts", "save_embedding_parts", "save_embeddings"]


def save_embeddings(out: str | Path, ids: Sequence[str], emb: np.ndarray, part_size: int = 100_000,
                    kind: str = "items", name: str = "arrays", fingerprint: str = "none", overwrite: bool = False) -> dict:
    """Write precomputed (N, D) embeddings + ids in the export format (e.g. synthetic or third-party vectors)."""
    if len(ids) != emb.shape[0]:
        raise MmrepError("save_embeddings needs one id per embedding row")
    chunks = ((ids[s : s + part_size], emb[s : s + part_size]) for s in range(0, len(ids), part_size))
    return save_embedding_parts(out, chunks, kind, name, fingerprint, overwrite)


def save_embedding_parts(out: str | Path, chunks: Iterable[tuple[Sequence[str], np.ndarray]], kind: str = "items",
                         name: str = "arrays", fingerprint: str = "none", overwrite: bool = False) -> dict:
    """Write (ids, (n_i, D)) chunks as parts + index.json (last), never holding more than one chunk."""
    out = Path(out)
    _prepare_out(out, overwrite)
    seen: set[str] = set()
    entries, dim, dtype = [], None, "float32"
    for c, (chunk_ids, emb) in enumerate(chunks):
        chunk_ids = [str(i) for i in chunk_ids]
        if len(chunk_ids) != emb.shape[0]:
            raise MmrepError("save_embedding_parts: a chunk has a different number of ids and rows")
        if seen.intersection(chunk_ids) or len(set(chunk_ids)) != len(chunk_ids):
            raise MmrepError("save_embedding_parts: ids must be unique")
        seen.update(chunk_ids)
        dtype = "float16" if emb.dtype == np.float16 else "float32"
        if dim is not None and emb.shape[1] != dim:
            raise MmrepError("save_embedding_parts: chunks differ in dimension")
        dim = int(emb.shape[1])
        name_c = part_name(0, c)
        write_part(out / name_c, chunk_ids, emb.astype(dtype, copy=False),
                   {"format": FORMAT, "version": str(VERSION), "fingerprint": fingerprint, "kind": kind,
                    "dim": str(dim), "dtype": dtype, "skipped": "0"})
        entries.append({"name": name_c, "count": len(chunk_ids)})
    if dim is None:
        raise MmrepError("save_embedding_parts: nothing to write")
    index = {"format": FORMAT, "version": VERSION, "kind": kind, "view": "mm", "dim": dim, "dtype": dtype,
             "count": len(seen), "skipped": 0, "normalized": False, "parts": entries,
             "encoder": {"name": name, "fingerprint": fingerprint}, "faiss": None}
    with atomic_write(out / INDEX, "w") as f:
        json.dump(index, f, indent=1)
    return index
