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
    converted_mw,
    rack_ids,
    site_profits,
)
from optimizer.constants import KW_PER_MW
from optimizer.economics import NO_SITE, GroupEconomics, breakeven_power_price_usd_per_mwh
from optimizer.fleet import Fleet
from optimizer.robustness import RobustnessReport


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
    expected_mine_value_usd_per_rack: float  # at the plan's dispatch (caps, DR calls); the price rule if none mine
    run_fraction: float  # mean share of hours a mining rack of the group runs by the price rule
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
    """Expected economics of one site. expected_profit_usd = hash revenue - power cost + resale revenue
    + demand-response credit - SLA penalty - opex - idle cost + lease revenue - capex charge."""

    site: str
    contract: str = ""  # fixed | index | take_or_pay
    racks_mine: int
    racks_ai: int
    racks_idle: int
    mining_mw: float  # at the meter, PUE included
    ai_mw: float
    expected_hash_revenue_usd: float
    expected_power_cost_usd: float  # cash for power net of tenant pass-through; take_or_pay: the block payment
    mining_opex_usd: float
    idle_cost_usd: float
    lease_revenue_usd: float
    capex_charge_usd: float
    expected_energy_mwh: float  # drawn by mining racks at the meter
    expected_resale_revenue_usd: float = 0.0  # take_or_pay: every MWh of the block not drawn, sold at spot - fee
    dr_commitment_mw: float = 0.0  # committed curtailable mining MW at the meter
    demand_response_credit_usd: float = 0.0
    expected_curtailed_mwh: float = 0.0  # mining energy the planned racks did not draw (price, events, DR calls)
    expected_event_curtailed_mwh: float = 0.0  # of which forced by curtailment events and DR calls
    expected_lost_ai_mwh: float = 0.0  # critical IT energy not served when an event cut the site below its AI load
    expected_lost_ai_hours: float = 0.0  # hours with some AI load shed
    expected_sla_penalty_usd: float = 0.0
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
    time_limit_s: float | None = None  # the limit the solve ran under (the fleet's, or scaled with the model)
    max_accepted_gap: float = 0.01  # SolverSettings.max_accepted_gap
    # the solve stopped at a limit (time, interrupt) with mip_gap above max_accepted_gap: the plan may be
    # far from optimal (solvers/limits.py); `hashpivot plan` exits non-zero unless --accept-gap
    gap_exceeded: bool = False


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
    robustness: RobustnessReport | None = None  # out-of-sample, SAA gap, baselines (optimizer/robustness.py)

    def totals(self) -> dict[Mode, int]:
        return {
            Mode.MINE: sum(g.racks_mine for g in self.allocation),
            Mode.AI: sum(g.racks_ai for g in self.allocation),
            Mode.IDLE: sum(g.racks_idle for g in self.allocation),
        }


def group_allocations(fleet: Fleet, economics: GroupEconomics, allocation: Allocation) -> list[GroupAllocation]:
    hashprice = float(economics.mean_hashprice_usd_per_ph_day.mean())
    dispatched = site_profits(fleet, economics, allocation).group_mine_value_usd
    price_rule = price_rule_value_usd(economics)
    out = []
    for g, group in enumerate(fleet.rack_groups):
        mining = allocation.count(group.id, Mode.MINE)
        value = dispatched[g].mean() / mining if mining else price_rule[g].mean()
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
                expected_mine_value_usd_per_rack=float(value),
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


def price_rule_value_usd(economics: GroupEconomics) -> np.ndarray:
    """[G, S] value of one mining rack by the price rule alone (every positive-margin step, no cap or call)."""
    value = economics.mine_value_usd.copy()
    item_p, item_s = np.nonzero(economics.item_slot != NO_SITE)
    margin = economics.item_hash_revenue_usd[item_p, item_s] - economics.item_power_cost_usd[item_p, item_s]
    np.add.at(value, (economics.item_group[item_p, item_s], item_s), margin)
    return value


def site_breakdowns(fleet: Fleet, economics: GroupEconomics, allocation: Allocation) -> list[SiteBreakdown]:
    profits = site_profits(fleet, economics, allocation)
    horizon_hours = fleet.horizon.days * 24

    def expected(field: np.ndarray, n: int) -> float:
        return float(field[n].mean())

    out = []
    for n, site in enumerate(fleet.sites):
        members = [grp for grp in fleet.rack_groups if grp.site == site.id]
        mining_mw = (
            sum(fleet.rack_power_kw(grp) * site.pue_mining * allocation.count(grp.id, Mode.MINE) for grp in members)
            / KW_PER_MW
        )
        energy = expected(profits.mining_energy_mwh, n)
        out.append(
            SiteBreakdown(
                site=site.id,
                contract=site.contract.type.value,
                **{f"racks_{m.value}": sum(allocation.count(grp.id, m) for grp in members) for m in MODES},
                mining_mw=mining_mw,
                ai_mw=converted_mw(fleet, allocation, site.id),
                expected_hash_revenue_usd=expected(profits.hash_revenue_usd, n),
                expected_power_cost_usd=expected(profits.power_cost_usd, n),
                mining_opex_usd=expected(profits.mining_opex_usd, n),
                idle_cost_usd=expected(profits.idle_cost_usd, n),
                lease_revenue_usd=expected(profits.rent_usd, n),
                capex_charge_usd=expected(profits.capex_charge_usd, n),
                expected_energy_mwh=energy,
                expected_resale_revenue_usd=expected(profits.resale_revenue_usd, n),
                dr_commitment_mw=allocation.site_dr_mw(site.id),
                demand_response_credit_usd=expected(profits.dr_credit_usd, n),
                expected_curtailed_mwh=mining_mw * horizon_hours - energy,
                expected_event_curtailed_mwh=expected(profits.event_curtailed_mwh, n),
                expected_lost_ai_mwh=expected(profits.lost_ai_mwh, n),
                expected_lost_ai_hours=expected(profits.lost_ai_hours, n),
                expected_sla_penalty_usd=expected(profits.sla_penalty_usd, n),
                expected_profit_usd=expected(profits.profit_usd, n),
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
