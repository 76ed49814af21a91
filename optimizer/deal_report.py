"""What a board asks of a plan over the life of its deals: each conversion's NPV, IRR and payback,
the cash and BTC of every year, the cost per BTC mined, and a timeline of what happens when.

Definitions (docs/formulation.md, "Reporting"):
- A conversion's *project* cash flows are its own: capex along the build (net of tenant funding)
  out, rent in for the lease term with its escalator, monthly and nominal from the plan's start.
  Its IRR is the annual rate that zeroes their NPV (monthly compounding of an annual rate), its
  payback the months until their cumulative sum turns non-negative for good. `project_npv_usd` is
  the same cash discounted at the fleet's rate with the model's exact timing; `mining_forgone_pv_usd`
  is what the converted racks would have earned mining from the start of construction, so
  project NPV - mining forgone is the conversion's value against keeping the racks mining.
- Per-year figures are expected nominal amounts; EBITDA counts hash revenue, power, resale,
  demand-response credits, SLA penalties, opex, idle costs and rent (not capex, machine sales or
  purchases). Cash cost per BTC = (mining power at its marginal price + mining opex) / BTC mined;
  all-in adds the machines' depreciation: their resale value at the start (or purchase price)
  minus the expected value at the horizon's end, spread evenly over the years.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from pydantic import BaseModel

from optimizer.allocation import Allocation, SiteProfits, converted_mw, lease_terms
from optimizer.cashflows import capex_discount_factor, conversion_cash_usd, irr, payback_months
from optimizer.constants import DAYS_PER_MONTH, HOURS_PER_DAY
from optimizer.economics import GroupEconomics
from optimizer.fleet import Fleet
from optimizer.lifecycles import PlanGrid, purchase_price_usd, purchase_resale_usd, rack_resale_usd
from optimizer.modes import Mode
from optimizer.report_sums import ScenarioSums, report_means


class ConversionResult(BaseModel):
    site: str
    start_date: str  # construction starts
    ready_date: str  # first rent
    it_mw: float  # converted critical IT capacity
    leased_mw: float
    capex_usd: float  # nominal, net of tenant funding
    capex_pv_usd: float
    rent_pv_usd: float  # rent inside the horizon, present value
    terminal_value_usd: float  # rent past the horizon, present value
    project_npv_usd: float  # rent and terminal value minus capex, present values
    mining_forgone_pv_usd: float  # expected PV the converted racks would have mined from the start
    irr: float | None = None  # annual IRR of the project's nominal monthly cash; None without one
    payback_months: float | None = None  # from the plan's start; None if the cash never turns positive


class YearFigures(BaseModel):
    """Expected nominal figures of one plan year (year 0 = the first twelve months)."""

    year: int
    start_date: str
    btc_mined: float
    hash_revenue_usd: float
    mining_power_cost_usd: float  # at the marginal price (take-or-pay: the resale forgone)
    mining_opex_usd: float
    rent_usd: float
    capex_usd: float
    ebitda_usd: float
    cash_cost_usd_per_btc: float | None = None
    all_in_cost_usd_per_btc: float | None = None


class SiteYear(BaseModel):
    site: str
    year: int
    ebitda_usd: float  # expected, nominal
    btc_mined: float
    rent_usd: float


class TimelineEvent(BaseModel):
    date: str
    event: str  # construction_start | hall_ready | lease_start | lease_end | sale | move | delivery | halving
    detail: str


def conversion_results(
    fleet: Fleet, grid: PlanGrid, economics: GroupEconomics | ScenarioSums, allocation: Allocation
) -> list[ConversionResult]:
    """`economics`: the run's economics, or their sums taken batch by batch (optimizer.report_sums)."""
    mine_value = report_means(fleet, economics, allocation, grid).mine_value_usd
    terms = lease_terms(fleet, grid)
    offers = {o.id: o for o in fleet.lease_offers}
    out = []
    for site in fleet.sites:
        if site.id not in allocation.converted_sites:
            continue
        k = allocation.start_option(site.id)
        start_months = site.ai.start_months[k]
        it_mw = converted_mw(fleet, allocation, site.id)
        leases = [(offers[o], mw) for (o, s), mw in allocation.lease_mw.items() if s == site.id]
        tenant_mw = sum(o.tenant_capex_share * mw for o, mw in leases)
        capex = site.ai.fixed_capex_usd + site.ai.capex_usd_per_mw * (it_mw - tenant_mw)
        capex_pv = capex * capex_discount_factor(site.ai, start_months, grid.timeline)
        rent_pv = sum(terms[o.id, site.id, k].rent.in_horizon_pv_usd * mw for o, mw in leases)
        terminal = sum(terms[o.id, site.id, k].rent.terminal_pv_usd * mw for o, mw in leases)
        cash = conversion_cash_usd(site.ai, start_months, it_mw, leases)
        out.append(
            ConversionResult(
                site=site.id,
                start_date=_date(fleet, start_months * DAYS_PER_MONTH),
                ready_date=_date(fleet, start_months * DAYS_PER_MONTH + site.ai.build_days),
                it_mw=it_mw,
                leased_mw=sum(mw for _, mw in leases),
                capex_usd=capex,
                capex_pv_usd=capex_pv,
                rent_pv_usd=rent_pv,
                terminal_value_usd=terminal,
                project_npv_usd=rent_pv + terminal - capex_pv,
                mining_forgone_pv_usd=_mining_forgone(fleet, grid, mine_value, site.id, k, allocation),
                irr=irr(cash),
                payback_months=payback_months(cash),
            )
        )
    return out


