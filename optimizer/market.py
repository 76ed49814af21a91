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


class StrictModel(BaseModel):
    """Base for every input model: unknown fields are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_HORIZON_DAYS = 3_653  # ten years: the longest colocation leases run 10-15 years (DESIGN.md section 7)


class Horizon(StrictModel):
    """The planning horizon: a start date and a length in days, or in `months` or `years` (converted to days)."""

    start: dt.date = Field(dt.date(2026, 12, 1), description="First day of the planning horizon.")
    days: int = Field(91, ge=1, le=MAX_HORIZON_DAYS, description="Length of the horizon; 91 days is one quarter.")
    step_hours: int = Field(1, description="Time step of the price paths, in hours; must divide 24.")

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
    def _divides_day(cls, value: int) -> int:
        if value not in STEP_HOURS_ALLOWED:
            raise ValueError(f"must be one of {STEP_HOURS_ALLOWED}, got {value}")
        return value

    @property
    def n_steps(self) -> int:
        return self.days * 24 // self.step_hours


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
