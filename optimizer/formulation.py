"""The compact multi-period stochastic MIP in Pyomo.

First stage (decided now, one for all scenarios):
- x[g, l]: integer racks of group g on lifecycle l (optimizer.lifecycles: mine, idle, sell, move,
  or give the slot to AI at a conversion start option and sell, store or move the machines);
- buy[b]: integer racks of purchase lot b (optimizer.lifecycles.PurchaseLot: an option ordered today or
  at a recourse date);
- convert[n] and convert_at[n, k]: binary, site n converts, at its k-th start option;
- accept[o]: binary, offer o is signed; lease_mw[o, n, k]: MW of o served from n's k-th option;
- dr_mw[n]: committed demand-response MW.
Second stage: one profit variable per scenario, the plan's net present value in that scenario,
linear in the first stage through per-rack period values (optimizer.economics), which is exact
because mining dispatch separates by step; only in coupled steps (a curtailment cap or a demand-
response call that can bind) do explicit dispatch variables enter (docs/formulation.md).

Each constraint family is one `define_*` function whose docstring states its inequality.
Notation: P periods p, profiles q with meter load E_q kW and IT load I_q kW per rack,
present[q, p] the racks mining as q in p, ready(k) the period a hall of option k goes live,
end(o, k) the period its lease with offer o ends.

The extensive form (optimizer.extensive) shares the first stage and the risk objective and proves
the compact model exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyomo.environ as pyo

from optimizer.allocation import Allocation, lease_terms
from optimizer.cashflows import capex_discount_factor, monthly_credit_pv
from optimizer.constants import KW_PER_MW
from optimizer.economics import NO_SITE, GroupEconomics, economics_grid, max_ai_load_kw
from optimizer.fleet import Fleet, Objective, RiskSettings
from optimizer.lifecycles import PlanGrid, lifecycle_values_usd, plan_grid, presence, purchase_values_usd

INTEGRALITY_TOL = 1e-6


@dataclass(frozen=True)
class FirstStage:
    """What the model is indexed by, kept on the model as `model.grid_info` for the later blocks."""

    grid: PlanGrid
    presence: dict


def add_first_stage(model: pyo.ConcreteModel, fleet: Fleet, grid: PlanGrid | None = None) -> None:
    """Variables, expressions and every scenario-independent constraint family."""
    grid = grid or plan_grid(fleet)
    model.grid_info = FirstStage(grid, presence(grid))
    _add_sets(model, fleet, grid)
    _add_variables(model, fleet, grid)
    _add_expressions(model, fleet, grid)
    define_rack_count(model, fleet)
    define_one_start_per_site(model)
    define_conversion_block(model, fleet)
    define_lease_fits_conversion(model)
    define_offer_bounds(model, fleet)
    define_site_capacity(model, fleet)
    define_dr_within_mining(model)
    define_capital_budget(model, fleet)
    define_purchase_limit(model, fleet)
    model.first_stage_usd = pyo.Expression(expr=_first_stage_pv_expr(model, fleet, grid))


def _add_sets(model, fleet: Fleet, grid: PlanGrid) -> None:
    model.G = pyo.RangeSet(0, len(fleet.rack_groups) - 1)
    model.GL = pyo.Set(initialize=[(g, ell) for g in model.G for ell in range(len(grid.lifecycles[g]))], dimen=2)
    model.B = pyo.Set(initialize=range(len(grid.purchase_lots)))
    model.P = pyo.Set(initialize=range(grid.n_periods), ordered=True)
    model.AI_SITES = pyo.Set(initialize=[s.id for s in fleet.sites if s.ai is not None], ordered=True)
    model.STARTS = pyo.Set(
        initialize=[(s, k) for s in model.AI_SITES for k in range(len(grid.conversion_start[s]))], dimen=2
    )
    model.OFFERS = pyo.Set(initialize=[o.id for o in fleet.lease_offers], ordered=True)
    model.LEASES = pyo.Set(initialize=list(lease_terms(fleet, grid)), dimen=3, ordered=True)
    model.DR_SITES = pyo.Set(initialize=[s.id for s in fleet.sites if s.demand_response is not None], ordered=True)


def _add_variables(model, fleet: Fleet, grid: PlanGrid) -> None:
    groups = fleet.rack_groups
    model.x = pyo.Var(model.GL, domain=pyo.NonNegativeIntegers, bounds=lambda m, g, ell: (0, groups[g].racks))
    model.buy = pyo.Var(model.B, domain=pyo.NonNegativeIntegers, bounds=purchase_bounds(fleet, grid))
    model.convert = pyo.Var(model.AI_SITES, domain=pyo.Binary)
    model.convert_at = pyo.Var(model.STARTS, domain=pyo.Binary)
    # a signed lease (quarterly re-planning) is taken: its acceptance is fixed, not chosen
    model.accept = pyo.Var(
        model.OFFERS, domain=pyo.Binary, bounds=lambda m, o: (int(fleet.lease_offer(o).committed), 1)
    )
    model.lease_mw = pyo.Var(model.LEASES, domain=pyo.NonNegativeReals)
    # committed curtailable MW at the meter: continuous (programmes take MW in small increments)
    model.dr_mw = pyo.Var(
        model.DR_SITES, domain=pyo.NonNegativeReals, bounds=lambda m, s: (0, fleet.site(s).demand_response.max_mw)
    )


def purchase_bounds(fleet: Fleet, grid: PlanGrid):
    """Racks of a lot: today's at least the racks already ordered (min_racks), every lot at most max_racks."""

    def bounds(m, b):
        lot = grid.purchase_lots[b]
        option = fleet.purchases[lot.option]
        return (option.min_racks if lot.ordered_at == 0 else 0, option.max_racks)

    return bounds


