"""A first-stage plan (racks per mode, AI conversion, leases, demand-response MW) and what it earns per scenario.

Evaluating an allocation is plain numpy on the per-rack economics; it does not touch the MIP,
so it doubles as an independent check of the model's profit variables.

Coupled steps (a curtailment cap or a demand-response call at a site, optimizer.economics) are
evaluated exactly by the rules the dispatch LP obeys at its optimum:
- AI load has priority: it loses max(0, AI load - cap), shed from the lowest SLA penalty first;
  mining may draw max(0, cap - AI load), and at a demand-response call at most its planned load
  minus the committed MW.
- Mining dispatch in the step is then a continuous knapsack (racks may run fractionally, as in the
  LP): fill the allowance with the racks of highest margin per kW first. That greedy order is
  optimal for a continuous knapsack (Dantzig 1957); removing the worst margins first at a call is the
  same rule seen from the other side.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from optimizer.constants import KW_PER_MW
from optimizer.economics import NO_SITE, GroupEconomics, rack_meter_kw
from optimizer.fleet import Fleet, LeaseOffer, RackGroup, Site, lease_months

# Shed AI below this counts no lost hour: a lease sized exactly at a cap leaves float dust, not an outage.
LOST_LOAD_TOL_KW = 1e-6


class Mode(enum.StrEnum):
    MINE = "mine"
    AI = "ai"
    IDLE = "idle"


MODES = tuple(Mode)


@dataclass(frozen=True)
class Allocation:
    racks: dict[str, dict[Mode, int]]  # rack group id -> mode -> count
    converted_sites: frozenset[str] = frozenset()
    lease_mw: dict[tuple[str, str], float] = field(default_factory=dict)  # (offer id, site id) -> MW
    dr_mw: dict[str, float] = field(default_factory=dict)  # site id -> committed curtailable MW (meter)

    def count(self, group_id: str, mode: Mode) -> int:
        return self.racks[group_id].get(mode, 0)

    def site_dr_mw(self, site_id: str) -> float:
        return self.dr_mw.get(site_id, 0.0)

    def offer_mw(self, offer_id: str) -> float:
        return sum(mw for (o, _), mw in self.lease_mw.items() if o == offer_id)

    def site_lease_mw(self, site_id: str) -> float:
        return sum(mw for (_, s), mw in self.lease_mw.items() if s == site_id)


def all_mining(fleet: Fleet) -> Allocation:
    return Allocation({g.id: {Mode.MINE: g.racks, Mode.AI: 0, Mode.IDLE: 0} for g in fleet.rack_groups})


def rack_ids(group: RackGroup, allocation: Allocation) -> dict[Mode, list[str]]:
    """Which racks take which mode: the group's racks in id order, mining first, then AI, then idle."""
    ids = [f"{group.id}-{k:05d}" for k in range(group.racks)]
    out, start = {}, 0
    for mode in MODES:
        n = allocation.count(group.id, mode)
        out[mode], start = ids[start : start + n], start + n
    return out


def converted_mw(fleet: Fleet, allocation: Allocation, site_id: str) -> float:
    """Critical IT capacity the converted rack slots of a site provide."""
    return sum(
        allocation.count(g.id, Mode.AI) * fleet.rack_power_kw(g) / KW_PER_MW
        for g in fleet.rack_groups
        if g.site == site_id
    )


def lease_revenue_usd_per_mw(fleet: Fleet, offer: LeaseOffer, site_id: str) -> float:
    """Rent one leased MW earns over the horizon; nothing until the site's conversion is ready."""
    conversion = fleet.site(site_id).ai
    ready_days = fleet.horizon.days * conversion.ready_fraction(fleet.horizon.days)
    return offer.rate_usd_per_kw_month * KW_PER_MW * lease_months(ready_days)


def full_capex_usd(fleet: Fleet, site_id: str, ai_mw: float) -> float:
    conversion = fleet.site(site_id).ai
    return conversion.fixed_capex_usd + conversion.capex_usd_per_mw * ai_mw


