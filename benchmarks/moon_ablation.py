"""MOON2.0 post-training pieces on the built-in world: learned ω vs fixed view weights, dynamic filtering.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/moon_ablation.py [--out runs/moon-ablation]
        [--variants learned,fixed-1:1:1,fixed-12:3:2,no-filter] [--seeds 0] [--steps 150] [--batch 32]
        [--noise 0.0]

Builds (once) the main job's world (configs/run/world-tiny.yaml: 2,000 items, 600 users, 3,000
queries; `--noise` swaps that share of training triplets' positive with a negative, i.e. label noise)
and its pretrained encoder, then post-trains every variant × seed from that encoder with the main job's
settings (configs/train/posttrain-tiny.yaml, 150 steps × 32, ZeRO-0) and evaluates all of them with
one `mmrep eval mbe` on the held-out test split. Prints one table: held-out R@10 per task, the
per-view ω at the first and last logged step, and the share of triplets the filter down-weighted
at the first step it was active and at the last. Every command it runs is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORLD = ["--world.n_items=2000", "--world.n_users=600", "--world.n_queries=3000"]
VARIANTS = {
    "learned": [],  # the config's defaults: ω from the MoE, learned; batch-relative filtering
    "fixed-1:1:1": ["--loss.omega=fixed", "--loss.fixed_weights={t: 1, i: 1, mm: 1}"],
    "fixed-12:3:2": ["--loss.omega=fixed", "--loss.fixed_weights={t: 3, i: 12, mm: 2}"],  # MOON's image:text:mm
    "readout": ["--loss.omega_grad=false", "--optim.lr_scales={}"],  # ω detached, W* at the base LR (before)
    "no-filter": ["--loss.filtering=false"],
    "absolute-filter": ["--loss.filter_reference=absolute", "--loss.filter_warmup=0"],  # the paper's margins 0.1 -> 0
}


def mmrep(*argv: str) -> None:
    print("$ mmrep " + " ".join(shlex.quote(a) for a in argv), flush=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled")
    code = subprocess.run([sys.executable, "-m", "mmrep.cli", *argv], env=env, cwd=REPO).returncode
    if code:
        raise SystemExit(f"command failed (exit {code})")


def trace(run: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.startswith("{")]
    rows = [r for r in rows if "loss" in r]
    out = {f"ω_{v} first": rows[0].get(f"omega/{v}", float("nan")) for v in ("t", "i", "mm")}
    out |= {f"ω_{v} last": rows[-1].get(f"omega/{v}", float("nan")) for v in ("t", "i", "mm")}
    active = [r for r in rows if r.get("filter/active", 1.0) and "filter/filtered_frac" in r]
    out["filtered first"] = active[0]["filter/filtered_frac"] if active else 0.0
    out["filtered last"] = active[-1]["filter/filtered_frac"] if active else 0.0
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/moon-ablation")
    p.add_argument("--variants", default="learned,fixed-1:1:1,fixed-12:3:2,no-filter")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--noise", type=float, default=0.0, help="world.triplet_noise_rate of the generated world")
    a = p.parse_args()
    out = Path(a.out)
    variants = a.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    world, pre = out / "world", out / "pretrain"
    common = [f"--optim.total_steps={a.steps}", f"--data.batch_size={a.batch}", "--deepspeed.config=configs/deepspeed/zero0.json",
              "--checkpoint.every_steps=0", "--logging.wandb=disabled", "--overwrite=true"]
    if not (world / "world.json").is_file():
        mmrep("data", "synth", "--size", "tiny", "--seed", "0", "--out", str(world), "--overwrite", "--quiet", *WORLD,
              f"--world.triplet_noise_rate={a.noise}")
    if not (pre / "encoder").is_dir():
        mmrep("train", "--stage", "pretrain", "--config", "configs/train/pretrain-tiny.yaml", f"--output_dir={pre}",
              f"--data.shards={world / 'items' / 'train'}", "--init_from=", *common)
    if not (out / "bench").is_dir():
        mmrep("eval", "mbe", "--make-bench", "--from-world", str(world), "--split", "test", "--out", str(out / "bench"),
              "--overwrite")
    runs: dict[tuple[str, int], Path] = {}
    for seed in [int(s) for s in a.seeds.split(",")]:
        for v in variants:
            run = out / f"{v.replace(':', '-')}-s{seed}"
            if not (run / "encoder").is_dir():
                mmrep("train", "--stage", "posttrain", "--config", "configs/train/posttrain-tiny.yaml", f"--output_dir={run}",
                      f"--data.shards={world / 'triplets' / 'train'}", f"--init_from={pre / 'encoder'}", f"--seed={seed}",
                      *common, *VARIANTS[v])
            runs[(v, seed)] = run
    mmrep("eval", "mbe", "--bench", str(out / "bench"), *[x for r in runs.values() for x in ("--encoder", str(r / "encoder"))],
          "--out", str(out / "eval"), "--overwrite")
    report = json.loads((out / "eval" / "report.json").read_text())
    by_dir = {str(Path(e["encoder"]).resolve()) if "encoder" in e else e["name"]: e["results"]["summary"] for e in report["encoders"]}
    rows = []
    for (v, seed), run in runs.items():
        summary = by_dir.get(str((run / "encoder").resolve()))
        if summary is None:  # reports name encoders by their folder
            summary = next(e["results"]["summary"] for e in report["encoders"] if run.name in e["name"])
        rows.append((v, seed, summary, trace(run)))
    keys = [k for k in rows[0][2] if k.endswith("R@10")]
    head = ["variant", "seed", *keys, "mean R@10", "ω t/i/mm first", "ω t/i/mm last", "filtered first→last"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for v, seed, s, t in rows:
        vals = [100 * s[k] for k in keys]
        print(f"| {v} | {seed} | " + " | ".join(f"{x:.1f}" for x in vals) + f" | {statistics.mean(vals):.1f} | "
              + "/".join(f"{t[f'ω_{x} first']:.2f}" for x in ("t", "i", "mm")) + " | "
              + "/".join(f"{t[f'ω_{x} last']:.2f}" for x in ("t", "i", "mm")) + " | "
              + f"{100 * t['filtered first']:.0f}% → {100 * t['filtered last']:.0f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
