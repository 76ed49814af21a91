"""Sensitivity of a plan: what one more MW is worth at each site, and at what hashprice each group flips.

Value of capacity: the first stage is a MIP, so an LP dual would price a relaxation the plan does not
face. We re-solve the plan with the site's grid capacity raised by `extra_mw` (1 MW) and report the
change of the optimal risk objective: an honest finite difference for an integer program.

Hashprice flips: scaling every scenario's hashprice by a factor f scales each hour's hash revenue r_t
by f while the power cost c_t stays, so a mining rack's value in a scenario becomes
    V(f) = sum_t max(f r_t - c_t, 0) - opex,
convex and piecewise linear in f with a kink at each hour's breakeven factor c_t / r_t (the hour runs
exactly when f exceeds it). `hashprice_profile_usd` evaluates the sum exactly on a fine logarithmic
grid of factors in one pass over the hourly margins, so every re-solve at another factor reuses it
instead of regenerating scenarios. The whole plan is re-solved at each factor (hashprice is one
market-wide number, so every group sees the same factor), and for each group a bisection on f finds
where its mining rack count first changes below and above today's hashprice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from optimizer.economics import GroupEconomics
from optimizer.fleet import Fleet

EXTRA_MW = 1.0
FACTOR_MIN, FACTOR_MAX = 0.25, 4.0  # a quarter to four times today's hashprice: beyond, the plan is a different world
PROFILE_POINTS = 481  # odd and symmetric in log f, so f = 1 is a grid point; ~0.58% between points
DOWN_GRID = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, FACTOR_MIN)  # scanned outward from f = 1
UP_GRID = (1.05, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5, 3.0, FACTOR_MAX)
FLIP_TOLERANCE = 0.03  # stop bisecting when the bracket's upper end is within 3% of its lower end


class CapacityValue(BaseModel):
    site: str
    capacity_mw: float
    extra_mw: float
    objective_gain_usd: float  # change of the optimal risk objective over the horizon
    value_usd_per_mw_day: float


class HashpriceFlip(BaseModel):
    """Where a group's mining rack count changes as the hashprice moves (None: not within the factor range)."""

    group: str
    site: str
    machine: str
    racks_mine: int  # at today's expected hashprice
    lower_factor: float | None  # below this multiple of today's hashprice the group mines fewer racks
    lower_hashprice_usd_per_ph_day: float | None
    racks_mine_below: int | None
    upper_factor: float | None  # above this multiple it mines more racks
    upper_hashprice_usd_per_ph_day: float | None
    racks_mine_above: int | None


class SensitivityReport(BaseModel):
    expected_hashprice_usd_per_ph_day: float
    scenarios: int
    capacity_method: str
    capacity: list[CapacityValue]
    flip_method: str
    factor_min: float
    factor_max: float
    flip_tolerance: float
    hashprice_flips: list[HashpriceFlip]
    solves: int


# ---------------------------------------------------------------------------------------------
# Capacity


def with_site_capacity(fleet: Fleet, site_id: str, extra_mw: float) -> Fleet:
    """A copy of the fleet with one site's grid capacity raised (validated like the file)."""
    sites = [
        s.model_copy(update={"capacity_mw": s.capacity_mw + extra_mw}) if s.id == site_id else s for s in fleet.sites
    ]
    return Fleet.model_validate({**fleet.model_dump(), "sites": [s.model_dump() for s in sites]})


def capacity_value(fleet: Fleet, site_id: str, extra_mw: float, base_objective_usd: float, objective_usd: float):
    gain = objective_usd - base_objective_usd
    return CapacityValue(
        site=site_id,
        capacity_mw=fleet.site(site_id).capacity_mw,
        extra_mw=extra_mw,
        objective_gain_usd=gain,
        value_usd_per_mw_day=gain / extra_mw / fleet.horizon.days,
    )


# ---------------------------------------------------------------------------------------------
# Hashprice profile


