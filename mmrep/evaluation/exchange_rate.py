"""Exchange rate: which cheap intermediate metric predicts downstream (CTR AUC) gains.

Given representation versions with intermediate metrics (`version -> {metric: value}`) and the
downstream AUC of a CTR model retrained on each version (`version -> AUC`, optionally per segment),
the exchange rate of a metric between two versions is `ΔAUC / Δmetric`. `exchange_rates` (pure) gives
per metric: the rates between versions adjacent in metric order, the least-squares slope over all
versions, the fraction of segments whose own slope is positive (sign stability), and Pearson /
Spearman correlations with bootstrap and Fisher-z intervals, then ranks the metrics. `main` is the
`mmrep eval exchange-rate` command: it gathers those tables (metrics files, embeddings -> codes -> CTR
per version) and writes report.json, report.md and one scatter plot per metric.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

# config sections only: both modules import numpy alone at the top (torch / faiss load lazily)
from mmrep.application.ctr import CtrConfig
from mmrep.application.quantize import QuantizeConfig
from mmrep.errors import MmrepError

# ---------------------------------------------------------------------------------------------
# pure math


def _pearson_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """scipy's Pearson r along `axis` (a batch of resamples at once); nan where a side is constant."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return stats.pearsonr(x, y, axis=axis).statistic


def _spearman_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman ρ along `axis`: Pearson r of scipy's average ranks (what `spearmanr` computes, batched)."""
    return _pearson_along(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation (scipy.stats.pearsonr); nan when either side is constant or n < 2."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(_pearson_along(x, y)) if len(x) >= 2 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (scipy.stats.spearmanr; ties share their mean rank); nan when undefined."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return float("nan")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(x, y).statistic)


def slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares fit y = a + b x (scipy.stats.linregress) -> (b, a); nan when x is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan")
    fit = stats.linregress(x, y)
    return float(fit.slope), float(fit.intercept)


