"""Run or curtail now: a plan's mining racks against the current power price and hashprice.

A mining rack runs exactly when its hash revenue after the pool fee exceeds its power cost at the
site's mining PUE: the rule the plan's economics apply hour by hour (optimizer/economics.py), here
applied to the prices of this moment. Equivalently, a group runs while its site's price is below
the group's breakeven power price (`breakeven_power_price_usd_per_mwh`). The power cost is the
marginal one, as in `optimizer.economics.site_power_price_usd_per_mwh`: the fixed price, spot plus
adder (index), or, under take-or-pay, the resale a drawn MWh forgoes (spot minus the resale fee).

A curtailment event in progress (a site may draw only so many MW) or a demand-response call couples
the racks of a site within the step. That is one coupled step of the plan's second stage, and it is
dispatched by the very function that evaluates plans, `optimizer.allocation.site_profits`: the step
is laid out as a one-scenario GroupEconomics with one coupled slot per affected site. AI load keeps
priority, mining fills what is left with the best margin per kW first, and at a call mining sits the
committed MW below the plan's mining load. The LP dispatch may run a fraction of one group's racks;
racks are whole, so that group runs the LP's count rounded down (the site stays within its limit).

Fleet automation asks many times a minute, so everything that does not change between calls
(which racks mine, their hashrate, power and PUE, the site of each group) is laid out once per plan
in a `DispatchTable`; a decision is then a handful of numpy operations over the rack groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from optimizer.allocation import Allocation, Mode, site_profits
from optimizer.constants import HOURS_PER_DAY, KW_PER_MW, TH_PER_PH, block_subsidy_btc
from optimizer.economics import GroupEconomics, breakeven_power_price_usd_per_mwh
from optimizer.fleet import ContractType, Fleet
from optimizer.lifecycles import plan_grid
from optimizer.rack_ranges import RackRange
from optimizer.scenarios import hashprice_usd_per_ph_day

# Racks the LP dispatch runs are a float (racks x margin / margin); this much below a whole rack still counts as it.
RACK_ROUNDING_TOL = 1e-9


class DispatchInputError(ValueError):
    """A price or network figure that cannot be used; `field` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class DispatchTable:
    """Per-plan constants of the mining rack groups (only groups with mining racks, fleet order)."""

    group_ids: tuple[str, ...]
    group_sites: tuple[str, ...]
    site_ids: tuple[str, ...]  # every site of the fleet, fleet order
    site_index: np.ndarray  # [G] position of each group's site in site_ids
    racks: np.ndarray  # [G] mining racks of the plan
    rack_hashrate_ths: np.ndarray  # [G]
    rack_power_kw: np.ndarray  # [G] at the machines
    pue: np.ndarray  # [G] mining PUE of the group's site
    efficiency_j_per_th: np.ndarray  # [G]
    pool_fee_fraction: float
    default_price_usd_per_mwh: np.ndarray  # [sites] fixed-contract price; nan where the caller must give one
    rack_ranges: tuple[tuple[RackRange, ...], ...]  # [G] ids of the mining racks, in id order, as blocks
    fees_btc_per_block: float  # defaults for a hashprice derived from network figures
    block_height: int
    site_price_offset_usd_per_mwh: np.ndarray  # [sites] added to a given site price: -resale fee (take-or-pay)
    spot_offset_usd_per_mwh: np.ndarray  # [sites] added to the market spot: adder, -resale fee; nan if fixed
    market_sites: dict[str, tuple[int, ...]]  # market id -> positions of its sites
    fleet: Fleet  # with `allocation`, the plan's first stage: what a coupled step is dispatched against
    allocation: Allocation
    fleet_group_index: np.ndarray  # [G] position of each group in fleet.rack_groups
    # Derived once per plan (build_dispatch_table), so that a decision is a few operations per call:
    rack_meter_mw: np.ndarray  # [G] load of one mining rack at the meter, PUE included
    meter_mw: np.ndarray  # [G] load of each group's mining racks at the meter, PUE included
    revenue_usd_per_rack_hour_per_hashprice: np.ndarray  # [G] hash revenue after pool fee per $/PH/day
    breakeven_usd_per_mwh_per_hashprice: np.ndarray  # [G] breakeven power price per $/PH/day (linear in it)
    site_position: dict[str, int]  # site id -> position in site_ids
    mining_site_positions: tuple[int, ...]  # positions of the sites with mining racks, each once


