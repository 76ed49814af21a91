"""The textbook extensive form: an explicit dispatch variable per profile, step and scenario.

It exists to prove the compact model exact (tests, bench): same first stage and risk objective,
but the second stage is the dispatch itself, built from the raw price paths rather than from
precomputed per-rack period sums: every step's revenue and cost discounted on its own, running
racks bounded by the racks present in the step's period, every curtailment cap and demand-response
call written out step by step, opex and idle costs per step, machine sales and salvage priced from
the hashprice path, and power contracts written as cash flows (take-or-pay: the fixed payment for
the block, resale of every MWh not drawn, tenants paying the contract price for what they draw)
instead of the compact model's marginal-cost split.
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo

from optimizer.allocation import lease_terms
from optimizer.constants import HOURS_PER_DAY, HOURS_PER_YEAR, KW_PER_MW
from optimizer.fleet import ContractType, Fleet, RiskSettings, Site
from optimizer.formulation import add_first_stage, add_risk_objective
from optimizer.lifecycles import purchase_price_usd, purchase_resale_usd, rack_resale_usd
from optimizer.scenarios import ScenarioSet


def build_extensive_model(fleet: Fleet, scenarios: ScenarioSet, risk: RiskSettings) -> pyo.ConcreteModel:
    model = pyo.ConcreteModel(name="hashpivot_extensive")
    add_first_stage(model, fleet)
    grid = model.grid_info.grid
    timeline = grid.timeline
    model.S = pyo.RangeSet(0, scenarios.n_scenarios - 1)
    model.T = pyo.RangeSet(0, scenarios.n_steps - 1)
    hours = scenarios.step_hours
    discount = timeline.step_discount()
    period = timeline.period_of_step(np.arange(scenarios.n_steps))
    profiles = grid.profiles
    # Running racks, a continuous count per (profile, scenario, step), at most the racks present.
    model.run = pyo.Var(model.Q, model.S, model.T, domain=pyo.NonNegativeReals)
    model.run_limit = pyo.Constraint(
        model.Q, model.S, model.T, rule=lambda m, q, w, t: m.run[q, w, t] <= m.present[q, int(period[t])]
    )
    hashprice_usd_per_th_step = scenarios.hashprice_usd_per_ph_day / 1_000 / HOURS_PER_DAY * hours
    revenue = [p.hashrate_ths * hashprice_usd_per_th_step * (1.0 - fleet.pool_fee_fraction) for p in profiles]
    step_days = discount * hours / HOURS_PER_DAY
    opex = sum(
        p.opex_usd_per_rack_day * float(step_days[t]) * model.present[q, int(period[t])]
        for q, p in enumerate(profiles)
        for t in model.T
    )
    profit_terms = {
        w: [-opex, *_machine_cash(model, fleet, scenarios, w)]
        + [float(revenue[q][w, t] * discount[t]) * model.run[q, w, t] for q in model.Q for t in model.T]
        for w in model.S
    }

    model.sites = pyo.Block([s.id for s in fleet.sites])
    for n, site in enumerate(fleet.sites):
        members = [q for q, p in enumerate(profiles) if p.site == n]
        block = model.sites[site.id]
        mining_kw = {
            (w, t): sum(profiles[q].meter_kw * model.run[q, w, t] for q in members) for w in model.S for t in model.T
        }
        served_ai_kw = _add_site_limits(model, block, fleet, site, scenarios, mining_kw, period)
        for w in model.S:
            profit_terms[w].extend(
                _site_cash_usd(model, block, fleet, site, scenarios, w, mining_kw, served_ai_kw, discount)
            )

    model.profit = pyo.Var(model.S, domain=pyo.Reals)
    model.profit_def = pyo.Constraint(
        model.S, rule=lambda m, w: m.profit[w] == m.first_stage_usd + sum(profit_terms[w])
    )
    add_risk_objective(model, risk, np.full(scenarios.n_scenarios, 1.0 / scenarios.n_scenarios))
    return model


def _daily_hashprice(scenarios: ScenarioSet, w: int, step: int) -> float:
    per_day = max(1, int(HOURS_PER_DAY // scenarios.step_hours))
    start = min(step, scenarios.n_steps - per_day)
    return float(scenarios.hashprice_usd_per_ph_day[w, start : start + per_day].mean())


def _machine_cash(model, fleet: Fleet, scenarios: ScenarioSet, w: int) -> list:
    """Idle costs, sales, salvage, moves and purchases of scenario w, priced step by step from its paths."""
    grid = model.grid_info.grid
    timeline = grid.timeline
    hours = scenarios.step_hours
    bounds = timeline.bounds
    first_day = _daily_hashprice(scenarios, w, 0)
    end = scenarios.n_steps

    def at(boundary: int) -> float:
        """Resale price ratio times discount at a period boundary."""
        step = int(bounds[boundary])
        ratio = _daily_hashprice(scenarios, w, step) / first_day
        return ratio * (1 + fleet.finance.discount_rate_per_year) ** (-step * hours / HOURS_PER_YEAR)

    def discount(step: int) -> float:
        return (1 + fleet.finance.discount_rate_per_year) ** (-step * hours / HOURS_PER_YEAR)

    terms = []
    for g, options in enumerate(grid.lifecycles):
        group, resale = fleet.rack_groups[g], rack_resale_usd(fleet, g)
        for ell, life in enumerate(options):
            cash = 0.0
            if life.idle is not None:
                first, stop = int(bounds[life.idle[0]]), int(bounds[life.idle[1]])
                cash -= group.idle_cost_usd_per_rack_day * sum(discount(t) for t in range(first, stop)) * hours / 24
            if life.sold_at is not None:
                cash += resale * at(life.sold_at)
            if life.kept:
                cash += resale * _daily_hashprice(scenarios, w, end) / first_day * discount(end)
            if life.moved_at is not None:
                cash -= fleet.moves.cost_usd_per_rack * discount(int(bounds[life.moved_at]))
            if cash:
                terms.append(cash * model.x[g, ell])
    for b, lot in enumerate(grid.purchase_lots):
        end_ratio = _daily_hashprice(scenarios, w, end) / first_day
        salvage = purchase_resale_usd(fleet, grid, lot) * end_ratio * discount(end)
        price = purchase_price_usd(fleet, lot.option) * discount(int(bounds[lot.ordered_at]))
        terms.append((salvage - price) * model.buy[b])
    return terms


def _live_lease_mw(model, fleet: Fleet, site: Site, p: int) -> dict[str, object]:
    """Offer -> leased MW live at the site in period p."""
    terms = lease_terms(fleet, model.grid_info.grid)
    out: dict[str, object] = {}
    for (o, s, k), term in terms.items():
        if s == site.id and term.live(p):
            out[o] = out.get(o, 0.0) + model.lease_mw[o, s, k]
    return out


def _add_site_limits(model, block, fleet: Fleet, site: Site, scenarios: ScenarioSet, mining_kw, period) -> dict:
    """Caps of curtailment events (AI first, shed only the excess) and demand-response drops, step by step.

    Returns the AI load served per (scenario, step), in kW at the meter.
    """
    fraction = scenarios.available_fraction(site.market)
    live_mw = {p: _live_lease_mw(model, fleet, site, p) for p in set(period.tolist())}
    ai_kw = {t: sum(live_mw[int(period[t])].values()) * site.pue_ai * KW_PER_MW for t in model.T}
    offers_at = {t: sorted(live_mw[int(period[t])]) for t in model.T}
    # an upper bound on the AI load for the big-M: all the offers at their maximum, at the meter
    ai_bound_kw = sum(o.max_mw for o in fleet.lease_offers if site.id in o.sites) * site.pue_ai * KW_PER_MW
    events = [(w, t) for w in model.S for t in model.T if fraction[w, t] < 1.0]
    shed_steps = [(w, t) for (w, t) in events if offers_at[t]]
    block.over = pyo.Var(shed_steps, domain=pyo.Binary)  # 1: the AI load exceeds the cap in that step
    block.shed_kw = pyo.Var([(o, w, t) for (w, t) in shed_steps for o in offers_at[t]], domain=pyo.NonNegativeReals)
    block.shed_within_lease = pyo.Constraint(
        list(block.shed_kw.index_set()),
        rule=lambda b, o, w, t: b.shed_kw[o, w, t] <= live_mw[int(period[t])][o] * site.pue_ai * KW_PER_MW,
    )
    served = {}
    for w in model.S:
        for t in model.T:
            shed = sum(block.shed_kw[o, w, t] for o in offers_at[t]) if (w, t) in block.over.index_set() else 0.0
            served[w, t] = ai_kw[t] - shed
    cap = {(w, t): float(fraction[w, t]) * site.capacity_mw * KW_PER_MW for (w, t) in events}
    block.cap = pyo.Constraint(events, rule=lambda b, w, t: mining_kw[w, t] + served[w, t] <= cap[w, t])
    block.shed_only_excess = pyo.Constraint(
        shed_steps,
        rule=lambda b, w, t: ai_kw[t] - served[w, t] <= ai_kw[t] - cap[w, t] + ai_bound_kw * (1 - b.over[w, t]),
    )
    block.shed_only_if_over = pyo.Constraint(
        shed_steps, rule=lambda b, w, t: ai_kw[t] - served[w, t] <= ai_bound_kw * b.over[w, t]
    )
    if site.demand_response is not None:
        calls = scenarios.dr_called(site.market)
        called = [(w, t) for w in model.S for t in model.T if calls[w, t]]
        block.dr_drop = pyo.Constraint(
            called,
            rule=lambda b, w, t: (
                mining_kw[w, t] <= model.mining_kw[site.id, int(period[t])] - model.dr_mw[site.id] * KW_PER_MW
            ),
        )
    return served


def _site_cash_usd(
    model, block, fleet: Fleet, site: Site, scenarios: ScenarioSet, w: int, mining_kw, served, discount
) -> list:
    """The site's power cash flows and SLA penalties in scenario w, each step discounted."""
    hours = scenarios.step_hours
    mwh_per_kw = hours / KW_PER_MW
    spot = scenarios.power_price(site.market)[w]
    contract = site.contract
    terms = []
    if contract.type is ContractType.TAKE_OR_PAY:
        block_mw = site.capacity_mw
        terms.append(-contract.price_usd_per_mwh * block_mw * hours * float(discount.sum()))
        for t in model.T:
            d = float(discount[t])
            drawn_kw = mining_kw[w, t] + served[w, t]
            sold_mwh = block_mw * hours - drawn_kw * mwh_per_kw
            terms.append(float(spot[t] - contract.resale_fee_usd_per_mwh) * d * sold_mwh)
            if site.ai is not None:
                terms.append(contract.price_usd_per_mwh * d * mwh_per_kw * served[w, t])  # tenant pays for its power
        terms.extend(_tenant_power_past_horizon(model, fleet, site, scenarios, w))
    else:
        price = spot + contract.adder_usd_per_mwh if contract.type is ContractType.INDEX else contract.price_usd_per_mwh
        price = np.broadcast_to(price, spot.shape)
        # lease power is bought and billed to the tenant at the same price: it nets to zero
        terms.extend(-float(price[t] * discount[t]) * mwh_per_kw * mining_kw[w, t] for t in model.T)
    penalty = {o.id: o.sla_penalty_usd_per_mwh for o in fleet.lease_offers}
    for o, ww, t in block.shed_kw.index_set():
        if ww == w:
            terms.append(-penalty[o] * float(discount[t]) * mwh_per_kw / site.pue_ai * block.shed_kw[o, ww, t])
    return terms


def _tenant_power_past_horizon(model, fleet: Fleet, site: Site, scenarios: ScenarioSet, w: int) -> list:
    """Take-or-pay past the horizon: each leased MW still draws, priced at the last year's mean resale."""
    if site.ai is None:
        return []
    last_year = max(1, int(HOURS_PER_YEAR // scenarios.step_hours))
    resale = scenarios.power_price(site.market)[w, -last_year:] - site.contract.resale_fee_usd_per_mwh
    net = site.contract.price_usd_per_mwh - float(resale.mean())
    terms = lease_terms(fleet, model.grid_info.grid)
    return [
        site.pue_ai * term.tail_hours_pv * net * model.lease_mw[o, s, k]
        for (o, s, k), term in terms.items()
        if s == site.id
    ]