def capex_charge_usd(fleet: Fleet, site_id: str, ai_mw: float) -> float:
    """The horizon's straight-line share of the conversion capex of a converted site."""
    share = fleet.site(site_id).ai.capex_share_of_horizon(fleet.horizon.days)
    return full_capex_usd(fleet, site_id, ai_mw) * share


def idle_cost_usd_per_rack(fleet: Fleet, group: RackGroup) -> float:
    return group.idle_cost_usd_per_rack_day * fleet.horizon.days


def dr_credit_usd_per_mw(fleet: Fleet, site: Site) -> float:
    """Credit one committed demand-response MW earns over the horizon."""
    return site.demand_response.credit_usd_per_mw_month * lease_months(fleet.horizon.days)


def planned_mining_kw(fleet: Fleet, allocation: Allocation, site_id: str) -> float:
    """Mining load at the meter if every rack put to mining runs."""
    return sum(
        allocation.count(g.id, Mode.MINE) * rack_meter_kw(fleet, g) for g in fleet.rack_groups if g.site == site_id
    )


@dataclass(frozen=True)
class SiteProfits:
    """Every component of an allocation's profit per site (axis 0, fleet order) and scenario (axis 1).

    profit = hash revenue - mining power cost (marginal) - opex - idle + rent - capex charge
             + demand-response credit + block resale - block payment - AI resale forgone
             + AI pass-through - SLA penalty
    Take-or-pay terms (block, AI resale and pass-through) are zero under fixed and index contracts.
    """

    hash_revenue_usd: np.ndarray
    mining_power_cost_usd: np.ndarray  # marginal price: forgone resale under take-or-pay
    mining_energy_mwh: np.ndarray  # drawn by mining racks at the meter
    event_curtailed_mwh: np.ndarray  # energy racks with a positive margin could not draw (caps, DR calls)
    mining_opex_usd: np.ndarray
    idle_cost_usd: np.ndarray
    rent_usd: np.ndarray
    capex_charge_usd: np.ndarray
    dr_credit_usd: np.ndarray
    block_resale_usd: np.ndarray
    block_payment_usd: np.ndarray
    ai_resale_usd: np.ndarray  # resale forgone by the AI energy actually served
    ai_passthrough_usd: np.ndarray  # tenants' payment for the AI energy actually served
    lost_ai_mwh: np.ndarray  # critical IT energy not served
    lost_ai_hours: np.ndarray  # hours in which some AI load was shed
    sla_penalty_usd: np.ndarray
    group_mine_value_usd: np.ndarray  # [G, S] value of all the group's mining racks, net of opex
    resells: np.ndarray  # [N, 1] bool, take-or-pay site

    @property
    def profit_usd(self) -> np.ndarray:
        """[N, S]"""
        return (
            self.hash_revenue_usd
            - self.mining_power_cost_usd
            - self.mining_opex_usd
            - self.idle_cost_usd
            + self.rent_usd
            - self.capex_charge_usd
            + self.dr_credit_usd
            + self.block_resale_usd
            - self.block_payment_usd
            - self.ai_resale_usd
            + self.ai_passthrough_usd
            - self.sla_penalty_usd
        )

    @property
    def resale_revenue_usd(self) -> np.ndarray:
        """[N, S] every MWh of the take-or-pay block not drawn, sold at spot - fee; zero elsewhere."""
        mining_resale_forgone = np.where(self.resells, self.mining_power_cost_usd, 0.0)
        return self.block_resale_usd - mining_resale_forgone - self.ai_resale_usd

    @property
    def power_cost_usd(self) -> np.ndarray:
        """[N, S] cash paid for power net of tenant pass-through (take-or-pay: the fixed block payment).

        Under take-or-pay the mining racks' marginal cost is resale forgone, counted in resale revenue,
        so profit = hash revenue - power cost + resale revenue + ... holds for every contract type.
        """
        return np.where(self.resells, self.block_payment_usd - self.ai_passthrough_usd, self.mining_power_cost_usd)


