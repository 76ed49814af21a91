"""Per-scenario economics of one rack of each profile in each period: the coefficients of the compact MIP.

A mining rack's dispatch separates by step: it runs exactly when its margin (hash revenue after
pool fee minus the marginal cost of the power it draws at the site's PUE) is positive. Its value in
a period of a scenario is the sum over the period's steps of max(margin, 0), the same for every rack
of the profile, so the second stage is linear in the rack counts (DESIGN.md section 3). Values are
discounted to the plan's start (optimizer.timeline) and net of opex.

Computed in flat memory, one (site, scenario) at a time and never as profile x step arrays: a rack
of profile q with H TH/s, meter load E kW runs in step t exactly when

    H (1 - pool fee) hashprice_t > E price_t / 1000   <=>   key_t = price_t / hashprice_t < theta_q,

theta_q = 1000 H (1 - pool fee) / E. Sorting the steps of a (site, scenario, period) by key once,
every profile's sums (revenue, cost, energy, BTC, discounted or not) are prefix sums read at
searchsorted(theta_q): O(T log T + Q log T) per (site, scenario) instead of O(Q T).

Two things couple the racks of a site inside a step and break that separation (docs/formulation.md):
a curtailment event that caps the site's power, and a demand-response call that makes its mining
load drop. A (site, scenario, step) is *coupled* only where that coupling can bind given the most
the site could possibly draw there: every profile that could be at the site with a positive margin
running with all its racks, plus its largest possible AI load once a hall could be live. Everywhere
else the per-rack sums stay exact. Coupled steps are kept out of the sums and listed explicitly,
with every candidate profile's margin, for the MIP (optimizer.formulation) and the plan evaluation
(optimizer.allocation).

Power contracts (optimizer.fleet.PowerContract): the marginal cost of a MWh drawn is the fixed
price, spot plus adder, or, under take-or-pay with resale, the resale it forgoes (spot minus fee).
Take-or-pay adds a scenario-dependent constant per site (the whole block resold minus the fixed
payment) and a coefficient per leased AI MW (the tenant pays the fixed price for power whose resale
the site forgoes); both are kept here per site, period and scenario.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optimizer.constants import HOURS_PER_DAY, HOURS_PER_YEAR, KW_PER_MW
from optimizer.fleet import ContractType, Fleet, Site
from optimizer.lifecycles import PlanGrid, Profile, plan_grid
from optimizer.scenarios import ScenarioSet

NO_SITE = -1  # padding marker of coupled slots and items

# Fill value of every padded [K, S] / [P, S] field, so batches with different counts concatenate.
_PADDING = {
    "coupled_site": NO_SITE,
    "coupled_step": 0,
    "coupled_cap_kw": np.inf,
    "coupled_dr_call": False,
    "coupled_resale_usd_per_mwh": 0.0,
    "coupled_discount": 1.0,
    "coupled_btc_price_usd": 1.0,
    "item_slot": NO_SITE,
    "item_group": 0,
    "item_hash_revenue_usd": 0.0,
    "item_power_cost_usd": 0.0,
}


@dataclass(frozen=True)
class GroupEconomics:
    """Per-rack and per-site figures; the scenario axis is LAST in every field (columns = scenarios).

    Q = rack profiles (optimizer.lifecycles), P = periods (optimizer.timeline), N = sites. `_pv`
    fields are discounted to the plan's start, the others nominal. [Q, P, S] fields cover the
    *separable* steps only (every step when nothing couples). Coupled steps are padded per scenario
    column: slot k of column s is a coupled (site, step) when coupled_site[k, s] >= 0, and its
    candidate racks are the items i with item_slot[i, s] == k (only profiles of that site with a
    positive margin in that step: the others never run); `item_group` holds the profile.
    """

    indices: np.ndarray  # [S] global scenario indices
    steps: np.ndarray  # [S] steps the scenarios cover (the horizon's, or a shorter evaluation window)
    mine_value_usd: np.ndarray  # [Q, P, S] PV: sum of positive margins minus opex, separable steps
    hash_revenue_usd: np.ndarray  # [Q, P, S] nominal, separable steps the rack runs in
    power_cost_usd: np.ndarray  # [Q, P, S] nominal, at the marginal price (take-or-pay: the resale forgone)
    hash_revenue_pv_usd: np.ndarray  # [Q, P, S]
    power_cost_pv_usd: np.ndarray  # [Q, P, S]
    energy_mwh: np.ndarray  # [Q, P, S] drawn at the meter (PUE included) in those steps
    btc_mined: np.ndarray  # [Q, P, S] BTC one rack earns after pool fee in those steps
    run_fraction: np.ndarray  # [Q, S] share of all steps with a positive margin (the price rule)
    mean_hashprice_usd_per_ph_day: np.ndarray  # [S]
    halving_step: np.ndarray  # [S] first step with a lower subsidy than the first's; the step count if none
    hashprice_ratio: np.ndarray  # [P + 1, S] daily hashprice at each period boundary over the first day's
    block_resale_usd: np.ndarray  # [N, P, S] take-or-pay: whole block resold at spot - fee; else 0
    block_payment_usd: np.ndarray  # [N, P, S] take-or-pay: fixed price x block; else 0
    block_resale_pv_usd: np.ndarray  # [N, P, S]
    block_payment_pv_usd: np.ndarray  # [N, P, S]
    ai_resale_pv_usd_per_mw: np.ndarray  # [N, P, S] take-or-pay: resale one leased IT MW forgoes
    ai_passthrough_pv_usd_per_mw: np.ndarray  # [N, P, S] take-or-pay: what the tenant pays for that power
    ai_resale_usd_per_mw: np.ndarray  # [N, P, S] nominal
    ai_passthrough_usd_per_mw: np.ndarray  # [N, P, S] nominal
    ai_tail_net_usd_per_mwh: np.ndarray  # [N, S] take-or-pay: fixed price - mean resale of the last year
    coupled_site: np.ndarray  # [K, S] int, site position in the fleet; NO_SITE = padding
    coupled_step: np.ndarray  # [K, S] int
    coupled_cap_kw: np.ndarray  # [K, S] power the site may draw at the meter; inf without an event
    coupled_dr_call: np.ndarray  # [K, S] bool
    coupled_resale_usd_per_mwh: np.ndarray  # [K, S] take-or-pay: spot - fee; else 0
    coupled_discount: np.ndarray  # [K, S] discount factor of the step
    coupled_btc_price_usd: np.ndarray  # [K, S] BTC price in the step: turns hash revenue into BTC mined
    item_slot: np.ndarray  # [I, S] int, the coupled slot of the item; NO_SITE = padding
    item_group: np.ndarray  # [I, S] int, rack profile
    item_hash_revenue_usd: np.ndarray  # [I, S] nominal, one rack running through the step
    item_power_cost_usd: np.ndarray  # [I, S] nominal, one rack running through the step, marginal price

    @property
    def n_scenarios(self) -> int:
        return len(self.indices)

    @property
    def n_coupled(self) -> int:
        """Coupled (site, scenario, step) triples."""
        return int((self.coupled_site != NO_SITE).sum())

    @property
    def contract_pv_usd(self) -> np.ndarray:
        """[N, S] scenario-dependent constant of take-or-pay contracts: block resale minus payment, PV."""
        return (self.block_resale_pv_usd - self.block_payment_pv_usd).sum(axis=1)

    @property
    def ai_power_pv_usd_per_mw(self) -> np.ndarray:
        """[N, P, S] net power value of one leased IT MW served through a period (zero unless take-or-pay)."""
        return self.ai_passthrough_pv_usd_per_mw - self.ai_resale_pv_usd_per_mw

    def columns(self, positions: Sequence[int] | np.ndarray) -> GroupEconomics:
        """The economics of some scenario columns (positions, not global indices)."""
        positions = np.asarray(positions, dtype=np.int64)
        return GroupEconomics(**{f.name: getattr(self, f.name)[..., positions] for f in dataclasses.fields(self)})


def nominal_view(economics: GroupEconomics, grid: PlanGrid) -> tuple[GroupEconomics, PlanGrid]:
    """The same economics and grid valued at nominal (undiscounted) amounts: for per-year cash reports."""
    timeline = dataclasses.replace(grid.timeline, discount_rate_per_year=0.0)
    opex = np.array([p.opex_usd_per_rack_day for p in grid.profiles])[:, None] * timeline.period_days()
    view = dataclasses.replace(
        economics,
        mine_value_usd=economics.hash_revenue_usd - economics.power_cost_usd - opex[:, :, None],
        hash_revenue_pv_usd=economics.hash_revenue_usd,
        power_cost_pv_usd=economics.power_cost_usd,
        block_resale_pv_usd=economics.block_resale_usd,
        block_payment_pv_usd=economics.block_payment_usd,
        ai_resale_pv_usd_per_mw=economics.ai_resale_usd_per_mw,
        ai_passthrough_pv_usd_per_mw=economics.ai_passthrough_usd_per_mw,
        coupled_discount=np.ones_like(economics.coupled_discount),
    )
    return view, dataclasses.replace(grid, timeline=timeline)


def rack_meter_kw(fleet: Fleet, group) -> float:
    """Power one mining rack of the group draws at the meter, PUE included."""
    return fleet.rack_power_kw(group) * fleet.site(group.site).pue_mining


def economics_grid(fleet: Fleet, economics: GroupEconomics) -> PlanGrid:
    """The plan grid the economics were computed on."""
    return plan_grid(fleet, int(economics.steps[0]) if len(economics.steps) else None)


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


def earliest_ai_step(grid: PlanGrid, site: Site) -> int:
    """First step in which any conversion option's hall could be live; n_steps when the site has none."""
    ready = grid.conversion_ready.get(site.id, ())
    return int(min((grid.timeline.bounds[r] for r in ready), default=grid.timeline.n_steps))


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


