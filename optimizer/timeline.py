"""The plan's time grid: steps, the periods the MIP sees, and discounting to the plan's start.

The hourly (or coarser) steps of the price paths are grouped into *periods*: the runs of steps
between consecutive dates at which some decision can change what a rack does (a conversion starts,
a hall is ready, a move or a delivery completes) or at which the plan reports (each anniversary of
the start). Within a period every decision is constant, so the per-rack mining value of a period is
a plain sum over its steps and the MIP needs one coefficient per (rack profile, period, scenario).

Discounting: a cash flow at `h` hours after the start is worth (1 + r)^(-h / 8,766) today, with r
the annual rate (`finance.discount_rate_per_year`, a WACC) and 8,766 hours the Julian year. Mining
cash of a step counts at the step's start; rent and capex at the start of their month.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from optimizer.constants import DAYS_PER_MONTH, HOURS_PER_DAY, HOURS_PER_YEAR, MONTHS_PER_YEAR


@dataclass(frozen=True)
class Timeline:
    step_hours: int
    n_steps: int
    discount_rate_per_year: float
    bounds: np.ndarray  # [P + 1] step indices: 0 = b_0 < b_1 < ... < b_P = n_steps
    year_starts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))  # step of each anniversary

    @property
    def n_periods(self) -> int:
        return len(self.bounds) - 1

    @property
    def horizon_hours(self) -> float:
        return self.n_steps * self.step_hours

    def step_at_hours(self, hours: float) -> int:
        """The first step starting at or after `hours`, at most n_steps (the horizon's end)."""
        return int(min(self.n_steps, max(0, math.ceil(hours / self.step_hours - 1e-9))))

    def step_at_days(self, days: float) -> int:
        return self.step_at_hours(days * HOURS_PER_DAY)

    def step_at_months(self, months: float) -> int:
        return self.step_at_days(months * DAYS_PER_MONTH)

    def period_starting_at(self, step: int) -> int:
        """Index of the period that starts at `step` (a boundary); P for the horizon's end."""
        position = int(np.searchsorted(self.bounds, step))
        if position > self.n_periods or self.bounds[position] != step:
            raise ValueError(f"step {step} is not a period boundary of {self.bounds.tolist()}")
        return position

    def period_of_step(self, steps) -> np.ndarray:
        return np.searchsorted(self.bounds, steps, side="right") - 1

    def discount_at_hours(self, hours) -> np.ndarray:
        return np.power(1.0 + self.discount_rate_per_year, -np.asarray(hours, dtype=float) / HOURS_PER_YEAR)

    def step_discount(self, first: int = 0, stop: int | None = None) -> np.ndarray:
        """[stop - first] discount factor of each step, at its start."""
        stop = self.n_steps if stop is None else stop
        return self.discount_at_hours(np.arange(first, stop) * self.step_hours)

    def period_discounted_days(self) -> np.ndarray:
        """[P] sum over each period's steps of (discount x step length in days): prices a daily cost."""
        days = self.step_discount() * self.step_hours / HOURS_PER_DAY
        return np.add.reduceat(days, self.bounds[:-1]) if self.n_steps else np.zeros(0)

    def period_days(self) -> np.ndarray:
        return np.diff(self.bounds) * self.step_hours / HOURS_PER_DAY

    def period_year(self) -> np.ndarray:
        """[P] plan year (0 = the first twelve months) each period lies in; anniversaries are boundaries."""
        return np.searchsorted(self.year_starts, self.bounds[:-1], side="right") - 1

    def monthly_discount(self, first_month: float, months: int) -> np.ndarray:
        """[months] discount factors at the start of `months` consecutive months from `first_month`."""
        starts = (first_month + np.arange(months)) * DAYS_PER_MONTH * HOURS_PER_DAY
        return self.discount_at_hours(starts)


def build_timeline(
    step_hours: int, n_steps: int, discount_rate: float, dates_days: Iterable[float], start: dt.date | None = None
) -> Timeline:
    """A timeline whose periods break at every anniversary of `start` (calendar years; Julian years without a
    start) and at each of `dates_days` inside the horizon."""
    grid = Timeline(step_hours, n_steps, discount_rate, np.array([0, n_steps]))
    horizon_days = n_steps * step_hours / HOURS_PER_DAY
    anniversaries = [d for d in _anniversary_days(start, horizon_days) if d < horizon_days]
    year_starts = np.array([0, *(grid.step_at_days(d) for d in anniversaries)], dtype=np.int64)
    steps = {grid.step_at_days(d) for d in [*anniversaries, *dates_days]}
    bounds = np.array(sorted(steps | {0, n_steps}), dtype=np.int64)
    return Timeline(step_hours, n_steps, discount_rate, bounds, year_starts)


def _anniversary_days(start: dt.date | None, horizon_days: float) -> list[float]:
    years = range(1, int(horizon_days // 365) + 2)
    if start is None:
        return [year * DAYS_PER_MONTH * MONTHS_PER_YEAR for year in years]
    return [(dt.date(start.year + year, start.month, min(start.day, 28)) - start).days for year in years]
