"""Run or curtail now: a plan's mining racks against the current power price and hashprice.

A mining rack runs exactly when its hash revenue after the pool fee exceeds its power cost at the
site's mining PUE: the rule the plan's economics apply hour by hour (optimizer/economics.py), here
applied to the prices of this moment. Equivalently, a group runs while its site's price is below
the group's breakeven power price (`breakeven_power_price_usd_per_mwh`).

Fleet automation asks many times a minute, so everything that does not change between calls
(which racks mine, their hashrate, power and PUE, the site of each group) is laid out once per plan
in a `DispatchTable`; a decision is then a handful of numpy operations over the rack groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from optimizer.constants import HOURS_PER_DAY, KW_PER_MW, TH_PER_PH, block_subsidy_btc
from optimizer.economics import breakeven_power_price_usd_per_mwh
from optimizer.fleet import ContractType, Fleet
from optimizer.scenarios import hashprice_usd_per_ph_day


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
    rack_ids: tuple[tuple[str, ...], ...]  # [G] ids of the mining racks
    fees_btc_per_block: float  # defaults for a hashprice derived from network figures
    block_height: int

    @property
    def meter_mw(self) -> np.ndarray:
        """[G] load of each group's mining racks at the meter, PUE included."""
        return self.racks * self.rack_power_kw * self.pue / KW_PER_MW


@dataclass(frozen=True)
class DispatchDecision:
    hashprice_usd_per_ph_day: float
    run: np.ndarray  # [G] bool
    power_price_usd_per_mwh: np.ndarray  # [G] price at the group's site
    breakeven_power_price_usd_per_mwh: np.ndarray  # [G]
    margin_usd_per_rack_hour: np.ndarray  # [G] hash revenue after pool fee - power cost


def build_dispatch_table(
    fleet: Fleet, racks_mine: Mapping[str, int], rack_ids_mine: Mapping[str, Sequence[str]] | None = None
) -> DispatchTable:
    """Lay out a plan's mining racks once; `racks_mine` maps group id -> racks the plan mines."""
    groups = [g for g in fleet.rack_groups if racks_mine.get(g.id, 0) > 0]
    site_ids = tuple(s.id for s in fleet.sites)
    position = {s: i for i, s in enumerate(site_ids)}
    default_price = [
        s.contract.price_usd_per_mwh if s.contract.type is ContractType.FIXED else math.nan for s in fleet.sites
    ]
    return DispatchTable(
        group_ids=tuple(g.id for g in groups),
        group_sites=tuple(g.site for g in groups),
        site_ids=site_ids,
        site_index=np.array([position[g.site] for g in groups], dtype=np.intp),
        racks=np.array([racks_mine[g.id] for g in groups], dtype=np.int64),
        rack_hashrate_ths=np.array([fleet.rack_hashrate_ths(g) for g in groups], dtype=float),
        rack_power_kw=np.array([fleet.rack_power_kw(g) for g in groups], dtype=float),
        pue=np.array([fleet.site(g.site).pue_mining for g in groups], dtype=float),
        efficiency_j_per_th=np.array([fleet.machine(g.machine).efficiency_j_per_th for g in groups], dtype=float),
        pool_fee_fraction=fleet.pool_fee_fraction,
        default_price_usd_per_mwh=np.array(default_price, dtype=float),
        rack_ids=tuple(tuple(rack_ids_mine[g.id]) if rack_ids_mine else () for g in groups),
        fees_btc_per_block=fleet.bitcoin.fees_btc_per_block,
        block_height=fleet.bitcoin.start_block_height,
    )


def site_prices_usd_per_mwh(table: DispatchTable, prices: Mapping[str, float]) -> np.ndarray:
    """[sites] current price per site: the given ones, else the fixed contract price."""
    out = table.default_price_usd_per_mwh.copy()
    position = {s: i for i, s in enumerate(table.site_ids)}
    for site, price in prices.items():
        where = f"power_price_usd_per_mwh_by_site[{site}]"
        if site not in position:
            raise DispatchInputError(where, f"unknown site (known: {list(table.site_ids)})")
        if not math.isfinite(price):
            raise DispatchInputError(where, f"must be finite (got {price})")
        out[position[site]] = price
    for site in dict.fromkeys(table.group_sites):
        if math.isnan(out[position[site]]):
            raise DispatchInputError(
                f"power_price_usd_per_mwh_by_site[{site}]",
                "required: the site has mining racks and no fixed contract price",
            )
    return out


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


def decide(table: DispatchTable, site_price_usd_per_mwh: np.ndarray, hashprice: float) -> DispatchDecision:
    """Run a group's mining racks iff hash revenue after pool fee > rack power x PUE x site price."""
    if not (hashprice >= 0 and math.isfinite(hashprice)):
        raise DispatchInputError("hashprice_usd_per_ph_day", f"must be a finite number >= 0 (got {hashprice})")
    price = site_price_usd_per_mwh[table.site_index]
    revenue_usd_per_hour = (
        table.rack_hashrate_ths * hashprice / TH_PER_PH / HOURS_PER_DAY * (1.0 - table.pool_fee_fraction)
    )
    cost_usd_per_hour = table.rack_power_kw * table.pue / KW_PER_MW * price
    margin = revenue_usd_per_hour - cost_usd_per_hour
    return DispatchDecision(
        hashprice_usd_per_ph_day=hashprice,
        run=margin > 0,
        power_price_usd_per_mwh=price,
        breakeven_power_price_usd_per_mwh=breakeven_power_price_usd_per_mwh(
            hashprice, table.efficiency_j_per_th, table.pue, table.pool_fee_fraction
        ),
        margin_usd_per_rack_hour=margin,
    )