def run_threshold(fleet: Fleet, profile: Profile) -> float:
    """theta: the profile runs in a step exactly when price / hashprice per TH-hour is below it."""
    return KW_PER_MW * profile.hashrate_ths * (1.0 - fleet.pool_fee_fraction) / profile.meter_kw


def price_keys(price: np.ndarray, hashprice_th_hour: np.ndarray) -> np.ndarray:
    """price / hashprice; a zero hashprice runs nothing unless power is paid to be taken."""
    with np.errstate(divide="ignore", invalid="ignore"):
        keys = price / hashprice_th_hour
    return np.where(hashprice_th_hour > 0, keys, np.where(price < 0, -np.inf, np.inf))


@dataclass(frozen=True)
class _SiteSteps:
    """Per-site [S, T] masks and caps that decide which steps couple."""

    coupled: np.ndarray  # bool [S, T]
    cap_kw: np.ndarray  # [S, T], inf outside events
    dr_call: np.ndarray  # bool [S, T]


def _site_steps(fleet: Fleet, grid: PlanGrid, n: int, scenarios: ScenarioSet, keys: np.ndarray) -> _SiteSteps:
    """Where a cap or a demand-response call can bind: the most the site could draw exceeds what it may."""
    site = fleet.sites[n]
    members = [q for q, p in enumerate(grid.profiles) if p.site == n]
    theta = np.array([run_threshold(fleet, grid.profiles[q]) for q in members])
    load = np.array([grid.profiles[q].max_racks * grid.profiles[q].meter_kw for q in members])
    order = np.argsort(theta)
    cumulative = np.concatenate(([0.0], np.cumsum(load[order])))
    # profiles with theta > key run: total load minus those with theta <= key
    running_load_kw = cumulative[-1] - cumulative[np.searchsorted(theta[order], keys, side="right")]
    fraction = scenarios.available_fraction(site.market)
    cap_kw = np.where(fraction < 1.0, fraction * site.capacity_mw * KW_PER_MW, np.inf)
    ai_live = np.arange(scenarios.n_steps) >= earliest_ai_step(grid, site)
    most_kw = running_load_kw + np.where(ai_live, max_ai_load_kw(fleet, site), 0.0)
    cap_binds = most_kw > cap_kw
    dr_call = scenarios.dr_called(site.market) if site.demand_response is not None else np.zeros_like(cap_binds)
    # the drop is measured from the planned load, so it can bind only if some rack would run
    dr_binds = dr_call & (running_load_kw > 0)
    return _SiteSteps(coupled=cap_binds | dr_binds, cap_kw=cap_kw, dr_call=dr_call)


