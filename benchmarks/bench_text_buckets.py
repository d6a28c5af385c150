"""The Fashion recipe's HF text tower: mmrep's length-bucketed encode vs open_clip's own `encode_text`.

Both encode the same batches of real Fashion texts, drawn with the recipe's text views (title /
title + category / full record), padded to the batch's longest as the collator pads them. The peer is
`model.encode_text` of the open_clip `CustomTextCLIP` inside the encoder, unmodified; mmrep's side is
the clip backbone's bucketed path. The embeddings must agree (max difference printed).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_text_buckets.py [--batches 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from pathlib import Path

import torch

from mmrep.config import load
from mmrep.data.readers import iter_products
from mmrep.data.tokenize import ProductTokenizer, pad_tokens
from mmrep.model import ModelConfig, build_encoder
from mmrep.train.trainer import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(REPO / "configs/train/fashion-small.yaml"))
    ap.add_argument("--shards", default=str(REPO / "data/fashion/val"))
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cfg = load(TrainConfig, args.recipe)
    model_cfg = load(ModelConfig, Path(args.recipe).parent / cfg.model) if isinstance(cfg.model, str) else cfg.model
    encoder = build_encoder(model_cfg).eval()
    tok = ProductTokenizer(model_cfg.tokenizer)
    views, weights = zip(*cfg.data.text_views.items())
    rng = random.Random(0)
    products = list(itertools.islice(iter_products(args.shards), cfg.data.batch_size * args.batches))
    batches = []
    for start in range(0, len(products), cfg.data.batch_size):
        rows = [tok.encode_product(p, rng.choices(views, weights)[0]) for p in products[start:start + cfg.data.batch_size]]
        ids, _, mask = pad_tokens(rows)
        batches.append((ids * mask, mask))
    mean_len = statistics.mean(float(m.sum(1).float().mean()) for _, m in batches)
    padded = statistics.mean(m.shape[1] for _, m in batches)
    print(f"{len(products)} texts, batch {cfg.data.batch_size}, views {dict(cfg.data.text_views)}: mean length "
          f"{mean_len:.1f} tokens, padded to {padded:.1f}; torch threads {torch.get_num_threads()}")

    def timed(fn) -> tuple[float, list[torch.Tensor]]:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = [fn(ids, mask) for ids, mask in batches]
        return (time.perf_counter() - t0) / len(batches), out

    print("| round | open_clip encode_text (s/batch) | mmrep bucketed (s/batch) | speed-up |")
    print("| ---: | ---: | ---: | ---: |")
    ratios, diff = [], 0.0
    for r in range(args.rounds):
        peer_s, peer_out = timed(lambda ids, mask: encoder.clip.encode_text(ids, normalize=True))
        ours_s, ours_out = timed(encoder._encode_hf_text)
        diff = max(diff, max(float((a - b).abs().max()) for a, b in zip(peer_out, ours_out)))
        ratios.append(peer_s / ours_s)
        print(f"| {r} | {peer_s:.3f} | {ours_s:.3f} | {ratios[-1]:.2f}x |")
    print(f"speed-up, median of {args.rounds} rounds: {statistics.median(ratios):.2f}x; max |difference| {diff:.1e}")


if __name__ == "__main__":
    main()
