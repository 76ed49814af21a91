"""The compact two-stage MIP in Pyomo.

First stage: integer rack counts per (group, mode), a conversion binary per AI-ready site,
an acceptance binary per lease offer, leased MW per (offer, site). Second stage: one profit
variable per scenario, linear in the first stage through the per-rack economics
(optimizer.economics), which is exact because mining dispatch separates by hour.
The extensive form (optimizer.extensive) shares the first stage and risk blocks and is
used to prove the compact model exact.
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo

from optimizer.allocation import (
    MODES,
    Allocation,
    Mode,
    idle_cost_usd_per_rack,
    lease_revenue_usd_per_mw,
)
from optimizer.constants import KW_PER_MW
from optimizer.economics import GroupEconomics
from optimizer.fleet import Fleet, Objective, RiskSettings

INTEGRALITY_TOL = 1e-6


def add_first_stage(model: pyo.ConcreteModel, fleet: Fleet) -> None:
    groups = fleet.rack_groups
    model.G = pyo.RangeSet(0, len(groups) - 1)
    model.M = pyo.Set(initialize=[m.value for m in MODES], ordered=True)
    model.AI_SITES = pyo.Set(initialize=[s.id for s in fleet.sites if s.ai is not None], ordered=True)
    model.OFFERS = pyo.Set(initialize=[o.id for o in fleet.lease_offers], ordered=True)
    model.PAIRS = pyo.Set(initialize=[(o.id, s) for o in fleet.lease_offers for s in o.sites], dimen=2, ordered=True)

    def rack_bounds(m, g, mode):
        convertible_or_not_ai = mode != Mode.AI.value or fleet.can_convert(groups[g])
        return (0, groups[g].racks if convertible_or_not_ai else 0)

    model.x = pyo.Var(model.G, model.M, domain=pyo.NonNegativeIntegers, bounds=rack_bounds)
    model.convert = pyo.Var(model.AI_SITES, domain=pyo.Binary)
    model.accept = pyo.Var(model.OFFERS, domain=pyo.Binary)
    model.lease_mw = pyo.Var(model.PAIRS, domain=pyo.NonNegativeReals)

    model.rack_count = pyo.Constraint(model.G, rule=lambda m, g: sum(m.x[g, k] for k in m.M) == groups[g].racks)
    model.ai_mw = pyo.Expression(model.AI_SITES, rule=lambda m, s: _converted_mw_expr(m, fleet, s))
    model.ai_min_block = pyo.Constraint(
        model.AI_SITES, rule=lambda m, s: m.ai_mw[s] >= fleet.site(s).ai.min_mw * m.convert[s]
    )
    model.ai_max = pyo.Constraint(
        model.AI_SITES, rule=lambda m, s: m.ai_mw[s] <= fleet.site(s).ai.max_mw * m.convert[s]
    )
    model.lease_fits_conversion = pyo.Constraint(model.AI_SITES, rule=lambda m, s: _site_lease_mw(m, s) <= m.ai_mw[s])
    offers = {o.id: o for o in fleet.lease_offers}
    model.offer_min = pyo.Constraint(model.OFFERS, rule=lambda m, o: _offer_mw(m, o) >= offers[o].min_mw * m.accept[o])
    model.offer_max = pyo.Constraint(model.OFFERS, rule=lambda m, o: _offer_mw(m, o) <= offers[o].max_mw * m.accept[o])
    model.site_capacity = pyo.Constraint(
        [s.id for s in fleet.sites],
        rule=lambda m, s: _site_load_kw(m, fleet, s) <= fleet.site(s).capacity_mw * KW_PER_MW,
    )
    if fleet.capital_budget_usd is not None:
        model.capital_budget = pyo.Constraint(
            expr=sum(_full_capex_expr(model, fleet, s) for s in model.AI_SITES) <= fleet.capital_budget_usd
        )
    model.first_stage_usd = pyo.Expression(expr=_first_stage_profit_expr(model, fleet))


def _converted_mw_expr(m, fleet: Fleet, site_id: str):
    return sum(
        m.x[g, Mode.AI.value] * fleet.rack_power_kw(group) / KW_PER_MW
        for g, group in enumerate(fleet.rack_groups)
        if group.site == site_id
    )


def _site_lease_mw(m, site_id: str):
    return sum(m.lease_mw[o, s] for (o, s) in m.PAIRS if s == site_id)


def _offer_mw(m, offer_id: str):
    return sum(m.lease_mw[o, s] for (o, s) in m.PAIRS if o == offer_id)


def _site_load_kw(m, fleet: Fleet, site_id: str):
    site = fleet.site(site_id)
    mining_kw = sum(
        m.x[g, Mode.MINE.value] * fleet.rack_power_kw(group) * site.pue_mining
        for g, group in enumerate(fleet.rack_groups)
        if group.site == site_id
    )
    return mining_kw + _site_lease_mw(m, site_id) * KW_PER_MW * site.pue_ai


def _full_capex_expr(m, fleet: Fleet, site_id: str):
    conversion = fleet.site(site_id).ai
    return conversion.fixed_capex_usd * m.convert[site_id] + conversion.capex_usd_per_mw * m.ai_mw[site_id]


def _first_stage_profit_expr(m, fleet: Fleet):
    """Scenario-independent profit: rent net of the capex charge, minus idle-rack costs."""
    offers = {o.id: o for o in fleet.lease_offers}
    rent = sum(lease_revenue_usd_per_mw(fleet, offers[o], s) * m.lease_mw[o, s] for (o, s) in m.PAIRS)
    capex = sum(
        _full_capex_expr(m, fleet, s) * fleet.site(s).ai.capex_share_of_horizon(fleet.horizon.days) for s in m.AI_SITES
    )
    idle = sum(
        idle_cost_usd_per_rack(fleet, group) * m.x[g, Mode.IDLE.value] for g, group in enumerate(fleet.rack_groups)
    )
    return rent - capex - idle


def add_risk_objective(model: pyo.ConcreteModel, risk: RiskSettings, weights: np.ndarray) -> None:
    """Maximize expected profit, mean-CVaR (Rockafellar-Uryasev) or the worst scenario's profit."""
    p = {w: float(weights[w]) for w in model.S}
    expected = sum(p[w] * model.profit[w] for w in model.S)
    if risk.objective is Objective.EXPECTED:
        model.objective = pyo.Objective(expr=expected, sense=pyo.maximize)
    elif risk.objective is Objective.CVAR:
        model.var_usd = pyo.Var(domain=pyo.Reals)  # at the optimum, the (1-alpha) profit quantile
        model.shortfall = pyo.Var(model.S, domain=pyo.NonNegativeReals)
        model.shortfall_def = pyo.Constraint(model.S, rule=lambda m, w: m.shortfall[w] >= m.var_usd - m.profit[w])
        model.cvar_usd = pyo.Expression(
            expr=model.var_usd - sum(p[w] * model.shortfall[w] for w in model.S) / (1.0 - risk.alpha)
        )
        model.objective = pyo.Objective(
            expr=(1 - risk.weight) * expected + risk.weight * model.cvar_usd, sense=pyo.maximize
        )
    else:
        model.worst_usd = pyo.Var(domain=pyo.Reals)
        model.worst_def = pyo.Constraint(model.S, rule=lambda m, w: m.worst_usd <= m.profit[w])
        model.objective = pyo.Objective(expr=model.worst_usd, sense=pyo.maximize)


