"""Quality against the real peer: stock `open_clip_train` vs mmrep on one catalogue, one evaluator.

    # once: the peer's own environment (open_clip_train 3.3.0 needs webdataset 0.2.x)
    bash scripts/peer_env.sh
    # trainer parity: the same tiny CLIP, hyper-parameters and samples on both trainers
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_quality.py --mode samples --seeds 0
    # recipes at an equal wall-clock budget (15 min each, runs one after another)
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_quality.py --mode budget --seconds 900 --seeds 0 1

Data: the Fashion Product Images import (`mmrep data import --preset fashion`, made here when --data is
absent). The peer trains on img2dataset-layout shards written from the same train split (`<key>.jpg` +
`<key>.txt` = the product title: what a user pointing open_clip at a catalogue would caption with).
Evaluation: every model, the peer's included (its checkpoint is loaded into mmrep's `clip` backbone with
the same tokenizer and image preprocessing), is scored by `mmrep eval mbe` on the test split's benchmark
(title -> item image and user-photo -> item text, exact cosine ranking, plus zero-shot articleType).

Modes:
  samples  `configs/train/fashion-parity.yaml` vs `open_clip_train` with the same model
           (configs/model/clip-fashion-tiny.yaml), batch 64, lr 5e-4, wd 0.2, warmup 100, cosine, no
           clipping, --steps steps. Prints R@10 ratios and steady-state samples/s of both trainers.
  budget   the mmrep Fashion recipe (`--recipe`, default configs/train/fashion-small.yaml) for --seconds vs
           open_clip_train with the tiny CLIP for the number of steps its measured throughput fits in the
           same time (a full cosine over them, as a user would configure it).
Runs use the threads OMP_NUM_THREADS gives, --jobs at a time (one after another by default); give the
benchmark the machine alone. Finished runs are reused, so the trainers can run in separate invocations
(`--only peer`, then `--only mmrep`; a last call without --only prints the whole table):

    # the README's 15-minute comparison: each trainer has the whole machine (2 threads), runs back to back;
    # the peer gets the steps its 2-thread throughput fits in 900 s (a 120-step probe, reused once made)
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_quality.py --mode budget --seeds 0 1
    # the same with one core per trainer, two runs side by side (the recipe's feature cache alone then
    # needs more than the 900 s at one thread, so this setting favours the peer)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_quality.py --mode budget --seeds 0 1 --jobs 2 --peer-steps 1872
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER_PYTHON = REPO / ".peer-venv" / "bin" / "python"
SHARD_SIZE = 5000


def run(cmd: list[str], log: Path, env: dict | None = None) -> float:
    """Run a command with its output in `log`; returns wall seconds; raises with the log's tail on failure."""
    print("$", " ".join(str(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"command failed (exit {proc.returncode}), log {log}:\n" + "\n".join(tail))
    return seconds


def mmrep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmrep.cli", *args]


# ---------------------------------------------------------------------------------------------- data


def ensure_import(data: Path, source: str, work: Path) -> None:
    if (data / "train").is_dir() and (data / "test").is_dir():
        return
    run(mmrep_cmd("data", "import", "--preset", "fashion", "--source", source, "--out", str(data)), work / "import.log")


def write_peer_shards(train: Path, out: Path) -> tuple[str, int]:
    """img2dataset-layout shards (`<key>.jpg` + `<key>.txt` title) of the train split -> (brace pattern, samples)."""
    from mmrep.data.readers import iter_products

    done = out / "done.json"
    if done.is_file():
        meta = json.loads(done.read_text())
        return meta["pattern"], meta["samples"]
    out.mkdir(parents=True, exist_ok=True)
    n = shard = 0
    tar = None
    for p in iter_products(train):
        if not (p.images and p.title.strip()):
            continue
        if n % SHARD_SIZE == 0:
            if tar:
                tar.close()
            tar = tarfile.open(out / f"{shard:05d}.tar", "w")
            shard += 1
        key = f"{n:09d}"
        for name, data in ((f"{key}.jpg", p.images[0]), (f"{key}.txt", p.title.strip().encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        n += 1
    if tar:
        tar.close()
    pattern = str(out / f"{{00000..{shard - 1:05d}}}.tar")
    done.write_text(json.dumps({"pattern": pattern, "samples": n}))
    return pattern, n


def ensure_bench(data: Path, split: str, work: Path) -> Path:
    bench = work / f"bench-{split}"
    if not (bench / "benchmark.json").is_file():
        run(mmrep_cmd("eval", "mbe", "--make-bench", "--from-shards", str(data / split), "--out", str(bench)),
            work / f"bench-{split}.log")
    return bench


# ---------------------------------------------------------------------------------------------- peer


def peer_model_dir(model_yaml: Path, out: Path) -> Path:
    """open_clip `local-dir:` folder with the same architecture as mmrep's `model_yaml` (a clip backbone)."""
    from mmrep.config import load
    from mmrep.model.backbones.clip import clip_model_cfg
    from mmrep.model.config import ModelConfig

    cfg = load(ModelConfig, model_yaml)
    model_cfg = clip_model_cfg(cfg)
    model_cfg.pop("nonscalar_logit_scale")  # stock open_clip: a scalar logit scale
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}, indent=2))
    return out


def train_peer(args, work: Path, seed: int, steps: int, pattern: str) -> dict:
    name = f"peer-{args.mode}-s{seed}-{steps}"
    logs = work / "peer-logs"
    ckpt = logs / name / "checkpoints" / "epoch_1.pt"
    log = work / f"{name}.log"
    if not ckpt.is_file():
        if (logs / name).exists():
            import shutil

            shutil.rmtree(logs / name)  # an interrupted earlier attempt: open_clip_train refuses existing names
        model_dir = peer_model_dir(REPO / "configs" / "model" / "clip-fashion-tiny.yaml", work / "peer-model")
        cmd = [args.peer_python, "-m", "open_clip_train.main", "--model", f"local-dir:{model_dir}",
               "--train-data", pattern, "--train-num-samples", str(steps * args.batch),
               "--dataset-type", "webdataset", "--dataset-resampled", "--batch-size", str(args.batch),
               "--lr", "5e-4", "--wd", "0.2", "--warmup", "100", "--epochs", "1", "--precision", "fp32",
               "--device", "cpu", "--workers", "1", "--seed", str(seed), "--log-every-n-steps", "20",
               "--save-frequency", "1", "--logs", str(logs), "--name", name, "--report-to", ""]
        wall = run(cmd, log, env=dict(os.environ, WANDB_MODE="disabled"))
        (logs / name / "wall.json").write_text(json.dumps({"wall_s": wall}))
    text = (logs / name / "out.log").read_text(errors="replace")
    batch_times = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+)", text)]
    steady = sorted(batch_times[1:] or batch_times)  # the first window holds start-up
    # the median step: a run paused while another trainer had the machine keeps its other steps' speed
    sps = args.batch / steady[len(steady) // 2] if steady else float("nan")
    encoder = peer_to_mmrep(ckpt, work / f"{name}-encoder")
    return {"name": f"open_clip_train (seed {seed})", "encoder": encoder, "steps": steps, "samples_per_s": sps,
            "wall_s": json.loads((logs / name / "wall.json").read_text())["wall_s"]}


def peer_to_mmrep(ckpt: Path, out: Path) -> Path:
    """The peer's checkpoint as an mmrep `clip` encoder folder (same model config, so one evaluator scores both)."""
    if (out / "config.json").is_file():
        return out
    import torch

    from mmrep.config import load
    from mmrep.model import build_encoder, save_encoder
    from mmrep.model.config import ModelConfig

    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state["logit_scale"] = state["logit_scale"].reshape(1)
    encoder = build_encoder(load(ModelConfig, REPO / "configs" / "model" / "clip-fashion-tiny.yaml"))
    encoder.clip.load_state_dict(state)
    save_encoder(encoder.eval(), out)
    return out


# ---------------------------------------------------------------------------------------------- mmrep


def train_mmrep(args, work: Path, seed: int, config: str, extra: list[str], tag: str) -> dict:
    out = work / f"mmrep-{tag}-s{seed}"
    if not (out / "encoder" / "config.json").is_file():
        cmd = mmrep_cmd("train", "--stage", "pretrain", "--config", config, f"--data.shards={args.data / 'train'}",
                        f"--output_dir={out}", f"--seed={seed}", f"--data.seed={seed}", "--overwrite=true",
                        "--logging.wandb=disabled", *extra)
        run(cmd, work / f"mmrep-{tag}-s{seed}.log")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "samples_per_s" in r]
    steady = [r["samples_per_s"] for r in rows[1:]] or [r["samples_per_s"] for r in rows]
    sps = len(steady) / sum(1 / s for s in steady) if steady else float("nan")  # harmonic mean = total samples / time
    return {"name": f"mmrep {tag} (seed {seed})", "encoder": out / "encoder", "steps": rows[-1]["step"] if rows else 0,
            "samples_per_s": sps}