def _add_expressions(model, fleet: Fleet, grid: PlanGrid) -> None:
    present = model.grid_info.presence
    site_index = {s.id: n for n, s in enumerate(fleet.sites)}
    terms = lease_terms(fleet, grid)

    def present_racks(m, q, p):
        lots = grid.purchase_lots
        bought = sum(m.buy[b] for b in m.B if lots[b].profile == q and p >= lots[b].delivery)
        return sum(m.x[g, ell] for g, ell in present.get((q, p), ())) + bought

    model.Q = pyo.RangeSet(0, len(grid.profiles) - 1)
    model.present = pyo.Expression(model.Q, model.P, rule=present_racks)
    model.mining_kw = pyo.Expression(
        [s.id for s in fleet.sites],
        model.P,
        rule=lambda m, s, p: sum(
            m.present[q, p] * prof.meter_kw for q, prof in enumerate(grid.profiles) if prof.site == site_index[s]
        ),
    )
    model.ai_mw = pyo.Expression(
        model.STARTS,
        rule=lambda m, s, k: sum(
            m.x[g, ell] * fleet.rack_power_kw(fleet.rack_groups[g]) / KW_PER_MW
            for g, ell in m.GL
            if fleet.rack_groups[g].site == s and grid.lifecycles[g][ell].conversion == k
        ),
    )
    model.ai_load_kw = pyo.Expression(
        model.AI_SITES,
        model.P,
        rule=lambda m, s, p: sum(
            m.lease_mw[o, ss, k] * fleet.site(s).pue_ai * KW_PER_MW
            for (o, ss, k) in m.LEASES
            if ss == s and terms[o, ss, k].live(p)
        ),
    )


def _site_lease_mw(m, site_id: str, k: int):
    return sum(m.lease_mw[o, s, kk] for (o, s, kk) in m.LEASES if s == site_id and kk == k)


def _offer_mw(m, offer_id: str):
    return sum(m.lease_mw[o, s, k] for (o, s, k) in m.LEASES if o == offer_id)


