"""GPU benchmark for a lent accelerator: the `base` config in bf16 under DeepSpeed, MFU, export speed.

One command, a few minutes of device time:
  1. training: mmrep's own `Trainer` (DeepSpeed engine, ZeRO stage from --zero, bf16, pretrain
     objective) runs --warmup + --steps optimizer steps on synthetic catalogue batches (random JPEGs +
     titles, collated by the trainer's own collator and moved to the device ahead of time, so this
     measures the model + DeepSpeed, not the data loader); prints samples/s and step time;
  2. FLOPs: one training step (forward + backward) under `torch.utils.flop_counter.FlopCounterMode`;
     MFU = FLOPs per step x steps/s / the device's peak (a table of dense bf16 peaks by device name,
     or --peak-tflops);
  3. memory: `torch.cuda.max_memory_allocated` over the training steps;
  4. export: `mmrep.export.embeddings.export` over a synthetic shard set of --export-items products
     (read + decode on the host, forward on the device, parts written), and the forward alone over
     the same pre-decoded batches; items/s of both.

    python benchmarks/bench_gpu.py                       # base, bf16, on the GPU (cuda:0)
    python benchmarks/bench_gpu.py --dry-run             # CPU smoke test: tiny config, fp32, 2 steps
    deepspeed --num_gpus 8 benchmarks/bench_gpu.py       # several GPUs (rank 0 prints; samples/s is global)
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, matched by
# substring of torch.cuda.get_device_name(); more specific names first.
PEAK_BF16_TFLOPS = [
    ("GB200", 2500.0), ("B200", 2250.0), ("B100", 1750.0),
    ("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0),
    ("A100", 312.0), ("A800", 312.0), ("A6000", 154.8), ("A40", 149.7), ("A30", 165.0), ("A10G", 70.0), ("A10", 125.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0),
    ("MI300X", 1307.0), ("MI250X", 383.0),
]


def peak_tflops(device_name: str, override: float) -> float | None:
    if override:
        return override
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def synthetic_products(n: int, image_size: int, images: int, seed: int):
    """n products with `images` random JPEGs each (a small pool reused) and short random titles."""
    from PIL import Image

    from mmrep.records import Product

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        pool.append(buf.getvalue())
    words = "red blue cotton shirt dress leather shoe bag slim fit men women casual formal summer watch".split()
    return [Product(id=f"p{i}", title=" ".join(rng.choice(words, 8)), description=" ".join(rng.choice(words, 24)),
                    category=["apparel", str(rng.choice(words))], images=[pool[(i + j) % len(pool)] for j in range(images)])
            for i in range(n)]


def train_config(args, out: Path):
    from mmrep.config import from_dict, read_yaml
    from mmrep.data.readers import DataConfig
    from mmrep.model.config import ModelConfig
    from mmrep.train.checkpoint import CheckpointConfig
    from mmrep.train.trainer import DeepSpeedSection, OptimConfig, TrainConfig

    model = from_dict(ModelConfig, read_yaml(args.model), "model")
    return TrainConfig(stage="pretrain", model=model, output_dir=str(out / "run"),
                       data=DataConfig(batch_size=args.batch, max_images=args.images, num_workers=0),
                       optim=OptimConfig(total_steps=args.warmup + args.steps + 1, warmup_steps=0),
                       deepspeed=DeepSpeedSection(config=str(REPO / "configs/deepspeed/zero0.json"),
                                                  zero_stage=args.zero, precision=args.precision),
                       checkpoint=CheckpointConfig(every_steps=0))


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(args, out: Path) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from mmrep.train.trainer import Trainer

    trainer = Trainer(train_config(args, out), build_loader=False)
    collator = trainer.collator(train=True)
    size = trainer.model_cfg.image_size
    batches = [collator(synthetic_products(args.batch, size, args.images, seed=trainer.rank * 1000 + i))
               for i in range(2)]
    dev = trainer.device if isinstance(trainer.device, torch.device) else torch.device(trainer.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(args.warmup):  # first steps: allocator growth, cuDNN/cuBLAS autotuning
        trainer.train_step([batches[i % 2]])
    sync(dev)
    t0 = time.perf_counter()
    for i in range(args.steps):
        trainer.train_step([batches[i % 2]])
    sync(dev)
    dt = (time.perf_counter() - t0) / args.steps
    with FlopCounterMode(display=False) as counter:  # one more step, counted (forward + backward)
        trainer.train_step([batches[0]])
    sync(dev)
    flops = counter.get_total_flops()
    peak_mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    world = trainer.world
    params = sum(p.numel() for p in trainer.encoder.parameters())
    return {"step_s": dt, "samples_per_s": args.batch * world / dt, "flops_per_step": flops * world,
            "peak_mem_gib": peak_mem, "params": params, "world": world, "rank": trainer.rank, "device": dev,
            "dtype": str(trainer.dtype or torch.float32)}


def bench_export(args, out: Path, device) -> dict:
    """End-to-end export of a synthetic shard set, and the bare forward over the same decoded batches."""
    from mmrep.data.shards import ShardWriter
    from mmrep.export.embeddings import ExportConfig, export
    from mmrep.inference import embed_prepared, open_encoder, prepare_record
    from mmrep.records import sample_key

    handle = open_encoder(config=args.model, device=str(device))
    products = synthetic_products(args.export_items, handle.encoder.cfg.image_size, args.images, seed=7)
    shards = out / "shards"
    with ShardWriter(shards, "bench", max_count=max(1, args.export_items // 4)) as w:
        for p in products:
            w.write({"__key__": sample_key(p.id), **p.to_sample()})
    cfg = ExportConfig(shards=str(shards), out=str(out / "emb"), batch_size=args.export_batch,
                       part_size=max(args.export_batch, args.export_items // 4), progress=False, overwrite=True,
                       device=str(device), max_images=args.images)
    export(cfg, handle)  # warm-up (kernels, allocator)
    sync(device)
    t0 = time.perf_counter()
    index = export(cfg, handle)
    sync(device)
    t_export = time.perf_counter() - t0
    prepared = [prepare_record(handle, p) for p in products]
    batches = [prepared[i : i + args.export_batch] for i in range(0, len(prepared), args.export_batch)]
    sync(device)
    t0 = time.perf_counter()
    for b in batches:
        embed_prepared(handle, b)
    sync(device)
    t_fwd = time.perf_counter() - t0
    return {"export_items_per_s": index["count"] / t_export, "forward_items_per_s": len(prepared) / t_fwd}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "configs/model/base.yaml"))
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--zero", type=int, default=1, choices=[0, 1, 2, 3])
    p.add_argument("--batch", type=int, default=128, help="per-rank micro-batch")
    p.add_argument("--images", type=int, default=2, help="images per product")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--export-items", type=int, default=4096)
    p.add_argument("--export-batch", type=int, default=256)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak (overrides the table)")
    p.add_argument("--dry-run", action="store_true", help="CPU smoke test: tiny config, fp32, 2 steps, small batches")
    p.add_argument("--out", default="", help="work folder (default: a temp dir, removed at the end)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.dry_run:
        args.model, args.precision = str(REPO / "configs/model/tiny.yaml"), "fp32"
        args.batch, args.steps, args.warmup, args.export_items, args.export_batch = 4, 2, 1, 16, 8
    if args.precision == "bf16" and not torch.cuda.is_available():
        raise SystemExit("bf16 needs a GPU here (no CUDA device found); use --dry-run for the CPU smoke test")
    out = Path(args.out or tempfile.mkdtemp(prefix="mmrep-bench-gpu-"))
    try:
        train = bench_train(args, out)
        dev = train["device"]
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        peak = peak_tflops(name, args.peak_tflops)
        achieved = train["flops_per_step"] / train["step_s"] / 1e12
        mfu = achieved / (peak * train["world"]) if peak else None
        res = {"device": name, "world": train["world"], "model": Path(args.model).name, "precision": train["dtype"],
               "zero": args.zero, "batch_per_rank": args.batch, "images_per_item": args.images,
               "params_m": train["params"] / 1e6, "step_s": train["step_s"], "samples_per_s": train["samples_per_s"],
               "tflop_per_step": train["flops_per_step"] / 1e12, "achieved_tflops": achieved,
               "peak_tflops_per_device": peak, "mfu": mfu, "peak_mem_gib": train["peak_mem_gib"]}
        if train["rank"] == 0:
            res |= bench_export(args, out, dev)
            rows = [("device", f"{name} x {train['world']}"), ("model", f"{res['model']} ({res['params_m']:.1f} M params), "
                    f"{res['precision']}, ZeRO-{args.zero}, batch {args.batch}/rank, {args.images} images/item"),
                    ("step time", f"{res['step_s'] * 1000:.1f} ms"), ("samples/s", f"{res['samples_per_s']:.1f}"),
                    ("model FLOPs / step (fwd+bwd)", f"{res['tflop_per_step'] * 1000:.2f} GFLOP"),
                    ("achieved", f"{achieved:.2f} TFLOP/s"),
                    ("MFU", f"{100 * mfu:.1f}% of {peak:.0f} TFLOP/s per device" if mfu is not None
                     else "n/a (unknown device peak: pass --peak-tflops)"),
                    ("peak memory", f"{res['peak_mem_gib']:.2f} GiB" if res["peak_mem_gib"] is not None else "n/a (CPU)"),
                    ("export (read + decode + forward + write)", f"{res['export_items_per_s']:.1f} items/s"),
                    ("forward only, same batches", f"{res['forward_items_per_s']:.1f} items/s")]
            print("| metric | value |\n| --- | --- |")
            for k, v in rows:
                print(f"| {k} | {v} |")
            if args.json:
                Path(args.json).write_text(json.dumps(res, indent=1))
        return res
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
