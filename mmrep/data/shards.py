"""Writing WebDataset shard sets: deterministic names, atomic shards, a manifest with counts.

A shard set is a folder `<out>/<split>/` holding `<split>-000000.tar`, ... and `manifest.json`:
    {"split": ..., "kind": "products"|"triplets", "count": N, "shards": [{"name", "count"}, ...]}
Each shard is written to a temp name and renamed when complete, so a crash never leaves a truncated
tar under a final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import webdataset as wds

from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_write

MANIFEST = "manifest.json"


class ShardWriter:
    """Writes samples into `<out_dir>/<prefix>-NNNNNN.tar`, `max_count` samples per shard."""

    def __init__(self, out_dir: str | Path, prefix: str, max_count: int = 10_000, kind: str = "products",
                 mtime: float | None = None):
        # mtime: a fixed member timestamp makes the tar bytes reproducible (None = now)
        if max_count < 1:
            raise MmrepError("shard size (max_count) must be at least 1")
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.max_count = max_count
        self.kind = kind
        self.mtime = mtime
        self.shards: list[dict[str, Any]] = []
        self._tar: wds.TarWriter | None = None
        self._tmp: Path | None = None
        self._count = 0
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tmp = self.out_dir / f".{name}.tmp"
        self._tar = wds.TarWriter(str(self._tmp), mtime=self.mtime)
        self.shards.append({"name": name, "count": 0})

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        os.replace(self._tmp, self.out_dir / self.shards[-1]["name"])
        self._tar, self._tmp = None, None

    def write(self, sample: dict[str, Any]) -> None:
        if "__key__" not in sample:
            raise ValueError("sample needs a __key__")
        if self._tar is None or self.shards[-1]["count"] >= self.max_count:
            self._close_shard()
            self._open()
        self._tar.write(sample)
        self.shards[-1]["count"] += 1
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish the last shard and write the manifest; returns it."""
        self._close_shard()
        manifest = {"split": self.prefix, "kind": self.kind, "count": self._count, "shards": self.shards}
        manifest.update(extra or {})
        with atomic_write(self.out_dir / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
        return manifest

    def abort(self) -> None:
        """Drop the shard in progress (its temp file); finished shards stay."""
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self._tar, self._tmp = None, None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_manifest(split_dir: str | Path) -> dict[str, Any]:
    path = Path(split_dir) / MANIFEST
    if not path.is_file():
        raise MmrepError(f"no {MANIFEST} in {split_dir}: is it a shard set written by `mmrep data import/synth`?")
    return json.loads(path.read_text())


def shard_paths(split_dir: str | Path) -> list[str]:
    """The tar files of a shard set (from its manifest, or every *.tar for img2dataset folders)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise MmrepError(f"shard folder not found: {split_dir} (check the path)")
    if (split_dir / MANIFEST).is_file():
        names = [s["name"] for s in read_manifest(split_dir)["shards"]]
        paths = [split_dir / n for n in names]
    else:
        paths = sorted(split_dir.glob("*.tar"))
    if not paths:
        raise MmrepError(f"no .tar shards in {split_dir}")
    return [str(p) for p in paths]
