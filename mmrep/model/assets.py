"""Self-contained encoder folders: the small files an encoder needs besides its weights travel with it.

`save_encoder` copies the HF text-model config, the tokenizer files and the base-VLM config into
`assets/` and records them by folder-relative paths; `load_config` turns those back into paths under
the folder it reads. Weights are never copied twice (they are in model.safetensors) and pretrained-weight
paths are dropped from the stored config, so no path of the training machine is stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmrep.errors import MmrepError

ASSETS = "assets"
# config key -> (section, field, subfolder) of each asset an encoder may need
KEYS = {"model.text.name": ("text", "name", "text"), "model.tokenizer.path": ("tokenizer", "path", "tokenizer"),
        "model.mllm.path": ("mllm", "path", "mllm")}


def source_dir(name: str, key: str) -> str:
    """A config's model reference as a local directory (`python:PKG` resolved)."""
    from mmrep.pretrained import resolve_model_dir

    return resolve_model_dir(name, key)


def _needed(model: dict[str, Any], section: str) -> bool:
    if section == "tokenizer":
        return model["tokenizer"]["backend"] == "hf"
    from mmrep.model.registry import get_backbone

    return section in get_backbone(model["backbone"]).assets(model)


def _copy(section: str, src: str, dest: Path, family: str) -> None:
    if section == "tokenizer":
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(dest)
    elif section == "text":
        from transformers import AutoConfig

        AutoConfig.from_pretrained(src).save_pretrained(dest)
    else:
        from mmrep.model.qwen import qwen_classes

        qwen_classes(family)[0].from_pretrained(src).save_pretrained(dest)


def bundle(model: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Copy the assets `model` (a ModelConfig dict) names into folder/assets; -> the dict with relative paths."""
    model = {k: dict(v) if isinstance(v, dict) else v for k, v in model.items()}
    for section in ("vision", "text", "clip"):
        model[section]["pretrained"] = ""  # initial weights: already part of model.safetensors
    for key, (section, field, sub) in KEYS.items():
        if not _needed(model, section):
            continue
        name = model[section][field]
        rel = f"{ASSETS}/{sub}"
        try:
            _copy(section, source_dir(name, key), folder / rel, model["mllm"]["family"])
        except (OSError, ValueError) as e:
            raise MmrepError(f"{key} {name!r}: cannot copy it into the encoder folder ({str(e).splitlines()[0][:160]})") from None
        model[section][field] = rel
    return model


def resolve(model: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Folder-relative asset paths in a stored ModelConfig dict -> paths under `folder` (others unchanged)."""
    for section, field, _ in KEYS.values():
        value = (model.get(section) or {}).get(field)
        if isinstance(value, str) and value and not value.startswith("python:") and not Path(value).is_absolute():
            if (folder / value).exists():
                model[section][field] = str((folder / value).resolve())
    return model
