"""`mmrep data synth`: generate the built-in product world.

    mmrep data synth --size tiny --out worlds/tiny [--seed N] [--overwrite] [--config F] [--world.key=value ...]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrep.cli_support import CommandParser, command_line
from mmrep.config import deep_merge, from_dict, parse_override, read_yaml, set_dotted
from mmrep.errors import MmrepError
from mmrep.synth.config import PRESETS, SynthConfig, WorldConfig
from mmrep.synth.records import SPLITS
from mmrep.synth.world import check_out_dir, generate_world


def resolve_config(size: str, config: str | None = None, overrides: list[str] = (), seed: int | None = None
                   ) -> SynthConfig:
    """Preset `size`, then the YAML file's `world:` section (other sections are left to their stages),
    then `--world.key=value`, then `--seed`."""
    if size not in PRESETS:
        raise MmrepError(f"--size {size!r} is not one of {sorted(PRESETS)}")
    raw: dict = {"world": dict(PRESETS[size])}
    if config:
        data = read_yaml(config)
        # a whole-pipeline config holds other stages' sections too: only `world:` is ours
        deep_merge(raw, {"world": data["world"]} if isinstance(data.get("world"), dict) else data)
    for item in overrides:
        key, value = parse_override(item)
        if not key.startswith("world."):
            raise MmrepError(f"override {item!r}: synth settings live under world. (e.g. --world.n_items=1000)")
        set_dotted(raw, key, value)
    if seed is not None:
        raw["world"]["seed"] = seed
    return from_dict(SynthConfig, raw)


@dataclass
class WorldJob:
    """`mmrep data synth`: the built-in world of preset `size` (+ `--world.key=value` overrides) into `out`."""

    out: str
    size: str = "tiny"
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)  # --world.key=value
    config: str = ""  # a YAML with a `world:` section
    overwrite: bool = False
    workers: int = 0
    quiet: bool = False

    def argv(self) -> list[str]:
        return command_line("data synth", flags={
            "size": self.size, "seed": self.seed, "config": self.config, "out": self.out, "overwrite": self.overwrite,
            "workers": self.workers or None, "quiet": self.quiet}) + list(self.overrides)


@dataclass
class WorldResult:
    path: str
    counts: dict[str, Any]
    ctr_split_time: float | None  # the CTR model's train/test split in time (later impressions are test)
    seconds: float


def synthesize(job: WorldJob) -> WorldResult:
    """Generate the world (built under a temp name, renamed when complete)."""
    cfg = resolve_config(job.size, job.config or None, job.overrides, job.seed).world
    check_out_dir(job.out, job.overwrite)  # fail before announcing anything
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        if not job.quiet:
            print(f"  [{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    print(f"generating the {job.size} world (seed {cfg.seed}, {cfg.n_items} items, {cfg.n_users} users, "
          f"{cfg.n_queries} queries) into {job.out}")
    summary = generate_world(cfg, Path(job.out), overwrite=job.overwrite, log=log, workers=job.workers)
    split = summary.get("ctr_split_time")
    return WorldResult(str(job.out), summary["counts"], None if split is None else float(split),
                       round(time.perf_counter() - t0, 1))


def parse(argv: list[str]) -> WorldJob:
    ap = CommandParser("mmrep data synth", __doc__.strip().splitlines()[0],
                       epilog="presets: " + ", ".join(f"{k} ({v['n_items']} items)" for k, v in PRESETS.items()),
                       sections={"world": WorldConfig},
                       config_help="YAML config with a `world:` section (a whole-pipeline file works: its other "
                                   "sections are left to their stages); it overrides the --size preset")
    ap.add_argument("--size", default="tiny", help="preset: tiny | small | medium | large (default tiny)")
    ap.add_argument("--out", required=True, help="output folder (must be empty or absent unless --overwrite)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (same seed -> identical files)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    ap.add_argument("--workers", type=int, default=0,
                    help="render in this many processes (output is identical; default: this process only)")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    call = ap.invoke(argv)
    args = call.args
    return WorldJob(args.out, args.size, args.seed, call.overrides, call.config or "", args.overwrite, args.workers,
                    args.quiet)


def main(argv: list[str]) -> int:
    job = parse(argv)
    world = synthesize(job)
    c, dt = world.counts, max(world.seconds, 1e-9)
    n_items = sum(c["items"].values())
    print(f"wrote {job.out} in {dt:.1f}s ({n_items / dt:.0f} items/s)")
    for split in SPLITS:
        print(f"  {split:5s}  items {c['items'][split]:7d}  triplets {c['triplets'][split]:7d}")
    print(f"  images {c['images']} catalogue + {c['query_images']} query; queries {c['queries']}")
    print(f"  interactions {c['interactions']}; CTR exposures {c['ctr_exposures']} "
          f"(split at time {world.ctr_split_time})")
    print(f"  pairs {c['pairs']}; users {c['users']}")
    print(f"  config: {Path(job.out) / 'config.yaml'}; summary: {Path(job.out) / 'world.json'}")
    return 0
