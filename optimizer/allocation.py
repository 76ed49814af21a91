"""A first-stage plan (racks per lifecycle, conversions, leases, purchases, demand-response MW) and what it earns.

Evaluating an allocation is plain numpy on the per-rack period economics; it does not touch the
MIP, so it doubles as an independent check of the model's profit variables. Every money figure
here is a present value at the plan's start (optimizer.timeline) unless its name says nominal.

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

from dataclasses import dataclass, field

import numpy as np

from optimizer.cashflows import (
    RentValue,
    capex_by_period,
    capex_discount_factor,
    credit_by_period,
    rent_by_period,
    rent_value,
    tail_hours_pv,
)
from optimizer.constants import DAYS_PER_MONTH, HOURS_PER_DAY, KW_PER_MW
from optimizer.economics import NO_SITE, GroupEconomics, economics_grid
from optimizer.fleet import Fleet, RackGroup
from optimizer.lifecycles import (
    Lifecycle,
    PlanGrid,
    plan_grid,
    purchase_price_usd,
    purchase_resale_usd,
    rack_resale_usd,
)
from optimizer.modes import MODES, Mode
from optimizer.rack_ranges import RackRange, group_range

# Shed AI below this counts no lost hour: a lease sized exactly at a cap leaves float dust, not an outage.
LOST_LOAD_TOL_KW = 1e-6

__all__ = ["MODES", "Allocation", "Mode", "Violation", "check_feasible", "scenario_profits_usd", "site_profits"]


@dataclass(frozen=True)
class Allocation:
    """The first stage. `lifecycles` is the decision; `racks` its summary per reporting mode."""

    racks: dict[str, dict[Mode, int]]  # rack group id -> mode -> count
    converted_sites: frozenset[str] = frozenset()
    lease_mw: dict[tuple[str, str], float] = field(default_factory=dict)  # (offer id, site id) -> MW
    dr_mw: dict[str, float] = field(default_factory=dict)  # site id -> committed curtailable MW (meter)
    lifecycles: dict[str, dict[str, int]] = field(default_factory=dict)  # group id -> lifecycle key -> racks
    conversion_start: dict[str, int] = field(default_factory=dict)  # site id -> start option index
    purchases: dict[str, int] = field(default_factory=dict)  # purchase lot key (option id, or "id@mM") -> racks

    def __post_init__(self) -> None:
        # one canonical form, so equal decisions compare equal however they were written
        full = {g: {mode: counts.get(mode, 0) for mode in MODES} for g, counts in self.racks.items()}
        starts = {site: self.conversion_start.get(site, 0) for site in self.converted_sites}
        object.__setattr__(self, "racks", full)
        object.__setattr__(self, "conversion_start", starts)

    @staticmethod
    def from_lifecycles(
        fleet: Fleet,
        grid: PlanGrid,
        lifecycles: dict[str, dict[str, int]],
        conversion_start: dict[str, int] | None = None,
        lease_mw: dict[tuple[str, str], float] | None = None,
        dr_mw: dict[str, float] | None = None,
        purchases: dict[str, int] | None = None,
    ) -> Allocation:
        racks = {}
        for g, group in enumerate(fleet.rack_groups):
            counts = dict.fromkeys(MODES, 0)
            options = {life.key: life for life in grid.lifecycles[g]}
            for key, n in lifecycles.get(group.id, {}).items():
                counts[options[key].mode] += n
            racks[group.id] = counts
        starts = dict(conversion_start or {})
        return Allocation(
            racks=racks,
            converted_sites=frozenset(starts),
            lease_mw=dict(lease_mw or {}),
            dr_mw=dict(dr_mw or {}),
            lifecycles={g: dict(c) for g, c in lifecycles.items()},
            conversion_start=starts,
            purchases=dict(purchases or {}),
        )

    def count(self, group_id: str, mode: Mode) -> int:
        return self.racks[group_id].get(mode, 0)

    def site_dr_mw(self, site_id: str) -> float:
        return self.dr_mw.get(site_id, 0.0)

    def offer_mw(self, offer_id: str) -> float:
        return sum(mw for (o, _), mw in self.lease_mw.items() if o == offer_id)

    def site_lease_mw(self, site_id: str) -> float:
        return sum(mw for (_, s), mw in self.lease_mw.items() if s == site_id)

    def lifecycle_counts(self, fleet: Fleet) -> dict[str, dict[str, int]]:
        """The decision per group; a group given only as counts per mode reads mine, idle, sell and AI at its
        site's first start option with the machines stored."""
        keys = {Mode.MINE: "mine", Mode.IDLE: "idle", Mode.SELL: "sell", Mode.AI: "ai@0:store"}
        out = {}
        for group in fleet.rack_groups:
            if group.id in self.lifecycles:
                out[group.id] = self.lifecycles[group.id]
                continue
            counts = self.racks.get(group.id)
            if counts is None:
                continue
            if counts.get(Mode.MOVE, 0):
                raise ValueError(f"allocation.{group.id}: moved racks need their lifecycle (target site)")
            out[group.id] = {keys[mode]: n for mode, n in counts.items() if n}
        return out

    def start_option(self, site_id: str) -> int:
        return self.conversion_start.get(site_id, 0)


