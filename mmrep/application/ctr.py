"""Downstream click model with interchangeable item features: IDs, frozen embeddings, QARM codes.

Samples come from an interaction log: one impression per exposure row, label 1 when a click or
purchase of the same (user, item) follows it before that item's next exposure to the user. The split is by time (train on earlier impressions,
test on later ones), so items first seen in the test period are cold for the ID table — which is
where content features (embeddings, codes) earn their keep. Items absent from training share one
"unseen" ID row.

Feature sets are `+`-joined names: `id` (always on), `emb` (frozen embedding through a trainable
projection), `codes` (a trainable table per RQ level + mean-pooled VQ neighbour ids), `att` (target
attention over the user's clicked history), `prefix` (mean of history items sharing the target's
code prefix). Examples: `id`, `emb`, `codes`, `codes+att+prefix`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmrep.application.metrics import auc, gauc, log_loss
from mmrep.errors import MmrepError

FEATURE_PARTS = ("id", "emb", "codes", "att", "prefix")


@dataclass
class CtrConfig:
    """Click-model settings (config section `ctr`)."""

    dim: int = 32  # user / item tower width
    code_dim: int = 64  # per RQ level table and the VQ table
    hidden: list[int] = field(default_factory=lambda: [128, 64])
    history: int = 20  # most recent clicks before the impression
    prefix_len: int = 1  # code digits a history item must share with the target (`prefix`)
    epochs: int = 4
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.0
    test_fraction: float = 0.2  # the latest impressions form the test set ...
    split_time: float | None = None  # ... unless a split time is given (train: time < split_time)
    seeds: int = 3  # repeated runs (seeds 0..n-1) for error bars
    threads: int = 0  # torch threads; 0 keeps torch's default

    def __post_init__(self) -> None:
        for key in ("dim", "code_dim", "history", "prefix_len", "epochs", "batch_size", "seeds"):
            if getattr(self, key) < 1:
                raise MmrepError(f"config key 'ctr.{key}' must be >= 1, got {getattr(self, key)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise MmrepError(f"config key 'ctr.test_fraction' must be in (0, 1), got {self.test_fraction}")
        if self.lr <= 0:
            raise MmrepError(f"config key 'ctr.lr' must be > 0, got {self.lr}")


@dataclass
class CtrRun:
    """Config file layout for `mmrep ctr --config`."""

    ctr: CtrConfig = field(default_factory=CtrConfig)


def parse_features(spec: str) -> frozenset[str]:
    """`"codes+att"` -> {"id", "codes", "att"}; unknown names raise MmrepError."""
    parts = {p.strip() for p in spec.split("+") if p.strip()}
    bad = sorted(parts - set(FEATURE_PARTS))
    if bad or not parts:
        raise MmrepError(f"unknown CTR feature {bad[0] if bad else spec!r} in {spec!r}; "
                         f"combine {', '.join(FEATURE_PARTS)} with '+'")
    return frozenset(parts | {"id"})


# ---------------------------------------------------------------------------------------------
# item features


@dataclass
class ItemFeatures:
    """Content features per item id: frozen embeddings `(N, D)`, RQ codes `(N, L)`, VQ rows `(N, K)`."""

    ids: list[str]
    emb: np.ndarray | None = None
    codes: np.ndarray | None = None
    vq: np.ndarray | None = None  # row indices into `ids`, -1 = none

    def __post_init__(self) -> None:
        self.index = {i: n for n, i in enumerate(self.ids)}
        for name in ("emb", "codes", "vq"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != len(self.ids):
                raise MmrepError(f"item {name} has {len(arr)} rows for {len(self.ids)} ids")

    @classmethod
    def load(cls, emb: str | Path | None = None, codes: str | Path | None = None) -> "ItemFeatures":
        """From an embeddings folder and/or a `mmrep quantize` output folder (ids are aligned)."""
        from mmrep.application.embeddings import load_item_embeddings
        from mmrep.application.quantize import read_codes

        ids: list[str] | None = None
        e = c = v = None
        if emb:
            ids, e = load_item_embeddings(emb)
        if codes:
            cids, c, v = read_codes(codes)
            if ids is None:
                ids = cids
            elif cids != ids:
                pos = {i: n for n, i in enumerate(cids)}
                missing = [i for i in ids if i not in pos]
                if missing:
                    raise MmrepError(f"{len(missing)} embedded items have no codes in {codes} "
                                     f"(e.g. {missing[0]}); quantize the same embeddings")
                rows = np.array([pos[i] for i in ids])
                back = np.full(len(cids), -1)
                back[rows] = np.arange(len(rows))
                c = c[rows]
                v = None if v is None else np.where(v[rows] >= 0, back[np.maximum(v[rows], 0)], -1)
        return cls(ids=ids or [], emb=e, codes=c, vq=v)


# ---------------------------------------------------------------------------------------------
# samples


@dataclass
class Samples:
    """Impressions as index arrays; `hist_*` hold each impression's clicked history `(S, H)`."""

    user: np.ndarray  # (S,) user row (0 = unseen in training)
    item_id: np.ndarray  # (S,) ID-table row (0 = unseen in training)
    item_feat: np.ndarray  # (S,) row in ItemFeatures (N = no features)
    hist_id: np.ndarray  # (S, H)
    hist_feat: np.ndarray  # (S, H)
    hist_mask: np.ndarray  # (S, H) bool
    label: np.ndarray  # (S,) float32
    time: np.ndarray  # (S,)
    user_name: np.ndarray  # (S,) object, for GAUC and segments
    item_name: np.ndarray  # (S,) object

    def take(self, rows: np.ndarray) -> "Samples":
        return Samples(**{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)})

    def __len__(self) -> int:
        return len(self.label)


