"""What report.html says to a board, as plain data for the template: the decision in one paragraph,
the allocation with the value of each mode per rack, per-site P&L, offers taken and declined with
why, risk figures, the fleet inputs, footnotes, and the comparison with a previous plan.

Pure: numbers from the fleet and the PlanResult (and the previous plan.json), no I/O, no solve.
"""

from __future__ import annotations

import yaml

from optimizer.allocation import lease_net_pv_usd_per_mw, lease_terms
from optimizer.constants import KW_PER_MW
from optimizer.fleet import Fleet
from optimizer.lifecycles import plan_grid
from optimizer.modes import Mode
from optimizer.plan_result import PlanResult
from optimizer.rack_values import RackValues, rack_values

FOOTNOTES = {
    "values": "Value of one rack over the horizon in each mode. Mining: expected hash revenue minus power at the "
    "dispatch the plan runs (curtailed when power costs more than the rack earns) minus mining opex. AI: rent of "
    "the IT kW the rack's slot gives once converted, at the best offer that may use the site, from the end of the "
    "conversion lead time, minus the horizon's share of the per-MW conversion capex; the site's fixed conversion "
    "capex is paid once per site and sits in the site's P&L, not here. Idle: minus the idle cost. The plan puts "
    "racks where they are worth most subject to site capacity, AI blocks, offer bounds and the capital budget, so "
    "a group may take a mode that is not its best alone.",
    "power": "Power cost is the cash paid for power net of what AI tenants pay for theirs. Under a take-or-pay "
    "contract it is the payment for the whole block, used or not; the resale column is what the MWh not drawn "
    "earned back at spot minus the resale fee.",
    "capacity": "Value of one more MW at a site: the change in the optimal risk objective when the site's grid "
    "capacity grows by that much, re-optimised on the same scenarios. At a take-or-pay site part of it is resale of "
    "the extra block at spot, which is worth most during storms and price spikes.",
    "breakeven": "Breakeven power price: the price above which a mining rack of the group loses money in an hour, "
    "at the expected hashprice, the site's mining PUE and the pool fee.",
    "profit": "NPV = hash revenue - power + resale + demand-response credit - opex and idle cost + lease rent "
    "+ terminal value (rent past the horizon) - conversion capex (paid along the build, net of tenant funding) "
    "+ machine sales and end-of-horizon value - moves - machines bought - SLA penalties: expected present values "
    "at the plan's start (see the money basis above).",
    "ties": "Rack groups that are interchangeable (same site, machine, racks size, opex, idle cost and "
    "convertibility) are dealt racks in fleet-file order: the group listed first mines first.",
}


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    rounded = round(value)
    return f"-${-rounded:,.0f}" if rounded < 0 else f"${rounded:,.0f}"


def _per_mw(value: float, rack_kw: float) -> float:
    return value / (rack_kw / KW_PER_MW)


def offer_rows(fleet: Fleet, plan: PlanResult, values: dict[str, RackValues]) -> list[dict]:
    """Every lease offer: taken or declined, MW per site, and why in $ per MW (present values over the lease)."""
    grid = plan_grid(fleet)
    results = {o.offer: o for o in plan.offers}
    alloc = {g.group: g for g in plan.allocation}
    rows = []
    for offer in fleet.lease_offers:
        result = results.get(offer.id)
        reasons, compare = [], []
        for site_id in offer.sites:
            site = fleet.site(site_id)
            best = lease_net_pv_usd_per_mw(fleet, grid, offer.id, site_id)
            if best is None:
                compare.append(f"{site_id}: no start option is ready by the offer's start_by")
                continue
            net, start = best
            groups = [g for g in fleet.rack_groups if g.site == site_id and fleet.can_convert(g) and g.racks]
            if not groups:
                compare.append(f"{site_id}: no convertible racks")
                continue
            mining = {g.id: _per_mw(values[g.id].mine_usd, fleet.rack_power_kw(g)) for g in groups}
            cheapest = min(mining, key=lambda gid: (mining[gid], gid))
            compare.append(
                f"{site_id}: rent net of per-MW capex {_usd(net)}/MW vs mining {_usd(mining[cheapest])}/MW "
                f"on the least valuable convertible racks ({cheapest})"
            )
            if net <= mining[cheapest]:
                reasons.append(f"at {site_id} mining earns more per MW than the lease")
                continue
            fixed = site.ai.fixed_capex_usd * lease_terms(fleet, grid)[offer.id, site_id, start].capex_factor
            block = max(offer.min_mw, site.ai.min_mw)
            if block * (net - mining[cheapest]) < fixed:
                reasons.append(
                    f"at {site_id} the margin over mining on the {block:g} MW minimum block "
                    f"({_usd(block * (net - mining[cheapest]))}) does not cover the fixed conversion capex "
                    f"({_usd(fixed)})"
                )
            budget = fleet.capital_budget_usd
            if budget is not None and site.ai.fixed_capex_usd + site.ai.capex_usd_per_mw * block > budget:
                reasons.append(f"the capital budget {_usd(budget)} does not cover the {block:g} MW block at {site_id}")
        taken = bool(result and result.accepted)
        if taken:
            converted = [g for g in alloc.values() if g.site in offer.sites and g.racks_ai]
            why = "; ".join(compare) + (f"; converts {sum(g.racks_ai for g in converted):,} racks" if converted else "")
        else:
            why = "; ".join(reasons) or (
                "worth more than mining per MW, but site capacity or other offers use the convertible slots better"
            )
            why += " (" + "; ".join(compare) + ")" if compare and reasons else ""
        rows.append(
            {
                "offer": offer.id,
                "rate": offer.rate_usd_per_kw_month,
                "term_months": offer.term_months,
                "bounds": f"{offer.min_mw:g}-{offer.max_mw:g} MW",
                "sites": ", ".join(offer.sites),
                "taken": taken,
                "mw": result.mw if result else 0.0,
                "mw_by_site": ", ".join(f"{s} {mw:.2f} MW" for s, mw in (result.mw_by_site if result else {}).items()),
                "why": why,
            }
        )
    return rows


