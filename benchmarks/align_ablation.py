"""QARM item alignment on the built-in world: does it help the downstream CTR model it exists for?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/align_ablation.py --world runs/moon-ablation/world
        --post runs/moon-ablation/learned-s0/encoder [--out runs/align-ablation]
        [--variants align,anchor-1,anchor-10] [--ctr-seeds 3]

Starting from one post-trained encoder, runs the align stage (configs/train/align-tiny.yaml with the
main job's overrides) once per variant, exports every item of the world with each encoder, and scores
all versions, the post-trained start included, with the main job's own commands: `mmrep eval mbe` on
the held-out test split (query retrieval) and `mmrep eval exchange-rate` (QARM codes -> CTR model
retrained per version, the world's time split, `--ctr-seeds` seeds). Prints one table: held-out R@10
per task and the downstream AUC per version. Every command it runs is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moon_ablation import mmrep  # the same step runner (benchmarks/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "align": [],  # configs/train/align-tiny.yaml as it is (anchor_weight 10)
    "align-no-anchor": ["--loss.anchor_weight=0"],  # the stage before it had an anchor
    "anchor-1": ["--loss.anchor_weight=1"],
    "anchor-10": ["--loss.anchor_weight=10"],
    "low-lr": ["--loss.anchor_weight=0", "--optim.lr=5e-5"],
    "co-purchase": ["--loss.anchor_weight=0"],  # pairs restricted to co-purchases (see main)
}


def version_dir(world: Path, encoder: Path, out: Path, name: str) -> Path:
    """All items' embeddings (train + val + test) in one folder, as the main job's version folders."""
    import numpy as np

    from mmrep.export import load_embeddings
    from mmrep.export.embeddings import save_embeddings

    vdir = out / "versions" / name
    if vdir.is_dir():
        return vdir
    ids, arrays = [], []
    for split in ("train", "val", "test"):
        dest = out / "embeddings" / name / split
        mmrep("export", "--encoder", str(encoder), "--shards", str(world / "items" / split), "--out", str(dest),
              "--overwrite", "--no-progress")
        i, a = load_embeddings(dest)
        ids += [str(x) for x in i]
        arrays.append(a)
    save_embeddings(vdir, ids, np.concatenate(arrays), name=name, overwrite=True)
    return vdir


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", required=True)
    p.add_argument("--post", required=True, help="the post-trained encoder alignment starts from")
    p.add_argument("--out", default="runs/align-ablation")
    p.add_argument("--variants", default="align-no-anchor,anchor-1,anchor-10")
    p.add_argument("--ctr-seeds", type=int, default=3)
    a = p.parse_args()
    world, out, post = Path(a.world), Path(a.out), Path(a.post)
    out.mkdir(parents=True, exist_ok=True)
    encoders = {"post-train": post}
    for v in a.variants.split(","):
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {sorted(VARIANTS)}")
        run = out / v
        pairs = world / "pairs.csv"
        if v == "co-purchase":
            pairs = out / "pairs-co-purchase.csv"
            rows = (world / "pairs.csv").read_text().splitlines()
            pairs.write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.endswith(",co-purchase")]) + "\n")
        if not (run / "encoder").is_dir():
            mmrep("train", "--stage", "align", "--config", "configs/train/align-tiny.yaml", f"--output_dir={run}",
                  f"--data.shards={world / 'items' / 'train'}", f"--init_from={post}", f"--pairs={pairs}",
                  "--deepspeed.config=configs/deepspeed/zero0.json", "--logging.wandb=disabled", "--overwrite=true",
                  *VARIANTS[v])
        encoders[v] = run / "encoder"
    bench = out / "bench"
    if not bench.is_dir():
        mmrep("eval", "mbe", "--make-bench", "--from-world", str(world), "--split", "test", "--out", str(bench), "--overwrite")
    mmrep("eval", "mbe", "--bench", str(bench), *[x for e in encoders.values() for x in ("--encoder", str(e))],
          "--out", str(out / "mbe"), "--overwrite")
    versions = {name: version_dir(world, enc, out, name) for name, enc in encoders.items()}
    split_time = json.loads((world / "world.json").read_text()).get("ctr_split_time")
    segments = out / "segments.csv"
    if not segments.is_file():
        from mmrep.pipeline import _segments_csv

        _segments_csv(world, segments)
    mmrep("eval", "exchange-rate", "--versions", ",".join(f"{n}={d}" for n, d in versions.items()),
          "--log", str(world / "interactions.csv"), "--segments", str(segments), "--pairs", str(world / "pairs.csv"),
          "--out", str(out / "exchange-rate"), "--overwrite", "--quantize.levels=3", "--quantize.centroids=8",
          "--quantize.vq_k=25", f"--ctr.seeds={a.ctr_seeds}", *([f"--ctr.split_time={split_time}"] if split_time else []))
    mbe = json.loads((out / "mbe" / "report.json").read_text())
    er = json.loads((out / "exchange-rate" / "report.json").read_text())
    auc = er.get("auc") or er.get("downstream", {})
    print(json.dumps({"auc": auc}, indent=1))
    keys = [k for k in mbe["encoders"][0]["results"]["summary"] if k.endswith("R@10")]
    print("\n| version | " + " | ".join(keys) + " | downstream AUC |\n|" + "---|" * (len(keys) + 2))
    for (name, _), e in zip(encoders.items(), mbe["encoders"]):
        s = e["results"]["summary"]
        value = auc.get(name) if isinstance(auc, dict) else None
        if isinstance(value, dict):
            value = value.get("mean", value.get("auc"))
        print(f"| {name} | " + " | ".join(f"{100 * s[k]:.1f}" for k in keys) + f" | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