def site_profits(fleet: Fleet, economics: GroupEconomics, allocation: Allocation) -> SiteProfits:
    """Exact per-site, per-scenario profit of an allocation on the given economics."""
    n_sites, n_scen = len(fleet.sites), economics.n_scenarios
    site_index = {s.id: n for n, s in enumerate(fleet.sites)}
    per_site = [name for name in SiteProfits.__dataclass_fields__ if name not in ("group_mine_value_usd", "resells")]
    out = {name: np.zeros((n_sites, n_scen)) for name in per_site}
    group_value = np.zeros((len(fleet.rack_groups), n_scen))
    days = fleet.horizon.days
    for g, group in enumerate(fleet.rack_groups):
        n, mine = site_index[group.site], allocation.count(group.id, Mode.MINE)
        opex_usd = group.opex_usd_per_rack_day * days
        # The separable value is mine_value_usd, the MIP's coefficient (callers may shift it, e.g. for a
        # hashprice sensitivity); hash revenue is what that value implies, equal to hash_revenue_usd otherwise.
        out["hash_revenue_usd"][n] += (economics.mine_value_usd[g] + economics.power_cost_usd[g] + opex_usd) * mine
        out["mining_power_cost_usd"][n] += economics.power_cost_usd[g] * mine
        out["mining_energy_mwh"][n] += economics.energy_mwh[g] * mine
        out["mining_opex_usd"][n] += opex_usd * mine
        out["idle_cost_usd"][n] += idle_cost_usd_per_rack(fleet, group) * allocation.count(group.id, Mode.IDLE)
        group_value[g] = economics.mine_value_usd[g] * mine
    offers = {o.id: o for o in fleet.lease_offers}
    for (offer_id, site_id), mw in allocation.lease_mw.items():
        out["rent_usd"][site_index[site_id]] += lease_revenue_usd_per_mw(fleet, offers[offer_id], site_id) * mw
    for n, site in enumerate(fleet.sites):
        if site.id in allocation.converted_sites:
            out["capex_charge_usd"][n] += capex_charge_usd(fleet, site.id, converted_mw(fleet, allocation, site.id))
        if site.demand_response is not None:
            out["dr_credit_usd"][n] += dr_credit_usd_per_mw(fleet, site) * allocation.site_dr_mw(site.id)
        leased_mw = allocation.site_lease_mw(site.id)
        out["block_resale_usd"][n] = economics.block_resale_usd[n]
        out["block_payment_usd"][n] = economics.block_payment_usd[n]
        out["ai_resale_usd"][n] = economics.ai_resale_usd_per_mw[n] * leased_mw
        out["ai_passthrough_usd"][n] = economics.ai_passthrough_usd_per_mw[n] * leased_mw
    _add_coupled_dispatch(fleet, economics, allocation, out, group_value)
    resells = np.array([[s.contract.resells] for s in fleet.sites], dtype=bool).reshape(n_sites, 1)
    return SiteProfits(**out, group_mine_value_usd=group_value, resells=resells)


def _add_coupled_dispatch(
    fleet: Fleet, economics: GroupEconomics, allocation: Allocation, out: dict, group_value: np.ndarray
) -> None:
    """Add the coupled steps' dispatch (AI priority, then the continuous knapsack) into `out`."""
    slot_k, slot_s = np.nonzero(economics.coupled_site != NO_SITE)
    if len(slot_k) == 0:
        return
    hours = fleet.horizon.step_hours
    sites = fleet.sites
    site_n = economics.coupled_site[slot_k, slot_s]
    ai_kw = np.array([allocation.site_lease_mw(s.id) * s.pue_ai * KW_PER_MW for s in sites])[site_n]
    ai_kw = np.where(economics.coupled_ai_live[slot_k, slot_s], ai_kw, 0.0)
    cap_kw = economics.coupled_cap_kw[slot_k, slot_s]
    lost_kw = np.maximum(0.0, ai_kw - cap_kw)  # zero without an event (cap = inf)
    allowance_kw = np.maximum(0.0, cap_kw - ai_kw)
    planned_kw = np.array([planned_mining_kw(fleet, allocation, s.id) for s in sites])
    dr_kw = np.array([allocation.site_dr_mw(s.id) * KW_PER_MW for s in sites])
    called = economics.coupled_dr_call[slot_k, slot_s]
    allowance_kw = np.where(called, np.minimum(allowance_kw, np.maximum(0.0, planned_kw - dr_kw)[site_n]), allowance_kw)

    _knapsack(fleet, economics, allocation, slot_k, slot_s, allowance_kw, out, group_value)
    _shed_ai(fleet, economics, allocation, slot_k, slot_s, site_n, lost_kw, hours, out)


