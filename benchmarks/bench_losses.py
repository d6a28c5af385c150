"""Loss cost: mmrep's contrastive losses next to open_clip's ClipLoss, measured in the same run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_losses.py [--batch 512] [--dim 256] [--repeats 20]

Prints forward+backward milliseconds per call (median of repeats) for:
  baseline  open_clip ClipLoss on (B, D) image/text features
  mmrep     losses.symmetric_contrastive on the same features (same value, checked)
  posttrain PosttrainObjective.loss on a synthetic triplet batch with every negative source on
            (3 query views, K triplet negatives, in-batch, queue, hard negatives, filtering, 3 Matryoshka dims)
  bare      the minimal work for the same logits: plain cross-entropy per (view, dim) + intra ClipLoss
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    from open_clip.loss import ClipLoss

    from mmrep.train.losses import id_hash, symmetric_contrastive
    from mmrep.train.objectives import Features, LossConfig, PosttrainObjective

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--negatives", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    b, d, k = args.batch, args.dim, args.negatives
    torch.manual_seed(0)
    img = F.normalize(torch.randn(b, d), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(b, d), dim=-1).requires_grad_()
    scale = torch.tensor([14.3], requires_grad=True)
    clip_loss = ClipLoss()

    def baseline():
        clip_loss(img, txt, scale[0]).backward()

    def ours():
        symmetric_contrastive(img, txt, scale)[1].backward()

    with torch.no_grad():
        same = abs(float(clip_loss(img, txt, scale[0])) - float(symmetric_contrastive(img, txt, scale)[1]))

    def emb(*shape):
        return F.normalize(torch.randn(*shape, d), dim=-1).requires_grad_()

    ones = torch.ones(b, dtype=torch.bool)
    tensors = {"emb/q_t": emb(b), "emb/q_i": emb(b), "emb/q_mm": emb(b), "valid/q_t": ones, "valid/q_i": ones,
               "valid/q_mm": ones, "emb/pos": emb(b), "ids/pos": id_hash([f"p{i}" for i in range(b)]),
               "category": id_hash([f"c{i % 16}" for i in range(b)]), "emb/neg": emb(b, k),
               "valid/neg": torch.ones(b, k, dtype=torch.bool), "ids/neg": id_hash([f"n{i}" for i in range(b * k)]).reshape(b, k),
               "emb/pos_image": emb(b), "emb/pos_text": emb(b), "valid/intra": ones}
    for v in ("t", "i", "mm"):
        tensors[f"gates/q_{v}"] = torch.softmax(torch.randn(b, 8), -1)
    feats = Features(tensors, torch.zeros(1), torch.zeros(1), torch.softmax(torch.randn(8, 3), -1))
    dims = [d // 4, d // 2, d]
    obj = PosttrainObjective(LossConfig(queue_size=4 * b, hard_k=4, matryoshka_dims=dims), d)
    obj.after_step(feats.detach())

    def posttrain():
        obj.loss(feats, 5, 100).loss.backward()

    queued = obj.queue.embeddings.clone()

    def bare_same_logits():
        """The minimal work for the same candidates: one plain cross-entropy per (view, dim), no masks."""
        total = 0.0
        for dim in dims:
            pool = F.normalize(torch.cat([tensors["emb/pos"], tensors["emb/neg"].flatten(0, 1), queued])[:, :dim], dim=-1)
            for v in ("t", "i", "mm"):
                q = F.normalize(tensors[f"emb/q_{v}"][:, :dim], dim=-1)
                total = total + F.cross_entropy(scale * q @ pool.T, torch.arange(b))
            total = total + clip_loss(F.normalize(tensors["emb/pos_image"][:, :dim], dim=-1),
                                      F.normalize(tensors["emb/pos_text"][:, :dim], dim=-1), scale[0])
        total.backward()

    t_base, t_ours, t_post = timed(baseline, args.repeats), timed(ours, args.repeats), timed(posttrain, args.repeats)
    t_bare = timed(bare_same_logits, args.repeats)
    print(f"B={b} D={d} K={k} threads={torch.get_num_threads()} (median of {args.repeats}, forward+backward)")
    print(f"baseline  open_clip ClipLoss           {t_base:8.2f} ms")
    print(f"mmrep     symmetric_contrastive        {t_ours:8.2f} ms  ({t_ours / t_base:.2f}x baseline, |Δloss| {same:.1e})")
    print(f"bare      same logits, plain CE        {t_bare:8.2f} ms  (3 views x 3 dims over {b}+{b * k} in-batch + "
          f"{len(obj.queue)} queued, + intra ClipLoss; no masks / filtering / hard negatives)")
    print(f"posttrain full dual-level objective    {t_post:8.2f} ms  ({t_post / t_bare:.2f}x bare)")


if __name__ == "__main__":
    main()