@dataclass(frozen=True)
class SiteConditions:
    """What couples the racks of some sites now: a curtailment event's limit, a demand-response call."""

    available_mw: Mapping[str, float]  # site id -> MW the site may draw at the meter
    dr_call: frozenset[str]  # sites with a demand-response call in progress

    def sites(self, table: DispatchTable) -> list[int]:
        """Positions (fleet order) of the sites with a condition."""
        return [n for n, s in enumerate(table.site_ids) if s in self.available_mw or s in self.dr_call]


@dataclass(frozen=True)
class SiteState:
    """A site with an event or a call, as dispatched."""

    site: str
    available_mw: float | None
    dr_call: bool
    dr_commitment_mw: float
    ai_load_mw: float  # leased IT MW x AI PUE, at the meter
    run_mw: float  # mining load to run at the meter
    shed_ai_mw: float  # critical IT load shed


@dataclass(frozen=True)
class DispatchDecision:
    hashprice_usd_per_ph_day: float
    run: np.ndarray  # [G] bool: the price rule, margin > 0
    power_price_usd_per_mwh: np.ndarray  # [G] marginal price at the group's site
    breakeven_power_price_usd_per_mwh: np.ndarray  # [G]
    margin_usd_per_rack_hour: np.ndarray  # [G] hash revenue after pool fee - power cost
    racks_run: np.ndarray  # [G] int: all racks where `run` and nothing couples; the coupled dispatch elsewhere
    lp_racks_run: np.ndarray  # [G] float: the LP dispatch, which may run part of a rack; racks_run rounds it down
    sites: tuple[SiteState, ...] = ()  # the sites with a condition, fleet order


def build_dispatch_table(
    fleet: Fleet,
    racks_mine: Mapping[str, int],
    rack_ranges_mine: Mapping[str, Sequence[RackRange]] | None = None,
    allocation: Allocation | None = None,
) -> DispatchTable:
    """Lay out a plan's mining racks once; `racks_mine` maps group id -> racks the plan mines.

    `allocation` is the plan's whole first stage (leases and demand-response MW matter when an event
    or a call couples a site's racks); by default the mining racks alone, nothing leased or committed.
    """
    groups = [g for g in fleet.rack_groups if racks_mine.get(g.id, 0) > 0]
    if allocation is None:
        allocation = Allocation(racks={g.id: {Mode.MINE: racks_mine.get(g.id, 0)} for g in fleet.rack_groups})
    site_ids = tuple(s.id for s in fleet.sites)
    position = {s: i for i, s in enumerate(site_ids)}
    group_position = {g.id: i for i, g in enumerate(fleet.rack_groups)}
    default_price = [
        s.contract.price_usd_per_mwh if s.contract.type is ContractType.FIXED else math.nan for s in fleet.sites
    ]
    market_sites: dict[str, list[int]] = {m.id: [] for m in fleet.markets}
    for n, site in enumerate(fleet.sites):
        market_sites[site.market].append(n)
    racks = np.array([racks_mine[g.id] for g in groups], dtype=np.int64)
    rack_hashrate_ths = np.array([fleet.rack_hashrate_ths(g) for g in groups], dtype=float)
    rack_power_kw = np.array([fleet.rack_power_kw(g) for g in groups], dtype=float)
    pue = np.array([fleet.site(g.site).pue_mining for g in groups], dtype=float)
    efficiency_j_per_th = np.array([fleet.machine(g.machine).efficiency_j_per_th for g in groups], dtype=float)
    rack_meter_mw = rack_power_kw * pue / KW_PER_MW
    revenue_per_hashprice = rack_hashrate_ths / TH_PER_PH / HOURS_PER_DAY * (1.0 - fleet.pool_fee_fraction)
    return DispatchTable(
        group_ids=tuple(g.id for g in groups),
        group_sites=tuple(g.site for g in groups),
        site_ids=site_ids,
        site_index=np.array([position[g.site] for g in groups], dtype=np.intp),
        racks=racks,
        rack_hashrate_ths=rack_hashrate_ths,
        rack_power_kw=rack_power_kw,
        pue=pue,
        efficiency_j_per_th=efficiency_j_per_th,
        pool_fee_fraction=fleet.pool_fee_fraction,
        default_price_usd_per_mwh=np.array(default_price, dtype=float),
        rack_ranges=tuple(tuple(rack_ranges_mine[g.id]) if rack_ranges_mine else () for g in groups),
        fees_btc_per_block=fleet.bitcoin.fees_btc_per_block,
        block_height=fleet.bitcoin.start_block_height,
        site_price_offset_usd_per_mwh=np.array([-_resale_fee(s) for s in fleet.sites], dtype=float),
        spot_offset_usd_per_mwh=np.array([_spot_offset(s) for s in fleet.sites], dtype=float),
        market_sites={m: tuple(sites) for m, sites in market_sites.items()},
        fleet=fleet,
        allocation=allocation,
        fleet_group_index=np.array([group_position[g.id] for g in groups], dtype=np.intp),
        rack_meter_mw=rack_meter_mw,
        meter_mw=racks * rack_meter_mw,
        revenue_usd_per_rack_hour_per_hashprice=revenue_per_hashprice,
        breakeven_usd_per_mwh_per_hashprice=breakeven_power_price_usd_per_mwh(
            1.0, efficiency_j_per_th, pue, fleet.pool_fee_fraction
        ),
        site_position=position,
        mining_site_positions=tuple(dict.fromkeys(position[g.site] for g in groups)),
    )


