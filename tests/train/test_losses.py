"""Pure loss / negatives / filtering math against brute-force references."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmrep.errors import MmrepError
from mmrep.train.filtering import DynamicFilter, filter_stats, hardest_negative, margin_at
from mmrep.train.losses import (ContrastiveLoss, LogitScale, MatryoshkaLoss, global_mean, id_hash, info_nce,
                                symmetric_contrastive, truncate)
from mmrep.train.negatives import MemoryQueue, mine_hard_negatives
from two_ranks import close_rank, init_rank, run_two_ranks  # tests/train/two_ranks.py


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def reference_nce(q, cands, pos, scale):
    """-log exp(s q·pos) / Σ_c exp(s q·c) over an explicit candidate list (pos included once)."""
    num = math.exp(scale * float(q @ pos))
    den = sum(math.exp(scale * float(q @ c)) for c in cands)
    return -math.log(num / den)


def test_info_nce_matches_brute_force_with_pool_mask_and_per_sample_negatives():
    b, c, k, d, scale = 3, 5, 2, 8, 7.0
    q, pool, negs = unit(b, d, seed=1), unit(c, d, seed=2), unit(b, k, d, seed=3)
    pos_index = torch.tensor([0, 3, 4])
    pool_mask = torch.ones(b, c, dtype=torch.bool)
    pool_mask[0, 1] = False  # a false negative (same item id) is dropped
    neg_mask = torch.tensor([[True, False], [True, True], [False, False]])
    got = info_nce(q, pool, pos_index, torch.tensor([scale]), pool_mask, negs, neg_mask)
    for i in range(b):
        cands = [pool[j] for j in range(c) if j == pos_index[i] or pool_mask[i, j]]
        cands += [negs[i, j] for j in range(k) if neg_mask[i, j]]
        assert got[i].item() == pytest.approx(reference_nce(q[i], cands, pool[pos_index[i]], scale), rel=1e-5)


def test_info_nce_without_pool_uses_only_explicit_negatives():
    q, pool, negs = unit(2, 4, seed=4), unit(2, 4, seed=5), unit(2, 3, 4, seed=6)
    got = info_nce(q, pool, torch.arange(2), torch.tensor([2.0]), torch.zeros(2, 2, dtype=torch.bool), negs)
    for i in range(2):
        ref = reference_nce(q[i], [pool[i], *negs[i]], pool[i], 2.0)
        assert got[i].item() == pytest.approx(ref, rel=1e-5)
    # no negatives at all: the positive is the only candidate, loss 0
    alone = info_nce(q, pool, torch.arange(2), torch.tensor([2.0]), torch.zeros(2, 2, dtype=torch.bool))
    assert torch.allclose(alone, torch.zeros(2), atol=1e-6)


@pytest.mark.slow  # imports open_clip (~5 s on the shared CPU)
def test_symmetric_matches_open_clip_clip_loss_and_masks_duplicates():
    from open_clip.loss import ClipLoss

    a, b = unit(6, 16, seed=7), unit(6, 16, seed=8)
    scale = torch.tensor([10.0])
    _, mean = symmetric_contrastive(a, b, scale)
    ref = ClipLoss()(a, b, scale[0])
    assert mean.item() == pytest.approx(ref.item(), rel=1e-5)
    ids = id_hash(["x", "y", "x", "z", "w", "v"])  # rows 0 and 2 are the same item
    per_dup, _ = symmetric_contrastive(a, b, scale, ids=ids)
    per, _ = symmetric_contrastive(a, b, scale)
    assert per_dup[0] < per[0] and per_dup[2] < per[2]  # removing a false negative lowers the loss
    assert per_dup[1].item() == pytest.approx(per[1].item(), rel=1e-6)
    valid = torch.tensor([True, True, True, False, True, True])
    per_v, mean_v = symmetric_contrastive(a, b, scale, valid=valid)
    assert per_v[3] == 0 and mean_v.item() == pytest.approx(per_v.sum().item() / 5, rel=1e-6)


def test_logit_scale_is_shape_1_clamped_and_gets_gradients():
    ls = LogitScale(temperature=0.07, max_scale=20.0)
    assert ls.log_scale.shape == (1,) and ls.log_scale.dim() == 1
    assert ls().item() == pytest.approx(1 / 0.07, rel=1e-5)
    ls.log_scale.data.fill_(10.0)
    assert ls().item() == pytest.approx(20.0, rel=1e-5)
    loss = ContrastiveLoss(temperature=0.1)
    loss(unit(4, 8, seed=1), unit(4, 8, seed=2)).backward()
    assert loss.logit_scale.log_scale.grad is not None and loss.logit_scale.log_scale.grad.abs().item() > 0
    with pytest.raises(MmrepError, match="temperature"):
        LogitScale(temperature=0.0)


def test_matryoshka_averages_over_truncated_renormalised_dims():
    a, b = unit(5, 16, seed=3), unit(5, 16, seed=4)
    base = ContrastiveLoss(temperature=0.1)
    m = MatryoshkaLoss(base, dims=[4, 8, 16], weights=[1, 1, 2])
    expected = (base(truncate(a, 4), truncate(b, 4)) + base(truncate(a, 8), truncate(b, 8)) + 2 * base(a, b)) / 4
    assert m(a, b).item() == pytest.approx(expected.item(), rel=1e-6)
    assert truncate(a, 4).norm(dim=-1).allclose(torch.ones(5))
    assert m(a, b).item() != pytest.approx(base(a, b).item(), rel=1e-4)
    with pytest.raises(MmrepError, match="exceeds"):
        MatryoshkaLoss(base, dims=[32])(a, b)
    with pytest.raises(MmrepError, match="one weight per entry"):
        MatryoshkaLoss(base, dims=[4, 8], weights=[1])


def test_global_mean_single_process_is_masked_mean():
    v = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert global_mean(v, torch.tensor([True, True, True, False])).item() == pytest.approx(2.0)
    assert global_mean(v, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_queue_is_fifo_detached_and_masks_own_positive():
    q = MemoryQueue(size=4, dim=3)
    e = torch.eye(3).repeat(2, 1)[:5].requires_grad_()
    ids = id_hash(["a", "b", "c", "d", "e"])
    q.push(e[:3], ids[:3])
    assert len(q) == 3
    q.push(e[3:5], ids[3:5])  # wraps: "a" (oldest) is overwritten by "e"
    assert len(q) == 4 and not q.embeddings.requires_grad
    assert set(q.ids.tolist()) == set(ids[1:].tolist())
    emb, mask = q.candidates(id_hash(["c", "zz"]))
    slot_c = (q.ids == ids[2]).nonzero().item()
    assert not mask[0, slot_c] and mask[0].sum() == 3 and mask[1].all()
    state = q.state_dict()  # buffers travel with checkpoints
    assert {"embeddings", "ids", "valid", "ptr"} <= set(state)


def test_hard_negatives_share_category_exclude_positive_and_rank_by_similarity():
    items = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.3], [1.0, 0.05]]), dim=-1)
    cat = id_hash(["shoe", "shoe", "shoe", "bag", "shoe"])
    ids = id_hash(["p0", "p1", "p2", "p3", "p0"])  # row 4 duplicates the positive item p0
    query = F.normalize(torch.tensor([[1.0, 0.0]]), dim=-1)
    idx, mask = mine_hard_negatives(query, items, cat[:1], cat, ids[:1], ids, k=3)
    chosen = idx[0][mask[0]].tolist()
    assert chosen == [1, 2]  # most similar same-category first; bag (3) and p0 copies (0, 4) excluded
    assert mask[0].tolist() == [True, True, False]


def test_margin_schedules_and_phi_formula():
    assert margin_at(0, 100, 0.2, 0.0, "linear") == pytest.approx(0.2)
    assert margin_at(50, 100, 0.2, 0.0, "linear") == pytest.approx(0.1)
    assert margin_at(500, 100, 0.2, 0.0, "linear") == pytest.approx(0.0)
    assert margin_at(25, 100, 0.2, 0.0, "cosine") == pytest.approx(0.2 - 0.2 * 0.5 * (1 - math.cos(math.pi / 4)))
    with pytest.raises(MmrepError, match="margin_schedule"):
        margin_at(0, 1, 0, 0, "step")
    f = DynamicFilter(kappa=5.0, margin_start=0.2, margin_end=0.0, threshold=0.6, down_weight=0.25)
    s_qp, s_qn = torch.tensor([0.9, 0.5, 0.3]), torch.tensor([0.1, 0.45, 0.6])
    phi, w = f.weights(s_qp, s_qn, torch.tensor([True, True, False]), step=50, total_steps=100)
    expected = torch.sigmoid(5.0 * (s_qp - s_qn - 0.1))
    assert torch.allclose(phi, expected)
    assert w.tolist() == [1.0, 0.25, 1.0]  # third: no negative to judge by
    assert filter_stats(phi, w, torch.tensor([True, True, True]))["filtered_frac"] == pytest.approx(1 / 3)
    # a larger margin early in training filters more
    phi0, _ = f.weights(s_qp, s_qn, torch.ones(3, dtype=torch.bool), step=0, total_steps=100)
    assert (phi0 < phi).all()
    with pytest.raises(MmrepError, match="filter_threshold"):
        DynamicFilter(threshold=1.5)


def test_hardest_negative_ignores_padding():
    q = unit(2, 4, seed=1)
    negs = torch.stack([q, -q], dim=1)  # (2, 2, 4): an exact copy and its opposite
    s, has = hardest_negative(q, negs, torch.tensor([[False, True], [False, False]]))
    assert s[0].item() == pytest.approx(-1.0, abs=1e-6) and has.tolist() == [True, False]


def _two_rank_worker(rank, store, a, b, ids, out):
    import torch.distributed as dist

    init_rank(rank, store)
    try:
        half = a.shape[0] // 2
        rows = slice(rank * half, (rank + 1) * half)
        la, lb = a[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
        _, loss = symmetric_contrastive(la, lb, torch.tensor([5.0]), ids=ids[rows])
        total = loss.detach().clone()
        dist.all_reduce(total)
        loss.backward()  # all_gather's backward sums every rank's contribution into this rank's grads
        out.put((rank, float(total) / 2, (la.grad / 2).tolist()))  # DDP averages grads over ranks
    finally:
        close_rank()


@pytest.mark.slow
def test_two_rank_gathered_loss_equals_single_process_loss_and_gradients(tmp_path):
    a, b = unit(8, 6, seed=11), unit(8, 6, seed=12)
    ids = id_hash(["i0", "i1", "i2", "i3", "i1", "i5", "i6", "i7"])
    results = run_two_ranks(_two_rank_worker, (a, b, ids), tmp_path / "store")
    ga = a.clone().requires_grad_()
    _, single = symmetric_contrastive(ga, b, torch.tensor([5.0]), ids=ids)
    single.backward()
    assert results[0][1] == pytest.approx(single.item(), abs=1e-5)
    grads = torch.tensor(results[0][2] + results[1][2])
    assert torch.allclose(grads, ga.grad, atol=1e-5)
