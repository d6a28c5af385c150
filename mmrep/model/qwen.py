"""The transformers classes of the Qwen2-VL family (the mllm backbone builds them, save_encoder copies their config)."""

from __future__ import annotations

from typing import Any


def qwen_classes(family: str) -> tuple[Any, Any]:
    """-> (config class, model class) for `model.mllm.family`."""
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

        return Qwen2_5_VLConfig, Qwen2_5_VLModel
    from transformers import Qwen2VLConfig, Qwen2VLModel

    return Qwen2VLConfig, Qwen2VLModel
