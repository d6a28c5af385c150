"""`mmrep export`: item / query embeddings of a shard set from an encoder dir.

    mmrep export --encoder RUN/encoder --shards DATA/items/test --out EMB [--dim 128] [--dtype float16]
                 [--kind queries --view text|image|both] [--faiss flat|ivf|hnsw] [--format parquet] [--part-size 4096]
    deepspeed --num_gpus 2 eval/export.py --encoder ... (each rank exports a disjoint set of parts)
Flags map onto the `export` config section; `--config FILE` (an `export:` section) and
`--export.key=value` overrides work as everywhere else. Rerunning an interrupted export resumes it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from mmrep.cli_support import CommandParser, command_line


def flags_of(cls: type, section: str, args: argparse.Namespace) -> dict:
    """The parsed flags that name keys of `cls`, as `section.key` (None = not given, the config decides)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {f"{section}.{k}": v for k, v in vars(args).items() if k in names and v is not None}


def build_parser() -> CommandParser:
    from mmrep.export.embeddings import ExportConfig

    p = CommandParser("mmrep export", "item / query embeddings from an encoder dir", sections={"export": ExportConfig})
    p.add_argument("--encoder", help="encoder dir (RUN/encoder, written by training)")
    p.add_argument("--shards", help="shard-set folder: products, queries (benchmark queries/) or triplets")
    p.add_argument("--out", help="output folder (parts + index.json)")
    p.add_argument("--kind", choices=["items", "queries"])
    p.add_argument("--view", choices=["auto", "mm", "both", "text", "image"], help="modalities to embed (default mm)")
    p.add_argument("--dim", type=int, help="Matryoshka dimension (default: full)")
    p.add_argument("--dtype", choices=["float32", "float16"])
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--part-size", dest="part_size", type=int, help="input rows per part file (default 4096)")
    p.add_argument("--max-images", dest="max_images", type=int)
    p.add_argument("--faiss", choices=["none", "flat", "ivf", "hnsw"])
    p.add_argument("--ivf-lists", dest="ivf_lists", type=int)
    p.add_argument("--target-recall", dest="target_recall", type=float,
                   help="ivf/hnsw: raise nprobe/efSearch until recall@10 vs exact reaches this (default 0.95)")
    p.add_argument("--hnsw-m", dest="hnsw_m", type=int, help="hnsw graph degree (default 32)")
    p.add_argument("--format", choices=["safetensors", "parquet"], help="parquet: also write embeddings.parquet")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace a finished export")
    p.add_argument("--strict", action="store_true", default=None, help="fail on a corrupt sample")
    p.add_argument("--device", help="auto (default: cuda:LOCAL_RANK when available, else cpu), cpu, cuda:0, ...")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the DeepSpeed launcher passes it
    return p


@dataclass
class ExportResult:
    out: str
    count: int
    kind: str
    dim: int
    dtype: str
    parts: int
    skipped: int


def export_argv(cfg: Any) -> list[str]:
    """The `mmrep export` command line for an `ExportConfig` (paths as flags, the rest as overrides)."""
    default = type(cfg)()
    rest = dataclasses.replace(cfg, encoder=default.encoder, shards=default.shards, out=default.out,
                               overwrite=default.overwrite, progress=default.progress, faiss=default.faiss)
    return command_line("export", flags={"encoder": cfg.encoder, "shards": cfg.shards, "out": cfg.out,
                                         "overwrite": cfg.overwrite, "no-progress": not cfg.progress,
                                         "faiss": None if cfg.faiss == default.faiss else cfg.faiss},
                        sections={"export": rest})


def export_embeddings(cfg: Any) -> ExportResult | None:
    """Run the export of an `ExportConfig`; None on ranks that do not write the index."""
    from mmrep.export.embeddings import export

    index = export(cfg)
    if not index:
        return None
    return ExportResult(str(cfg.out), int(index["count"]), str(index["kind"]), int(index["dim"]), str(index["dtype"]),
                        len(index["parts"]), int(index["skipped"]))


def parse(argv: list[str]) -> Any:
    """argv -> `ExportConfig` (file < overrides < flags)."""
    from mmrep.export.embeddings import ExportConfig

    call = build_parser().invoke(argv)
    return call.build(ExportConfig, flags_of(ExportConfig, "export", call.args), section="export")


def main(argv: list[str]) -> int:
    done = export_embeddings(parse(argv))
    if done:
        print(f"wrote {done.count} {done.kind} embeddings ({done.dim}-d {done.dtype}, {done.parts} parts, "
              f"{done.skipped} skipped) to {done.out}")
    return 0
