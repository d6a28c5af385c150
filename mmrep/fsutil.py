"""Filesystem helpers: nothing a user had is lost or half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

from mmrep.errors import MmrepError


def umask_mode(is_dir: bool) -> int:
    """The mode a plain open() / mkdir() would give under this process's umask (temp files are 0600 / 0700)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return (0o777 if is_dir else 0o666) & ~mask


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode(False))  # readable like any file the user writes (e.g. by a team group)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: str | None = None, legacy: tuple[str, ...] = ()) -> Iterator[Path]:
    """Build a directory under a temp name; it appears under `path` only when complete.

    An existing `path` is replaced only after the new one is fully written. With `kind` the new folder
    gets the mmrep marker, and an existing non-empty `path` is only replaced if it is ours
    (`check_replaceable`).
    """
    path = Path(path)
    if kind is not None:
        check_replaceable(path, True, legacy)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, umask_mode(True))  # mkdtemp is private; the finished folder follows the umask
        if kind is not None:
            write_marker(tmp, kind)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# Every output folder mmrep creates (runs, imports, exports) holds this file; `--overwrite` only ever
# replaces a folder that has it, so a mistyped path can never delete a user's own files.
MARKER = ".mmrep"


def write_marker(folder: str | Path, kind: str) -> None:
    """Mark `folder` as written by mmrep (`kind`: run, import, export, ...)."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER).is_file():
        with atomic_write(folder / MARKER, "w") as f:
            json.dump({"kind": kind, "note": "written by mmrep; --overwrite may replace this folder"}, f)
            f.write("\n")


def has_marker(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def set_aside(folder: str | Path, names: list[str], aside: str) -> Path | None:
    """Move `folder`'s entries `names` into `folder/aside` (kept until `drop_aside` or `restore_aside`)."""
    folder = Path(folder)
    present = [n for n in names if (folder / n).exists() or (folder / n).is_symlink()]
    if not present:
        return None
    dest = folder / aside
    if dest.exists():
        # an earlier start-over died before its first checkpoint: `dest` still holds the older content, and
        # what is in the folder now was written by that attempt (by mmrep), so that is what goes
        for name in present:
            path = folder / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        return dest
    dest.mkdir()
    for name in present:
        os.replace(folder / name, dest / name)
    return dest


def restore_aside(folder: str | Path, aside: str) -> None:
    """Undo `set_aside`: entries written since are deleted, the set-aside ones move back."""
    folder, src = Path(folder), Path(folder) / aside
    if not src.is_dir():
        return
    for p in src.iterdir():
        target = folder / p.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(p, target)
    src.rmdir()


def drop_aside(folder: str | Path, aside: str) -> None:
    shutil.rmtree(Path(folder) / aside, ignore_errors=True)


def check_replaceable(path: str | Path, overwrite: bool, legacy: tuple[str, ...] = ()) -> Path:
    """An output folder a command will replace as a whole: absent or empty is fine; a non-empty one needs
    `--overwrite` and must be one mmrep wrote (the marker, or for folders from before it, all of `legacy`:
    files only mmrep writes there). Call it before the work, so a refusal costs nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MmrepError(f"--out {path} is a file; give a folder")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    ours = has_marker(path) or (bool(legacy) and all((path / name).exists() for name in legacy))
    if not ours:
        raise MmrepError(f"{path} is a non-empty folder that mmrep did not write (no {MARKER} file); choose another "
                         "output folder (--overwrite only replaces mmrep's own outputs)")
    if not overwrite:
        raise MmrepError(f"output folder {path} already exists and is not empty; pass --overwrite to replace it or "
                         "choose another one")
    return path
