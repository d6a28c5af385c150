"""Objectives on real batches (Collator) through the real tiny encoder (configs/model/tiny.yaml)."""

import copy
import dataclasses
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrep import config
from mmrep.data.collate import Collator, PairBatch
from mmrep.data.tokenize import ProductTokenizer
from mmrep.data.transforms import ImageTransform
from mmrep.errors import MmrepError
from mmrep.model.config import ModelConfig
from mmrep.model import build_encoder
from mmrep.records import Product, Query, Triplet
from mmrep.train.objectives import Features, LossConfig, PosttrainObjective, build_objective, concat_features
from two_ranks import close_rank, init_rank, run_two_ranks  # tests/train/two_ranks.py

TINY = Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml"
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 160, 40), "black": (20, 20, 20)}


def png(rgb, size=32):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, "PNG")
    return buf.getvalue()


def product(i: int) -> Product:
    colour = list(COLOURS)[i % 4]
    cat = ["Apparel", "Shirts"] if i % 2 else ["Footwear", "Shoes"]
    return Product(id=f"p{i}", title=f"{colour} {cat[-1].lower()} model {i}", category=cat,
                   attributes={"colour": colour}, images=[png(COLOURS[colour])], image_exts=["png"])


def triplets(n: int, start: int = 0) -> list[Triplet]:
    out = []
    for j in range(start, start + n):
        pos = product(j)
        # queries of every modality mix: text only, image only, both
        text = "" if j % 3 == 1 else f"{pos.attributes['colour']} {pos.category[-1]}"
        images = [] if j % 3 == 0 else [pos.images[0]]
        negs = [product(j + 1 + m) for m in range(1 + j % 2)]  # 1 or 2 negatives (padded K)
        out.append(Triplet(f"t{j}", Query(f"q{j}", text=text, images=images, image_exts=["png"] * len(images),
                                           category=pos.category), pos, negs))
    return out


@pytest.fixture(scope="module")
def model_cfg():
    return config.load(ModelConfig, TINY) if TINY.is_file() else ModelConfig()


@pytest.fixture(scope="module")
def encoder(model_cfg):
    torch.manual_seed(0)
    return build_encoder(model_cfg, load_pretrained=False).eval()


@pytest.fixture(scope="module")
def collator(model_cfg):
    size = model_cfg.image_size
    return Collator(ProductTokenizer(model_cfg.tokenizer), ImageTransform(size, model_cfg.image_mean, model_cfg.image_std),
                    max_images=2, view_transform=ImageTransform(size, train=True, seed=1))


def objective(encoder, **overrides) -> PosttrainObjective:
    torch.manual_seed(0)
    return build_objective("posttrain", dataclasses.replace(LossConfig(), **overrides), encoder.embed_dim)


def test_posttrain_loss_metrics_and_gradients(encoder, collator):
    batch = collator.triplets(triplets(6))
    obj = objective(encoder)
    enc = copy.deepcopy(encoder).train()
    feats = obj.features(enc, batch)
    assert feats["valid/q_t"].tolist() == [True, False, True] * 2 and feats["valid/q_i"].tolist() == [False, True, True] * 2
    out = obj.loss(feats, step=0, total_steps=10)
    assert torch.isfinite(out.loss)
    for key in ("loss/inter", "loss/inter_t", "loss/inter_i", "loss/inter_mm", "loss/intra", "loss/aux", "loss/sparsity",
                "omega/t", "omega/i", "omega/mm", "filter/phi_mean", "filter/filtered_frac", "temperature", "moe/load_0"):
        assert key in out.metrics, key
    assert out.metrics["omega/from_moe"] == 1.0
    out.loss.backward()
    assert obj.logit_scale.log_scale.grad is not None and obj.logit_scale.log_scale.grad.abs().item() > 0
    assert enc.preference_logits.grad is not None  # through the sparsity term
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert len(grads) > 10 and all(torch.isfinite(g).all() for g in grads)