def _knapsack(fleet, economics, allocation, slot_k, slot_s, allowance_kw, out, group_value) -> None:
    """Fill each slot's mining allowance with its items in decreasing margin per kW."""
    item_p, item_s = np.nonzero(economics.item_slot != NO_SITE)
    if len(item_p) == 0:
        return
    n_slots = economics.coupled_site.shape[0]
    allowance_at = np.zeros((n_slots, economics.n_scenarios))
    allowance_at[slot_k, slot_s] = allowance_kw
    k = economics.item_slot[item_p, item_s]
    g = economics.item_group[item_p, item_s]
    revenue = economics.item_hash_revenue_usd[item_p, item_s]
    cost = economics.item_power_cost_usd[item_p, item_s]
    meter_kw = np.array([rack_meter_kw(fleet, grp) for grp in fleet.rack_groups])[g]
    mining = np.array([allocation.count(grp.id, Mode.MINE) for grp in fleet.rack_groups])[g]
    order = np.lexsort((-(revenue - cost) / meter_kw, k, item_s))  # by scenario, slot, best margin per kW
    load_kw = (mining * meter_kw)[order]
    slot_key = item_s[order] * n_slots + k[order]
    first = np.concatenate(([True], slot_key[1:] != slot_key[:-1]))
    total = np.cumsum(load_kw)
    before_slot = (total - load_kw)[first][np.cumsum(first) - 1]
    load_before_kw = total - load_kw - before_slot  # load of better items of the same slot
    run_kw = np.clip(allowance_at[k[order], item_s[order]] - load_before_kw, 0.0, load_kw)
    racks = run_kw / meter_kw[order]

    site_index = {s.id: n for n, s in enumerate(fleet.sites)}
    site_n = np.array([site_index[grp.site] for grp in fleet.rack_groups])[g[order]]
    scen, step_mwh = item_s[order], fleet.horizon.step_hours / KW_PER_MW
    np.add.at(out["hash_revenue_usd"], (site_n, scen), racks * revenue[order])
    np.add.at(out["mining_power_cost_usd"], (site_n, scen), racks * cost[order])
    np.add.at(out["mining_energy_mwh"], (site_n, scen), run_kw * step_mwh)
    np.add.at(out["event_curtailed_mwh"], (site_n, scen), (load_kw - run_kw) * step_mwh)
    np.add.at(group_value, (g[order], scen), racks * (revenue - cost)[order])


def _shed_ai(fleet, economics, allocation, slot_k, slot_s, site_n, lost_kw, hours, out) -> None:
    """AI load above the cap is shed from the offers with the lowest SLA penalty first."""
    for n, site in enumerate(fleet.sites):
        here = (site_n == n) & (lost_kw > 0)
        if not here.any():
            continue
        scen, remaining_kw = slot_s[here], lost_kw[here].copy()
        lost_meter_mwh = remaining_kw * hours / KW_PER_MW
        np.add.at(out["lost_ai_mwh"][n], scen, lost_meter_mwh / site.pue_ai)
        np.add.at(out["lost_ai_hours"][n], scen, np.where(remaining_kw > LOST_LOAD_TOL_KW, hours, 0.0))
        leases = sorted(
            ((o.sla_penalty_usd_per_mwh, allocation.lease_mw.get((o.id, site.id), 0.0)) for o in fleet.lease_offers),
            key=lambda pair: pair[0],
        )
        for penalty_usd_per_mwh, mw in leases:
            taken_kw = np.minimum(remaining_kw, mw * site.pue_ai * KW_PER_MW)
            remaining_kw -= taken_kw
            it_mwh = taken_kw * hours / KW_PER_MW / site.pue_ai
            np.add.at(out["sla_penalty_usd"][n], scen, it_mwh * penalty_usd_per_mwh)
        if site.contract.resells:  # shed energy is resold, and the tenant does not pay for it
            resale = economics.coupled_resale_usd_per_mwh[slot_k[here], scen]
            np.add.at(out["ai_resale_usd"][n], scen, -lost_meter_mwh * resale)
            np.add.at(out["ai_passthrough_usd"][n], scen, -lost_meter_mwh * site.contract.price_usd_per_mwh)