def _mining_forgone(fleet, grid: PlanGrid, mine_value: np.ndarray, site_id: str, k: int, allocation: Allocation):
    """Expected PV the site's converted racks would have mined from construction on; mine_value [Q, P] expected."""
    start = grid.conversion_start[site_id][k]
    total = 0.0
    for g, group in enumerate(fleet.rack_groups):
        if group.site == site_id:
            q = grid.group_profile[g]
            value = mine_value[q, start:].sum()
            total += value * allocation.count(group.id, Mode.AI)
    return float(total)


def _date(fleet: Fleet, days: float) -> str:
    return (fleet.horizon.start + dt.timedelta(days=round(days))).isoformat()


def year_figures(
    fleet: Fleet, grid: PlanGrid, economics: GroupEconomics | ScenarioSums, allocation: Allocation
) -> tuple[list[YearFigures], list[SiteYear]]:
    """`economics`: the run's economics, or their sums taken batch by batch (optimizer.report_sums)."""
    means = report_means(fleet, economics, allocation, grid)
    profits = means.nominal
    year_of = grid.timeline.period_year()
    depreciation = _depreciation_per_year(fleet, grid, means.end_hashprice_ratio, allocation)
    years, site_years = [], []
    for year in range(int(year_of.max()) + 1 if len(year_of) else 0):
        periods = year_of == year
        part = {name: values[:, periods].sum(axis=1).mean(axis=1) for name, values in profits.by_period.items()}
        ebitda = _ebitda(part, profits)
        btc = float(part["btc_mined"].sum())
        cash_cost = float(part["mining_power_cost_usd"].sum() + part["mining_opex_usd"].sum())
        first = grid.timeline.bounds[:-1][periods][0] * grid.timeline.step_hours / HOURS_PER_DAY
        years.append(
            YearFigures(
                year=year,
                start_date=_date(fleet, first),
                btc_mined=btc,
                hash_revenue_usd=float(part["hash_revenue_usd"].sum()),
                mining_power_cost_usd=float(part["mining_power_cost_usd"].sum()),
                mining_opex_usd=float(part["mining_opex_usd"].sum()),
                rent_usd=float(part["rent_usd"].sum()),
                capex_usd=float(part["capex_usd"].sum()),
                ebitda_usd=float(ebitda.sum()),
                cash_cost_usd_per_btc=cash_cost / btc if btc > 0 else None,
                all_in_cost_usd_per_btc=(cash_cost + depreciation) / btc if btc > 0 else None,
            )
        )
        for n, site in enumerate(fleet.sites):
            site_years.append(
                SiteYear(
                    site=site.id,
                    year=year,
                    ebitda_usd=float(ebitda[n]),
                    btc_mined=float(part["btc_mined"][n]),
                    rent_usd=float(part["rent_usd"][n]),
                )
            )
    return years, site_years


def _ebitda(part: dict[str, np.ndarray], profits: SiteProfits) -> np.ndarray:
    """[N] operating cash: every component but capex, machine sales and purchases, moves and terminal value."""
    resells = profits.resells[:, 0]
    power = np.where(resells, part["block_payment_usd"] - part["ai_passthrough_usd"], part["mining_power_cost_usd"])
    resale = part["block_resale_usd"] - np.where(resells, part["mining_power_cost_usd"], 0.0) - part["ai_resale_usd"]
    return (
        part["hash_revenue_usd"]
        - power
        + resale
        + part["dr_credit_usd"]
        - part["sla_penalty_usd"]
        - part["mining_opex_usd"]
        - part["idle_cost_usd"]
        + part["rent_usd"]
    )