def profile_factors() -> np.ndarray:
    return np.exp(np.linspace(np.log(FACTOR_MIN), np.log(FACTOR_MAX), PROFILE_POINTS))


def hashprice_profile_usd(revenue_usd: np.ndarray, cost_usd: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """[S, F] sum over steps of max(f * revenue - cost, 0) for each factor f, exactly.

    Step t runs at f iff f * r_t > c_t, i.e. f > k_t = c_t / r_t (r_t > 0: hashprice is positive).
    Bin each step by how many grid factors are <= k_t; step t then runs at grid factor j iff j >= its bin,
    so cumulative sums of r and c over bins give the running totals at every factor in O(S T + S F).
    """
    revenue_usd, cost_usd = np.atleast_2d(revenue_usd), np.atleast_2d(cost_usd)
    n_scen, n_factors = revenue_usd.shape[0], len(factors)
    with np.errstate(divide="ignore", invalid="ignore"):
        breakeven_factor = np.where(revenue_usd > 0, cost_usd / revenue_usd, np.where(cost_usd > 0, np.inf, -np.inf))
    first_running = np.searchsorted(factors, breakeven_factor, side="right")  # in 0..F
    flat = (np.arange(n_scen)[:, None] * (n_factors + 1) + first_running).ravel()
    size = n_scen * (n_factors + 1)

    def running_total(values: np.ndarray) -> np.ndarray:
        per_bin = np.bincount(flat, weights=values.ravel(), minlength=size).reshape(n_scen, n_factors + 1)
        return np.cumsum(per_bin, axis=1)[:, :n_factors]

    return factors * running_total(revenue_usd) - running_total(cost_usd)


def interpolate_profile(profile: np.ndarray, factors: np.ndarray, factor: float) -> np.ndarray:
    """[..., F] -> [...] at `factor`, linear in f between grid points (exact at grid points)."""
    if not factors[0] <= factor <= factors[-1]:
        raise ValueError(f"hashprice factor {factor} outside [{factors[0]}, {factors[-1]}]")
    j = int(np.clip(np.searchsorted(factors, factor) - 1, 0, len(factors) - 2))
    w = (factor - factors[j]) / (factors[j + 1] - factors[j])
    return (1 - w) * profile[..., j] + w * profile[..., j + 1]


def separable_steps(economics: GroupEconomics, site_position: int, n_steps: int) -> np.ndarray:
    """[S, T] bool: the steps of a site that are not coupled (not listed explicitly for the MIP)."""
    mask = np.ones((economics.n_scenarios, n_steps), dtype=bool)
    slots, columns = np.nonzero(economics.coupled_site == site_position)
    mask[columns, economics.coupled_step[slots, columns]] = False
    return mask


def group_profile_usd(
    revenue_usd: np.ndarray, cost_usd: np.ndarray, separable: np.ndarray, factors: np.ndarray
) -> np.ndarray:
    """The profile over the separable steps only: coupled steps are priced item by item in the economics."""
    return hashprice_profile_usd(np.where(separable, revenue_usd, 0.0), np.where(separable, cost_usd, 0.0), factors)


def hashprice_profiles_usd(fleet, grid, scenarios, economics: GroupEconomics, factors: np.ndarray) -> np.ndarray:
    """[Q, P, S, F] present value of one rack of each profile mining each period at every hashprice factor.

    Separable steps only, each step's revenue and cost discounted like the economics' mine value.
    """
    from optimizer.economics import profile_margins_usd

    timeline = grid.timeline
    discount = timeline.step_discount()
    bounds = timeline.bounds
    out = np.zeros((len(grid.profiles), timeline.n_periods, scenarios.n_scenarios, len(factors)))
    for q, profile in enumerate(grid.profiles):
        revenue, cost = profile_margins_usd(fleet, profile, scenarios)
        separable = separable_steps(economics, profile.site, scenarios.n_steps)
        for p in range(timeline.n_periods):
            a, b = bounds[p], bounds[p + 1]
            d = discount[a:b]
            out[q, p] = group_profile_usd(revenue[:, a:b] * d, cost[:, a:b] * d, separable[:, a:b], factors)
    return out


def economics_at_factor(economics: GroupEconomics, profile: np.ndarray, factors: np.ndarray, factor: float):
    """The economics with every hashprice scaled by `factor`.

    Separable steps: the mining value moves by profile(f) - profile(1), anchored on the computed economics so
    whatever else they hold (contracts, credits) stays as computed. Coupled steps (curtailment events, demand-
    response calls): each listed rack's hash revenue scales by f; which steps couple stays as at f = 1.
    """
    shift = interpolate_profile(profile, factors, factor) - interpolate_profile(profile, factors, 1.0)
    return dataclasses.replace(
        economics,
        mine_value_usd=economics.mine_value_usd + shift,
        item_hash_revenue_usd=economics.item_hash_revenue_usd * factor,
    )


# ---------------------------------------------------------------------------------------------
# Bisection on the factor, for every group at once


@dataclass(frozen=True)
class Bracket:
    """The group's mining count equals today's at `same` and differs at `changed` (changed_count)."""

    group: int
    direction: str  # "down" | "up"
    same: float
    changed: float
    changed_count: int

    def converged(self, tolerance: float) -> bool:
        return max(self.same, self.changed) / min(self.same, self.changed) <= 1 + tolerance

    @property
    def midpoint(self) -> float:
        return float(np.sqrt(self.same * self.changed))  # geometric: factors are multiplicative


def initial_brackets(base_counts: Sequence[int], counts_at: Mapping[float, Sequence[int]]) -> list[Bracket]:
    """Scan the coarse grids outward from f = 1; the first factor where a group's count changes brackets it."""
    brackets = []
    for g, base in enumerate(base_counts):
        for direction, grid in (("down", DOWN_GRID), ("up", UP_GRID)):
            same = 1.0
            for factor in grid:
                if counts_at[factor][g] != base:
                    brackets.append(Bracket(g, direction, same, factor, int(counts_at[factor][g])))
                    break
                same = factor
    return brackets


def pending_factors(brackets: Sequence[Bracket], tolerance: float) -> list[float]:
    return sorted({b.midpoint for b in brackets if not b.converged(tolerance)})


def refine(
    brackets: Sequence[Bracket], base_counts: Sequence[int], counts_at: Mapping[float, Sequence[int]], tolerance: float
) -> list[Bracket]:
    out = []
    for b in brackets:
        if b.converged(tolerance):
            out.append(b)
            continue
        mid = b.midpoint
        count = int(counts_at[mid][b.group])
        if count == base_counts[b.group]:
            out.append(dataclasses.replace(b, same=mid))
        else:
            out.append(dataclasses.replace(b, changed=mid, changed_count=count))
    return out


def hashprice_flips(
    fleet: Fleet, base_counts: Sequence[int], brackets: Sequence[Bracket], hashprice_usd_per_ph_day: float
) -> list[HashpriceFlip]:
    by_key = {(b.group, b.direction): b for b in brackets}
    out = []
    for g, group in enumerate(fleet.rack_groups):
        fields: dict[str, float | int | None] = {}
        for direction, side, count_name in (("down", "lower", "racks_mine_below"), ("up", "upper", "racks_mine_above")):
            b = by_key.get((g, direction))
            factor = None if b is None else b.midpoint
            fields[f"{side}_factor"] = factor
            fields[f"{side}_hashprice_usd_per_ph_day"] = None if factor is None else factor * hashprice_usd_per_ph_day
            fields[count_name] = None if b is None else b.changed_count
        out.append(
            HashpriceFlip(
                group=group.id, site=group.site, machine=group.machine, racks_mine=int(base_counts[g]), **fields
            )
        )
    return out
