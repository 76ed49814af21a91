"""What a plan reports: allocation, AI capacity, profit distribution, per-site economics, rules.

Pure assembly from the domain objects; serialised as plan.json and mirrored by the gRPC contract.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from optimizer.allocation import (
    MODES,
    Allocation,
    Mode,
    capex_charge_usd,
    converted_mw,
    idle_cost_usd_per_rack,
    lease_revenue_usd_per_mw,
    rack_ids,
)
from optimizer.constants import KW_PER_MW
from optimizer.economics import GroupEconomics, breakeven_power_price_usd_per_mwh
from optimizer.fleet import Fleet


class GroupAllocation(BaseModel):
    group: str
    site: str
    machine: str
    racks_mine: int
    racks_ai: int
    racks_idle: int
    rack_ids_mine: list[str]
    rack_ids_ai: list[str]
    rack_ids_idle: list[str]
    expected_mine_value_usd_per_rack: float
    run_fraction: float  # mean share of hours a mining rack of the group runs
    breakeven_power_price_usd_per_mwh: float  # at the expected hashprice, site PUE, pool fee


class SiteAi(BaseModel):
    site: str
    converted: bool
    ai_mw: float
    leased_mw: float


class OfferResult(BaseModel):
    offer: str
    accepted: bool
    mw: float
    mw_by_site: dict[str, float]


class SiteBreakdown(BaseModel):
    site: str
    racks_mine: int
    racks_ai: int
    racks_idle: int
    mining_mw: float  # at the meter, PUE included
    ai_mw: float
    expected_hash_revenue_usd: float
    expected_power_cost_usd: float
    mining_opex_usd: float
    idle_cost_usd: float
    lease_revenue_usd: float
    capex_charge_usd: float
    expected_energy_mwh: float
    expected_profit_usd: float


class MachineBreakeven(BaseModel):
    machine: str
    efficiency_j_per_th: float
    breakeven_power_price_usd_per_mwh: float  # at the expected hashprice, PUE 1, no pool fee


class SolverReport(BaseModel):
    status: str
    objective_usd: float
    bound_usd: float
    mip_gap: float
    wall_s: float
    variables: int
    constraints: int


class PlanResult(BaseModel):
    fleet: str
    objective: str
    alpha: float
    weight: float
    horizon_days: int
    expected_hashprice_usd_per_ph_day: float
    allocation: list[GroupAllocation]
    ai_sites: list[SiteAi]
    offers: list[OfferResult]
    profit: dict[str, float]
    sites: list[SiteBreakdown]
    breakeven: list[MachineBreakeven]
    solver: SolverReport
    scenarios: dict[str, object]
    timings_s: dict[str, float]
    versions: dict[str, str]

    def totals(self) -> dict[Mode, int]:
        return {
            Mode.MINE: sum(g.racks_mine for g in self.allocation),
            Mode.AI: sum(g.racks_ai for g in self.allocation),
            Mode.IDLE: sum(g.racks_idle for g in self.allocation),
        }


def group_allocations(fleet: Fleet, economics: GroupEconomics, allocation: Allocation) -> list[GroupAllocation]:
    hashprice = float(economics.mean_hashprice_usd_per_ph_day.mean())
    out = []
    for g, group in enumerate(fleet.rack_groups):
        ids = rack_ids(group, allocation)
        efficiency = fleet.machine(group.machine).efficiency_j_per_th
        pue = fleet.site(group.site).pue_mining
        out.append(
            GroupAllocation(
                group=group.id,
                site=group.site,
                machine=group.machine,
                **{f"racks_{m.value}": allocation.count(group.id, m) for m in MODES},
                **{f"rack_ids_{m.value}": ids[m] for m in MODES},
                expected_mine_value_usd_per_rack=float(economics.mine_value_usd[g].mean()),
                run_fraction=float(economics.run_fraction[g].mean()),
                breakeven_power_price_usd_per_mwh=breakeven_power_price_usd_per_mwh(
                    hashprice, efficiency, pue, fleet.pool_fee_fraction
                ),
            )
        )
    return out


def ai_results(fleet: Fleet, allocation: Allocation) -> tuple[list[SiteAi], list[OfferResult]]:
    sites = [
        SiteAi(
            site=s.id,
            converted=s.id in allocation.converted_sites,
            ai_mw=converted_mw(fleet, allocation, s.id),
            leased_mw=allocation.site_lease_mw(s.id),
        )
        for s in fleet.sites
        if s.ai is not None
    ]
    offers = []
    for offer in fleet.lease_offers:
        by_site = {s: mw for (o, s), mw in allocation.lease_mw.items() if o == offer.id}
        offers.append(
            OfferResult(
                offer=offer.id, accepted=sum(by_site.values()) > 0, mw=sum(by_site.values()), mw_by_site=by_site
            )
        )
    return sites, offers


def site_breakdowns(fleet: Fleet, economics: GroupEconomics, allocation: Allocation) -> list[SiteBreakdown]:
    offers = {o.id: o for o in fleet.lease_offers}
    out = []
    for site in fleet.sites:
        members = [(g, grp) for g, grp in enumerate(fleet.rack_groups) if grp.site == site.id]
        mine = {grp.id: allocation.count(grp.id, Mode.MINE) for _, grp in members}
        days = fleet.horizon.days

        def expected(field: np.ndarray, members=members, mine=mine) -> float:
            return float(sum(field[g].mean() * mine[grp.id] for g, grp in members))

        ai_mw = converted_mw(fleet, allocation, site.id)
        rent = sum(
            lease_revenue_usd_per_mw(fleet, offers[o], s) * mw
            for (o, s), mw in allocation.lease_mw.items()
            if s == site.id
        )
        capex = capex_charge_usd(fleet, site.id, ai_mw) if site.id in allocation.converted_sites else 0.0
        opex = sum(grp.opex_usd_per_rack_day * days * mine[grp.id] for _, grp in members)
        idle = sum(idle_cost_usd_per_rack(fleet, grp) * allocation.count(grp.id, Mode.IDLE) for _, grp in members)
        revenue, cost = expected(economics.hash_revenue_usd), expected(economics.power_cost_usd)
        out.append(
            SiteBreakdown(
                site=site.id,
                **{f"racks_{m.value}": sum(allocation.count(grp.id, m) for _, grp in members) for m in MODES},
                mining_mw=sum(fleet.rack_power_kw(grp) * site.pue_mining * mine[grp.id] for _, grp in members)
                / KW_PER_MW,
                ai_mw=ai_mw,
                expected_hash_revenue_usd=revenue,
                expected_power_cost_usd=cost,
                mining_opex_usd=opex,
                idle_cost_usd=idle,
                lease_revenue_usd=rent,
                capex_charge_usd=capex,
                expected_energy_mwh=expected(economics.energy_mwh),
                expected_profit_usd=revenue - cost - opex - idle + rent - capex,
            )
        )
    return out


def machine_breakevens(fleet: Fleet, hashprice_usd_per_ph_day: float) -> list[MachineBreakeven]:
    return [
        MachineBreakeven(
            machine=m.id,
            efficiency_j_per_th=m.efficiency_j_per_th,
            breakeven_power_price_usd_per_mwh=breakeven_power_price_usd_per_mwh(
                hashprice_usd_per_ph_day, m.efficiency_j_per_th
            ),
        )
        for m in fleet.machines
    ]