def _resale_fee(site) -> float:
    return site.contract.resale_fee_usd_per_mwh if site.contract.type is ContractType.TAKE_OR_PAY else 0.0


def _spot_offset(site) -> float:
    """Marginal price minus spot, as optimizer.economics.site_power_price_usd_per_mwh has it (nan: not spot)."""
    contract = site.contract
    if contract.type is ContractType.INDEX:
        return contract.adder_usd_per_mwh
    if contract.type is ContractType.TAKE_OR_PAY:
        return -contract.resale_fee_usd_per_mwh
    return math.nan


def site_prices_usd_per_mwh(
    table: DispatchTable, prices: Mapping[str, float], spot_by_market: Mapping[str, float] | None = None
) -> np.ndarray:
    """[sites] marginal price per site now, the price the run rule compares with.

    A site price given in `prices` wins: as is for fixed (an override) and index (the price paid),
    minus the resale fee for take-or-pay (the given price is the spot its unused power sells at).
    Otherwise the site's market spot from `spot_by_market`: plus the adder (index), minus the resale
    fee (take-or-pay). Otherwise the fixed contract price.
    """
    out = table.default_price_usd_per_mwh.copy()
    for market, spot in (spot_by_market or {}).items():
        where = f"spot_price_usd_per_mwh_by_market[{market}]"
        if market not in table.market_sites:
            raise DispatchInputError(where, f"unknown market (known: {list(table.market_sites)})")
        if not math.isfinite(spot):
            raise DispatchInputError(where, f"must be finite (got {spot})")
        for n in table.market_sites[market]:
            if not math.isnan(table.spot_offset_usd_per_mwh[n]):
                out[n] = spot + table.spot_offset_usd_per_mwh[n]
    position = table.site_position
    for site, price in prices.items():
        where = f"power_price_usd_per_mwh_by_site[{site}]"
        if site not in position:
            raise DispatchInputError(where, f"unknown site (known: {list(table.site_ids)})")
        if not math.isfinite(price):
            raise DispatchInputError(where, f"must be finite (got {price})")
        out[position[site]] = price + table.site_price_offset_usd_per_mwh[position[site]]
    for n in table.mining_site_positions:
        if math.isnan(out[n]):
            raise DispatchInputError(
                f"power_price_usd_per_mwh_by_site[{table.site_ids[n]}]",
                "required: the site has mining racks and no fixed contract price; give its price or its "
                "market's spot price",
            )
    return out


def site_conditions(
    table: DispatchTable, available_mw_by_site: Mapping[str, float], dr_call_sites: Sequence[str]
) -> SiteConditions | None:
    """The events and calls of a request, checked; None when there are none (the fast path)."""
    if not available_mw_by_site and not dr_call_sites:
        return None
    known = set(table.site_ids)
    for site, mw in available_mw_by_site.items():
        where = f"available_mw_by_site[{site}]"
        if site not in known:
            raise DispatchInputError(where, f"unknown site (known: {list(table.site_ids)})")
        if not (mw >= 0 and math.isfinite(mw)):
            raise DispatchInputError(where, f"must be a finite number >= 0 (got {mw})")
    for i, site in enumerate(dr_call_sites):
        if site not in known:
            raise DispatchInputError(f"dr_call_sites[{i}]", f"unknown site {site!r} (known: {list(table.site_ids)})")
    return SiteConditions(available_mw=dict(available_mw_by_site), dr_call=frozenset(dr_call_sites))


