"""Read item embeddings for the application stage: one small reader in front of several layouts.

A `mmrep export` folder (index.json + parts) is read with `mmrep.export.load_embeddings`; besides it, a
folder holding `embeddings.npy` or `embeddings.safetensors` plus `ids.txt` (one id a line) is read directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmrep.errors import MmrepError


def load_item_embeddings(path: str | Path, mmap: bool = False) -> tuple[list[str], np.ndarray]:
    """Item ids and their embeddings `(N, D)` float32 from an export folder or a .npy/.safetensors file.

    `mmap=True` memory-maps a .npy so that a million-row file is not read into RAM at once.
    """
    path = Path(path)
    if not path.exists():
        raise MmrepError(f"embeddings not found: {path} (pass the folder written by `mmrep export`)")
    if path.is_dir() and (path / "index.json").is_file():
        from mmrep.export import load_embeddings  # the `mmrep export` format

        try:
            ids, array = load_embeddings(path, dtype=np.float32)
        except ValueError as e:  # EmbeddingFormatError: unfinished or corrupt export
            raise MmrepError(f"{path}: {e}") from None
        return _check([str(i) for i in ids], array, path)
    folder = path if path.is_dir() else path.parent
    file = path if path.is_file() else _first(folder, ("embeddings.npy", "embeddings.safetensors"))
    if file is None:
        raise MmrepError(
            f"no embeddings in {path}: expected embeddings.npy or embeddings.safetensors with ids.txt")
    if file.suffix == ".npy":
        try:
            array = _map_npy(file) if mmap else np.load(file, allow_pickle=False)
        except ValueError as e:
            raise MmrepError(f"{file} is not a readable .npy array ({e})") from None
        if array.dtype != np.float32 and not mmap:
            array = array.astype(np.float32)
    elif file.suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(str(file))
        key = "embeddings" if "embeddings" in tensors else next(iter(tensors), None)
        if key is None:
            raise MmrepError(f"{file} holds no tensors")
        array = tensors[key].astype(np.float32, copy=False)
    else:
        raise MmrepError(f"{file}: unsupported embeddings file (use .npy or .safetensors)")
    ids = read_ids(folder, len(array))
    return _check(ids, array, file)


def read_ids(folder: Path, n: int) -> list[str]:
    """Item ids for the rows of an embeddings file: ids.txt (one a line) or ids.json (a list)."""
    if (folder / "ids.txt").is_file():
        ids = (folder / "ids.txt").read_text().splitlines()
    elif (folder / "ids.json").is_file():
        ids = [str(i) for i in json.loads((folder / "ids.json").read_text())]
    else:
        raise MmrepError(f"no ids.txt in {folder}: write one item id per line, in row order")
    if len(ids) != n:
        raise MmrepError(f"{folder}/ids.txt has {len(ids)} ids but the embeddings have {n} rows")
    return ids


def _map_npy(file: Path) -> np.ndarray:
    """A read-only array over a memory map of a .npy file, without reading it (see `release_pages`)."""
    import mmap as mmap_mod

    with open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
        if fortran or dtype.hasobject:
            raise ValueError("only C-ordered numeric arrays can be memory-mapped")
        mm = mmap_mod.mmap(f.fileno(), 0, access=mmap_mod.ACCESS_READ)
    count = int(np.prod(shape))
    return np.frombuffer(mm, dtype=dtype, count=count, offset=offset).reshape(shape)


def release_pages(x: np.ndarray) -> None:
    """Drop the resident pages of a memory-mapped array (from `_map_npy`) so that streaming over a
    file larger than RAM keeps the process's memory bounded; a no-op for ordinary arrays."""
    import mmap as mmap_mod

    base = x
    while base is not None and not isinstance(base, mmap_mod.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    if base is not None and hasattr(mmap_mod, "MADV_DONTNEED"):
        base.madvise(mmap_mod.MADV_DONTNEED)


def save_item_embeddings(folder: str | Path, ids: list[str], array: np.ndarray) -> None:
    """Write the local layout (`embeddings.npy` + `ids.txt`); used by tests and benchmarks."""
    from mmrep.fsutil import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "embeddings.npy") as f:
        np.save(f, np.asarray(array, dtype=np.float32))
    with atomic_write(folder / "ids.txt", "w") as f:
        f.write("\n".join(ids) + "\n")


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _check(ids: list[str], array: np.ndarray, where: Path) -> tuple[list[str], np.ndarray]:
    if array.ndim != 2 or array.shape[0] == 0:
        raise MmrepError(f"{where}: embeddings must be a non-empty (N, D) array, got shape {array.shape}")
    if len(set(ids)) != len(ids):
        raise MmrepError(f"{where}: item ids are not unique; de-duplicate them before quantizing")
    return ids, array


def drop_non_finite(ids: list[str], x: np.ndarray, strict: bool = False, chunk: int = 65536,
                    what: str = "embeddings") -> tuple[list[str], np.ndarray]:
    """Rows holding NaN / inf (a damaged or diverged export) are skipped and counted with the shared
    one-line summary, or refused when `strict`; a clean (memory-mapped) array is returned untouched."""
    from mmrep.data.readers import SkipStats

    bad = np.concatenate([~np.isfinite(x[s:s + chunk]).all(axis=1) for s in range(0, len(x), chunk)]) \
        if len(x) else np.zeros(0, dtype=bool)
    if not bad.any():
        return ids, x
    first = ids[int(np.argmax(bad))]
    if strict:
        raise MmrepError(f"{what}: item {first!r} has a non-finite embedding (strict mode; re-export it, or drop "
                         "--strict to skip and count such rows)")
    stats = SkipStats()
    stats.record("non_finite", f"{what}: {int(bad.sum())} rows with NaN/inf (first: {first!r})", n=int(bad.sum()))
    stats.report(what)
    keep = np.flatnonzero(~bad)
    return [ids[i] for i in keep], np.ascontiguousarray(x[keep])