def define_rack_count(model, fleet: Fleet) -> None:
    """sum_l x[g, l] = racks_g: every rack of a group follows exactly one lifecycle."""
    groups = fleet.rack_groups
    model.rack_count = pyo.Constraint(
        model.G, rule=lambda m, g: sum(m.x[g, ell] for (gg, ell) in m.GL if gg == g) == groups[g].racks
    )


def define_one_start_per_site(model) -> None:
    """sum_k convert_at[n, k] = convert[n]: a site converts at most once, at one of its start options."""
    model.one_start = pyo.Constraint(
        model.AI_SITES, rule=lambda m, s: sum(m.convert_at[s, k] for (ss, k) in m.STARTS if ss == s) == m.convert[s]
    )


def define_conversion_block(model, fleet: Fleet) -> None:
    """min_mw convert_at[n, k] <= sum_{g at n, l converts at k} I_g x[g, l] / 1,000 <= max_mw convert_at[n, k]."""
    model.ai_min_block = pyo.Constraint(
        model.STARTS, rule=lambda m, s, k: m.ai_mw[s, k] >= fleet.site(s).ai.min_mw * m.convert_at[s, k]
    )
    model.ai_max = pyo.Constraint(
        model.STARTS, rule=lambda m, s, k: m.ai_mw[s, k] <= fleet.site(s).ai.max_mw * m.convert_at[s, k]
    )


def define_lease_fits_conversion(model) -> None:
    """sum_o lease_mw[o, n, k] <= converted IT MW of option k: tenants lease only the converted slots."""
    model.lease_fits_conversion = pyo.Constraint(
        model.STARTS, rule=lambda m, s, k: _site_lease_mw(m, s, k) <= m.ai_mw[s, k]
    )


def define_offer_bounds(model, fleet: Fleet) -> None:
    """min_mw_o accept[o] <= sum_{n, k} lease_mw[o, n, k] <= max_mw_o accept[o]."""
    offers = {o.id: o for o in fleet.lease_offers}
    model.offer_min = pyo.Constraint(model.OFFERS, rule=lambda m, o: _offer_mw(m, o) >= offers[o].min_mw * m.accept[o])
    model.offer_max = pyo.Constraint(model.OFFERS, rule=lambda m, o: _offer_mw(m, o) <= offers[o].max_mw * m.accept[o])


def define_site_capacity(model, fleet: Fleet) -> None:
    """sum_{q at n} E_q present[q, p] + PUE_ai x 1,000 x sum_{live leases} lease_mw <= capacity_n, every period."""

    def rule(m, s, p):
        ai = m.ai_load_kw[s, p] if s in m.AI_SITES else 0.0
        return m.mining_kw[s, p] + ai <= fleet.site(s).capacity_mw * KW_PER_MW

    model.site_capacity = pyo.Constraint([s.id for s in fleet.sites], model.P, rule=rule)


def define_dr_within_mining(model) -> None:
    """1,000 dr_mw[n] <= planned mining load of n in every period: only mining load can be curtailed."""
    model.dr_within_mining = pyo.Constraint(
        model.DR_SITES, model.P, rule=lambda m, s, p: m.dr_mw[s] * KW_PER_MW <= m.mining_kw[s, p]
    )


def define_capital_budget(model, fleet: Fleet) -> None:
    """sum_n (fixed_n convert[n] + capex_per_mw_n (converted - tenant-funded MW)) + sum_b price_b buy[b] <= budget."""
    if fleet.capital_budget_usd is None:
        return
    spend = capital_spend_expr(model, fleet)
    if isinstance(spend, (int, float)):  # nothing to spend on (no conversions, no purchases): always within budget
        return
    model.capital_budget = pyo.Constraint(expr=spend <= fleet.capital_budget_usd)


def define_purchase_limit(model, fleet: Fleet) -> None:
    """sum over an option's lots of buy[b] <= max_racks: ordering later does not raise what can be bought."""
    lots = model.grid_info.grid.purchase_lots
    dated = sorted({lot.option for lot in lots if lot.ordered_at > 0})
    model.purchase_limit = pyo.Constraint(
        dated,
        rule=lambda m, i: sum(m.buy[b] for b in m.B if lots[b].option == i) <= fleet.purchases[i].max_racks,
    )


