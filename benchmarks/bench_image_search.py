"""Image-search scale benchmark: mmrep's chunked search vs a plain torch top-k, same data, same run.

Data: a synthetic gallery of N unit vectors (D-d, written in the export format, part by part) and Q
queries = a gallery item + Gaussian noise (ground truth = that item). Each method runs in its own
subprocess so that its peak RSS is its own:
  mmrep:    `mmrep eval image-search --queries-emb --gallery-emb --gt` (streams the gallery parts,
            faiss flat per chunk, running top-K merge; also reports nested gallery sizes)
  baseline: load the whole gallery into one tensor, then `q @ g.T` + `topk` chunked over queries only.
Prints time, peak RSS and recall@{1,10,100} of both, and whether they agree.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_image_search.py            # 1M x 256, 10k queries
    .venv/bin/python benchmarks/bench_image_search.py --gallery 50000 --queries 1000   # quick mode
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

KS = (1, 10, 100)


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


def run_mmrep(root: Path, n: int) -> dict:
    from mmrep.cli import main

    sizes = sorted({s for s in (10_000, 100_000, n) if s <= n} | {n})
    t0 = time.perf_counter()
    code = main(["eval", "image-search", "--queries-emb", str(root / "queries"), "--gallery-emb", str(root / "gallery"),
                 "--gt", str(root / "gt.json"), "--ks", ",".join(map(str, KS)), "--sizes", ",".join(map(str, sizes)),
                 "--out", str(root / "report"), "--overwrite"])
    dt = time.perf_counter() - t0
    assert code == 0
    rep = json.loads((root / "report" / "image_search.json").read_text())
    return {"seconds": dt, "rows": rep["rows"], "recall": {k: v for k, v in rep["rows"][-1].items() if k.startswith("R@")}}


def run_torch(root: Path, q_chunk: int) -> dict:
    import torch

    from mmrep.export.format import load_embeddings

    t0 = time.perf_counter()
    gids, g = load_embeddings(root / "gallery")
    qids, q = load_embeddings(root / "queries")
    gt = json.loads((root / "gt.json").read_text())
    where = {i: j for j, i in enumerate(gids)}
    target = torch.tensor([where[gt[x][0]] for x in qids])
    gt_ = torch.from_numpy(g)
    qt = torch.from_numpy(q)
    hits = {k: 0 for k in KS}
    for s in range(0, qt.shape[0], q_chunk):
        scores = qt[s : s + q_chunk] @ gt_.T  # (chunk, N)
        top = torch.topk(scores, max(KS), dim=1).indices
        found = top == target[s : s + q_chunk, None]
        for k in KS:
            hits[k] += int(found[:, :k].any(dim=1).sum())
        del scores
    dt = time.perf_counter() - t0
    return {"seconds": dt, "recall": {f"R@{k}": hits[k] / qt.shape[0] for k in KS}}


def child(method: str, root: Path, q_chunk: int, n: int) -> None:
    out = run_mmrep(root, n) if method == "mmrep" else run_torch(root, q_chunk)
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--noise", type=float, default=3.0, help="query noise norm relative to the unit item vector")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part-size", type=int, default=100_000)
    p.add_argument("--torch-query-chunk", type=int, default=256)
    p.add_argument("--workdir", default="", help="where to write the synthetic exports (default: a temp dir)")
    p.add_argument("--child", choices=["mmrep", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, Path(args.workdir), args.torch_query_chunk, args.gallery)
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="mmrep-bench-is-"))
    try:
        t0 = time.perf_counter()
        make_data(root, args.gallery, args.queries, args.dim, args.noise, args.seed, args.part_size)
        print(f"data: {args.gallery:,} x {args.dim} gallery, {args.queries:,} queries, written in "
              f"{time.perf_counter() - t0:.1f} s to {root}; load avg {os.getloadavg()[0]:.2f}; "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        results = {}
        for method in ("mmrep", "torch"):
            cmd = [sys.executable, __file__, "--child", method, "--workdir", str(root), "--gallery", str(args.gallery),
                   "--torch-query-chunk", str(args.torch_query_chunk)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                raise SystemExit(f"{method} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            results[method] = json.loads(line[7:])
        print()
        print("| method | time (s) | peak RSS (GiB) | " + " | ".join(f"R@{k}" for k in KS) + " |")
        print("| --- | ---: | ---: | " + " | ".join("---:" for _ in KS) + " |")
        names = {"mmrep": "mmrep chunked (faiss flat per gallery chunk, streamed parts)",
                 "torch": f"torch q@g.T + topk (full gallery in RAM, {args.torch_query_chunk}-query chunks)"}
        for m, r in results.items():
            print(f"| {names[m]} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | "
                  + " | ".join(f"{100 * r['recall'][f'R@{k}']:.2f}" for k in KS) + " |")
        agree = all(abs(results["mmrep"]["recall"][f"R@{k}"] - results["torch"]["recall"][f"R@{k}"]) < 1e-12 for k in KS)
        print(f"\nrecall agreement (R@1/10/100 identical): {agree}")
        print("mmrep recall vs gallery size: " + "; ".join(
            f"{r['gallery']:,}: R@100 {100 * r['R@100']:.2f}" for r in results["mmrep"]["rows"]))
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
