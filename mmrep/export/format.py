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
Load everything with `load_embeddings(dir) -> (ids, array)`, or stream with `iter_parts(dir)`;
`map_part(file)` memory-maps a part's rows and `ExportRows(dirs).take(rows)` reads only the rows asked for.
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


_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16}


def read_part_header(file: str | Path) -> tuple[dict, int]:
    """A part's safetensors header (parsed as JSON, nothing executed) and the byte offset of its data."""
    file = Path(file)
    size = file.stat().st_size
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= size - 8:
            raise EmbeddingFormatError(f"{file} is not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EmbeddingFormatError(f"{file} has a corrupt safetensors header") from None
    return header, 8 + n


def part_layout(file: str | Path, with_ids: bool = True) -> tuple[list[str], np.dtype, tuple[int, int], int]:
    """(row ids, dtype, shape, byte offset) of a part's embeddings, from its header alone; checks that
    the file holds the whole tensor (and one id per row; `with_ids=False` skips parsing the ids: [])."""
    header, start = read_part_header(file)
    ids = json.loads((header.get("__metadata__") or {}).get("ids", "[]")) if with_ids else []
    t = header.get(TENSOR)
    if not isinstance(t, dict) or t.get("dtype") not in _SAFETENSORS_DTYPES or len(t.get("shape", ())) != 2:
        raise EmbeddingFormatError(f"{file} holds no 2-d float32/float16 tensor {TENSOR!r}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[t["dtype"]])
    shape = (int(t["shape"][0]), int(t["shape"][1]))
    a, b = (int(x) for x in t["data_offsets"])
    if b - a != shape[0] * shape[1] * dtype.itemsize or start + b > Path(file).stat().st_size:
        raise EmbeddingFormatError(f"{file} is truncated or corrupt: tensor {TENSOR!r} does not fit its shape {list(shape)}")
    if with_ids and len(ids) != shape[0]:
        raise EmbeddingFormatError(f"{file}: {len(ids)} ids but {shape[0]} embedding rows")
    return ids, dtype, shape, start + a


def _tensor_layout(file: str | Path) -> tuple[np.dtype, tuple[int, int], int]:
    return part_layout(file, with_ids=False)[1:]


def map_part(file: str | Path) -> np.ndarray:
    """A part's embeddings (N, D) as a read-only memory map: only the rows indexed are read from disk."""
    dtype, shape, offset = _tensor_layout(file)
    if shape[0] * shape[1] == 0:
        return np.zeros(shape, dtype)
    return np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape)


def read_part_into(file: str | Path, buffer: np.ndarray | None = None, keep: np.ndarray | None = None) -> np.ndarray:
    """A part's embeddings (N, D), or only the rows where the bool mask `keep` is set, read straight
    from the file into `buffer` (a flat array reused across parts when large enough and of the part's
    dtype: no copy, no fresh pages per part). The kept rows are read as contiguous runs (one read
    each), so skipped rows cost a seek, not a copy. Returns a view of the buffer (or of a new one)."""
    dtype, shape, offset = _tensor_layout(file)
    if keep is None:
        starts, ends = np.array([0]), np.array([shape[0]])
    else:
        if keep.shape != (shape[0],):
            raise ValueError(f"{file}: a mask of {keep.shape[0]} rows for {shape[0]} rows")
        edges = np.diff(np.concatenate([[0], keep.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    rows = int((ends - starts).sum())
    row_bytes = shape[1] * dtype.itemsize
    if buffer is None or buffer.dtype != dtype or buffer.size < rows * shape[1]:
        buffer = np.empty(max(rows, shape[0]) * shape[1], dtype)
    out = buffer[: rows * shape[1]]
    dst = memoryview(out).cast("B")
    pos = 0
    with open(file, "rb", buffering=0) as f:
        for a, b in zip(starts.tolist(), ends.tolist()):
            f.seek(offset + a * row_bytes)
            want = (b - a) * row_bytes
            got = 0
            while got < want:  # a raw read may return fewer bytes than asked
                n = f.readinto(dst[pos + got : pos + want])
                if not n:
                    raise EmbeddingFormatError(f"{file} ended before its tensor {TENSOR!r}")
                got += n
            pos += want
    return out.reshape(rows, shape[1])


class ExportRows:
    """Rows of one or more exports by position in part order (the order `iter_parts` streams them),
    read through memory maps so that only the pages of the rows asked for are touched."""

    def __init__(self, paths: str | Path | list) -> None:
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.files: list[Path] = []
        counts: list[int] = []
        dims = set()
        for path in paths:
            meta = read_index(path)
            dims.add(int(meta["dim"]))
            for part in meta["parts"]:
                self.files.append(Path(path) / part["name"])
                counts.append(int(part["count"]))
        if len(dims) > 1:
            raise EmbeddingFormatError(f"exports differ in dimension ({sorted(dims)})")
        self.dim = dims.pop() if dims else 0
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def part(self, p: int) -> np.ndarray:
        if p not in self._maps:
            m = map_part(self.files[p])
            if m.shape != (self.offsets[p + 1] - self.offsets[p], self.dim):
                raise EmbeddingFormatError(f"{self.files[p]} holds {m.shape} rows, index.json says "
                                           f"{(int(self.offsets[p + 1] - self.offsets[p]), self.dim)}")
            self._maps[p] = m
        return self._maps[p]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 (len(rows), D), rows in the order given (positions in [0, len(self)))."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty(rows.shape + (self.dim,), np.float32)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row {int(rows.max() if rows.max() >= len(self) else rows.min())} outside [0, {len(self)})")
        flat, dst = rows.reshape(-1), out.reshape(-1, self.dim)
        which = np.searchsorted(self.offsets, flat, side="right") - 1
        for p in np.unique(which):
            sel = np.flatnonzero(which == p)
            dst[sel] = self.part(int(p))[flat[sel] - self.offsets[p]]
        return out

    def close(self) -> None:
        """Drop the memory maps (their pages leave this process's resident set)."""
        self._maps.clear()


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
