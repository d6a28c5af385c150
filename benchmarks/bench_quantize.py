"""`mmrep quantize` (residual k-means, 3 x 256) vs faiss's own ResidualQuantizer on the same embeddings.

    python benchmarks/bench_quantize.py            # 1,000,000 x 256
    python benchmarks/bench_quantize.py --quick    # 100,000 x 256
    python benchmarks/bench_quantize.py --quick --all-methods   # + mmrep's progressive and faiss-rq

Both run as child processes on the same .npy file so that each one's peak RSS is its own (os.wait4).
Baseline: `faiss.ResidualQuantizer(256, 3, 8)` with `max_beam_size = 1` (greedy residual k-means, the
same algorithm), trained with faiss's defaults on the whole array and encoding it with compute_codes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FAISS_CHILD = r"""
import json, sys, time
import numpy as np, faiss
path, levels, nbits, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 65536
t0 = time.perf_counter()
x = np.load(path)  # the usual direct use: the whole array in memory
t_load = time.perf_counter() - t0
rq = faiss.ResidualQuantizer(x.shape[1], levels, nbits)
rq.max_beam_size = 1
rq.cp.seed = 0
t0 = time.perf_counter()
rq.train(x)
t_train = time.perf_counter() - t0
t0 = time.perf_counter()
codes = rq.compute_codes(x)
t_encode = time.perf_counter() - t0
err = 0.0
for s in range(0, len(x), chunk):
    rec = rq.decode(codes[s:s + chunk])
    err += float(((x[s:s + chunk].astype(np.float64) - rec) ** 2).sum())
rel = err / float((x.astype(np.float64) ** 2).sum())
print(json.dumps({"load_s": t_load, "train_s": t_train, "encode_s": t_encode, "relative_error": rel}))
"""


def make_data(path: Path, n: int, d: int, seed: int = 0, chunk: int = 100_000) -> None:
    """Clustered, L2-normalised float32 embeddings written chunk by chunk (never all in RAM)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(2000, d)).astype(np.float32)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centers[rng.integers(0, len(centers), m)] + 0.5 * rng.normal(size=(m, d)).astype(np.float32)
        arr[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    arr.flush()
    del arr
    (path.parent / "ids.txt").write_text("".join(f"item{k}\n" for k in range(n)))


def run_measured(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Run `cmd`, returning (wall s, peak RSS MiB, stdout) measured for that child alone (os.wait4)."""
    out_file = tempfile.TemporaryFile(mode="w+")
    err_file = tempfile.TemporaryFile(mode="w+")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=out_file, stderr=err_file, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    out_file.seek(0)
    err_file.seek(0)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{err_file.read()[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out_file.read()  # ru_maxrss is KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100,000 rows instead of 1,000,000")
    ap.add_argument("--n", type=int, default=0, help="rows (overrides --quick)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--centroids", type=int, default=256)
    ap.add_argument("--all-methods", action="store_true", help="also time --method progressive and faiss-rq")
    ap.add_argument("--workdir", default="", help="where to write the data (default: a temp folder)")
    args = ap.parse_args()
    n = args.n or (100_000 if args.quick else 1_000_000)
    nbits = int(np.log2(args.centroids))
    env = dict(os.environ)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_quantize_"))
    emb = work / "emb"
    emb.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # in a child: writing the file raises this process's RSS, and a forked child inherits that
    # high-water mark in ru_maxrss, which would pollute the measurements below
    subprocess.run([sys.executable, __file__, "--make-data", str(emb / "embeddings.npy"), str(n), str(args.dim)],
                   check=True)
    print(f"data: {n} x {args.dim} float32 ({n * args.dim * 4 / 2**20:.0f} MiB) written in "
          f"{time.perf_counter() - t0:.1f}s to {emb}")
    print(f"threads: OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, cpus={os.cpu_count()}")

    out = work / "codes"
    methods = ["kmeans"] + (["progressive", "faiss-rq"] if args.all_methods else [])
    first = None
    for method in methods:
        cmd = [sys.executable, "-m", "mmrep.cli", "quantize", "--emb", str(emb), "--out", str(out), "--overwrite",
               "--levels", str(args.levels), "--centroids", str(args.centroids), "--vq-k", "0", "--seed", "0",
               "--method", method]
        wall, rss, _ = run_measured(cmd, env)
        report = json.loads((out / "report.json").read_text())
        t = report["timings"]
        first = first or (wall, rss)
        r = report.get("retrieval", {})
        print(f"mmrep quantize --method {method} (train sample {min(n, 100_000)}): wall {wall:.1f}s "
              f"(train {t['train_s']:.1f}s, encode {t['encode_s']:.1f}s, recall eval {t.get('eval_s', 0):.1f}s), "
              f"peak RSS {rss:.0f} MiB, relative error {report['reconstruction']['relative']:.4f}, "
              f"collision rate {report['collisions']['collision_rate']:.4f}, largest bucket "
              f"{report['collisions']['largest_bucket']}, reconstruction recall@{r.get('k')} "
              f"{r.get('reconstruction_recall', float('nan')):.3f}, bucket recall by prefix "
              + ", ".join(f"{p['length']}:{p['recall']:.3f}" for p in r.get("prefix", [])))
    wall, rss = first

    wall3, rss3, stdout = run_measured([sys.executable, "-c", FAISS_CHILD, str(emb / "embeddings.npy"),
                                        str(args.levels), str(nbits)], env)
    f = json.loads(stdout.strip().splitlines()[-1])
    print(f"baseline faiss.ResidualQuantizer({args.dim}, {args.levels}, {nbits}) max_beam_size=1 direct: "
          f"wall {wall3:.1f}s (load {f['load_s']:.1f}s, train {f['train_s']:.1f}s, encode {f['encode_s']:.1f}s), "
          f"peak RSS {rss3:.0f} MiB, relative error {f['relative_error']:.4f}")
    print(f"ratio mmrep (kmeans) / faiss direct: wall {wall / wall3:.2f}x, peak RSS {rss / rss3:.2f}x")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--make-data":
        make_data(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
