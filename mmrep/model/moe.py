"""Mixture-of-Experts feed-forward layer serving every backbone (fusion, mllm), plus MOON2.0's ω.

Token-level soft gating G = softmax(W_g h) over the gated experts, top-k with renormalised weights
G̃, output Σ_z G̃_z f_z(h). No capacity and no token dropping: a token's output depends on that token
alone, so an item's embedding never depends on its batch-mates.

Modes: `modality` (MOON2.0: every token gated), `guided` (MOON: CATEGORY tokens -> expert 0,
ATTRIBUTE tokens -> expert 1, all other tokens gated over experts 2..Z-1), `dense` (one FFN).
Backends: `native` (sort tokens by expert, run each expert on its slice, index_add back) and
`deepspeed` (`deepspeed.moe.layer.MoE`, expert parallelism; modality mode, no dropping).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmrep.batch import TokenType
from mmrep.distributed import all_gather_objects, init_single_process_deepspeed
from mmrep.model.config import MoEConfig

CATEGORY_EXPERT, ATTRIBUTE_EXPERT = 0, 1


class ExpertMLP(nn.Module):
    """The transformer feed-forward block: Linear -> GELU -> Linear. (T, D) -> (T, D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@dataclass
class Routing:
    """What one MoE layer reports for its T tokens.

    gates: (T, Z) renormalised top-k weights G̃ (zero off the chosen experts); None for dense.
    aux_loss: Switch load-balancing loss over the gated tokens (0-dim); None for dense.
    """

    gates: torch.Tensor | None
    aux_loss: torch.Tensor | None


def load_balancing_loss(probs: torch.Tensor, chosen: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch loss Z · Σ_z f_z · P_z; probs (T, Z) router softmax, chosen (T, k) expert ids. Uniform -> 1."""
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    counts = torch.bincount(chosen.reshape(-1), minlength=num_experts).to(probs.dtype)
    f = counts / chosen.numel()
    p = probs.mean(dim=0)
    return num_experts * (f * p).sum()


def topk_weights(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """probs (T, R) -> (weights (T, k), experts (T, k)), weights renormalised to sum 1.

    With k = 1 the renormalised weight is the constant 1, which would cut the router off from the
    task loss; `p / p.detach()` keeps the value 1 and passes the gradient of p (straight-through).
    """
    top_p, top_i = probs.topk(k, dim=-1)
    if k == 1:
        return top_p / top_p.detach(), top_i
    return top_p / top_p.sum(dim=-1, keepdim=True), top_i


class MoELayer(nn.Module):
    """Token-level MoE FFN: x (T, D) real tokens, types (T,) `TokenType` -> (y (T, D), Routing)."""

    def __init__(self, dim: int, experts: list[nn.Module], cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.mode = cfg.mode
        self.experts = nn.ModuleList(experts)
        self.num_experts = len(experts)
        self.first_gated = 2 if cfg.mode == "guided" else 0
        self.top_k = cfg.top_k
        gated = self.num_experts - self.first_gated
        self.gate = nn.Linear(dim, gated, bias=False) if cfg.mode != "dense" else None

    def forward(self, x: torch.Tensor, types: torch.Tensor | None = None) -> tuple[torch.Tensor, Routing]:
        if self.gate is None:
            return self.experts[0](x), Routing(None, None)
        t = x.shape[0]
        z = self.num_experts
        if self.mode == "guided":
            if types is None:
                raise ValueError("guided MoE needs the token types")
            fixed = torch.full((t,), -1, dtype=torch.long, device=x.device)
            fixed[types == int(TokenType.CATEGORY)] = CATEGORY_EXPERT
            fixed[types == int(TokenType.ATTRIBUTE)] = ATTRIBUTE_EXPERT
            routed = (fixed < 0).nonzero(as_tuple=True)[0]
            pinned = (fixed >= 0).nonzero(as_tuple=True)[0]
        else:
            routed = None
        xr = x if routed is None else x[routed]
        probs = F.softmax(self.gate(xr).float(), dim=-1)  # (Tr, R); routing in fp32 under autocast
        w, idx = topk_weights(probs, self.top_k)
        aux = load_balancing_loss(probs, idx, probs.shape[1])
        idx = idx + self.first_gated
        tok = torch.arange(t, device=x.device) if routed is None else routed
        tok = tok[:, None].expand_as(idx)
        if routed is not None:  # pinned tokens: weight exactly 1 on their fixed expert
            tok = torch.cat([tok.reshape(-1), pinned])
            idx = torch.cat([idx.reshape(-1), fixed[pinned]])
            w = torch.cat([w.reshape(-1), w.new_ones(pinned.shape[0])])
        tok, idx, w = tok.reshape(-1), idx.reshape(-1), w.reshape(-1)
        gates = w.new_zeros(t, z).index_put((tok, idx), w, accumulate=True)
        return self._dispatch(x, tok, idx, w), Routing(gates, aux)

    def _dispatch(self, x: torch.Tensor, tok: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Sort (token, expert, weight) assignments by expert; each expert runs once on its slice."""
        order = torch.argsort(idx, stable=True)
        tok, w = tok[order], w[order]
        counts = torch.bincount(idx, minlength=self.num_experts).tolist()
        y = torch.zeros_like(x)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            rows = tok[start:start + n]
            y.index_add_(0, rows, (self.experts[e](x[rows]) * w[start:start + n, None]).to(y.dtype))
            start += n
        return y


class DeepSpeedMoELayer(nn.Module):
    """`deepspeed.moe.layer.MoE` behind the MoELayer interface (modality mode, no token dropping).

    drop_tokens=False sizes each expert's capacity to its real load, min_capacity=0 avoids the
    tiny-batch assert, use_rts / 2nd-expert sampling are off so routing is deterministic.
    Note: DeepSpeed's top-1 scales an expert's output by its raw gate probability (Switch style).
    """

    def __init__(self, dim: int, expert: nn.Module, cfg: MoEConfig):
        super().__init__()
        from deepspeed.moe.layer import MoE

        init_single_process_deepspeed()
        self.cfg = cfg
        self.num_experts = cfg.num_experts
        self.top_k = cfg.top_k
        self.moe = MoE(hidden_size=dim, expert=expert, num_experts=cfg.num_experts, ep_size=cfg.ep_size, k=cfg.top_k,
                       capacity_factor=1.0, eval_capacity_factor=1.0, min_capacity=0, drop_tokens=False,
                       use_rts=False, top2_2nd_expert_sampling=False)

    def _ensure_groups(self) -> None:
        # deepspeed.initialize sets the expert-parallel group itself (and asserts it is unset);
        # without an engine (inference, tests) we set it on first use.
        if self.moe.deepspeed_moe.gate.ep_group is None:
            self.moe.set_deepspeed_parallelism()

    def forward(self, x: torch.Tensor, types: torch.Tensor | None = None) -> tuple[torch.Tensor, Routing]:
        if x.shape[0] == 0:
            return x, Routing(x.new_zeros(0, self.num_experts), x.new_zeros(()))
        self._ensure_groups()
        y, aux, _ = self.moe(x[None])
        # Recompute the (cheap) gate to report G̃ the same way as the native layer.
        probs = F.softmax(self.moe.deepspeed_moe.gate.wg(x.float()).float(), dim=-1)
        w, idx = topk_weights(probs, self.top_k)
        gates = w.new_zeros(x.shape[0], self.num_experts).scatter(1, idx, w)
        return y[0], Routing(gates, aux.reshape(()))


def gather_experts(encoder: nn.Module) -> tuple[dict[str, torch.Tensor], bool]:
    """`encoder.state_dict()` with every expert of every expert-parallel DeepSpeed MoE layer (each rank holds
    num_experts / ep_size of them, numbered locally): collective over each layer's expert-parallel group, so
    every rank calls it; local expert i of EP rank r becomes global expert r * local + i, the numbering a
    one-process (ep_size 1) model uses. -> (state, whether anything was gathered)."""
    state = encoder.state_dict()
    layers = [(n, m) for n, m in encoder.named_modules() if isinstance(m, DeepSpeedMoELayer) and m.cfg.ep_size > 1]
    if not layers:
        return state, False
    from deepspeed.utils import groups

    for name, layer in layers:
        experts = layer.moe.deepspeed_moe.experts
        group = groups._get_expert_parallel_group(layer.moe.expert_group_name)
        local = [{k: v.detach().float().cpu() for k, v in e.state_dict().items()} for e in experts.deepspeed_experts]
        every: list[list[dict[str, torch.Tensor]]] = all_gather_objects(local, group=group)
        prefix = f"{name}.moe.deepspeed_moe.experts.deepspeed_experts."
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        for ep_rank, part in enumerate(every):
            for i, expert in enumerate(part):
                state.update({f"{prefix}{ep_rank * len(part) + i}.{k}": v for k, v in expert.items()})
    return state, True


def build_moe(dim: int, hidden: int, cfg: MoEConfig) -> nn.Module:
    """An FFN block for a fusion layer: MoELayer (dense mode = one expert) or the DeepSpeed backend."""
    if cfg.backend == "deepspeed" and cfg.enabled:
        return DeepSpeedMoELayer(dim, ExpertMLP(dim, hidden), cfg)
    n = cfg.num_experts if cfg.enabled else 1
    return MoELayer(dim, [ExpertMLP(dim, hidden) for _ in range(n)], cfg)


def upcycle(dense: nn.Module, dim: int, cfg: MoEConfig) -> nn.Module:
    """Replace a dense FFN by an MoE whose experts all copy it: output equals the dense FFN at init."""
    if cfg.backend == "deepspeed" and cfg.enabled:
        return DeepSpeedMoELayer(dim, copy.deepcopy(dense), cfg)
    n = cfg.num_experts if cfg.enabled else 1
    return MoELayer(dim, [copy.deepcopy(dense) for _ in range(n)], cfg)


def expert_preference(preference_logits: torch.Tensor) -> torch.Tensor:
    """W* (Z, M) -> p (Z, M), p_{z,m} = softmax_m(W*_z)."""
    return F.softmax(preference_logits, dim=-1)


def sparsity_loss(preference: torch.Tensor) -> torch.Tensor:
    """L_sparsity = (1/Z) Σ_z −Σ_m p_{z,m} log p_{z,m}; preference p (Z, M). Low = specialised experts."""
    return -(preference * preference.clamp_min(1e-12).log()).sum(dim=-1).mean()


def objective_weights(gates: torch.Tensor, preference: torch.Tensor, objective: torch.Tensor) -> torch.Tensor:
    """ω_m = mean_{b∈B_m} Σ_z p_{z,m} G̃_{z,b}; gates (B, Z), preference (Z, M), objective (B,) -> (M,).

    Objectives without samples in the batch get ω = 0.
    """
    m = preference.shape[1]
    support = (gates @ preference).gather(1, objective[:, None]).squeeze(1)  # (B,)
    total = support.new_zeros(m).index_add(0, objective, support)
    count = torch.bincount(objective, minlength=m).to(support.dtype)
    return total / count.clamp_min(1)


def sample_mean(values: torch.Tensor, sample: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean of per-token rows per sample: values (T, Z), sample (T,) in [0, B) -> (B, Z)."""
    total = values.new_zeros(batch, values.shape[1]).index_add(0, sample, values)
    count = torch.bincount(sample, minlength=batch).to(values.dtype).clamp_min(1)
    return total / count[:, None]


class RoutedFFN(nn.Module):
    """Drop-in replacement for a (B, S, D) FFN inside a foreign model (HF decoder layer's `mlp`).

    The owning encoder sets `context = (types (B, S), mask (B, S))` before each forward; the layer
    routes real tokens only and appends its `Routing` plus sample ids to `records`.
    """

    def __init__(self, moe: nn.Module):
        super().__init__()
        self.moe = moe
        self.context: tuple[torch.Tensor, torch.Tensor] | None = None
        self.records: list[tuple[Routing, torch.Tensor]] = []

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.context is None:
            raise RuntimeError("RoutedFFN.context must be set by the encoder before forward")
        types, mask = self.context
        rows = mask.nonzero(as_tuple=True)
        y, routing = self.moe(h[rows], types[rows])
        self.records.append((routing, rows[0]))
        out = torch.zeros_like(h)
        out[rows] = y.to(h.dtype)
        return out

