"""The compact two-stage MIP in Pyomo.

First stage: integer rack counts per (group, mode), a conversion binary per AI-ready site,
an acceptance binary per lease offer, leased MW per (offer, site), committed demand-response MW
per site with a programme. Second stage: one profit variable per scenario, linear in the first
stage through the per-rack economics (optimizer.economics), which is exact because mining
dispatch separates by hour; only in the coupled steps (a curtailment cap or a demand-response
call that can bind) do explicit dispatch variables enter (docs/formulation.md).
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
    dr_credit_usd_per_mw,
    idle_cost_usd_per_rack,
    lease_revenue_usd_per_mw,
)
from optimizer.constants import KW_PER_MW
from optimizer.economics import NO_SITE, GroupEconomics, max_ai_load_kw, rack_meter_kw
from optimizer.fleet import Fleet, Objective, RiskSettings

INTEGRALITY_TOL = 1e-6


def add_first_stage(model: pyo.ConcreteModel, fleet: Fleet) -> None:
    groups = fleet.rack_groups
    model.G = pyo.RangeSet(0, len(groups) - 1)
    model.M = pyo.Set(initialize=[m.value for m in MODES], ordered=True)
    model.AI_SITES = pyo.Set(initialize=[s.id for s in fleet.sites if s.ai is not None], ordered=True)
    model.OFFERS = pyo.Set(initialize=[o.id for o in fleet.lease_offers], ordered=True)
    model.PAIRS = pyo.Set(initialize=[(o.id, s) for o in fleet.lease_offers for s in o.sites], dimen=2, ordered=True)
    model.DR_SITES = pyo.Set(initialize=[s.id for s in fleet.sites if s.demand_response is not None], ordered=True)

    def rack_bounds(m, g, mode):
        convertible_or_not_ai = mode != Mode.AI.value or fleet.can_convert(groups[g])
        return (0, groups[g].racks if convertible_or_not_ai else 0)

    model.x = pyo.Var(model.G, model.M, domain=pyo.NonNegativeIntegers, bounds=rack_bounds)
    model.convert = pyo.Var(model.AI_SITES, domain=pyo.Binary)
    model.accept = pyo.Var(model.OFFERS, domain=pyo.Binary)
    model.lease_mw = pyo.Var(model.PAIRS, domain=pyo.NonNegativeReals)
    # committed curtailable MW at the meter: continuous (programmes take MW in small increments)
    model.dr_mw = pyo.Var(
        model.DR_SITES, domain=pyo.NonNegativeReals, bounds=lambda m, s: (0, fleet.site(s).demand_response.max_mw)
    )

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
    model.dr_within_mining = pyo.Constraint(
        model.DR_SITES, rule=lambda m, s: m.dr_mw[s] * KW_PER_MW <= planned_mining_kw_expr(m, fleet, s)
    )
    model.ai_load_kw = pyo.Expression(
        model.AI_SITES, rule=lambda m, s: _site_lease_mw(m, s) * fleet.site(s).pue_ai * KW_PER_MW
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


def planned_mining_kw_expr(m, fleet: Fleet, site_id: str):
    """Mining load at the meter if every rack put to mining runs."""
    return sum(
        m.x[g, Mode.MINE.value] * rack_meter_kw(fleet, group)
        for g, group in enumerate(fleet.rack_groups)
        if group.site == site_id
    )


def _site_load_kw(m, fleet: Fleet, site_id: str):
    site = fleet.site(site_id)
    return planned_mining_kw_expr(m, fleet, site_id) + _site_lease_mw(m, site_id) * KW_PER_MW * site.pue_ai


def _full_capex_expr(m, fleet: Fleet, site_id: str):
    conversion = fleet.site(site_id).ai
    return conversion.fixed_capex_usd * m.convert[site_id] + conversion.capex_usd_per_mw * m.ai_mw[site_id]


def _first_stage_profit_expr(m, fleet: Fleet):
    """Scenario-independent profit: rent net of the capex charge, demand-response credits, minus idle-rack costs."""
    offers = {o.id: o for o in fleet.lease_offers}
    rent = sum(lease_revenue_usd_per_mw(fleet, offers[o], s) * m.lease_mw[o, s] for (o, s) in m.PAIRS)
    capex = sum(
        _full_capex_expr(m, fleet, s) * fleet.site(s).ai.capex_share_of_horizon(fleet.horizon.days) for s in m.AI_SITES
    )
    idle = sum(
        idle_cost_usd_per_rack(fleet, group) * m.x[g, Mode.IDLE.value] for g, group in enumerate(fleet.rack_groups)
    )
    credit = sum(dr_credit_usd_per_mw(fleet, fleet.site(s)) * m.dr_mw[s] for s in m.DR_SITES)
    return rent - capex - idle + credit


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
    contract = economics.contract_usd.sum(axis=0)
    site_index = {s.id: n for n, s in enumerate(fleet.sites)}
    ai_power = economics.ai_power_usd_per_mw
    resale_pairs = [(o, s) for (o, s) in model.PAIRS if fleet.site(s).contract.resells]
    coupled = add_coupled_dispatch(model, fleet, economics)
    model.profit_def = pyo.Constraint(
        model.S,
        rule=lambda m, w: (
            m.profit[w]
            == m.first_stage_usd
            + sum(float(value[g, w]) * m.x[g, Mode.MINE.value] for g in m.G)
            + float(contract[w])
            + sum(float(ai_power[site_index[s], w]) * m.lease_mw[o, s] for (o, s) in resale_pairs)
            + coupled.get(w, 0.0)
        ),
    )
    add_risk_objective(model, risk, _weights(weights, n_scen))
    return model


def add_coupled_dispatch(model: pyo.ConcreteModel, fleet: Fleet, economics: GroupEconomics) -> dict[int, object]:
    """Explicit dispatch in the coupled steps; returns each scenario's coupled profit expression.

    AI has priority at a cap: it loses exactly max(0, AI - cap) and mining may draw max(0, cap - AI),
    which is not convex. Both depend on the first stage and the cap alone, so per (site, cap level)
    below the site's largest possible AI load there is one binary `ai_over_cap` (AI above the cap)
    and one shed variable per offer, shared by every step at that level: the split across offers
    is the same everywhere (costs differ across offers only by their SLA penalty). Per coupled slot
    j (site, scenario, step) with candidate racks: `run[i]` racks of each group with a positive
    margin, at most the racks put to mining; with a cap, mining + AI - shed <= cap; at a
    demand-response call, mining <= planned mining load - committed MW. Slots where only AI
    shedding couples need no variable of their own, only cost coefficients on the shared shed.
    """
    slot_k, slot_s = np.nonzero(economics.coupled_site != NO_SITE)
    slot_of = {(int(k), int(w)): j for j, (k, w) in enumerate(zip(slot_k, slot_s, strict=True))}
    sites = [fleet.sites[int(n)] for n in economics.coupled_site[slot_k, slot_s]]
    cap_kw = economics.coupled_cap_kw[slot_k, slot_s]
    called = economics.coupled_dr_call[slot_k, slot_s]
    resale = economics.coupled_resale_usd_per_mwh[slot_k, slot_s]
    has_ai = economics.coupled_ai_live[slot_k, slot_s] & np.array([s.ai is not None for s in sites], dtype=bool)
    max_ai_kw = {s.id: max_ai_load_kw(fleet, s) for s in fleet.sites}
    item_p, item_s = np.nonzero(economics.item_slot != NO_SITE)
    item_j = [slot_of[(int(k), int(w))] for k, w in zip(economics.item_slot[item_p, item_s], item_s, strict=True)]
    item_g = economics.item_group[item_p, item_s].astype(int)
    margin = economics.item_hash_revenue_usd[item_p, item_s] - economics.item_power_cost_usd[item_p, item_s]
    groups = fleet.rack_groups
    meter_kw = [rack_meter_kw(fleet, g) for g in groups]

    model.ITEMS = pyo.RangeSet(0, len(item_j) - 1)
    model.run = pyo.Var(model.ITEMS, domain=pyo.NonNegativeReals, bounds=lambda m, i: (0, groups[item_g[i]].racks))
    model.run_limit = pyo.Constraint(model.ITEMS, rule=lambda m, i: m.run[i] <= m.x[int(item_g[i]), Mode.MINE.value])
    items_of = [[] for _ in range(len(slot_k))]
    for i, j in enumerate(item_j):
        items_of[j].append(i)

    level_of = {
        j: (sites[j].id, float(cap_kw[j]))
        for j in range(len(slot_k))
        if has_ai[j] and np.isfinite(cap_kw[j]) and cap_kw[j] < max_ai_kw[sites[j].id]
    }
    _add_shed_levels(model, fleet, sorted(set(level_of.values())), max_ai_kw)

    def mining_kw(m, j):
        return sum(meter_kw[item_g[i]] * m.run[i] for i in items_of[j])

    def cap_rule(m, j):
        site_id = sites[j].id
        ai = m.ai_load_kw[site_id] - (m.shed_total_kw[level_of[j]] if j in level_of else 0.0) if has_ai[j] else 0.0
        return mining_kw(m, j) + ai <= float(cap_kw[j])

    with_racks = [j for j in range(len(slot_k)) if items_of[j]]
    model.CAP_SLOTS = pyo.Set(initialize=[j for j in with_racks if np.isfinite(cap_kw[j])], ordered=True)
    model.DR_SLOTS = pyo.Set(initialize=[j for j in with_racks if called[j]], ordered=True)
    model.cap = pyo.Constraint(model.CAP_SLOTS, rule=cap_rule)
    model.dr_drop = pyo.Constraint(
        model.DR_SLOTS,
        rule=lambda m, j: (
            mining_kw(m, j) <= planned_mining_kw_expr(m, fleet, sites[j].id) - m.dr_mw[sites[j].id] * KW_PER_MW
        ),
    )

    terms: dict[int, list] = {}
    for i, j in enumerate(item_j):
        terms.setdefault(int(slot_s[j]), []).append(float(margin[i]) * model.run[i])
    step_mwh_per_kw = fleet.horizon.step_hours / KW_PER_MW
    penalty = {o.id: o.sla_penalty_usd_per_mwh for o in fleet.lease_offers}
    shed_cost: dict[tuple, float] = {}  # (scenario, site, cap, offer) -> USD per kW shed, summed over steps
    for j, (site_id, cap) in level_of.items():
        site = sites[j]
        lost_pass_through = site.contract.price_usd_per_mwh - resale[j] if site.contract.resells else 0.0
        for o in model.SHED_OFFERS[site_id, cap]:
            key = (int(slot_s[j]), site_id, cap, o)
            cost = step_mwh_per_kw * (penalty[o] / site.pue_ai + lost_pass_through)
            shed_cost[key] = shed_cost.get(key, 0.0) + cost
    for (w, site_id, cap, o), cost in shed_cost.items():
        terms.setdefault(w, []).append(-cost * model.shed_kw[site_id, cap, o])
    return {w: pyo.quicksum(parts) for w, parts in terms.items()}


def _add_shed_levels(model: pyo.ConcreteModel, fleet: Fleet, levels: list, max_ai_kw: dict[str, float]) -> None:
    """Per (site, cap level): shed AI = max(0, AI load - cap) exactly, split across the site's offers."""
    model.LEVELS = pyo.Set(initialize=levels, dimen=2, ordered=True)
    model.ai_over_cap = pyo.Var(model.LEVELS, domain=pyo.Binary)  # 1: the AI load exceeds the cap
    model.SHED_OFFERS = pyo.Set(model.LEVELS, initialize=lambda m, s, c: [o for (o, ss) in m.PAIRS if ss == s])
    index = [(s, c, o) for (s, c) in levels for o in model.SHED_OFFERS[s, c]]
    model.SHED = pyo.Set(initialize=index, dimen=3, ordered=True)
    model.shed_kw = pyo.Var(model.SHED, domain=pyo.NonNegativeReals)  # AI load shed per offer, at the meter
    model.shed_within_lease = pyo.Constraint(
        model.SHED, rule=lambda m, s, c, o: m.shed_kw[s, c, o] <= m.lease_mw[o, s] * fleet.site(s).pue_ai * KW_PER_MW
    )
    model.shed_total_kw = pyo.Expression(
        model.LEVELS, rule=lambda m, s, c: sum(m.shed_kw[s, c, o] for o in m.SHED_OFFERS[s, c])
    )
    model.ai_fits_after_shed = pyo.Constraint(
        model.LEVELS, rule=lambda m, s, c: m.ai_load_kw[s] - m.shed_total_kw[s, c] <= c
    )
    # over = 0: nothing shed (so AI <= cap); over = 1: shed <= AI - cap, hence exactly AI - cap (so AI >= cap)
    model.shed_only_excess = pyo.Constraint(
        model.LEVELS, rule=lambda m, s, c: m.shed_total_kw[s, c] <= m.ai_load_kw[s] - c * m.ai_over_cap[s, c]
    )
    model.shed_only_if_over = pyo.Constraint(
        model.LEVELS, rule=lambda m, s, c: m.shed_total_kw[s, c] <= (max_ai_kw[s] - c) * m.ai_over_cap[s, c]
    )


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
    dr = {s: float(pyo.value(model.dr_mw[s])) for s in model.DR_SITES}
    dr = {k: v for k, v in dr.items() if v > INTEGRALITY_TOL}
    return Allocation(racks=racks, converted_sites=converted, lease_mw=lease, dr_mw=dr)
