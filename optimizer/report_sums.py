"""What a plan's report needs of its scenarios, as sums over them, so that batches of scenarios add up.

The report (solvers.planner.assemble_plan: optimizer.plan_result, optimizer.deal_report) shows
expected values - means over the scenarios of per-scenario figures - and the distribution of the
scenario profits. A mean is a sum over scenarios divided by their count, and sums over batches add,
so each batch's sums can be taken where its economics live and only the sums travel: the
decomposition (solvers/decomposition.py, issue 10) computes one `ScenarioSums` per batch in a Ray
task and adds them in the driver, which never holds every scenario. The per-scenario profits (one
float each) and halving steps stay whole: the risk figures and the halving's median need the
distribution. `means()` turns the sums into the figures the report prints; the report's functions
read the same `ScenarioSums` whether it came from one batch or many.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from optimizer.allocation import Allocation, SiteProfits, site_profits
from optimizer.economics import NO_SITE, GroupEconomics, economics_grid, nominal_view
from optimizer.fleet import Fleet
from optimizer.lifecycles import PlanGrid, lifecycle_values_usd


@dataclass(frozen=True)
class ScenarioSums:
    """Sums over a set of scenarios (or, after `means()`, means) of what the report averages."""

    n_scenarios: int
    profit_usd: np.ndarray  # [S] NPV per scenario, in scenario order (never summed)
    halving_step: np.ndarray  # [S] (never summed)
    pv: SiteProfits  # present values: each site component [N, 1], group_mine_value_usd [G, 1], no by_period
    nominal: SiteProfits  # nominal amounts per period (per-year figures): by_period [N, P, 1]
    hashprice_usd_per_ph_day: float  # of each scenario's mean daily hashprice
    end_hashprice_ratio: float  # hashprice at the horizon's end over the first day's
    price_rule_value_usd: np.ndarray  # [Q] one rack mining all horizon by the price rule alone
    option_values_usd: np.ndarray  # [G, L_max] one rack of each lifecycle
    run_fraction: np.ndarray  # [Q]
    mine_value_usd: np.ndarray  # [Q, P] one rack mining each period
    averaged: bool = False  # True once `means()` divided the sums by the count

    def __add__(self, other: ScenarioSums) -> ScenarioSums:
        """The sums over both sets of scenarios; the per-scenario arrays in the order self, other."""
        if self.averaged or other.averaged:
            raise ValueError("means do not add: add the sums, then take means()")
        return self._combine(other, lambda a, b: a + b, np.concatenate)

    def means(self) -> ScenarioSums:
        """Every sum divided by the scenario count: the expected figures (means stay as they are)."""
        if self.averaged:
            return self
        n = self.n_scenarios
        return dataclasses.replace(self._combine(None, lambda a, _: a / n, lambda pair: pair[0]), averaged=True)

    def _combine(self, other: ScenarioSums | None, op, whole) -> ScenarioSums:
        """`op(self.x, other.x)` for every sum, `whole((self.x, other.x))` for the per-scenario arrays."""
        values = {}
        for name in (f.name for f in dataclasses.fields(self)):
            mine, theirs = getattr(self, name), None if other is None else getattr(other, name)
            if name == "averaged":
                values[name] = mine
            elif name == "n_scenarios":
                values[name] = mine if other is None else mine + theirs
            elif name in ("profit_usd", "halving_step"):
                values[name] = whole((mine, theirs))
            elif isinstance(mine, SiteProfits):
                values[name] = _map_profits(mine, theirs, op)
            else:
                values[name] = op(mine, theirs)
        return ScenarioSums(**values)


def _map_profits(a: SiteProfits, b: SiteProfits | None, op) -> SiteProfits:
    """op on every component of a (and b), by_period included; `resells` is a flag, kept."""
    values = {}
    for name in (f.name for f in dataclasses.fields(a)):
        mine = getattr(a, name)
        if name == "resells":
            values[name] = mine
        elif name == "by_period":
            values[name] = {k: op(v, None if b is None else b.by_period[k]) for k, v in mine.items()}
        else:
            values[name] = op(mine, None if b is None else getattr(b, name))
    return SiteProfits(**values)


def _summed(profits: SiteProfits, by_period: bool) -> SiteProfits:
    """Every component summed over the scenario axis (kept, of length 1); by_period only if asked."""
    summed = _map_profits(profits, None, lambda value, _: value.sum(axis=-1, keepdims=True))
    return summed if by_period else dataclasses.replace(summed, by_period={})


def price_rule_value_usd(economics: GroupEconomics) -> np.ndarray:
    """[Q, S] PV of one rack of each profile mining all horizon by the price rule alone (no cap or call)."""
    value = economics.mine_value_usd.sum(axis=1)
    item_p, item_s = np.nonzero(economics.item_slot != NO_SITE)
    margin = economics.item_hash_revenue_usd[item_p, item_s] - economics.item_power_cost_usd[item_p, item_s]
    discount = economics.coupled_discount[economics.item_slot[item_p, item_s], item_s]
    np.add.at(value, (economics.item_group[item_p, item_s], item_s), margin * discount)
    return value


def scenario_sums(
    fleet: Fleet, economics: GroupEconomics, allocation: Allocation, grid: PlanGrid | None = None
) -> ScenarioSums:
    """The report's sums over these scenarios for this allocation (coupled steps dispatched exactly)."""
    grid = grid or economics_grid(fleet, economics)
    pv = site_profits(fleet, economics, allocation, grid)
    view, nominal_grid = nominal_view(economics, grid)
    nominal = site_profits(fleet, view, allocation, nominal_grid)
    return ScenarioSums(
        n_scenarios=economics.n_scenarios,
        profit_usd=pv.profit_usd.sum(axis=0),
        halving_step=np.asarray(economics.halving_step).copy(),
        pv=_summed(pv, by_period=False),
        nominal=_summed(nominal, by_period=True),
        hashprice_usd_per_ph_day=float(economics.mean_hashprice_usd_per_ph_day.sum()),
        end_hashprice_ratio=float(economics.hashprice_ratio[-1].sum()),
        price_rule_value_usd=price_rule_value_usd(economics).sum(axis=1),
        option_values_usd=lifecycle_values_usd(fleet, grid, economics).sum(axis=2),
        run_fraction=economics.run_fraction.sum(axis=1),
        mine_value_usd=economics.mine_value_usd.sum(axis=2),
    )


def report_means(
    fleet: Fleet, economics: GroupEconomics | ScenarioSums, allocation: Allocation, grid: PlanGrid | None = None
) -> ScenarioSums:
    """The expected figures: `economics` summed here (`scenario_sums`), or sums (or means) taken already."""
    sums = economics if isinstance(economics, ScenarioSums) else scenario_sums(fleet, economics, allocation, grid)
    return sums.means()


def sum_batches(parts: list[ScenarioSums]) -> ScenarioSums:
    """Per-batch sums added in batch order (the same figures for any number of workers)."""
    if not parts:
        raise ValueError("no scenario batches to sum")
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
