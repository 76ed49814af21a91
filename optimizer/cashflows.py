"""Deterministic cash flows of a conversion project and a lease, and the finance that values them.

Dates are in months after the plan's start (a month = 365.25 / 12 days, as colocation rent is
quoted per calendar month). Rent of one leased MW of critical IT load in lease month m (m = 0 at
the ready date) is

    rate_usd_per_kw_month x 1,000 x (1 + escalator)^floor(m / 12),

paid at the start of the month for `term_months` months; capex is paid along the conversion's
schedule from the start of construction. Present values discount each payment at the start of
its month (optimizer.timeline). The part of a lease past the horizon's end is its *terminal
value*: the same payments, discounted the same way, reported apart so a planner sees how much of
a deal's value lies beyond the years simulated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from optimizer.constants import DAYS_PER_MONTH, HOURS_PER_DAY, KW_PER_MW, MONTHS_PER_YEAR
from optimizer.fleet import AiConversion, LeaseOffer
from optimizer.timeline import Timeline

HOURS_PER_MONTH = DAYS_PER_MONTH * HOURS_PER_DAY


@dataclass(frozen=True)
class RentValue:
    """Rent of one leased MW: present value inside the horizon, past it (terminal), and its nominal total."""

    in_horizon_pv_usd: float
    terminal_pv_usd: float
    nominal_usd: float
    months_in_horizon: float

    @property
    def pv_usd(self) -> float:
        return self.in_horizon_pv_usd + self.terminal_pv_usd


def rent_per_mw_month_usd(offer: LeaseOffer, months: int) -> np.ndarray:
    """[months] rent one MW pays in each lease month, escalated once a lease year."""
    years = np.arange(months) // MONTHS_PER_YEAR
    return offer.rate_usd_per_kw_month * KW_PER_MW * np.power(1.0 + offer.escalator_per_year, years)


def rent_value(offer: LeaseOffer, ready_months: float, timeline: Timeline) -> RentValue:
    """Value of one MW leased from `ready_months` for the offer's term."""
    rent = rent_per_mw_month_usd(offer, offer.term_months)
    starts = ready_months + np.arange(offer.term_months)
    discount = timeline.monthly_discount(ready_months, offer.term_months)
    inside = starts * HOURS_PER_MONTH < timeline.horizon_hours - 1e-6
    return RentValue(
        in_horizon_pv_usd=float((rent * discount)[inside].sum()),
        terminal_pv_usd=float((rent * discount)[~inside].sum()),
        nominal_usd=float(rent.sum()),
        months_in_horizon=float(inside.sum()),
    )


def tail_hours_pv(offer: LeaseOffer, ready_months: float, timeline: Timeline) -> float:
    """Discounted hours of the lease past the horizon's end (prices the tenant's power there)."""
    starts = ready_months + np.arange(offer.term_months)
    discount = timeline.monthly_discount(ready_months, offer.term_months)
    past = starts * HOURS_PER_MONTH >= timeline.horizon_hours - 1e-6
    return float(discount[past].sum() * HOURS_PER_MONTH)


def capex_discount_factor(conversion: AiConversion, start_months: float, timeline: Timeline) -> float:
    """Present value of one dollar of capex spent along the conversion's schedule from `start_months`."""
    shares = np.asarray(conversion.capex_shares())
    return float((shares * timeline.monthly_discount(start_months, len(shares))).sum())


def monthly_credit_pv(credit_usd_per_month: float, timeline: Timeline) -> float:
    """A payment every month of the horizon (the last one pro rata), discounted."""
    months = timeline.horizon_hours / HOURS_PER_MONTH
    whole = int(math.floor(months + 1e-9))
    factors = timeline.monthly_discount(0.0, whole + 1)
    weights = np.ones(whole + 1)
    weights[-1] = months - whole
    return float(credit_usd_per_month * (factors * weights).sum())


def _by_period(amounts: np.ndarray, first_month: float, timeline: Timeline) -> np.ndarray:
    """[P] monthly amounts paid from `first_month`, discounted, summed into the period each is paid in."""
    months = len(amounts)
    starts_hours = (first_month + np.arange(months)) * HOURS_PER_MONTH
    inside = starts_hours < timeline.horizon_hours - 1e-6
    steps = np.floor(starts_hours[inside] / timeline.step_hours + 1e-9).astype(np.int64)  # the step it falls in
    out = np.zeros(timeline.n_periods)
    values = amounts * timeline.monthly_discount(first_month, months)
    np.add.at(out, timeline.period_of_step(steps), values[inside])
    return out


