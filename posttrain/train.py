"""Stage 2 entry: `deepspeed posttrain/train.py --config configs/train/posttrain-tiny.yaml [--a.b=v] [--resume latest]`.

Post-training starts from the pretrain run named by `init_from` in the config. Item alignment (QARM)
runs through the same script with `--stage align`.
"""

import sys

from mmrep.train.cli import STAGES, entry

if __name__ == "__main__":
    argv = sys.argv[1:]
    stage = "posttrain"
    if "--stage" in argv:  # item alignment shares this entry point
        i = argv.index("--stage")
        stage = argv[i + 1] if i + 1 < len(argv) and argv[i + 1] in STAGES else stage
        argv = argv[:i] + argv[i + 2:]
    sys.exit(entry(argv, stage=stage, prog="posttrain/train.py"))