def capital_spend_expr(m, fleet: Fleet):
    """Nominal capital the plan commits: conversion capex net of tenants' share, plus machines bought."""
    from optimizer.lifecycles import purchase_price_usd

    offers = {o.id: o for o in fleet.lease_offers}
    conversions = sum(_capex_expr(m, fleet, s, k) for (s, k) in m.STARTS)
    tenant = sum(
        offers[o].tenant_capex_share * fleet.site(s).ai.capex_usd_per_mw * m.lease_mw[o, s, k] for (o, s, k) in m.LEASES
    )
    lots = m.grid_info.grid.purchase_lots
    bought = sum(purchase_price_usd(fleet, lots[b].option) * m.buy[b] for b in m.B)
    return conversions - tenant + bought


def _capex_expr(m, fleet: Fleet, site_id: str, k: int):
    conversion = fleet.site(site_id).ai
    return conversion.fixed_capex_usd * m.convert_at[site_id, k] + conversion.capex_usd_per_mw * m.ai_mw[site_id, k]


def _first_stage_pv_expr(m, fleet: Fleet, grid: PlanGrid):
    """Scenario-independent present value: rent (terminal value included) net of capex, plus DR credits."""
    timeline = grid.timeline
    terms = lease_terms(fleet, grid)
    offers = {o.id: o for o in fleet.lease_offers}
    rent = sum(terms[key].rent.pv_usd * m.lease_mw[key] for key in m.LEASES)
    capex = 0.0
    for s, k in m.STARTS:
        conversion = fleet.site(s).ai
        factor = capex_discount_factor(conversion, conversion.start_months[k], timeline)
        capex += factor * _capex_expr(m, fleet, s, k)
    tenant = sum(
        offers[o].tenant_capex_share
        * fleet.site(s).ai.capex_usd_per_mw
        * terms[o, s, k].capex_factor
        * m.lease_mw[o, s, k]
        for (o, s, k) in m.LEASES
    )
    credit = sum(
        monthly_credit_pv(fleet.site(s).demand_response.credit_usd_per_mw_month, timeline) * m.dr_mw[s]
        for s in m.DR_SITES
    )
    return rent - capex + tenant + credit


def add_risk_objective(model: pyo.ConcreteModel, risk: RiskSettings, weights: np.ndarray) -> None:
    """Maximize expected NPV, mean-CVaR (Rockafellar-Uryasev) or the worst scenario's NPV."""
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
    """The compact model of the fleet on the given scenario economics: one profit variable per scenario."""
    model = pyo.ConcreteModel(name="hashpivot_compact")
    add_first_stage(model, fleet, economics_grid(fleet, economics))
    grid = model.grid_info.grid
    n_scen = economics.n_scenarios
    model.S = pyo.RangeSet(0, n_scen - 1)
    model.profit = pyo.Var(model.S, domain=pyo.Reals)
    rack_value = lifecycle_values_usd(fleet, grid, economics)
    buy_value = purchase_values_usd(fleet, grid, economics)
    contract = economics.contract_pv_usd.sum(axis=0)
    lease_power = lease_power_pv_usd_per_mw(fleet, grid, economics)
    coupled = add_coupled_dispatch(model, fleet, economics)
    model.profit_def = pyo.Constraint(
        model.S,
        rule=lambda m, w: (
            m.profit[w]
            == m.first_stage_usd
            + sum(float(rack_value[g, ell, w]) * m.x[g, ell] for g, ell in m.GL)
            + sum(float(buy_value[b, w]) * m.buy[b] for b in m.B)
            + float(contract[w])
            + sum(float(lease_power[key][w]) * m.lease_mw[key] for key in lease_power)
            + coupled.get(w, 0.0)
        ),
    )
    add_risk_objective(model, risk, _weights(weights, n_scen))
    return model


