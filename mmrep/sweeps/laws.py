"""Saturating power laws L(x) = a·(x/x0)^(−b) + c, fitted with scipy's curve_fit, with bootstrap intervals.

L is a held-out error (1 − recall for a recall metric). x0 (the geometric mean of the x values) keeps
the fit well conditioned over FLOPs in the 1e12 range; `a` is in units of L at x = x0. Intervals come
from a residual bootstrap (refit on fitted values + resampled residuals), which works with the handful
of points a sweep gives, where resampling points would often leave fewer distinct x than parameters.
Three axes, as in Kaplan et al. / Hoffmann et al.: compute (fitted on the compute-optimal frontier:
runs no cheaper run beats), data (samples seen) and model size (non-embedding parameters), each of the
last two on its envelope: the best run at each value, whatever the other axis (so the law describes
what that many samples / parameters can reach, not one slice of the grid). With exactly 3 points the
3-parameter law interpolates them: no residuals are left, so no interval is given.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from mmrep.errors import MmrepError

AXES = {"compute": "train_flops", "data": "samples_seen", "model": "params_non_embedding"}
AXIS_LABELS = {"compute": "training FLOPs", "data": "samples seen", "model": "non-embedding parameters"}


def law(x: np.ndarray, a: float, b: float, c: float, x0: float = 1.0) -> np.ndarray:
    return a * (np.asarray(x, float) / x0) ** (-b) + c


@dataclass
class PowerLawFit:
    a: float
    b: float
    c: float
    x0: float
    n: int
    rmse: float
    b_ci: tuple[float, float] | None  # None: too few points for an interval
    c_ci: tuple[float, float] | None
    level: float
    boot: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 3)))  # (B, 3) bootstrap (a, b, c)

    def predict(self, x: Any) -> np.ndarray:
        return law(x, self.a, self.b, self.c, self.x0)

    def band(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise `level` interval of the prediction over the bootstrap fits."""
        x = np.asarray(x, float)
        if len(self.boot) < 2 or self.b_ci is None:
            p = self.predict(x)
            return p, p
        preds = np.stack([law(x, *row, self.x0) for row in self.boot])
        lo = (1 - self.level) / 2
        return np.quantile(preds, lo, axis=0), np.quantile(preds, 1 - lo, axis=0)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "c": self.c, "x0": self.x0, "n": self.n, "rmse": self.rmse,
                "b_ci": list(self.b_ci) if self.b_ci else None, "c_ci": list(self.c_ci) if self.c_ci else None, "level": self.level, "bootstrap_fits": len(self.boot)}


def _curve_fit(x: np.ndarray, y: np.ndarray, x0: float, p0: Sequence[float] | None = None) -> np.ndarray:
    from scipy.optimize import curve_fit

    ymin, ymax = float(y.min()), float(y.max())
    c_hi = max(ymin, 1e-12)
    if p0 is None:
        p0 = [max(ymax - ymin, 1e-6), 0.3, max(ymin - 0.5 * (ymax - ymin), 0.0)]
    p0 = [p0[0], min(max(p0[1], 1e-6), 5.0), min(max(p0[2], 0.0), c_hi * 0.999)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OptimizeWarning when the covariance cannot be estimated
        popt, _ = curve_fit(lambda xx, a, b, c: law(xx, a, b, c, x0), x, y, p0=p0,
                            bounds=([0.0, 0.0, 0.0], [np.inf, 5.0, c_hi]), maxfev=20000)
    return popt


def fit_saturating(x: Sequence[float], y: Sequence[float], n_boot: int = 1000, level: float = 0.9,
                   seed: int = 0) -> PowerLawFit:
    """Least-squares L(x) = a·(x/x0)^(−b) + c (a, b, c >= 0; c <= min L) and residual-bootstrap intervals."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) != len(y) or len(np.unique(x)) < 3 or np.any(x <= 0) or not np.all(np.isfinite(y)):
        raise MmrepError(f"a saturating power-law fit needs >= 3 distinct positive x values (got {len(np.unique(x))})")
    x0 = float(np.exp(np.mean(np.log(x))))
    popt = _curve_fit(x, y, x0)
    fitted = law(x, *popt, x0)
    resid = y - fitted
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        yb = fitted + rng.choice(resid, size=len(resid), replace=True)
        try:
            boot.append(_curve_fit(x, yb, x0, popt))
        except (RuntimeError, ValueError):
            continue  # a draw the optimiser cannot fit: left out (counted in bootstrap_fits)
    boot_arr = np.array(boot) if boot else np.zeros((0, 3))
    lo = (1 - level) / 2

    def ci(col: int) -> tuple[float, float] | None:
        if len(boot_arr) < 2 or len(x) <= 3:  # no residual degrees of freedom: an interval would be fake
            return None
        return float(np.quantile(boot_arr[:, col], lo)), float(np.quantile(boot_arr[:, col], 1 - lo))

    return PowerLawFit(a=float(popt[0]), b=float(popt[1]), c=float(popt[2]), x0=x0, n=len(x),
                       rmse=float(np.sqrt(np.mean(resid**2))), b_ci=ci(1), c_ci=ci(2), level=level, boot=boot_arr)


def frontier(points: list[dict[str, Any]], x_key: str = "train_flops", y_key: str = "loss") -> list[dict[str, Any]]:
    """The compute-optimal frontier: runs (in increasing x) with a lower loss than every cheaper run."""
    best = math.inf
    out = []
    for p in sorted(points, key=lambda p: (p[x_key], p[y_key])):
        if p[y_key] < best:
            out.append(p)
            best = p[y_key]
    return out


def envelope(points: list[dict[str, Any]], x_key: str) -> list[dict[str, Any]]:
    """The best (lowest-loss) run at each distinct x, in increasing x."""
    best: dict[Any, dict[str, Any]] = {}
    for p in points:
        if p[x_key] not in best or p["loss"] < best[p[x_key]]["loss"]:
            best[p[x_key]] = p
    return [best[x] for x in sorted(best)]


def axis_points(points: list[dict[str, Any]], axis: str) -> tuple[list[dict[str, Any]], str]:
    """The runs a law is fitted on, and how they were chosen."""
    if axis == "compute":
        front = frontier(points)
        if len({p["train_flops"] for p in front}) >= 3:
            return front, "compute-optimal frontier"
        return points, "all runs (the frontier has < 3 points)"
    key = AXES[axis]
    other = "model size" if axis == "data" else "sample budget"
    return envelope(points, key), f"best run per {AXIS_LABELS[axis]} (over {other})"


def fit_axes(points: list[dict[str, Any]], n_boot: int = 1000, level: float = 0.9, seed: int = 0) -> dict[str, Any]:
    """{axis: {"fit": PowerLawFit | None, "points": [...], "chosen": str, "skipped": reason}} for the 3 axes."""
    out: dict[str, Any] = {}
    for axis, key in AXES.items():
        chosen, how = axis_points(points, axis)
        entry: dict[str, Any] = {"x_key": key, "points": chosen, "chosen": how, "fit": None, "skipped": ""}
        try:
            entry["fit"] = fit_saturating([p[key] for p in chosen], [p["loss"] for p in chosen], n_boot, level, seed)
        except MmrepError as e:
            entry["skipped"] = str(e)
        except RuntimeError as e:  # curve_fit did not converge
            entry["skipped"] = f"curve_fit did not converge ({str(e).splitlines()[0]})"
        out[axis] = entry
    return out
