"""The MoE layer: routing, dispatch correctness, losses, ω, gradients, batch independence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmrep.batch import TokenType
from mmrep.errors import MmrepError
from mmrep.model.config import MoEConfig
from mmrep.model.moe import (ExpertMLP, MoELayer, build_moe, load_balancing_loss, objective_weights, sample_mean,
                             sparsity_loss, topk_weights, upcycle)


def layer(mode: str = "modality", z: int = 4, k: int = 1, dim: int = 16, seed: int = 0) -> MoELayer:
    torch.manual_seed(seed)
    return build_moe(dim, 32, MoEConfig(mode=mode, num_experts=z, top_k=k))


def reference(moe: MoELayer, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Dense loop over all tokens x all experts, weighted by the reported gates."""
    return sum(gates[:, e:e + 1] * moe.experts[e](x) for e in range(moe.num_experts))


def mixed_types(t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    choices = torch.tensor([int(TokenType.TITLE), int(TokenType.CATEGORY), int(TokenType.ATTRIBUTE), int(TokenType.IMAGE)])
    return choices[torch.randint(0, 4, (t,), generator=g)]


@pytest.mark.parametrize("mode,k", [("modality", 1), ("modality", 2), ("guided", 1), ("guided", 2)])
def test_dispatch_matches_dense_reference(mode, k):
    moe = layer(mode, z=5, k=k)
    x, types = torch.randn(50, 16), mixed_types(50)
    y, routing = moe(x, types)
    assert routing.gates.shape == (50, 5)
    torch.testing.assert_close(routing.gates.sum(1), torch.ones(50))  # renormalised top-k
    assert ((routing.gates > 0).sum(1) <= k).all()
    torch.testing.assert_close(y, reference(moe, x, routing.gates.detach()), atol=1e-5, rtol=1e-5)


def test_topk_weights_renormalise_and_keep_router_gradient():
    logits = torch.randn(6, 4, requires_grad=True)
    w1, _ = topk_weights(F.softmax(logits, -1), 1)
    torch.testing.assert_close(w1, torch.ones(6, 1))
    (w1 * torch.arange(6.0)[:, None]).sum().backward()
    assert logits.grad.abs().sum() > 0  # straight-through: value 1, gradient of p
    w2, i2 = topk_weights(F.softmax(torch.randn(6, 4), -1), 2)
    torch.testing.assert_close(w2.sum(1), torch.ones(6))
    assert (i2[:, 0] != i2[:, 1]).all()


def test_guided_routing_sends_category_and_attribute_tokens_to_their_experts():
    moe = layer("guided", z=5, k=2)
    types = mixed_types(200, seed=3)
    _, routing = moe(torch.randn(200, 16), types)
    g = routing.gates
    cat, attr = types == int(TokenType.CATEGORY), types == int(TokenType.ATTRIBUTE)
    other = ~(cat | attr)
    assert cat.any() and attr.any() and other.any()
    torch.testing.assert_close(g[cat], F.one_hot(torch.zeros(int(cat.sum()), dtype=torch.long), 5).float())
    torch.testing.assert_close(g[attr], F.one_hot(torch.ones(int(attr.sum()), dtype=torch.long), 5).float())
    assert (g[other][:, :2] == 0).all()  # general tokens never reach the category / attribute experts
    assert (g[other][:, 2:] > 0).sum(0).min() > 0  # and are spread over the general experts by the gate


def test_guided_needs_types():
    with pytest.raises(ValueError):
        layer("guided", z=3)(torch.randn(4, 16))


def test_gradients_reach_gate_and_every_expert():
    for mode, k in (("modality", 1), ("modality", 2), ("guided", 1)):
        moe = layer(mode, z=4, k=k)
        x, types = torch.randn(256, 16), mixed_types(256, seed=1)
        y, routing = moe(x, types)
        (y.square().mean() + 0.1 * routing.aux_loss).backward()
        assert moe.gate.weight.grad.abs().sum() > 0, mode
        for e, expert in enumerate(moe.experts):
            assert expert.fc1.weight.grad is not None and expert.fc1.weight.grad.abs().sum() > 0, (mode, k, e)


def test_load_balancing_loss_is_minimal_for_uniform_routing():
    z, t = 4, 64
    uniform = torch.full((t, z), 1.0 / z)
    balanced = torch.arange(t)[:, None] % z
    assert load_balancing_loss(uniform, balanced, z).item() == pytest.approx(1.0)
    # the same tokens all sent to one expert that also gets most probability: Z x worse
    skewed = F.softmax(torch.tensor([5.0, 0, 0, 0]), 0).expand(t, z)
    collapsed = torch.zeros(t, 1, dtype=torch.long)
    assert load_balancing_loss(skewed, collapsed, z).item() > 3.5
    # routing that follows its probabilities (f_z = P_z) costs Z·Σ P_z² >= 1, equality only when uniform
    for seed in range(10):
        p = F.softmax(torch.randn(z, generator=torch.Generator().manual_seed(seed)), 0)
        counts = (p * 1000).round().long()
        chosen = torch.repeat_interleave(torch.arange(z), counts)[:, None]
        probs = (counts.float() / counts.sum()).expand(len(chosen), z)
        assert load_balancing_loss(probs, chosen, z).item() > 1.0 + 1e-4
    # the layer reports it: a zero gate has uniform probabilities, so any assignment costs exactly 1
    moe = layer("modality", z=4, k=1)
    torch.nn.init.zeros_(moe.gate.weight)
    _, routing = moe(torch.randn(t, 16))
    assert routing.aux_loss.item() == pytest.approx(1.0, abs=1e-5)


def test_sparsity_loss_values():
    m = 3
    uniform = torch.full((4, m), 1.0 / m)
    assert sparsity_loss(uniform).item() == pytest.approx(math.log(m), rel=1e-5)
    onehot = F.one_hot(torch.tensor([0, 1, 2, 0]), m).float()
    assert sparsity_loss(onehot).item() == pytest.approx(0.0, abs=1e-6)


def test_objective_weights_match_the_formula():
    g = torch.Generator().manual_seed(0)
    gates = F.softmax(torch.randn(10, 4, generator=g), -1)
    pref = F.softmax(torch.randn(4, 3, generator=g), -1)
    objective = torch.tensor([0, 0, 1, 2, 2, 2, 0, 1, 1, 0])
    omega = objective_weights(gates, pref, objective)
    for m in range(3):
        rows = (objective == m).nonzero(as_tuple=True)[0]
        expected = sum(sum(pref[z, m] * gates[b, z] for z in range(4)) for b in rows) / len(rows)
        assert omega[m].item() == pytest.approx(expected.item(), rel=1e-6)
    # an objective without samples gets 0
    assert objective_weights(gates, pref, torch.zeros(10, dtype=torch.long))[1:].abs().sum() == 0


def test_sample_mean():
    v = torch.tensor([[1.0, 0], [3, 0], [0, 2]])
    out = sample_mean(v, torch.tensor([0, 0, 2]), 3)
    torch.testing.assert_close(out, torch.tensor([[2.0, 0], [0, 0], [0, 2]]))


@pytest.mark.parametrize("mode", ["modality", "guided", "dense"])
def test_token_output_does_not_depend_on_other_tokens(mode):
    moe = layer(mode, z=4, k=2 if mode != "dense" else 1).eval()
    x, types = torch.randn(300, 16), mixed_types(300)
    with torch.no_grad():
        full, _ = moe(x, types)
        for i in (0, 17, 299):
            alone, _ = moe(x[i:i + 1], types[i:i + 1])
            assert (alone - full[i]).abs().max() < 1e-5


def test_upcycled_moe_equals_dense_ffn():
    torch.manual_seed(0)
    dense = ExpertMLP(16, 32)
    x = torch.randn(40, 16)
    for k in (1, 2):
        moe = upcycle(dense, 16, MoEConfig(num_experts=4, top_k=k))
        y, _ = moe(x)
        torch.testing.assert_close(y, dense(x), atol=1e-6, rtol=1e-5)


def test_moe_config_validation_names_the_key():
    with pytest.raises(MmrepError, match="top_k"):
        MoEConfig(num_experts=4, top_k=5)
    with pytest.raises(MmrepError, match="guided"):
        MoEConfig(mode="guided", num_experts=2)
    with pytest.raises(MmrepError, match="deepspeed"):
        MoEConfig(mode="guided", backend="deepspeed")
    with pytest.raises(MmrepError, match="num_experts"):
        MoEConfig(num_experts=0)
