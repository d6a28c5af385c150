"""`mmrep augment`: parse, build the `augment` section, run the job, print its counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mmrep import augment
from mmrep.augment.config import AugmentConfig, AugmentRun
from mmrep.augment.job import augment_shards
from mmrep.augment.registry import AUGMENTERS
from mmrep.cli_support import CommandParser


def main(argv: list[str]) -> int:
    """`mmrep augment --shards DIR --out DIR [--config FILE] [--augment.key=value ...]`."""
    parser = CommandParser("mmrep augment", augment.__doc__.split("\n\n")[0], sections={"augment": AugmentConfig},
                           epilog=f"Augmenters: {', '.join(sorted(AUGMENTERS))}.")
    parser.add_argument("--shards", help="input product shard set (a split folder)")
    parser.add_argument("--out", help="output root; the new set goes to OUT/<split>/")
    parser.add_argument("--split", help="output split name (default: the input's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output set")
    parser.add_argument("--unsafe-allow-eval-split", action="store_true", default=None,
                        help="UNSAFE: augment a val/test/eval split anyway (contaminates evaluation)")
    call = parser.invoke(argv)
    args = call.args
    run = call.build(AugmentRun, {"augment.shards": args.shards, "augment.out": args.out, "augment.split": args.split,
                                  "augment.unsafe_allow_eval_split": args.unsafe_allow_eval_split})
    manifest = augment_shards(run.augment, overwrite=args.overwrite)
    print(json.dumps({"out": str(Path(run.augment.out) / manifest["split"]), "count": manifest["count"],
                      **manifest["augment"]}), file=sys.stdout)
    return 0
