"""Per-scenario economics of one rack in each mode: the coefficients of the compact MIP.

A mining rack's hourly dispatch separates by hour: it runs exactly when its margin
(hash revenue after pool fee minus the marginal cost of the power it draws at the site's PUE)
is positive. Its value in a scenario is therefore the sum over hours of max(margin, 0), the same
for every rack of the group, so the second stage is linear in the rack counts
(DESIGN.md section 3). This module computes those sums, one batch of scenarios at a time.

Two things couple the racks of a site inside a step and break that separation (docs/formulation.md):
a curtailment event that caps the site's power, and a demand-response call that makes its mining
load drop. A (site, scenario, step) is *coupled* only where that coupling can bind given the most
the site could possibly draw there: its racks with a positive margin all running, plus its largest
possible AI load once the AI hall is live. Everywhere else the per-rack sums stay exact. Coupled
steps are kept out of the sums and listed explicitly, with every candidate rack group's margin,
for the MIP (optimizer.formulation) and the plan evaluation (optimizer.allocation).

Power contracts (optimizer.fleet.PowerContract): the marginal cost of a MWh drawn is the fixed
price, spot plus adder, or, under take-or-pay with resale, the resale it forgoes (spot minus fee).
Take-or-pay adds a scenario-dependent constant per site (the whole block resold minus the fixed
payment) and a coefficient per leased AI MW (the tenant pays the fixed price for power whose resale
the site forgoes); both are kept here per site and scenario.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optimizer.constants import HOURS_PER_DAY, KW_PER_MW
from optimizer.fleet import ContractType, Fleet, RackGroup, Site
from optimizer.scenarios import ScenarioSet

NO_SITE = -1  # padding marker of coupled slots and items

# Fill value of every padded [K, S] / [P, S] field, so batches with different counts concatenate.
_PADDING = {
    "coupled_site": NO_SITE,
    "coupled_step": 0,
    "coupled_cap_kw": np.inf,
    "coupled_dr_call": False,
    "coupled_ai_live": False,
    "coupled_resale_usd_per_mwh": 0.0,
    "item_slot": NO_SITE,
    "item_group": 0,
    "item_hash_revenue_usd": 0.0,
    "item_power_cost_usd": 0.0,
}


@dataclass(frozen=True)
class GroupEconomics:
    """Per-rack and per-site figures; the scenario axis is LAST in every field (columns = scenarios).

    [G, S] fields cover the *separable* steps only (every step when nothing couples). Coupled steps
    are padded per scenario column: slot k of column s is a coupled (site, step) when
    coupled_site[k, s] >= 0, and its candidate racks are the items i with item_slot[i, s] == k (only
    groups of that site with a positive margin in that step: the others never run).
    """

    indices: np.ndarray  # [S] global scenario indices
    mine_value_usd: np.ndarray  # [G, S] separable steps: sum of positive margins, minus the horizon's opex
    hash_revenue_usd: np.ndarray  # [G, S] separable steps the rack runs in
    power_cost_usd: np.ndarray  # [G, S] at the marginal price (take-or-pay: the resale forgone)
    energy_mwh: np.ndarray  # [G, S] drawn at the meter (PUE included) in those steps
    run_fraction: np.ndarray  # [G, S] share of all steps with a positive margin (the price rule)
    mean_hashprice_usd_per_ph_day: np.ndarray  # [S]
    block_resale_usd: np.ndarray  # [N, S] take-or-pay: whole block resold at spot - fee; else 0
    block_payment_usd: np.ndarray  # [N, S] take-or-pay: fixed price x block; else 0
    ai_resale_usd_per_mw: np.ndarray  # [N, S] take-or-pay: resale one leased IT MW forgoes once live
    ai_passthrough_usd_per_mw: np.ndarray  # [N, S] take-or-pay: what the tenant pays for that power
    coupled_site: np.ndarray  # [K, S] int, site position in the fleet; NO_SITE = padding
    coupled_step: np.ndarray  # [K, S] int
    coupled_cap_kw: np.ndarray  # [K, S] power the site may draw at the meter; inf without an event
    coupled_dr_call: np.ndarray  # [K, S] bool
    coupled_ai_live: np.ndarray  # [K, S] bool, the site's AI hall draws power (lead time over)
    coupled_resale_usd_per_mwh: np.ndarray  # [K, S] take-or-pay: spot - fee; else 0
    item_slot: np.ndarray  # [P, S] int, the coupled slot of the item; NO_SITE = padding
    item_group: np.ndarray  # [P, S] int, rack group position
    item_hash_revenue_usd: np.ndarray  # [P, S] one rack running through the step
    item_power_cost_usd: np.ndarray  # [P, S] one rack running through the step, marginal price

    @property
    def n_scenarios(self) -> int:
        return len(self.indices)

    @property
    def n_coupled(self) -> int:
        """Coupled (site, scenario, step) triples."""
        return int((self.coupled_site != NO_SITE).sum())

    @property
    def contract_usd(self) -> np.ndarray:
        """[N, S] scenario-dependent constant of take-or-pay contracts: block resale minus payment."""
        return self.block_resale_usd - self.block_payment_usd

    @property
    def ai_power_usd_per_mw(self) -> np.ndarray:
        """[N, S] net power value of one leased IT MW served all horizon (zero unless take-or-pay)."""
        return self.ai_passthrough_usd_per_mw - self.ai_resale_usd_per_mw

    def columns(self, positions: Sequence[int] | np.ndarray) -> GroupEconomics:
        """The economics of some scenario columns (positions, not global indices)."""
        positions = np.asarray(positions, dtype=np.int64)
        return GroupEconomics(**{f.name: getattr(self, f.name)[..., positions] for f in dataclasses.fields(self)})


def rack_meter_kw(fleet: Fleet, group: RackGroup) -> float:
    """Power one mining rack of the group draws at the meter, PUE included."""
    return fleet.rack_power_kw(group) * fleet.site(group.site).pue_mining


def max_ai_load_kw(fleet: Fleet, site: Site) -> float:
    """The largest AI load the site could ever carry at the meter: its converted-hall, offer and grid limits."""
    if site.ai is None:
        return 0.0
    offers_mw = sum(o.max_mw for o in fleet.lease_offers if site.id in o.sites)
    slots_mw = sum(
        g.racks * fleet.rack_power_kw(g) / KW_PER_MW for g in fleet.rack_groups if g.site == site.id and g.convertible
    )
    it_mw = min(site.ai.max_mw, offers_mw, slots_mw, site.capacity_mw / site.pue_ai)
    return it_mw * site.pue_ai * KW_PER_MW


def ai_ready_step(site: Site, step_hours: int) -> int:
    """First step in which converted AI capacity draws power (and earns rent): after the lead time."""
    return 0 if site.ai is None else site.ai.lead_time_days * HOURS_PER_DAY // step_hours


def site_power_price_usd_per_mwh(site: Site, scenarios: ScenarioSet) -> np.ndarray:
    """[S, T] marginal cost of one MWh the site draws: fixed price, spot + adder, or the resale forgone."""
    contract = site.contract
    if contract.type is ContractType.FIXED:
        return np.full((scenarios.n_scenarios, scenarios.n_steps), contract.price_usd_per_mwh)
    if contract.type is ContractType.TAKE_OR_PAY:
        return resale_price_usd_per_mwh(site, scenarios)
    return scenarios.power_price(site.market) + contract.adder_usd_per_mwh


def resale_price_usd_per_mwh(site: Site, scenarios: ScenarioSet) -> np.ndarray:
    """[S, T] what one MWh sold back earns under take-or-pay: spot minus the resale fee."""
    return scenarios.power_price(site.market) - site.contract.resale_fee_usd_per_mwh


def rack_margin_usd(fleet: Fleet, group_index: int, scenarios: ScenarioSet) -> tuple[np.ndarray, np.ndarray]:
    """Hash revenue and marginal power cost [S, T] of one rack of the group running through each step."""
    group = fleet.rack_groups[group_index]
    site = fleet.site(group.site)
    step_hours = scenarios.step_hours
    revenue = (
        fleet.rack_hashrate_ths(group)
        * scenarios.hashprice_usd_per_th_hour
        * (1.0 - fleet.pool_fee_fraction)
        * step_hours
    )
    energy_mwh = rack_meter_kw(fleet, group) * step_hours / KW_PER_MW
    cost = energy_mwh * site_power_price_usd_per_mwh(site, scenarios)
    return revenue, cost


@dataclass(frozen=True)
class _SiteSteps:
    """Per-site [S, T] masks and caps that decide which steps couple."""

    coupled: np.ndarray  # bool [S, T]
    cap_kw: np.ndarray  # [S, T], inf outside events
    dr_call: np.ndarray  # bool [S, T]
    ai_live: np.ndarray  # bool [T]


def _site_steps(fleet: Fleet, site: Site, scenarios: ScenarioSet, running: dict[int, np.ndarray]) -> _SiteSteps:
    """Where a cap or a demand-response call can bind: the most the site could draw exceeds what it may."""
    members = [g for g, group in enumerate(fleet.rack_groups) if group.site == site.id]
    running_load_kw = sum(
        (rack_meter_kw(fleet, fleet.rack_groups[g]) * fleet.rack_groups[g].racks * running[g] for g in members),
        start=np.zeros((scenarios.n_scenarios, scenarios.n_steps)),
    )
    fraction = scenarios.available_fraction(site.market)
    cap_kw = np.where(fraction < 1.0, fraction * site.capacity_mw * KW_PER_MW, np.inf)
    ai_live = np.arange(scenarios.n_steps) >= ai_ready_step(site, scenarios.step_hours)
    most_kw = running_load_kw + np.where(ai_live, max_ai_load_kw(fleet, site), 0.0)
    cap_binds = most_kw > cap_kw
    dr_call = scenarios.dr_called(site.market) if site.demand_response is not None else np.zeros_like(cap_binds)
    # the drop is measured from the planned load, so it can bind only if some rack would run
    dr_binds = dr_call & (running_load_kw > 0)
    return _SiteSteps(coupled=cap_binds | dr_binds, cap_kw=cap_kw, dr_call=dr_call, ai_live=ai_live)


def group_economics(fleet: Fleet, scenarios: ScenarioSet) -> GroupEconomics:
    n_groups, n_scen = len(fleet.rack_groups), scenarios.n_scenarios
    revenue, cost, running = {}, {}, {}
    for g in range(n_groups):
        revenue[g], cost[g] = rack_margin_usd(fleet, g, scenarios)
        running[g] = revenue[g] > cost[g]
    site_steps = [_site_steps(fleet, site, scenarios, running) for site in fleet.sites]
    site_position = {site.id: n for n, site in enumerate(fleet.sites)}
    site_of = {g: site_position[group.site] for g, group in enumerate(fleet.rack_groups)}

    fields = {name: np.empty((n_groups, n_scen)) for name in ("value", "revenue", "cost", "energy", "run")}
    for g, group in enumerate(fleet.rack_groups):
        runs_separably = running[g] & ~site_steps[site_of[g]].coupled
        step_energy_mwh = rack_meter_kw(fleet, group) * scenarios.step_hours / KW_PER_MW
        fields["revenue"][g] = np.where(runs_separably, revenue[g], 0.0).sum(axis=1)
        fields["cost"][g] = np.where(runs_separably, cost[g], 0.0).sum(axis=1)
        fields["energy"][g] = runs_separably.sum(axis=1) * step_energy_mwh
        fields["run"][g] = running[g].mean(axis=1)
        opex_usd = group.opex_usd_per_rack_day * scenarios.n_steps * scenarios.step_hours / HOURS_PER_DAY
        fields["value"][g] = fields["revenue"][g] - fields["cost"][g] - opex_usd
    return GroupEconomics(
        indices=np.asarray(scenarios.indices),
        mine_value_usd=fields["value"],
        hash_revenue_usd=fields["revenue"],
        power_cost_usd=fields["cost"],
        energy_mwh=fields["energy"],
        run_fraction=fields["run"],
        mean_hashprice_usd_per_ph_day=scenarios.hashprice_usd_per_ph_day.mean(axis=1),
        **_contract_terms(fleet, scenarios),
        **_coupled_slots(fleet, scenarios, site_steps, revenue, cost, site_of),
    )


def _contract_terms(fleet: Fleet, scenarios: ScenarioSet) -> dict[str, np.ndarray]:
    """Per-site take-or-pay terms [N, S]; zero for fixed and index contracts (lease power nets to zero there)."""
    n_sites, n_scen, hours = len(fleet.sites), scenarios.n_scenarios, scenarios.step_hours
    out = {
        name: np.zeros((n_sites, n_scen))
        for name in ("block_resale_usd", "block_payment_usd", "ai_resale_usd_per_mw", "ai_passthrough_usd_per_mw")
    }
    for n, site in enumerate(fleet.sites):
        if not site.contract.resells:
            continue
        resale = resale_price_usd_per_mwh(site, scenarios)
        price = site.contract.price_usd_per_mwh
        out["block_resale_usd"][n] = site.capacity_mw * hours * resale.sum(axis=1)
        out["block_payment_usd"][n] = price * site.capacity_mw * hours * scenarios.n_steps
        if site.ai is not None:
            ready = ai_ready_step(site, hours)
            meter_mwh_per_step = site.pue_ai * hours  # one leased IT MW at the meter, per step
            out["ai_resale_usd_per_mw"][n] = meter_mwh_per_step * resale[:, ready:].sum(axis=1)
            out["ai_passthrough_usd_per_mw"][n] = price * meter_mwh_per_step * max(0, scenarios.n_steps - ready)
    return out


def _coupled_slots(
    fleet: Fleet,
    scenarios: ScenarioSet,
    site_steps: list[_SiteSteps],
    revenue: dict[int, np.ndarray],
    cost: dict[int, np.ndarray],
    site_of: dict[int, int],
) -> dict[str, np.ndarray]:
    """Padded [K, S] slots and [P, S] items of the coupled steps, in (site, step) order per scenario."""
    n_scen = scenarios.n_scenarios
    coupled = np.stack([s.coupled for s in site_steps], axis=1) if site_steps else np.zeros((n_scen, 0, 0), bool)
    scen, site, step = np.nonzero(coupled)  # [S, N, T] order: scenario, then site, then step
    slot = _positions_within(scen, n_scen)
    n_slots = int(slot.max()) + 1 if len(slot) else 0

    out = {name: np.full((n_slots, n_scen), _PADDING[name]) for name in _PADDING if name.startswith("coupled_")}
    out["coupled_site"][slot, scen] = site
    out["coupled_step"][slot, scen] = step
    resale = np.zeros(len(site))
    for n, steps in enumerate(site_steps):
        here = site == n
        out["coupled_cap_kw"][slot[here], scen[here]] = steps.cap_kw[scen[here], step[here]]
        out["coupled_dr_call"][slot[here], scen[here]] = steps.dr_call[scen[here], step[here]]
        out["coupled_ai_live"][slot[here], scen[here]] = steps.ai_live[step[here]]
        if fleet.sites[n].contract.resells:
            resale[here] = resale_price_usd_per_mwh(fleet.sites[n], scenarios)[scen[here], step[here]]
    out["coupled_resale_usd_per_mwh"][slot, scen] = resale

    # items: the site's groups with a positive margin in the slot's step
    parts = []
    for g in revenue:
        here = np.flatnonzero(site == site_of[g])
        positive = here[revenue[g][scen[here], step[here]] > cost[g][scen[here], step[here]]]
        s_, t_ = scen[positive], step[positive]
        parts.append((s_, slot[positive], np.full(len(positive), g), revenue[g][s_, t_], cost[g][s_, t_]))
    item_scen, item_slot, item_group, item_revenue, item_cost = (
        np.concatenate([p[i] for p in parts]) if parts else np.empty(0) for i in range(5)
    )
    order = np.lexsort((item_group, item_slot, item_scen))
    item_scen = item_scen[order].astype(np.int64)
    position = _positions_within(item_scen, n_scen)
    n_items = int(position.max()) + 1 if len(position) else 0
    for name, values in (
        ("item_slot", item_slot),
        ("item_group", item_group),
        ("item_hash_revenue_usd", item_revenue),
        ("item_power_cost_usd", item_cost),
    ):
        out[name] = np.full((n_items, n_scen), _PADDING[name])
        out[name][position, item_scen] = values[order]
    return out


def _positions_within(sorted_columns: np.ndarray, n_columns: int) -> np.ndarray:
    """Position of each entry among the entries of its column, for entries sorted by column."""
    counts = np.bincount(sorted_columns, minlength=n_columns)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return np.arange(len(sorted_columns)) - starts[sorted_columns]


def concat_economics(parts: Sequence[GroupEconomics]) -> GroupEconomics:
    """Join batches along the scenario axis, in global index order whatever order they finished in."""
    joined = {}
    for f in dataclasses.fields(GroupEconomics):
        arrays = [getattr(p, f.name) for p in parts]
        if f.name in _PADDING:  # batches hold different numbers of coupled slots and items
            rows = max(a.shape[0] for a in arrays)
            arrays = [
                np.concatenate([a, np.full((rows - a.shape[0], a.shape[1]), _PADDING[f.name], dtype=a.dtype)])
                for a in arrays
            ]
        joined[f.name] = np.concatenate(arrays, axis=-1)
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
