"""Launcher target for `mmrep eval mbe` (see `mmrep eval mbe --help`)."""

import sys

from mmrep.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "mbe", *sys.argv[1:]]))
