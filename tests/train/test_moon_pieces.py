"""The MOON2.0 / QARM pieces do what they are for: ω learns, filtering removes label noise, the
alignment anchor holds items near their starting embeddings."""

import copy
import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrep import config
from mmrep.data.collate import Collator
from mmrep.data.tokenize import ProductTokenizer
from mmrep.data.transforms import ImageTransform
from mmrep.model.config import ModelConfig
from mmrep.model import build_encoder
from mmrep.records import Product
from mmrep.train.filtering import DynamicFilter, hardest_negative
from mmrep.data.collate import PairBatch
from mmrep.train.objectives import LossConfig, build_objective

TINY = Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml"


# ----------------------------------------------------------------------------- dynamic filtering
def noisy_triplets(n=256, k=4, dim=32, noise_rate=0.1, seed=0):
    """Unit embeddings of n triplets: the query is its positive plus noise, one negative per triplet is a
    hard one (a perturbed copy of the positive, from near-duplicate to unrelated), the rest random. A
    `noise_rate` share has positive and hard negative swapped (a skipped item logged as the purchase)."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    pos = unit(torch.randn(n, dim, generator=g))
    query = unit(pos + 0.8 * unit(torch.randn(n, dim, generator=g)))
    spread = torch.rand(n, 1, generator=g) * 1.5 + 0.3  # how different the hard negative is
    neg = unit(torch.randn(n, k, dim, generator=g))
    neg[:, 0] = unit(pos + spread * unit(torch.randn(n, dim, generator=g)))
    noisy = torch.rand(n, generator=g) < noise_rate
    pos_logged, neg_logged = pos.clone(), neg.clone()
    pos_logged[noisy], neg_logged[noisy, 0] = neg[noisy, 0], pos[noisy]
    return query, pos_logged, neg_logged, noisy


def test_batch_filter_down_weights_mostly_the_label_noise():
    query, pos, neg, noisy = noisy_triplets()
    s_qp = (query * pos).sum(-1)
    s_qn, has = hardest_negative(query, neg, torch.ones(neg.shape[:2], dtype=torch.bool))
    cfg = LossConfig()  # the defaults: batch reference, margins -1.5 -> -2 robust std, 10% warm-up
    f = cfg.dynamic_filter()
    for step in (20, 50, 99):
        _, w = f.weights(s_qp, s_qn, has, step, 100)
        down = w < 1
        precision = (down & noisy).sum() / down.sum()
        recall = (down & noisy).sum() / noisy.sum()
        assert precision >= 0.8 and recall >= 0.6, (step, float(precision), float(recall))
        assert down[~noisy].float().mean() < 0.08  # clean triplets, hard ones included, mostly keep full weight
    _, w = f.weights(s_qp, s_qn, has, 5, 100)
    assert (w == 1).all()  # warm-up: nothing filtered yet
    # the paper's absolute margins (0.1 -> 0 cosine) at this similarity scale hit the clean data too
    absolute = DynamicFilter(cfg.filter_kappa, 0.1, 0.0, "linear", cfg.filter_threshold, cfg.filter_down_weight)
    _, w = absolute.weights(s_qp, s_qn, has, 20, 100)
    assert (w[~noisy] < 1).float().mean() > 0.1


def test_batch_filter_needs_enough_triplets_to_judge():
    f = LossConfig().dynamic_filter()
    phi, w = f.weights(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([0.1, 0.9, 0.4]), torch.ones(3, dtype=torch.bool), 50, 100)
    assert (w == 1).all() and (phi == 1).all()


# ----------------------------------------------------------------------------- ω learns
def _omega_run(tiny_world, tmp_path, th, name, **extra):
    from mmrep.train.trainer import Trainer

    steps = {"optim.total_steps": 12, "optim.warmup_steps": 2, "loss.filtering": False}
    cfg = th.config(tiny_world, tmp_path / name, "posttrain", init_from="", **{**steps, **extra})
    trainer = Trainer(cfg)
    before = trainer.engine.module.encoder.preference_logits.detach().clone()
    trainer.fit()
    after = trainer.engine.module.encoder.preference_logits.detach().clone()
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    return before.softmax(-1), after.softmax(-1), rows


@pytest.mark.slow
def test_omega_is_learned_during_post_training(tiny_world, tmp_path, th):
    """W* (and so ω) moves under the inter loss with the post-train config; as a detached read-out at the
    base LR (how it was before) it stays at its init; ω is logged per view at every logging step."""
    p0, p1, rows = _omega_run(tiny_world, tmp_path, th, "learned")
    assert all({"omega/t", "omega/i", "omega/mm"} <= set(r) for r in rows)
    assert all(abs(sum(r[f"omega/{v}"] for v in ("t", "i", "mm")) - 1) < 1e-4 for r in rows)  # normalised over views
    learned = (p1 - p0).abs().max().item()
    r0, r1, _ = _omega_run(tiny_world, tmp_path, th, "readout", **{"loss.omega_grad": False, "optim.lr_scales": "{}",
                                                                   "loss.sparsity_coef": 0.0})
    readout = (r1 - r0).abs().max().item()
    print(f"W* moved: learned {learned:.4f}, read-out {readout:.5f}")
    assert learned > 0.02 and learned > 10 * readout, (learned, readout)
    # ω for the same routing (every view's tokens spread evenly over the experts) moved with W*
    from mmrep.model.moe import objective_weights

    gates = torch.eye(p0.shape[0]).repeat(3, 1)
    views = torch.arange(3).repeat_interleave(p0.shape[0])
    omega = [objective_weights(gates, p, views) for p in (p0, p1)]
    omega = [w / w.sum() for w in omega]
    assert (omega[1] - omega[0]).abs().max().item() > 0.005, omega


# ----------------------------------------------------------------------------- alignment anchor
def test_align_anchor_is_zero_at_start_and_grows_as_items_move():
    cfg = config.load(ModelConfig, TINY)
    torch.manual_seed(0)
    encoder = build_encoder(cfg, load_pretrained=False).eval()
    col = Collator(ProductTokenizer(cfg.tokenizer), ImageTransform(cfg.image_size, cfg.image_mean, cfg.image_std), max_images=1)

    def png(rgb):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), rgb).save(buf, "PNG")
        return buf.getvalue()

    items = [Product(id=f"p{i}", title=f"item {i} colour {i % 3}", images=[png((40 * i, 20, 200 - 20 * i))],
                     image_exts=["png"]) for i in range(8)]
    batch = PairBatch(col.products(items[:4]).inputs, col.products(items[4:]).inputs,
                      [p.id for p in items[:4]], [p.id for p in items[4:]])
    obj = build_objective("align", dataclasses.replace(LossConfig(), anchor_weight=10.0), encoder.embed_dim)
    enc = copy.deepcopy(encoder)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    first = obj.loss(obj.features(enc, batch))
    assert first.metrics["loss/anchor"] == pytest.approx(0.0, abs=1e-6)
    for _ in range(3):
        out = obj.loss(obj.features(enc, batch))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    moved = obj.loss(obj.features(enc, batch))
    assert moved.metrics["loss/anchor"] > 1e-4  # measured against the snapshot taken at the first batch
    assert not any(p.requires_grad for p in obj._anchor[0].parameters())
    assert not any(k.startswith("_anchor") for k in obj.state_dict())  # not checkpointed with the objective


# ----------------------------------------------------------------------------- label noise in the world
@pytest.mark.slow
def test_world_triplet_noise_swaps_training_positives_only(tiny_world, tmp_path):
    from mmrep.data.readers import iter_triplets
    from mmrep.synth.world import WorldConfig, generate_world

    cfg = WorldConfig(seed=0, n_items=120, n_users=30, n_queries=150, image_size=32, sessions_per_user=10.0,
                      shard_size=200, triplet_noise_rate=0.3)  # tiny_world's config plus label noise
    generate_world(cfg, tmp_path / "noisy")
    for split in ("train", "val", "test"):
        clean = {t.id: t for t in iter_triplets(tiny_world / "triplets" / split)}
        noisy = {t.id: t for t in iter_triplets(tmp_path / "noisy" / "triplets" / split)}
        assert clean.keys() == noisy.keys()
        swapped = [i for i in clean if noisy[i].positive.id != clean[i].positive.id]
        for i in swapped:
            assert noisy[i].positive.id == clean[i].negatives[0].id and noisy[i].negatives[0].id == clean[i].positive.id
        if split == "train":
            assert 0.15 < len(swapped) / len(clean) < 0.45
        else:
            assert not swapped  # held-out triplets stay clean
    summary = json.loads((tmp_path / "noisy" / "world.json").read_text())
    assert summary["counts"]["noisy_triplets"] > 0
