"""What a rack can do over the horizon: its lifecycle options, and the rack profiles they mine as.

A *profile* is a rack configuration at a site (machines per rack and class, opex): every rack group
is one at its own site, and, when moves are allowed, one at each other site; every purchase option
is one. The per-rack economics (optimizer.economics) are computed per profile and period.

A *lifecycle* is one first-stage choice for one rack of a group, written as what it does period by
period (optimizer.timeline): the MIP counts racks per (group, lifecycle) - integers, never one
binary per rack. The options:

- `mine`: mines at its site all horizon; kept at the end.
- `idle`: stays in place switched off (idle cost per rack-day); kept at the end.
- `sell`: sold at the plan's start at the machine's resale price.
- `move:SITE`: moved at the start (cost per rack), mines at SITE once the downtime is over.
- a group of `committed_ai` slots (a hall already converted, quarterly re-planning) has one option,
  `ai@0:store`, with no machines left to keep or sell.
- `ai@K:FATE`: the rack's slot becomes AI/HPC capacity in the site's conversion starting at its K-th
  start option: the rack mines until then, and its machines are then `sell` (sold at that date's
  resale price), `store` (kept idle; idle cost) or `move:SITE` (as above, from that date).

Dated recourse (`fleet.recourse_months`, the tree analysis's decision dates; docs/tree.md): at each such
month M a rack that mined until then may change course, and a rack idled may restart:

- `sell@mM`: mines at its site until month M, then sold at that date's resale price;
- `move@mM:SITE`: mines until M, then moved (cost per rack), mines at SITE once the downtime is over;
- `idle@mM`: mines until M, then idle to the end;
- `idle:restart@mK` and `idle@mM:restart@mK` (M < K): idle from the start (or from M), mining again
  from month K (the fleet model has no restart cost: only the idle cost of the idle days).

Each lifecycle lists its *departures*: the boundaries at which it changes course, each with the
lifecycle it follows until then (`mine` before the first, `idle@mM` before a restart). The multi-stage
model (optimizer.multistage) takes each departure at the node of the last decision date at or before
it; a lifecycle's prefix is always one of the group's lifecycles, so every node's choice refines a
choice its ancestors made. With R recourse dates and T other sites a group gains at most
R (2 + T) + R (R + 1) / 2 lifecycles (fewer when its machines cannot be sold or racks cannot move).

Machines still owned at the horizon's end are valued at their resale price then (salvage). Resale
prices move with hashprice: a machine's second-hand price in a scenario at a date is its price per
TH/s today times hashprice then over hashprice at the start (both daily means), the way ASIC
price indices track hashprice.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from optimizer.constants import DAYS_PER_MONTH, HOURS_PER_DAY, KW_PER_MW
from optimizer.fleet import Fleet
from optimizer.modes import Mode
from optimizer.timeline import Timeline, build_timeline


@dataclass(frozen=True)
class Profile:
    """Racks of one configuration at one site: what the economics price per (profile, period, scenario)."""

    key: str  # group id, "group@site" for a moved group, "buy:option" for a purchase
    site: int  # position in fleet.sites
    hashrate_ths: float  # per rack
    meter_kw: float  # per rack at the site's mining PUE
    it_kw: float  # per rack without PUE: the IT load its slot frees when converted
    opex_usd_per_rack_day: float
    max_racks: int  # most racks that could ever mine as this profile


@dataclass(frozen=True)
class Lifecycle:
    key: str
    mode: Mode  # how the rack is reported: mine, idle, sell, move or ai
    mining: tuple[tuple[int, int, int], ...] = ()  # (profile, first period, stop period)
    idle: tuple[int, int] | None = None  # (first period, stop period) the machines sit idle
    conversion: int | None = None  # start option index K of the group's site's conversion
    sold_at: int | None = None  # boundary index at which the machines are sold
    moved_at: int | None = None  # boundary index at which the move cost is paid
    kept: bool = True  # machines owned at the horizon's end
    # (boundary, key of the lifecycle followed until then) at each change of course; () for `mine`
    departures: tuple[tuple[int, str], ...] = ()

    @property
    def prefix(self) -> str:
        """The lifecycle this one follows until its last departure: the choice its last decision refines."""
        return self.departures[-1][1] if self.departures else MINE_KEY


MINE_KEY = "mine"  # the lifecycle every rack follows until a decision makes it depart


@dataclass(frozen=True)
class PurchaseLot:
    """Racks of one purchase option ordered at one date: today (key = the option's id) or at a recourse date
    (key "option@mM"), paid on order at the option's price per TH/s, mining from delivery."""

    key: str
    option: int  # position in fleet.purchases
    profile: int
    ordered_at: int  # boundary index of the order (and payment)
    delivery: int  # boundary index from which the racks mine


@dataclass(frozen=True)
class PlanGrid:
    """The fleet's periods, profiles and lifecycle options: everything the MIP is indexed by."""

    timeline: Timeline
    profiles: tuple[Profile, ...]
    group_profile: tuple[int, ...]  # [G] own-site profile of each group
    purchase_profile: tuple[int, ...]  # [B] profile of each purchase option
    lifecycles: tuple[tuple[Lifecycle, ...], ...]  # [G] options of each group
    conversion_start: dict[str, tuple[int, ...]]  # site id -> boundary index of each start option
    conversion_ready: dict[str, tuple[int, ...]]  # site id -> boundary index at which each option's hall is live
    delivery: tuple[int, ...]  # [B] boundary index at which each purchase starts mining
    recourse: tuple[tuple[float, int], ...] = ()  # (month, boundary index) of each dated-recourse date
    purchase_lots: tuple[PurchaseLot, ...] = ()  # [B] what the MIP's buy variables count: today's, then dated

    @property
    def n_periods(self) -> int:
        return self.timeline.n_periods

    def boundary_days(self, boundary: int) -> float:
        """Days after the plan's start at which a period boundary falls (the step it starts at)."""
        return float(self.timeline.bounds[boundary]) * self.timeline.step_hours / HOURS_PER_DAY

    def profile_index(self, key: str) -> int:
        return self._profile_of[key]

    @functools.cached_property
    def _profile_of(self) -> dict[str, int]:
        # a dict, not a scan: plan_grid looks up every moved profile (groups x sites), and a scan made
        # that quadratic (2.2 s per grid at 1,000 groups, paid again by every scenario task)
        return {p.key: q for q, p in enumerate(self.profiles)}


def plan_grid(fleet: Fleet, n_steps: int | None = None) -> PlanGrid:
    """The fleet's grid over its horizon, or over the first `n_steps` steps (a shorter evaluation window)."""
    hours, n_steps = fleet.horizon.step_hours, n_steps or fleet.horizon.n_steps
    rate, start = fleet.finance.discount_rate_per_year, fleet.horizon.start
    probe = build_timeline(hours, n_steps, rate, [], start)
    timeline = build_timeline(hours, n_steps, rate, _decision_days(fleet, probe), start)
    profiles, group_profile, purchase_profile = _profiles(fleet)
    starts, ready = {}, {}
    for site in fleet.sites:
        if site.ai is not None:
            start_steps = [timeline.step_at_months(m) for m in site.ai.start_months]
            starts[site.id] = tuple(timeline.period_starting_at(s) for s in start_steps)
            ready[site.id] = tuple(
                timeline.period_starting_at(timeline.step_at_hours(s * hours + site.ai.build_days * 24))
                for s in start_steps
            )
    delivery = tuple(timeline.period_starting_at(timeline.step_at_days(b.delivery_days)) for b in fleet.purchases)
    recourse = tuple(
        (float(m), timeline.period_starting_at(timeline.step_at_months(m)))
        for m in fleet.recourse_months
        if timeline.step_at_months(m) < timeline.n_steps
    )
    lots = _purchase_lots(fleet, timeline, purchase_profile, delivery, recourse)
    grid = PlanGrid(timeline, profiles, group_profile, purchase_profile, (), starts, ready, delivery, recourse, lots)
    options = tuple(_group_lifecycles(fleet, grid, g) for g in range(len(fleet.rack_groups)))
    return dataclasses.replace(grid, lifecycles=options)


def _purchase_lots(fleet: Fleet, timeline: Timeline, profile, delivery, recourse) -> tuple[PurchaseLot, ...]:
    """Each option's lot ordered today, then one per recourse date whose delivery falls inside the horizon."""
    lots = [PurchaseLot(b.id, i, profile[i], 0, delivery[i]) for i, b in enumerate(fleet.purchases)]
    for i, option in enumerate(fleet.purchases):
        for months, at in recourse:
            hours = timeline.bounds[at] * timeline.step_hours + option.delivery_days * HOURS_PER_DAY
            arrives = timeline.period_starting_at(timeline.step_at_hours(hours))
            if arrives < timeline.n_periods:
                lots.append(PurchaseLot(f"{option.id}@m{months:g}", i, profile[i], at, arrives))
    return tuple(lots)


def _decision_days(fleet: Fleet, probe: Timeline) -> list[float]:
    """Days after the start at which some rack's activity can change."""
    hours = fleet.horizon.step_hours
    days: list[float] = [b.delivery_days for b in fleet.purchases]
    downtime = fleet.moves.downtime_days if fleet.moves else None
    if downtime is not None:
        days.append(downtime)
    for months in fleet.recourse_months:
        start_days = probe.step_at_months(months) * hours / 24
        days += [start_days] + ([start_days + downtime] if downtime is not None else [])
        days += [start_days + b.delivery_days for b in fleet.purchases]
    for site in fleet.sites:
        if site.ai is None:
            continue
        for months in site.ai.start_months:
            start_days = probe.step_at_months(months) * hours / 24
            days += [start_days, start_days + site.ai.build_days]
            ready_months = (start_days + site.ai.build_days) / DAYS_PER_MONTH
            days += [(ready_months + o.term_months) * DAYS_PER_MONTH for o in fleet.lease_offers if site.id in o.sites]
            if downtime is not None:
                days.append(start_days + downtime)
    return days


def _profiles(fleet: Fleet) -> tuple[tuple[Profile, ...], tuple[int, ...], tuple[int, ...]]:
    site_index = {s.id: n for n, s in enumerate(fleet.sites)}
    profiles: list[Profile] = []

    def add(key, site_id, machine_id, per_rack, opex, max_racks) -> int:
        machine, site = fleet.machine(machine_id), fleet.site(site_id)
        it_kw = per_rack * machine.power_kw
        profiles.append(
            Profile(
                key,
                site_index[site_id],
                per_rack * machine.hashrate_ths,
                it_kw * site.pue_mining,
                it_kw,
                opex,
                max_racks,
            )
        )
        return len(profiles) - 1

    group_profile = tuple(
        add(g.id, g.site, g.machine, g.machines_per_rack, g.opex_usd_per_rack_day, g.racks) for g in fleet.rack_groups
    )
    if fleet.moves is not None:
        for g in fleet.rack_groups:
            for site in fleet.sites:
                if site.id != g.site:
                    add(f"{g.id}@{site.id}", site.id, g.machine, g.machines_per_rack, g.opex_usd_per_rack_day, g.racks)
    purchase_profile = tuple(
        add(f"buy:{b.id}", b.site, b.machine, b.machines_per_rack, b.opex_usd_per_rack_day, b.max_racks)
        for b in fleet.purchases
    )
    return tuple(profiles), group_profile, purchase_profile


def _group_lifecycles(fleet: Fleet, grid: PlanGrid, g: int) -> tuple[Lifecycle, ...]:
    group = fleet.rack_groups[g]
    own, end = grid.group_profile[g], grid.n_periods
    if group.committed_ai:  # slots of a hall already built or under way: AI from the first start, nothing else
        return (Lifecycle("ai@0:store", Mode.AI, idle=(0, end), conversion=0, kept=False, departures=NOW),)
    sellable = fleet.machine(group.machine).resale_usd_per_th is not None
    options = [
        Lifecycle(MINE_KEY, Mode.MINE, mining=((own, 0, end),)),
        Lifecycle("idle", Mode.IDLE, idle=(0, end), departures=NOW),
    ]
    if sellable:
        options.append(Lifecycle("sell", Mode.SELL, sold_at=0, kept=False, departures=NOW))
    for target, first in _move_targets(fleet, grid, g, 0):
        mining = _mining(grid, g, target, first)
        options.append(Lifecycle(f"move:{target}", Mode.MOVE, mining=mining, moved_at=0, departures=NOW))
    if fleet.can_convert(group):
        for k, start in enumerate(grid.conversion_start[group.site]):
            before = ((own, 0, start),) if start > 0 else ()
            converts = dict(conversion=k, departures=((start, MINE_KEY),))
            options.append(Lifecycle(f"ai@{k}:store", Mode.AI, mining=before, idle=(start, end), **converts))
            if sellable:
                options.append(Lifecycle(f"ai@{k}:sell", Mode.AI, mining=before, sold_at=start, kept=False, **converts))
            for target, first in _move_targets(fleet, grid, g, start):
                mining = before + _mining(grid, g, target, first)
                options.append(Lifecycle(f"ai@{k}:move:{target}", Mode.AI, mining=mining, moved_at=start, **converts))
    options += _recourse_lifecycles(fleet, grid, g, sellable)
    return tuple(options)


NOW = ((0, MINE_KEY),)  # departs from mining at the plan's start


def _recourse_lifecycles(fleet: Fleet, grid: PlanGrid, g: int, sellable: bool) -> list[Lifecycle]:
    """The dated recourse options of group g (module docstring): sell, move or idle at a recourse date, and
    restart at a later one after idling from the start or from an earlier recourse date."""
    own, end = grid.group_profile[g], grid.n_periods
    out: list[Lifecycle] = []
    for months, at in grid.recourse:
        label, before, departs = f"m{months:g}", ((own, 0, at),), ((at, MINE_KEY),)
        if sellable:
            out.append(Lifecycle(f"sell@{label}", Mode.SELL, mining=before, sold_at=at, kept=False, departures=departs))
        for target, first in _move_targets(fleet, grid, g, at):
            mining = before + _mining(grid, g, target, first)
            out.append(Lifecycle(f"move@{label}:{target}", Mode.MOVE, mining=mining, moved_at=at, departures=departs))
        out.append(Lifecycle(f"idle@{label}", Mode.IDLE, mining=before, idle=(at, end), departures=departs))
    idle_from = [("idle", 0), *((f"idle@m{m:g}", at) for m, at in grid.recourse)]
    for prefix, first in idle_from:
        for months, restart in grid.recourse:
            if restart <= first:
                continue
            before = ((own, 0, first),) if first > 0 else ()
            departs = ((first, MINE_KEY), (restart, prefix))
            out.append(
                Lifecycle(
                    f"{prefix}:restart@m{months:g}",
                    Mode.MINE,
                    mining=(*before, (own, restart, end)),
                    idle=(first, restart),
                    departures=departs,
                )
            )
    return out


def _move_targets(fleet: Fleet, grid: PlanGrid, g: int, at: int) -> list[tuple[str, int]]:
    """(site id, first mining period) for each site the group's racks may move to at boundary `at`."""
    if fleet.moves is None or at >= grid.n_periods:
        return []
    timeline = grid.timeline
    arrive_step = timeline.step_at_hours(timeline.bounds[at] * timeline.step_hours + fleet.moves.downtime_days * 24)
    first = timeline.period_starting_at(arrive_step)
    return [(s.id, first) for s in fleet.sites if s.id != fleet.rack_groups[g].site]


def _mining(grid: PlanGrid, g: int, target: str, first: int) -> tuple[tuple[int, int, int], ...]:
    group_key = grid.profiles[grid.group_profile[g]].key
    q = grid.profile_index(f"{group_key}@{target}")
    return ((q, first, grid.n_periods),) if first < grid.n_periods else ()


def presence(grid: PlanGrid) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """(profile, period) -> the (group, lifecycle) pairs whose racks mine as that profile in that period."""
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for g, options in enumerate(grid.lifecycles):
        for ell, life in enumerate(options):
            for q, first, stop in life.mining:
                for p in range(first, stop):
                    out.setdefault((q, p), []).append((g, ell))
    return out


def converted_it_mw_per_rack(fleet: Fleet, g: int) -> float:
    return fleet.rack_power_kw(fleet.rack_groups[g]) / KW_PER_MW


def rack_resale_usd(fleet: Fleet, g: int) -> float:
    """Today's resale price of one rack of the group's machines (0 when they cannot be sold)."""
    group = fleet.rack_groups[g]
    price = fleet.machine(group.machine).resale_usd_per_th
    return 0.0 if price is None else price * fleet.rack_hashrate_ths(group)


def lifecycle_values_usd(fleet: Fleet, grid: PlanGrid, economics) -> np.ndarray:
    """[G, L_max, S] present value of one rack of each (group, lifecycle) in each scenario; padding is 0.

    Mining periods earn the profile's mine value (positive margins minus opex); idle periods cost the
    group's idle cost; sales and salvage earn the resale price at that date; moves cost their fee.
    """
    timeline = grid.timeline
    n_scen = economics.n_scenarios
    width = max(len(options) for options in grid.lifecycles)
    out = np.zeros((len(grid.lifecycles), width, n_scen))
    idle_days = timeline.period_discounted_days()
    boundary_discount = timeline.discount_at_hours(timeline.bounds * timeline.step_hours)
    cumulative = np.cumsum(economics.mine_value_usd, axis=1)  # [Q, P, S]
    for g, options in enumerate(grid.lifecycles):
        group = fleet.rack_groups[g]
        resale = rack_resale_usd(fleet, g)
        for ell, life in enumerate(options):
            value = np.zeros(n_scen)
            for q, first, stop in life.mining:
                if stop > first:
                    value += cumulative[q, stop - 1] - (cumulative[q, first - 1] if first > 0 else 0.0)
            if life.idle is not None:
                value -= group.idle_cost_usd_per_rack_day * idle_days[life.idle[0] : life.idle[1]].sum()
            if life.sold_at is not None:
                value += resale * economics.hashprice_ratio[life.sold_at] * boundary_discount[life.sold_at]
            if life.kept:
                value += resale * economics.hashprice_ratio[-1] * boundary_discount[-1]
            if life.moved_at is not None:
                value -= fleet.moves.cost_usd_per_rack * boundary_discount[life.moved_at]
            out[g, ell] = value
    return out


def purchase_values_usd(fleet: Fleet, grid: PlanGrid, economics) -> np.ndarray:
    """[B, S] present value of one rack of each purchase lot: mining from delivery, salvage, minus its price
    (paid on order)."""
    timeline = grid.timeline
    end_discount = timeline.discount_at_hours(timeline.horizon_hours)
    boundary_discount = timeline.discount_at_hours(timeline.bounds * timeline.step_hours)
    cumulative = np.cumsum(economics.mine_value_usd, axis=1)
    out = np.zeros((len(grid.purchase_lots), economics.n_scenarios))
    for i, lot in enumerate(grid.purchase_lots):
        q, first = lot.profile, lot.delivery
        mined = cumulative[q, -1] - (cumulative[q, first - 1] if first > 0 else 0.0) if first < grid.n_periods else 0.0
        salvage = purchase_resale_usd(fleet, grid, lot) * economics.hashprice_ratio[-1] * end_discount
        out[i] = mined + salvage - purchase_price_usd(fleet, lot.option) * boundary_discount[lot.ordered_at]
    return out


def purchase_resale_usd(fleet: Fleet, grid: PlanGrid, lot: PurchaseLot) -> float:
    """Today's resale price of one rack of the lot's machines (0 when they cannot be sold)."""
    resale = fleet.machine(fleet.purchases[lot.option].machine).resale_usd_per_th or 0.0
    return resale * grid.profiles[lot.profile].hashrate_ths


def purchase_price_usd(fleet: Fleet, b: int) -> float:
    option = fleet.purchases[b]
    return option.price_usd_per_th * option.machines_per_rack * fleet.machine(option.machine).hashrate_ths
