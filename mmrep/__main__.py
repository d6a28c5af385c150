"""`python -m mmrep ...` is the `mmrep` command."""

import sys

from mmrep.cli import main

sys.exit(main())
