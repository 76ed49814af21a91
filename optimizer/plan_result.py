"""What a plan reports: allocation, AI capacity, profit distribution, per-site economics, rules.

Pure assembly from the domain objects; serialised as plan.json and mirrored by the gRPC contract.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from pydantic import BaseModel

from optimizer.allocation import (
    MODES,
    Allocation,
    Mode,
    converted_mw,
    planned_mining_kw,
    present_racks,
    rack_ranges,
)
from optimizer.constants import KW_PER_MW
from optimizer.deal_report import ConversionResult, SiteYear, TimelineEvent, YearFigures
from optimizer.economics import GroupEconomics, breakeven_power_price_usd_per_mwh, economics_grid
from optimizer.fleet import Fleet
from optimizer.lifecycles import PlanGrid, plan_grid
from optimizer.rack_ranges import RackRange, expand
from optimizer.report_sums import ScenarioSums, report_means
from optimizer.robustness import RobustnessReport
from optimizer.tree_report import TreeReport


class GroupAllocation(BaseModel):
    group: str
    site: str
    machine: str
    racks_mine: int
    racks_ai: int
    racks_idle: int
    racks_sell: int = 0
    racks_move: int = 0
    # which racks, as blocks of ids (optimizer/rack_ranges.py): a plan's size does not grow with rack counts
    rack_ranges_mine: list[RackRange] = []
    rack_ranges_ai: list[RackRange] = []
    rack_ranges_idle: list[RackRange] = []
    rack_ranges_sell: list[RackRange] = []
    rack_ranges_move: list[RackRange] = []
    lifecycles: dict[str, int] = {}  # the decision: racks per lifecycle option (optimizer.lifecycles)
    # expected present value of one rack on each lifecycle option, rent and capex of AI slots excluded
    option_values_usd_per_rack: dict[str, float] = {}
    expected_mine_value_usd_per_rack: float  # PV, at the plan's dispatch (caps, DR calls); the price rule if none mine
    run_fraction: float  # mean share of hours a mining rack of the group runs by the price rule
    breakeven_power_price_usd_per_mwh: float  # at the expected hashprice, site PUE, pool fee

    def rack_ranges(self, mode: Mode) -> list[RackRange]:
        return getattr(self, f"rack_ranges_{mode.value}")

    def rack_ids(self, mode: Mode) -> list[str]:
        """Every id of the group's racks in `mode` (a million racks are a million strings: ask only when needed)."""
        return expand(self.rack_ranges(mode))


class SiteAi(BaseModel):
    site: str
    converted: bool
    ai_mw: float
    leased_mw: float
    start_option: int = 0  # index into the site's ai.start_months
    start_date: str = ""  # construction starts (ISO date); empty when not converted
    ready_date: str = ""  # first rent


class OfferResult(BaseModel):
    offer: str
    accepted: bool
    mw: float
    mw_by_site: dict[str, float]


class SiteBreakdown(BaseModel):
    """Expected economics of one site, every money figure a present value at the plan's start.

    expected_profit_usd (the site's NPV) = hash revenue - power cost + resale revenue + demand-response
    credit - SLA penalty - opex - idle cost + machine sales - move costs - machines bought + lease revenue
    + terminal value - capex."""

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
    lease_revenue_usd: float  # rent inside the horizon
    capex_usd: float  # conversion capex along its schedule, net of tenant funding
    terminal_value_usd: float = 0.0  # rent (and take-or-pay tenant power) past the horizon
    machine_sales_usd: float = 0.0  # machines sold, and those kept valued at the horizon's end
    move_cost_usd: float = 0.0
    machines_bought_usd: float = 0.0
    expected_btc_mined: float = 0.0  # after pool fee, over the horizon
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


class GroupBreakeven(BaseModel):
    """The run/curtail rule of one rack group, at the hashprice it names.

    run_below_usd_per_mwh: a rack runs in a step exactly when the power price it pays there is below
    hashprice x (1 - pool fee) / (J/TH x PUE) (per MWh at the meter), the rule the plan dispatches by.
    keep_below_usd_per_mwh: the average power price below which a rack that runs every hour is worth
    keeping at all, its opex per rack-day included.
    """

    group: str
    site: str
    machine: str
    efficiency_j_per_th: float
    pue: float
    pool_fee_fraction: float
    hashprice_usd_per_ph_day: float  # the plan's expected hashprice over the horizon
    run_below_usd_per_mwh: float
    keep_below_usd_per_mwh: float


class SolverReport(BaseModel):
    status: str
    objective_usd: float
    # None when unknown: a solve stopped before HiGHS proved any bound has no bound and no gap
    bound_usd: float | None
    mip_gap: float | None
    wall_s: float
    variables: int
    constraints: int
    time_limit_s: float | None = None  # the limit the solve ran under (the fleet's, or scaled with the model)
    max_accepted_gap: float = 0.01  # SolverSettings.max_accepted_gap
    # the solve stopped at a limit (time, interrupt) with mip_gap above max_accepted_gap: the plan may be
    # far from optimal (solvers/limits.py); `hashpivot plan` exits non-zero unless --accept-gap
    gap_exceeded: bool = False