def _depreciation_per_year(fleet: Fleet, grid: PlanGrid, end_ratio: float, allocation: Allocation) -> float:
    """Expected loss of resale value of the machines that mine, per year of the horizon (nominal); end_ratio:
    the expected hashprice at the horizon's end over the first day's."""
    years = grid.timeline.horizon_hours / HOURS_PER_DAY / (DAYS_PER_MONTH * 12)
    counts = allocation.lifecycle_counts(fleet)
    lost = 0.0
    for g, group in enumerate(fleet.rack_groups):
        modes = {life.key: life.mode for life in grid.lifecycles[g]}
        miners = sum(n for key, n in counts.get(group.id, {}).items() if modes[key] in (Mode.MINE, Mode.MOVE))
        lost += rack_resale_usd(fleet, g) * (1.0 - end_ratio) * miners
    for lot in grid.purchase_lots:
        n = allocation.purchases.get(lot.key, 0)
        lost += (purchase_price_usd(fleet, lot.option) - purchase_resale_usd(fleet, grid, lot) * end_ratio) * n
    return lost / years if years > 0 else 0.0


def _rack_events(fleet: Fleet, grid: PlanGrid, allocation: Allocation) -> list[TimelineEvent]:
    """Sales (racks per date) and moves (per group, target and date), today's and at recourse dates."""
    sold: dict[int, int] = {}
    events = []
    for g, group in enumerate(fleet.rack_groups):
        options = {life.key: life for life in grid.lifecycles[g]}
        for key, n in allocation.lifecycle_counts(fleet).get(group.id, {}).items():
            life = options[key]
            if life.conversion is not None:
                continue  # the machines' fate goes with the conversion
            if life.sold_at is not None:
                sold[life.sold_at] = sold.get(life.sold_at, 0) + n
            elif life.moved_at is not None:
                date = _date(fleet, grid.boundary_days(life.moved_at))
                detail = f"{n} {group.id} racks to {key.rsplit(':', 1)[1]}"
                events.append(TimelineEvent(date=date, event="move", detail=detail))
    for at, n in sorted(sold.items()):
        date = _date(fleet, grid.boundary_days(at))
        events.append(TimelineEvent(date=date, event="sale", detail=f"{n} racks sold"))
    return events


def timeline_events(
    fleet: Fleet, grid: PlanGrid, economics: GroupEconomics | ScenarioSums, allocation: Allocation
) -> list[TimelineEvent]:
    """`economics`: the run's economics, or their sums taken batch by batch (optimizer.report_sums)."""
    means = report_means(fleet, economics, allocation, grid)
    events: list[TimelineEvent] = []
    terms = lease_terms(fleet, grid)
    events += _rack_events(fleet, grid, allocation)
    for lot in grid.purchase_lots:
        n = allocation.purchases.get(lot.key, 0)
        if n:
            date = _date(fleet, grid.boundary_days(lot.delivery))
            events.append(TimelineEvent(date=date, event="delivery", detail=f"{n} racks of {lot.key}"))
    for conversion in conversion_results(fleet, grid, means, allocation):
        events.append(TimelineEvent(date=conversion.start_date, event="construction_start", detail=conversion.site))
        events.append(
            TimelineEvent(date=conversion.ready_date, event="hall_ready", detail=f"{conversion.site}: first rent")
        )
    for (offer_id, site_id), mw in allocation.lease_mw.items():
        term = terms[offer_id, site_id, allocation.start_option(site_id)]
        months = term.ready_months + fleet.lease_offer(offer_id).term_months
        detail = f"{offer_id} at {site_id}, {mw:.1f} MW"
        events.append(TimelineEvent(date=_date(fleet, months * DAYS_PER_MONTH), event="lease_end", detail=detail))
    halving = means.halving_step[means.halving_step < grid.timeline.n_steps]
    if len(halving):
        days = float(np.median(halving)) * grid.timeline.step_hours / HOURS_PER_DAY
        share = len(halving) / means.n_scenarios
        events.append(
            TimelineEvent(date=_date(fleet, days), event="halving", detail=f"median date, in {share:.0%} of scenarios")
        )
    return sorted(events, key=lambda e: e.date)