def fisher_ci(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Fisher-z interval of Pearson r over the n points (scipy's `pearsonr(...).confidence_interval`; needs n > 3)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) <= 3 or math.isnan(pearson(x, y)):
        return float("nan"), float("nan")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ci = stats.pearsonr(x, y).confidence_interval(confidence_level=level)
    return float(ci.low), float(ci.high)


def bootstrap_ci(x: np.ndarray, y: np.ndarray, stat=_pearson_along, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile interval of `stat(x, y, axis)` over paired resamples of the versions (scipy.stats.bootstrap).

    With a handful of versions some resamples repeat one version (the statistic is undefined there):
    scipy would then return nan for the whole interval, so the percentiles are taken over the defined
    resamples, and nan is returned only when too few are defined."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = stats.bootstrap((x, y), stat, paired=True, vectorized=True, n_resamples=n_boot, method="percentile",
                              confidence_level=level, rng=np.random.default_rng(seed))
    vals = res.bootstrap_distribution[np.isfinite(res.bootstrap_distribution)]
    if len(vals) < max(10, n_boot // 20):
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def exchange_rates(metrics: dict[str, dict[str, float]], auc: dict[str, float],
                   segment_auc: dict[str, dict[str, float]] | None = None, n_boot: int = 2000,
                   level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Exchange rates of every intermediate metric against downstream AUC over versions.

    metrics: version -> {metric: value}; auc: version -> downstream AUC; segment_auc: version ->
    {segment: AUC}. A metric missing for some versions is evaluated on the versions that have it.
    """
    versions = [v for v in auc]
    if len(versions) < 2:
        raise MmrepError(f"exchange rate needs at least 2 representation versions, got {len(versions)}; "
                         f"pass more with --versions A,B")
    names = sorted({m for v in versions for m in metrics.get(v, {})})
    out: dict[str, Any] = {"versions": versions, "auc": {v: float(auc[v]) for v in versions},
                           "metrics": {}, "ranking": []}
    for name in names:
        vs = [v for v in versions if name in metrics.get(v, {}) and metrics[v][name] is not None
              and not math.isnan(float(metrics[v][name]))]
        if len(vs) < 2:
            continue
        x = np.array([float(metrics[v][name]) for v in vs])
        y = np.array([float(auc[v]) for v in vs])
        order = np.argsort(x, kind="mergesort")
        steps = []
        for a, b in zip(order[:-1], order[1:]):
            dm, da = float(x[b] - x[a]), float(y[b] - y[a])
            steps.append({"from": vs[a], "to": vs[b], "delta_metric": dm, "delta_auc": da,
                          "rate": da / dm if dm != 0 else None})
        b, a = slope(x, y)
        r, rho = pearson(x, y), spearman(x, y)
        entry: dict[str, Any] = {
            "values": {v: float(m) for v, m in zip(vs, x)}, "n_versions": len(vs), "steps": steps,
            "slope": b, "intercept": a, "pearson": r, "spearman": rho,
            "pearson_fisher_ci": list(fisher_ci(x, y, level)),
            "pearson_bootstrap_ci": list(bootstrap_ci(x, y, _pearson_along, n_boot, level, seed)),
            "spearman_bootstrap_ci": list(bootstrap_ci(x, y, _spearman_along, n_boot, level, seed)),
            "positive_step_fraction": _fraction([s["rate"] > 0 for s in steps if s["rate"] is not None]),
        }
        if segment_auc:
            segs = sorted({s for v in vs for s in segment_auc.get(v, {})})
            per_seg = {}
            for s in segs:
                have = [i for i, v in enumerate(vs) if s in segment_auc.get(v, {})
                        and not math.isnan(segment_auc[v][s])]
                if len(have) >= 2:
                    per_seg[s] = slope(x[have], np.array([segment_auc[vs[i]][s] for i in have]))[0]
            entry["segment_slopes"] = per_seg
            entry["sign_stability"] = _fraction([v > 0 for v in per_seg.values() if not math.isnan(v)])
        out["metrics"][name] = entry
    key = lambda m: (_nan_low(out["metrics"][m]["pearson"]), _nan_low(out["metrics"][m]["spearman"]))  # noqa: E731
    out["ranking"] = sorted(out["metrics"], key=key, reverse=True)
    return out


def _fraction(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def _nan_low(v: float) -> float:
    return -math.inf if v is None or math.isnan(v) else v


# ---------------------------------------------------------------------------------------------
# report


COLUMNS = """\
- **metric**: the intermediate metric (computed on each version without training a ranker).
- **versions**: how many versions have this metric.
- **slope ΔAUC/Δmetric**: the least-squares slope of downstream AUC on the metric over all versions —
  the exchange rate averaged over versions (AUC points gained per unit of metric).
- **step rates**: ΔAUC/Δmetric between versions adjacent when sorted by the metric (low → high); a
  metric that buys AUC has all of them positive.
- **positive steps**: the fraction of those step rates that are positive.
- **sign stability**: the fraction of segments (e.g. categories) where the slope of that segment's AUC
  on the metric is positive; near 1 means the metric's gains transfer everywhere, near 0.5 means the
  sign is a coin flip. Empty when no segments were given.
- **Pearson r [CI]**: linear correlation of metric and AUC over versions, with a bootstrap percentile
  interval over versions (resampled with replacement) and, for more than 3 versions, the Fisher-z one.
- **Spearman ρ [CI]**: rank correlation (does a higher metric mean a higher AUC?) with its bootstrap
  interval. With few versions intervals are wide: add versions before trusting a ranking.
- **rank**: metrics ordered by Pearson r, then Spearman ρ; the top one best predicts downstream gains.
"""


def markdown(report: dict[str, Any]) -> str:
    def f(v, p=4):
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{p}f}"

    def ci(pair):
        return f"[{f(pair[0], 2)}, {f(pair[1], 2)}]"

    lines = ["# Exchange rate report", "", "Downstream AUC per version:", "",
             "| version | AUC |", "| --- | --- |"]
    lines += [f"| {v} | {f(a)} |" for v, a in report["auc"].items()]
    lines += ["", "| rank | metric | versions | slope ΔAUC/Δmetric | step rates | positive steps | "
              "sign stability | Pearson r [bootstrap CI] [Fisher CI] | Spearman ρ [bootstrap CI] |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, name in enumerate(report["ranking"], 1):
        m = report["metrics"][name]
        steps = ", ".join(f(s["rate"], 3) for s in m["steps"])
        lines.append(f"| {i} | {name} | {m['n_versions']} | {f(m['slope'])} | {steps} | "
                     f"{f(m['positive_step_fraction'], 2)} | {f(m.get('sign_stability'), 2)} | "
                     f"{f(m['pearson'], 3)} {ci(m['pearson_bootstrap_ci'])} {ci(m['pearson_fisher_ci'])} | "
                     f"{f(m['spearman'], 3)} {ci(m['spearman_bootstrap_ci'])} |")
    lines += ["", "## Columns", "", COLUMNS]
    return "\n".join(lines)


def scatter_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per metric: versions as points (metric vs AUC), labelled, with the least-squares line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, m in report["metrics"].items():
        vs = list(m["values"])
        x = np.array([m["values"][v] for v in vs])
        y = np.array([report["auc"][v] for v in vs])
        fig, ax = plt.subplots(figsize=(4.5, 3.5), dpi=100)
        ax.scatter(x, y)
        for v, xi, yi in zip(vs, x, y):
            ax.annotate(v, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if not math.isnan(m["slope"]):
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(xs, m["intercept"] + m["slope"] * xs, "--", lw=1)
        ax.set_xlabel(name)
        ax.set_ylabel("downstream AUC")
        ax.set_title(f"{name}: slope {m['slope']:.3g}, r={m['pearson']:.2f}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{_safe(name)}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ---------------------------------------------------------------------------------------------
# gathering the tables (glue)


@dataclass
class ExchangeConfig:
    """Evaluator settings (config section `exchange`)."""

    features: str = "codes"  # CTR feature set retrained per version
    bootstrap: int = 2000
    level: float = 0.95
    seed: int = 0
    recall_k: int = 10  # k of the built-in pair-recall metric (--pairs)

    def __post_init__(self) -> None:
        if not 0 < self.level < 1:
            raise MmrepError(f"config key 'exchange.level' must be in (0, 1), got {self.level}")
        if self.bootstrap < 0 or self.recall_k < 1:
            raise MmrepError("config keys 'exchange.bootstrap' >= 0 and 'exchange.recall_k' >= 1 are required")


@dataclass
class ExchangeRun:
    """Config file layout for `mmrep eval exchange-rate --config`."""

    exchange: ExchangeConfig = field(default_factory=ExchangeConfig)
    quantize: QuantizeConfig = field(default_factory=lambda: QuantizeConfig(eval_queries=0))
    ctr: CtrConfig = field(default_factory=CtrConfig)


def pair_recall(ids: list[str], emb: np.ndarray, pairs: list[tuple[str, str]], k: int = 10) -> float:
    """Fraction of behaviour pairs (a, b) whose b is among a's k nearest other items (inner product)."""
    index = {i: n for n, i in enumerate(ids)}
    rows = [(index[a], index[b]) for a, b in pairs if a in index and b in index and a != b]
    if not rows:
        return float("nan")
    q = np.array([a for a, _ in rows])
    scores = emb[q] @ emb.T
    scores[np.arange(len(q)), q] = -np.inf  # an item is not its own neighbour
    target = scores[np.arange(len(q)), [b for _, b in rows]]
    higher = (scores > target[:, None]).sum(1)
    return float((higher < k).mean())


def read_segments(path: str | Path) -> dict[str, str]:
    """item -> segment from a CSV with columns item,segment."""
    import pandas as pd

    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"item", "segment"} <= set(df.columns):
        raise MmrepError(f"{path} needs columns item,segment (one row per item)")
    return dict(zip(df["item"], df["segment"]))


def _flat_numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat_numbers(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def parse_versions(spec: str) -> list[tuple[str, Path]]:
    """`"A=runs/a,B=runs/b"` or `"runs/a,runs/b"` -> [(name, path)]."""
    out = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, _, path = part.rpartition("=") if "=" in part else (Path(part).name, "", part)
        out.append((name or Path(path).name, Path(path)))
    if len(out) < 2:
        raise MmrepError(f"exchange rate needs at least 2 representation versions, got {len(out)}; "
                         f"pass more with --versions A,B")
    if len({n for n, _ in out}) != len(out):
        raise MmrepError("version names in --versions must be unique; name them as NAME=PATH")
    return out


def gather(versions: list[tuple[str, Path]], log, run: ExchangeRun, segments: dict[str, str] | None,
           pairs: list[tuple[str, str]] | None) -> tuple[dict, dict, dict, dict]:
    """Per version: intermediate metrics, downstream AUC, segment AUC, and the CTR summaries."""
    from mmrep.application import ctr
    from mmrep.application.embeddings import load_item_embeddings
    from mmrep.application.quantize import quantize

    metrics, auc, seg_auc, details = {}, {}, {}, {}
    for name, path in versions:
        if not path.exists():
            raise MmrepError(f"version {name}: {path} does not exist")
        m: dict[str, float] = {}
        if (path / "metrics.json").is_file():
            m |= _flat_numbers(json.loads((path / "metrics.json").read_text()))
        ids, emb = load_item_embeddings(path)
        if pairs:
            m[f"pair_recall@{run.exchange.recall_k}"] = pair_recall(ids, emb, pairs, run.exchange.recall_k)
        q = quantize(emb, run.quantize)
        items = ctr.ItemFeatures(ids=ids, emb=emb, codes=q.codes, vq=q.vq)
        rep = ctr.compare(log, items, [run.exchange.features], run.ctr, segments)
        summary = rep["results"][run.exchange.features]["summary"]
        metrics[name], auc[name] = m, summary["auc"]["mean"]
        if segments:
            seg_auc[name] = summary["segment_auc"]
        details[name] = {"ctr": summary, "collision_rate": q.report["collisions"]["collision_rate"]}
    return metrics, auc, seg_auc, details


@dataclass
class ExchangeJob:
    """`mmrep eval exchange-rate`: versions (NAME, DIR) or a precomputed table, into `out`."""

    out: str
    versions: list[tuple[str, str]] = field(default_factory=list)
    table: str = ""
    log: str = ""
    segments: str = ""
    pairs: str = ""
    run: ExchangeRun = field(default_factory=ExchangeRun)
    overwrite: bool = False

    def argv(self) -> list[str]:
        from mmrep.cli_support import command_line

        return command_line("eval exchange-rate", flags={
            "versions": ",".join(f"{n}={d}" for n, d in self.versions), "table": self.table, "log": self.log,
            "segments": self.segments, "pairs": self.pairs, "out": self.out, "overwrite": self.overwrite},
            sections={"exchange": self.run.exchange, "quantize": self.run.quantize, "ctr": self.run.ctr})


@dataclass
class ExchangeResult:
    out: str
    report: dict[str, Any]  # what report.json holds (before nan -> null)


def exchange_rate_report(job: ExchangeJob) -> ExchangeResult:
    """Gather (or read) the tables, compute the exchange rates, write report.json / report.md / plots."""
    from mmrep import config as cfgmod
    from mmrep.fsutil import atomic_dir, check_replaceable

    run = job.run
    if job.table:
        t = json.loads(Path(job.table).read_text())
        metrics, auc, seg_auc, details = t.get("metrics", {}), t.get("auc", {}), t.get("segment_auc"), {}
    else:
        if not job.versions:
            raise MmrepError("pass --versions NAME=DIR,... (at least 2) or --table FILE.json")
        if not job.log:
            raise MmrepError("--log interactions.csv is needed to retrain the CTR model per version")
        from mmrep.application.ctr import read_log

        segments = read_segments(job.segments) if job.segments else None
        pairs = None
        if job.pairs:
            import pandas as pd

            df = pd.read_csv(job.pairs, dtype=str, keep_default_na=False)
            pairs = list(zip(df["item_a"], df["item_b"]))
        versions = [(name, Path(d)) for name, d in job.versions]
        metrics, auc, seg_auc, details = gather(versions, read_log(job.log), run, segments, pairs)
    report = exchange_rates(metrics, auc, seg_auc or None, run.exchange.bootstrap, run.exchange.level,
                            run.exchange.seed)
    report["details"] = details
    out = check_replaceable(job.out, job.overwrite, ("report.json", "report.md"))
    with atomic_dir(out, "exchange-rate", ("report.json", "report.md")) as tmp:
        (tmp / "report.json").write_text(json.dumps(_clean(report), indent=2) + "\n")
        (tmp / "report.md").write_text(markdown(report))
        scatter_plots(report, tmp / "plots")
        cfgmod.save_resolved(run, tmp)
    return ExchangeResult(str(out), _clean(report))


def parse(argv: list[str]) -> ExchangeJob:
    from mmrep.cli_support import CommandParser

    p = CommandParser("mmrep eval exchange-rate", __doc__.splitlines()[0],
                      sections={"exchange": ExchangeConfig, "quantize": QuantizeConfig, "ctr": CtrConfig})
    p.add_argument("--versions", help="comma list of NAME=DIR (embeddings + optional metrics.json)")
    p.add_argument("--table", help="JSON {metrics: {v: {m: x}}, auc: {v: x}, segment_auc: {v: {s: x}}} "
                                   "instead of computing them")
    p.add_argument("--log", help="interactions.csv for the per-version CTR model")
    p.add_argument("--segments", help="CSV item,segment for sign stability (e.g. category)")
    p.add_argument("--pairs", help="pairs.csv (item_a,item_b) for the built-in pair-recall metric")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    call = p.invoke(argv)
    args = call.args
    versions = [(n, str(d)) for n, d in parse_versions(args.versions)] if args.versions and not args.table else []
    return ExchangeJob(args.out, versions, args.table or "", args.log or "", args.segments or "", args.pairs or "",
                       call.build(ExchangeRun), args.overwrite)


def main(argv: list[str]) -> int:
    """`mmrep eval exchange-rate --versions A=DIR,B=DIR,... --log interactions.csv --out DIR`."""
    done = exchange_rate_report(parse(argv))
    print(markdown(done.report).split("## Columns")[0])
    return 0


def _clean(v: Any) -> Any:
    """JSON-safe copy: numpy scalars -> Python, nan -> null (strict JSON has no NaN)."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v
