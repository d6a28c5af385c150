"""`mmrep export-model`: an encoder folder or a DeepSpeed checkpoint tag -> formats other tools load.

    mmrep export-model --encoder RUN/encoder --out EXPORT [--format hf|open_clip|encoder|all]
    mmrep export-model --checkpoint RUN/checkpoints [--tag global_step500|latest] --out EXPORT --format encoder
Formats (each into its own subfolder of --out when several are asked for):
  hf        transformers AutoModel + sentence-transformers folder (custom code, trust_remote_code=True)
  open_clip open_clip hf-hub layout (two-tower `clip` encoders only), load as local-dir:DIR / hf-hub:ORG/NAME
  encoder   an mmrep encoder folder (what training writes at the end), e.g. from an intermediate checkpoint
"""

from __future__ import annotations

from pathlib import Path

from mmrep.cli_support import CommandParser
from mmrep.errors import MmrepError

FORMATS = ("hf", "open_clip", "encoder")
MARKER = "mmrep_export.json"  # written last into every export: --overwrite replaces only folders holding it


def build_parser() -> CommandParser:
    # --config here is the run's own resolved config.yaml (to rebuild its model), not a command config
    p = CommandParser("mmrep export-model", "export an encoder for transformers, sentence-transformers, open_clip, "
                      "or as an mmrep encoder folder", config_help="the run's resolved config.yaml, to rebuild the "
                      "model of a --checkpoint (default: next to the checkpoint folder)", config_note=False)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--encoder", help="encoder folder (RUN/encoder) or a run folder holding encoder/")
    src.add_argument("--checkpoint", help="DeepSpeed checkpoint folder (RUN/checkpoints) or the run folder")
    p.add_argument("--tag", default="latest", help="checkpoint tag (global_stepN) or 'latest' (with --checkpoint)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="hf", choices=[*FORMATS, "all"],
                   help="hf (default), open_clip, encoder, or all that apply to this backbone")
    p.add_argument("--name", default="", help="model name for the card (default: the --out folder name)")
    p.add_argument("--data", default="", help="training data description for the model card")
    p.add_argument("--metrics", default="", help="evaluation report JSON whose numbers go into the model card")
    p.add_argument("--hf-text-id", default="", help="open_clip format with an HF text tower: the tower's hub id "
                   "(open_clip reads its config from there), e.g. sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--legacy-bin", action="store_true", help="open_clip format: also write open_clip_pytorch_model.bin "
                   "for open_clip versions without safetensors support")
    p.add_argument("--text-kind", default="query", choices=["query", "product"],
                   help="sentence-transformers: plain strings are queries (default) or product titles")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def main(argv: list[str]) -> int:
    from mmrep.export.card import model_card, read_metrics
    from mmrep.model.from_checkpoint import encoder_from_checkpoint
    from mmrep.model import load_encoder, save_encoder

    call = build_parser().invoke(argv)
    args = call.args
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise MmrepError(f"--out {out} exists; pass --overwrite to replace it or choose another folder")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise MmrepError(f"--out {out} was not written by mmrep export-model (no {MARKER}); refusing to replace it, "
                         "choose another folder")
    metrics = read_metrics(args.metrics) if args.metrics else None  # validate before any work
    if args.encoder:
        src = Path(args.encoder)
        src = src / "encoder" if (src / "encoder").is_dir() else src
        encoder, run_dir = load_encoder(src), src.parent
    else:
        encoder = encoder_from_checkpoint(args.checkpoint, args.tag, call.config)
        ckpt = Path(args.checkpoint)
        run_dir = ckpt if (ckpt / "checkpoints").is_dir() else ckpt.parent
    backbone = encoder.cfg.backbone
    formats = [f for f in FORMATS if f != "open_clip" or backbone == "clip"] if args.format == "all" else [args.format]
    card = model_card(encoder.cfg, args.name or out.name, formats, args.data, metrics, run_dir)
    written = []
    for fmt in formats:
        dest = out / fmt if len(formats) > 1 else out
        if fmt == "hf":
            from mmrep.export.hf import export_hf

            export_hf(encoder, dest, card, args.text_kind)
        elif fmt == "open_clip":
            from mmrep.export.open_clip_hub import export_open_clip_hub

            export_open_clip_hub(encoder, dest, card, args.hf_text_id, args.legacy_bin)
        else:
            save_encoder(encoder, dest)
        written.append(f"{fmt} -> {dest}")
        _mark(dest, [fmt])
    if len(formats) > 1:
        _mark(out, formats)
    print(f"exported the {backbone} encoder: " + "; ".join(written))
    return 0


def _mark(folder: Path, formats: list[str]) -> None:
    import json

    from mmrep.fsutil import atomic_write

    with atomic_write(folder / MARKER, "w") as f:
        json.dump({"written_by": "mmrep export-model", "formats": formats}, f)
