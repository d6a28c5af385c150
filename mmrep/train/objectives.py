"""Training objectives: pretrain (intra-product + view alignment), post-train (dual-level alignment),
item alignment (QARM). One interface for the trainer:

    feats = objective.features(encoder, batch)       # embeddings with grad, aux losses, gates
    out = objective.loss(feats, step, total_steps)   # LossOutput(loss, metrics)
    objective.after_step(feats)                      # e.g. push items to the memory queue

`Features` holds only batch-indexed tensors (dim 0 = sample), so a trainer can cache features of
several micro-batches and `concat_features` them: the whole accumulated batch then serves as
contrastive negatives (open_clip's accum-freq recipe), which DeepSpeed's own accumulation does not do.
The objective is an `nn.Module` (learnable temperature, queue buffers): train and checkpoint it with
the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from torch import nn

from mmrep.batch import EncoderInput
from mmrep.data.collate import PairBatch
from mmrep.errors import MmrepError
from mmrep.train.filtering import DynamicFilter, filter_stats, hardest_negative
from mmrep.distributed import all_reduce_max, gather_no_grad, gather_with_grad, global_sum, rank_world
from mmrep.train.losses import (LogitScale, global_mean, id_hash, info_nce, matryoshka_weights, symmetric_contrastive,
                                truncate)
from mmrep.train.negatives import MemoryQueue, mine_hard_negatives

VIEWS = ("t", "i", "mm")  # objective ids 0 / 1 / 2 = the encoder's W* columns (MOON2.0's ω)
VIEW_ID = {v: i for i, v in enumerate(VIEWS)}
MARGIN_DEFAULTS = {"batch": (-1.5, -2.0), "absolute": (0.1, 0.0)}  # filter margins (start, end) per reference


@dataclass
class LossConfig:
    """The `loss` config section: every term and negative source is a switch (ablations)."""

    temperature: float = 0.07  # initial; learnable unless learn_temperature is false
    learn_temperature: bool = True
    max_logit_scale: float = 100.0
    # dual-level alignment (post-train)
    views: list[str] = field(default_factory=lambda: list(VIEWS))  # inter-product query views
    intra: bool = True  # intra-product image<->text term (post-train; pretrain always has it)
    intra_weight: float = 1.0
    omega: Literal["moe", "fixed"] = "moe"  # ω learned by the encoder's MoE (W* x gates), or fixed view weights
    omega_grad: bool = True  # the inter loss trains W* and the router through ω (false: ω is a read-out)
    omega_entropy_coef: float = 0.1  # τ: -τ H(ω) keeps ω off a single view (optimum ω_v ∝ exp(-L_v / τ))
    fixed_weights: dict[str, float] = field(default_factory=lambda: {"t": 3.0, "i": 12.0, "mm": 2.0})  # MOON's 12:3:2 image:text:mm
    # negatives
    gather: bool = True  # negatives from every rank (torch.distributed all_gather with grad)
    in_batch: bool = True  # other samples' items (and their triplet negatives) as negatives
    triplet_negatives: bool = True  # each triplet's own logged low-relevance negatives
    queue: bool = True  # memory queue of past batches' items (temporal negatives)
    queue_size: int = 1024
    # same-category items of the global batch most similar to the query's positive, added per sample
    # (with in_batch on they are also in the pool: counted twice, i.e. up-weighted hard negatives)
    hard_negatives: bool = True
    hard_k: int = 4
    # dynamic sample filtering (judged on each triplet's hardest own negative: needs triplet_negatives)
    filtering: bool = True
    # "batch": the gap s_qp - s_qn in robust standard deviations of the batch's gaps (margins -1.5 -> -2:
    # the far tail, i.e. noise); "absolute": the raw cosine gap (the paper's; margins 0.1 -> 0)
    filter_reference: Literal["batch", "absolute"] = "batch"
    filter_warmup: float = 0.1  # share of training before filtering starts
    filter_kappa: float = 10.0
    margin_start: float | None = None  # None: the reference's default (batch -1.5, absolute 0.1)
    margin_end: float | None = None  # None: batch -2.0, absolute 0.0
    margin_schedule: Literal["linear", "cosine", "constant"] = "linear"
    filter_threshold: float = 0.6
    filter_down_weight: float = 0.1
    # Matryoshka: loss averaged over these leading sub-dims (empty = full dim only; list the full dim
    # too, e.g. [64, 128, 256], or it is not trained directly)
    matryoshka_dims: list[int] = field(default_factory=list)
    matryoshka_weights: list[float] = field(default_factory=list)
    # regularisers and pretraining
    aux_coef: float = 0.01  # ρ, MoE load balancing
    sparsity_coef: float = 0.01  # ς, expert-preference entropy
    view_align_weight: float = 0.0  # pretrain: original vs `batch.view` alignment (0 = off)
    anchor_weight: float = 0.0  # align: w * (1 - cos) to the embeddings the encoder gave when alignment began

    def __post_init__(self) -> None:
        bad = [v for v in self.views if v not in VIEWS]
        if bad or len(set(self.views)) != len(self.views):
            raise MmrepError(f"loss.views must be distinct entries of {list(VIEWS)}, got {self.views}")
        if self.temperature <= 0 or self.max_logit_scale <= 1:
            raise MmrepError("loss.temperature must be > 0 and loss.max_logit_scale > 1")
        missing = [v for v in self.views if v not in self.fixed_weights]
        if missing or any(w < 0 for w in self.fixed_weights.values()) or set(self.fixed_weights) - set(VIEWS):
            raise MmrepError(f"loss.fixed_weights needs a weight >= 0 for each of {list(VIEWS)} (e.g. {{t: 3, i: 12, mm: 2}})")
        for key in ("queue_size", "hard_k"):
            if getattr(self, key) < 1:
                raise MmrepError(f"loss.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("intra_weight", "aux_coef", "sparsity_coef", "view_align_weight", "omega_entropy_coef",
                    "anchor_weight"):
            if getattr(self, key) < 0:
                raise MmrepError(f"loss.{key} must be >= 0, got {getattr(self, key)}")
        if any(d < 1 for d in self.matryoshka_dims):
            raise MmrepError(f"loss.matryoshka_dims must be positive, got {self.matryoshka_dims}")
        if self.matryoshka_dims:
            matryoshka_weights(self.matryoshka_dims, self.matryoshka_weights)
        if self.margin_start is None:
            self.margin_start = MARGIN_DEFAULTS.get(self.filter_reference, (0.0, 0.0))[0]
        if self.margin_end is None:
            self.margin_end = MARGIN_DEFAULTS.get(self.filter_reference, (0.0, 0.0))[1]
        self.dynamic_filter()  # validates the filter keys

    def dynamic_filter(self) -> DynamicFilter:
        return DynamicFilter(self.filter_kappa, float(self.margin_start), float(self.margin_end), self.margin_schedule,
                             self.filter_threshold, self.filter_down_weight, self.filter_reference, self.filter_warmup)


# ----------------------------------------------------------------------------- features
@dataclass
class Features:
    """Everything a loss needs from one (micro-)batch; every tensor is indexed by sample on dim 0.

    tensors: "emb/<name>" (B, D) or (B, K, D) embeddings (zeros where invalid), "valid/<name>" (B,) or
    (B, K) bool, "ids/<name>" int64 item-id hashes, "gates/<view>" (B, Z), "category" (B,) int64;
    aux_loss / sparsity_loss (P,) one entry per encoder call group; preference (Z, M) | None (W*'s p,
    not batch-indexed); stats: MoE statistics averaged over calls."""

    tensors: dict[str, torch.Tensor]
    aux_loss: torch.Tensor
    sparsity_loss: torch.Tensor
    preference: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)
    # share of W*'s gradient through ω that this (concatenated) batch carries: with feature-caching
    # accumulation every micro-batch's pass sees the whole ω, so each passes on its own share only
    preference_share: float = 1.0

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def truncate(self, dim: int | None) -> "Features":
        """Embeddings cut to their first `dim` coordinates and re-normalised (Matryoshka)."""
        tensors = {k: (truncate(v, dim) if k.startswith("emb/") else v) for k, v in self.tensors.items()}
        return Features(tensors, self.aux_loss, self.sparsity_loss, self.preference, self.stats, self.preference_share)

    def detach(self) -> "Features":
        """A no-grad copy (the cached micro-batches of feature-caching accumulation)."""
        return Features({k: v.detach() for k, v in self.tensors.items()}, self.aux_loss.detach(),
                        self.sparsity_loss.detach(), None if self.preference is None else self.preference.detach(),
                        dict(self.stats))


def _pad_to(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zero/False-pad every dim after the first up to `shape` (e.g. K negatives per sample)."""
    if tuple(t.shape[1:]) == tuple(shape):
        return t
    pad: list[int] = []
    for have, want in reversed(list(zip(t.shape[1:], shape))):
        pad += [0, want - have]
    return torch.nn.functional.pad(t, pad)