def build_compact_model(
    fleet: Fleet, economics: GroupEconomics, risk: RiskSettings, weights: np.ndarray | None = None
) -> pyo.ConcreteModel:
    model = pyo.ConcreteModel(name="hashpivot_compact")
    add_first_stage(model, fleet)
    n_scen = economics.n_scenarios
    model.S = pyo.RangeSet(0, n_scen - 1)
    model.profit = pyo.Var(model.S, domain=pyo.Reals)
    value = economics.mine_value_usd
    model.profit_def = pyo.Constraint(
        model.S,
        rule=lambda m, w: (
            m.profit[w] == m.first_stage_usd + sum(float(value[g, w]) * m.x[g, Mode.MINE.value] for g in m.G)
        ),
    )
    add_risk_objective(model, risk, _weights(weights, n_scen))
    return model


def _weights(weights: np.ndarray | None, n_scen: int) -> np.ndarray:
    return np.full(n_scen, 1.0 / n_scen) if weights is None else np.asarray(weights, dtype=float)


def extract_allocation(model: pyo.ConcreteModel, fleet: Fleet) -> Allocation:
    racks = {
        group.id: {mode: int(round(pyo.value(model.x[g, mode.value]))) for mode in MODES}
        for g, group in enumerate(fleet.rack_groups)
    }
    converted = frozenset(s for s in model.AI_SITES if pyo.value(model.convert[s]) > 0.5)
    lease = {(o, s): float(pyo.value(model.lease_mw[o, s])) for (o, s) in model.PAIRS}
    lease = {k: v for k, v in lease.items() if v > INTEGRALITY_TOL}
    return Allocation(racks=racks, converted_sites=converted, lease_mw=lease)