def test_each_ablation_switch_changes_the_loss(encoder, collator):
    prev, batch = collator.triplets(triplets(6, start=10)), collator.triplets(triplets(6))

    def value(**overrides) -> float:
        obj = objective(encoder, **overrides)
        with torch.no_grad():
            if obj.queue is not None:
                obj.after_step(obj.features(encoder, prev))  # a past batch in the queue
            return obj.loss(obj.features(encoder, batch), step=2, total_steps=10).loss.item()

    base = value()
    for switch in [dict(omega="fixed"), dict(intra=False), dict(filtering=False), dict(queue=False),
                   dict(hard_negatives=False), dict(in_batch=False), dict(triplet_negatives=False),
                   dict(views=["mm"]), dict(matryoshka_dims=[16, 32, 64])]:
        assert value(**switch) != pytest.approx(base, rel=1e-6), switch
    # fixed weights 12:3:2 vs equal weights also differ
    assert value(omega="fixed", fixed_weights={"t": 1, "i": 1, "mm": 1}) != pytest.approx(value(omega="fixed"), rel=1e-6)


def test_without_moe_the_fixed_weights_are_used(model_cfg, collator):
    dense_cfg = dataclasses.replace(model_cfg, moe=dataclasses.replace(model_cfg.moe, mode="dense"))
    torch.manual_seed(0)
    dense = build_encoder(dense_cfg, load_pretrained=False).eval()
    obj = objective(dense)
    with torch.no_grad():
        out = obj.loss(obj.features(dense, collator.triplets(triplets(4))))
    assert out.metrics["omega/from_moe"] == 0.0
    assert out.metrics["omega/i"] == pytest.approx(12 / 17) and out.metrics["loss/aux"] == 0.0


def test_filtering_weights_scale_per_sample_losses(encoder, collator):
    batch = collator.triplets(triplets(6))
    with torch.no_grad():
        on = objective(encoder, filter_threshold=1.0, filter_down_weight=0.5, queue=False, intra=False,
                       filter_reference="absolute", filter_warmup=0.0, margin_start=0.1, margin_end=0.0)
        off = objective(encoder, filtering=False, queue=False, intra=False)
        feats = on.features(encoder, batch)
        lon, loff = on.loss(feats).metrics, off.loss(feats).metrics
    # threshold 1.0 down-weights every triplet that has a negative (all here) by exactly 0.5
    assert lon["filter/filtered_frac"] == 1.0
    for v in ("t", "i", "mm"):
        assert lon[f"loss/inter_{v}"] == pytest.approx(0.5 * loff[f"loss/inter_{v}"], rel=1e-5)


def test_feature_caching_concat_equals_one_big_batch(encoder, collator):
    trips = triplets(8)
    obj = objective(encoder, queue=False, aux_coef=0.0, sparsity_coef=0.0)  # aux losses are per micro-batch
    enc = copy.deepcopy(encoder)
    whole = obj.features(enc, collator.triplets(trips))
    parts = [obj.features(enc, collator.triplets(trips[:4])), obj.features(enc, collator.triplets(trips[4:]))]
    cat = concat_features(parts)
    assert cat["emb/neg"].shape == whole["emb/neg"].shape
    big = obj.loss(whole, 3, 10)
    acc = obj.loss(cat, 3, 10)
    assert acc.loss.item() == pytest.approx(big.loss.item(), abs=1e-5)
    assert acc.metrics["omega/mm"] == pytest.approx(big.metrics["omega/mm"], abs=1e-6)
    # open_clip's accumulation: each micro-batch re-encoded live, the others cached -> summed grads = big-batch grads
    params = [p for p in enc.parameters() if p.requires_grad]
    enc.zero_grad()
    obj.loss(obj.features(enc, collator.triplets(trips)), 3, 10).loss.backward()
    ref = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    enc.zero_grad()
    cached = [p.detach() for p in parts]
    for j, chunk in enumerate((trips[:4], trips[4:])):
        live = list(cached)
        live[j] = obj.features(enc, collator.triplets(chunk))
        obj.loss(concat_features(live), 3, 10).loss.backward()
    got = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    assert max((a - b).abs().max().item() for a, b in zip(ref, got)) < 1e-4


def test_matryoshka_loss_is_the_weighted_mean_over_dims(encoder, collator):
    batch = collator.triplets(triplets(6))
    obj = objective(encoder, matryoshka_dims=[16, 32, 64], matryoshka_weights=[1, 1, 2], queue=False)
    with torch.no_grad():
        out = obj.loss(obj.features(encoder, batch))
    m = out.metrics
    expected = (m["loss/dim_16"] + m["loss/dim_32"] + 2 * m["loss/dim_64"]) / 4
    assert m["loss"] == pytest.approx(expected + 0.01 * (m["loss/aux"] + m["loss/sparsity"]) + m["loss/omega_entropy"],
                                      rel=1e-5)
    assert len({round(m[f"loss/dim_{d}"], 6) for d in (16, 32, 64)}) == 3
    with pytest.raises(MmrepError, match="embed_dim"):
        objective(encoder, matryoshka_dims=[128])


