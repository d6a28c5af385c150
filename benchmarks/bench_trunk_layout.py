"""The Fashion recipe's vision trunk (ImageNet EfficientNet-Lite0, 96 px) in channels-last vs the default layout.

The clip backbone keeps timm trunks in channels-last memory (oneDNN's native layout for convolutions on
CPU); this prints the forward time per image both ways on the same random batch and the largest
difference between the two outputs.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_trunk_layout.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def per_image_ms(trunk: torch.nn.Module, x: torch.Tensor, rounds: int) -> float:
    with torch.inference_mode():
        trunk(x[:16])  # warm-up: oneDNN picks its kernels on the first call
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            trunk(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] / len(x) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "configs" / "model" / "clip-effnet-minilm.yaml"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from mmrep.config import load
    from mmrep.model import build_encoder
    from mmrep.model.config import ModelConfig

    cfg = load(ModelConfig, args.model)
    trunk = build_encoder(cfg).eval().clip.visual.trunk
    x = torch.randn(args.batch, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    last = per_image_ms(trunk, x.contiguous(memory_format=torch.channels_last), args.rounds)
    with torch.inference_mode():
        want = trunk(x.contiguous(memory_format=torch.channels_last))
    trunk.to(memory_format=torch.contiguous_format)
    plain = per_image_ms(trunk, x, args.rounds)
    with torch.inference_mode():
        diff = (trunk(x) - want).abs().max().item()
    print(f"{cfg.vision.name} at {cfg.image_size} px, batch {args.batch}, {torch.get_num_threads()} threads, median of "
          f"{args.rounds}: default layout {plain:.2f} ms/image, channels-last {last:.2f} ms/image "
          f"({plain / last:.2f}x), max difference {diff:.1e}")


if __name__ == "__main__":
    main()