def group_economics(fleet: Fleet, scenarios: ScenarioSet, grid: PlanGrid | None = None) -> GroupEconomics:
    """Economics of a batch of scenarios on the fleet's plan grid (periods and profiles)."""
    grid = grid or plan_grid(fleet, scenarios.n_steps)
    timeline = grid.timeline
    if scenarios.n_steps != timeline.n_steps or scenarios.step_hours != timeline.step_hours:
        raise ValueError(
            f"scenarios have {scenarios.n_steps} steps of {scenarios.step_hours} h, the horizon "
            f"{timeline.n_steps} of {timeline.step_hours} h"
        )
    n_q, n_p, n_scen = len(grid.profiles), timeline.n_periods, scenarios.n_scenarios
    sums = {name: np.zeros((n_q, n_p, n_scen)) for name in _PROFILE_SUMS}
    runs = np.zeros((n_q, n_scen))
    hashprice = scenarios.hashprice_usd_per_th_hour
    btc_per_th_step = hashprice * scenarios.step_hours / scenarios.btc_price_usd
    discount = timeline.step_discount()
    site_steps, keys_of = [], []
    for n, site in enumerate(fleet.sites):
        keys = price_keys(site_power_price_usd_per_mwh(site, scenarios), hashprice)
        steps = _site_steps(fleet, grid, n, scenarios, keys)
        site_steps.append(steps)
        keys_of.append(keys)
        members = [q for q, p in enumerate(grid.profiles) if p.site == n]
        if members:
            price = site_power_price_usd_per_mwh(site, scenarios)
            _sorted_sums(
                fleet, grid, members, keys, steps.coupled, hashprice, price, btc_per_th_step, discount, sums, runs
            )
    opex_pv = np.array([p.opex_usd_per_rack_day for p in grid.profiles])[:, None] * timeline.period_discounted_days()
    return GroupEconomics(
        indices=np.asarray(scenarios.indices),
        steps=np.full(n_scen, scenarios.n_steps),
        mine_value_usd=sums["revenue_pv"] - sums["cost_pv"] - opex_pv[:, :, None],
        hash_revenue_usd=sums["revenue"],
        power_cost_usd=sums["cost"],
        hash_revenue_pv_usd=sums["revenue_pv"],
        power_cost_pv_usd=sums["cost_pv"],
        energy_mwh=sums["energy"],
        btc_mined=sums["btc"],
        run_fraction=runs / timeline.n_steps,
        mean_hashprice_usd_per_ph_day=scenarios.hashprice_usd_per_ph_day.mean(axis=1),
        halving_step=_halving_step(scenarios),
        hashprice_ratio=_hashprice_ratio(scenarios, timeline.bounds),
        **_contract_terms(fleet, grid, scenarios),
        **_coupled_slots(fleet, grid, scenarios, site_steps, keys_of),
    )