def all_mining(fleet: Fleet) -> Allocation:
    return Allocation({g.id: {**dict.fromkeys(MODES, 0), Mode.MINE: g.racks} for g in fleet.rack_groups})


def rack_ranges(group: RackGroup, allocation: Allocation) -> dict[Mode, list[RackRange]]:
    """Which racks take which mode: the group's racks in id order, one block per mode in the order of MODES."""
    out, start = {}, 0
    for mode in MODES:
        n = allocation.count(group.id, mode)
        out[mode], start = ([group_range(group.id, start, n)] if n else []), start + n
    return out


def converted_mw(fleet: Fleet, allocation: Allocation, site_id: str) -> float:
    """Critical IT capacity the converted rack slots of a site provide."""
    return sum(
        allocation.count(g.id, Mode.AI) * fleet.rack_power_kw(g) / KW_PER_MW
        for g in fleet.rack_groups
        if g.site == site_id
    )


def full_capex_usd(fleet: Fleet, site_id: str, ai_mw: float) -> float:
    """Nominal conversion capex before any tenant funding."""
    conversion = fleet.site(site_id).ai
    return conversion.fixed_capex_usd + conversion.capex_usd_per_mw * ai_mw


@dataclass(frozen=True)
class LeaseTerm:
    """One (offer, site, start option): when rent runs and what one MW of it is worth."""

    ready: int  # period boundary at which the hall goes live and rent starts
    end: int  # period boundary at which the lease ends (P when past the horizon)
    ready_months: float
    rent: RentValue
    capex_factor: float  # PV of one dollar of the site's capex spent along its schedule
    tail_hours_pv: float  # discounted lease hours past the horizon
    rent_by_period: np.ndarray  # [P] rent of one MW paid in each period, discounted
    capex_by_period: np.ndarray  # [P] share of the capex paid in each period, discounted

    def live(self, period: int) -> bool:
        return self.ready <= period < self.end


def lease_terms(fleet: Fleet, grid: PlanGrid) -> dict[tuple[str, str, int], LeaseTerm]:
    """Every (offer, site, option) a lease can run on: an offer lapses for options ready after its start_by."""
    timeline = grid.timeline
    out = {}
    for offer in fleet.lease_offers:
        for site_id in offer.sites:
            conversion = fleet.site(site_id).ai
            for k, months in enumerate(conversion.start_months):
                ready = grid.conversion_ready[site_id][k]
                ready_hours = timeline.bounds[ready] * timeline.step_hours if ready < grid.n_periods else None
                ready_months = (
                    ready_hours / (DAYS_PER_MONTH * HOURS_PER_DAY)
                    if ready_hours is not None
                    else months + conversion.build_days / DAYS_PER_MONTH
                )
                if offer.start_by is not None:
                    ready_date_days = ready_months * DAYS_PER_MONTH
                    if ready_date_days > (offer.start_by - fleet.horizon.start).days + 1e-9:
                        continue
                end_step = timeline.step_at_months(ready_months + offer.term_months)
                out[offer.id, site_id, k] = LeaseTerm(
                    ready=ready,
                    end=timeline.period_starting_at(end_step),
                    ready_months=ready_months,
                    rent=rent_value(offer, ready_months, timeline),
                    capex_factor=capex_discount_factor(conversion, months, timeline),
                    tail_hours_pv=tail_hours_pv(offer, ready_months, timeline),
                    rent_by_period=rent_by_period(offer, ready_months, timeline),
                    capex_by_period=capex_by_period(conversion, months, timeline),
                )
    return out