# ---------------------------------------------------------------------------------------------- eval


def run_jobs(jobs: list, at_once: int, skip: bool = False) -> list[dict]:
    """Run training jobs `at_once` at a time (side by side: give each OMP_NUM_THREADS = cores / at_once)."""
    if skip:
        return []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, at_once)) as pool:
        return list(pool.map(lambda job: job(), jobs))


def evaluate(bench: Path, run_info: dict, work: Path) -> dict:
    report = work / "reports" / Path(run_info["encoder"]).parent.name / Path(run_info["encoder"]).name
    if not (report / "report.json").is_file():
        run(mmrep_cmd("eval", "mbe", "--bench", str(bench), "--encoder", str(run_info["encoder"]), "--out", str(report),
                      "--overwrite"), work / "eval.log")
    results = json.loads((report / "report.json").read_text())["encoders"][0]["results"]
    ret = results["retrieval"]
    art = results.get("classification", {}).get("articleType", {})
    return {"t2i": [100 * ret["t2i"][f"R@{k}"] for k in (1, 5, 10)], "i2t": [100 * ret["i2t"][f"R@{k}"] for k in (1, 5, 10)],
            "articleType": 100 * art.get("accuracy", float("nan")),
            "majority": 100 * art.get("majority_accuracy", float("nan"))}


