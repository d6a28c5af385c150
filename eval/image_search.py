"""Launcher target for `mmrep eval image-search` (see `mmrep eval image-search --help`)."""

import sys

from mmrep.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "image-search", *sys.argv[1:]]))