def lease_power_pv_usd_per_mw(fleet: Fleet, grid: PlanGrid, economics: GroupEconomics) -> dict[tuple, np.ndarray]:
    """(offer, site, option) -> [S] take-or-pay net power value of one leased MW, past the horizon included."""
    terms = lease_terms(fleet, grid)
    site_index = {s.id: n for n, s in enumerate(fleet.sites)}
    out = {}
    for (o, s, k), term in terms.items():
        site = fleet.site(s)
        if not site.contract.resells:
            continue
        n = site_index[s]
        live = [p for p in range(grid.n_periods) if term.live(p)]
        inside = economics.ai_power_pv_usd_per_mw[n][live].sum(axis=0)
        tail = site.pue_ai * term.tail_hours_pv * economics.ai_tail_net_usd_per_mwh[n]
        out[o, s, k] = inside + tail
    return out


def add_coupled_dispatch(model: pyo.ConcreteModel, fleet: Fleet, economics: GroupEconomics) -> dict[int, object]:
    """Explicit dispatch in the coupled steps; returns each scenario's coupled profit expression (PV).

    AI has priority at a cap: it loses exactly max(0, AI - cap) and mining may draw max(0, cap - AI),
    which is not convex. Both depend on the first stage and the cap alone, so per (site, cap level,
    period) below the site's largest possible AI load there is one binary `ai_over_cap` (AI above the
    cap) and one shed variable per offer, shared by every step at that level: the split across offers
    is the same everywhere (costs differ across offers only by their SLA penalty). Per coupled slot
    j (site, scenario, step in period p) with candidate racks: `run[i]` racks of each profile with a
    positive margin, at most present[q, p]; with a cap, mining + AI - shed <= cap; at a
    demand-response call, mining <= planned mining load in p - committed MW.
    """
    grid = model.grid_info.grid
    slot_k, slot_s = np.nonzero(economics.coupled_site != NO_SITE)
    slot_of = {(int(k), int(w)): j for j, (k, w) in enumerate(zip(slot_k, slot_s, strict=True))}
    sites = [fleet.sites[int(n)] for n in economics.coupled_site[slot_k, slot_s]]
    period = grid.timeline.period_of_step(economics.coupled_step[slot_k, slot_s])
    cap_kw = economics.coupled_cap_kw[slot_k, slot_s]
    called = economics.coupled_dr_call[slot_k, slot_s]
    resale = economics.coupled_resale_usd_per_mwh[slot_k, slot_s]
    discount = economics.coupled_discount[slot_k, slot_s]
    has_ai = np.array([s.id in model.AI_SITES for s in sites], dtype=bool)
    max_ai_kw = {s.id: max_ai_load_kw(fleet, s) for s in fleet.sites}
    item_p, item_s = np.nonzero(economics.item_slot != NO_SITE)
    item_j = [slot_of[(int(k), int(w))] for k, w in zip(economics.item_slot[item_p, item_s], item_s, strict=True)]
    item_q = economics.item_group[item_p, item_s].astype(int)
    margin = economics.item_hash_revenue_usd[item_p, item_s] - economics.item_power_cost_usd[item_p, item_s]
    profiles = grid.profiles

    model.ITEMS = pyo.RangeSet(0, len(item_j) - 1)
    model.run = pyo.Var(
        model.ITEMS, domain=pyo.NonNegativeReals, bounds=lambda m, i: (0, profiles[item_q[i]].max_racks)
    )
    model.run_limit = pyo.Constraint(
        model.ITEMS, rule=lambda m, i: m.run[i] <= m.present[int(item_q[i]), int(period[item_j[i]])]
    )
    items_of = [[] for _ in range(len(slot_k))]
    for i, j in enumerate(item_j):
        items_of[j].append(i)

    level_of = {
        j: (sites[j].id, float(cap_kw[j]), int(period[j]))
        for j in range(len(slot_k))
        if has_ai[j] and np.isfinite(cap_kw[j]) and cap_kw[j] < max_ai_kw[sites[j].id]
    }
    _add_shed_levels(model, fleet, sorted(set(level_of.values())), max_ai_kw)

    def mining_kw(m, j):
        return sum(profiles[item_q[i]].meter_kw * m.run[i] for i in items_of[j])

    def cap_rule(m, j):
        site_id, p = sites[j].id, int(period[j])
        ai = m.ai_load_kw[site_id, p] - (m.shed_total_kw[level_of[j]] if j in level_of else 0.0) if has_ai[j] else 0.0
        return mining_kw(m, j) + ai <= float(cap_kw[j])

    with_racks = [j for j in range(len(slot_k)) if items_of[j]]
    model.CAP_SLOTS = pyo.Set(initialize=[j for j in with_racks if np.isfinite(cap_kw[j])], ordered=True)
    model.DR_SLOTS = pyo.Set(initialize=[j for j in with_racks if called[j]], ordered=True)
    model.cap = pyo.Constraint(model.CAP_SLOTS, rule=cap_rule)
    model.dr_drop = pyo.Constraint(
        model.DR_SLOTS,
        rule=lambda m, j: (
            mining_kw(m, j) <= m.mining_kw[sites[j].id, int(period[j])] - m.dr_mw[sites[j].id] * KW_PER_MW
        ),
    )

    terms: dict[int, list] = {}
    for i, j in enumerate(item_j):
        terms.setdefault(int(slot_s[j]), []).append(float(margin[i] * discount[j]) * model.run[i])
    step_mwh_per_kw = fleet.horizon.step_hours / KW_PER_MW
    penalty = {o.id: o.sla_penalty_usd_per_mwh for o in fleet.lease_offers}
    shed_cost: dict[tuple, float] = {}  # (scenario, level, offer) -> PV USD per kW shed, summed over steps
    for j, level in level_of.items():
        site = sites[j]
        lost_pass_through = site.contract.price_usd_per_mwh - resale[j] if site.contract.resells else 0.0
        for o in model.SHED_OFFERS[level]:
            key = (int(slot_s[j]), level, o)
            cost = step_mwh_per_kw * (penalty[o] / site.pue_ai + lost_pass_through) * discount[j]
            shed_cost[key] = shed_cost.get(key, 0.0) + cost
    for (w, level, o), cost in shed_cost.items():
        terms.setdefault(w, []).append(-cost * model.shed_kw[(*level, o)])
    return {w: pyo.quicksum(parts) for w, parts in terms.items()}