_PROFILE_SUMS = ("revenue", "cost", "revenue_pv", "cost_pv", "energy", "btc")


def _sorted_sums(fleet, grid, members, keys, coupled, hashprice, price, btc, discount, sums, runs) -> None:
    """Fill the profiles' period sums from steps sorted by key, one period at a time."""
    hours = grid.timeline.step_hours
    theta = np.array([run_threshold(fleet, grid.profiles[q]) for q in members])
    scale = {  # per-rack factor of each weight's prefix sum
        "revenue": np.array([grid.profiles[q].hashrate_ths for q in members]) * (1 - fleet.pool_fee_fraction) * hours,
        "cost": np.array([grid.profiles[q].meter_kw for q in members]) / KW_PER_MW * hours,
    }
    scale["revenue_pv"], scale["cost_pv"], scale["energy"] = scale["revenue"], scale["cost"], scale["cost"]
    scale["btc"] = scale["revenue"] / hours
    bounds = grid.timeline.bounds
    for p in range(grid.timeline.n_periods):
        a, b = bounds[p], bounds[p + 1]
        order = np.argsort(keys[:, a:b], axis=1, kind="stable")
        separable = ~np.take_along_axis(coupled[:, a:b], order, axis=1)
        d = discount[a:b][order]
        hp = np.take_along_axis(hashprice[:, a:b], order, axis=1) * separable
        pr = np.take_along_axis(price[:, a:b], order, axis=1) * separable
        weights = {
            "revenue": hp,
            "cost": pr,
            "revenue_pv": hp * d,
            "cost_pv": pr * d,
            "energy": separable.astype(float),
            "btc": np.take_along_axis(btc[:, a:b], order, axis=1) * separable,
        }
        prefix = {name: _prefix_sums(w) for name, w in weights.items()}
        sorted_keys = np.take_along_axis(keys[:, a:b], order, axis=1)
        for s in range(keys.shape[0]):
            below = np.searchsorted(sorted_keys[s], theta, side="left")  # steps with key < theta run
            runs[members, s] += below
            for name in _PROFILE_SUMS:
                sums[name][members, p, s] = scale[name] * prefix[name][s, below]