def network_hashprice_usd_per_ph_day(
    table: DispatchTable,
    btc_price_usd: float,
    network_hashrate_ehs: float,
    fees_btc_per_block: float | None = None,
    block_height: int | None = None,
) -> float:
    """Hashprice from BTC price and network hashrate (difficulty taken to match the hashrate);
    fees and chain height default to the plan fleet's."""
    if not (btc_price_usd > 0 and math.isfinite(btc_price_usd)):
        raise DispatchInputError("network.btc_price_usd", f"must be > 0 (got {btc_price_usd})")
    if not (network_hashrate_ehs > 0 and math.isfinite(network_hashrate_ehs)):
        raise DispatchInputError("network.network_hashrate_ehs", f"must be > 0 (got {network_hashrate_ehs})")
    fees = table.fees_btc_per_block if fees_btc_per_block is None else fees_btc_per_block
    if not (fees >= 0 and math.isfinite(fees)):
        raise DispatchInputError("network.fees_btc_per_block", f"must be >= 0 (got {fees})")
    height = table.block_height if block_height is None else block_height
    if height < 0:
        raise DispatchInputError("network.block_height", f"must be >= 0 (got {height})")
    subsidy = float(block_subsidy_btc(height))
    return float(hashprice_usd_per_ph_day(btc_price_usd, network_hashrate_ehs, subsidy, fees))


def decide(
    table: DispatchTable,
    site_price_usd_per_mwh: np.ndarray,
    hashprice: float,
    conditions: SiteConditions | None = None,
) -> DispatchDecision:
    """Run a group's mining racks iff hash revenue after pool fee > rack power x PUE x marginal site price;
    at sites with an event or a call, as many of them as the coupled dispatch of that step runs."""
    if not (hashprice >= 0 and math.isfinite(hashprice)):
        raise DispatchInputError("hashprice_usd_per_ph_day", f"must be a finite number >= 0 (got {hashprice})")
    price = site_price_usd_per_mwh[table.site_index]
    revenue_usd_per_hour = table.revenue_usd_per_rack_hour_per_hashprice * hashprice
    cost_usd_per_hour = table.rack_meter_mw * price
    margin = revenue_usd_per_hour - cost_usd_per_hour
    run = margin > 0
    racks_run = np.where(run, table.racks, 0)
    lp_racks_run = racks_run.astype(float)
    sites: tuple[SiteState, ...] = ()
    if conditions is not None:
        lp_racks_run, sites = _coupled_step(table, conditions, revenue_usd_per_hour, cost_usd_per_hour, lp_racks_run)
        racks_run = np.clip(np.floor(lp_racks_run + RACK_ROUNDING_TOL), 0, table.racks).astype(racks_run.dtype)
    return DispatchDecision(
        hashprice_usd_per_ph_day=hashprice,
        run=run,
        power_price_usd_per_mwh=price,
        breakeven_power_price_usd_per_mwh=table.breakeven_usd_per_mwh_per_hashprice * hashprice,
        margin_usd_per_rack_hour=margin,
        racks_run=racks_run,
        lp_racks_run=lp_racks_run,
        sites=sites,
    )


