"""`mmrep train` and the thin entry scripts (pretrain/train.py, posttrain/train.py): parse, build, run.

    mmrep train --stage pretrain --config configs/train/pretrain-tiny.yaml [--optim.lr=1e-3] [--resume latest]
    deepspeed --num_gpus 2 pretrain/train.py --config configs/train/pretrain-tiny.yaml
Top-level keys take `--key=value` too (`--output_dir=runs/x`, `--seed=1`, `--overwrite=true`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from mmrep.cli_support import CommandParser
from mmrep.errors import MmrepError

STAGES = ("pretrain", "posttrain", "align")


def build_parser(stage: str | None = None, prog: str = "") -> CommandParser:
    from mmrep.train.trainer import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    sections, top = {}, []
    for f in dataclasses.fields(TrainConfig):
        # `model` is a section or a model YAML path (ModelConfig | str): list the section's keys
        tp = next((a for a in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(a)), hints[f.name])
        if dataclasses.is_dataclass(tp):
            sections[f.name] = tp
        if f.name != "stage" and (not dataclasses.is_dataclass(tp) or str in typing.get_args(hints[f.name])):
            top.append(f.name)  # a plain key, or `--model=PATH` (a model YAML); --stage is a flag
    parser = CommandParser(prog or ("mmrep train" if stage is None else f"{stage}/train.py"),
                           "Train an mmrep encoder under DeepSpeed (pretrain, post-train or item alignment).",
                           sections=sections, top_level=top,
                           config_help="YAML training config (required), e.g. configs/train/pretrain-tiny.yaml; "
                                       "`model:` may name a model YAML, and --model.KEY=VALUE then edits that file's "
                                       "settings")
    parser.add_argument("--stage", choices=STAGES, default=stage,
                        help="which objective / data to train on (default: " + (stage or "the config's stage") + ")")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint tag (global_stepN) to continue from")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load checkpoint files without the safe allow-list (only checkpoints you wrote: a pickle "
                             "can run code)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def parse(argv: list[str], stage: str | None = None, prog: str = ""):
    """argv -> TrainConfig (config file + overrides + --stage/--resume)."""
    from mmrep.train.trainer import load_config

    call = build_parser(stage, prog).invoke(argv)
    args, overrides = call.args, list(call.overrides)
    if call.config is None:
        raise MmrepError("--config is required (e.g. --config configs/train/pretrain-tiny.yaml)")
    if args.resume is not None:
        overrides.append(f"--checkpoint.resume={args.resume}")
    if args.trust_checkpoint:
        overrides.append("--checkpoint.trust=true")
    cfg = load_config(call.config, overrides, stage=args.stage)
    if not any(o[2:].split("=", 1)[0] == "output_dir" for o in overrides):
        from mmrep.train.summary import agent_output_dir

        cfg.output_dir = agent_output_dir(cfg.output_dir, overrides)
    return cfg


def main(argv: list[str]) -> int:
    """`mmrep train ...` (also the body of the entry scripts)."""
    from mmrep.train.summary import run

    run(parse(argv))
    return 0


def entry(argv: list[str], stage: str, prog: str = "") -> int:
    """Entry-script main: `stage` is the default (`--stage` picks another); user errors end as one line (exit 2)."""
    prog = prog or f"{stage}/train.py"
    try:
        from mmrep.train.summary import run

        run(parse(argv, stage=stage, prog=prog))
        return 0
    except MmrepError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