def lease_net_pv_usd_per_mw(fleet: Fleet, grid: PlanGrid, offer_id: str, site_id: str) -> tuple[float, int] | None:
    """Best present value of one MW leased to the offer at the site, over the site's start options: rent with
    its terminal value, minus the per-MW capex the site funds; and that start option. None if none is open."""
    terms = lease_terms(fleet, grid)
    offer, conversion = fleet.lease_offer(offer_id), fleet.site(site_id).ai
    capex_per_mw = conversion.capex_usd_per_mw * (1.0 - offer.tenant_capex_share)
    values = [
        (term.rent.pv_usd - capex_per_mw * term.capex_factor, k)
        for (o, s, k), term in terms.items()
        if o == offer_id and s == site_id
    ]
    return max(values, key=lambda vk: (vk[0], -vk[1])) if values else None


def planned_mining_kw(fleet: Fleet, grid: PlanGrid, present: np.ndarray) -> np.ndarray:
    """[N, P] mining load at the meter if every rack present mining runs."""
    out = np.zeros((len(fleet.sites), grid.n_periods))
    for q, profile in enumerate(grid.profiles):
        out[profile.site] += present[q] * profile.meter_kw
    return out


def present_racks(fleet: Fleet, grid: PlanGrid, allocation: Allocation) -> np.ndarray:
    """[Q, P] racks mining as each profile in each period."""
    out = np.zeros((len(grid.profiles), grid.n_periods))
    for g, (_, counts) in enumerate(_ordered_counts(fleet, allocation)):
        options = {life.key: life for life in grid.lifecycles[g]}
        for key, n in counts.items():
            for q, first, stop in options[key].mining:
                out[q, first:stop] += n
    for lot in grid.purchase_lots:
        out[lot.profile, lot.delivery :] += allocation.purchases.get(lot.key, 0)
    return out


def _ordered_counts(fleet: Fleet, allocation: Allocation) -> list[tuple[str, dict[str, int]]]:
    counts = allocation.lifecycle_counts(fleet)
    return [(g.id, counts.get(g.id, {})) for g in fleet.rack_groups]


def ai_load_kw(fleet: Fleet, grid: PlanGrid, allocation: Allocation) -> np.ndarray:
    """[N, P] AI load at the meter of the leases live in each period."""
    terms = lease_terms(fleet, grid)
    site_index = {s.id: n for n, s in enumerate(fleet.sites)}
    out = np.zeros((len(fleet.sites), grid.n_periods))
    for (offer_id, site_id), mw in allocation.lease_mw.items():
        term = terms[offer_id, site_id, allocation.start_option(site_id)]
        out[site_index[site_id], term.ready : term.end] += mw * fleet.site(site_id).pue_ai * KW_PER_MW
    return out


