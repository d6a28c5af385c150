"""`mmrep train` and the thin entry scripts (pretrain/train.py, posttrain/train.py): parse, build, run.

    mmrep train --stage pretrain --config configs/train/pretrain-tiny.yaml [--optim.lr=1e-3] [--resume latest]
    deepspeed --num_gpus 2 pretrain/train.py --config configs/train/pretrain-tiny.yaml
Top-level keys take `--key=value` too (`--output_dir=runs/x`, `--seed=1`, `--overwrite=true`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from mmrep.config import split_config_args
from mmrep.errors import MmrepError

STAGES = ("pretrain", "posttrain", "align")


def parse(argv: list[str], stage: str | None = None):
    """argv -> TrainConfig (config file + overrides + --stage/--resume)."""
    from mmrep.train.trainer import TrainConfig, load_config

    config, overrides, rest = split_config_args(argv)
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    remaining = []
    for arg in rest:  # `--output_dir=x`, bare `--overwrite`: top-level keys (split_config_args takes dotted ones)
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        (overrides if key in top and key != "stage" else remaining).append(arg)
    parser = argparse.ArgumentParser(prog="mmrep train" if stage is None else f"{stage}/train.py",
                                     description="Train an mmrep encoder under DeepSpeed.")
    parser.add_argument("--stage", choices=STAGES, default=stage, help="which objective / data to train on")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint tag (global_stepN) to continue from")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load checkpoint files without the safe allow-list (only checkpoints you wrote: a pickle "
                             "can run code)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(remaining)
    if config is None:
        raise MmrepError("--config is required (e.g. --config configs/train/pretrain-tiny.yaml)")
    if args.resume is not None:
        overrides.append(f"--checkpoint.resume={args.resume}")
    if args.trust_checkpoint:
        overrides.append("--checkpoint.trust=true")
    cfg = load_config(config, overrides, stage=args.stage)
    if not any(o[2:].split("=", 1)[0] == "output_dir" for o in overrides):
        from mmrep.train.summary import agent_output_dir

        cfg.output_dir = agent_output_dir(cfg.output_dir, overrides)
    return cfg


def main(argv: list[str]) -> int:
    """`mmrep train ...` (also the body of the entry scripts)."""
    from mmrep.train.summary import run

    cfg = parse(argv)
    run(cfg)
    return 0


def entry(argv: list[str], stage: str, prog: str = "") -> int:
    """Entry-script main: the stage is fixed; user errors end as one line (exit 2)."""
    try:
        from mmrep.train.summary import run

        run(parse(argv, stage=stage))
        return 0
    except MmrepError as e:
        print(f"{prog or stage + '/train.py'}: error: {e}", file=sys.stderr)
        return 2
