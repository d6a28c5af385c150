"""DeepSpeed / torchrun launcher target for `mmrep export` (each rank exports a disjoint set of parts).

    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 eval/export.py --encoder RUN/encoder --shards DIR --out EMB
"""

import sys

from mmrep.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