class SubhourlyValue(BaseModel):
    """What dispatching at the horizon's sub-hourly step is worth over hourly dispatch, same scenarios.

    Two plans of the same fleet and risk settings: one on the sub-hourly paths, one on the same paths
    averaged to hourly means (optimizer.scenarios.hourly_means), as an hourly planner would see them. A rack
    dispatched hourly earns, on the sub-hourly paths, exactly the sum of its hour's margins, so the hourly
    plan's figures are also its value when run on the true paths with hourly run/curtail decisions.
    """

    step_minutes: int
    objective_usd: float  # the sub-hourly plan's objective (solver.objective_usd)
    hourly_objective_usd: float  # the plan made and dispatched on hourly means
    value_usd: float  # objective_usd - hourly_objective_usd
    mean_profit_usd: float
    hourly_mean_profit_usd: float
    mean_profit_value_usd: float  # mean_profit_usd - hourly_mean_profit_usd
    same_allocation: bool  # both plans put the same racks in the same modes


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
    breakeven: list[GroupBreakeven]
    solver: SolverReport
    scenarios: dict[str, object]
    timings_s: dict[str, float]
    versions: dict[str, str]
    robustness: RobustnessReport | None = None  # out-of-sample, SAA gap, baselines (optimizer/robustness.py)
    # money: every USD figure is a present value at horizon_start at discount_rate_per_year unless it
    # says nominal (per-year figures, conversions' capex_usd); profit is the distribution of NPV
    horizon_start: str = ""
    discount_rate_per_year: float = 0.0
    money_basis: str = ""
    purchases: dict[str, int] = {}  # purchase option id -> racks bought
    conversions: list[ConversionResult] = []
    years: list[YearFigures] = []
    site_years: list[SiteYear] = []
    timeline: list[TimelineEvent] = []
    tree: TreeReport | None = None  # the multi-stage plan on a scenario tree and the value of waiting (issue 9)
    subhourly: SubhourlyValue | None = None  # sub-hourly horizons only: the value of dispatch below an hour

    def totals(self) -> dict[Mode, int]:
        return {mode: sum(getattr(g, f"racks_{mode.value}") for g in self.allocation) for mode in MODES}


def group_allocations(
    fleet: Fleet, economics: GroupEconomics | ScenarioSums, allocation: Allocation, grid: PlanGrid | None = None
) -> list[GroupAllocation]:
    """`economics`: the run's economics, or their sums taken batch by batch (optimizer.report_sums)."""
    grid = grid or economics_grid(fleet, economics)
    means = report_means(fleet, economics, allocation, grid)
    hashprice = means.hashprice_usd_per_ph_day
    dispatched = means.pv.group_mine_value_usd
    price_rule = means.price_rule_value_usd
    option_values = means.option_values_usd
    counts = allocation.lifecycle_counts(fleet)
    out = []
    for g, group in enumerate(fleet.rack_groups):
        q = grid.group_profile[g]
        mining = sum(n for key, n in counts.get(group.id, {}).items() if key == "mine")
        value = dispatched[g].mean() / mining if mining else price_rule[q]
        ranges = rack_ranges(group, allocation)
        efficiency = fleet.machine(group.machine).efficiency_j_per_th
        pue = fleet.site(group.site).pue_mining
        out.append(
            GroupAllocation(
                group=group.id,
                site=group.site,
                machine=group.machine,
                **{f"racks_{m.value}": allocation.count(group.id, m) for m in MODES},
                **{f"rack_ranges_{m.value}": ranges[m] for m in MODES},
                lifecycles=counts.get(group.id, {}),
                option_values_usd_per_rack={
                    life.key: float(option_values[g, ell]) for ell, life in enumerate(grid.lifecycles[g])
                },
                expected_mine_value_usd_per_rack=float(value),
                run_fraction=float(means.run_fraction[q]),
                breakeven_power_price_usd_per_mwh=breakeven_power_price_usd_per_mwh(
                    hashprice, efficiency, pue, fleet.pool_fee_fraction
                ),
            )
        )
    return out