def scenario_profits_usd(fleet: Fleet, economics: GroupEconomics, allocation: Allocation) -> np.ndarray:
    """[S] horizon profit of the allocation in each scenario, coupled steps dispatched exactly."""
    return site_profits(fleet, economics, allocation).profit_usd.sum(axis=0)


def check_feasible(fleet: Fleet, allocation: Allocation, tol: float = 1e-6) -> list[tuple[str, str]]:
    """Constraint violations of a given allocation as (field path, message); empty when feasible."""
    problems = []
    for _i, group in enumerate(fleet.rack_groups):
        counts = allocation.racks.get(group.id)
        if counts is None:
            problems.append((f"allocation.{group.id}", "rack group missing"))
            continue
        if any(n < 0 for n in counts.values()) or sum(counts.values()) != group.racks:
            problems.append((f"allocation.{group.id}", f"counts {dict(counts)} must be >= 0 and sum to {group.racks}"))
        if counts.get(Mode.AI, 0) and not fleet.can_convert(group):
            problems.append((f"allocation.{group.id}.ai", "group is not convertible or its site is not AI-ready"))
    for site in fleet.sites:
        ai_mw = converted_mw(fleet, allocation, site.id)
        mining_kw = sum(
            allocation.count(g.id, Mode.MINE) * fleet.rack_power_kw(g) * site.pue_mining
            for g in fleet.rack_groups
            if g.site == site.id
        )
        load_kw = mining_kw + allocation.site_lease_mw(site.id) * KW_PER_MW * site.pue_ai
        if load_kw > site.capacity_mw * KW_PER_MW * (1 + tol):
            problems.append((f"sites.{site.id}.capacity_mw", f"load {load_kw / KW_PER_MW:.3f} MW exceeds capacity"))
        if allocation.site_lease_mw(site.id) > ai_mw + tol:
            problems.append((f"sites.{site.id}.ai", "leased MW exceed converted MW"))
        dr_mw = allocation.site_dr_mw(site.id)
        if dr_mw > tol and site.demand_response is None:
            problems.append((f"sites.{site.id}.demand_response", "demand-response MW at a site without a programme"))
        elif dr_mw > tol and dr_mw > site.demand_response.max_mw + tol:
            problems.append((f"sites.{site.id}.demand_response", f"{dr_mw:.3f} MW exceeds max_mw"))
        elif dr_mw * KW_PER_MW > planned_mining_kw(fleet, allocation, site.id) * (1 + tol) + tol:
            problems.append((f"sites.{site.id}.demand_response", "committed MW exceed the planned mining load"))
        converted = site.id in allocation.converted_sites
        if site.ai and converted and not (site.ai.min_mw - tol <= ai_mw <= site.ai.max_mw + tol):
            problems.append((f"sites.{site.id}.ai", f"converted {ai_mw:.3f} MW outside [min_mw, max_mw]"))
        if ai_mw > tol and not converted:
            problems.append((f"sites.{site.id}.ai", "racks in AI mode at a site that is not converted"))
    capex = sum(full_capex_usd(fleet, s, converted_mw(fleet, allocation, s)) for s in allocation.converted_sites)
    if fleet.capital_budget_usd is not None and capex > fleet.capital_budget_usd * (1 + tol):
        problems.append(("capital_budget_usd", f"conversion capex {capex:,.0f} exceeds the budget"))
    for offer in fleet.lease_offers:
        mw = allocation.offer_mw(offer.id)
        if mw > tol and not (offer.min_mw - tol <= mw <= offer.max_mw + tol):
            problems.append((f"lease_offers.{offer.id}", f"{mw:.3f} MW outside [min_mw, max_mw]"))
    return problems
