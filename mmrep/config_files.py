"""Where config files are found, inside a checkout or an installed package, and `mmrep configs list|show|path`.

A relative config path resolves against the file that names it, then the working directory, then the
packaged configs (the repository's top-level `configs/`, shipped as `mmrep/configs/` in the wheel), so
`--config train/pretrain-tiny.yaml` and the `configs/deepspeed/zero1.json` inside it work from any folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mmrep.errors import MmrepError

PACKAGE = Path(__file__).resolve().parent
SUFFIXES = (".yaml", ".yml", ".json")


def packaged_root() -> Path | None:
    """The installed package's configs/ (wheel), else the checkout's top-level configs/."""
    for cand in (PACKAGE / "configs", PACKAGE.parent / "configs"):
        if cand.is_dir():
            return cand
    return None


def find_config(path: str | Path, named_in: str | Path | None = None, key: str = "--config") -> Path:
    """`path` as an existing file: absolute; else relative to `named_in`'s folder, the cwd, the packaged configs."""
    p = Path(path)
    if p.is_absolute():
        if p.is_file():
            return p
        raise MmrepError(f"{key} {str(path)!r} not found")
    cands = [Path(named_in).parent / p] if named_in else []
    cands.append(p)
    root = packaged_root()
    if root is not None:
        inner = Path(*p.parts[1:]) if p.parts and p.parts[0] == "configs" and len(p.parts) > 1 else p
        cands += [root / inner] + [root / inner.with_suffix(s) for s in SUFFIXES if not inner.suffix]
    for cand in cands:
        if cand.is_file():
            return cand
    where = f"next to {named_in}, " if named_in else ""
    raise MmrepError(f"{key} {str(path)!r} not found ({where}in the working directory, or among the packaged "
                     "configs; `mmrep configs list` shows those)")


def list_configs() -> list[str]:
    root = packaged_root()
    if root is None:
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES)


def _packaged_root() -> Path:
    root = packaged_root()
    if root is None:
        raise MmrepError("no packaged configs found (broken install?); reinstall mmrep")
    return root


def list_main(argv: list[str]) -> int:
    """`mmrep configs list`: every packaged config, by the name `show` / `path` and `--config` take."""
    from mmrep.cli_support import CommandParser

    CommandParser("mmrep configs list", "list the packaged configs (copy one to start: "
                  "mmrep configs show train/pretrain-tiny.yaml > my.yaml)", config_help=None).invoke(argv)
    _packaged_root()
    names = list_configs()
    if not names:
        raise MmrepError("no packaged configs found (broken install?); reinstall mmrep")
    print("\n".join(names))
    return 0


def _named(argv: list[str], verb: str, what: str) -> Path:
    from mmrep.cli_support import CommandParser

    p = CommandParser(f"mmrep configs {verb}", what, config_help=None)
    p.add_argument("name", help="a packaged config as `mmrep configs list` names it, e.g. train/pretrain-tiny.yaml")
    args = p.invoke(argv).args
    return find_config(args.name, _packaged_root() / "_", key="config")


def show_main(argv: list[str]) -> int:
    """`mmrep configs show NAME`: print a packaged config (redirect it to a file to edit a copy)."""
    sys.stdout.write(_named(argv, "show", "print a packaged config (redirect to a file to edit a copy)").read_text())
    return 0


def path_main(argv: list[str]) -> int:
    """`mmrep configs path NAME`: where a packaged config lives."""
    sys.stdout.write(f"{_named(argv, 'path', 'print where a packaged config lives')}\n")
    return 0
