"""Scaling-law sweeps: W&B sweep files run by `wandb agent` online or by `mmrep sweep` offline, then fitted.

    spec    the sweep file: load, check against W&B's own validator, shrink from the command line, expand
    agent   the commands `wandb agent` builds (W&B's own code), run locally, sequentially or in parallel
    laws    saturating power laws L(x) = a·x^(−b) + c with bootstrap intervals, the compute-optimal frontier
    report  fits JSON, plots (PNG) and a Markdown report; W&B gets the plots when logging is on
    cli     `mmrep sweep FILE --out DIR` and `mmrep sweep fit DIR`
Each training run writes its own `summary.json` (`mmrep.train.summary`); the sweep reads those.
"""