def concat_features(parts: list[Features]) -> Features:
    """Concatenate micro-batch features along the batch (padding K); aux losses are kept per part."""
    if not parts:
        raise ValueError("concat_features needs at least one part")
    keys = parts[0].tensors.keys()
    tensors = {}
    for key in keys:
        shape = [max(p.tensors[key].shape[d] for p in parts) for d in range(1, parts[0].tensors[key].dim())]
        tensors[key] = torch.cat([_pad_to(p.tensors[key], shape) for p in parts])
    prefs = [p.preference for p in parts if p.preference is not None]
    # the part with grad (the live micro-batch when the others are cached) carries W*'s gradient
    pref = next((p for p in prefs if p.requires_grad), prefs[0] if prefs else None)
    live = [p for p in parts if p.preference is not None and p.preference.requires_grad]
    share = 1.0
    if len(live) == 1 and len(parts) > 1:
        share = live[0].batch_size / sum(p.batch_size for p in parts)
    stats: dict[str, float] = {}
    for key in {k for p in parts for k in p.stats}:
        vals = [p.stats[key] for p in parts if key in p.stats]
        stats[key] = sum(vals) / len(vals)
    return Features(tensors, torch.cat([p.aux_loss for p in parts]), torch.cat([p.sparsity_loss for p in parts]),
                    pref, stats, share)


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, this rank's share (mean over ranks = the global-batch loss)
    metrics: dict[str, float]


