"""Heads-only probe on frozen tower features: how R@10 grows with epochs when the towers never change.

The probe behind the Fashion recipe's feature cache (README "Fashion Product Images"). It extracts the
recipe's frozen features once (EfficientNet-Lite0 pooled image features of the clean evaluation input;
MiniLM mean-pooled title and full-record features), then trains only two heads with a symmetric InfoNCE
(temperature 0.05, AdamW, one-cycle LR), drawing the title with probability --title, and prints val
t→i (title -> image) and i→t (clean image -> full record) R@10 during training. No trainer, no
augmentation: a quick upper-bound estimate for tuning on the val split.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/probe_frozen_features.py extract --split train --out runs/probe
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/probe_frozen_features.py extract --split val --out runs/probe
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/probe_frozen_features.py probe --out runs/probe --epochs 20 \\
        --image-hidden 512 --text-hidden 320          # the recipe's MLP heads; 0 / 0 = linear heads
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def extract(args) -> None:
    from mmrep.config import load
    from mmrep.data.readers import iter_products
    from mmrep.model.config import ModelConfig
    from mmrep.model.factory import create_model_and_preprocess

    cfg = load(ModelConfig, args.model)
    encoder, pre = create_model_and_preprocess(cfg, max_images=1)
    encoder.eval()
    collator = pre.collator(train=False)
    feats: dict[str, list] = {"img": [], "title": [], "full": []}
    chunk: list = []

    def flush() -> None:
        with torch.inference_mode():
            feats["img"].append(encoder.image_trunk(torch.stack([collator.transform(p.images[0]) for p in chunk])))
            for view in ("title", "full"):
                ids, _, mask = pad([collator.tokenizer.encode_product(p, view) for p in chunk])
                feats[view].append(encoder.text_trunk(ids * mask))
        chunk.clear()

    from mmrep.data.tokenize import pad_tokens as pad

    t0 = time.perf_counter()
    for p in iter_products(args.data / args.split):
        if p.images and p.has_text:
            chunk.append(p)
        if len(chunk) == 256:
            flush()
    if chunk:
        flush()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"{args.split}.npz", **{k: torch.cat(v).numpy() for k, v in feats.items()})
    print(f"{args.split}: {sum(len(v) for v in feats['img'])} items in {time.perf_counter() - t0:.0f} s")


def head(d_in: int, hidden: int) -> torch.nn.Module:
    if hidden:
        return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 256))
    return torch.nn.Linear(d_in, 256)


def recall10(q: torch.Tensor, c: torch.Tensor) -> float:
    top = (q @ c.T).topk(10, dim=1).indices
    return 100 * (top == torch.arange(len(q))[:, None]).any(1).float().mean().item()


def probe(args) -> None:
    torch.manual_seed(args.seed)
    load = lambda split: {k: torch.from_numpy(v).float() for k, v in np.load(Path(args.out) / f"{split}.npz").items()}
    tr, va = load("train"), load("val")
    image_head, text_head = head(tr["img"].shape[1], args.image_hidden), head(tr["title"].shape[1], args.text_hidden)
    params = [*image_head.parameters(), *text_head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    n, b = len(tr["img"]), args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * (n // b), pct_start=0.05)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(n)
        for s in range(n // b):
            rows = order[s * b:(s + 1) * b]
            title = torch.rand(len(rows)) < args.title
            text = torch.where(title[:, None], tr["title"][rows], tr["full"][rows])
            i = F.normalize(image_head(tr["img"][rows]), dim=-1)
            t = F.normalize(text_head(text), dim=-1)
            logits, y = i @ t.T / 0.05, torch.arange(len(rows))
            loss = (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if epoch + 1 in (1, 3, 5, 10, 20, 40) or epoch + 1 == args.epochs:
            with torch.no_grad():
                i = F.normalize(image_head(va["img"]), dim=-1)
                t2i = recall10(F.normalize(text_head(va["title"]), dim=-1), i)
                i2t = recall10(i, F.normalize(text_head(va["full"]), dim=-1))
            print(f"epoch {epoch + 1}: loss {loss.item():.3f}, val R@10 t→i {t2i:.1f} / i→t {i2t:.1f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["extract", "probe"])
    ap.add_argument("--model", default=str(REPO / "configs" / "model" / "clip-effnet-minilm.yaml"))
    ap.add_argument("--data", type=Path, default=REPO / "data" / "fashion")
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", default=str(REPO / "runs" / "probe"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--title", type=float, default=0.6, help="probability of the title view (else the full record)")
    ap.add_argument("--image-hidden", type=int, default=0)
    ap.add_argument("--text-hidden", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    extract(args) if args.what == "extract" else probe(args)


if __name__ == "__main__":
    main()
