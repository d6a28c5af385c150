"""Encoder train-step time on CPU: fusion dense vs modality MoE (Z=4, top-1 / top-2) vs open_clip CLIP.

One step = forward + backward + AdamW step, batch 32, fp32, one image + a full-length title per item.
The open_clip CLIP baseline has the same tower widths/depths (configs/model/clip-<size>.yaml) and
is measured in the same run with open_clip's own ClipLoss.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_encoder.py [--sizes tiny small] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mmrep.batch import EncoderInput, TokenType
from mmrep.config import load
from mmrep.model import ModelConfig, build_encoder

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


def batch(cfg: ModelConfig, b: int) -> EncoderInput:
    g = torch.Generator().manual_seed(0)
    length = cfg.tokenizer.context_length
    ids = torch.randint(1, 49000, (b, length), generator=g)
    types = torch.full((b, length), int(TokenType.TITLE))
    types[:, length // 3: length // 2] = int(TokenType.CATEGORY)
    types[:, length // 2: 3 * length // 4] = int(TokenType.ATTRIBUTE)
    pixels = torch.randn(b, 1, 3, cfg.image_size, cfg.image_size, generator=g)
    return EncoderInput(pixels, torch.ones(b, 1, dtype=torch.bool), ids, types, torch.ones(b, length, dtype=torch.bool))


def time_interleaved(steps: dict[str, object], warmup: int, rounds: int) -> dict[str, list[float]]:
    """Run every model's step once per round, in turn, so load changes on a shared CPU hit all alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    return times


def encoder_step(cfg: ModelConfig, x: EncoderInput):
    torch.manual_seed(0)
    enc = build_encoder(cfg).train()
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-4, fused=True)
    target = F.normalize(torch.randn(x.batch_size, cfg.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    labels = torch.arange(x.batch_size)

    def step():
        out = enc(x)
        loss = F.cross_entropy(out.embedding @ target.T / 0.07, labels) + 0.01 * out.aux_loss + 0.01 * out.sparsity_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return enc, step


def clip_step(cfg: ModelConfig, x: EncoderInput):
    import open_clip

    from mmrep.model.backbones.clip import clip_model_cfg

    torch.manual_seed(0)
    model = open_clip.model.CLIP(**clip_model_cfg(cfg)).train()
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    images = x.pixels[:, 0]
    text = F.pad(x.text_ids, (0, model.context_length - x.text_ids.shape[1]))

    def step():
        img, txt, scale = model(images, text)
        loss = loss_fn(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, fp32, "
          f"median of {args.steps} interleaved steps after {args.warmup} warm-up (forward + backward + AdamW)")
    print(f"{'model':40} {'params':>10} {'ms/step':>9} {'vs dense':>9}")
    for size in args.sizes:
        base = load(ModelConfig, CONFIGS / f"{size}.yaml")
        x = batch(base, args.batch)
        variants = {
            "fusion dense": ["--moe.mode=dense"],
            "fusion modality-MoE Z=4 top-1": ["--moe.mode=modality", "--moe.num_experts=4", "--moe.top_k=1"],
            "fusion modality-MoE Z=4 top-2": ["--moe.mode=modality", "--moe.num_experts=4", "--moe.top_k=2"],
            "fusion guided-MoE Z=4 top-1": ["--moe.mode=guided", "--moe.num_experts=4", "--moe.top_k=1"],
        }
        models, steps = {}, {}
        for name, overrides in variants.items():
            models[name], steps[name] = encoder_step(load(ModelConfig, CONFIGS / f"{size}.yaml", overrides), x)
        clip_name = "open_clip CLIP (same towers)"
        models[clip_name], steps[clip_name] = clip_step(load(ModelConfig, CONFIGS / f"clip-{size}.yaml"), x)
        times = time_interleaved(steps, args.warmup, args.steps)
        dense_ms = 1000 * statistics.median(times["fusion dense"])
        for name, model in models.items():
            ms = 1000 * statistics.median(times[name])
            params = sum(p.numel() for p in model.parameters())
            print(f"{size + ' ' + name:40} {params / 1e6:9.2f}M {ms:9.1f} {ms / dense_ms:8.2f}x", flush=True)

if __name__ == "__main__":
    main()
