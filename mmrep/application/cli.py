"""`mmrep quantize` and `mmrep ctr`: parse arguments, build the config, run, write outputs."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrep.application.quantize import QuantizeConfig
from mmrep.cli_support import CommandParser, command_line
from mmrep.errors import MmrepError


@dataclass
class QuantizeRun:
    """Config file layout for `mmrep quantize --config`: one `quantize` section."""

    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)


# files only these commands write: an output folder from before the marker is recognised by them
QUANTIZE_FILES = ("codes.csv", "report.json")
CTR_FILES = ("ctr.json", "ctr.md")


def _out_dir(path: str, overwrite: bool, legacy: tuple[str, ...]) -> Path:
    from mmrep.fsutil import check_replaceable

    return check_replaceable(path, overwrite, legacy)


@dataclass
class QuantizeJob:
    """`mmrep quantize`: codes for an export's embeddings (or, with `codebooks`, encode with saved ones)."""

    emb: str
    out: str
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    codebooks: str = ""  # saved codebooks: encode only, no training
    format: str = "safetensors"  # parquet: also write codes.parquet
    overwrite: bool = False
    strict: bool = False

    def argv(self) -> list[str]:
        return command_line("quantize", flags={
            "emb": self.emb, "out": self.out, "codebooks": self.codebooks, "encode-only": bool(self.codebooks),
            "format": None if self.format == "safetensors" else self.format, "overwrite": self.overwrite,
            "strict": self.strict}, sections={"quantize": self.quantize})


@dataclass
class QuantizeResult:
    out: str
    report: dict[str, Any]  # what report.json holds


def quantize_codes(job: QuantizeJob) -> QuantizeResult:
    """RQ + VQ codes, codebooks and a quality report into `job.out` (atomic)."""
    from mmrep import config as cfgmod
    from mmrep.application import quantize as q
    from mmrep.application.embeddings import drop_non_finite, load_item_embeddings
    from mmrep.fsutil import atomic_dir

    cfg = job.quantize
    out = _out_dir(job.out, job.overwrite, QUANTIZE_FILES)
    ids, x = drop_non_finite(*load_item_embeddings(job.emb, mmap=True), strict=job.strict, what=f"quantize {job.emb}")
    books = q.load_codebooks(job.codebooks) if job.codebooks else None
    result = q.quantize(x, cfg, codebooks=books)
    with atomic_dir(out, "quantize", QUANTIZE_FILES) as tmp:
        q.write_outputs(tmp, ids, result, cfg)
        if job.format == "parquet":
            from safetensors.numpy import load_file

            from mmrep.export.parquet import CODES_FILE, codes_to_parquet

            codes_to_parquet(tmp / CODES_FILE, ids, load_file(str(tmp / "codes.safetensors")))
        cfgmod.save_resolved(QuantizeRun(cfg), tmp)
    return QuantizeResult(str(out), result.report)


def parse_quantize(argv: list[str]) -> QuantizeJob:
    from mmrep.application import quantize as q

    p = CommandParser("mmrep quantize", q.__doc__.splitlines()[0], sections={"quantize": QuantizeConfig})
    p.add_argument("--emb", required=True, help="export folder (embeddings + ids) or .npy/.safetensors file")
    p.add_argument("--out", required=True, help="output folder: codes.csv, codes.safetensors, report.json")
    p.add_argument("--levels", type=int)
    p.add_argument("--centroids", type=int)
    p.add_argument("--method", choices=["kmeans", "progressive", "faiss-rq"])
    p.add_argument("--vq-k", type=int, help="nearest items per VQ code (0 disables)")
    p.add_argument("--seed", type=int)
    p.add_argument("--dedup", action="store_true", default=None, help="append a de-duplication digit")
    p.add_argument("--train-sample", type=int, help="train codebooks on at most this many items")
    p.add_argument("--codebooks", help="saved codebooks.safetensors (or its folder) for --encode-only")
    p.add_argument("--encode-only", action="store_true", help="encode with --codebooks, no training")
    p.add_argument("--format", choices=["safetensors", "parquet"], default="safetensors",
                   help="parquet: also write codes.parquet (id, rq, vq, dedup)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--strict", action="store_true", help="fail on an embedding row with NaN/inf instead of skipping it")
    call = p.invoke(argv)
    args = call.args
    if args.encode_only != bool(args.codebooks):
        raise MmrepError("--encode-only and --codebooks go together: encode-only needs saved codebooks")
    flags = {"quantize.levels": args.levels, "quantize.centroids": args.centroids,
             "quantize.method": args.method, "quantize.vq_k": args.vq_k, "quantize.seed": args.seed,
             "quantize.dedup": args.dedup, "quantize.train_sample": args.train_sample}
    cfg = call.build(QuantizeRun, flags).quantize
    return QuantizeJob(args.emb, args.out, cfg, args.codebooks or "", args.format, args.overwrite, args.strict)


