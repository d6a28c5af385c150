"""Image-search scale benchmark: mmrep's streamed exact search vs faiss IndexFlatIP used directly.

Data: a synthetic gallery of N unit vectors (D-d, written in the export format, part by part) and Q
queries = a gallery item + Gaussian noise (ground truth = that item). Each method runs in its own
subprocess so that its peak RSS is its own, and the two sides alternate over rounds (the machine is
shared: compare the per-round ratios, not absolute times):
  mmrep:  `mmrep eval image-search --queries-emb --gallery-emb --gt --ks ... --sizes N` (streams the
          gallery parts, faiss's flat kernel per chunk, running top-K merge under the tie rule)
  faiss:  what a user would write with faiss alone: load every part into one array, `IndexFlatIP`,
          `add`, `search(queries, k)`, recall from the result.
Both sides include reading the export from disk. Prints wall time, CPU time (all threads; steadier than
wall time on a shared machine, though OpenMP threads spinning under load inflate it), peak RSS and
recall@{1,10,100}.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_image_search.py            # 1M x 256, 10k queries, k=10 and 100
    .venv/bin/python benchmarks/bench_image_search.py --gallery 50000 --queries 1000 --rounds 1   # quick mode
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_image_search.py --workdir DIR --interleaved 1000 --rounds 3
        # search only, one process, sides alternating every few seconds (a shared machine)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

def gallery_chunks(n: int, dim: int, seed: int, chunk: int):
    for c, start in enumerate(range(0, n, chunk)):
        rng = np.random.default_rng([seed, c])
        g = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        yield [f"g{start + j}" for j in range(g.shape[0])], g


def make_data(root: Path, n: int, q: int, dim: int, noise: float, seed: int, chunk: int) -> None:
    from mmrep.export.embeddings import save_embedding_parts, save_embeddings

    rng = np.random.default_rng(seed + 1)
    gt = np.sort(rng.choice(n, size=q, replace=False))
    rows = {}
    want = set(gt.tolist())

    def collect():
        for ids, g in gallery_chunks(n, dim, seed, chunk):
            start = int(ids[0][1:])
            for j in np.flatnonzero([start + k in want for k in range(len(ids))]):
                rows[start + int(j)] = g[j].copy()
            yield ids, g

    save_embedding_parts(root / "gallery", collect(), name="synthetic")
    base = np.stack([rows[i] for i in gt.tolist()])
    queries = base + noise * rng.standard_normal(base.shape, dtype=np.float32) / np.sqrt(dim)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    perm = rng.permutation(q)
    qids = [f"q{k}" for k in range(q)]
    save_embeddings(root / "queries", qids, queries[perm].astype(np.float32), kind="queries", name="synthetic")
    (root / "gt.json").write_text(json.dumps({qids[k]: [f"g{gt[perm[k]]}"] for k in range(q)}))


def run_mmrep(root: Path, n: int, k: int) -> dict:
    import faiss  # noqa: F401  imported before the clock, as on the faiss side (mmrep's own imports count)

    from mmrep.cli import main

    ks = sorted({1, 10, k})
    t0, c0 = time.perf_counter(), time.process_time()
    code = main(["eval", "image-search", "--queries-emb", str(root / "queries"), "--gallery-emb", str(root / "gallery"),
                 "--gt", str(root / "gt.json"), "--ks", ",".join(map(str, ks)), "--sizes", str(n),
                 "--out", str(root / f"report-{k}"), "--overwrite"])
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert code == 0
    rep = json.loads((root / f"report-{k}" / "image_search.json").read_text())
    return {"seconds": dt, "cpu_seconds": cpu, "recall": {key: v for key, v in rep["rows"][-1].items() if key.startswith("R@")}}


def run_faiss(root: Path, k: int) -> dict:
    import faiss

    from mmrep.export.format import load_embeddings

    t0, c0 = time.perf_counter(), time.process_time()
    gids, g = load_embeddings(root / "gallery", np.float32)
    qids, q = load_embeddings(root / "queries", np.float32)
    gt = json.loads((root / "gt.json").read_text())
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    del g
    _, top = index.search(q, k)
    where = {i: j for j, i in enumerate(gids)}
    target = np.array([where[gt[x][0]] for x in qids])
    found = top == target[:, None]
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": dt, "cpu_seconds": cpu, "recall": {f"R@{c}": float(found[:, :c].any(axis=1).mean()) for c in sorted({1, 10, k})}}


def interleaved(root: Path, k: int, rounds: int, queries: int) -> None:
    """Search only, in one process, sides alternating every few seconds (robust to a shared machine):
    mmrep's `chunked_search` streaming the export parts from disk vs `IndexFlatIP` (add + search) over
    the same gallery already in memory, on the first `queries` queries."""
    import faiss

    from mmrep.evaluation.image_search import SearchConfig, chunked_search
    from mmrep.export.format import iter_parts, load_embeddings

    _, g = load_embeddings(root / "gallery", np.float32)
    _, q = load_embeddings(root / "queries", np.float32)
    q = q[:queries]
    ratios = []
    print(f"\ninterleaved, search only: {g.shape[0]:,} x {g.shape[1]} gallery, {len(q):,} queries, k={k}")
    print("| round | mmrep chunked_search, parts from disk (s) | faiss IndexFlatIP add + search (s) | ratio | same top-k | load avg |")
    print("| ---: | ---: | ---: | ---: | --- | ---: |")
    for r in range(rounds):
        t = {}
        for side in (("mmrep", "faiss") if r % 2 == 0 else ("faiss", "mmrep")):
            t0 = time.perf_counter()
            if side == "mmrep":
                res = chunked_search(q, (emb for _, emb in iter_parts(root / "gallery")), SearchConfig(k=k))
            else:
                index = faiss.IndexFlatIP(g.shape[1])
                index.add(g)
                _, top = index.search(q, k)
                del index
            t[side] = time.perf_counter() - t0
        ratios.append(t["mmrep"] / t["faiss"])
        print(f"| {r} | {t['mmrep']:.2f} | {t['faiss']:.2f} | {ratios[-1]:.2f}x | "
              f"{bool((res.indices == top).all())} | {os.getloadavg()[0]:.1f} |", flush=True)
    print(f"k={k} interleaved: median ratio {float(np.median(ratios)):.2f}x over {rounds} rounds")


def child(method: str, root: Path, n: int, k: int) -> None:
    out = run_mmrep(root, n, k) if method == "mmrep" else run_faiss(root, k)
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(out))


def run_child(method: str, root: Path, n: int, k: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--workdir", str(root), "--gallery", str(n), "--k", str(k)]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{method} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[7:]) | {"load": (load + os.getloadavg()[0]) / 2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--ks", default="10,100", help="result list lengths to time (one pair of runs per k and round)")
    p.add_argument("--rounds", type=int, default=2, help="alternating mmrep / faiss rounds per k")
    p.add_argument("--noise", type=float, default=3.0, help="query noise norm relative to the unit item vector")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part-size", type=int, default=100_000)
    p.add_argument("--workdir", default="", help="where to write the synthetic exports (default: a temp dir)")
    p.add_argument("--interleaved", type=int, default=0, metavar="Q",
                   help="instead: search only, in one process, alternating sides each round on the first Q queries")
    p.add_argument("--child", choices=["mmrep", "faiss"], help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=100, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, Path(args.workdir), args.gallery, args.k)
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="mmrep-bench-is-"))
    try:
        t0 = time.perf_counter()
        if not (root / "gt.json").is_file():
            make_data(root, args.gallery, args.queries, args.dim, args.noise, args.seed, args.part_size)
        print(f"data: {args.gallery:,} x {args.dim} gallery, {args.queries:,} queries, ready in "
              f"{time.perf_counter() - t0:.1f} s in {root}; load avg {os.getloadavg()[0]:.2f} on {os.cpu_count()} "
              f"cores; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        if args.interleaved:
            for k in [int(x) for x in args.ks.split(",")]:
                interleaved(root, k, args.rounds, args.interleaved)
            return
        print("\n| k | round | mmrep (s) | faiss IndexFlatIP (s) | ratio | CPU-s mmrep / faiss (ratio) | mmrep peak RSS (GiB) | faiss peak RSS (GiB) | load avg | R@1 / R@10 / R@k equal |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        summary = {}
        for k in [int(x) for x in args.ks.split(",")]:
            ratios = []
            for r in range(args.rounds):
                order = ("mmrep", "faiss") if r % 2 == 0 else ("faiss", "mmrep")  # alternate who goes first
                res = {m: run_child(m, root, args.gallery, k) for m in order}
                m, f = res["mmrep"], res["faiss"]
                ratio = m["seconds"] / f["seconds"]
                ratios.append(ratio)
                same = all(abs(m["recall"][key] - f["recall"][key]) < 1e-12 for key in f["recall"])
                print(f"| {k} | {r} | {m['seconds']:.1f} | {f['seconds']:.1f} | {ratio:.2f}x | {m['cpu_seconds']:.1f} / "
                      f"{f['cpu_seconds']:.1f} ({m['cpu_seconds'] / f['cpu_seconds']:.2f}x) | {m['peak_rss_gib']:.2f} | "
                      f"{f['peak_rss_gib']:.2f} | {(m['load'] + f['load']) / 2:.1f} | {same} "
                      f"({' / '.join(f'{100 * v:.2f}' for v in m['recall'].values())}) |", flush=True)
            summary[k] = ratios
        for k, ratios in summary.items():
            print(f"k={k}: mmrep / faiss time ratio, median of {len(ratios)} rounds: {float(np.median(ratios)):.2f}x "
                  f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})")
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