class _Encoded:
    """Collects encoder calls of one micro-batch: embeddings scattered back to B rows, aux losses, stats."""

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder
        # a DeepSpeed engine / DDP wrapper keeps the encoder in `.module`
        self.dim = int(getattr(encoder, "embed_dim", None) or encoder.module.embed_dim)
        self.aux: list[torch.Tensor] = []
        self.sparsity: list[torch.Tensor] = []
        self.preference: torch.Tensor | None = None
        self.stats: list[dict[str, float]] = []
        self.touch: torch.Tensor | None = None  # zero-valued terms of dummy calls (uniform_calls)
        self.uniform = bool(getattr(getattr(encoder, "module", encoder), "uniform_calls", False))

    def __call__(self, inputs: EncoderInput, valid: torch.Tensor, objective: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode the valid rows only (the encoder rejects samples without any modality).

        Returns (embedding (B, D), zeros on invalid rows; gates (B, Z) or None)."""
        b = inputs.batch_size
        rows = valid.nonzero(as_tuple=True)[0]
        emb = torch.zeros(b, self.dim, device=valid.device)
        if rows.numel() == 0:
            if self.uniform:  # ZeRO-3 on several ranks: make the call every rank makes, on a dummy text row
                ids = torch.ones(1, 2, dtype=torch.long, device=valid.device)
                dummy = EncoderInput(inputs.pixels[:0, :0].new_zeros(1, 0, *inputs.pixels.shape[2:]),
                                     inputs.image_mask.new_zeros(1, 0), ids, ids.clone(), torch.ones_like(ids, dtype=torch.bool))
                out = self.encoder(dummy, objective=None if objective is None else torch.full((1,), objective,
                                   dtype=torch.long, device=valid.device))
                term = 0 * out.embedding.sum()
                self.touch = term if self.touch is None else self.touch + term
            return emb, None
        sub = inputs if rows.numel() == b else inputs.select(rows)  # no copy of a full batch
        obj = None if objective is None else torch.full((rows.numel(),), objective, dtype=torch.long, device=rows.device)
        out = self.encoder(sub, objective=obj)
        emb = emb.to(out.embedding.dtype).index_put((rows,), out.embedding)
        self.aux.append(torch.as_tensor(out.aux_loss, dtype=emb.dtype).reshape(()))
        self.sparsity.append(torch.as_tensor(out.sparsity_loss, dtype=emb.dtype).reshape(()))
        if out.preference is not None:
            self.preference = out.preference
        self.stats.append(dict(out.stats or {}))
        gates = None
        if out.gates is not None:
            gates = out.gates.new_zeros(b, out.gates.shape[1]).index_put((rows,), out.gates)
        return emb, gates

    def features(self, tensors: dict[str, torch.Tensor]) -> Features:
        device = next(v.device for k, v in tensors.items() if k.startswith("emb/"))
        tensors = {k: v.to(device) for k, v in tensors.items()}
        zero = torch.zeros(1, device=device)
        aux = torch.stack(self.aux).mean().reshape(1) if self.aux else zero
        if self.touch is not None:
            aux = aux + self.touch  # value unchanged; keeps the dummy calls in the graph
        sparsity = torch.stack(self.sparsity).mean().reshape(1) if self.sparsity else zero
        keys = {k for s in self.stats for k in s if not k.startswith("moe/omega")}  # ω is reported by the loss
        stats = {k: sum(s[k] for s in self.stats if k in s) / sum(k in s for s in self.stats) for k in keys}
        return Features(tensors, aux, sparsity, self.preference, stats)


def _mask(values: Sequence[bool] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.bool)


def _negative_ids(negative_ids: Sequence, b: int, k: int) -> torch.Tensor:
    """(B, K) int64 id hashes from per-triplet id lists (or a flat B*K list)."""
    if len(negative_ids) == b * k and (b * k == 0 or isinstance(negative_ids[0], str)):
        flat = [str(x) for x in negative_ids]
    else:
        flat = [str(row[j]) if j < len(row) else "" for row in negative_ids for j in range(k)]
    return id_hash(flat).reshape(b, k)


class Objective(nn.Module):
    """Base: holds the learnable temperature; `loss` averages `core_loss` over Matryoshka dims."""

    def __init__(self, cfg: LossConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = embed_dim
        self.logit_scale = LogitScale(cfg.temperature, cfg.max_logit_scale, cfg.learn_temperature)
        dims = list(cfg.matryoshka_dims) or [embed_dim]
        if max(dims) > embed_dim:
            raise MmrepError(f"loss.matryoshka_dims entry {max(dims)} exceeds the encoder's embed_dim ({embed_dim})")
        self.dims = dims
        self.dim_weights = matryoshka_weights(dims, cfg.matryoshka_weights if cfg.matryoshka_dims else [])

    def features(self, encoder: nn.Module, batch) -> Features:
        raise NotImplementedError

    def prepare(self, feats: Features, step: int, total_steps: int) -> tuple[dict, dict[str, float]]:
        """Work shared by every Matryoshka dim, done once on the full-dim features: (context, metrics)."""
        return {}, {}

    def core_loss(self, feats: Features, ctx: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The contrastive terms on (possibly truncated) `feats`: (scalar, metrics)."""
        raise NotImplementedError

    def loss(self, feats: Features, step: int = 0, total_steps: int = 1) -> LossOutput:
        ctx, metrics = self.prepare(feats, step, total_steps)
        total: torch.Tensor | float = 0.0
        for dim, w in zip(self.dims, self.dim_weights):
            value, m = self.core_loss(feats.truncate(dim), ctx)
            total = total + w * value
            if len(self.dims) > 1:
                metrics[f"loss/dim_{dim}"] = float(value.detach())
            if dim == max(self.dims):  # component metrics at full size
                metrics.update(m)
        aux = feats.aux_loss.mean()
        sparsity = feats.sparsity_loss.mean()
        loss = total + self.cfg.aux_coef * aux + self.cfg.sparsity_coef * sparsity
        if "regulariser" in ctx:  # once per step, not per Matryoshka dim (e.g. the ω entropy term)
            loss = loss + ctx["regulariser"]
        metrics.update({"loss": float(loss.detach()), "loss/aux": float(aux.detach()),
                        "loss/sparsity": float(sparsity.detach()), "temperature": self.logit_scale.temperature})
        metrics.update(feats.stats)
        return LossOutput(loss, metrics)

    def after_step(self, feats: Features) -> None:
        """Hook after the optimiser step (nothing by default)."""

    def _global_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks without autograd (this rank's value when gather is off)."""
        return global_sum(x) if self.cfg.gather else x

    def _gather(self, x: torch.Tensor, grad: bool = True) -> torch.Tensor:
        if not self.cfg.gather:
            return x
        return gather_with_grad(x) if grad else gather_no_grad(x)

    def _pair_loss(self, a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, ids_a: torch.Tensor,
                   ids_b: torch.Tensor | None = None) -> torch.Tensor:
        """Symmetric contrastive loss (this rank's share of the global mean)."""
        if self.cfg.gather:
            return symmetric_contrastive(a, b, self.logit_scale(), valid, ids_a, ids_b)[1]
        per, _ = _local_symmetric(a, b, self.logit_scale(), valid, ids_a, ids_b)
        return per.sum() / valid.sum().clamp(min=1)


def _local_symmetric(a, b, scale, valid, ids_a, ids_b=None):
    """symmetric_contrastive without gathering (gather: false): negatives from this rank only."""
    n = a.shape[0]
    ids_b = ids_a if ids_b is None else ids_b
    index = torch.arange(n, device=a.device)
    a2b = info_nce(a, b, index, scale, valid[None, :] & (ids_b[:, None] != ids_b[None, :]))
    b2a = info_nce(b, a, index, scale, valid[None, :] & (ids_a[:, None] != ids_a[None, :]))
    per = torch.where(valid, 0.5 * (a2b + b2a), a2b.new_zeros(()))
    return per, per.sum()


# ----------------------------------------------------------------------------- pretraining
class PretrainObjective(Objective):
    """Intra-product image<->text contrastive on `ProductBatch` (+ original<->view alignment)."""

    def features(self, encoder: nn.Module, batch) -> Features:
        enc = _Encoded(encoder)
        inputs: EncoderInput = batch.inputs
        both = inputs.has_image & inputs.has_text
        image, _ = enc(inputs.image_only(), both)
        text, _ = enc(inputs.text_only(), both)
        tensors = {"emb/image": image, "emb/text": text, "valid/intra": both, "ids/item": id_hash(batch.ids).to(both.device)}
        if self.cfg.view_align_weight > 0 and getattr(batch, "view", None) is not None:
            present = inputs.has_image | inputs.has_text
            view_present = batch.view.has_image | batch.view.has_text
            tensors["emb/orig"], _ = enc(inputs, present & view_present)
            tensors["emb/view"], _ = enc(batch.view, present & view_present)
            tensors["valid/view"] = present & view_present
        return enc.features(tensors)

    def core_loss(self, f, ctx):
        intra = self._pair_loss(f["emb/image"], f["emb/text"], f["valid/intra"], f["ids/item"])
        total = intra
        metrics = {"loss/intra": float(intra.detach())}
        if "emb/view" in f:
            view = self._pair_loss(f["emb/orig"], f["emb/view"], f["valid/view"], f["ids/item"])
            total = total + self.cfg.view_align_weight * view
            metrics["loss/view_align"] = float(view.detach())
        return total, metrics


# ----------------------------------------------------------------------------- post-training
class PosttrainObjective(Objective):
    """Dual-level alignment on `TripletBatch`: L = Σ_ϑ ω_ϑ L_inter^ϑ + L_intra + ρ L_aux + ς L_sparsity
    (- τ H(ω) when ω is learned).

    ω is learned (`loss.omega_grad: true`): normalised over the views, W* and the router receive the
    inter loss's gradient through it (see `view_weights`). With `omega_grad: false` ω is a read-out of
    the routing that the router and W* learn through the embedding path and the sparsity term."""

    def __init__(self, cfg: LossConfig, embed_dim: int):
        super().__init__(cfg, embed_dim)
        self.queue = MemoryQueue(cfg.queue_size, embed_dim) if cfg.queue else None
        self.filter = cfg.dynamic_filter() if cfg.filtering else None

    def features(self, encoder: nn.Module, batch) -> Features:
        enc = _Encoded(encoder)
        q: EncoderInput = batch.query
        b = q.batch_size
        has_t, has_i = q.has_text, q.has_image
        views = {"t": (q.text_only(), has_t), "i": (q.image_only(), has_i), "mm": (q, has_t & has_i)}
        tensors: dict[str, torch.Tensor] = {}
        for v in self.cfg.views:
            inputs, valid = views[v]
            emb, gates = enc(inputs, valid.to(inputs.image_mask.device), VIEW_ID[v])
            tensors[f"emb/q_{v}"], tensors[f"valid/q_{v}"] = emb, valid
            if gates is not None:
                tensors[f"gates/q_{v}"] = gates
        pos = batch.positive
        tensors["emb/pos"], _ = enc(pos, pos.has_image | pos.has_text)
        if enc.preference is not None:  # the same keys in every micro-batch and on every rank
            for v in self.cfg.views:
                tensors.setdefault(f"gates/q_{v}", q.image_mask.new_zeros(b, enc.preference.shape[0], dtype=torch.float))
        tensors["ids/pos"] = id_hash(batch.positive_ids)
        tensors["category"] = id_hash(batch.category)
        neg_mask = (_mask(batch.negative_mask).reshape(b, -1) if batch.negative_mask is not None
                    else torch.zeros(b, 0, dtype=torch.bool)).to(q.image_mask.device)
        k = neg_mask.shape[1]
        if self.cfg.triplet_negatives and (k or enc.uniform):
            emb, _ = enc(batch.negatives, neg_mask.reshape(-1))
            tensors["emb/neg"] = emb.reshape(b, k, self.embed_dim)
        else:
            tensors["emb/neg"] = torch.zeros(b, 0, self.embed_dim, device=neg_mask.device)
            neg_mask = neg_mask[:, :0]
        tensors["valid/neg"] = neg_mask
        tensors["ids/neg"] = _negative_ids(batch.negative_ids, b, neg_mask.shape[1])
        if self.cfg.intra:
            both = pos.has_image & pos.has_text
            tensors["emb/pos_image"], _ = enc(pos.image_only(), both)
            tensors["emb/pos_text"], _ = enc(pos.text_only(), both)
            tensors["valid/intra"] = both
        return enc.features(tensors)

    def view_weights(self, f: Features) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, bool]:
        """(weight per view, ω regulariser or None, whether ω came from the MoE); weights sum to 1 over
        the views that have samples in the global batch (a view without samples has no loss term).

        moe: the experts' support ω_m = mean_{b∈B_m} Σ_z p_{z,m} G̃_{z,b} (MOON2.0), normalised over the
        views: ω̂_v = ω_v / Σ_v' ω_v'. Un-normalised, a gradient through ω lowers the loss by routing
        every view to experts that prefer other objectives (all ω -> 0) instead of by aligning; normalised,
        it can only move weight between views, towards those whose alignment loss is lower, and the
        entropy term -τ H(ω̂) keeps it off a single view. fixed: `fixed_weights`, normalised the same way."""
        from mmrep.model.moe import objective_weights

        cfg = self.cfg
        gate_keys = [f"gates/q_{v}" for v in cfg.views]
        counts = torch.stack([self._gather(f[f"valid/q_{v}"], grad=False).sum() for v in cfg.views])
        present = [bool(c > 0) for c in counts]
        if cfg.omega == "moe" and f.preference is not None and all(k in f for k in gate_keys):
            pref = f.preference if cfg.omega_grad else f.preference.detach()
            if cfg.omega_grad and f.preference_share != 1.0:  # same value, a share of the gradient
                pref = pref.detach() + f.preference_share * (pref - pref.detach())
            # ω_m = Σ over the view's samples of Σ_z p_{z,m} G̃_{z,b}, / their count, over every rank. The
            # other ranks' sums come in without autograd (no gradient collectives whose order could
            # differ between ranks); `scale` restores the exact gradient after the ranks' averaging.
            local = []
            for v in cfg.views:
                g = f[f"gates/q_{v}"][f[f"valid/q_{v}"]]
                if not cfg.omega_grad:
                    g = g.detach()
                local.append((g @ pref[:, VIEW_ID[v]]).sum())
            local_t = torch.stack(local)
            total = local_t + (self._global_sum(local_t.detach()) - local_t.detach())
            raw = total / counts.to(total.device, total.dtype).clamp_min(1)
            mask = torch.tensor(present, device=raw.device)
            omega = torch.where(mask, raw, torch.zeros_like(raw))
            omega = omega / omega.sum().clamp_min(1e-12)
            scale = rank_world()[1] if cfg.gather else 1
            if scale > 1 and omega.requires_grad:
                omega = omega.detach() + scale * (omega - omega.detach())
            reg = None
            if cfg.omega_grad and cfg.omega_entropy_coef > 0 and sum(present) > 1:
                neg_entropy = torch.where(mask, omega * omega.clamp_min(1e-12).log(), torch.zeros_like(omega)).sum()
                reg = cfg.omega_entropy_coef * neg_entropy
            return {v: omega[n] for n, v in enumerate(cfg.views)}, reg, True
        fixed = [cfg.fixed_weights[v] if p else 0.0 for v, p in zip(cfg.views, present)]
        total = sum(fixed) or 1.0
        return {v: torch.tensor(w / total) for v, w in zip(cfg.views, fixed)}, None, False

    def prepare(self, f: Features, step: int, total_steps: int) -> tuple[dict, dict[str, float]]:
        """Once per step at full dim: the gathered candidate pool (with grad) and its (B, C) mask, the
        hard-negative indices, the filtering weights per view and the view weights ω."""
        cfg = self.cfg
        rank, _ = rank_world()
        pos, pos_ids, neg, neg_mask = f["emb/pos"], f["ids/pos"], f["emb/neg"], f["valid/neg"]
        b, k = neg_mask.shape
        dev = pos.device
        # the shared pool: every rank's positives (+ their triplet negatives) (+ the queue)
        all_pos, all_ids = self._gather(pos), self._gather(pos_ids, grad=False)
        pool, pool_ids = [all_pos], [all_ids]
        pool_valid = [torch.ones(all_pos.shape[0], dtype=torch.bool, device=dev)]
        # every rank takes part in the same collectives, even one whose micro-batch has no negatives
        k_all = (_global_max(k, dev) if cfg.gather else k) if (cfg.in_batch and cfg.triplet_negatives) else 0
        if k_all:
            pool.append(self._gather(_pad_to(neg, (k_all, neg.shape[2]))).flatten(0, 1))
            pool_ids.append(self._gather(_pad_to(f["ids/neg"], (k_all,)), grad=False).flatten())
            pool_valid.append(self._gather(_pad_to(neg_mask, (k_all,)), grad=False).flatten())
        pool_valid_t = torch.cat(pool_valid)
        mask = pool_valid_t[None, :] & (torch.cat(pool_ids)[None, :] != pos_ids[:, None])
        if not cfg.in_batch:
            mask = torch.zeros_like(mask)
        masks = [mask]
        if self.queue is not None and len(self.queue):
            q_emb, q_mask = self.queue.candidates(pos_ids)
            pool.append(q_emb)
            masks.append(q_mask)
        ctx: dict = {"pool": torch.cat(pool), "pool_mask": torch.cat(masks, dim=1),
                     "index": torch.arange(b, device=dev) + (rank * b if cfg.gather else 0)}
        # per-sample negatives: own triplet negatives when they are not in the pool already
        extra, extra_mask = ([neg], [neg_mask]) if (k and not cfg.in_batch) else ([], [])
        if cfg.hard_negatives:
            # mined by similarity to the query's positive item: valid for every query view (a view's
            # own embedding is absent when the query lacks that modality) and hard for all of them
            all_cat = self._gather(f["category"], grad=False)
            idx, hmask = mine_hard_negatives(pos.detach(), all_pos.detach(), f["category"], all_cat, pos_ids, all_ids, cfg.hard_k)
            extra.append(all_pos[idx])
            extra_mask.append(hmask)
        ctx["extra"] = torch.cat(extra, dim=1) if extra else None
        ctx["extra_mask"] = torch.cat(extra_mask, dim=1) if extra else None
        weights, reg, from_moe = self.view_weights(f)
        ctx["omega"] = weights
        metrics: dict[str, float] = {"omega/from_moe": float(from_moe)}
        metrics.update({f"omega/{v}": float(w.detach()) for v, w in weights.items()})
        if reg is not None:
            ctx["regulariser"] = reg
            metrics["loss/omega_entropy"] = float(reg.detach())
        # dynamic filtering: φ from full-dim cosines to the positive and the hardest own negative
        ctx["sample_weight"] = {}
        # every rank joins the filter's gathers when any rank has negatives
        if self.filter is not None and (_global_max(k, dev) if cfg.gather else k):
            phis, ws, valids = [], [], []
            for v in cfg.views:
                q, valid = f[f"emb/q_{v}"], f[f"valid/q_{v}"]
                s_qn, has = hardest_negative(q, neg, neg_mask)
                s_qp = (q * pos).sum(-1)
                # batch statistics over this view's judged triplets of every rank
                judged = self._gather(has & valid, grad=False)
                reference = self._gather((s_qp - s_qn).detach(), grad=False)[judged]
                phi, w = self.filter.weights(s_qp, s_qn, has & valid, step, total_steps, reference)
                ctx["sample_weight"][v] = w
                phis.append(phi), ws.append(w), valids.append(valid & has)
            stats = filter_stats(torch.cat(phis), torch.cat(ws), torch.cat(valids))
            metrics.update({f"filter/{name}": value for name, value in stats.items()})
            metrics["filter/margin"] = self.filter.margin(step, total_steps)
            metrics["filter/active"] = float(self.filter.active(step, total_steps))
        if self.queue is not None:
            metrics["queue/size"] = float(len(self.queue))
        return ctx, metrics

    def core_loss(self, f, ctx):
        cfg = self.cfg
        dim = f["emb/pos"].shape[1]
        scale = self.logit_scale()
        pool = truncate(ctx["pool"], dim)
        extra = None if ctx["extra"] is None else truncate(ctx["extra"], dim)
        metrics: dict[str, float] = {}
        inter = f["emb/pos"].new_zeros(())
        for v in cfg.views:
            q, valid = f[f"emb/q_{v}"], f[f"valid/q_{v}"]
            per = info_nce(q, pool, ctx["index"], scale, ctx["pool_mask"], extra, ctx["extra_mask"])
            if v in ctx["sample_weight"]:
                per = per * ctx["sample_weight"][v]
            term = global_mean(per, valid)
            w = ctx["omega"][v]
            if w.requires_grad:  # ω's gradient sees the global term (each rank holds only its share)
                size = rank_world()[1] if cfg.gather else 1
                mean_term = self._global_sum(term.detach()) / size
                inter = inter + w.detach() * term + (w - w.detach()) * mean_term
            else:
                inter = inter + w * term
            metrics[f"loss/inter_{v}"] = float(term.detach())
        total = inter
        metrics["loss/inter"] = float(inter.detach())
        if cfg.intra:
            intra = self._pair_loss(f["emb/pos_image"], f["emb/pos_text"], f["valid/intra"], f["ids/pos"])
            total = total + cfg.intra_weight * intra
            metrics["loss/intra"] = float(intra.detach())
        return total, metrics

    @torch.no_grad()
    def after_step(self, feats: Features) -> None:
        """Push this step's (gathered) items into the queue: positives and real triplet negatives."""
        if self.queue is None:
            return
        pos, ids = self._gather(feats["emb/pos"], grad=False), self._gather(feats["ids/pos"], grad=False)
        neg, mask = feats["emb/neg"], feats["valid/neg"]
        k_all = 0
        if self.cfg.triplet_negatives:  # all ranks join the collective, whatever their own K
            k_all = _global_max(neg.shape[1], neg.device) if self.cfg.gather else neg.shape[1]
        if k_all:
            neg = self._gather(_pad_to(neg, (k_all, neg.shape[2])), grad=False).flatten(0, 1)
            neg_ids = self._gather(_pad_to(feats["ids/neg"], (k_all,)), grad=False).flatten()
            keep = self._gather(_pad_to(mask, (k_all,)), grad=False).flatten()
            pos, ids = torch.cat([pos, neg[keep]]), torch.cat([ids, neg_ids[keep]])
        self.queue.push(pos, ids)


def _global_max(k: int, device: torch.device) -> int:
    """The largest K over ranks (every rank pads its negatives to it before gathering)."""
    return int(all_reduce_max(torch.tensor([k], device=device)))


# ----------------------------------------------------------------------------- item alignment (QARM)
class ItemAlignObjective(Objective):
    """Batch-contrastive item<->item alignment on `PairBatch` (co-click / co-purchase / user-item pairs).

    With `loss.anchor_weight` > 0 each item's embedding is also held near the one the encoder gave it
    when alignment started (a frozen snapshot taken at the first batch): `w * mean(1 - cos(e, e0))`.
    Without it, behaviour pairs that mostly share a category (the built-in world's co-clicks: 93% same
    subcategory, colour no more often than random pairs) pull a category's items together and erase
    the attributes that queries and the click model depend on."""

    def __init__(self, cfg: LossConfig, embed_dim: int):
        super().__init__(cfg, embed_dim)
        self._anchor: list[nn.Module] = []  # a plain list: the snapshot is neither trained nor checkpointed

    def _anchor_encoder(self, encoder: nn.Module) -> nn.Module:
        if not self._anchor:
            import copy

            if any(hasattr(p, "ds_id") for p in encoder.parameters()):
                raise MmrepError("loss.anchor_weight needs the whole encoder on every rank: use ZeRO stage 0-2 "
                                 "for the align stage, or set loss.anchor_weight=0")
            frozen = copy.deepcopy(encoder).eval()
            for p in frozen.parameters():
                p.requires_grad_(False)
            self._anchor.append(frozen)
        return self._anchor[0]

    def features(self, encoder: nn.Module, batch: PairBatch) -> Features:
        enc = _Encoded(encoder)
        va = batch.a.has_image | batch.a.has_text
        vb = batch.b.has_image | batch.b.has_text
        a, _ = enc(batch.a, va & vb)
        b, _ = enc(batch.b, va & vb)
        tensors = {"emb/a": a, "emb/b": b, "valid/pair": va & vb,
                   "ids/a": id_hash(batch.ids_a), "ids/b": id_hash(batch.ids_b)}
        if self.cfg.anchor_weight > 0:
            frozen = _Encoded(self._anchor_encoder(encoder))
            with torch.no_grad():
                tensors["emb/a0"], _ = frozen(batch.a, va & vb)
                tensors["emb/b0"], _ = frozen(batch.b, va & vb)
        return enc.features(tensors)

    def core_loss(self, f, ctx):
        value = self._pair_loss(f["emb/a"], f["emb/b"], f["valid/pair"], f["ids/a"], f["ids/b"])
        metrics = {"loss/align": float(value.detach())}
        total = value
        if "emb/a0" in f:
            valid = f["valid/pair"]
            drift = torch.where(valid, 2 - (f["emb/a"] * f["emb/a0"]).sum(-1) - (f["emb/b"] * f["emb/b0"]).sum(-1),
                                torch.zeros_like(valid, dtype=f["emb/a"].dtype)) / 2
            anchor = global_mean(drift, valid)
            total = total + self.cfg.anchor_weight * anchor
            metrics["loss/anchor"] = float(anchor.detach())
        return total, metrics


def build_objective(stage: str, cfg: LossConfig, embed_dim: int) -> Objective:
    """The objective for a training stage: "pretrain", "posttrain" or "align"."""
    classes = {"pretrain": PretrainObjective, "posttrain": PosttrainObjective, "align": ItemAlignObjective}
    if stage not in classes:
        raise MmrepError(f"training stage {stage!r} is not one of {sorted(classes)}")
    return classes[stage](cfg, embed_dim)
