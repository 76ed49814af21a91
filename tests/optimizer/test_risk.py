import numpy as np
import pyomo.environ as pyo
import pytest

from optimizer.risk import cvar, profit_stats, risk_objective_value, weighted_quantile
from solvers.highs import solve


def test_cvar_by_hand():
    profits = np.array([10.0, -5.0, 3.0, 7.0, -20.0, 1.0, 4.0, 8.0, 2.0, 6.0])
    # alpha 0.8: the worst 20% of ten equal scenarios are -20 and -5.
    assert cvar(profits, 0.8) == pytest.approx(-12.5)
    # alpha 0.85: worst 15% = all of -20 (0.1) and half of -5 (0.05).
    assert cvar(profits, 0.85) == pytest.approx((0.1 * -20 + 0.05 * -5) / 0.15)
    assert weighted_quantile(profits, 0.2) == -5.0
    stats = profit_stats(profits, 0.8)
    assert stats.var_usd == -5.0 and stats.worst_usd == -20.0
    assert stats.mean_usd == pytest.approx(1.6)
    assert stats.std_usd == pytest.approx(np.std(profits, ddof=1))


def test_cvar_equals_rockafellar_uryasev_lp():
    """The sorted-tail CVaR must match max_eta eta - E[(eta - P)+]/(1 - alpha), solved as an LP."""
    rng = np.random.default_rng(3)
    profits = rng.normal(100, 30, size=37)
    alpha = 0.9
    m = pyo.ConcreteModel()
    m.S = pyo.RangeSet(0, len(profits) - 1)
    m.eta = pyo.Var()
    m.s = pyo.Var(m.S, domain=pyo.NonNegativeReals)
    m.c = pyo.Constraint(m.S, rule=lambda m, w: m.s[w] >= m.eta - float(profits[w]))
    m.o = pyo.Objective(expr=m.eta - sum(m.s[w] for w in m.S) / len(profits) / (1 - alpha), sense=pyo.maximize)
    outcome = solve(m, time_limit_s=10, mip_rel_gap=0)
    assert cvar(profits, alpha) == pytest.approx(outcome.objective_usd, rel=1e-9)


def test_risk_objective_mixes_mean_and_cvar():
    profits = np.array([1.0, 2.0, 3.0, 4.0])
    assert risk_objective_value(profits, "expected", 0.75, 0.5) == 2.5
    assert risk_objective_value(profits, "cvar", 0.75, 0.5) == pytest.approx(0.5 * 2.5 + 0.5 * 1.0)
    assert risk_objective_value(profits, "worst", 0.75, 0.5) == 1.0
