"""Market models the Monte Carlo draws from: bitcoin economics, power markets, the horizon.

Defaults are calibrated to early 2026 (../shared/DESIGN.md section 1): BTC ~$67,800,
network hashrate ~900 EH/s, hashprice ~$35/PH/day, ERCOT hub prices mostly
$20-60/MWh with rare spikes to the $5,000/MWh offer cap (ERCOT Nodal Protocols,
system-wide offer cap).
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STEP_HOURS_ALLOWED = (1, 2, 3, 4, 6, 8, 12, 24)  # divisors of a day, so every step sits inside one day
# Sub-hourly steps divide an hour (ERCOT settles real time in 15-minute intervals, fleet managers curtail on
# 5-minute dispatch); longer steps are whole hours dividing a day. Either way every step sits inside one hour
# or one day, so an hour (a day) is a whole number of steps.
STEP_MINUTES_ALLOWED = (5, 10, 15, 20, 30, *(60 * h for h in STEP_HOURS_ALLOWED))
MINUTES_PER_HOUR = 60


# A pinned series: one value per calendar month of the horizon, the last one holding after the list ends;
# a single number in the file is a level (stored as a one-value list, which is also how the proto carries it).
Pinned = list[float]


def _as_pinned(value):
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else value


def _check_pinned(value, low: float, high: float):
    if not value:
        raise ValueError("a per-month path needs at least one value")
    for v in value:
        if not low <= v <= high:
            raise ValueError(f"must lie in [{low:g}, {high:g}], got {v:g}")
    return value


def pinned_by_step(value: Pinned, step_month_index) -> list[float]:
    """The pinned value of each step: the path's value for the step's month of the horizon (0 = the start's)."""
    return [value[min(int(m), len(value) - 1)] for m in step_month_index]


class StrictModel(BaseModel):
    """Base for every input model: unknown fields are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_HORIZON_DAYS = 3_653  # ten years: the longest colocation leases run 10-15 years (DESIGN.md section 7)


class Horizon(StrictModel):
    """The planning horizon: a start date and a length in days, or in `months` or `years` (converted to days).

    The step is `step_minutes` (5, 10, 15, 20, 30, 60, 120, ... 1440); `step_hours` (1, 2, 3, 4, 6, 8, 12, 24)
    is still accepted as before and converted. Give at most one of them (neither: hourly). Everywhere
    downstream the step length is `step_hours`, a float number of hours (0.25 for 15 minutes).
    """

    start: dt.date = Field(dt.date(2026, 12, 1), description="First day of the planning horizon.")
    days: int = Field(91, ge=1, le=MAX_HORIZON_DAYS, description="Length of the horizon; 91 days is one quarter.")
    step_minutes: int = Field(
        60,
        description=f"Time step of the price paths, in minutes: one of {STEP_MINUTES_ALLOWED} (15 = ERCOT's "
        "settlement interval). Give this or step_hours, not both.",
    )
    step_hours: int | float | None = Field(
        None,
        exclude=True,
        description=f"Time step in whole hours, one of {STEP_HOURS_ALLOWED}: the older spelling of step_minutes, "
        "converted to it. Once parsed, the step length in (fractional) hours.",
    )

    @model_validator(mode="before")
    @classmethod
    def _length_in_days(cls, data):
        if not isinstance(data, dict):
            return data
        given = [key for key in ("days", "months", "years") if data.get(key) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of days, months or years, not {' and '.join(given)}")
        if given and given[0] != "days":
            data = dict(data)
            key = given[0]
            value = data.pop(key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{key}: must be a positive number, got {value!r}")
            data["days"] = _calendar_days(data.get("start", dt.date(2026, 12, 1)), value, key)
        return data

    @field_validator("step_hours")
    @classmethod
    def _divides_day(cls, value):
        if value is not None and value not in STEP_HOURS_ALLOWED:
            raise ValueError(f"must be one of {STEP_HOURS_ALLOWED}, got {value:g}")
        return value

    @field_validator("step_minutes")
    @classmethod
    def _divides_hour_or_day(cls, value: int) -> int:
        if value not in STEP_MINUTES_ALLOWED:
            raise ValueError(f"must be one of {STEP_MINUTES_ALLOWED}, got {value}")
        return value

    @model_validator(mode="after")
    def _one_step(self) -> Horizon:
        given = self.model_fields_set & {"step_minutes", "step_hours"}
        if given == {"step_minutes", "step_hours"} and self.step_hours is not None:
            raise ValueError("give one of step_minutes or step_hours, not both")
        if "step_hours" in given and self.step_hours is not None:
            object.__setattr__(self, "step_minutes", int(round(self.step_hours * MINUTES_PER_HOUR)))
        object.__setattr__(self, "step_hours", self.step_minutes / MINUTES_PER_HOUR)
        return self

    @property
    def steps_per_day(self) -> int:
        return 24 * MINUTES_PER_HOUR // self.step_minutes

    @property
    def n_steps(self) -> int:
        return self.days * self.steps_per_day


def _calendar_days(start, value: float, unit: str) -> int:
    """Days from `start` to the same day `value` months or years later (whole units), else the mean length."""
    start = dt.date.fromisoformat(start) if isinstance(start, str) else start
    months = value * 12 if unit == "years" else value
    if float(months).is_integer() and isinstance(start, dt.date):
        total = start.month - 1 + int(months)
        year, month = start.year + total // 12, total % 12 + 1
        if year > 9999:
            raise ValueError(f"{unit}: {value} runs past the calendar")
        end = dt.date(year, month, min(start.day, 28))
        return (end - start).days
    return round(months * 365.25 / 12)


class BitcoinMarket(StrictModel):
    """BTC price (jump diffusion), network hashrate (responds to margins) and fees."""

    btc_price_usd: float = Field(67_800.0, gt=0)
    price_drift_per_year: float = Field(0.0, ge=-2, le=2)
    price_vol_per_year: float = Field(0.55, ge=0, le=5)
    jump_intensity_per_year: float = Field(6.0, ge=0, le=365)
    jump_mean_log: float = Field(-0.03, ge=-1, le=1)
    jump_std_log: float = Field(0.08, ge=0, le=2)
    network_hashrate_ehs: float = Field(900.0, gt=0)
    start_block_height: int = Field(975_000, ge=0, description="Chain height at horizon start.")
    hashrate_growth_per_year: float = Field(0.15, ge=-2, le=5)
    hashrate_vol_per_year: float = Field(0.15, ge=0, le=5)
    hashrate_margin_response_per_year: float = Field(
        1.0, ge=0, le=20, description="How fast miners plug in/unplug as hashprice moves off breakeven."
    )
    network_breakeven_hashprice_usd_per_ph_day: float = Field(40.0, gt=0)
    fees_btc_per_block: float = Field(0.025, ge=0, le=10)
    fees_vol: float = Field(0.3, ge=0, le=5, description="Std of log fees (stationary).")
    hashprice_usd_per_ph_day: Pinned | None = Field(
        None,
        description="Pin the hashprice instead of deriving it from BTC price, hashrate and difficulty: a level, "
        "or one value per calendar month of the horizon (the first is the start's month; the last holds after). "
        "Every scenario then has this hashprice; BTC, hashrate and fees are still drawn but no longer matter "
        "(docs/scenarios.md).",
    )

    @field_validator("hashprice_usd_per_ph_day", mode="before")
    @classmethod
    def _hashprice_level(cls, value):
        return _as_pinned(value)

    @field_validator("hashprice_usd_per_ph_day")
    @classmethod
    def _hashprice_range(cls, value):
        return None if value is None else _check_pinned(value, 0.0, 10_000.0)


ALL_MONTHS = list(range(1, 13))


def _check_months(months: list[int]) -> list[int]:
    if not months or any(not 1 <= m <= 12 for m in months) or len(set(months)) != len(months):
        raise ValueError(f"must be distinct calendar months 1-12, got {months}")
    return sorted(months)


class CurtailmentEvents(StrictModel):
    """One kind of grid event in which sites of the market can draw only part of their capacity.

    Events arrive as a Poisson process at `events_per_year`, spread evenly over `months`, last an
    exponential time with mean `mean_duration_hours` (at least one step), and cap every site of the
    market at `available_fraction` of its capacity_mw; overlapping events take the lowest fraction.
    """

    name: str = Field(min_length=1, max_length=64, description="E.g. winter_storm; for people, not the model.")
    events_per_year: float = Field(ge=0, le=365, description="Mean number of events a year, all in `months`.")
    months: list[int] = Field(default_factory=lambda: list(ALL_MONTHS), description="Months events start in.")
    mean_duration_hours: float = Field(gt=0, le=24 * 30, description="Mean of the exponential event length.")
    available_fraction: float = Field(ge=0, lt=1, description="Share of capacity_mw a site may draw in the event.")
    price_floor_usd_per_mwh: float | None = Field(
        None, ge=0, description="Spot price during the event is at least this (grid emergencies clear near the cap)."
    )

    @field_validator("months")
    @classmethod
    def _months_valid(cls, months: list[int]) -> list[int]:
        return _check_months(months)


class DemandResponseCalls(StrictModel):
    """When the grid operator calls demand response in this market (system-wide, every enrolled site at once).

    Calls arrive as a Poisson process at `calls_per_year`, spread evenly over `months`; a call starts at
    the step with the day's highest spot price (the grid is tightest at the net-load peak) and lasts
    `call_hours`.
    """

    calls_per_year: float = Field(ge=0, le=365, description="Mean number of calls a year, all in `months`.")
    months: list[int] = Field(default_factory=lambda: list(ALL_MONTHS), description="Months calls come in.")
    call_hours: float = Field(gt=0, le=24, description="Length of one call.")

    @field_validator("months")
    @classmethod
    def _months_valid(cls, months: list[int]) -> list[int]:
        return _check_months(months)


class PowerMarket(StrictModel):
    """A wholesale power market: shaped, mean-reverting log price with spikes up to a cap."""

    id: str = Field(min_length=1)
    mean_price_usd_per_mwh: float = Field(gt=0, le=5_000)
    daily_shape_amplitude: float = Field(0.3, ge=0, le=1)
    peak_hour: int = Field(17, ge=0, le=23)
    seasonal_amplitude: float = Field(0.1, ge=0, le=1)
    peak_month: int = Field(8, ge=1, le=12)
    reversion_per_day: float = Field(1.5, gt=0, le=100)
    vol_per_sqrt_day: float = Field(0.3, ge=0, le=5)
    intra_hour_vol: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Std of the relative price deviation of a sub-hourly step from its hour's level; the "
        "deviations average to zero over each hour, so hourly and longer steps never see them.",
    )
    spike_prob_per_hour: float = Field(0.002, ge=0, le=1)
    spike_mean_usd_per_mwh: float = Field(600.0, ge=0)
    spike_decay_hours: float = Field(3.0, gt=0)
    floor_usd_per_mwh: float = Field(-50.0, le=0)
    cap_usd_per_mwh: float = Field(5_000.0, gt=0, description="Offer cap, e.g. ERCOT's $5,000/MWh.")
    curtailment_events: list[CurtailmentEvents] = Field(
        default_factory=list,
        description="Kinds of grid event (storms, emergencies) that cut the power sites in this market can draw.",
    )
    demand_response_calls: DemandResponseCalls | None = Field(
        None, description="How often the grid operator calls demand response; needed by sites with a programme."
    )
    pinned_price_usd_per_mwh: Pinned | None = Field(
        None,
        description="Pin the spot price instead of the generative model: a level, or one value per calendar month of "
        "the horizon (the last holds after). Flat within the month (no daily shape, no spikes); curtailment-event "
        "price floors still apply on top (docs/scenarios.md).",
    )

    @field_validator("pinned_price_usd_per_mwh", mode="before")
    @classmethod
    def _pinned_level(cls, value):
        return _as_pinned(value)

    @field_validator("pinned_price_usd_per_mwh")
    @classmethod
    def _pinned_range(cls, value):
        return None if value is None else _check_pinned(value, -1_000.0, 20_000.0)

    @model_validator(mode="after")
    def _event_floors_below_cap(self) -> PowerMarket:
        for i, kind in enumerate(self.curtailment_events):
            floor = kind.price_floor_usd_per_mwh
            if floor is not None and floor > self.cap_usd_per_mwh:
                raise ValueError(
                    f"curtailment_events.{i}.price_floor_usd_per_mwh {floor} exceeds cap_usd_per_mwh "
                    f"{self.cap_usd_per_mwh}"
                )
        return self