def ai_results(
    fleet: Fleet, allocation: Allocation, grid: PlanGrid | None = None
) -> tuple[list[SiteAi], list[OfferResult]]:
    grid = grid or plan_grid(fleet)
    sites = []
    for s in fleet.sites:
        if s.ai is None:
            continue
        converted = s.id in allocation.converted_sites
        k = allocation.start_option(s.id)
        sites.append(
            SiteAi(
                site=s.id,
                converted=converted,
                ai_mw=converted_mw(fleet, allocation, s.id),
                leased_mw=allocation.site_lease_mw(s.id),
                start_option=k,
                start_date=_date_at(fleet, grid, grid.conversion_start[s.id][k]) if converted else "",
                ready_date=_date_at(fleet, grid, grid.conversion_ready[s.id][k]) if converted else "",
            )
        )
    offers = []
    for offer in fleet.lease_offers:
        by_site = {s: mw for (o, s), mw in allocation.lease_mw.items() if o == offer.id}
        offers.append(
            OfferResult(
                offer=offer.id, accepted=sum(by_site.values()) > 0, mw=sum(by_site.values()), mw_by_site=by_site
            )
        )
    return sites, offers


def _date_at(fleet: Fleet, grid: PlanGrid, boundary: int) -> str:
    hours = int(grid.timeline.bounds[boundary]) * grid.timeline.step_hours if boundary < grid.n_periods else None
    if hours is None:
        return "after the horizon"
    return (fleet.horizon.start + dt.timedelta(hours=hours)).isoformat()


def site_breakdowns(
    fleet: Fleet, economics: GroupEconomics | ScenarioSums, allocation: Allocation, grid: PlanGrid | None = None
) -> list[SiteBreakdown]:
    """`economics`: the run's economics, or their sums taken batch by batch (optimizer.report_sums)."""
    grid = grid or economics_grid(fleet, economics)
    profits = report_means(fleet, economics, allocation, grid).pv
    planned_kw = planned_mining_kw(fleet, grid, present_racks(fleet, grid, allocation))
    period_hours = np.diff(grid.timeline.bounds) * grid.timeline.step_hours

    def expected(field: np.ndarray, n: int) -> float:
        return float(field[n].mean())

    out = []
    for n, site in enumerate(fleet.sites):
        members = [grp for grp in fleet.rack_groups if grp.site == site.id]
        energy = expected(profits.mining_energy_mwh, n)
        out.append(
            SiteBreakdown(
                site=site.id,
                contract=site.contract.type.value,
                **{f"racks_{m.value}": sum(allocation.count(grp.id, m) for grp in members) for m in MODES},
                mining_mw=float(planned_kw[n].max(initial=0.0)) / KW_PER_MW,
                ai_mw=converted_mw(fleet, allocation, site.id),
                expected_hash_revenue_usd=expected(profits.hash_revenue_usd, n),
                expected_power_cost_usd=expected(profits.power_cost_usd, n),
                mining_opex_usd=expected(profits.mining_opex_usd, n),
                idle_cost_usd=expected(profits.idle_cost_usd, n),
                lease_revenue_usd=expected(profits.rent_usd, n),
                capex_usd=expected(profits.capex_usd, n),
                terminal_value_usd=expected(profits.terminal_value_usd, n),
                machine_sales_usd=expected(profits.machine_sales_usd, n),
                move_cost_usd=expected(profits.move_cost_usd, n),
                machines_bought_usd=expected(profits.machines_bought_usd, n),
                expected_btc_mined=expected(profits.btc_mined, n),
                expected_energy_mwh=energy,
                expected_resale_revenue_usd=expected(profits.resale_revenue_usd, n),
                dr_commitment_mw=allocation.site_dr_mw(site.id),
                demand_response_credit_usd=expected(profits.dr_credit_usd, n),
                expected_curtailed_mwh=float(planned_kw[n] @ period_hours) / KW_PER_MW - energy,
                expected_event_curtailed_mwh=expected(profits.event_curtailed_mwh, n),
                expected_lost_ai_mwh=expected(profits.lost_ai_mwh, n),
                expected_lost_ai_hours=expected(profits.lost_ai_hours, n),
                expected_sla_penalty_usd=expected(profits.sla_penalty_usd, n),
                expected_profit_usd=expected(profits.profit_usd, n),
            )
        )
    return out


def group_breakevens(fleet: Fleet, hashprice_usd_per_ph_day: float) -> list[GroupBreakeven]:
    out = []
    for group in fleet.rack_groups:
        machine, site = fleet.machine(group.machine), fleet.site(group.site)
        run_below = breakeven_power_price_usd_per_mwh(
            hashprice_usd_per_ph_day, machine.efficiency_j_per_th, site.pue_mining, fleet.pool_fee_fraction
        )
        meter_mwh_per_day = fleet.rack_power_kw(group) * site.pue_mining * 24 / KW_PER_MW
        out.append(
            GroupBreakeven(
                group=group.id,
                site=site.id,
                machine=machine.id,
                efficiency_j_per_th=machine.efficiency_j_per_th,
                pue=site.pue_mining,
                pool_fee_fraction=fleet.pool_fee_fraction,
                hashprice_usd_per_ph_day=hashprice_usd_per_ph_day,
                run_below_usd_per_mwh=run_below,
                keep_below_usd_per_mwh=run_below - group.opex_usd_per_rack_day / meter_mwh_per_day,
            )
        )
    return out
