"""The embedding export format, and loaders that need only numpy + safetensors (no torch, no mmrep).

An export folder `<out>/` holds:
    part-SSSSS-CCCCC.safetensors   one deterministic chunk of the input: shard SSSSS (index in the
                                   shard set), chunk CCCCC (rows [C*part_size, (C+1)*part_size) of
                                   that shard); a tensor `embeddings` (N, D) float32|float16,
                                   L2-normalised; metadata (strings): "ids" (a JSON list of N ids,
                                   row order), "count", "skipped", "fingerprint", "dim", "dtype", ...
    index.json                     written last, only after every part was verified:
                                   {"format": "mmrep-embeddings", "version": 1, "kind": "items"|"queries",
                                    "view", "dim", "dtype", "count", "parts": [{"name", "count"}],
                                    "encoder": {"name", "fingerprint"}, "faiss": "index.faiss"|null, ...}
    index.faiss                    optional faiss index; row i = the i-th id in part order
    export.yaml                    the resolved export config
A folder without index.json is an unfinished export: rerunning the same command resumes it.
Load everything with `load_embeddings(dir) -> (ids, array)`, or stream with `iter_parts(dir)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

FORMAT = "mmrep-embeddings"
VERSION = 1
INDEX = "index.json"
FAISS_FILE = "index.faiss"
TENSOR = "embeddings"


class EmbeddingFormatError(ValueError):
    """The folder is not a complete mmrep embedding export."""


def part_name(shard: int, chunk: int) -> str:
    return f"part-{shard:05d}-{chunk:05d}.safetensors"


def read_index(path: str | Path) -> dict:
    """The index.json of a finished export (raises EmbeddingFormatError when missing / foreign)."""
    path = Path(path)
    index = path / INDEX
    if not path.is_dir():
        raise EmbeddingFormatError(f"embedding folder not found: {path} (check the path)")
    if not index.is_file():
        raise EmbeddingFormatError(f"{path} has no {INDEX}: not an mmrep export, or the export is unfinished (rerun it)")
    try:
        meta = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise EmbeddingFormatError(f"{index} is not valid JSON ({e.msg})") from None
    if meta.get("format") != FORMAT:
        raise EmbeddingFormatError(f"{index} is not an {FORMAT} index (format={meta.get('format')!r})")
    return meta


def read_part(file: str | Path) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """One part file -> (ids, embeddings (N, D), metadata)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="numpy") as f:
        meta = f.metadata() or {}
        emb = f.get_tensor(TENSOR)
    ids = json.loads(meta.get("ids", "[]"))
    if len(ids) != emb.shape[0]:
        raise EmbeddingFormatError(f"{file}: {len(ids)} ids but {emb.shape[0]} embedding rows")
    return ids, emb, meta


def read_part_meta(file: str | Path) -> dict[str, str]:
    """A part's metadata without loading its tensor."""
    from safetensors import safe_open

    with safe_open(str(file), framework="numpy") as f:
        return dict(f.metadata() or {})


def iter_parts(path: str | Path) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream (ids, embeddings (n_i, D)) part by part, in index order (bounded memory)."""
    path = Path(path)
    meta = read_index(path)
    for part in meta["parts"]:
        ids, emb, _ = read_part(path / part["name"])
        if len(ids) != part["count"]:
            raise EmbeddingFormatError(f"{path / part['name']} holds {len(ids)} rows, index.json says {part['count']}")
        yield ids, emb


def load_embeddings(path: str | Path, dtype: np.dtype | None = None) -> tuple[list[str], np.ndarray]:
    """A whole export -> (ids: list of N str, embeddings (N, D) in the stored dtype or `dtype`)."""
    meta = read_index(path)
    out = np.empty((int(meta["count"]), int(meta["dim"])), dtype=dtype or np.dtype(meta["dtype"]))
    ids: list[str] = []
    row = 0
    for part_ids, emb in iter_parts(path):
        out[row : row + len(part_ids)] = emb
        ids += part_ids
        row += len(part_ids)
    if row != out.shape[0]:
        raise EmbeddingFormatError(f"{path}: parts hold {row} rows, index.json says {out.shape[0]}")
    return ids, out