def test_queue_after_step_pushes_items_with_ids(encoder, collator):
    obj = objective(encoder, queue_size=64)
    batch = collator.triplets(triplets(4))
    with torch.no_grad():
        feats = obj.features(encoder, batch)
        obj.after_step(feats)
    n_neg = int(batch.negative_mask.sum())
    assert len(obj.queue) == 4 + n_neg
    assert torch.allclose(obj.queue.embeddings[:4], feats["emb/pos"])
    with torch.no_grad():
        out = obj.loss(obj.features(encoder, batch))
    assert out.metrics["queue/size"] == 4 + n_neg and torch.isfinite(out.loss)


def test_pretrain_intra_and_view_alignment(encoder, collator):
    batch = collator.products([product(i) for i in range(6)] + [Product(id="textonly", title="plain text item")])
    assert batch.view is not None
    with torch.no_grad():
        # aux terms off: they average over encoder calls, and view alignment adds calls
        plain = build_objective("pretrain", LossConfig(aux_coef=0, sparsity_coef=0), encoder.embed_dim)
        both = build_objective("pretrain", LossConfig(aux_coef=0, sparsity_coef=0, view_align_weight=0.5), encoder.embed_dim)
        f1, f2 = plain.features(encoder, batch), both.features(encoder, batch)
        o1, o2 = plain.loss(f1), both.loss(f2)
    assert f1["valid/intra"].tolist() == [True] * 6 + [False]
    assert "loss/view_align" not in o1.metrics and "loss/view_align" in o2.metrics
    assert o2.loss.item() == pytest.approx(o1.loss.item() + 0.5 * o2.metrics["loss/view_align"], rel=1e-5)


def test_item_align_objective(encoder, collator):
    a = collator.products([product(i) for i in range(4)]).inputs
    b = collator.products([product(i + 4) for i in range(4)]).inputs
    batch = PairBatch(a, b, ["p0", "p1", "p2", "p3"], ["p4", "p5", "p6", "p7"])
    obj = build_objective("align", LossConfig(), encoder.embed_dim)
    out = obj.loss(obj.features(copy.deepcopy(encoder), batch))
    assert torch.isfinite(out.loss) and "loss/align" in out.metrics
    out.loss.backward()
    assert obj.logit_scale.log_scale.grad is not None


def test_loss_config_validation_and_overrides(tmp_path):
    cfg = config.load(LossConfig, None, ["--views=[t, mm]", "--queue=false", "--fixed_weights={t: 1, i: 1, mm: 1}"])
    assert cfg.views == ["t", "mm"] and cfg.queue is False
    with pytest.raises(MmrepError, match="loss.views"):
        LossConfig(views=["audio"])
    with pytest.raises(MmrepError, match="filter_down_weight"):
        LossConfig(filter_down_weight=2.0)
    with pytest.raises(MmrepError, match="fixed_weights"):
        LossConfig(fixed_weights={"t": 1.0})
    with pytest.raises(MmrepError, match="training stage"):
        build_objective("finetune", LossConfig(), 8)


def test_concat_pads_negatives_and_keeps_aux_per_part():
    def part(b, k):
        return Features({"emb/neg": torch.ones(b, k, 4), "valid/neg": torch.ones(b, k, dtype=torch.bool),
                         "emb/pos": torch.ones(b, 4)}, torch.tensor([float(k)]), torch.tensor([0.0]))

    cat = concat_features([part(2, 1), part(3, 2)])
    assert cat["emb/neg"].shape == (5, 2, 4) and cat["valid/neg"][:2, 1].tolist() == [False, False]
    assert cat.aux_loss.tolist() == [1.0, 2.0] and cat.batch_size == 5


