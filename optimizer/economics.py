"""Per-scenario economics of one rack of each profile in each period: the coefficients of the compact MIP.

A mining rack's dispatch separates by step: it runs exactly when its margin (hash revenue after
pool fee minus the marginal cost of the power it draws at the site's PUE) is positive. Its value in
a period of a scenario is the sum over the period's steps of max(margin, 0), the same for every rack
of the profile, so the second stage is linear in the rack counts (DESIGN.md section 3). Values are
discounted to the plan's start (optimizer.timeline) and net of opex.

Computed in flat memory, one site at a time and never as profile x step arrays: a rack of profile q
with H TH/s, meter load E kW runs in step t exactly when

    H (1 - pool fee) hashprice_t > E price_t / 1000   <=>   key_t = price_t / hashprice_t < theta_q,

theta_q = 1000 H (1 - pool fee) / E, which depends on the machine's efficiency and the site's PUE only:
a site's groups share a handful of distinct thresholds (one per machine model there), however many
groups, rack sizes and opex levels it has (near-equal floats are merged, THRESHOLD_TIE). Per site the
U distinct thresholds give U run masks [S, U, T] (key < theta_u), and one batched matrix product per
period multiplies them with weight rows shared by every site ([S, W, T]: hashprice per TH-hour, the
same discounted, BTC per TH/s-step, 1 and the discount factor; per market, spot and discounted spot).
A site's marginal price is spot x weight + offset (fixed, index + adder, resale - fee), so its cost
sums come from the same rows. Every profile's sums are its per-rack scale times its threshold's sums:
O(S T U) per site, independent of the number of profiles but for the [Q, P, S] outputs.

Large runs (KERNEL_MIN_SITE_CELLS) price the same sums in one compiled pass per chunk instead
(optimizer.economics_kernel, numba): per scenario row, per site, per distinct threshold and period, the
weights summed over the steps with key < theta in a vectorised loop; the coupled steps, take-or-pay resale,
halving step and items in the same pass. Both paths give the same coupled steps and items and the same sums
up to the order of float additions (tests/optimizer/test_economics.py, test_multiyear.py).

Memory of one Ray task (solvers.planner streams a batch in chunks of at most STREAM_CELLS = 250,000
scenario-steps), per scenario-step of a chunk: its scenario arrays ((5 + 3 M) x 8 B for M markets),
the shared weights (5 x 8 B), the markets' spot rows (2 M x 8 B), the keys (8 B) and one site's masks
(U x 8 B), the last four in per-thread scratch buffers reused chunk after chunk (_scratch; the kernel needs
four rows of T floats instead): about
(90 + 40 M + 8 U) B x 250,000 = 70 MB for the example's four markets and four machine models,
whatever the number of groups, steps (15-minute or hourly, a quarter or five years) or scenarios.
On top: the batch's outputs, [Q, P, S_batch] x 9 fields x 8 B plus the coupled slots and items
([I, S_batch], I = the most coupled steps x candidate profiles in one scenario), and the worker's
interpreter with numpy, pydantic and Ray (~150-200 MiB), plus ~160 MiB for numba and LLVM where the
kernel runs. Measured by bench/bench_pipeline.py (peak RSS of the worker process, 1 December 2026, load
~2.9): 226 MiB for 1,000 groups x 1,000 scenarios hourly (batches of 25), 220 MiB for 300 groups x 200
scenarios at 15 minutes (both on the numpy path); the bound to hold is 512 MiB.

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
import functools
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optimizer.constants import HOURS_PER_DAY, HOURS_PER_YEAR, KW_PER_MW, TH_PER_PH
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


def _price_terms(site: Site) -> tuple[float, float]:
    """(spot weight, offset USD/MWh) of the site's marginal price: fixed, index (spot + adder) or take-or-pay (the
    resale forgone, spot - fee)."""
    contract = site.contract
    if contract.type is ContractType.FIXED:
        return 0.0, contract.price_usd_per_mwh
    if contract.type is ContractType.TAKE_OR_PAY:
        return 1.0, -contract.resale_fee_usd_per_mwh
    return 1.0, contract.adder_usd_per_mwh


class _SitePrice:
    """The marginal price of a site as spot x `spot_weight` + `offset` (USD/MWh): fixed, index or resale."""

    def __init__(self, site: Site, scenarios: ScenarioSet) -> None:
        self.spot_weight, self.offset = _price_terms(site)
        self.market = site.market
        self._scenarios = scenarios

    @property
    def follows_spot(self) -> bool:
        return self.spot_weight != 0.0

    def at(self, scen: np.ndarray, step: np.ndarray) -> np.ndarray:
        """The price at some (scenario, step) points."""
        if not self.follows_spot:
            return np.full(len(scen), self.offset)
        return self._scenarios.power_price(self.market)[scen, step] + self.offset

    def keys(self, hashprice_th_hour: np.ndarray, positive: bool, out: np.ndarray) -> np.ndarray:
        """[S, T] price / hashprice per TH-hour (price_keys) into `out`, without materialising a fixed price.

        `positive`: every hashprice is > 0 (the usual case: then a plain division).
        """
        if not positive:
            price = self._scenarios.power_price(self.market) + self.offset if self.follows_spot else self.offset
            out[...] = price_keys(np.broadcast_to(price, hashprice_th_hour.shape), hashprice_th_hour)
        elif self.follows_spot:
            np.add(self._scenarios.power_price(self.market), self.offset, out=out)
            np.divide(out, hashprice_th_hour, out=out)
        else:
            np.divide(self.offset, hashprice_th_hour, out=out)
        return out


@dataclass(frozen=True)
class _SiteSteps:
    """The coupled steps of one site, as sparse points sorted by (scenario, step)."""

    scen: np.ndarray  # int [C]
    step: np.ndarray  # int [C]
    cap_kw: np.ndarray  # [C] power the site may draw at the meter; inf without an event
    dr_call: np.ndarray  # bool [C]


_PROFILE_CACHE: dict[int, tuple] = {}  # id(grid) -> (weak reference to it, pool fee, _ProfileArrays)


@dataclass(frozen=True)
class _ProfileArrays:
    """Per-profile (and per-site) figures as arrays, built once per batch (a fleet may have thousands of profiles)."""

    site: np.ndarray  # int [Q]
    hashrate_ths: np.ndarray  # [Q] per rack
    meter_kw: np.ndarray  # [Q] per rack
    theta: np.ndarray  # [Q] run threshold (run_threshold)
    max_load_kw: np.ndarray  # [Q] every rack of the profile running
    site_ai_kw: np.ndarray  # [N] the largest AI load each site could carry (max_ai_load_kw)
    site_ai_step: np.ndarray  # int [N] the first step a hall could be live there (earliest_ai_step)
    # the timeline's, once per grid rather than per chunk (np.power over every step: ~3 ms for five hourly years)
    step_discount: np.ndarray  # [T] timeline.step_discount()
    period_discounted_days: np.ndarray  # [P] timeline.period_discounted_days()
    opex_pv: np.ndarray  # [Q, P] discounted opex per rack

    # the kernel's per-site thresholds and each profile's place among them: per grid, not per chunk (np.unique per
    # site and a walk over the profiles, ~0.5 ms a chunk at 1,000 groups)
    @functools.cached_property
    def site_thresholds(self) -> list[_Thresholds]:
        return [_Thresholds.of(self, n) for n in range(len(self.site_ai_kw))]

    @functools.cached_property
    def site_members(self) -> tuple[np.ndarray, np.ndarray]:
        """(profiles ordered by site, ascending within each; [N + 1] where each site's start), for the item loop."""
        members = np.argsort(self.site, kind="stable").astype(np.int64)
        first = np.searchsorted(self.site[members], np.arange(len(self.site_ai_kw) + 1)).astype(np.int64)
        return members, first

    @functools.cached_property
    def threshold_in_site(self) -> np.ndarray:
        """[Q] the position of each profile's threshold among its site's."""
        out = np.zeros(len(self.site), dtype=np.int64)
        for t in self.site_thresholds:
            out[t.members] = t.of_member
        return out

    @functools.cached_property
    def kernel_tables(self) -> dict:
        """_KernelTables.of's cache: one entry, the last markets and sites it was asked for."""
        return {}

    @staticmethod
    def of(fleet: Fleet, grid: PlanGrid) -> _ProfileArrays:
        """Cached per grid (a batch's chunks share it); the pool fee is part of the key."""
        cached = _PROFILE_CACHE.get(id(grid))
        if cached is not None and cached[0]() is grid and cached[1] == fleet.pool_fee_fraction:
            return cached[2]
        arrays = _ProfileArrays._build(fleet, grid)
        _PROFILE_CACHE.clear()  # one grid at a time: a worker prices one batch after another
        _PROFILE_CACHE[id(grid)] = (weakref.ref(grid), fleet.pool_fee_fraction, arrays)
        return arrays

    @staticmethod
    def _build(fleet: Fleet, grid: PlanGrid) -> _ProfileArrays:
        profiles = grid.profiles
        hashrate = np.array([p.hashrate_ths for p in profiles], dtype=float)
        meter_kw = np.array([p.meter_kw for p in profiles], dtype=float)
        period_discounted_days = grid.timeline.period_discounted_days()
        return _ProfileArrays(
            site=np.array([p.site for p in profiles], dtype=np.int64),
            hashrate_ths=hashrate,
            meter_kw=meter_kw,
            theta=_merge_ties(np.array([run_threshold(fleet, p) for p in profiles], dtype=float)),
            max_load_kw=np.array([p.max_racks for p in profiles], dtype=float) * meter_kw,
            site_ai_kw=np.array([max_ai_load_kw(fleet, s) for s in fleet.sites], dtype=float),
            site_ai_step=np.array([earliest_ai_step(grid, s) for s in fleet.sites], dtype=np.int64),
            step_discount=grid.timeline.step_discount(),
            period_discounted_days=period_discounted_days,
            opex_pv=np.array([p.opex_usd_per_rack_day for p in profiles])[:, None] * period_discounted_days,
        )


# Thresholds closer than this (relative) are one: racks of one machine model at one site have the same theta
# mathematically, but n H / (n E) rounds differently for different rack sizes n. A key that close to a
# threshold is a step with a margin of ~1e-12 of its revenue, which runs or not at no cost either way.
THRESHOLD_TIE = 1e-12


def _merge_ties(theta: np.ndarray) -> np.ndarray:
    """Each threshold replaced by the smallest of its run of near-equal thresholds (THRESHOLD_TIE)."""
    if len(theta) < 2:
        return theta
    order = np.argsort(theta, kind="stable")
    ordered = theta[order]
    new_run = np.concatenate(([True], np.diff(ordered) > THRESHOLD_TIE * np.abs(ordered[1:])))
    first = np.maximum.accumulate(np.where(new_run, np.arange(len(ordered)), 0))
    merged = np.empty_like(theta)
    merged[order] = ordered[first]
    return merged


@dataclass(frozen=True)
class _Thresholds:
    """The distinct run thresholds of a site's profiles: the sums are computed once per threshold.

    theta = 1000 H (1 - fee) / E depends on the machine's efficiency and the site's PUE only, so a site's
    many groups (any rack size, opex or count) share a handful of thresholds, one per machine model.
    """

    members: np.ndarray  # int [Q_n] profiles at the site
    values: np.ndarray  # [U] distinct thresholds, ascending
    of_member: np.ndarray  # int [Q_n] position of each member's threshold in `values`
    load_kw: np.ndarray  # [U] most mining load at the threshold: every rack of its profiles running

    @staticmethod
    def of(profiles: _ProfileArrays, n: int) -> _Thresholds:
        members = np.flatnonzero(profiles.site == n)
        values, of_member = np.unique(profiles.theta[members], return_inverse=True)
        of_member = of_member.reshape(-1)
        load = np.bincount(of_member, profiles.max_load_kw[members], len(values))
        return _Thresholds(members, values, of_member, load)


_SCRATCH = threading.local()  # per thread: Ray runs one task at a time per worker, tests may use threads


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A reusable float buffer of `shape`, valid until the next call with the same name in this thread.

    Batches are priced chunk after chunk with the same shapes; fresh arrays of megabytes are fresh pages
    from the kernel, and faulting them in costs more than the arithmetic done on them. The buffers stay
    at the largest chunk's size: masks U, keys 1, weights 5 + 2 M floats per scenario-step of a chunk.
    """
    pool = _SCRATCH.__dict__.setdefault("pool", {})
    size = int(np.prod(shape))
    buffer = pool.get(name)
    if buffer is None or buffer.size < size:
        buffer = pool[name] = np.empty(size)
    return buffer[:size].reshape(shape)


def _run_masks(keys: np.ndarray, thresholds: _Thresholds) -> np.ndarray:
    """[S, U, T] float 1.0 where key < theta_u (the threshold's profiles run), else 0.0 (a scratch buffer)."""
    masks = _scratch("masks", (keys.shape[0], len(thresholds.values), keys.shape[1]))
    for u, theta in enumerate(thresholds.values):
        np.less(keys, theta, out=masks[:, u, :], casting="unsafe")
    return masks


def _site_steps(
    fleet: Fleet, grid: PlanGrid, n: int, scenarios: ScenarioSet, masks: np.ndarray, thresholds: _Thresholds
) -> _SiteSteps:
    """Where a cap or a demand-response call can bind: the most the site could draw exceeds what it may.

    Only steps in an event or a call can couple, and they are rare: the test runs on those points alone.
    """
    site = fleet.sites[n]
    empty = np.zeros(0, dtype=np.int64)
    cap_s = cap_t = call_s = call_t = empty
    if scenarios.available_power_fraction is not None:
        cap_s, cap_t = np.nonzero(scenarios.available_fraction(site.market) < 1.0)
    if scenarios.dr_call is not None and site.demand_response is not None:
        call_s, call_t = np.nonzero(scenarios.dr_called(site.market))
    if not len(cap_s) and not len(call_s):
        return _SiteSteps(empty, empty, np.zeros(0), np.zeros(0, dtype=bool))
    # candidate points: in an event or a call, in (scenario, step) order
    points = np.unique(np.concatenate([cap_s * scenarios.n_steps + cap_t, call_s * scenarios.n_steps + call_t]))
    scen, step = points // scenarios.n_steps, points % scenarios.n_steps
    # profiles whose theta exceeds the key run: their most load summed
    running_kw = masks[scen, :, step] @ thresholds.load_kw if len(thresholds.values) else np.zeros(len(scen))
    cap_kw = np.full(len(scen), np.inf)
    in_event = np.isin(points, cap_s * scenarios.n_steps + cap_t)
    if in_event.any():
        fraction = scenarios.available_fraction(site.market)[scen[in_event], step[in_event]]
        cap_kw[in_event] = fraction * site.capacity_mw * KW_PER_MW
    ai_live = step >= earliest_ai_step(grid, site)
    ai_kw = np.where(ai_live, max_ai_load_kw(fleet, site), 0.0) if ai_live.any() else 0.0
    dr_call = np.isin(points, call_s * scenarios.n_steps + call_t)
    # the drop is measured from the planned load, so it can bind only if some rack would run
    binds = (running_kw + ai_kw > cap_kw) | (dr_call & (running_kw > 0))
    return _SiteSteps(scen=scen[binds], step=step[binds], cap_kw=cap_kw[binds], dr_call=dr_call[binds])


# Runs that price at least this many site-scenario-steps (scenarios x steps x sites of the fleet) use the
# compiled one-pass kernel (optimizer.economics_kernel); smaller ones the numpy path. The kernel costs, once per
# process, the import of numba and its first dispatch (loading the cached machine code): 0.6 + 1.3 s measured on
# this 2-core machine at load ~16 (about half that unloaded), and then saves ~10-16 ns per site-scenario-step
# (bench/bench_pipeline.py section 2: numpy ~16-25 ns, the kernel ~5-9): the break-even is ~100M, e.g. the
# five-year example at ~600 scenarios. A function of the fleet alone, so the path (and the last bits of the
# sums) never depends on the batch size, the number of Ray workers or what a process priced before.
KERNEL_MIN_SITE_CELLS = 100_000_000


def uses_kernel(fleet: Fleet) -> bool:
    """Whether the fleet's runs price their economics with the compiled kernel (KERNEL_MIN_SITE_CELLS)."""
    return fleet.scenarios.count * fleet.horizon.n_steps * len(fleet.sites) >= KERNEL_MIN_SITE_CELLS


@dataclass(frozen=True)
class _ChunkSums:
    """What the numpy pass over a chunk yields, per site: threshold sums, coupled steps, take-or-pay resale."""

    per_threshold: list[dict[str, np.ndarray]]  # per site with profiles: [U, P, S] per _PROFILE_SUMS, runs [U, S]
    threshold_of: np.ndarray  # int [Q] position of each profile's threshold among all sites' thresholds
    site_steps: list[_SiteSteps]
    resale: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]  # take-or-pay site -> [P, S] sum, PV, tail mean [S]
    halving_step: np.ndarray  # [S]
    mean_hashprice_usd_per_ph_day: np.ndarray  # [S]


def group_economics(
    fleet: Fleet, scenarios: ScenarioSet, grid: PlanGrid | None = None, kernel: bool | None = None
) -> GroupEconomics:
    """Economics of a batch of scenarios on the fleet's plan grid (periods and profiles).

    `kernel`: price with the compiled one-pass kernel (True) or numpy (False); by default as uses_kernel.
    """
    grid = grid or plan_grid(fleet, scenarios.n_steps)
    timeline = grid.timeline
    if scenarios.n_steps != timeline.n_steps or abs(scenarios.step_hours - timeline.step_hours) > 1e-12:
        raise ValueError(
            f"scenarios have {scenarios.n_steps} steps of {scenarios.step_hours:g} h, the horizon "
            f"{timeline.n_steps} of {timeline.step_hours:g} h"
        )
    profiles = _ProfileArrays.of(fleet, grid)
    kernel = uses_kernel(fleet) if kernel is None else kernel
    fields = (_kernel_fields if kernel else _numpy_fields)(fleet, grid, scenarios, profiles)
    return GroupEconomics(
        indices=np.asarray(scenarios.indices),
        steps=np.full(scenarios.n_scenarios, scenarios.n_steps),
        hashprice_ratio=_hashprice_ratio(scenarios, timeline.bounds),
        **fields,
    )


def _numpy_fields(
    fleet: Fleet, grid: PlanGrid, scenarios: ScenarioSet, profiles: _ProfileArrays
) -> dict[str, np.ndarray]:
    """Every GroupEconomics field but the indices, steps and hashprice ratio, by the numpy path."""
    chunk = _numpy_pass(fleet, grid, scenarios, profiles)
    return {
        **_numpy_profile_fields(fleet, grid, profiles, chunk),
        "mean_hashprice_usd_per_ph_day": chunk.mean_hashprice_usd_per_ph_day,
        "halving_step": chunk.halving_step,
        **_contract_terms(fleet, grid, scenarios.n_scenarios, chunk.resale, profiles.step_discount),
        **_coupled_slots(fleet, grid, scenarios, chunk.site_steps, profiles),
    }


def _numpy_profile_fields(
    fleet: Fleet, grid: PlanGrid, profiles: _ProfileArrays, chunk: _ChunkSums
) -> dict[str, np.ndarray]:
    """GroupEconomics' [Q, P, S] fields and run_fraction [Q, S] from the numpy pass's threshold sums."""
    sums, runs = _profile_sums(fleet, grid, profiles, chunk, len(chunk.halving_step))
    return {
        "mine_value_usd": sums["revenue_pv"] - sums["cost_pv"] - profiles.opex_pv[:, :, None],
        "hash_revenue_usd": sums["revenue"],
        "power_cost_usd": sums["cost"],
        "hash_revenue_pv_usd": sums["revenue_pv"],
        "power_cost_pv_usd": sums["cost_pv"],
        "energy_mwh": sums["energy"],
        "btc_mined": sums["btc"],
        "run_fraction": runs / grid.timeline.n_steps,
    }


# the [Q, P, S] fields in economics_kernel._profile_outputs's argument order
_KERNEL_FIELDS = (
    "mine_value_usd",
    "hash_revenue_usd",
    "power_cost_usd",
    "hash_revenue_pv_usd",
    "power_cost_pv_usd",
    "energy_mwh",
    "btc_mined",
)


def _profile_sums(
    fleet: Fleet, grid: PlanGrid, profiles: _ProfileArrays, chunk: _ChunkSums, n_scen: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every profile's sums [Q, P, S] and run steps [Q, S]: its threshold's, times its per-rack scale."""
    n_q, n_p = len(grid.profiles), grid.timeline.n_periods
    rev_scale = profiles.hashrate_ths * (1 - fleet.pool_fee_fraction)  # per TH-hour of hashprice
    mwh_scale = profiles.meter_kw / KW_PER_MW * grid.timeline.step_hours  # MWh one rack draws in a step
    scale = {"revenue": rev_scale, "revenue_pv": rev_scale, "btc": rev_scale}
    scale |= {"cost": mwh_scale, "cost_pv": mwh_scale, "energy": mwh_scale}
    per_threshold, threshold_of = chunk.per_threshold, chunk.threshold_of
    sums = {}
    for name in _PROFILE_SUMS:
        if per_threshold:
            values = np.concatenate([t[name] for t in per_threshold]).take(threshold_of, axis=0)
            values *= scale[name][:, None, None]
        else:
            values = np.zeros((n_q, n_p, n_scen))
        sums[name] = values
    runs = (
        np.concatenate([t["runs"] for t in per_threshold]).take(threshold_of, axis=0)
        if per_threshold
        else np.zeros((n_q, n_scen))
    )
    return sums, runs


def _numpy_pass(fleet: Fleet, grid: PlanGrid, scenarios: ScenarioSet, profiles: _ProfileArrays) -> _ChunkSums:
    """Per site: run masks per distinct threshold, times the shared weights per period (matrix products)."""
    hashprice = scenarios.hashprice_usd_per_th_hour
    weights = _Weights(scenarios, hashprice, grid.timeline.step_discount())
    site_steps, per_threshold, all_thresholds = [], [], []
    positive = bool(np.all(hashprice > 0))
    keys = _scratch("keys", hashprice.shape)
    for n, site in enumerate(fleet.sites):
        price = _SitePrice(site, scenarios)
        price.keys(hashprice, positive, out=keys)
        thresholds = _Thresholds.of(profiles, n)
        masks = _run_masks(keys, thresholds)
        steps = _site_steps(fleet, grid, n, scenarios, masks, thresholds)
        site_steps.append(steps)
        all_thresholds.append(thresholds)
        if len(thresholds.members):
            per_threshold.append(_threshold_sums(grid, thresholds, masks, keys, steps, price, weights))
        del masks
    return _ChunkSums(
        per_threshold=per_threshold,
        threshold_of=_threshold_of(all_thresholds, len(grid.profiles)),
        site_steps=site_steps,
        resale=_numpy_resale(fleet, grid, scenarios),
        halving_step=_halving_step(scenarios),
        mean_hashprice_usd_per_ph_day=scenarios.hashprice_usd_per_ph_day.mean(axis=1),
    )


def _kernel_fields(
    fleet: Fleet, grid: PlanGrid, scenarios: ScenarioSet, profiles: _ProfileArrays
) -> dict[str, np.ndarray]:
    """The same fields by the compiled kernel (optimizer.economics_kernel): one pass over the chunk for the weight
    sums per site and threshold and the coupled points, one loop writing every profile's [Q, P, S] fields, one
    writing the coupled slots and their items. The per-site and per-profile arrays it reads are built once per grid
    (_KernelTables)."""
    from optimizer import economics_kernel as kern

    timeline, tables = grid.timeline, _KernelTables.of(fleet, profiles, scenarios.markets, grid.timeline.step_hours)
    n_scen, n_steps, n_sites, n_p = scenarios.n_scenarios, scenarios.n_steps, len(fleet.sites), timeline.n_periods
    sums = np.zeros((n_scen, n_sites, tables.n_thresholds, n_p, kern.N_WEIGHTS))
    runs = np.zeros((n_scen, n_sites, tables.n_thresholds))
    resale, resale_tail = np.zeros((n_scen, n_sites, n_p, 2)), np.zeros((n_scen, n_sites))
    hashprice_sum, halving = np.zeros(n_scen), np.empty(n_scen, dtype=np.int64)
    item_count = np.zeros(n_scen, dtype=np.int64)
    hashprice, power = _float_array(scenarios.hashprice_usd_per_ph_day), _float_array(scenarios.power_price_usd_per_mwh)
    btc = _float_array(scenarios.btc_price_usd)
    fraction, calls = scenarios.available_power_fraction, scenarios.dr_call
    points = kern.chunk_pass(
        hashprice,
        btc,
        _float_array(scenarios.subsidy_btc),
        profiles.step_discount,
        power,
        _float_array(fraction) if fraction is not None else _NO_FRACTION,
        np.ascontiguousarray(calls) if calls is not None else _NO_CALLS,
        fraction is not None,
        calls is not None,
        np.asarray(timeline.bounds, dtype=np.int64),
        float(timeline.step_hours),
        max(0, n_steps - _last_year_steps(timeline.step_hours)),
        *tables.sites,
        sums,
        runs,
        resale,
        resale_tail,
        hashprice_sum,
        halving,
        item_count,
    )
    out = _kernel_profile_fields(grid, profiles, tables, sums, runs)
    out |= _kernel_coupled(profiles, tables, hashprice, btc, power, points, item_count)
    tail_steps = min(n_steps, _last_year_steps(timeline.step_hours))
    resale_sums = {
        n: (resale[:, n, :, kern.R_RESALE].T, resale[:, n, :, kern.R_RESALE_PV].T, resale_tail[:, n] / tail_steps)
        for n, s in enumerate(fleet.sites)
        if s.contract.resells
    }
    out |= _contract_terms(fleet, grid, n_scen, resale_sums, profiles.step_discount)
    out["mean_hashprice_usd_per_ph_day"], out["halving_step"] = hashprice_sum / n_steps, halving
    return out


_NO_FRACTION, _NO_CALLS = np.zeros((1, 1, 1)), np.zeros((1, 1, 1), dtype=bool)  # placeholders the kernel skips


def _float_array(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64)


def _kernel_profile_fields(grid: PlanGrid, profiles: _ProfileArrays, tables: _KernelTables, sums, runs) -> dict:
    """GroupEconomics' [Q, P, S] fields and run_fraction [Q, S], written by the compiled loop
    (optimizer.economics_kernel.profile_outputs) from the pass's weight sums [S, N, U, P, W]: each value written
    once, no per-field gather and scaling passes."""
    from optimizer import economics_kernel as kern

    timeline = grid.timeline
    n_q, n_p, n_scen = len(grid.profiles), timeline.n_periods, sums.shape[0]
    out = {name: np.empty((n_q, n_p, n_scen)) for name in _KERNEL_FIELDS}
    out["run_fraction"] = np.empty((n_q, n_scen))
    site_offset, site_follows_spot = tables.sites[2], tables.sites[1]
    kern.profile_outputs(
        sums,
        runs,
        profiles.site,
        profiles.threshold_in_site,
        tables.rev_scale,
        tables.mwh_scale,
        profiles.opex_pv,
        site_offset,
        site_follows_spot,
        float(timeline.step_hours),
        timeline.n_steps,
        *(out[name] for name in _KERNEL_FIELDS),
        out["run_fraction"],
    )
    return out


def _kernel_coupled(profiles, tables, hashprice, btc, power, points, item_count) -> dict[str, np.ndarray]:
    """The padded [K, S] coupled slots and [I, S] items from the pass's points (already in (scenario, site, step)
    order), written by one compiled loop (optimizer.economics_kernel.coupled_tables): scenario by scenario, each
    scenario's slots and items contiguous, then its padding; handed out as [K, S] and [I, S] views."""
    from optimizer import economics_kernel as kern

    scen = points[0]
    n_scen = len(item_count)
    n_slots = int(np.bincount(scen, minlength=n_scen).max()) if len(scen) else 0
    n_items = int(item_count.max()) if n_scen else 0
    slots = {name: np.empty((n_scen, n_slots), dtype=_dtype(name)) for name in _SLOTS}
    # one spare column: the compiled fill writes every candidate at the next free cell, which moves on only if it runs
    items = {name: np.empty((n_scen, n_items + 1), dtype=_dtype(name)) for name in _ITEMS}
    members, first = profiles.site_members
    kern.coupled_tables(
        *points,
        hashprice,
        btc,
        power,
        profiles.step_discount,
        *tables.coupled,
        first,
        members,
        profiles.theta,
        profiles.hashrate_ths,
        tables.mwh_scale,
        tables.fee_factor,
        tables.step_hours,
        item_count,
        *(slots[name] for name in _SLOTS),
        *(items[name] for name in _ITEMS),
        *(_PADDING[name] for name in _SLOTS + _ITEMS),
    )
    return {name: values.T for name, values in slots.items()} | {
        name: values[:, :n_items].T for name, values in items.items()
    }


# the coupled slots' fields in economics_kernel._coupled_tables's argument order
_SLOTS = (
    "coupled_site",
    "coupled_step",
    "coupled_cap_kw",
    "coupled_dr_call",
    "coupled_resale_usd_per_mwh",
    "coupled_discount",
    "coupled_btc_price_usd",
)


@dataclass(frozen=True)
class _KernelTables:
    """The per-site and per-profile arrays the kernel reads, built once per (grid, markets) rather than per chunk
    (~0.1-0.3 ms a chunk of numpy calls and Python loops): `sites` in _chunk_pass's argument order, `coupled` in
    _coupled_tables's."""

    sites: tuple
    coupled: tuple
    n_thresholds: int  # U: the most distinct thresholds at one site
    rev_scale: np.ndarray  # [Q] TH/s after pool fee: per TH-hour of hashprice, as _profile_sums
    mwh_scale: np.ndarray  # [Q] MWh one rack draws in a step, as _profile_sums and the items' cost
    fee_factor: float  # 1 - pool fee
    step_hours: float

    @staticmethod
    def of(fleet: Fleet, profiles: _ProfileArrays, markets: tuple, step_hours: float) -> _KernelTables:
        """Cached on the profile arrays (per grid and pool fee), keyed by what else the tables read: the markets'
        order and every site's market, contract, capacity and demand response."""
        sites = tuple((s.market, s.contract, s.capacity_mw, s.demand_response is not None) for s in fleet.sites)
        key = (tuple(markets), float(step_hours), sites)
        cache = profiles.kernel_tables
        if key not in cache:
            cache.clear()
            cache[key] = _KernelTables._build(fleet, profiles, markets, step_hours)
        return cache[key]

    @staticmethod
    def _build(fleet: Fleet, profiles: _ProfileArrays, markets: tuple, step_hours: float) -> _KernelTables:
        sites, thresholds = fleet.sites, profiles.site_thresholds
        n_u = max((len(t.values) for t in thresholds), default=0)
        padded = np.full((len(sites), max(n_u, 1)), np.inf)
        suffix = np.zeros((len(sites), n_u + 1))
        suffix_members = np.zeros((len(sites), n_u + 1), dtype=np.int64)
        for n, t in enumerate(thresholds):
            padded[n, : len(t.values)] = t.values
            # every profile with theta_u, u >= j, running; and how many profiles those are (a coupled step's candidates)
            suffix[n, : len(t.values)] = np.cumsum(t.load_kw[::-1])[::-1]
            members = np.bincount(t.of_member, minlength=len(t.values))
            suffix_members[n, : len(t.values)] = np.cumsum(members[::-1])[::-1]
        market = np.array([list(markets).index(s.market) for s in sites], dtype=np.int64)
        follows = np.array([_price_terms(s)[0] != 0.0 for s in sites])
        offset = np.array([_price_terms(s)[1] for s in sites], dtype=np.float64)
        resells = np.array([bool(s.contract.resells) for s in sites])
        fee = np.array([s.contract.resale_fee_usd_per_mwh if s.contract.resells else 0.0 for s in sites])
        return _KernelTables(
            sites=(
                market,
                follows,
                offset,
                fee,
                resells,
                np.array([len(t.values) for t in thresholds], dtype=np.int64),
                padded,
                suffix,
                suffix_members,
                np.array([s.capacity_mw for s in sites], dtype=np.float64),
                np.array([s.demand_response is not None for s in sites]),
                profiles.site_ai_kw,
                profiles.site_ai_step,
            ),
            coupled=(market, follows, offset, resells, fee),
            n_thresholds=n_u,
            rev_scale=profiles.hashrate_ths * (1 - fleet.pool_fee_fraction),
            mwh_scale=profiles.meter_kw / KW_PER_MW * step_hours,
            fee_factor=1.0 - fleet.pool_fee_fraction,
            step_hours=float(step_hours),
        )


def _threshold_of(thresholds: list[_Thresholds], n_profiles: int) -> np.ndarray:
    """[Q] position of each profile's threshold among the thresholds of every site with profiles, site by site."""
    out, before = np.zeros(n_profiles, dtype=np.int64), 0
    for t in thresholds:
        out[t.members] = before + t.of_member
        before += len(t.values)
    return out


_PROFILE_SUMS = ("revenue", "cost", "revenue_pv", "cost_pv", "energy", "btc")
# rows of the shared weight matrix: what a running rack accumulates per step, before its per-rack scale
_SHARED = ("hashprice", "hashprice_pv", "btc", "count", "discount")


class _Weights:
    """[S, W, T] weights summed over the running steps, built once per batch and shared by every site.

    Shared rows: hashprice per TH-hour (nominal and discounted), BTC per TH/s, 1 and the discount factor;
    per market, built on first use: spot and discounted spot. A site's power cost is spot x weight +
    offset (_SitePrice), so its sums are these rows' sums: no per-site price array is summed.
    """

    def __init__(self, scenarios: ScenarioSet, hashprice: np.ndarray, discount: np.ndarray) -> None:
        n_scen, n_steps = hashprice.shape
        self.shared = _scratch("weights", (n_scen, len(_SHARED), n_steps))
        self.shared[:, 0] = hashprice
        np.multiply(hashprice, discount, out=self.shared[:, 1])
        np.multiply(hashprice, scenarios.step_hours, out=self.shared[:, 2])
        self.shared[:, 2] /= scenarios.btc_price_usd
        self.shared[:, 3] = 1.0
        self.shared[:, 4] = discount
        self._scenarios, self._discount, self._spot = scenarios, discount, {}

    def spot(self, market: str) -> np.ndarray:
        if market not in self._spot:
            price = self._scenarios.power_price(market)
            rows = _scratch(f"spot:{self._scenarios.markets.index(market)}", (price.shape[0], 2, price.shape[1]))
            rows[:, 0] = price
            np.multiply(price, self._discount, out=rows[:, 1])
            self._spot[market] = rows
        return self._spot[market]


def _threshold_sums(grid, thresholds, masks, keys, steps, price, weights) -> dict[str, np.ndarray]:
    """The site's sums per distinct threshold, per unit of a rack's scale: [U, P, S] per name, runs [U, S].

    Masks x weights per period (one batched matrix product); coupled steps count as run steps but are
    kept out of the sums.
    """
    hours = grid.timeline.step_hours
    n_u, n_p, n_scen = len(thresholds.values), grid.timeline.n_periods, masks.shape[0]
    out = {name: np.empty((n_u, n_p, n_scen)) for name in _PROFILE_SUMS}
    out["runs"] = np.zeros((n_u, n_scen))
    if len(steps.scen):
        runs_coupled = keys[steps.scen, steps.step][:, None] < thresholds.values[None, :]  # [C, U]
        for u in range(n_u):
            out["runs"][u] += np.bincount(steps.scen, runs_coupled[:, u], minlength=n_scen)
        masks[steps.scen, :, steps.step] = 0.0
    bounds = grid.timeline.bounds
    for p in range(n_p):
        a, b = bounds[p], bounds[p + 1]
        period_masks = masks[:, :, a:b]
        shared = np.matmul(period_masks, weights.shared[:, :, a:b].transpose(0, 2, 1)).transpose(1, 2, 0)  # [U, W, S]
        count, discount_sum = shared[:, 3], shared[:, 4]
        cost, cost_pv = price.offset * count, price.offset * discount_sum
        if price.follows_spot:
            spot = np.matmul(period_masks, weights.spot(price.market)[:, :, a:b].transpose(0, 2, 1)).transpose(1, 2, 0)
            cost = cost + price.spot_weight * spot[:, 0]
            cost_pv = cost_pv + price.spot_weight * spot[:, 1]
        out["revenue"][:, p] = shared[:, 0] * hours
        out["revenue_pv"][:, p] = shared[:, 1] * hours
        out["btc"][:, p] = shared[:, 2]
        out["cost"][:, p] = cost
        out["cost_pv"][:, p] = cost_pv
        out["energy"][:, p] = count
        out["runs"] += count
    return out


def _halving_step(scenarios: ScenarioSet) -> np.ndarray:
    lower = scenarios.subsidy_btc < scenarios.subsidy_btc[:, :1]
    return np.where(lower.any(axis=1), lower.argmax(axis=1), scenarios.n_steps)


def _hashprice_ratio(scenarios: ScenarioSet, bounds: np.ndarray) -> np.ndarray:
    """[P + 1, S] mean hashprice of the day from each boundary (the last day for the end) over the first day's."""
    per_day = max(1, int(HOURS_PER_DAY // scenarios.step_hours))
    hp = scenarios.hashprice_usd_per_ph_day
    starts = np.minimum(bounds, max(0, scenarios.n_steps - per_day))
    # means as ndarray.mean computes them (sum, then divided by the count), without its per-call overhead (~50 us
    # each, three or more per chunk)
    first = np.add.reduce(hp[:, :per_day], axis=1) / per_day
    return np.stack([np.add.reduce(hp[:, a : a + per_day], axis=1) / per_day / first for a in starts])


def _last_year_steps(step_hours: float) -> int:
    """Steps of the last year, whose mean resale prices take-or-pay power past the horizon."""
    return max(1, int(HOURS_PER_YEAR // step_hours))


def _numpy_resale(fleet: Fleet, grid: PlanGrid, scenarios: ScenarioSet) -> dict:
    """Per take-or-pay site: resale (spot - fee) summed per period [P, S], discounted, and the last year's mean [S]."""
    starts, discount = grid.timeline.bounds[:-1], grid.timeline.step_discount()
    out = {}
    for n, site in enumerate(fleet.sites):
        if site.contract.resells:
            resale = resale_price_usd_per_mwh(site, scenarios)
            out[n] = (
                np.add.reduceat(resale, starts, axis=1).T,
                np.add.reduceat(resale * discount, starts, axis=1).T,
                resale[:, -_last_year_steps(scenarios.step_hours) :].mean(axis=1),
            )
    return out


def _contract_terms(
    fleet: Fleet, grid: PlanGrid, n_scen: int, resale_sums: dict, step_discount: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-site take-or-pay terms [N, P, S]; zero for fixed and index contracts (lease power nets to zero there).

    `resale_sums`: per take-or-pay site, its resale summed per period, discounted, and the last year's mean;
    `step_discount`: the timeline's.
    """
    timeline = grid.timeline
    n_sites, hours = len(fleet.sites), timeline.step_hours
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
    steps_per_period = np.diff(timeline.bounds)
    discount_per_period = np.add.reduceat(step_discount, timeline.bounds[:-1])
    for n, (resale, resale_pv, tail_mean) in resale_sums.items():
        site = fleet.sites[n]
        price = site.contract.price_usd_per_mwh
        out["block_resale_usd"][n] = site.capacity_mw * hours * resale
        out["block_resale_pv_usd"][n] = site.capacity_mw * hours * resale_pv
        out["block_payment_usd"][n] = (price * site.capacity_mw * hours * steps_per_period)[:, None]
        out["block_payment_pv_usd"][n] = (price * site.capacity_mw * hours * discount_per_period)[:, None]
        if site.ai is not None:
            meter_mwh_per_step = site.pue_ai * hours  # one leased IT MW at the meter, per step
            out["ai_resale_pv_usd_per_mw"][n] = meter_mwh_per_step * resale_pv
            out["ai_passthrough_pv_usd_per_mw"][n] = (price * meter_mwh_per_step * discount_per_period)[:, None]
            out["ai_resale_usd_per_mw"][n] = meter_mwh_per_step * resale
            out["ai_passthrough_usd_per_mw"][n] = (price * meter_mwh_per_step * steps_per_period)[:, None]
            out["ai_tail_net_usd_per_mwh"][n] = price - tail_mean
    return out


def _coupled_slots(
    fleet: Fleet,
    grid: PlanGrid,
    scenarios: ScenarioSet,
    site_steps: list[_SiteSteps],
    profiles: _ProfileArrays,
) -> dict[str, np.ndarray]:
    """Padded [K, S] slots and [I, S] items of the coupled steps, in (site, step) order per scenario (numpy path)."""
    n_scen = scenarios.n_scenarios
    parts = [(st.scen, np.full(len(st.scen), n), st.step) for n, st in enumerate(site_steps)]
    scen, site, step = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64) for i in range(3))
    order = np.lexsort((step, site, scen))  # scenario, then site, then step
    scen, site, step = scen[order].astype(np.int64), site[order].astype(np.int64), step[order].astype(np.int64)
    slot = _positions_within(scen, n_scen)
    n_slots = int(slot.max()) + 1 if len(slot) else 0

    out = {name: _padded((n_slots, n_scen), name) for name in _PADDING if name.startswith("coupled_")}
    out["coupled_site"][slot, scen] = site
    out["coupled_step"][slot, scen] = step
    out["coupled_discount"][slot, scen] = profiles.step_discount[step] if len(step) else 1.0
    out["coupled_btc_price_usd"][slot, scen] = scenarios.btc_price_usd[scen, step]
    cap = np.concatenate([st.cap_kw for st in site_steps]) if site_steps else np.zeros(0)
    call = np.concatenate([st.dr_call for st in site_steps]) if site_steps else np.zeros(0, bool)
    out["coupled_cap_kw"][slot, scen] = cap[order]
    out["coupled_dr_call"][slot, scen] = call[order]
    resale = np.zeros(len(site))
    for n, s in enumerate(fleet.sites):
        here = site == n
        if s.contract.resells and here.any():
            resale[here] = scenarios.power_price(s.market)[scen[here], step[here]] - s.contract.resale_fee_usd_per_mwh
    out["coupled_resale_usd_per_mwh"][slot, scen] = resale

    return out | _numpy_items(fleet, scenarios, profiles, scen, site, step, slot)


_ITEMS = ("item_slot", "item_group", "item_hash_revenue_usd", "item_power_cost_usd")


def _numpy_items(fleet, scenarios, profiles, scen, site, step, slot) -> dict[str, np.ndarray]:
    """[I, S] items: the site's profiles with a positive margin in the slot's step, in (scenario, slot, profile)
    order. Slots of a scenario run site by site, so a site's items follow the items of the sites before it in
    that scenario: their position is the earlier sites' item count there plus their rank within the site."""
    n_scen, hours = scenarios.n_scenarios, scenarios.step_hours
    parts, before = [], np.zeros(n_scen, dtype=np.int64)
    for n in range(len(fleet.sites)):
        here = np.flatnonzero(site == n)
        members = np.flatnonzero(profiles.site == n)
        if not len(here) or not len(members):
            continue
        s_, t_ = scen[here], step[here]
        hashprice = scenarios.hashprice_usd_per_ph_day[s_, t_] / TH_PER_PH / HOURS_PER_DAY  # per TH-hour
        price = _SitePrice(fleet.sites[n], scenarios).at(s_, t_)
        # [C, Q_n] positive margins; nonzero walks it point by point, profile by profile: already in order
        point, member = np.nonzero(price_keys(price, hashprice)[:, None] < profiles.theta[members][None, :])
        q = members[member]
        item_scen = s_[point]
        revenue = profiles.hashrate_ths[q] * hashprice[point] * (1.0 - fleet.pool_fee_fraction) * hours
        cost = profiles.meter_kw[q] / KW_PER_MW * hours * price[point]
        position = before[item_scen] + _positions_within(item_scen, n_scen)
        before += np.bincount(item_scen, minlength=n_scen)
        parts.append((position, item_scen, slot[here][point], q, revenue, cost))
    n_items = int(before.max()) if n_scen else 0
    position, item_scen = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64) for i in (0, 1))
    out = {}
    for i, name in enumerate(_ITEMS, start=2):
        out[name] = _padded((n_items, n_scen), name)
        if parts:
            out[name][position, item_scen] = np.concatenate([p[i] for p in parts])
    return out


# Index fields fit 32 bits (steps, slots, profiles): half the memory of the padded [K, S] / [I, S] tables.
_INDEX_FIELDS = frozenset({"coupled_site", "coupled_step", "item_slot", "item_group"})


def _dtype(name: str):
    return np.int32 if name in _INDEX_FIELDS else np.asarray(_PADDING[name]).dtype


def _padded(shape: tuple[int, int], name: str) -> np.ndarray:
    return np.full(shape, _PADDING[name], dtype=_dtype(name))


def _positions_within(sorted_columns: np.ndarray, n_columns: int) -> np.ndarray:
    """Position of each entry among the entries of its column, for entries sorted by column."""
    counts = np.bincount(sorted_columns, minlength=n_columns)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return np.arange(len(sorted_columns)) - starts[sorted_columns]


def concat_economics(parts: Sequence[GroupEconomics]) -> GroupEconomics:
    """Join batches along the scenario axis, in global index order whatever order they finished in.

    Parts already in order (a Ray task's streamed chunks) are not copied a second time by the reordering, and one
    such part is returned as it is: a batch of one chunk was copied twice for nothing (~2 ms of the 1,000-group
    bench's 25-scenario tasks)."""
    if len(parts) == 1 and _ascending(parts[0].indices):
        return parts[0]
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
    if _ascending(joined["indices"]):
        return GroupEconomics(**joined)
    order = np.argsort(joined["indices"], kind="stable")
    return GroupEconomics(**{name: value[..., order] for name, value in joined.items()})


def _ascending(indices: np.ndarray) -> bool:
    return bool(np.all(indices[1:] > indices[:-1]))


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
