"""`mmrep augment`: parse, build the `augment` section, run the job, print its counts."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from mmrep import augment, config
from mmrep.augment.config import AugmentConfig, AugmentRun
from mmrep.augment.job import augment_shards
from mmrep.augment.registry import AUGMENTERS


def main(argv: list[str]) -> int:
    """`mmrep augment --shards DIR --out DIR [--config FILE] [--augment.key=value ...]`."""
    cfg_path, overrides, rest = config.split_config_args(argv)
    keys = ", ".join(f.name for f in dataclasses.fields(AugmentConfig))
    parser = argparse.ArgumentParser(
        prog="mmrep augment", description=augment.__doc__.split("\n\n")[0],
        epilog=f"Config: --config FILE (an `augment:` section) and --augment.KEY=VALUE overrides; keys: {keys}. "
               f"Augmenters: {', '.join(sorted(AUGMENTERS))}.")
    parser.add_argument("--shards", help="input product shard set (a split folder)")
    parser.add_argument("--out", help="output root; the new set goes to OUT/<split>/")
    parser.add_argument("--split", help="output split name (default: the input's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output set")
    parser.add_argument("--unsafe-allow-eval-split", action="store_true",
                        help="UNSAFE: augment a val/test/eval split anyway (contaminates evaluation)")
    args = parser.parse_args(rest)
    for key in ("shards", "out", "split"):
        if getattr(args, key):
            overrides.append(f"--augment.{key}={getattr(args, key)}")
    if args.unsafe_allow_eval_split:
        overrides.append("--augment.unsafe_allow_eval_split=true")
    run = config.load(AugmentRun, cfg_path, overrides)
    manifest = augment_shards(run.augment, overwrite=args.overwrite)
    print(json.dumps({"out": str(Path(run.augment.out) / manifest["split"]), "count": manifest["count"],
                      **manifest["augment"]}), file=sys.stdout)
    return 0
