"""A first-stage plan (racks per mode, AI conversion, leases) and what it earns per scenario.

Evaluating an allocation is plain numpy on the per-rack economics; it does not touch the MIP,
so it doubles as an independent check of the model's profit variables.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from optimizer.constants import KW_PER_MW
from optimizer.economics import GroupEconomics
from optimizer.fleet import Fleet, LeaseOffer, RackGroup, lease_months


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

    def count(self, group_id: str, mode: Mode) -> int:
        return self.racks[group_id].get(mode, 0)

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


def lease_income_usd(fleet: Fleet, allocation: Allocation) -> dict[str, float]:
    """Horizon rent per site, net of the capex charge."""
    offers = {o.id: o for o in fleet.lease_offers}
    income = {s.id: 0.0 for s in fleet.sites}
    for (offer_id, site_id), mw in allocation.lease_mw.items():
        income[site_id] += lease_revenue_usd_per_mw(fleet, offers[offer_id], site_id) * mw
    for site_id in allocation.converted_sites:
        income[site_id] -= capex_charge_usd(fleet, site_id, converted_mw(fleet, allocation, site_id))
    return income


def scenario_profits_usd(fleet: Fleet, economics: GroupEconomics, allocation: Allocation) -> np.ndarray:
    """[S] horizon profit of the allocation in each scenario."""
    profit = np.full(economics.n_scenarios, sum(lease_income_usd(fleet, allocation).values()))
    for g, group in enumerate(fleet.rack_groups):
        profit += economics.mine_value_usd[g] * allocation.count(group.id, Mode.MINE)
        profit -= idle_cost_usd_per_rack(fleet, group) * allocation.count(group.id, Mode.IDLE)
    return profit


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
