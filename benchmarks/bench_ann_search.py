"""Approximate search at 10M items on this machine: faiss IVF-PQ + exact re-ranking vs exact search.

The gallery is generated chunk by chunk (clustered unit vectors with two levels, as product
embeddings have: 4,096 categories x 32 variants, an item = category + 0.6 variant + 0.35 noise
directions, normalised) and never held in full: each
chunk feeds (1) the exact running top-k of a query subset (`RunningTopK`, faiss's flat kernel: the
ground truth and the exact-search time) and (2) the IVF-PQ index (`build_ivfpq`: trained on the first
rows, then every chunk added). nprobe is then chosen on calibration queries for the target recall,
and recall + latency are reported on held-out queries. Prints a table and the measured per-core
rates that README's 100M-item projection uses.

Re-ranking (`--refine`): `exact` (default) first writes the generated gallery as an `mmrep export`
folder (`--workdir`, reused when present; `--dtype float16` halves it), builds the index by
streaming that export, and re-ranks the k x k_factor PQ candidates of each query with the float
vectors read back from the parts (memory maps: only the candidate rows); ground truth and re-ranking
then see the same stored vectors. `SQ8` keeps an 8-bit copy per item in memory instead (the gallery
is never written); `none` ranks by the PQ codes.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_ann_search.py --workdir DIR --dtype float16  # 10M x 256
    .venv/bin/python benchmarks/bench_ann_search.py --gallery 200000 --queries 400 --workdir DIR     # quick mode
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mmrep.evaluation.ann_search import AnnConfig, build_from_export, build_ivfpq, recall_vs_exact, tune_nprobe
from mmrep.evaluation.image_search import RunningTopK


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class World:
    """Categories x variants: item = unit(category + 0.6 variant + 0.35 noise), all unit directions."""

    def __init__(self, categories: int, variants: int, dim: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0])
        self.cat = unit(rng.standard_normal((categories, dim), dtype=np.float32))
        self.var = unit(rng.standard_normal((categories, variants, dim), dtype=np.float32))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        c = rng.integers(0, self.cat.shape[0], n)
        v = rng.integers(0, self.var.shape[1], n)
        x = unit(rng.standard_normal((n, self.cat.shape[1]), dtype=np.float32))
        x *= 0.35
        x += self.cat[c]
        x += 0.6 * self.var[c, v]
        return unit(x)


def gallery(n: int, world: World, chunk: int, seed: int):
    for i, start in enumerate(range(0, n, chunk)):
        yield world.sample(min(chunk, n - start), np.random.default_rng([seed, 1, i]))


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=400, help="queries with exact ground truth (half calibrate nprobe)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--pq-m", type=int, default=32)
    p.add_argument("--nlist", type=int, default=0)
    p.add_argument("--refine", default="exact", choices=["exact", "SQ8", "none"])
    p.add_argument("--workdir", default="", help="refine=exact: where the gallery export is written (default: a temp dir, removed)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="stored gallery dtype (refine=exact)")
    p.add_argument("--k-factor", type=int, default=8)
    p.add_argument("--chunk", type=int, default=250_000)
    p.add_argument("--categories", type=int, default=4096)
    p.add_argument("--variants", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    load0 = os.getloadavg()[0]
    t_start, cpu_start = time.perf_counter(), time.process_time()
    world = World(args.categories, args.variants, args.dim, args.seed)
    q = world.sample(args.queries, np.random.default_rng([args.seed, 2]))
    exact = RunningTopK(q, args.k)
    cfg = AnnConfig(nlist=args.nlist, pq_m=args.pq_m, refine=args.refine, k_factor=args.k_factor,
                    target_recall=args.target_recall, k=args.k)
    timers = {"exact": 0.0, "exact_cpu": 0.0}

    def ground_truth(block: np.ndarray) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        exact.add(block)
        timers["exact"] += time.perf_counter() - t0
        timers["exact_cpu"] += time.process_time() - c0
        if exact.seen % (20 * args.chunk) == 0:
            print(f"  {exact.seen:,} rows streamed, {time.perf_counter() - t_start:.0f} s", flush=True)

    write_s = 0.0
    root = None
    if args.refine == "exact":
        root = Path(args.workdir or tempfile.mkdtemp(prefix="mmrep-bench-ann-"))
        export = root / f"gallery-{args.gallery}-{args.dim}-{args.dtype}-{args.seed}"
        if not (export / "index.json").is_file():
            from mmrep.export.embeddings import save_embedding_parts

            t0 = time.perf_counter()
            ids = (f"i{i}" for i in range(args.gallery))
            save_embedding_parts(export, (([next(ids) for _ in range(len(b))], b.astype(args.dtype))
                                          for b in gallery(args.gallery, world, args.chunk, args.seed)),
                                 name="bench_ann_search", overwrite=True)
            write_s = time.perf_counter() - t0
            print(f"gallery export written in {write_s:.0f} s: {export}", flush=True)
    c0 = time.process_time()
    if args.refine == "exact":
        ann = build_from_export([export], cfg, on_chunk=ground_truth)
    else:
        ann = build_ivfpq(gallery(args.gallery, world, args.chunk, args.seed), args.dim, args.gallery, cfg,
                          on_chunk=ground_truth)
    build = ann.build_seconds - timers["exact"]
    build_cpu = time.process_time() - c0 - timers["exact_cpu"]
    half = args.queries // 2
    cal, held = slice(0, half), slice(half, args.queries)
    tuning = tune_nprobe(ann, q[cal], exact.indices[cal], args.k, args.target_recall, k_factor=args.k_factor)
    t0, c0 = time.perf_counter(), time.process_time()
    _, found = ann.search(q[held], args.k)
    ann_ms = 1000 * (time.perf_counter() - t0) / (args.queries - half)
    ann_cpu_ms = 1000 * (time.process_time() - c0) / (args.queries - half)
    recall = recall_vs_exact(found, exact.indices[held], args.k)
    exact_ms = 1000 * timers["exact"] / args.queries
    exact_cpu_ms = 1000 * timers["exact_cpu"] / args.queries
    load1 = os.getloadavg()[0]
    n = args.gallery
    print(f"gallery {n:,} x {args.dim} (generated in {args.chunk:,}-row chunks, {args.categories} categories x "
          f"{args.variants} variants), "
          f"{args.queries} queries with exact top-{args.k}; OMP_NUM_THREADS={threads}; load avg {load0:.1f} -> {load1:.1f}")
    rerank = {"SQ8": " + SQ8 re-ranking", "exact": f" + exact re-ranking from the export ({args.dtype} on disk)", "none": ""}
    print(f"index IVF{ann.nlist},PQ{args.pq_m}" + rerank[args.refine]
          + f": codes {ann.code_bytes() / 2**30:.2f} GiB ({ann.code_bytes() / n:.0f} B/item); peak RSS {rss_gib():.2f} GiB")
    print(f"wall time: " + (f"generate + write the export {write_s:.0f} s (0 = reused), read + " if root else "generate + ")
          + f"train + add {build:.0f} s (train {ann.train_seconds:.0f} s), exact ground truth "
          f"{timers['exact']:.0f} s, total {time.perf_counter() - t_start:.0f} s; CPU time (all threads): build "
          f"{build_cpu:.0f} s, exact {timers['exact_cpu']:.0f} s, total {time.process_time() - cpu_start:.0f} s\n")
    print(f"| k_factor | nprobe | recall@{args.k} vs exact (calibration) | ms / query |")
    print("| ---: | ---: | ---: | ---: |")
    for r in tuning.curve:
        print(f"| {r['k_factor']} | {r['nprobe']} | {100 * r['recall']:.1f} | {r['ms_per_query']:.2f} |")
    print(f"\nchosen k_factor {tuning.k_factor}, nprobe {tuning.nprobe} for target {100 * args.target_recall:.0f}% "
          f"({'reached' if tuning.reached else 'NOT reached'}); held-out queries: recall@{args.k} {100 * recall:.1f}%, "
          f"{ann_ms:.2f} ms/query vs exact {exact_ms:.1f} ms/query ({exact_ms / ann_ms:.0f}x faster)")
    scanned = tuning.nprobe / ann.nlist * n
    # Per-core rates from CPU time (robust to a shared machine; wall time / threads when idle).
    print(f"per-core rates from CPU time (for projections): exact {exact_cpu_ms:.1f} CPU-ms/query "
          f"({n * args.dim * 2 / (exact_cpu_ms / 1000) / 1e9:.1f} GFLOP per CPU-second); IVF-PQ "
          f"{ann_cpu_ms:.2f} CPU-ms/query ({scanned / (ann_cpu_ms / 1000) / 1e6:.0f} M codes per CPU-second at "
          f"nprobe {tuning.nprobe}, {scanned / n:.2%} of the gallery); build {n / build_cpu:,.0f} items per CPU-second")
    if root is not None and not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