def synthetic_features(b: int, k: int, d: int, z: int = 4, seed: int = 0) -> Features:
    """Hand-built features of a post-train batch (what `features` returns), for loss-only checks."""
    g = torch.Generator().manual_seed(seed)

    def emb(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, d, generator=g), dim=-1)

    valid_t = torch.arange(b) % 3 != 1
    valid_i = torch.arange(b) % 3 != 0
    neg_valid = torch.rand(b, k, generator=g) > 0.3
    from mmrep.train.losses import id_hash

    tensors = {
        "emb/q_t": emb(b) * valid_t[:, None], "valid/q_t": valid_t,
        "emb/q_i": emb(b) * valid_i[:, None], "valid/q_i": valid_i,
        "emb/q_mm": emb(b) * (valid_t & valid_i)[:, None], "valid/q_mm": valid_t & valid_i,
        "emb/pos": emb(b), "ids/pos": id_hash([f"p{i % (b - 2)}" for i in range(b)]),  # some repeated items
        "category": id_hash([f"c{i % 3}" for i in range(b)]),
        "emb/neg": emb(b, k) * neg_valid[..., None], "valid/neg": neg_valid,
        "ids/neg": id_hash([f"n{i}" for i in range(b * k)]).reshape(b, k),
        "emb/pos_image": emb(b), "emb/pos_text": emb(b), "valid/intra": torch.arange(b) % 4 != 3,
    }
    for v in ("t", "i", "mm"):
        tensors[f"gates/q_{v}"] = torch.softmax(torch.randn(b, z, generator=g), -1)
    pref = torch.softmax(torch.randn(z, 3, generator=g), -1)
    return Features(tensors, torch.tensor([0.3]), torch.tensor([0.7]), pref)


def slice_features(f: Features, rows: slice) -> Features:
    return Features({k: v[rows] for k, v in f.tensors.items()}, f.aux_loss, f.sparsity_loss, f.preference)


def _posttrain_rank(rank, store, prev, cur, out):
    import torch.distributed as dist

    init_rank(rank, store)
    try:
        half = cur.batch_size // 2
        rows = slice(rank * half, (rank + 1) * half)
        obj = PosttrainObjective(LossConfig(hard_k=2, queue_size=64), 16)
        mine_prev, mine = slice_features(prev, rows), slice_features(cur, rows)
        if rank == 1:  # this rank's triplets have no negatives at all: K = 0 here, K = 3 on rank 0
            for f in (mine_prev, mine):
                for key in ("emb/neg", "valid/neg", "ids/neg"):
                    f.tensors[key] = f.tensors[key][:, :0]
        obj.after_step(mine_prev)
        share = obj.loss(mine, 4, 10)
        total = share.loss.detach().clone()
        dist.all_reduce(total)
        out.put((rank, float(total) / 2, len(obj.queue), share.metrics["omega/mm"]))
    finally:
        close_rank()


@pytest.mark.slow
def test_two_rank_posttrain_loss_equals_single_process_loss(tmp_path):
    prev, cur = synthetic_features(8, 3, 16, seed=1), synthetic_features(8, 3, 16, seed=2)
    for f in (prev, cur):  # rows 4..7 (rank 1's) carry no negatives
        f.tensors["valid/neg"][4:] = False
        f.tensors["emb/neg"][4:] = 0
    single = PosttrainObjective(LossConfig(hard_k=2, queue_size=64), 16)
    single.after_step(prev)
    ref = single.loss(cur, 4, 10)
    results = run_two_ranks(_posttrain_rank, (prev, cur), tmp_path / "store")
    assert results[0][1] == pytest.approx(ref.loss.item(), abs=1e-5)
    assert results[0][2] == len(single.queue)  # every rank queued the global batch
    assert results[0][3] == pytest.approx(ref.metrics["omega/mm"], abs=1e-6)  # ω over the global batch


def test_omega_is_the_normalised_moe_support_over_valid_views_and_trains_w_star(encoder, collator):
    from mmrep.model.moe import objective_weights

    batch = collator.triplets(triplets(6))
    for omega_grad in (False, True):
        enc = copy.deepcopy(encoder)
        obj = objective(enc, omega_grad=omega_grad, aux_coef=0.0, sparsity_coef=0.0)
        feats = obj.features(enc, batch)
        out = obj.loss(feats)
        gates = torch.cat([feats[f"gates/q_{v}"][feats[f"valid/q_{v}"]] for v in ("t", "i", "mm")])
        ids = torch.cat([torch.full((int(feats[f"valid/q_{v}"].sum()),), i) for i, v in enumerate(("t", "i", "mm"))])
        ref = objective_weights(gates.detach(), feats.preference.detach(), ids)
        ref = ref / ref.sum()  # normalised over the views: the gradient can only move weight between views
        assert [out.metrics[f"omega/{v}"] for v in ("t", "i", "mm")] == pytest.approx(ref.tolist(), abs=1e-6)
        out.loss.backward()
        grad = enc.preference_logits.grad
        moved = grad is not None and grad.abs().sum().item() > 0
        assert moved == omega_grad  # W* learns through ω (the default) unless ω is a read-out (omega_grad false)
