"""Stage 2 entry: `deepspeed posttrain/train.py --config configs/train/posttrain-tiny.yaml [--a.b=v] [--resume latest]`.

Post-training starts from the pretrain run named by `init_from` in the config. Item alignment (QARM)
runs through the same script with `--stage align`.
"""

import sys

from mmrep.train.cli import entry

if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:], stage="posttrain", prog="posttrain/train.py"))