def _add_shed_levels(model: pyo.ConcreteModel, fleet: Fleet, levels: list, max_ai_kw: dict[str, float]) -> None:
    """Per (site, cap level, period): shed AI = max(0, AI load - cap) exactly, split across the site's offers."""
    model.LEVELS = pyo.Set(initialize=levels, dimen=3, ordered=True)
    model.ai_over_cap = pyo.Var(model.LEVELS, domain=pyo.Binary)  # 1: the AI load exceeds the cap
    offers_at = {s.id: sorted({o for (o, ss, _) in model.LEASES if ss == s.id}) for s in fleet.sites}
    model.SHED_OFFERS = pyo.Set(model.LEVELS, initialize=lambda m, s, c, p: offers_at[s])
    index = [(s, c, p, o) for (s, c, p) in levels for o in offers_at[s]]
    model.SHED = pyo.Set(initialize=index, dimen=4, ordered=True)
    model.shed_kw = pyo.Var(model.SHED, domain=pyo.NonNegativeReals)  # AI load shed per offer, at the meter
    terms = model.grid_info
    lease_live = lease_terms(fleet, terms.grid)
    model.shed_within_lease = pyo.Constraint(
        model.SHED,
        rule=lambda m, s, c, p, o: (
            m.shed_kw[s, c, p, o]
            <= sum(
                m.lease_mw[oo, ss, k]
                for (oo, ss, k) in m.LEASES
                if oo == o and ss == s and lease_live[oo, ss, k].live(p)
            )
            * fleet.site(s).pue_ai
            * KW_PER_MW
        ),
    )
    model.shed_total_kw = pyo.Expression(
        model.LEVELS, rule=lambda m, s, c, p: sum(m.shed_kw[s, c, p, o] for o in m.SHED_OFFERS[s, c, p])
    )
    model.ai_fits_after_shed = pyo.Constraint(
        model.LEVELS, rule=lambda m, s, c, p: m.ai_load_kw[s, p] - m.shed_total_kw[s, c, p] <= c
    )
    # over = 0: nothing shed (so AI <= cap); over = 1: shed <= AI - cap, hence exactly AI - cap (so AI >= cap)
    model.shed_only_excess = pyo.Constraint(
        model.LEVELS,
        rule=lambda m, s, c, p: m.shed_total_kw[s, c, p] <= m.ai_load_kw[s, p] - c * m.ai_over_cap[s, c, p],
    )
    model.shed_only_if_over = pyo.Constraint(
        model.LEVELS, rule=lambda m, s, c, p: m.shed_total_kw[s, c, p] <= (max_ai_kw[s] - c) * m.ai_over_cap[s, c, p]
    )


