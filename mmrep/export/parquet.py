"""Parquet views of exported embeddings and quantized codes, for feature stores and SQL engines.

embeddings.parquet: `id` (string), `embedding` (fixed-size list of float32 / float16, the export's dtype),
one row group per export part (written part by part: memory holds one part). codes.parquet: `id`, `rq`
(fixed-size list of int), and `vq` / `dedup` when the quantize run made them. Values equal the
safetensors files exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from mmrep.fsutil import atomic_write

PARQUET_FILE = "embeddings.parquet"
CODES_FILE = "codes.parquet"


def _fixed_list(matrix: np.ndarray):
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def embeddings_table(ids: Sequence[str], emb: np.ndarray):
    import pyarrow as pa

    return pa.table({"id": pa.array(list(ids), pa.string()), "embedding": _fixed_list(emb)})


def parts_to_parquet(out: Path, names: Sequence[str], dest: Path) -> Path:
    """Export parts (in order) -> one Parquet file, written atomically."""
    import pyarrow.parquet as pq

    from mmrep.export.format import read_part

    with atomic_write(dest) as f:
        writer = None
        for name in names:
            ids, emb, _ = read_part(out / name)
            table = embeddings_table(ids, emb)
            writer = writer or pq.ParquetWriter(f, table.schema)
            writer.write_table(table)
        if writer is not None:
            writer.close()
    return dest


def codes_to_parquet(dest: Path, ids: Sequence[str], arrays: dict[str, np.ndarray]) -> Path:
    """ids + code matrices / vectors (rq (N, L), vq (N, K), dedup (N,)) -> Parquet, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"id": pa.array(list(ids), pa.string())}
    for key, value in arrays.items():
        columns[key] = _fixed_list(value) if value.ndim == 2 else pa.array(value)
    with atomic_write(dest) as f:
        pq.write_table(pa.table(columns), f)
    return dest


def read_embeddings_parquet(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(ids, (N, D) array) from an embeddings.parquet (what a user without mmrep does with pyarrow)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    emb = table.column("embedding").combine_chunks()
    dim = emb.type.list_size
    return table.column("id").to_pylist(), emb.flatten().to_numpy().reshape(-1, dim)
