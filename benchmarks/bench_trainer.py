"""Trainer throughput: the mmrep DeepSpeed trainer next to a bare PyTorch loop, in the same run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_trainer.py [--batch 32] [--steps 8] [--rounds 3] [--zero 0]

Both sides train on the same in-memory batches (a generated world, decoded and collated once, so the
data pipeline is not part of either number):
  bare    open_clip `CLIP` (configs/model/clip-small.yaml's towers) + `open_clip.ClipLoss` + torch AdamW,
          a plain `loss.backward(); clip_grad_norm_; opt.step()` loop
  mmrep   `Trainer.train_step` with the same dense model (backbone clip) and the pretrain objective
          (image<->text contrastive, learnable temperature): DeepSpeed engine (ZeRO --zero, fp32), grad clipping,
          warmup-cosine LR, metrics
  moe     the same trainer step on configs/model/small.yaml (fusion backbone + modality MoE)
Rounds alternate bare / mmrep so that a shared CPU's load drifts over both equally; samples/s is the
median over rounds. Target: mmrep >= 0.9x bare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def make_batches(world: Path, collator, batch: int, n: int) -> list:
    """n batches of `batch` products that have both an image and text (what both loops train on)."""
    from mmrep.data.readers import iter_products

    products = [p for p in iter_products(world / "items" / "train") if p.has_image and p.has_text]
    if len(products) < batch * n:
        products = (products * (batch * n // max(1, len(products)) + 1))
    return [collator.products(products[i * batch:(i + 1) * batch]) for i in range(n)]


def trainer_for(world: Path, out: Path, model: str, batch: int, zero: int = 0):
    from mmrep.train.trainer import Trainer, load_config

    overrides = [f"--model={REPO / 'configs/model' / model}", f"--data.shards={world / 'items/train'}",
                 f"--data.batch_size={batch}", "--data.max_images=1", "--loss.matryoshka_dims=[]",
                 "--optim.total_steps=1000", "--optim.warmup_steps=10", f"--output_dir={out}",
                 "--logging.wandb=disabled", f"--deepspeed.config=configs/deepspeed/zero{zero}.json"]
    return Trainer(load_config(str(REPO / "configs/train/pretrain-tiny.yaml"), overrides), build_loader=False)


class BareClip:
    """open_clip CLIP + ClipLoss + AdamW, the loop a user would write by hand."""

    def __init__(self, model_cfg: dict, lr: float = 1e-3):
        import open_clip
        from open_clip.model import CLIP

        self.model = CLIP(**model_cfg).train()
        self.loss = open_clip.ClipLoss()
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        rest = [p for p in self.model.parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                                     lr=lr, betas=(0.9, 0.98), eps=1e-6)
        self.context = model_cfg["text_cfg"]["context_length"]

    def inputs(self, batch):
        pixels = batch.inputs.pixels[:, 0]
        ids = batch.inputs.text_ids * batch.inputs.text_mask
        return pixels, torch.nn.functional.pad(ids, (0, self.context - ids.shape[1]))

    def step(self, pixels, ids) -> float:
        image, text, scale = self.model(pixels, ids)  # scale = logit_scale.exp()
        loss = self.loss(image, text, scale)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return float(loss)


def rate(fn, batches: list, steps: int) -> float:
    t = time.perf_counter()
    for i in range(steps):
        fn(batches[i % len(batches)])
    return steps * len(batches[0]) / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--no-moe", action="store_true")
    ap.add_argument("--zero", type=int, default=0, choices=(0, 1, 2), help="ZeRO stage of the mmrep side")
    args = ap.parse_args()
    from mmrep.model.backbones.clip import clip_model_cfg
    from mmrep.synth.world import WorldConfig, generate_world

    tmp = Path(tempfile.mkdtemp(prefix="mmrep-bench-trainer-"))
    world = tmp / "world"
    generate_world(WorldConfig(seed=0, n_items=args.items, n_users=50, n_queries=100, image_size=64,
                               sessions_per_user=5.0), world)
    trainer = trainer_for(world, tmp / "dense", "clip-small.yaml", args.batch, args.zero)
    batches = make_batches(world, trainer.collator(train=False), args.batch, 4)
    bare = BareClip(clip_model_cfg(trainer.model_cfg))
    bare_inputs = {id(b): bare.inputs(b) for b in batches}

    def bare_step(b):
        bare.step(*bare_inputs[id(b)])

    def mmrep_step(b):
        trainer.train_step([b])

    for fn in (bare_step, mmrep_step):  # warm-up (allocator, first-call overheads)
        rate(fn, batches, 2)
    bare_rates, mmrep_rates = [], []
    for r in range(args.rounds):
        bare_rates.append(rate(bare_step, batches, args.steps))
        mmrep_rates.append(rate(mmrep_step, batches, args.steps))
        print(f"round {r + 1}: bare {bare_rates[-1]:.1f} samples/s, mmrep {mmrep_rates[-1]:.1f} samples/s", flush=True)
    b, m = statistics.median(bare_rates), statistics.median(mmrep_rates)
    print(f"dense clip-small, batch {args.batch}, {torch.get_num_threads()} threads")
    print(f"  bare open_clip CLIP + ClipLoss loop : {b:8.1f} samples/s")
    print(f"  mmrep trainer (DeepSpeed ZeRO-{args.zero})    : {m:8.1f} samples/s   ratio {m / b:.2f}x (target >= 0.9x)")
    if not args.no_moe:
        moe = trainer_for(world, tmp / "moe", "small.yaml", args.batch, args.zero)
        moe_batches = make_batches(world, moe.collator(train=False), args.batch, 4)
        rate(lambda x: moe.train_step([x]), moe_batches, 2)
        moe_rates = [rate(lambda x: moe.train_step([x]), moe_batches, args.steps) for _ in range(args.rounds)]
        print(f"  mmrep trainer, MoE small (fusion)   : {statistics.median(moe_rates):8.1f} samples/s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.exit(main())