@dataclass(frozen=True)
class SiteProfits:
    """Every component of an allocation's NPV per site (axis 0, fleet order) and scenario (axis 1).

    npv = hash revenue - mining power cost (marginal) - opex - idle cost + machine sales (and salvage)
          - move costs - machines bought + rent (terminal value included) - capex + DR credit
          + block resale - block payment - AI resale forgone + AI pass-through + AI power past the horizon
          - SLA penalty
    All present values except the physical quantities (MWh, hours, BTC). Take-or-pay terms are zero
    under fixed and index contracts.
    """

    hash_revenue_usd: np.ndarray
    mining_power_cost_usd: np.ndarray  # marginal price: forgone resale under take-or-pay
    mining_energy_mwh: np.ndarray  # drawn by mining racks at the meter
    btc_mined: np.ndarray  # after pool fee
    event_curtailed_mwh: np.ndarray  # energy racks with a positive margin could not draw (caps, DR calls)
    mining_opex_usd: np.ndarray
    idle_cost_usd: np.ndarray
    machine_sales_usd: np.ndarray  # machines sold, and those kept valued at the horizon's end
    move_cost_usd: np.ndarray
    machines_bought_usd: np.ndarray
    rent_usd: np.ndarray  # inside the horizon
    terminal_value_usd: np.ndarray  # rent and tenant power past the horizon
    capex_usd: np.ndarray  # net of tenant-funded capex
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
    by_period: dict[str, np.ndarray] = field(default_factory=dict)  # each component [N, P, S]

    @property
    def profit_usd(self) -> np.ndarray:
        """[N, S] net present value."""
        return (
            self.hash_revenue_usd
            - self.mining_power_cost_usd
            - self.mining_opex_usd
            - self.idle_cost_usd
            + self.machine_sales_usd
            - self.move_cost_usd
            - self.machines_bought_usd
            + self.rent_usd
            + self.terminal_value_usd
            - self.capex_usd
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


_PER_SITE = [n for n in SiteProfits.__dataclass_fields__ if n not in ("group_mine_value_usd", "resells", "by_period")]


def site_profits(
    fleet: Fleet,
    economics: GroupEconomics,
    allocation: Allocation,
    grid: PlanGrid | None = None,
    ai_load_now_kw: np.ndarray | None = None,
) -> SiteProfits:
    """Exact per-site, per-scenario NPV of an allocation on the given economics.

    Every component is accumulated per period (`by_period`), so a year's figures are a sum over its
    periods. `ai_load_now_kw` ([N]) replaces the leases' timing in coupled steps (dispatch of the
    present step).
    """
    grid = grid or economics_grid(fleet, economics)
    n_sites, n_scen = len(fleet.sites), economics.n_scenarios
    out = {name: np.zeros((n_sites, grid.n_periods, n_scen)) for name in _PER_SITE}
    group_value = np.zeros((len(fleet.rack_groups), n_scen))
    _add_racks(fleet, grid, economics, allocation, out, group_value)
    _add_purchases(fleet, grid, economics, allocation, out)
    _add_ai_and_contracts(fleet, grid, economics, allocation, out)
    _add_coupled_dispatch(fleet, grid, economics, allocation, out, group_value, ai_load_now_kw)
    resells = np.array([[s.contract.resells] for s in fleet.sites], dtype=bool).reshape(n_sites, 1)
    totals = {name: values.sum(axis=1) for name, values in out.items()}
    return SiteProfits(**totals, group_mine_value_usd=group_value, resells=resells, by_period=out)


def _add_mining(grid: PlanGrid, economics: GroupEconomics, q: int, first: int, stop: int, n: float, out: dict):
    """Add n racks mining as profile q through periods [first, stop); returns their value [S]."""
    site = grid.profiles[q].site
    periods = slice(first, stop)
    value = economics.mine_value_usd[q, periods] * n
    revenue = economics.hash_revenue_pv_usd[q, periods] * n
    cost = economics.power_cost_pv_usd[q, periods] * n
    out["hash_revenue_usd"][site, periods] += revenue
    out["mining_power_cost_usd"][site, periods] += cost
    out["mining_opex_usd"][site, periods] += revenue - cost - value
    out["mining_energy_mwh"][site, periods] += economics.energy_mwh[q, periods] * n
    out["btc_mined"][site, periods] += economics.btc_mined[q, periods] * n
    return value.sum(axis=0)


def _add_racks(fleet, grid: PlanGrid, economics, allocation: Allocation, out: dict, group_value) -> None:
    timeline = grid.timeline
    site_index = {s.id: n for n, s in enumerate(fleet.sites)}
    idle_days = timeline.period_discounted_days()
    boundary_discount = timeline.discount_at_hours(timeline.bounds * timeline.step_hours)
    last = grid.n_periods - 1
    for g, (group_id, counts) in enumerate(_ordered_counts(fleet, allocation)):
        group, home = fleet.rack_groups[g], site_index[fleet.rack_groups[g].site]
        options: dict[str, Lifecycle] = {life.key: life for life in grid.lifecycles[g]}
        resale = rack_resale_usd(fleet, g)
        for key, n in counts.items():
            if key not in options:
                raise ValueError(f"allocation.{group_id}: unknown lifecycle {key!r} (options: {sorted(options)})")
            life = options[key]
            for q, first, stop in life.mining:
                group_value[g] += _add_mining(grid, economics, q, first, stop, n, out)
            if life.idle is not None:
                idle = slice(*life.idle)
                out["idle_cost_usd"][home, idle] += (group.idle_cost_usd_per_rack_day * idle_days[idle] * n)[:, None]
            if life.sold_at is not None:
                at = life.sold_at
                sale = resale * economics.hashprice_ratio[at] * boundary_discount[at] * n
                out["machine_sales_usd"][home, min(at, last)] += sale
            if life.kept:
                salvage = resale * economics.hashprice_ratio[-1] * boundary_discount[-1] * n
                out["machine_sales_usd"][home, last] += salvage
            if life.moved_at is not None:
                at = life.moved_at
                out["move_cost_usd"][home, min(at, last)] += fleet.moves.cost_usd_per_rack * boundary_discount[at] * n


def _add_purchases(fleet, grid: PlanGrid, economics, allocation: Allocation, out: dict) -> None:
    timeline = grid.timeline
    end_discount = timeline.discount_at_hours(timeline.horizon_hours)
    boundary_discount = timeline.discount_at_hours(timeline.bounds * timeline.step_hours)
    for lot in grid.purchase_lots:
        n = allocation.purchases.get(lot.key, 0)
        if not n:
            continue
        site = grid.profiles[lot.profile].site
        _add_mining(grid, economics, lot.profile, lot.delivery, grid.n_periods, n, out)
        price = purchase_price_usd(fleet, lot.option) * boundary_discount[lot.ordered_at]
        out["machines_bought_usd"][site, min(lot.ordered_at, grid.n_periods - 1)] += price * n
        salvage = purchase_resale_usd(fleet, grid, lot) * economics.hashprice_ratio[-1] * end_discount
        out["machine_sales_usd"][site, -1] += salvage * n


def _add_ai_and_contracts(fleet, grid: PlanGrid, economics, allocation: Allocation, out: dict) -> None:
    timeline = grid.timeline
    terms = lease_terms(fleet, grid)
    offers = {o.id: o for o in fleet.lease_offers}
    site_index = {s.id: n for n, s in enumerate(fleet.sites)}
    for (offer_id, site_id), mw in allocation.lease_mw.items():
        n, site = site_index[site_id], fleet.site(site_id)
        k = allocation.start_option(site_id)
        term = terms[offer_id, site_id, k]
        out["rent_usd"][n] += (term.rent_by_period * mw)[:, None]
        out["terminal_value_usd"][n, -1] += term.rent.terminal_pv_usd * mw
        tenant = offers[offer_id].tenant_capex_share * site.ai.capex_usd_per_mw * mw
        out["capex_usd"][n] -= (tenant * term.capex_by_period)[:, None]
        if site.contract.resells:
            live = slice(term.ready, term.end)
            out["ai_resale_usd"][n, live] += economics.ai_resale_pv_usd_per_mw[n, live] * mw
            out["ai_passthrough_usd"][n, live] += economics.ai_passthrough_pv_usd_per_mw[n, live] * mw
            tail = site.pue_ai * term.tail_hours_pv * economics.ai_tail_net_usd_per_mwh[n]
            out["terminal_value_usd"][n, -1] += tail * mw
    for n, site in enumerate(fleet.sites):
        if site.id in allocation.converted_sites:
            k = allocation.start_option(site.id)
            capex = full_capex_usd(fleet, site.id, converted_mw(fleet, allocation, site.id))
            out["capex_usd"][n] += (capex * capex_by_period(site.ai, site.ai.start_months[k], timeline))[:, None]
        if site.demand_response is not None:
            credit = credit_by_period(site.demand_response.credit_usd_per_mw_month, timeline)
            out["dr_credit_usd"][n] += (credit * allocation.site_dr_mw(site.id))[:, None]
        out["block_resale_usd"][n] = economics.block_resale_pv_usd[n]
        out["block_payment_usd"][n] = economics.block_payment_pv_usd[n]


def _add_coupled_dispatch(
    fleet: Fleet, grid: PlanGrid, economics: GroupEconomics, allocation: Allocation, out: dict, group_value, ai_now_kw
) -> None:
    """Add the coupled steps' dispatch (AI priority, then the continuous knapsack) into `out`."""
    slot_k, slot_s = np.nonzero(economics.coupled_site != NO_SITE)
    if len(slot_k) == 0:
        return
    site_n = economics.coupled_site[slot_k, slot_s]
    period = grid.timeline.period_of_step(economics.coupled_step[slot_k, slot_s])
    ai_kw = ai_load_kw(fleet, grid, allocation)[site_n, period] if ai_now_kw is None else ai_now_kw[site_n]
    cap_kw = economics.coupled_cap_kw[slot_k, slot_s]
    lost_kw = np.maximum(0.0, ai_kw - cap_kw)  # zero without an event (cap = inf)
    allowance_kw = np.maximum(0.0, cap_kw - ai_kw)
    present = present_racks(fleet, grid, allocation)
    planned_kw = planned_mining_kw(fleet, grid, present)[site_n, period]
    dr_kw = np.array([allocation.site_dr_mw(s.id) * KW_PER_MW for s in fleet.sites])[site_n]
    called = economics.coupled_dr_call[slot_k, slot_s]
    allowance_kw = np.where(called, np.minimum(allowance_kw, np.maximum(0.0, planned_kw - dr_kw)), allowance_kw)
    _knapsack(fleet, grid, economics, allocation, present, allowance_kw, slot_k, slot_s, out, group_value)
    _shed_ai(fleet, grid, economics, allocation, slot_k, slot_s, site_n, period, lost_kw, out, ai_now_kw is not None)


def _knapsack(fleet, grid, economics, allocation, present, allowance_kw, slot_k, slot_s, out, group_value) -> None:
    """Fill each slot's mining allowance with its items in decreasing margin per kW."""
    item_p, item_s = np.nonzero(economics.item_slot != NO_SITE)
    if len(item_p) == 0:
        return
    n_slots = economics.coupled_site.shape[0]
    allowance_at = np.zeros((n_slots, economics.n_scenarios))
    allowance_at[slot_k, slot_s] = allowance_kw
    k = economics.item_slot[item_p, item_s]
    q = economics.item_group[item_p, item_s]
    revenue = economics.item_hash_revenue_usd[item_p, item_s]
    cost = economics.item_power_cost_usd[item_p, item_s]
    discount = economics.coupled_discount[k, item_s]
    btc = revenue / economics.coupled_btc_price_usd[k, item_s]  # revenue is after pool fee
    period = grid.timeline.period_of_step(economics.coupled_step[k, item_s])
    meter_kw = np.array([p.meter_kw for p in grid.profiles])[q]
    mining = present[q, period]
    order = np.lexsort((-(revenue - cost) / meter_kw, k, item_s))  # by scenario, slot, best margin per kW
    load_kw = (mining * meter_kw)[order]
    slot_key = item_s[order] * n_slots + k[order]
    first = np.concatenate(([True], slot_key[1:] != slot_key[:-1]))
    total = np.cumsum(load_kw)
    before_slot = (total - load_kw)[first][np.cumsum(first) - 1]
    load_before_kw = total - load_kw - before_slot  # load of better items of the same slot
    run_kw = np.clip(allowance_at[k[order], item_s[order]] - load_before_kw, 0.0, load_kw)
    racks = run_kw / meter_kw[order]

    site_n = np.array([p.site for p in grid.profiles])[q[order]]
    scen, step_mwh, d = item_s[order], fleet.horizon.step_hours / KW_PER_MW, discount[order]
    at = (site_n, period[order], scen)
    np.add.at(out["hash_revenue_usd"], at, racks * revenue[order] * d)
    np.add.at(out["mining_power_cost_usd"], at, racks * cost[order] * d)
    np.add.at(out["btc_mined"], at, racks * btc[order])
    np.add.at(out["mining_energy_mwh"], at, run_kw * step_mwh)
    np.add.at(out["event_curtailed_mwh"], at, (load_kw - run_kw) * step_mwh)
    owner = _profile_group(fleet, grid)[q[order]]
    mined = owner >= 0
    np.add.at(group_value, (owner[mined], scen[mined]), (racks * (revenue - cost)[order] * d)[mined])


def _profile_group(fleet: Fleet, grid: PlanGrid) -> np.ndarray:
    """[Q] rack group a profile's racks come from; -1 for purchases."""
    ids = {g.id: i for i, g in enumerate(fleet.rack_groups)}
    return np.array([ids.get(p.key.split("@")[0], -1) for p in grid.profiles])


def _shed_ai(fleet, grid, economics, allocation, slot_k, slot_s, site_n, period, lost_kw, out, ai_now) -> None:
    """AI load above the cap is shed from the offers with the lowest SLA penalty first."""
    hours = fleet.horizon.step_hours
    terms = lease_terms(fleet, grid)
    discount = economics.coupled_discount[slot_k, slot_s]
    for n, site in enumerate(fleet.sites):
        here = (site_n == n) & (lost_kw > 0)
        if not here.any():
            continue
        scen, remaining_kw, d = slot_s[here], lost_kw[here].copy(), discount[here]
        at = (period[here], scen)
        lost_meter_mwh = remaining_kw * hours / KW_PER_MW
        np.add.at(out["lost_ai_mwh"][n], at, lost_meter_mwh / site.pue_ai)
        np.add.at(out["lost_ai_hours"][n], at, np.where(remaining_kw > LOST_LOAD_TOL_KW, hours, 0.0))
        k = allocation.start_option(site.id)
        leases = sorted(
            (
                (o.sla_penalty_usd_per_mwh, o.id, allocation.lease_mw.get((o.id, site.id), 0.0))
                for o in fleet.lease_offers
                if (o.id, site.id, k) in terms
            ),
        )
        for penalty_usd_per_mwh, offer_id, mw in leases:
            live = np.array([terms[offer_id, site.id, k].live(p) or ai_now for p in period[here]])
            taken_kw = np.minimum(remaining_kw, mw * site.pue_ai * KW_PER_MW * live)
            remaining_kw -= taken_kw
            it_mwh = taken_kw * hours / KW_PER_MW / site.pue_ai
            np.add.at(out["sla_penalty_usd"][n], at, it_mwh * penalty_usd_per_mwh * d)
        if site.contract.resells:  # shed energy is resold, and the tenant does not pay for it
            resale = economics.coupled_resale_usd_per_mwh[slot_k[here], scen]
            np.add.at(out["ai_resale_usd"][n], at, -lost_meter_mwh * resale * d)
            np.add.at(out["ai_passthrough_usd"][n], at, -lost_meter_mwh * site.contract.price_usd_per_mwh * d)


def scenario_profits_usd(
    fleet: Fleet, economics: GroupEconomics, allocation: Allocation, grid: PlanGrid | None = None
) -> np.ndarray:
    """[S] NPV of the allocation in each scenario, coupled steps dispatched exactly."""
    return site_profits(fleet, economics, allocation, grid).profit_usd.sum(axis=0)


@dataclass(frozen=True)
class Violation:
    """A constraint of the fleet an allocation breaks, as a record (not a sentence to parse back apart).

    `constraint` is the family ("site_capacity", "site_ai", "site_demand_response", "offer_bounds",
    "offer_start", "capital_budget", "rack_counts", "purchase_racks"), `subject` the id it applies to (site, offer or
    group; "" for fleet-wide), `needed` and `limit` the amounts that clash in `unit` (None where the
    clash is not an amount), `field` the fleet path that sets the limit, `message` the words people read.
    """

    constraint: str
    subject: str
    field: str
    message: str
    needed: float | None = None
    limit: float | None = None
    unit: str = ""

    @property
    def label(self) -> str:
        """The constraint and its subject, site_capacity[texas]; the family alone when fleet-wide."""
        return f"{self.constraint}[{self.subject}]" if self.subject else self.constraint

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def check_feasible(fleet: Fleet, allocation: Allocation, tol: float = 1e-6) -> list[Violation]:
    """The constraints a given allocation breaks; empty when feasible."""
    grid = plan_grid(fleet)
    problems = _check_racks(fleet, grid, allocation) + _check_purchases(fleet, grid, allocation)
    if problems:
        return problems
    present = present_racks(fleet, grid, allocation)
    mining_kw = planned_mining_kw(fleet, grid, present)
    ai_kw = ai_load_kw(fleet, grid, allocation)
    terms = lease_terms(fleet, grid)
    for n, site in enumerate(fleet.sites):
        worst = int(np.argmax(mining_kw[n] + ai_kw[n]))
        load_mw = (mining_kw[n, worst] + ai_kw[n, worst]) / KW_PER_MW
        if load_mw > site.capacity_mw * (1 + tol):
            message = f"load {load_mw:.3f} MW exceeds capacity"
            problems.append(_site(site, "site_capacity", "capacity_mw", message, load_mw, site.capacity_mw))
        ai_mw = converted_mw(fleet, allocation, site.id)
        leased_mw = allocation.site_lease_mw(site.id)
        if leased_mw > ai_mw + tol:
            problems.append(_site(site, "site_ai", "ai", "leased MW exceed converted MW", leased_mw, ai_mw))
        for (offer_id, site_id), _ in allocation.lease_mw.items():
            if site_id == site.id and (offer_id, site_id, allocation.start_option(site_id)) not in terms:
                message = f"cannot start at {site_id}'s chosen option"
                problems.append(Violation("offer_start", offer_id, f"lease_offers.{offer_id}", message))
        problems += _check_dr(site, allocation, mining_kw[n].min() if grid.n_periods else 0.0, tol)
        converted = site.id in allocation.converted_sites
        if site.ai and converted and not (site.ai.min_mw - tol <= ai_mw <= site.ai.max_mw + tol):
            bound = site.ai.min_mw if ai_mw < site.ai.min_mw else site.ai.max_mw
            message = f"converted {ai_mw:.3f} MW outside [min_mw, max_mw]"
            problems.append(_site(site, "site_ai", "ai", message, ai_mw, bound))
        if ai_mw > tol and not converted:
            message = "racks in AI mode at a site that is not converted"
            problems.append(_site(site, "site_ai", "ai", message, ai_mw, 0.0))
    problems += _check_budget(fleet, grid, allocation, tol)
    for offer in fleet.lease_offers:
        mw = allocation.offer_mw(offer.id)
        if mw > tol and not (offer.min_mw - tol <= mw <= offer.max_mw + tol):
            bound = offer.min_mw if mw < offer.min_mw else offer.max_mw
            message = f"{mw:.3f} MW outside [min_mw, max_mw]"
            problems.append(Violation("offer_bounds", offer.id, f"lease_offers.{offer.id}", message, mw, bound, "MW"))
    return problems


def _site(site, constraint: str, field: str, message: str, needed_mw: float, limit_mw: float) -> Violation:
    return Violation(constraint, site.id, f"sites.{site.id}.{field}", message, needed_mw, limit_mw, "MW")


def _check_budget(fleet: Fleet, grid: PlanGrid, allocation: Allocation, tol: float) -> list[Violation]:
    budget = fleet.capital_budget_usd
    capex = sum(full_capex_usd(fleet, s, converted_mw(fleet, allocation, s)) for s in allocation.converted_sites)
    capex += sum(
        purchase_price_usd(fleet, lot.option) * allocation.purchases.get(lot.key, 0) for lot in grid.purchase_lots
    )
    offers = {o.id: o for o in fleet.lease_offers}
    capex -= sum(
        offers[o].tenant_capex_share * fleet.site(s).ai.capex_usd_per_mw * mw
        for (o, s), mw in allocation.lease_mw.items()
    )
    if budget is None or capex <= budget * (1 + tol):
        return []
    message = f"needs ${capex / 1e6:,.1f}M, budget ${budget / 1e6:,.1f}M"
    return [Violation("capital_budget", "", "capital_budget_usd", message, capex, budget, "USD")]


def _check_racks(fleet: Fleet, grid: PlanGrid, allocation: Allocation) -> list[Violation]:
    """Counts that do not describe the fleet's racks: a malformed allocation rather than a broken constraint."""
    problems = []
    try:
        counts = allocation.lifecycle_counts(fleet)
    except ValueError as exc:
        return [Violation("rack_counts", "", "allocation", str(exc))]
    for g, group in enumerate(fleet.rack_groups):
        mine = counts.get(group.id)
        field = f"allocation.{group.id}"
        if mine is None:
            problems.append(Violation("rack_counts", group.id, field, "rack group missing", 0, group.racks, "racks"))
            continue
        options = {life.key for life in grid.lifecycles[g]}
        unknown = sorted(set(mine) - options)
        if unknown:
            message = f"no such option {unknown} (options: {sorted(options)})"
            problems.append(Violation("rack_counts", group.id, field, message))
        total = sum(mine.values())
        if any(n < 0 for n in mine.values()) or total != group.racks:
            message = f"counts {dict(mine)} must be >= 0 and sum to {group.racks}"
            problems.append(Violation("rack_counts", group.id, field, message, total, group.racks, "racks"))
    return problems


def _check_purchases(fleet: Fleet, grid: PlanGrid, allocation: Allocation) -> list[Violation]:
    """Known lots, today's at least the racks already ordered, an option's lots together at most max_racks."""
    lots = {lot.key: lot for lot in grid.purchase_lots}
    unknown = sorted(set(allocation.purchases) - set(lots))
    if unknown:
        message = f"no such purchase {unknown} (options: {sorted(lots)})"
        return [Violation("purchase_racks", "", "allocation.purchases", message)]
    problems = []
    for i, option in enumerate(fleet.purchases):
        ordered = {key: n for key, n in allocation.purchases.items() if lots[key].option == i}
        today, total = ordered.get(option.id, 0), sum(ordered.values())
        if any(n < 0 for n in ordered.values()):
            message = f"negative racks ordered {ordered}"
            problems.append(Violation("purchase_racks", option.id, f"purchases.{option.id}", message))
        elif today < option.min_racks:
            message = f"{today} racks ordered today, fewer than the {option.min_racks} already ordered"
            field = f"purchases.{option.id}.min_racks"
            problems.append(Violation("purchase_racks", option.id, field, message, today, option.min_racks, "racks"))
        elif total > option.max_racks:
            message = f"{total} racks ordered in all ({ordered}), more than max_racks"
            field = f"purchases.{option.id}.max_racks"
            problems.append(Violation("purchase_racks", option.id, field, message, total, option.max_racks, "racks"))
    return problems


def _check_dr(site, allocation: Allocation, least_mining_kw: float, tol: float) -> list[Violation]:
    dr_mw = allocation.site_dr_mw(site.id)
    if dr_mw <= tol:
        return []

    def broken(message: str, limit_mw: float) -> list[Violation]:
        return [_site(site, "site_demand_response", "demand_response", message, dr_mw, limit_mw)]

    if site.demand_response is None:
        return broken("demand-response MW at a site without a programme", 0.0)
    if dr_mw > site.demand_response.max_mw + tol:
        return broken(f"{dr_mw:.3f} MW exceeds max_mw", site.demand_response.max_mw)
    if dr_mw * KW_PER_MW > least_mining_kw * (1 + tol) + tol:
        return broken("committed MW exceed the planned mining load", least_mining_kw / KW_PER_MW)
    return []