def decision_paragraph(fleet: Fleet, plan: PlanResult, offers: list[dict]) -> str:
    totals = plan.totals()
    mine, ai, idle = totals[Mode.MINE], totals[Mode.AI], totals[Mode.IDLE]
    sold, moved = totals[Mode.SELL], totals[Mode.MOVE]
    mining_mw = sum(s.mining_mw for s in plan.sites)
    ai_mw = sum(s.ai_mw for s in plan.sites)
    taken = [o for o in offers if o["taken"]]
    declined = [o for o in offers if not o["taken"]]
    parts = [f"Mine with {mine:,} of {fleet.total_racks:,} racks ({mining_mw:,.1f} MW at the meter)"]
    if ai:
        converted = ", ".join(s.site for s in plan.ai_sites if s.converted)
        leases = ", ".join(f"{o['offer']} ({o['mw']:.1f} MW at ${o['rate']:g}/kW-month)" for o in taken)
        parts.append(f"convert {ai:,} racks ({ai_mw:,.1f} MW of IT) at {converted} to AI/HPC leased to {leases}")
    if sold:
        parts.append(f"sell {sold:,} racks")
    if moved:
        parts.append(f"move {moved:,} racks to other sites")
    parts.append(f"idle {idle:,}" if idle else "idle none")
    p = plan.profit
    text = ", ".join(parts[:-1]) + f" and {parts[-1]}. "
    text += (
        f"Over the {plan.horizon_days}-day horizon from {fleet.horizon.start} the plan is worth "
        f"{_usd(p['mean_usd'])} in expectation ({plan.money_basis or 'nominal'}; 1 in 20 scenarios below "
        f"{_usd(p['p5_usd'])}; mean of the worst {1 - p['alpha']:.0%}: "
        f"{_usd(p['cvar_usd'])}) at an expected hashprice of ${plan.expected_hashprice_usd_per_ph_day:.2f}/PH/day."
    )
    rob = plan.robustness
    if rob is not None:
        s = rob.plan("stochastic")
        vss = rob.value_of_stochastic_solution_usd.estimate_usd
        text += (
            f" Scored on {rob.out_of_sample_scenarios} fresh scenarios it earns {_usd(s.mean_profit_usd.estimate_usd)}"
            + (
                f" and beats a plan made on average prices by {_usd(vss)} in the objective."
                if abs(vss) >= 0.5
                else " and does exactly as well as a plan made on average prices (here the uncertainty does not"
                " change the decision)."
            )
        )
    if declined:
        text += " Declined: " + "; ".join(f"{o['offer']} ({o['why'].split(' (')[0]})" for o in declined) + "."
    return text


def allocation_by_site(fleet: Fleet, plan: PlanResult, values: dict[str, RackValues]) -> list[dict]:
    out = []
    for site in fleet.sites:
        rows = []
        for g in plan.allocation:
            if g.site != site.id:
                continue
            v = values[g.group]
            chosen = max(((m.value, getattr(g, f"racks_{m.value}")) for m in Mode), key=lambda kv: kv[1])[0]
            rows.append({"g": g, "v": v, "best": v.best_mode(), "chosen": chosen})
        out.append({"site": site, "rows": rows, "breakdown": next((s for s in plan.sites if s.site == site.id), None)})
    return out


def fleet_inputs(fleet: Fleet) -> dict:
    data = fleet.model_dump(mode="json")
    return {
        "yaml": yaml.safe_dump(data, sort_keys=False, width=110),
        "sites": fleet.sites,
        "machines": fleet.machines,
        "groups": fleet.rack_groups,
        "offers": fleet.lease_offers,
        "markets": fleet.markets,
        "bitcoin": fleet.bitcoin,
        "fleet": fleet,
    }


def board_context(fleet: Fleet, plan: PlanResult, previous: dict | None = None) -> dict:
    values = {v.group: v for v in rack_values(fleet, plan)}
    offers = offer_rows(fleet, plan, values)
    compare = None
    if previous is not None:
        from services.plan_diff import diff_plans, move_text
        from services.tables import plan_json

        diff = diff_plans(previous, plan_json(plan, fleet), "previous", "this plan")
        compare = {"diff": diff, "move_text": move_text}
    return {
        "decision": decision_paragraph(fleet, plan, offers),
        "sites": allocation_by_site(fleet, plan, values),
        "offers": offers,
        "inputs": fleet_inputs(fleet),
        "footnotes": FOOTNOTES,
        "compare": compare,
        "profit": plan.profit,
    }
