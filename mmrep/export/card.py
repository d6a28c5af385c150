"""Model card (README.md) of an exported encoder: what it is, what it was trained on, how good it is, how to load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmrep.config import read_yaml
from mmrep.errors import MmrepError


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = float(value)


def read_metrics(path: str | Path) -> dict[str, float]:
    """Numbers of an evaluation report JSON (e.g. `mmrep eval mbe` report.json), flattened to dotted keys."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MmrepError(f"--metrics {path}: not a readable JSON report ({e}); pass an eval report.json") from None
    out: dict[str, float] = {}
    _flatten("", data, out)
    return out


def training_summary(run_dir: Path | None) -> dict[str, Any]:
    """Stage, data folder name and last logged step / loss of the run that produced the encoder (when known)."""
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return {}
    cfg = read_yaml(run_dir / "config.yaml")
    data = cfg.get("data") or {}
    summary: dict[str, Any] = {"stage": cfg.get("stage", "?"), "data": "/".join(Path(str(data.get("shards", "?"))).parts[-3:])}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        last = [line for line in metrics.read_text().splitlines() if line.strip()]
        if last:
            row = json.loads(last[-1])
            summary.update(step=row.get("step"), loss=row.get("loss"))
    return summary


def model_card(cfg, name: str, formats: list[str], data: str = "", metrics: dict[str, float] | None = None,
               run_dir: Path | None = None) -> str:
    """Markdown card for ModelConfig `cfg`; `data` describes the training data in the user's words."""
    run = training_summary(run_dir)
    moe = "none (dense)" if not cfg.moe.enabled else f"{cfg.moe.mode}, {cfg.moe.num_experts} experts, top-{cfg.moe.top_k}"
    lines = [
        "---", "library_name: transformers", "pipeline_tag: feature-extraction",
        "tags: [mmrep, product-embeddings, multimodal, sentence-transformers]", "---", "",
        f"# {name}", "",
        "A multimodal product encoder trained with mmrep (MOON / MOON2.0-style). It maps a "
        "product (title, category, attributes, description and images), a text query, or an image to one "
        "L2-normalised vector; compare vectors by cosine similarity (dot product).", "",
        "## Model", "",
        f"- backbone: `{cfg.backbone}`, embedding size {cfg.embed_dim}"
        + (f" (Matryoshka prefixes {cfg.matryoshka_dims})" if cfg.matryoshka_dims else ""),
        f"- image size {cfg.image_size} px, mean {cfg.image_mean}, std {cfg.image_std} (centre square crop, bicubic)",
        f"- tokenizer: {cfg.tokenizer.backend}, context {cfg.tokenizer.context_length} tokens"
        + (", lower-cased" if cfg.tokenizer.lowercase else ""),
        f"- mixture of experts: {moe}", "",
        "## Training data", "",
        data or (f"Stage `{run.get('stage')}` on the shard set `{run.get('data')}`." if run else
                 "Not recorded: pass `--data \"...\"` to `mmrep export-model` to describe it."),
    ]
    if run.get("step") is not None:
        lines += ["", f"Last logged training step {run['step']}, loss {run.get('loss', float('nan')):.4f}."]
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
    else:
        lines += ["No evaluation report was attached to this export (`mmrep export-model --metrics REPORT.json`)."]
    lines += [
        "", "## Intended use", "",
        "Retrieval and recommendation features for the catalogue domain it was trained on: item-to-item "
        "similarity, text-query and image-query search, clustering, downstream CTR / classification features. "
        "Out of scope: domains far from the training catalogue, and decisions about people. The embeddings "
        "inherit biases of the catalogue and its images.", "",
        "## Loading without mmrep", "",
    ]
    if "hf" in formats:
        lines += [
            "The folder carries its own modeling code (`modeling_mmrep.py`, `sentence_mmrep.py`; torch, transformers"
            + (", open_clip_torch" if cfg.backbone != "mllm" and (cfg.vision.backend == "open_clip" or cfg.backbone == "clip") else "")
            + (", timm" if cfg.backbone == "fusion" and cfg.vision.backend == "timm" else "")
            + "). Loading it runs that code: read it, then opt in with `trust_remote_code=True`.", "",
            "```python", "from transformers import AutoModel",
            "model = AutoModel.from_pretrained(PATH, trust_remote_code=True).eval()",
            "q = model.encode(texts=[\"red cotton shirt\"])                      # queries",
            "p = model.encode(texts=[{\"title\": \"Shirt\", \"category\": [\"Men\", \"Shirts\"],",
            "                         \"attributes\": {\"color\": \"red\"}}], images=[pil_image], kind=\"product\")",
            "", "from sentence_transformers import SentenceTransformer   # 6.x (tested with 6.2.0)",
            "st = SentenceTransformer(PATH, trust_remote_code=True)",
            "st.encode([\"red cotton shirt\", pil_image, {\"text\": \"red shirt\", \"image\": pil_image}])", "```", ""]
    if "open_clip" in formats:
        lines += [
            "open_clip (tested with open_clip_torch 3.3.0):", "", "```python", "import open_clip",
            "model, _, preprocess = open_clip.create_model_and_transforms(\"local-dir:PATH\")  # or hf-hub:ORG/NAME",
            "tokenizer = open_clip.get_tokenizer(\"local-dir:PATH\")",
            "text, image = model.encode_text(tokenizer([\"red shirt\"]), normalize=True), "
            "model.encode_image(preprocess(img)[None], normalize=True)",
            "both = torch.nn.functional.normalize(text + image, dim=-1)  # what mmrep uses for text + image", "```", ""]
    return "\n".join(lines)