def table(rows: list[dict]) -> str:
    head = "| run | steps | samples/s | t→i R@1/5/10 | i→t R@1/5/10 | articleType acc. (majority) |"
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        m = r["metrics"]
        lines.append(f"| {r['name']} | {r['steps']} | {r['samples_per_s']:.1f} | "
                     + " / ".join(f"{x:.1f}" for x in m["t2i"]) + " | " + " / ".join(f"{x:.1f}" for x in m["i2t"])
                     + f" | {m['articleType']:.1f} ({m['majority']:.1f}) |")
    return "\n".join(lines)


def mean(rows: list[dict], key: str, i: int = 2) -> float:
    vals = [r["metrics"][key][i] if isinstance(r["metrics"][key], list) else r["metrics"][key] for r in rows]
    return sum(vals) / len(vals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["samples", "budget"], default="samples")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "fashion", help="mmrep import of the catalogue")
    ap.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "fashion_product_images_small"))
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-quality")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=330, help="samples mode: optimizer steps for both trainers")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=900.0, help="budget mode: training seconds per run")
    ap.add_argument("--recipe", default="configs/train/fashion-small.yaml", help="budget mode: the mmrep recipe")
    ap.add_argument("--split", default="test", help="evaluation split (tune on val)")
    ap.add_argument("--peer-python", default=str(PEER_PYTHON), help="python of the peer environment (scripts/peer_env.sh)")
    ap.add_argument("--only", choices=["both", "peer", "mmrep"], default="both",
                    help="train only one side (finished runs of the other are still reported)")
    ap.add_argument("--skip-peer", action="store_true", help="the mmrep side only (same as --only mmrep)")
    ap.add_argument("--jobs", type=int, default=1, help="training runs at a time (set OMP_NUM_THREADS to share the cores)")
    ap.add_argument("--peer-steps", type=int, default=0,
                    help="budget mode: the peer's steps (default: from a 120-step throughput probe)")
    args = ap.parse_args()
    if args.skip_peer:
        args.only = "mmrep"
    args.skip_peer = args.only == "mmrep"
    if not args.skip_peer and not Path(args.peer_python).is_file():
        raise SystemExit(f"peer python {args.peer_python} not found: run `bash scripts/peer_env.sh` first")
    args.work.mkdir(parents=True, exist_ok=True)
    ensure_import(args.data, args.source, args.work)
    bench = ensure_bench(args.data, args.split, args.work)
    pattern, n = write_peer_shards(args.data / "train", args.work / "peer-shards") if not args.skip_peer else ("", 0)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"catalogue {args.data} (peer shards: {n} samples), eval split {args.split}, OMP_NUM_THREADS={threads}", flush=True)

    peer_jobs, our_jobs = [], []
    for seed in args.seeds:
        if args.mode == "samples":
            peer_jobs.append(lambda seed=seed: train_peer(args, args.work, seed, args.steps, pattern))
            our_jobs.append(lambda seed=seed: train_mmrep(
                args, args.work, seed, "configs/train/fashion-parity.yaml",
                [f"--optim.total_steps={args.steps}", f"--data.batch_size={args.batch}"], "parity"))
        else:
            our_jobs.append(lambda seed=seed: train_mmrep(args, args.work, seed, args.recipe,
                                                          [f"--max_train_seconds={args.seconds}"], Path(args.recipe).stem))
    if args.mode == "budget" and not args.skip_peer:
        # the peer gets the steps its own measured throughput fits in the budget (a full cosine over them)
        steps = args.peer_steps or int(args.seconds * train_peer(args, args.work, 0, 120, pattern)["samples_per_s"]
                                       / args.batch)
        peer_jobs = [lambda seed=seed: train_peer(args, args.work, seed, steps, pattern) for seed in args.seeds]
    peers = run_jobs(peer_jobs, args.jobs, skip=args.only == "mmrep")
    ours = run_jobs(our_jobs, args.jobs, skip=args.only == "peer")
    for r in peers + ours:
        r["metrics"] = evaluate(bench, r, args.work)
    print()
    print(table(peers + ours))
    if peers and ours:
        print()
        for key, label in (("t2i", "t→i R@10"), ("i2t", "i→t R@10")):
            print(f"{label}: mmrep {mean(ours, key):.1f} / open_clip_train {mean(peers, key):.1f} = "
                  f"{mean(ours, key) / mean(peers, key):.2f}×")
        if args.mode == "samples":  # budget mode: the peer's steps are fixed, so its samples/s is not a comparison
            sps = sum(r["samples_per_s"] for r in ours) / len(ours) / (sum(r["samples_per_s"] for r in peers) / len(peers))
            print(f"samples/s: mmrep / open_clip_train = {sps:.2f}×")
    (args.work / f"results-{args.mode}.json").write_text(json.dumps(peers + ours, indent=2, default=str))


if __name__ == "__main__":
    main()
