"""Reading shard sets: sample decoding (mmrep and img2dataset layouts) and webdataset loaders.

Pipelines are explicit webdataset stage lists, read top to bottom:
    training:   shard list -> [shard shuffle -> split by rank -> split by worker | resample per
                (rank, worker)] -> tar -> samples -> shuffle buffer -> decode -> batch [-> epoch cut]
    evaluation: shard list -> split by rank/worker (enough shards) or keep sample i on
                (rank, worker) i mod total -> tar -> samples -> decode -> batch (partial last batch)
Corrupt samples (truncated tar, unreadable shard, non-image bytes, bad JSON, missing fields, nothing
to encode) are skipped and counted in a `SkipStats` shared by all workers (each skip is also logged
by its worker with shard and key); `strict=True` fails on the first one naming shard and key.
Evaluation in "sample" mode reads every shard in every (rank, worker) and keeps its residue class:
exact, but I/O grows with ranks x workers, so write at least ranks x workers shards for big sets.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import random
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import torch
import webdataset as wds

from mmrep.data.collate import Collator, PreparedItem, PreparedTriplet
from mmrep.data.shards import MANIFEST, read_manifest, shard_paths
from mmrep.data.transforms import CorruptSample, ImageAugment
from mmrep.errors import MmrepError
from mmrep.records import IMAGE_EXTS, PRODUCT_EXT, QUERY_EXT, TRIPLET_EXT, Product, Query, Triplet

log = logging.getLogger(__name__)

# img2dataset bookkeeping fields: not product attributes.
I2D_DROP = {"url", "key", "status", "error_message", "width", "height", "exif", "sha256", "md5", "caption"}


@dataclass
class DataConfig:
    """The `data` config section: where shards are and how they are batched."""

    shards: str = ""  # a shard-set folder (manifest.json or img2dataset *.tar), or a .tar file
    batch_size: int = 32
    num_workers: int = 2
    max_images: int = 4  # images per item kept (the first ones)
    shuffle_buffer: int = 1000  # samples; 0 disables sample shuffling
    resampled: bool = False  # sample shards with replacement; every rank yields epoch_length samples
    epoch_length: int = 0  # samples per rank per epoch in resampled mode (0: dataset size / world size)
    strict: bool = False  # fail on the first corrupt sample instead of skipping it
    seed: int = 0
    eval_split: Literal["auto", "shard", "sample"] = "auto"  # how eval work is split over ranks × workers
    # training only: the text view each product presents, drawn per sample ({view: weight}; views: full,
    # title_category, title). Queries are short, so products train on short views too; export and
    # evaluation always encode the full text. {full: 1} trains on the full record only.
    text_views: dict[str, float] = field(default_factory=lambda: {"title": 0.4, "title_category": 0.2, "full": 0.4})
    # training only: random crops / flips, and optionally tilt and colour jitter (mmrep.data.transforms.ImageAugment)
    image_augment: ImageAugment = field(default_factory=ImageAugment)

    def __post_init__(self) -> None:
        from mmrep.data.tokenize import TextViews

        TextViews(self.text_views)  # validates names and weights
        for name, low in (("batch_size", 1), ("num_workers", 0), ("max_images", 0), ("shuffle_buffer", 0),
                          ("epoch_length", 0)):
            if getattr(self, name) < low:
                raise MmrepError(f"config key 'data.{name}' must be >= {low}, got {getattr(self, name)}")
        if self.eval_split not in ("auto", "shard", "sample"):
            raise MmrepError(f"config key 'data.eval_split' must be auto, shard or sample, got {self.eval_split!r}")


# ---------------------------------------------------------------------------------------------
# skip accounting


class SkipStats:
    """Counts of skipped samples by reason, shared across DataLoader workers (shared memory).

    Every skip is also logged by the process that saw it with shard and key; `examples` keeps the
    first few messages seen in this process.
    """

    REASONS = ("truncated_tar", "unreadable_shard", "bad_image", "bad_json", "missing_field", "empty_sample", "other",
               "non_finite", "lost_in_damaged_shard")
    SHARD_REASONS = ("truncated_tar", "unreadable_shard")  # events that cost a shard's remaining samples
    LOST = "lost_in_damaged_shard"  # samples past the break of a damaged shard (known from manifest counts)
    LOG_FIRST = 5  # per process; the rest are counted in the summary line only

    def __init__(self, max_examples: int = 20):
        self._counts = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Array(
            "q", len(self.REASONS), lock=True)
        self.examples: list[dict[str, str]] = []  # {"reason", "shard", "key", "message"}
        self.max_examples = max_examples

    def record(self, reason: str, message: str, shard: str = "", key: str = "", n: int = 1) -> None:
        reason = reason if reason in self.REASONS else "other"
        i = self.REASONS.index(reason)
        with self._counts.get_lock():
            self._counts[i] += n
        self._seen = getattr(self, "_seen", 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append({"reason": reason, "shard": shard, "key": key, "message": message})
        log.log(logging.WARNING if self._seen <= self.LOG_FIRST else logging.DEBUG,
                "skipped corrupt sample (%s): %s", reason, message)

    def counts(self) -> dict[str, int]:
        with self._counts.get_lock():
            return {r: int(self._counts[i]) for i, r in enumerate(self.REASONS) if self._counts[i]}

    @property
    def total(self) -> int:
        return sum(self.counts().values())

    def as_dict(self, prefix: str = "data/skipped") -> dict[str, int]:
        """Flat numbers for a metrics logger: {prefix: total, prefix/<reason>: n}."""
        c = self.counts()
        return {prefix: sum(c.values())} | {f"{prefix}/{k}": v for k, v in c.items()}

    @property
    def samples(self) -> int:
        """Samples not delivered: corrupt ones plus those lost with damaged shards (where counts are known)."""
        return sum(v for k, v in self.counts().items() if k not in self.SHARD_REASONS)

    @property
    def damaged_shards(self) -> int:
        return sum(v for k, v in self.counts().items() if k in self.SHARD_REASONS)

    def summary(self, what: str = "") -> str:
        """The one line every command prints: samples skipped, as corrupt (by reason) and as lost with damaged
        shards (their samples past the damage, where a manifest gives the shard's count)."""
        c = self.counts()
        per_sample = {k: v for k, v in c.items() if k not in (*self.SHARD_REASONS, self.LOST)}
        parts = []
        if per_sample:
            parts.append(f"{sum(per_sample.values())} corrupt ({', '.join(f'{k}: {v}' for k, v in per_sample.items())})")
        if self.damaged_shards:
            shards = ", ".join(f"{k}: {c[k]}" for k in self.SHARD_REASONS if k in c)
            parts.append(f"{c.get(self.LOST, 0)} lost with {self.damaged_shards} damaged shard(s) ({shards})")
        return (f"{what}: " if what else "") + f"skipped {self.samples} samples" + (": " + ", ".join(parts) if parts else "")

    def report(self, what: str) -> None:
        """Print `summary(what)` when anything was skipped (one line, on stdout beside the command's results)."""
        if self.total:
            print(self.summary(what), flush=True)

    def __getstate__(self) -> dict:
        # Pickled into spawned workers by inheritance; the examples list stays per process.
        return {"_counts": self._counts, "examples": [], "max_examples": self.max_examples}


class _Skipper:
    """webdataset exception handler + decode guard: count and continue, or raise when strict."""

    # a resampled stream over shards that are all unreadable would otherwise spin forever
    MAX_CONSECUTIVE = 1000

    def __init__(self, stats: SkipStats, strict: bool):
        self.stats, self.strict = stats, strict
        self._last_truncated: str | None = None
        self.consecutive = 0  # skips since the last good sample (reset by _Decode)

    def skip(self, reason: str, shard: str, key: str, detail: str) -> None:
        where = f"shard {shard or '?'}" + (f", sample {key}" if key else "")
        if self.strict:
            raise CorruptSample(f"corrupt sample in {where}: {detail} (strict mode; fix the shard, or turn strict "
                                "off to skip and count corrupt samples)", key=key, shard=shard, reason=reason,
                                detail=detail)
        self.stats.record(reason, f"{where}: {detail}", shard, key)
        self.consecutive += 1
        if self.consecutive >= self.MAX_CONSECUTIVE:
            raise MmrepError(f"{self.consecutive} corrupt samples/shards in a row (last: {where}: {detail}); the shard "
                             "set looks unreadable: run `mmrep data inspect` on it")

    def lost(self, shard: str, n: int) -> None:
        """`n` samples of a damaged shard were never read (its manifest says how many it held)."""
        if n > 0:
            self.stats.record(SkipStats.LOST, f"shard {shard}: {n} samples lost after the damage", shard, n=n)

    def __call__(self, exn: Exception) -> bool:
        """webdataset handler for tar-level errors (webdataset appends the stream / url to `args`)."""
        if isinstance(exn, CorruptSample):  # our own strict-mode error passing through an outer stage
            exn.args = exn.args[:1]  # webdataset appended (stream, url) to it: keep the one-line message
            raise exn
        args = [str(a) for a in exn.args]
        detail = args[0] if args else str(exn)
        shard = ""
        if " @ " in detail:  # tar_file_iterator: "<message> @ <_io.BufferedReader name='path'>"
            detail, _, stream = detail.rpartition(" @ ")
            m = re.search(r"name='(.*)'", stream)
            shard = m.group(1) if m else stream
        if isinstance(exn, OSError) and not isinstance(exn, tarfile.TarError) and exn.strerror:
            # url_opener: OSError(errno, strerror) + (url,): the shard could not be opened at all
            shard, detail, reason = args[-1], exn.strerror, "unreadable_shard"
        else:
            if len(args) >= 3:  # tar_file_expander: args + (stream, url)
                shard = args[-1]
            reason = "truncated_tar" if isinstance(exn, (tarfile.TarError, EOFError, OSError)) else "other"
        from_member = " @ " in (args[0] if args else "")
        if not from_member and reason == "truncated_tar" and shard and shard == self._last_truncated:
            self._last_truncated = None
            return True  # a truncation inside a member surfaces again at the next header: count it once
        self._last_truncated = shard if from_member and reason == "truncated_tar" else None
        self.skip(reason, shard, "", f"{type(exn).__name__}: {detail}")
        return True


def shard_counts(urls: Sequence[str]) -> dict[str, int]:
    """Samples per shard where known: manifest.json counts, or img2dataset `<shard>_stats.json` successes."""
    counts: dict[str, int] = {}
    for d in dict.fromkeys(Path(u).parent for u in urls):
        if (d / MANIFEST).is_file():
            for entry in read_manifest(d).get("shards", []):
                counts[str(d / entry["name"])] = int(entry["count"])
    for u in urls:
        stats = Path(u).with_name(Path(u).stem + "_stats.json")
        if str(Path(u)) not in counts and stats.is_file():
            try:
                counts[str(Path(u))] = int(json.loads(stats.read_text())["successes"])
            except (ValueError, KeyError, TypeError):
                pass
    return counts


class ShardSamples:
    """Pipeline stage {"url"} -> raw samples: reads each shard with `skipper` as the tar error handler and,
    when a damaged shard yields fewer samples than its manifest count, records the rest as lost.

    `owner` (a callable, evaluated in the worker) says whether this reader does the counting: in eval
    "sample" mode every (rank, worker) reads every shard and only one of them may count its damage."""

    def __init__(self, skipper: "_Skipper", counts: dict[str, int], owner: Callable[[], bool] | None = None):
        self.skipper, self.counts, self.owner = skipper, counts, owner

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        counting = self.owner is None or self.owner()
        handler = self.skipper if counting or self.skipper.strict else _Skipper(SkipStats(), False)
        for item in src:
            url, n = str(item["url"]), 0
            for sample in wds.tarfile_to_samples(handler=handler)(iter([item])):
                n += 1
                yield sample
            expected = self.counts.get(str(Path(url)))
            if counting and expected is not None and n < expected:
                if self.skipper.strict:
                    raise CorruptSample(f"shard {url} is damaged: {n} of its {expected} samples are readable (strict "
                                        "mode; re-write the shard or drop strict to skip it)", shard=url,
                                        reason="truncated_tar")
                handler.lost(url, expected - n)


def check_images(record: "Product | Triplet | Any") -> None:
    """Fully decode every image a record carries; CorruptSample(bad_image) names the first that fails."""
    import io

    from PIL import Image

    if isinstance(record, Triplet):
        groups = [record.query.images, record.positive.images, *(n.images for n in record.negatives)]
    else:
        groups = [getattr(record, "images", [])]
    for images in groups:
        for k, data in enumerate(images):
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
            except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
                detail = f"image {k} does not decode ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                raise CorruptSample(detail, reason="bad_image", detail=detail) from None


# ---------------------------------------------------------------------------------------------
# sample decoding


def decode_sample(sample: dict[str, Any]) -> Product | Triplet:
    """A raw webdataset sample (bytes per extension) -> Product or Triplet; raises CorruptSample.

    mmrep layout: `product.json` / `triplet.json` + images. img2dataset layout: `jpg`/`png`/`webp`
    + `txt` (title) + `json` (fields -> attributes, bookkeeping dropped).
    """
    key, shard = str(sample.get("__key__", "")), str(sample.get("__url__", ""))

    def bad(reason: str, detail: str) -> CorruptSample:
        return CorruptSample(f"shard {shard}, sample {key}: {detail}", key=key, shard=shard, reason=reason,
                             detail=detail)

    try:
        if PRODUCT_EXT in sample:
            record: Product | Triplet = Product.from_meta(_json(sample[PRODUCT_EXT]), sample)
        elif TRIPLET_EXT in sample:
            record = Triplet.from_sample({**sample, TRIPLET_EXT: _json(sample[TRIPLET_EXT])})
        elif any(ext in sample for ext in (*IMAGE_EXTS, "txt")):
            record = _img2dataset_product(key, sample)
        else:
            fields = sorted(k for k in sample if not k.startswith("__"))
            raise bad("missing_field", f"no product.json, triplet.json or img2dataset image/text (files: {fields})")
    except CorruptSample:
        raise
    except json.JSONDecodeError as e:
        raise bad("bad_json", f"metadata JSON cannot be parsed ({e})") from None
    except UnicodeDecodeError as e:
        raise bad("bad_json", f"text is not UTF-8 ({e})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise bad("missing_field", f"metadata is missing or malformed ({type(e).__name__}: {e})") from None
    if isinstance(record, Product) and not (record.has_image or record.has_text):
        raise bad("empty_sample", "the product has neither an image nor any text")
    return record


def decode_record(sample: dict[str, Any]) -> Product | Query | Triplet:
    """`decode_sample`, plus query samples (`query.json`, benchmark query sets); raises CorruptSample."""
    if QUERY_EXT not in sample:
        return decode_sample(sample)
    key, shard = str(sample.get("__key__", "")), str(sample.get("__url__", ""))
    try:
        return Query.from_sample(sample)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        detail = f"query metadata is malformed ({type(e).__name__}: {e})"
        raise CorruptSample(f"shard {shard}, sample {key}: {detail}", key=key, shard=shard, reason="bad_json",
                            detail=detail) from None


def _json(value: Any) -> dict:
    data = json.loads(value) if isinstance(value, (bytes, str)) else value
    if not isinstance(data, dict):
        raise json.JSONDecodeError("top level is not an object", str(value)[:40], 0)
    return data


def _img2dataset_product(key: str, sample: dict[str, Any]) -> Product:
    meta = _json(sample["json"]) if "json" in sample else {}
    title = sample["txt"].decode("utf-8") if "txt" in sample else str(meta.get("caption") or "")
    attributes = {}
    for k, v in meta.items():
        if k in I2D_DROP or k.startswith("original_") or v is None or v == "":
            continue
        attributes[str(k)] = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    exts = [e for e in IMAGE_EXTS if e in sample]
    return Product(id=str(meta.get("key") or key), title=title.strip(), attributes=attributes,
                   images=[sample[e] for e in exts], image_exts=exts)


# ---------------------------------------------------------------------------------------------
# pipeline stages (module-level classes so that spawned workers can pickle them)


def _seed(*parts: Any) -> int:
    # zlib, not hash(): str hashes differ between processes
    return zlib.crc32(repr(parts).encode())


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class _EpochState:
    """The epoch number, set by the Loader before each pass (copied into fresh workers)."""

    def __init__(self) -> None:
        self.epoch = 0


class _ShardList(torch.utils.data.IterableDataset):
    """Shard urls for one pass; `shuffle` permutes them identically on every rank (seed, epoch)."""

    def __init__(self, urls: Sequence[str], shuffle: bool, seed: int, state: _EpochState):
        super().__init__()
        self.urls, self.shuffle, self.seed, self.state = list(urls), shuffle, seed, state

    def __iter__(self) -> Iterator[dict]:
        urls = list(self.urls)
        if self.shuffle:
            random.Random(_seed(self.seed, self.state.epoch, "shards")).shuffle(urls)
        for url in urls:
            yield {"url": url}


class _ResampledShards(torch.utils.data.IterableDataset):
    """An endless stream of shards drawn with replacement, independent per (rank, worker, epoch)."""

    def __init__(self, urls: Sequence[str], seed: int, rank: int, state: _EpochState):
        super().__init__()
        self.urls, self.seed, self.rank, self.state = list(urls), seed, rank, state

    def __iter__(self) -> Iterator[dict]:
        rng = random.Random(_seed(self.seed, self.state.epoch, self.rank, _worker()[0], "resample"))
        while True:
            yield {"url": rng.choice(self.urls)}


def split_by_rank(src: Iterable[dict], rank: int, world_size: int) -> Iterator[dict]:
    """nodesplitter with an explicit rank (webdataset's reads torch.distributed / env vars)."""
    for i, item in enumerate(src):
        if i % world_size == rank:
            yield item


class _SampleModulo:
    """Keep raw sample i on (rank, worker) with i ≡ id (mod world_size * num_workers)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        worker, workers = _worker()
        me, total = self.rank * workers + worker, self.world_size * workers
        for i, sample in enumerate(src):
            if i % total == me:
                yield sample


class _Shuffle:
    """Reservoir shuffle seeded per (seed, epoch, rank, worker)."""

    def __init__(self, bufsize: int, seed: int, rank: int, state: _EpochState):
        self.bufsize, self.seed, self.rank, self.state = bufsize, seed, rank, state

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        rng = random.Random(_seed(self.seed, self.state.epoch, self.rank, _worker()[0], "samples"))
        buf: list[Any] = []
        for item in src:
            if len(buf) < self.bufsize:
                buf.append(item)
                continue
            i = rng.randrange(len(buf))
            buf[i], item = item, buf[i]
            yield item
        rng.shuffle(buf)
        yield from buf


def iter_raw(url: str, skipper: _Skipper | None = None, expected: int | None = None) -> Iterator[dict[str, Any]]:
    """The raw samples of one tar in order, through the shared shard reader (`ShardSamples`).

    Without a `skipper` a damaged tar fails as one line naming it; with one it is counted (with the samples
    its manifest says were lost) and the read stops there."""
    counts = {str(Path(url)): expected} if expected is not None else {}
    strict = skipper is None
    reader = ShardSamples(skipper if skipper is not None else _Skipper(SkipStats(), strict=True), counts)
    try:
        yield from reader(iter([{"url": url}]))
    except MmrepError as e:
        if not strict:
            raise
        detail = str(e).split(": ", 1)[-1].split(" (strict mode")[0]
        raise MmrepError(f"shard {url} is damaged ({detail}); re-write it") from None


class _Decode:
    """Raw sample -> prepared (decoded images + tokens) record; corrupt ones go to the skipper."""

    def __init__(self, collator: Collator, skipper: _Skipper, kind: str | None = None):
        self.collator, self.skipper, self.kind = collator, skipper, kind

    def __call__(self, src: Iterable[dict]) -> Iterator[PreparedItem | PreparedTriplet]:
        for sample in src:
            try:
                record = decode_sample(sample)
                want = {"products": Product, "triplets": Triplet}.get(self.kind or "")
                if want is not None and not isinstance(record, want):
                    # the wrong kind of shard set is a configuration mistake, not corruption: stop at once
                    shard = str(sample.get("__url__", ""))
                    got = "triplets" if isinstance(record, Triplet) else "products"
                    raise CorruptSample(f"shard {shard} holds {got}, but this stage reads {self.kind}; "
                                        f"{_KIND_HINT[self.kind]}", shard=shard, reason="wrong_kind")
                prepared = self.collator.prepare(record)
                self.skipper.consecutive = 0
                yield prepared
            except CorruptSample as e:
                if e.reason == "wrong_kind":
                    raise
                shard, key = str(sample.get("__url__", "")), str(sample.get("__key__", ""))
                self.skipper.skip(e.reason, shard, key, e.detail)


class _EpochCut:
    """Stop after this worker's share of `n_batches` (so every rank yields exactly n_batches)."""

    def __init__(self, n_batches: int):
        self.n_batches = n_batches

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        worker, workers = _worker()
        share = self.n_batches // workers + (1 if worker < self.n_batches % workers else 0)
        if share == 0:
            return
        for i, batch in enumerate(src):
            yield batch
            if i + 1 >= share:
                return


# ---------------------------------------------------------------------------------------------
# loaders

_KIND_HINT = {"products": "point data.shards at a product set (e.g. items/train) or use --stage posttrain",
              "triplets": "point data.shards at a triplet set (e.g. triplets/train) or use --stage pretrain"}


def check_kind(urls: Sequence[str], kind: str | None) -> None:
    """A shard set whose manifest names another kind than the stage reads -> one clear error up front."""
    if kind not in _KIND_HINT:
        return
    for d in dict.fromkeys(Path(u).parent for u in urls):
        got = json.loads((d / MANIFEST).read_text()).get("kind") if (d / MANIFEST).is_file() else None
        if got in _KIND_HINT and got != kind:
            raise MmrepError(f"shard set {d} holds {got}, but this stage reads {kind}; {_KIND_HINT[kind]}")


class Loader:
    """Iterable over batches for one rank. `len()` is known in resampled training mode.

    `set_epoch(e)` reshuffles (like DistributedSampler); a pass without it uses the next epoch.
    `skip_stats` counts corrupt samples across workers (log `skip_stats.as_dict()`).
    """

    def __init__(self, pipeline: wds.DataPipeline, num_workers: int, state: _EpochState, stats: SkipStats,
                 num_batches: int | None, rank: int, world_size: int):
        self.pipeline, self.num_workers, self.state, self.skip_stats = pipeline, num_workers, state, stats
        self.num_batches, self.rank, self.world_size = num_batches, rank, world_size
        self._explicit_epoch = False

    def set_epoch(self, epoch: int) -> None:
        self.state.epoch = epoch
        self._explicit_epoch = True

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this loader has no fixed length (use resampled training mode for one)")
        return self.num_batches

    def __iter__(self) -> Iterator[Any]:
        loader = torch.utils.data.DataLoader(self.pipeline, batch_size=None, num_workers=self.num_workers,
                                             persistent_workers=False)
        try:
            yield from loader
        except CorruptSample as e:
            # a worker's error arrives wrapped in its traceback text; keep the one-line message
            msg = _last_line(str(e))
            m = re.search(r"in shard (.*?)(?:, sample (\S+?))?: ", msg)
            shard, key = (m.group(1), m.group(2) or "") if m else (e.shard, e.key)
            raise CorruptSample(msg, key=e.key or key, shard=e.shard or shard, reason=e.reason) from None
        if self.skip_stats.total:
            log.warning("rank %d epoch %d: %s", self.rank, self.state.epoch, self.skip_stats.summary())
        if not self._explicit_epoch:
            self.state.epoch += 1
        self._explicit_epoch = False


def _last_line(text: str) -> str:
    line = text.strip().splitlines()[-1] if text.strip() else text
    prefix = "CorruptSample: "
    return line.split(prefix, 1)[1] if prefix in line else line


def _first_reader(rank: int) -> bool:
    return rank == 0 and _worker()[0] == 0


def resolve_shards(source: str | Path | Sequence[str | Path]) -> list[str]:
    """A shard-set folder, a .tar file, or a list of either -> tar paths."""
    if isinstance(source, (list, tuple)):
        return [u for s in source for u in resolve_shards(s)]
    path = Path(source)
    if not str(source):
        raise MmrepError("no shards given: set data.shards to a shard folder (e.g. out/train)")
    if path.is_file() and path.suffix == ".tar":
        return [str(path)]
    return shard_paths(path)


def count_samples(source: str | Path | Sequence[str | Path]) -> int | None:
    """Samples in a shard set: its manifest count, or img2dataset `*_stats.json` successes."""
    dirs = {Path(u).parent for u in resolve_shards(source)}
    total = 0
    for d in dirs:
        if (d / MANIFEST).is_file():
            total += int(read_manifest(d)["count"])
            continue
        stats = sorted(d.glob("*_stats.json"))
        if not stats:
            return None
        total += sum(int(json.loads(p.read_text()).get("successes", 0)) for p in stats)
    return total


def dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit rank/world_size, defaulting to torch.distributed when initialised, else (0, 1)."""
    if rank is None or world_size is None:
        from mmrep.distributed import rank_world

        group_rank, group_world = rank_world()
        rank = group_rank if rank is None else rank
        world_size = group_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise MmrepError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


def train_loader(cfg: DataConfig, collator: Collator, rank: int | None = None, world_size: int | None = None,
                 shards: Sequence[str] | str | None = None, kind: str | None = None) -> Loader:
    """Shuffled multi-worker batches for one rank. Resampled mode: exactly `len(loader)` batches per rank
    (epoch_length // batch_size), whatever the shard sizes; otherwise one pass over this rank's shards."""
    rank, world = dist_rank_world(rank, world_size)
    urls = resolve_shards(shards if shards is not None else cfg.shards)
    check_kind(urls, kind)
    workers = max(cfg.num_workers, 1)
    state, stats = _EpochState(), SkipStats()
    skipper = _Skipper(stats, cfg.strict)
    if cfg.resampled:
        epoch_length = cfg.epoch_length
        if epoch_length == 0:
            total = count_samples(urls)
            if total is None:
                raise MmrepError("data.epoch_length is 0 and the shard set has no manifest or _stats.json to count "
                                 "samples; set data.epoch_length (samples per rank per epoch)")
            epoch_length = total // world
        n_batches = epoch_length // cfg.batch_size
        if n_batches < 1:
            raise MmrepError(f"data.epoch_length {epoch_length} is smaller than data.batch_size {cfg.batch_size}")
        source: list[Any] = [_ResampledShards(urls, cfg.seed, rank, state)]
    else:
        if len(urls) < world * workers:
            raise MmrepError(f"{len(urls)} shards cannot feed {world} ranks × {workers} workers in one-pass training; "
                             "set data.resampled=true (with data.epoch_length) or write more, smaller shards")
        n_batches = None
        source = [_ShardList(urls, True, cfg.seed, state), partial(split_by_rank, rank=rank, world_size=world),
                  wds.split_by_worker]
    stages = source + [ShardSamples(skipper, shard_counts(urls))]
    if cfg.shuffle_buffer > 1:
        stages.append(_Shuffle(cfg.shuffle_buffer, cfg.seed, rank, state))
    stages += [_Decode(collator, skipper, kind), wds.batched(cfg.batch_size, collation_fn=collator.collate, partial=False)]
    if n_batches is not None:
        stages.append(_EpochCut(n_batches))
    return Loader(wds.DataPipeline(*stages), cfg.num_workers, state, stats, n_batches, rank, world)


def eval_loader(cfg: DataConfig, collator: Collator, rank: int | None = None, world_size: int | None = None,
                shards: Sequence[str] | str | None = None, kind: str | None = None) -> Loader:
    """In-order batches; every sample is read by exactly one (rank, worker) across the job."""
    rank, world = dist_rank_world(rank, world_size)
    urls = resolve_shards(shards if shards is not None else cfg.shards)
    check_kind(urls, kind)
    workers = max(cfg.num_workers, 1)
    state, stats = _EpochState(), SkipStats()
    skipper = _Skipper(stats, cfg.strict)
    by_shard = cfg.eval_split == "shard" or (cfg.eval_split == "auto" and len(urls) >= world * workers)
    counts = shard_counts(urls)
    if by_shard:
        stages: list[Any] = [_ShardList(urls, False, cfg.seed, state),
                             partial(split_by_rank, rank=rank, world_size=world), wds.split_by_worker,
                             ShardSamples(skipper, counts)]
    else:  # too few shards to split: every (rank, worker) reads all of them and keeps its residue class
        stages = [_ShardList(urls, False, cfg.seed, state), ShardSamples(skipper, counts, partial(_first_reader, rank)),
                  _SampleModulo(rank, world)]
    stages += [_Decode(collator, skipper, kind), wds.batched(cfg.batch_size, collation_fn=collator.collate, partial=True)]
    return Loader(wds.DataPipeline(*stages), cfg.num_workers, state, stats, None, rank, world)


# ---------------------------------------------------------------------------------------------
# plain iteration


def iter_records(source: str | Path | Sequence[str | Path], strict: bool = False,
                 stats: SkipStats | None = None, verify_images: bool = False) -> Iterator[Product | Triplet]:
    """Every decodable record of a shard set, in shard order, in this process (the shared reader of every
    command that is not a training/eval loader): corrupt samples and damaged shards are skipped and counted
    in `stats` (`stats.report(...)` prints the one summary line), or fail at once when `strict`.
    `verify_images` decodes every image too, for consumers that use the pixels."""
    skipper = _Skipper(stats if stats is not None else SkipStats(), strict)
    urls = resolve_shards(source)
    for sample in ShardSamples(skipper, shard_counts(urls))({"url": u} for u in urls):
        try:
            record = decode_sample(sample)
            if verify_images:
                check_images(record)
            skipper.consecutive = 0
            yield record
        except CorruptSample as e:
            skipper.skip(e.reason, str(sample.get("__url__", "")), str(sample.get("__key__", "")), e.detail)


def iter_products(source: str | Path | Sequence[str | Path], strict: bool = False,
                  stats: SkipStats | None = None, verify_images: bool = False) -> Iterator[Product]:
    """Products of a shard set (mmrep or img2dataset layout); corrupt samples skipped and counted."""
    for r in iter_records(source, strict, stats, verify_images):
        if isinstance(r, Product):
            yield r


def iter_triplets(source: str | Path | Sequence[str | Path], strict: bool = False,
                  stats: SkipStats | None = None, verify_images: bool = False) -> Iterator[Triplet]:
    for r in iter_records(source, strict, stats, verify_images):
        if isinstance(r, Triplet):
            yield r


