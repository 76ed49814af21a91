"""Statistics of a profit distribution over weighted scenarios.

VaR and CVaR are taken on the lower tail of profit at level alpha: VaR is the
(1 - alpha) quantile of profit and CVaR the probability-weighted mean of the worst
(1 - alpha) mass, computed exactly as the Rockafellar-Uryasev optimum
max_eta { eta - E[(eta - profit)^+] / (1 - alpha) } so it matches the MIP's value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ProfitStats:
    mean_usd: float
    std_usd: float
    p5_usd: float
    p50_usd: float
    p95_usd: float
    var_usd: float
    cvar_usd: float
    worst_usd: float
    alpha: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _weights(n: int, weights: np.ndarray | None) -> np.ndarray:
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=float)
    return w / w.sum()


def weighted_quantile(values: np.ndarray, q: float, weights: np.ndarray | None = None) -> float:
    """Smallest value whose cumulative weight reaches q (the lower quantile, as VaR uses)."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(_weights(len(values), weights)[order])
    k = min(int(np.searchsorted(cum, q - 1e-12)), len(values) - 1)
    return float(values[order][k])


def cvar(values: np.ndarray, alpha: float, weights: np.ndarray | None = None) -> float:
    """Mean of the worst (1 - alpha) probability mass, splitting the atom at the boundary."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], _weights(len(values), weights)[order]
    tail = 1.0 - alpha
    taken = np.clip(tail - (np.cumsum(w) - w), 0.0, w)
    return float((taken * v).sum() / tail)


def profit_stats(values: np.ndarray, alpha: float, weights: np.ndarray | None = None) -> ProfitStats:
    values = np.asarray(values, dtype=float)
    w = _weights(len(values), weights)
    mean = float(w @ values)
    std = float(np.sqrt(w @ (values - mean) ** 2 * len(values) / max(len(values) - 1, 1)))
    return ProfitStats(
        mean_usd=mean,
        std_usd=std,
        p5_usd=weighted_quantile(values, 0.05, w),
        p50_usd=weighted_quantile(values, 0.50, w),
        p95_usd=weighted_quantile(values, 0.95, w),
        var_usd=weighted_quantile(values, 1.0 - alpha, w),
        cvar_usd=cvar(values, alpha, w),
        worst_usd=float(values.min()),
        alpha=alpha,
    )


def risk_objective_value(values: np.ndarray, objective: str, alpha: float, weight: float) -> float:
    """The value the MIP maximizes, computed from a profit vector (for checks and brute force)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if objective == "expected":
        return mean
    if objective == "cvar":
        return (1 - weight) * mean + weight * cvar(values, alpha)
    return float(values.min())