def _prefix_sums(weights: np.ndarray) -> np.ndarray:
    out = np.zeros((weights.shape[0], weights.shape[1] + 1))
    np.cumsum(weights, axis=1, out=out[:, 1:])
    return out


def _halving_step(scenarios: ScenarioSet) -> np.ndarray:
    lower = scenarios.subsidy_btc < scenarios.subsidy_btc[:, :1]
    return np.where(lower.any(axis=1), lower.argmax(axis=1), scenarios.n_steps)


def _hashprice_ratio(scenarios: ScenarioSet, bounds: np.ndarray) -> np.ndarray:
    """[P + 1, S] mean hashprice of the day from each boundary (the last day for the end) over the first day's."""
    per_day = max(1, int(HOURS_PER_DAY // scenarios.step_hours))
    hp = scenarios.hashprice_usd_per_ph_day
    first = hp[:, :per_day].mean(axis=1)
    starts = np.minimum(bounds, max(0, scenarios.n_steps - per_day))
    return np.stack([hp[:, a : a + per_day].mean(axis=1) / first for a in starts])


def _contract_terms(fleet: Fleet, grid: PlanGrid, scenarios: ScenarioSet) -> dict[str, np.ndarray]:
    """Per-site take-or-pay terms [N, P, S]; zero for fixed and index contracts (lease power nets to zero there)."""
    timeline = grid.timeline
    n_sites, n_scen, hours = len(fleet.sites), scenarios.n_scenarios, scenarios.step_hours
    names = (
        "block_resale_usd",
        "block_payment_usd",
        "block_resale_pv_usd",
        "block_payment_pv_usd",
        "ai_resale_pv_usd_per_mw",
        "ai_passthrough_pv_usd_per_mw",
        "ai_resale_usd_per_mw",
        "ai_passthrough_usd_per_mw",
    )
    out = {name: np.zeros((n_sites, timeline.n_periods, n_scen)) for name in names}
    out["ai_tail_net_usd_per_mwh"] = np.zeros((n_sites, n_scen))
    starts, discount = timeline.bounds[:-1], timeline.step_discount()
    steps_per_period = np.diff(timeline.bounds)
    last_year = max(1, int(HOURS_PER_YEAR // hours))
    for n, site in enumerate(fleet.sites):
        if not site.contract.resells:
            continue
        resale = resale_price_usd_per_mwh(site, scenarios)
        price = site.contract.price_usd_per_mwh
        out["block_resale_usd"][n] = site.capacity_mw * hours * np.add.reduceat(resale, starts, axis=1).T
        out["block_resale_pv_usd"][n] = site.capacity_mw * hours * np.add.reduceat(resale * discount, starts, axis=1).T
        out["block_payment_usd"][n] = (price * site.capacity_mw * hours * steps_per_period)[:, None]
        payment_pv = price * site.capacity_mw * hours * np.add.reduceat(discount, starts)
        out["block_payment_pv_usd"][n] = payment_pv[:, None]
        if site.ai is not None:
            meter_mwh_per_step = site.pue_ai * hours  # one leased IT MW at the meter, per step
            out["ai_resale_pv_usd_per_mw"][n] = (
                meter_mwh_per_step * np.add.reduceat(resale * discount, starts, axis=1).T
            )
            out["ai_passthrough_pv_usd_per_mw"][n] = (price * meter_mwh_per_step * np.add.reduceat(discount, starts))[
                :, None
            ]
            out["ai_resale_usd_per_mw"][n] = meter_mwh_per_step * np.add.reduceat(resale, starts, axis=1).T
            out["ai_passthrough_usd_per_mw"][n] = (price * meter_mwh_per_step * steps_per_period)[:, None]
            out["ai_tail_net_usd_per_mwh"][n] = price - resale[:, -last_year:].mean(axis=1)
    return out


def _coupled_slots(
    fleet: Fleet, grid: PlanGrid, scenarios: ScenarioSet, site_steps: list[_SiteSteps], keys_of: list[np.ndarray]
) -> dict[str, np.ndarray]:
    """Padded [K, S] slots and [I, S] items of the coupled steps, in (site, step) order per scenario."""
    n_scen = scenarios.n_scenarios
    coupled = np.stack([s.coupled for s in site_steps], axis=1) if site_steps else np.zeros((n_scen, 0, 0), bool)
    scen, site, step = np.nonzero(coupled)  # [S, N, T] order: scenario, then site, then step
    slot = _positions_within(scen, n_scen)
    n_slots = int(slot.max()) + 1 if len(slot) else 0

    out = {name: np.full((n_slots, n_scen), _PADDING[name]) for name in _PADDING if name.startswith("coupled_")}
    out["coupled_site"][slot, scen] = site
    out["coupled_step"][slot, scen] = step
    out["coupled_discount"][slot, scen] = grid.timeline.step_discount()[step] if len(step) else 1.0
    out["coupled_btc_price_usd"][slot, scen] = scenarios.btc_price_usd[scen, step]
    resale = np.zeros(len(site))
    for n, steps in enumerate(site_steps):
        here = site == n
        out["coupled_cap_kw"][slot[here], scen[here]] = steps.cap_kw[scen[here], step[here]]
        out["coupled_dr_call"][slot[here], scen[here]] = steps.dr_call[scen[here], step[here]]
        if fleet.sites[n].contract.resells:
            resale[here] = resale_price_usd_per_mwh(fleet.sites[n], scenarios)[scen[here], step[here]]
    out["coupled_resale_usd_per_mwh"][slot, scen] = resale

    # items: the site's profiles with a positive margin in the slot's step
    hours = scenarios.step_hours
    hashprice = scenarios.hashprice_usd_per_th_hour
    parts = []
    for q, profile in enumerate(grid.profiles):
        here = np.flatnonzero(site == profile.site)
        s_, t_ = scen[here], step[here]
        positive = keys_of[profile.site][s_, t_] < run_threshold(fleet, profile)
        s_, t_, k_ = s_[positive], t_[positive], slot[here][positive]
        price = site_power_price_usd_per_mwh(fleet.sites[profile.site], scenarios)[s_, t_]
        revenue = profile.hashrate_ths * hashprice[s_, t_] * (1.0 - fleet.pool_fee_fraction) * hours
        cost = profile.meter_kw / KW_PER_MW * hours * price
        parts.append((s_, k_, np.full(len(s_), q), revenue, cost))
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


def profile_margins_usd(fleet: Fleet, profile: Profile, scenarios: ScenarioSet) -> tuple[np.ndarray, np.ndarray]:
    """Nominal hash revenue and marginal power cost [S, T] of one rack of the profile running through each step."""
    hours = scenarios.step_hours
    revenue = profile.hashrate_ths * scenarios.hashprice_usd_per_th_hour * (1.0 - fleet.pool_fee_fraction) * hours
    price = site_power_price_usd_per_mwh(fleet.sites[profile.site], scenarios)
    return revenue, profile.meter_kw / KW_PER_MW * hours * price


def rack_margin_usd(fleet: Fleet, group_index: int, scenarios: ScenarioSet) -> tuple[np.ndarray, np.ndarray]:
    """Nominal hash revenue and marginal power cost [S, T] of one rack of the group running through each step."""
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
    return revenue, energy_mwh * site_power_price_usd_per_mwh(site, scenarios)
