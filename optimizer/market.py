"""Market models the Monte Carlo draws from: bitcoin economics, power markets, the horizon.

Defaults are calibrated to early 2026 (../shared/DESIGN.md section 1): BTC ~$67,800,
network hashrate ~900 EH/s, hashprice ~$35/PH/day, ERCOT hub prices mostly
$20-60/MWh with rare spikes to the $5,000/MWh offer cap (ERCOT Nodal Protocols,
system-wide offer cap).
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, field_validator

STEP_HOURS_ALLOWED = (1, 2, 3, 4, 6, 8, 12, 24)  # divisors of a day, so every step sits inside one day


class StrictModel(BaseModel):
    """Base for every input model: unknown fields are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Horizon(StrictModel):
    start: dt.date = Field(dt.date(2026, 12, 1), description="First day of the planning horizon.")
    days: int = Field(91, ge=1, le=1096, description="Length of the horizon; 91 days is one quarter.")
    step_hours: int = Field(1, description="Time step of the price paths, in hours; must divide 24.")

    @field_validator("step_hours")
    @classmethod
    def _divides_day(cls, value: int) -> int:
        if value not in STEP_HOURS_ALLOWED:
            raise ValueError(f"must be one of {STEP_HOURS_ALLOWED}, got {value}")
        return value

    @property
    def n_steps(self) -> int:
        return self.days * 24 // self.step_hours


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
