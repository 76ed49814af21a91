"""The textbook extensive form: an explicit dispatch variable per group, step and scenario.

It exists to prove the compact model exact (tests, bench): same first stage and risk
objective, but the second stage is the hourly dispatch LP itself, built from the raw
price paths rather than from precomputed per-rack sums.
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo

from optimizer.allocation import Mode
from optimizer.economics import rack_margin_usd
from optimizer.fleet import Fleet, RiskSettings
from optimizer.formulation import add_first_stage, add_risk_objective
from optimizer.scenarios import ScenarioSet


def build_extensive_model(fleet: Fleet, scenarios: ScenarioSet, risk: RiskSettings) -> pyo.ConcreteModel:
    model = pyo.ConcreteModel(name="hashpivot_extensive")
    add_first_stage(model, fleet)
    model.S = pyo.RangeSet(0, scenarios.n_scenarios - 1)
    model.T = pyo.RangeSet(0, scenarios.n_steps - 1)
    margins = [np.subtract(*rack_margin_usd(fleet, g, scenarios)) for g in range(len(fleet.rack_groups))]
    # Running racks, a continuous count per (group, scenario, step), at most the racks put to mining.
    model.run = pyo.Var(model.G, model.S, model.T, domain=pyo.NonNegativeReals)
    model.run_limit = pyo.Constraint(
        model.G, model.S, model.T, rule=lambda m, g, w, t: m.run[g, w, t] <= m.x[g, Mode.MINE.value]
    )
    days = scenarios.n_steps * scenarios.step_hours / 24
    opex = [group.opex_usd_per_rack_day * days for group in fleet.rack_groups]
    model.profit = pyo.Var(model.S, domain=pyo.Reals)
    model.profit_def = pyo.Constraint(
        model.S,
        rule=lambda m, w: (
            m.profit[w]
            == m.first_stage_usd
            + sum(float(margins[g][w, t]) * m.run[g, w, t] for g in m.G for t in m.T)
            - sum(opex[g] * m.x[g, Mode.MINE.value] for g in m.G)
        ),
    )
    add_risk_objective(model, risk, np.full(scenarios.n_scenarios, 1.0 / scenarios.n_scenarios))
    return model