@dataclass
class Dataset:
    train: Samples
    test: Samples
    n_users: int
    n_id_items: int
    stats: dict[str, Any]


def read_log(path: str | Path):
    """Interaction log CSV with columns user,item,time,event[,query] as a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MmrepError(f"interaction log not found: {path} (pass --log interactions.csv)")
    try:
        log = pd.read_csv(path, dtype={"user": str, "item": str, "query": str}, keep_default_na=False)
    except Exception as e:
        raise MmrepError(f"cannot read {path} as CSV: {e}") from None
    missing = [c for c in ("user", "item", "time", "event") if c not in log.columns]
    if missing:
        raise MmrepError(f"{path} lacks column(s) {', '.join(missing)}; expected user,item,time,event,query")
    if "query" not in log.columns:
        log["query"] = ""
    return log


def build_dataset(log, items: ItemFeatures, cfg: CtrConfig) -> Dataset:
    """Impressions with labels and histories, split by time into train (earlier) and test (later)."""
    import pandas as pd

    log = log[["user", "item", "time", "event", "query"]].copy()
    log["user"] = log["user"].astype(str)
    log["item"] = log["item"].astype(str)
    log["query"] = log["query"].astype(str)
    bad = sorted(set(log["event"].unique()) - {"exposure", "click", "purchase"})
    if bad:
        raise MmrepError(f"interaction log has unknown event {bad[0]!r}; use exposure, click or purchase")
    exp = log[log["event"] == "exposure"]
    clk = log[log["event"] != "exposure"]
    if exp.empty:
        raise MmrepError("interaction log has no exposure events: the click model needs exposures as negatives")
    exp = exp.sort_values("time", kind="mergesort").reset_index(drop=True)
    exp["row"] = np.arange(len(exp))
    # a click belongs to the latest exposure of the same (user, item) at or before it; clicks with no
    # earlier exposure only feed histories
    matched = pd.merge_asof(clk.sort_values("time", kind="mergesort")[["user", "item", "time"]],
                            exp[["user", "item", "time", "row"]], on="time", by=["user", "item"],
                            direction="backward")
    label = np.zeros(len(exp), dtype=np.float32)
    label[matched["row"].dropna().astype(np.int64).to_numpy()] = 1.0
    imp = exp[["user", "item", "query", "time"]].assign(label=label)
    imp = imp.sort_values(["time", "user", "item", "query"], kind="mergesort").reset_index(drop=True)

    n = len(imp)
    if cfg.split_time is not None:
        cut = cfg.split_time
    else:
        cut = imp["time"].iloc[min(n - 1, int(n * (1 - cfg.test_fraction)))]
    is_train = (imp["time"] < cut).to_numpy()
    if is_train.all() or not is_train.any():
        raise MmrepError("the time split left train or test empty (all impressions share one time?); "
                         "the log needs impressions at several times")

    # histories: each user's clicks (first click per item) strictly before the impression
    clicks = clk.groupby(["user", "item"], sort=False)["time"].min().reset_index()
    clicks = clicks.sort_values(["user", "time", "item"], kind="mergesort")
    by_user = {u: (g["time"].to_numpy(), g["item"].to_numpy()) for u, g in clicks.groupby("user", sort=False)}

    train_items = set(imp.loc[is_train, "item"]) | set(clicks.loc[clicks["time"] < cut, "item"])
    id_index = {i: n + 1 for n, i in enumerate(sorted(train_items))}  # 0 = unseen
    user_index = {u: n + 1 for n, u in enumerate(sorted(set(imp.loc[is_train, "user"])))}
    feat_missing = len(items.ids)

    def feat_rows(names: np.ndarray) -> np.ndarray:
        return np.array([items.index.get(x, feat_missing) for x in names], dtype=np.int64)

    def id_rows(names: np.ndarray) -> np.ndarray:
        return np.array([id_index.get(x, 0) for x in names], dtype=np.int64)

    H = cfg.history
    hist_names = np.full((n, H), "", dtype=object)
    hist_mask = np.zeros((n, H), dtype=bool)
    users = imp["user"].to_numpy()
    times = imp["time"].to_numpy()
    for u, rows in imp.groupby("user", sort=False).indices.items():
        if u not in by_user:
            continue
        ct, ci = by_user[u]
        pos = np.searchsorted(ct, times[rows], side="left")
        for r, p in zip(rows, pos):
            h = ci[max(0, p - H):p]
            if len(h):
                hist_names[r, H - len(h):] = h  # most recent last, left-padded
                hist_mask[r, H - len(h):] = True
    flat = hist_names.reshape(-1)
    hist_id = np.where(hist_mask, id_rows(flat).reshape(n, H), 0)
    hist_feat = np.where(hist_mask, feat_rows(flat).reshape(n, H), feat_missing)
    item_names = imp["item"].to_numpy()
    samples = Samples(
        user=np.array([user_index.get(u, 0) for u in users], dtype=np.int64),
        item_id=id_rows(item_names), item_feat=feat_rows(item_names),
        hist_id=hist_id, hist_feat=hist_feat, hist_mask=hist_mask,
        label=imp["label"].to_numpy(np.float32), time=times, user_name=users, item_name=item_names)
    train, test = samples.take(np.flatnonzero(is_train)), samples.take(np.flatnonzero(~is_train))
    stats = {
        "impressions": n, "train": len(train), "test": len(test),
        "train_ctr": float(train.label.mean()), "test_ctr": float(test.label.mean()),
        "test_cold_item_fraction": float((test.item_id == 0).mean()),
        "items_without_features": int((samples.item_feat == feat_missing).sum()),
        "split_time": float(cut),
    }
    return Dataset(train, test, len(user_index) + 1, len(id_index) + 1, stats)


# ---------------------------------------------------------------------------------------------
# model


def _build_model(ds: Dataset, items: ItemFeatures, feats: frozenset[str], cfg: CtrConfig):
    import torch
    from torch import nn

    class ClickModel(nn.Module):
        """Item tower (ID + content features) + user ID + optional history modules -> MLP -> logit."""

        def __init__(self) -> None:
            super().__init__()
            d = cfg.dim
            self.user = nn.Embedding(ds.n_users, d)
            self.item_id = nn.Embedding(ds.n_id_items, d)
            width = d
            n = self.n_feat = len(items.ids)
            if "emb" in feats:
                if items.emb is None:
                    raise MmrepError("feature 'emb' needs item embeddings (pass --emb)")
                e = np.vstack([items.emb, np.zeros((1, items.emb.shape[1]), np.float32)])
                self.register_buffer("frozen", torch.from_numpy(e.astype(np.float32)))
                self.proj = nn.Linear(e.shape[1], d)
                width += d
            if "codes" in feats or "prefix" in feats:
                if items.codes is None:
                    raise MmrepError("features 'codes'/'prefix' need item codes (pass --codes)")
                k = int(items.codes.max()) + 1
                # the row past the last item is "no features": its codes point at a padding entry
                c = np.vstack([items.codes, np.full((1, items.codes.shape[1]), k)]).astype(np.int64)
                self.register_buffer("codes", torch.from_numpy(c))
            if "codes" in feats:
                self.code_tables = nn.ModuleList(
                    nn.Embedding(k + 1, cfg.code_dim, padding_idx=k) for _ in range(items.codes.shape[1]))
                width += cfg.code_dim * items.codes.shape[1]
                if items.vq is not None:
                    v = np.vstack([items.vq, np.full((1, items.vq.shape[1]), -1)]).astype(np.int64)
                    self.register_buffer("vq", torch.from_numpy(np.where(v < 0, n, v)))
                    self.vq_table = nn.Embedding(n + 1, cfg.code_dim, padding_idx=n)
                    width += cfg.code_dim
            self.tower = nn.Sequential(nn.Linear(width, d), nn.ReLU(), nn.Linear(d, d))
            n_parts = 3 + (2 if "att" in feats else 0) + (2 if "prefix" in feats else 0)
            layers, w = [], n_parts * d + (1 if "prefix" in feats else 0)
            for h in cfg.hidden:
                layers += [nn.Linear(w, h), nn.ReLU()]
                w = h
            self.mlp = nn.Sequential(*layers, nn.Linear(w, 1))

        def item_repr(self, id_rows, feat_rows):
            """(...,) ID rows and feature rows -> (..., d)."""
            parts = [self.item_id(id_rows)]
            if "emb" in feats:
                parts.append(self.proj(self.frozen[feat_rows]))
            if "codes" in feats:
                c = self.codes[feat_rows]
                parts += [t(c[..., level]) for level, t in enumerate(self.code_tables)]
                if hasattr(self, "vq"):
                    nb = self.vq[feat_rows]
                    valid = (nb != self.n_feat).unsqueeze(-1).float()
                    parts.append((self.vq_table(nb) * valid).sum(-2) / valid.sum(-2).clamp_min(1.0))
            return self.tower(torch.cat(parts, -1))

        def forward(self, b):
            u = self.user(b["user"])
            t = self.item_repr(b["item_id"], b["item_feat"])
            parts = [u, t, u * t]
            if "att" in feats or "prefix" in feats:
                h = self.item_repr(b["hist_id"], b["hist_feat"])  # (B, H, d)
                mask = b["hist_mask"]
            if "att" in feats:
                score = (h * t.unsqueeze(1)).sum(-1) / math.sqrt(h.shape[-1])
                w = torch.softmax(score.masked_fill(~mask, -1e9), -1) * mask.float()
                a = (w.unsqueeze(-1) * h).sum(1)  # all-masked rows give zeros
                parts += [a, a * t]
            if "prefix" in feats:
                p = cfg.prefix_len
                same = (self.codes[b["hist_feat"]][..., :p] == self.codes[b["item_feat"]][:, None, :p]).all(-1)
                same = same & mask
                cnt = same.float().sum(1, keepdim=True)
                pm = (same.unsqueeze(-1).float() * h).sum(1) / cnt.clamp_min(1.0)
                parts += [pm, pm * t, torch.log1p(cnt)]
            return self.mlp(torch.cat(parts, -1)).squeeze(-1)

    return ClickModel()


def _tensors(s: Samples, rows: np.ndarray | None = None) -> dict[str, Any]:
    import torch

    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    return {"user": torch.from_numpy(pick(s.user)), "item_id": torch.from_numpy(pick(s.item_id)),
            "item_feat": torch.from_numpy(pick(s.item_feat)), "hist_id": torch.from_numpy(pick(s.hist_id)),
            "hist_feat": torch.from_numpy(pick(s.hist_feat)),
            "hist_mask": torch.from_numpy(pick(s.hist_mask)), "label": torch.from_numpy(pick(s.label))}


def train_eval(ds: Dataset, items: ItemFeatures, features: str, cfg: CtrConfig, seed: int,
               segments: dict[str, str] | None = None) -> dict[str, Any]:
    """Train one click model on `ds.train` and score `ds.test`: AUC, GAUC, log-loss (+ per-segment AUC).

    `segments` maps item id -> segment name (e.g. category) for per-segment test AUC.
    """
    import torch

    feats = parse_features(features)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    model = _build_model(ds, items, feats, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(ds.train), generator=gen).numpy()
        for start in range(0, len(perm), cfg.batch_size):
            b = _tensors(ds.train, perm[start:start + cfg.batch_size])
            loss = loss_fn(model(b), b["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(_tensors(ds.test, np.arange(s, min(s + 4096, len(ds.test)))))
                            for s in range(0, len(ds.test), 4096)]).numpy()
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    y = ds.test.label
    out = {"features": features, "seed": seed, "auc": auc(y, logits), "gauc": gauc(ds.test.user_name, y, logits),
           "logloss": log_loss(y, probs), "train_s": train_s}
    cold = ds.test.item_id == 0
    out["auc_cold_items"] = auc(y[cold], logits[cold]) if cold.any() else float("nan")
    if segments:
        seg = np.array([segments.get(i, "") for i in ds.test.item_name], dtype=object)
        out["segment_auc"] = {s: auc(y[seg == s], logits[seg == s]) for s in sorted(set(seg)) if s}
    return out


def _mean_std(values: list[float]) -> dict[str, float]:
    v = np.array([x for x in values if not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def compare(log, items: ItemFeatures, features: list[str], cfg: CtrConfig,
            segments: dict[str, str] | None = None) -> dict[str, Any]:
    """Each feature set trained with seeds 0..cfg.seeds-1: per-run metrics and mean ± std (sample std)."""
    for f in features:
        parse_features(f)
    ds = build_dataset(log, items, cfg)
    report: dict[str, Any] = {"data": ds.stats, "config": dataclasses.asdict(cfg), "results": {}}
    for f in features:
        runs = [train_eval(ds, items, f, cfg, seed, segments) for seed in range(cfg.seeds)]
        summary = {m: _mean_std([r[m] for r in runs]) for m in ("auc", "gauc", "logloss", "auc_cold_items")}
        if segments:
            names = sorted({s for r in runs for s in r.get("segment_auc", {})})
            summary["segment_auc"] = {s: _mean_std([r["segment_auc"].get(s, float("nan")) for r in runs])["mean"]
                                      for s in names}
        report["results"][f] = {"summary": summary, "runs": runs}
    return report


def markdown(report: dict[str, Any]) -> str:
    """The comparison table as Markdown, with what each column means."""
    d = report["data"]
    lines = ["# CTR model: item feature comparison", "",
             f"{d['train']} train / {d['test']} test impressions (time split at {d['split_time']:g}); "
             f"test CTR {d['test_ctr']:.3f}; {100 * d['test_cold_item_fraction']:.1f}% of test impressions "
             f"are items unseen in training.", "",
             "| features | AUC | GAUC | log-loss | AUC on unseen items | runs |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in report["results"].items():
        s = r["summary"]
        cell = lambda m: f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}" if s[m]["n"] else "—"  # noqa: E731
        lines.append(f"| {name} | {cell('auc')} | {cell('gauc')} | {cell('logloss')} | "
                     f"{cell('auc_cold_items')} | {s['auc']['n']} |")
    lines += ["", "AUC: probability a clicked test impression scores above a non-clicked one (ties half). "
              "GAUC: per-user AUC weighted by the user's test impressions, users with only clicks or only "
              "non-clicks skipped. Log-loss: mean binary cross-entropy. Values are mean ± sample std over "
              "seeds (model init and batch order).", ""]
    return "\n".join(lines)
