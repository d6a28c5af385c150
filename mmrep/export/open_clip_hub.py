"""open_clip hf-hub layout for a two-tower `clip` encoder: loadable as `local-dir:DIR` or, once uploaded, `hf-hub:ORG/NAME`.

Files: `open_clip_config.json` ({model_cfg, preprocess_cfg}), `open_clip_model.safetensors`, the HF
tokenizer files when the text tower is an HF model (open_clip reads them from the folder under
`local-dir:`), optionally `open_clip_pytorch_model.bin` for open_clip versions without safetensors
support, and a model card. Unlike the training-time model, `logit_scale` is stored 0-dim and the
config carries no `nonscalar_logit_scale` key, so open_clip versions before that option load it too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_dir

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
LEGACY_WEIGHTS = "open_clip_pytorch_model.bin"


def hub_config(encoder, hf_text_id: str = "") -> dict[str, Any]:
    """open_clip_config.json for a ClipEncoder, free of local paths."""
    cfg = encoder.cfg
    model_cfg = json.loads(json.dumps(encoder.model_cfg))
    model_cfg.pop("nonscalar_logit_scale", None)
    if encoder.hf_text:
        if not hf_text_id:
            raise MmrepError("this clip encoder's text tower is an HF model: open_clip rebuilds it from the model's "
                             "hub id (its config only; the weights come from this export), so pass --hf-text-id, e.g. "
                             "--hf-text-id sentence-transformers/all-MiniLM-L6-v2")
        model_cfg["text_cfg"].update(hf_model_name=hf_text_id, hf_tokenizer_name=hf_text_id, hf_model_pretrained=False)
    return {"model_cfg": model_cfg,
            "preprocess_cfg": {"size": cfg.image_size, "mean": list(cfg.image_mean), "std": list(cfg.image_std),
                               "interpolation": "bicubic", "resize_mode": "shortest"}}


def export_open_clip_hub(encoder, out_dir: str | Path, card: str = "", hf_text_id: str = "",
                         legacy_bin: bool = False) -> Path:
    """Write the open_clip hub layout of a `clip` encoder into out_dir; -> out_dir."""
    import torch
    from safetensors.torch import save_file

    from mmrep.model.backbones.clip import ClipEncoder

    if not isinstance(encoder, ClipEncoder):
        raise MmrepError(f"--format open_clip needs a two-tower 'clip' encoder, this one is {encoder.cfg.backbone!r}; "
                         "use --format hf (transformers / sentence-transformers) for it")
    meta = hub_config(encoder, hf_text_id)
    state = {k: v.detach().float().contiguous().clone() for k, v in encoder.clip.state_dict().items()}
    state["logit_scale"] = state["logit_scale"].reshape(())
    if "logit_bias" in state:
        state["logit_bias"] = state["logit_bias"].reshape(())
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        from mmrep.export.hf import copy_tokenizer

        copy_tokenizer(encoder.cfg, tmp)
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
        save_file(state, str(tmp / WEIGHTS))
        if legacy_bin:
            torch.save(state, tmp / LEGACY_WEIGHTS)
        if card:
            (tmp / "README.md").write_text(card)
    return out_dir
