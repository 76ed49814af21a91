"""Per-scenario economics of one rack in each mode: the coefficients of the compact MIP.

A mining rack's hourly dispatch separates by hour: it runs exactly when its margin
(hash revenue after pool fee minus power cost at the site's PUE) is positive.
Its value in a scenario is therefore the sum over hours of max(margin, 0), the same
for every rack of the group, so the second stage is linear in the rack counts
(DESIGN.md section 3). This module computes those sums, one batch of scenarios at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optimizer.constants import KW_PER_MW
from optimizer.fleet import ContractType, Fleet, Site
from optimizer.scenarios import ScenarioSet


@dataclass(frozen=True)
class GroupEconomics:
    """Per-rack figures for every rack group (axis 0, fleet order) and scenario (axis 1)."""

    indices: np.ndarray  # [S] global scenario indices
    mine_value_usd: np.ndarray  # [G, S] hash revenue - power cost while running - opex
    hash_revenue_usd: np.ndarray  # [G, S] earned in the hours the rack runs
    power_cost_usd: np.ndarray  # [G, S] paid in the hours the rack runs
    energy_mwh: np.ndarray  # [G, S] drawn at the meter (PUE included)
    run_fraction: np.ndarray  # [G, S] share of steps the rack runs
    mean_hashprice_usd_per_ph_day: np.ndarray  # [S]

    @property
    def n_scenarios(self) -> int:
        return len(self.indices)


def site_power_price_usd_per_mwh(site: Site, scenarios: ScenarioSet) -> np.ndarray:
    """[S, T] price the site pays for each MWh it draws."""
    if site.contract.type is ContractType.FIXED:
        return np.full((scenarios.n_scenarios, scenarios.n_steps), site.contract.price_usd_per_mwh)
    return scenarios.power_price(site.market) + site.contract.adder_usd_per_mwh


def rack_margin_usd(fleet: Fleet, group_index: int, scenarios: ScenarioSet) -> tuple[np.ndarray, np.ndarray]:
    """Hash revenue and power cost [S, T] of one rack of the group running through each step."""
    group = fleet.rack_groups[group_index]
    site = fleet.site(group.site)
    step_hours = scenarios.step_hours
    revenue = (
        fleet.rack_hashrate_ths(group)
        * scenarios.hashprice_usd_per_th_hour
        * (1.0 - fleet.pool_fee_fraction)
        * step_hours
    )
    energy_mwh = fleet.rack_power_kw(group) * site.pue_mining * step_hours / KW_PER_MW
    cost = energy_mwh * site_power_price_usd_per_mwh(site, scenarios)
    return revenue, cost


def group_economics(fleet: Fleet, scenarios: ScenarioSet) -> GroupEconomics:
    n_groups, n_scen = len(fleet.rack_groups), scenarios.n_scenarios
    fields = {name: np.empty((n_groups, n_scen)) for name in ("value", "revenue", "cost", "energy", "run")}
    for g, group in enumerate(fleet.rack_groups):
        revenue, cost = rack_margin_usd(fleet, g, scenarios)
        running = revenue > cost
        site = fleet.site(group.site)
        step_energy_mwh = fleet.rack_power_kw(group) * site.pue_mining * scenarios.step_hours / KW_PER_MW
        fields["revenue"][g] = np.where(running, revenue, 0.0).sum(axis=1)
        fields["cost"][g] = np.where(running, cost, 0.0).sum(axis=1)
        fields["energy"][g] = running.sum(axis=1) * step_energy_mwh
        fields["run"][g] = running.mean(axis=1)
        opex_usd = group.opex_usd_per_rack_day * scenarios.n_steps * scenarios.step_hours / 24
        fields["value"][g] = fields["revenue"][g] - fields["cost"][g] - opex_usd
    return GroupEconomics(
        indices=np.asarray(scenarios.indices),
        mine_value_usd=fields["value"],
        hash_revenue_usd=fields["revenue"],
        power_cost_usd=fields["cost"],
        energy_mwh=fields["energy"],
        run_fraction=fields["run"],
        mean_hashprice_usd_per_ph_day=scenarios.hashprice_usd_per_ph_day.mean(axis=1),
    )


def concat_economics(parts: Sequence[GroupEconomics]) -> GroupEconomics:
    """Join batches along the scenario axis, in global index order whatever order they finished in."""
    joined = {
        name: np.concatenate([getattr(p, name) for p in parts], axis=-1) for name in GroupEconomics.__dataclass_fields__
    }
    order = np.argsort(joined["indices"], kind="stable")
    return GroupEconomics(**{name: value[..., order] for name, value in joined.items()})


def breakeven_power_price_usd_per_mwh(
    hashprice_usd_per_ph_day: float, efficiency_j_per_th: float, pue: float = 1.0, pool_fee_fraction: float = 0.0
) -> float:
    """Power price above which a machine loses money at the given hashprice: the run/curtail rule.

    Revenue per MWh drawn = hashprice per TH-hour / MWh per TH-hour, where one TH/s for an hour at
    e J/TH draws e * 3600 J = e / 1e6 MWh; PUE scales the energy bought.
    """
    revenue_usd_per_th_hour = hashprice_usd_per_ph_day / 1_000 / 24 * (1.0 - pool_fee_fraction)
    energy_mwh_per_th_hour = efficiency_j_per_th * pue / 1e6
    return revenue_usd_per_th_hour / energy_mwh_per_th_hour
