"""The textbook extensive form: an explicit dispatch variable per group, step and scenario.

It exists to prove the compact model exact (tests, bench): same first stage and risk
objective, but the second stage is the hourly dispatch itself, built from the raw price
paths rather than from precomputed per-rack sums, with every curtailment cap and
demand-response call written out step by step, and power contracts written as cash flows
(take-or-pay: the fixed payment for the block, resale of every MWh not drawn, tenants paying
the contract price for what they draw) instead of the compact model's marginal-cost split.
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo

from optimizer.allocation import Mode
from optimizer.constants import HOURS_PER_DAY, KW_PER_MW
from optimizer.fleet import ContractType, Fleet, RiskSettings, Site
from optimizer.formulation import add_first_stage, add_risk_objective
from optimizer.scenarios import ScenarioSet


def build_extensive_model(fleet: Fleet, scenarios: ScenarioSet, risk: RiskSettings) -> pyo.ConcreteModel:
    model = pyo.ConcreteModel(name="hashpivot_extensive")
    add_first_stage(model, fleet)
    model.S = pyo.RangeSet(0, scenarios.n_scenarios - 1)
    model.T = pyo.RangeSet(0, scenarios.n_steps - 1)
    groups = fleet.rack_groups
    hours = scenarios.step_hours
    # Running racks, a continuous count per (group, scenario, step), at most the racks put to mining.
    model.run = pyo.Var(model.G, model.S, model.T, domain=pyo.NonNegativeReals)
    model.run_limit = pyo.Constraint(
        model.G, model.S, model.T, rule=lambda m, g, w, t: m.run[g, w, t] <= m.x[g, Mode.MINE.value]
    )
    hashprice_usd_per_th_step = scenarios.hashprice_usd_per_ph_day / 1_000 / HOURS_PER_DAY * hours
    revenue = [fleet.rack_hashrate_ths(g) * hashprice_usd_per_th_step * (1.0 - fleet.pool_fee_fraction) for g in groups]
    meter_kw = [fleet.rack_power_kw(g) * fleet.site(g.site).pue_mining for g in groups]
    days = scenarios.n_steps * hours / HOURS_PER_DAY
    opex = sum(g.opex_usd_per_rack_day * days * model.x[i, Mode.MINE.value] for i, g in enumerate(groups))
    profit_terms = {
        w: [-opex, sum(float(revenue[i][w, t]) * model.run[i, w, t] for i in model.G for t in model.T)] for w in model.S
    }

    model.sites = pyo.Block([s.id for s in fleet.sites])
    for site in fleet.sites:
        members = [i for i, g in enumerate(groups) if g.site == site.id]
        block = model.sites[site.id]
        mining_kw = {(w, t): sum(meter_kw[i] * model.run[i, w, t] for i in members) for w in model.S for t in model.T}
        served_ai_kw = _add_site_limits(model, block, fleet, site, scenarios, mining_kw)
        for w in model.S:
            profit_terms[w].extend(_site_cash_usd(model, block, fleet, site, scenarios, w, mining_kw, served_ai_kw))

    model.profit = pyo.Var(model.S, domain=pyo.Reals)
    model.profit_def = pyo.Constraint(
        model.S, rule=lambda m, w: m.profit[w] == m.first_stage_usd + sum(profit_terms[w])
    )
    add_risk_objective(model, risk, np.full(scenarios.n_scenarios, 1.0 / scenarios.n_scenarios))
    return model


def _add_site_limits(model, block, fleet: Fleet, site: Site, scenarios: ScenarioSet, mining_kw) -> dict:
    """Caps of curtailment events (AI first, shed only the excess) and demand-response drops, step by step.

    Returns the AI load served per (scenario, step), in kW at the meter.
    """
    hours = scenarios.step_hours
    fraction = scenarios.available_fraction(site.market)
    live = [site.ai is not None and t * hours >= site.ai.lead_time_days * HOURS_PER_DAY for t in model.T]
    offers = [o.id for o in fleet.lease_offers if site.id in o.sites]
    ai_kw = model.ai_load_kw[site.id] if site.ai is not None else 0.0
    # an upper bound on the AI load for the big-M: all the offers at their maximum, at the meter
    ai_bound_kw = sum(o.max_mw for o in fleet.lease_offers if site.id in o.sites) * site.pue_ai * KW_PER_MW
    events = [(w, t) for w in model.S for t in model.T if fraction[w, t] < 1.0]
    shed_steps = [(w, t) for (w, t) in events if live[t] and offers]
    block.over = pyo.Var(shed_steps, domain=pyo.Binary)  # 1: the AI load exceeds the cap in that step
    block.shed_kw = pyo.Var([(o, w, t) for (w, t) in shed_steps for o in offers], domain=pyo.NonNegativeReals)
    block.shed_within_lease = pyo.Constraint(
        list(block.shed_kw.index_set()),
        rule=lambda b, o, w, t: b.shed_kw[o, w, t] <= model.lease_mw[o, site.id] * site.pue_ai * KW_PER_MW,
    )
    served = {}
    for w in model.S:
        for t in model.T:
            shed = sum(block.shed_kw[o, w, t] for o in offers) if (w, t) in block.over.index_set() else 0.0
            served[w, t] = (ai_kw - shed) if live[t] else 0.0
    cap = {(w, t): float(fraction[w, t]) * site.capacity_mw * KW_PER_MW for (w, t) in events}
    block.cap = pyo.Constraint(events, rule=lambda b, w, t: mining_kw[w, t] + served[w, t] <= cap[w, t])
    block.shed_only_excess = pyo.Constraint(
        shed_steps, rule=lambda b, w, t: ai_kw - served[w, t] <= ai_kw - cap[w, t] + ai_bound_kw * (1 - b.over[w, t])
    )
    block.shed_only_if_over = pyo.Constraint(
        shed_steps, rule=lambda b, w, t: ai_kw - served[w, t] <= ai_bound_kw * b.over[w, t]
    )
    if site.demand_response is not None:
        calls = scenarios.dr_called(site.market)
        planned_kw = sum(
            model.x[i, Mode.MINE.value] * fleet.rack_power_kw(g) * site.pue_mining
            for i, g in enumerate(fleet.rack_groups)
            if g.site == site.id
        )
        called = [(w, t) for w in model.S for t in model.T if calls[w, t]]
        block.dr_drop = pyo.Constraint(
            called, rule=lambda b, w, t: mining_kw[w, t] <= planned_kw - model.dr_mw[site.id] * KW_PER_MW
        )
    return served


def _site_cash_usd(model, block, fleet: Fleet, site: Site, scenarios: ScenarioSet, w: int, mining_kw, served) -> list:
    """The site's power cash flows and SLA penalties in scenario w."""
    hours = scenarios.step_hours
    mwh_per_kw = hours / KW_PER_MW
    spot = scenarios.power_price(site.market)[w]
    contract = site.contract
    terms = []
    if contract.type is ContractType.TAKE_OR_PAY:
        block_mw = site.capacity_mw
        terms.append(-contract.price_usd_per_mwh * block_mw * hours * scenarios.n_steps)
        for t in model.T:
            drawn_kw = mining_kw[w, t] + served[w, t]
            sold_mwh = block_mw * hours - drawn_kw * mwh_per_kw
            terms.append(float(spot[t] - contract.resale_fee_usd_per_mwh) * sold_mwh)
            if site.ai is not None:
                terms.append(contract.price_usd_per_mwh * mwh_per_kw * served[w, t])  # tenant pays for its power
    else:
        price = spot + contract.adder_usd_per_mwh if contract.type is ContractType.INDEX else contract.price_usd_per_mwh
        price = np.broadcast_to(price, spot.shape)
        # lease power is bought and billed to the tenant at the same price: it nets to zero
        terms.extend(-float(price[t]) * mwh_per_kw * mining_kw[w, t] for t in model.T)
    penalty = {o.id: o.sla_penalty_usd_per_mwh for o in fleet.lease_offers}
    for o, ww, t in block.shed_kw.index_set():
        if ww == w:
            terms.append(-penalty[o] * mwh_per_kw / site.pue_ai * block.shed_kw[o, ww, t])
    return terms
