"""Speed of `mmrep data synth`: per-phase rates, next to a baseline measured in the same run (writing the
same item records to shards again, i.e. the cost floor without rendering), and an extrapolation to the
`large` preset.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/synth_bench.py --size small [--workers N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import webdataset as wds

from mmrep.data.shards import ShardWriter, shard_paths
from mmrep.records import Product, sample_key
from mmrep.synth.config import PRESETS, WorldConfig
from mmrep.synth.world import generate_world


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=sorted(PRESETS))
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    cfg = WorldConfig(**PRESETS[args.size])
    marks: list[tuple[str, float, float]] = []  # (phase, wall, cpu): cpu time is what a shared machine
    # cannot inflate much, so rates are given on both clocks
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "world"
        t0, c0 = time.perf_counter(), time.process_time()
        summary = generate_world(cfg, out, workers=args.workers,
                                 log=lambda m: marks.append((m, time.perf_counter(), time.process_time())))
        total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
        marks.append(("end", time.perf_counter(), time.process_time()))
        phase, phase_cpu = {}, {}
        for (name, t, c), (_, t_next, c_next) in zip(marks, marks[1:]):
            key = name.split("/")[0]
            phase[key] = phase.get(key, 0.0) + t_next - t
            phase_cpu[key] = phase_cpu.get(key, 0.0) + c_next - c
        products = [Product.from_sample(s) for s in wds.WebDataset(shard_paths(out / "items" / "train"),
                                                                     shardshuffle=False)]
        t1, c1 = time.perf_counter(), time.process_time()
        with ShardWriter(Path(tmp) / "rewrite", "train", cfg.shard_size, mtime=0) as sw:
            for p in products:
                sw.write({"__key__": sample_key(p.id), **p.to_sample()})
        floor = len(products) / (time.perf_counter() - t1)
        floor_cpu = len(products) / (time.process_time() - c1)
        size = {k: sum(f.stat().st_size for f in (out / k).rglob("*") if f.is_file()) for k in ("items", "triplets")}
        size["tables"] = sum(f.stat().st_size for f in out.glob("*") if f.is_file())
    c = summary["counts"]
    n_trip = sum(c["triplets"].values())
    item_rate, item_cpu = cfg.n_items / phase["items"], cfg.n_items / phase_cpu["items"]
    trip_rate, trip_cpu = n_trip / phase["triplets"], n_trip / phase_cpu["triplets"]
    print(f"world {args.size}: {cfg.n_items} items, {n_trip} triplets, {c['images']} + {c['query_images']} images, "
          f"{sum(c['interactions'].values())} interaction rows, {sum(size.values()) / 1e6:.0f} MB, "
          f"workers={args.workers}")
    print(f"total {total:.1f} s wall ({total_cpu:.1f} s cpu) = {cfg.n_items / total:.0f} items/s end to end "
          f"({cfg.n_items / total_cpu:.0f} per cpu-second)")
    for k, v in phase.items():
        print(f"  {k:14s} {v:7.1f} s wall {phase_cpu[k]:7.1f} s cpu")
    print(f"items: {item_rate:.0f} items/s rendered+written ({item_cpu:.0f} per cpu-s); baseline, the same records "
          f"re-written without rendering: {floor:.0f} items/s ({floor_cpu:.0f} per cpu-s)")
    print(f"triplets: {trip_rate:.0f} triplets/s ({trip_cpu:.0f} per cpu-s)")
    large = PRESETS["large"]
    scale = large["n_users"] / cfg.n_users
    est = (large["n_items"] / item_rate + large["n_queries"] / trip_rate
           + (phase["behaviour log"] + phase["tables"]) * scale)
    est_cpu = (large["n_items"] / item_cpu + large["n_queries"] / trip_cpu
               + (phase_cpu["behaviour log"] + phase_cpu["tables"]) * scale)
    gb = (size["items"] * large["n_items"] / cfg.n_items + size["triplets"] * large["n_queries"] / max(n_trip, 1)
          + size["tables"] * scale) / 1e9
    print(f"extrapolated large ({large['n_items']} items, {large['n_queries']} queries): {est / 60:.1f} min at this run's wall rate, "
          f"{est_cpu / 60:.1f} min on one idle core, "
          f"~{gb:.1f} GB")


if __name__ == "__main__":
    main()