def _weights(weights: np.ndarray | None, n_scen: int) -> np.ndarray:
    return np.full(n_scen, 1.0 / n_scen) if weights is None else np.asarray(weights, dtype=float)


def extract_allocation(model: pyo.ConcreteModel, fleet: Fleet) -> Allocation:
    """The first-stage decisions of a solved model."""
    grid = model.grid_info.grid
    lifecycles = {}
    for g, group in enumerate(fleet.rack_groups):
        counts = {
            grid.lifecycles[g][ell].key: int(round(pyo.value(model.x[g, ell]))) for gg, ell in model.GL if gg == g
        }
        lifecycles[group.id] = {key: n for key, n in counts.items() if n}
    starts = {s: k for (s, k) in model.STARTS if pyo.value(model.convert_at[s, k]) > 0.5}
    lease = {(o, s): float(pyo.value(model.lease_mw[o, s, k])) for (o, s, k) in model.LEASES if starts.get(s) == k}
    lease = {key: mw for key, mw in lease.items() if mw > INTEGRALITY_TOL}
    dr = {s: float(pyo.value(model.dr_mw[s])) for s in model.DR_SITES}
    dr = {k: v for k, v in dr.items() if v > INTEGRALITY_TOL}
    bought = {grid.purchase_lots[b].key: int(round(pyo.value(model.buy[b]))) for b in model.B}
    return Allocation.from_lifecycles(
        fleet,
        grid,
        lifecycles,
        conversion_start=starts,
        lease_mw=lease,
        dr_mw=dr,
        purchases={k: v for k, v in bought.items() if v},
    )


def fix_allocation(model: pyo.ConcreteModel, fleet: Fleet, allocation: Allocation) -> None:
    """Fix every first-stage variable to the allocation (what-if evaluation, tests against the dispatch LP)."""
    grid = model.grid_info.grid
    counts = allocation.lifecycle_counts(fleet)
    for g, ell in model.GL:
        model.x[g, ell].fix(counts.get(fleet.rack_groups[g].id, {}).get(grid.lifecycles[g][ell].key, 0))
    for b in model.B:
        model.buy[b].fix(allocation.purchases.get(grid.purchase_lots[b].key, 0))
    for s in model.AI_SITES:
        model.convert[s].fix(int(s in allocation.converted_sites))
    for s, k in model.STARTS:
        model.convert_at[s, k].fix(int(s in allocation.converted_sites and allocation.start_option(s) == k))
    for o in model.OFFERS:
        model.accept[o].fix(int(allocation.offer_mw(o) > 0))
    for o, s, k in model.LEASES:
        model.lease_mw[o, s, k].fix(allocation.lease_mw.get((o, s), 0.0) if allocation.start_option(s) == k else 0.0)
    for s in model.DR_SITES:
        model.dr_mw[s].fix(allocation.site_dr_mw(s))