def rent_by_period(offer: LeaseOffer, ready_months: float, timeline: Timeline) -> np.ndarray:
    """[P] discounted rent of one MW paid in each period (the part past the horizon is the terminal value)."""
    return _by_period(rent_per_mw_month_usd(offer, offer.term_months), ready_months, timeline)


def capex_by_period(conversion: AiConversion, start_months: float, timeline: Timeline) -> np.ndarray:
    """[P] discounted share of one dollar of capex paid in each period; payments past the horizon count last."""
    shares = np.asarray(conversion.capex_shares())
    inside = _by_period(shares, start_months, timeline)
    beyond = capex_discount_factor(conversion, start_months, timeline) - inside.sum()
    inside[-1] += beyond
    return inside


def credit_by_period(credit_usd_per_month: float, timeline: Timeline) -> np.ndarray:
    """[P] a monthly credit over the horizon (the last month pro rata), discounted, per period."""
    months = timeline.horizon_hours / HOURS_PER_MONTH
    whole = int(math.floor(months + 1e-9))
    weights = np.ones(whole + 1) * credit_usd_per_month
    weights[-1] *= months - whole
    return _by_period(weights, 0.0, timeline)


def npv(cash_usd: np.ndarray, rate_per_year: float) -> float:
    """Net present value of monthly cash flows (index 0 = now) at an annual rate."""
    months = np.arange(len(cash_usd))
    return float((np.asarray(cash_usd) * np.power(1.0 + rate_per_year, -months / MONTHS_PER_YEAR)).sum())


def irr(cash_usd: np.ndarray) -> float | None:
    """Annual internal rate of return of monthly cash flows; None when no sign change gives one."""
    cash = np.asarray(cash_usd, dtype=float)
    if not (cash < 0).any() or not (cash > 0).any():
        return None
    low, high = -0.99, 10.0
    f_low, f_high = npv(cash, low), npv(cash, high)
    if f_low * f_high > 0:
        return None
    # bisection on the bracket: scipy's root finders would cost every CLI start its import (scipy.stats)
    for _ in range(200):
        middle = (low + high) / 2
        if npv(cash, middle) * f_low > 0:
            low, f_low = middle, npv(cash, middle)
        else:
            high = middle
        if high - low < 1e-12:
            break
    return float((low + high) / 2)


def payback_months(cash_usd: np.ndarray) -> float | None:
    """Months until the undiscounted cumulative cash turns non-negative for good; None if it never does."""
    cumulative = np.cumsum(cash_usd)
    negative = np.flatnonzero(cumulative < 0)
    if len(negative) == 0:
        return 0.0
    last = int(negative[-1])
    return None if last == len(cumulative) - 1 else float(last + 1)


def conversion_cash_usd(
    conversion: AiConversion,
    start_months: float,
    it_mw: float,
    leases: list[tuple[LeaseOffer, float]],
) -> np.ndarray:
    """Monthly nominal cash of a conversion project (index 0 = the plan's start): capex out, rent in.

    `leases` are (offer, MW) pairs; each offer's tenant funds its share of the per-MW capex of its MW.
    Rent starts at the ready date, `lead_time_days` after the start of construction.
    """
    build_months = conversion.build_days / DAYS_PER_MONTH
    ready = start_months + build_months
    horizon = int(math.ceil(ready + max((o.term_months for o, _ in leases), default=0))) + 1
    cash = np.zeros(horizon + len(conversion.capex_shares()) + 1)
    tenant_mw = sum(o.tenant_capex_share * mw for o, mw in leases)
    capex = conversion.fixed_capex_usd + conversion.capex_usd_per_mw * (it_mw - tenant_mw)
    first = int(round(start_months))
    for j, share in enumerate(conversion.capex_shares()):
        cash[first + j] -= capex * share
    ready_month = int(round(ready))
    for offer, mw in leases:
        rent = rent_per_mw_month_usd(offer, offer.term_months) * mw
        cash[ready_month : ready_month + offer.term_months] += rent
    return np.trim_zeros(cash, "b")
