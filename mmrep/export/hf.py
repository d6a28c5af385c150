"""Hugging Face export: an encoder -> a folder `transformers.AutoModel` and `sentence-transformers` load.

The folder holds `config.json` (model_type `mmrep_encoder`, `auto_map` -> `modeling_mmrep.py`),
`model.safetensors` (mmrep's weights under `backbone.`), the standalone modeling code (`hf_modeling.py`,
`st_module.py`: torch + transformers + open_clip/timm, never mmrep), tokenizer files when the encoder
reads an HF tokenizer, sentence-transformers' `modules.json`, and a model card (README.md). Loading runs
that code, so users opt in with `trust_remote_code=True`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mmrep.config import to_dict
from mmrep.errors import MmrepError
from mmrep.fsutil import atomic_dir
from mmrep.model.encoder import Encoder

HERE = Path(__file__).resolve().parent
MODELING_FILE = "modeling_mmrep.py"
ST_FILE = "sentence_mmrep.py"


def tower_configs(encoder: Encoder) -> dict[str, Any]:
    """Everything the standalone code needs to rebuild the towers without model-name lookups or local paths."""
    cfg = encoder.cfg
    out: dict[str, Any] = {}
    if cfg.backbone == "fusion":
        out["vision_width"], out["text_width"] = encoder.vision.width, encoder.text.width
        if cfg.vision.backend == "open_clip":
            out["vision_cfg"] = _open_clip_vision_cfg(cfg)
        if cfg.text.backend == "open_clip":
            out["text_cfg"] = _open_clip_text_cfg(cfg)
        else:
            out["text_hf_config"] = encoder.text.hf.config.to_dict()
    elif cfg.backbone == "clip":
        model_cfg = json.loads(json.dumps(encoder.model_cfg))
        if encoder.hf_text:
            model_cfg["text_cfg"].update(hf_model_name="", hf_tokenizer_name="")  # rebuilt from text_hf_config
            out["text_hf_config"] = encoder.clip.text.config.to_dict()
        out["open_clip_model_cfg"] = model_cfg
    else:
        out["mllm_hf_config"] = encoder.model.config.to_dict()
    for key in ("text_hf_config", "mllm_hf_config"):
        if key in out:
            out[key] = {k: v for k, v in out[key].items() if k not in ("_name_or_path", "transformers_version")}
    return out


def _open_clip_vision_cfg(cfg) -> dict[str, Any]:
    from mmrep.model.towers import open_clip_model_cfg

    v = cfg.vision
    if v.name:
        return dict(open_clip_model_cfg(v.name)["vision_cfg"], image_size=cfg.image_size)
    return dict(image_size=cfg.image_size, layers=v.layers, width=v.width, head_width=v.width // v.heads,
                mlp_ratio=v.mlp_ratio, patch_size=v.patch_size)


def _open_clip_text_cfg(cfg) -> dict[str, Any]:
    from mmrep.model.towers import OPEN_CLIP_VOCAB, open_clip_model_cfg

    t = cfg.text
    if t.name:
        return dict(open_clip_model_cfg(t.name)["text_cfg"])
    return dict(context_length=cfg.tokenizer.context_length, vocab_size=OPEN_CLIP_VOCAB, width=t.width, heads=t.heads,
                layers=t.layers, mlp_ratio=t.mlp_ratio)


def portable_model_dict(encoder: Encoder) -> dict[str, Any]:
    """The ModelConfig as a dict with machine paths removed (the export carries what they pointed at)."""
    m = to_dict(encoder.cfg)
    for section in ("vision", "text", "clip"):
        m[section]["pretrained"] = ""  # initial weights: already inside model.safetensors
    if m["text"]["backend"] == "hf" and m["text"]["name"]:
        m["text"]["name"] = "."
    if m["tokenizer"]["backend"] == "hf":
        m["tokenizer"]["path"] = "."
    m["mllm"]["path"] = "." if m["mllm"]["path"] else ""  # informational: the towers are rebuilt from `towers`
    return m


def copy_tokenizer(cfg, dest: Path) -> None:
    """Save the encoder's HF tokenizer files into `dest` (nothing for open_clip's built-in tokenizer)."""
    if cfg.tokenizer.backend != "hf":
        return
    from transformers import AutoTokenizer

    from mmrep.model.assets import source_dir

    try:
        tok = AutoTokenizer.from_pretrained(source_dir(cfg.tokenizer.path, "model.tokenizer.path"), local_files_only=True)
    except (OSError, ValueError) as e:
        raise MmrepError(f"model.tokenizer.path {cfg.tokenizer.path!r}: cannot read the tokenizer to copy it "
                         f"({str(e).splitlines()[0][:160]})") from None
    tok.save_pretrained(dest)
    (dest / "config.json").unlink(missing_ok=True)  # never let a tokenizer's side files replace ours


def native_moe_key(key: str) -> str:
    """DeepSpeed-MoE parameter names -> the native MoELayer's (`gate`, `experts.i`); the standalone code runs
    DeepSpeed's routing with the native layer (top-1 scaled by the gate probability, see hf_modeling.MoELayer)."""
    return key.replace(".moe.deepspeed_moe.gate.wg.", ".gate.").replace(".moe.deepspeed_moe.experts.deepspeed_experts.",
                                                                          ".experts.")


def export_hf(encoder: Encoder, out_dir: str | Path, card: str = "", text_kind: str = "query") -> Path:
    """Write the HF / sentence-transformers folder for any backbone; -> out_dir."""
    from safetensors.torch import save_file

    from mmrep.export.hf_modeling import MmrepEncoderConfig

    cfg = encoder.cfg
    hf_cfg = MmrepEncoderConfig(mmrep=portable_model_dict(encoder), towers=tower_configs(encoder))
    hf_cfg.architectures = ["MmrepEncoderModel"]
    hf_cfg.auto_map = {"AutoConfig": f"{MODELING_FILE[:-3]}.MmrepEncoderConfig",
                       "AutoModel": f"{MODELING_FILE[:-3]}.MmrepEncoderModel"}
    state = {f"backbone.{native_moe_key(k)}": v.detach().float().contiguous().clone() if v.is_floating_point()
             else v.detach().clone() for k, v in encoder.state_dict().items()}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        copy_tokenizer(cfg, tmp)
        hf_cfg.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        shutil.copyfile(HERE / "hf_modeling.py", tmp / MODELING_FILE)
        shutil.copyfile(HERE / "st_module.py", tmp / ST_FILE)
        (tmp / "modules.json").write_text(json.dumps(
            [{"idx": 0, "name": "0", "path": "", "type": f"{ST_FILE[:-3]}.MmrepSentenceModule"}], indent=2))
        (tmp / "mmrep_sentence_config.json").write_text(json.dumps({"text_kind": text_kind}, indent=2))
        (tmp / "config_sentence_transformers.json").write_text(json.dumps(
            {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
             "similarity_fn_name": "cosine"}, indent=2))
        if card:
            (tmp / "README.md").write_text(card)
    return out_dir