def quantize_main(argv: list[str]) -> int:
    """`mmrep quantize --emb DIR --out DIR`: RQ + VQ codes, codebooks and a quality report."""
    from mmrep.application import quantize as q

    job = parse_quantize(argv)
    done = quantize_codes(job)
    for line in q.summary_lines(done.report):
        print(line)
    extra = ", codes.parquet" if job.format == "parquet" else ""
    print(f"wrote {done.out}/codes.csv, codes.safetensors{extra}, codebooks.safetensors, report.json")
    return 0


@dataclass
class CtrJob:
    """`mmrep ctr`: the click model trained on each feature set (seeds 0..n-1)."""

    log: str
    out: str
    features: list[str] = field(default_factory=lambda: ["id", "emb", "codes"])
    emb: str = ""
    codes: str = ""
    ctr: Any = None  # CtrConfig (None: its defaults)
    overwrite: bool = False

    def argv(self) -> list[str]:
        return command_line("ctr", flags={"log": self.log, "features": ",".join(self.features), "emb": self.emb,
                                          "codes": self.codes, "out": self.out, "overwrite": self.overwrite},
                            sections={"ctr": self.ctr} if self.ctr is not None else None)


@dataclass
class CtrResult:
    out: str
    report: dict[str, Any]  # what ctr.json holds


def train_ctr(job: CtrJob) -> CtrResult:
    from mmrep import config as cfgmod
    from mmrep.application import ctr
    from mmrep.fsutil import atomic_dir

    run = ctr.CtrRun(job.ctr if job.ctr is not None else ctr.CtrConfig())
    out = _out_dir(job.out, job.overwrite, CTR_FILES)
    log = ctr.read_log(job.log)
    items = ctr.ItemFeatures.load(emb=job.emb or None, codes=job.codes or None)
    report = ctr.compare(log, items, list(job.features), run.ctr)
    with atomic_dir(out, "ctr", CTR_FILES) as tmp:
        (tmp / "ctr.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "ctr.md").write_text(ctr.markdown(report))
        cfgmod.save_resolved(run, tmp)
    return CtrResult(str(out), report)


def parse_ctr(argv: list[str]) -> CtrJob:
    from mmrep.application import ctr

    p = CommandParser("mmrep ctr", ctr.__doc__.splitlines()[0], sections={"ctr": ctr.CtrConfig})
    p.add_argument("--log", required=True, help="interactions.csv (user,item,time,event,query)")
    p.add_argument("--features", default="id,emb,codes",
                   help="comma list of feature sets: id, emb, codes, emb+att, codes+att, codes+prefix")
    p.add_argument("--emb", help="item embeddings (export folder) for emb features / attention")
    p.add_argument("--codes", help="`mmrep quantize` output folder for code features")
    p.add_argument("--seeds", type=int, help="repeated runs with seeds 0..n-1 for error bars")
    p.add_argument("--epochs", type=int)
    p.add_argument("--out", required=True, help="output folder: ctr.json, ctr.md")
    p.add_argument("--overwrite", action="store_true")
    call = p.invoke(argv)
    args = call.args
    run = call.build(ctr.CtrRun, {"ctr.seeds": args.seeds, "ctr.epochs": args.epochs})
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    return CtrJob(args.log, args.out, features, args.emb or "", args.codes or "", run.ctr, args.overwrite)


def ctr_main(argv: list[str]) -> int:
    """`mmrep ctr --log interactions.csv --features id,emb,codes`: click model comparison."""
    from mmrep.application import ctr

    done = train_ctr(parse_ctr(argv))
    sys.stdout.write(ctr.markdown(done.report))
    return 0
