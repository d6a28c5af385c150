"""Stage 1 entry: `deepspeed pretrain/train.py --config configs/train/pretrain-tiny.yaml [--a.b=v] [--resume latest]`.

Also runs as plain `python pretrain/train.py ...` (one process, no launcher needed).
"""

import sys

from mmrep.train.cli import entry

if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:], stage="pretrain"))