def _coupled_step(
    table: DispatchTable,
    conditions: SiteConditions,
    revenue_usd_per_hour: np.ndarray,
    cost_usd_per_hour: np.ndarray,
    lp_racks_run: np.ndarray,
) -> tuple[np.ndarray, tuple[SiteState, ...]]:
    """Dispatch the sites with a condition as one coupled step of one scenario, by optimizer.allocation;
    returns the LP's racks run per group (fractional) and the state of those sites."""
    fleet, allocation = table.fleet, table.allocation
    hours = fleet.horizon.step_hours
    coupled = conditions.sites(table)
    slot_of = {n: k for k, n in enumerate(coupled)}
    is_coupled = np.zeros(len(table.site_ids), dtype=bool)
    is_coupled[coupled] = True
    at_coupled = is_coupled[table.site_index]  # [G]
    # candidate racks: the groups of those sites with a positive margin (the others never run)
    items = np.flatnonzero(at_coupled & (revenue_usd_per_hour > cost_usd_per_hour))
    revenue_usd, cost_usd = revenue_usd_per_hour[items] * hours, cost_usd_per_hour[items] * hours
    economics = _one_step_economics(fleet, conditions, table, coupled, slot_of, items, revenue_usd, cost_usd)
    # the plan's leased halls are taken as live: dispatch decides the present step of a running fleet
    ai_now_kw = np.array([allocation.site_lease_mw(s.id) * s.pue_ai * KW_PER_MW for s in fleet.sites])
    profits = site_profits(fleet, economics, allocation, ai_load_now_kw=ai_now_kw)

    out = lp_racks_run.copy()
    out[at_coupled] = 0.0
    # the knapsack adds racks x margin to each group's value (nothing separable here): divide the margin out
    out[items] = profits.group_mine_value_usd[table.fleet_group_index[items], 0] / (revenue_usd - cost_usd)
    run_mw = np.floor(out + RACK_ROUNDING_TOL) * table.rack_meter_mw
    states = []
    for n in coupled:
        site = fleet.sites[n]
        states.append(
            SiteState(
                site=site.id,
                available_mw=conditions.available_mw.get(site.id),
                dr_call=site.id in conditions.dr_call,
                dr_commitment_mw=allocation.site_dr_mw(site.id),
                ai_load_mw=allocation.site_lease_mw(site.id) * site.pue_ai,
                run_mw=float(run_mw[table.site_index == n].sum()),
                shed_ai_mw=float(profits.lost_ai_mwh[n, 0] / hours),
            )
        )
    return out, tuple(states)


def _one_step_economics(
    fleet: Fleet,
    conditions: SiteConditions,
    table: DispatchTable,
    coupled: list[int],
    slot_of: dict[int, int],
    items: np.ndarray,
    revenue_usd: np.ndarray,
    cost_usd: np.ndarray,
) -> GroupEconomics:
    """This step as GroupEconomics of one scenario: nothing separable, one coupled slot per site with a condition."""
    n_sites = len(fleet.sites)
    site_ids = [fleet.sites[n].id for n in coupled]
    cap_kw = [conditions.available_mw.get(s, math.inf) * KW_PER_MW for s in site_ids]
    n_profiles = len(plan_grid(fleet, 1).profiles)
    zeros_profiles, zeros_site_periods = np.zeros((n_profiles, 1, 1)), np.zeros((n_sites, 1, 1))
    return GroupEconomics(
        indices=np.zeros(1, dtype=np.int64),
        steps=np.ones(1, dtype=np.int64),
        mine_value_usd=zeros_profiles,
        hash_revenue_usd=zeros_profiles,
        power_cost_usd=zeros_profiles,
        hash_revenue_pv_usd=zeros_profiles,
        power_cost_pv_usd=zeros_profiles,
        energy_mwh=zeros_profiles,
        btc_mined=zeros_profiles,
        run_fraction=np.zeros((n_profiles, 1)),
        mean_hashprice_usd_per_ph_day=np.zeros(1),
        halving_step=np.ones(1, dtype=np.int64),
        hashprice_ratio=np.ones((2, 1)),
        block_resale_usd=zeros_site_periods,
        block_payment_usd=zeros_site_periods,
        block_resale_pv_usd=zeros_site_periods,
        block_payment_pv_usd=zeros_site_periods,
        ai_resale_pv_usd_per_mw=zeros_site_periods,
        ai_passthrough_pv_usd_per_mw=zeros_site_periods,
        ai_resale_usd_per_mw=zeros_site_periods,
        ai_passthrough_usd_per_mw=zeros_site_periods,
        ai_tail_net_usd_per_mwh=np.zeros((n_sites, 1)),
        coupled_site=np.array(coupled, dtype=np.int64).reshape(-1, 1),
        coupled_step=np.zeros((len(coupled), 1), dtype=np.int64),
        coupled_cap_kw=np.array(cap_kw, dtype=float).reshape(-1, 1),
        coupled_dr_call=np.array([s in conditions.dr_call for s in site_ids], dtype=bool).reshape(-1, 1),
        coupled_resale_usd_per_mwh=np.zeros((len(coupled), 1)),
        coupled_discount=np.ones((len(coupled), 1)),
        coupled_btc_price_usd=np.ones((len(coupled), 1)),
        item_slot=np.array([slot_of[n] for n in table.site_index[items]], dtype=np.int64).reshape(-1, 1),
        item_group=table.fleet_group_index[items].astype(np.int64).reshape(-1, 1),
        item_hash_revenue_usd=revenue_usd.reshape(-1, 1),
        item_power_cost_usd=cost_usd.reshape(-1, 1),
    )
