"""Monte Carlo price scenarios: BTC price, network hashrate, difficulty, fees and power prices.

Every value at step t is the value over the step starting t * step_hours after midnight of
`horizon.start` (step_hours a float: 0.25 for `horizon.step_minutes` 15); step 0 starts from the
market's current figures (BTC price, hashrate, fees,
chain height), so the first hashprice is the hand-computed one.

Reproducibility (DESIGN.md section 4): the scenario with global index i is drawn only from
`scenario_rng(seed, stream, i)`, one numpy `SeedSequence` child per scenario. Any split of the
indices into batches, on any number of workers, gives bit-identical rows. Within a scenario
the bitcoin paths are drawn first, then the power markets in the order given.

Models
------
BTC price - Merton (1976) jump diffusion on the log price, per step of dt years:
    d log P = (mu - sigma^2/2 - lambda*k) dt + sigma dW + sum_{N ~ Poisson(lambda dt)} J,
    J ~ Normal(jump_mean_log, jump_std_log^2), k = E[e^J] - 1,
so `price_drift_per_year` is the expected total return and jumps do not bias it.

Network hashrate H - geometric growth plus a margin response (miners plug in above the
network breakeven hashprice and unplug below it):
    d log H = (g - v^2/2) dt + response * log(hashprice / breakeven) dt + v dW.

Difficulty - expressed as the hashrate H_D at which blocks come every 600 s. Expected blocks
in a step = BLOCKS_PER_HOUR * step_hours * H / H_D, accumulated into the chain height. When
the height crosses a multiple of RETARGET_INTERVAL_BLOCKS, H_D becomes the time-weighted mean
of H over the epoch just finished. This is Bitcoin's rule (src/pow.cpp: new difficulty = old
* target timespan / actual timespan, clamped to a factor of 4) restated in hashrate: 2016
blocks took sum(H dt) / H_D * 600 s, so the new H_D is sum(H dt) / sum(dt). The epoch under
way at the start began at the last multiple of 2016 below the start height; its blocks before
the horizon are assumed mined on schedule at the initial hashrate, which is also the initial
H_D. A new difficulty applies from the first step starting at or past the boundary.

Hashprice - what one TH/s earns per day:
    BLOCKS_PER_DAY * (H / H_D) * (subsidy + fees) * price / H  =  BLOCKS_PER_DAY * reward * price / H_D,
so it moves with difficulty, not with the instantaneous hashrate. Derived, never an input.
With 67,800 USD, 900 EH/s and 3.125 + 0.025 BTC it is ~34.2 USD per PH per day.

Subsidy - `block_subsidy_btc` at the chain height at the start of each step (halving every
210,000 blocks: 3.125 BTC until block 1,050,000, then 1.5625).

Fees per block - stationary AR(1) on log fees with daily persistence FEES_PERSISTENCE_PER_DAY
and stationary std `fees_vol`, centred so the long-run mean equals `fees_btc_per_block`;
it starts at `fees_btc_per_block`.

Power price per market (step averages, USD/MWh):
    base = mean * daily(hour) * seasonal(day) * exp(X),
    daily    ~ exp(a_d cos(2 pi (hour - peak_hour) / 24)), averaged over the hours of the step,
    seasonal ~ exp(a_s cos(2 pi (year fraction - mid peak_month))),
    X        = Ornstein-Uhlenbeck (reversion kappa per day, vol sigma per sqrt day), exact
               discretisation, started from its stationary law.
Each factor is normalised to mean one (the daily one over the day's hours, the seasonal one
by the Bessel function I0(a_s), X by centring at -var/2), so the long-run mean of the base is
`mean_price_usd_per_mwh`. Spikes come on top: a spike starts in a step with probability
1 - (1 - spike_prob_per_hour)^step_hours, has an exponential size with mean
`spike_mean_usd_per_mwh` and decays as exp(-hours / spike_decay_hours); the step value is its
average over the step. Spikes add spike_prob_per_hour * spike_mean * spike_decay_hours to the
long-run mean (see `expected_spike_usd_per_mwh`). The sum is clipped to [floor, cap].

Sub-hourly steps (`horizon.step_minutes` < 60, e.g. ERCOT's 15-minute settlement intervals): the OU
factor and the spikes above are discretised exactly at the step (decay exp(-kappa dt), start
probability 1 - (1 - p)^dt, spike level averaged over the step), so a short spike
(`spike_decay_hours` of a fraction of an hour) lives in a step or two. The daily shape takes its
hour's value. On top, an *intra-hour noise* multiplies the base (before spikes):
    base_t * (1 + v e_t),  e_t = (z_t - mean of z over the step's hour) * sqrt(k / (k - 1)),
z_t iid standard normal, k steps per hour, v = `intra_hour_vol` (default 0.15, an assumption to
calibrate on one's own settlement data). Each e_t has unit variance, yet the e_t of an hour sum to
exactly zero: the term averages to one over every hour, so its variance vanishes at hourly
aggregation and hourly means of a 15-minute path are the hourly model's law plus the OU's own
intra-hour movement. It is drawn after every other path of the market, and only below an hour, so
hourly paths are unchanged by it. `hourly_means` aggregates a sub-hourly set to hourly means (the same
paths as an hourly planner would see them): the value of 15-minute dispatch is a plan on the paths
against a plan on their hourly means.
Markets are independent of each other and of bitcoin.

Grid events and demand-response calls (per market, drawn AFTER every path above, market by
market, so adding them never changes the other paths of a scenario):
- Curtailment events, one kind at a time (`PowerMarket.curtailment_events`): the number of events
  in the horizon is Poisson with mean events_per_year x (horizon hours in the kind's months) /
  (hours of those months in a year); each starts at a step drawn uniformly among the steps in
  those months and lasts an exponential time with mean `mean_duration_hours`, rounded up to whole
  steps (at least one), cut at the horizon's end. During it `available_power_fraction` is at most
  the kind's `available_fraction` (overlaps take the lowest) and, if the kind has a price floor, the
  spot price is at least the floor (still at most the cap).
- Demand-response calls (`PowerMarket.demand_response_calls`): a Poisson number of calls with mean
  calls_per_year x (horizon hours in the calls' months) / (hours of those months in a year); each
  falls on a day drawn uniformly among the horizon's days in those months, starts at that day's
  highest-price step (after event floors) and covers ceil(call_hours / step_hours) steps.
`available_power_fraction` and `dr_call` are None when no market has events (calls): no events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from optimizer.constants import (
    BLOCKS_PER_DAY,
    BLOCKS_PER_HOUR,
    DAYS_PER_YEAR,
    HALVING_INTERVAL_BLOCKS,
    HOURS_PER_DAY,
    RETARGET_INTERVAL_BLOCKS,
    TH_PER_EH,
    TH_PER_PH,
    block_subsidy_btc,
)
from optimizer.market import BitcoinMarket, Horizon, PowerMarket, pinned_by_step

# Stream ids for scenario_rng: optimisation, out-of-sample evaluation, then SAA replications.
OPTIMIZATION_STREAM = 0
EVALUATION_STREAM = 1
SAA_FIRST_STREAM = 2

FEES_PERSISTENCE_PER_DAY = 0.9  # fee spikes (mempool congestion) fade over days, not hours
MAX_RETARGET_FACTOR = 4.0  # src/pow.cpp clamps the timespan to [1/4, 4] of the target
MONTHS_PER_YEAR = 12
MAX_LOG_GROWTH = 600.0  # exp(600) ~ 1e260, below the float64 maximum ~1.8e308
NEGLIGIBLE_DECAY = 1e-16  # below double precision: the previous step no longer matters

# ScenarioSet arrays laid out [M, S, T] (market first): sliced and stacked along axis 1.
MARKET_AXIS_FIELDS = ("power_price_usd_per_mwh", "available_power_fraction", "dr_call")


@dataclass(frozen=True)
class ScenarioSet:
    """A batch of S scenarios of T steps; rows are scenarios, `indices` their global numbers."""

    indices: np.ndarray  # int64 [S]
    step_hours: float  # step length in hours: 0.25 for 15-minute steps
    btc_price_usd: np.ndarray  # [S, T]
    network_hashrate_ehs: np.ndarray  # [S, T] actual network hashrate
    fees_btc_per_block: np.ndarray  # [S, T]
    subsidy_btc: np.ndarray  # [S, T] subsidy at the chain height at the start of each step
    hashprice_usd_per_ph_day: np.ndarray  # [S, T] derived from price, reward and difficulty
    markets: tuple[str, ...]  # power market ids, order of axis 0 of power_price_usd_per_mwh
    power_price_usd_per_mwh: np.ndarray  # [M, S, T]
    # [M, S, T] share of capacity a site of the market may draw (1 outside curtailment events);
    # None: no events anywhere.
    available_power_fraction: np.ndarray | None = None
    # [M, S, T] bool, the market calls demand response in the step; None: no calls anywhere. A numeric
    # array is read as a call where >= 0.5 (a mean over scenarios calls where most scenarios do).
    dr_call: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = self.hashprice_usd_per_ph_day.shape
        if len(shape) != 2:
            raise ValueError(f"hashprice_usd_per_ph_day must be [S, T], got shape {shape}")
        for name in ("btc_price_usd", "network_hashrate_ehs", "fees_btc_per_block", "subsidy_btc"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")
        if self.indices.shape != (shape[0],):
            raise ValueError(f"indices has shape {self.indices.shape}, expected ({shape[0]},)")
        if self.power_price_usd_per_mwh.shape != (len(self.markets), *shape):
            raise ValueError(
                f"power_price_usd_per_mwh has shape {self.power_price_usd_per_mwh.shape}, "
                f"expected {(len(self.markets), *shape)}"
            )
        if len(set(self.markets)) != len(self.markets):
            raise ValueError(f"duplicate market ids in {self.markets}")
        market_shape = (len(self.markets), *shape)
        if self.available_power_fraction is not None:
            fraction = np.asarray(self.available_power_fraction, dtype=np.float64)
            if fraction.shape != market_shape:
                raise ValueError(f"available_power_fraction has shape {fraction.shape}, expected {market_shape}")
            if not np.all((fraction >= 0) & (fraction <= 1)):
                raise ValueError("available_power_fraction must lie in [0, 1]")
            object.__setattr__(self, "available_power_fraction", fraction)
        if self.dr_call is not None:
            calls = np.asarray(self.dr_call)
            if calls.shape != market_shape:
                raise ValueError(f"dr_call has shape {calls.shape}, expected {market_shape}")
            object.__setattr__(self, "dr_call", calls if calls.dtype == bool else calls >= 0.5)

    @property
    def n_scenarios(self) -> int:
        return self.hashprice_usd_per_ph_day.shape[0]

    @property
    def n_steps(self) -> int:
        return self.hashprice_usd_per_ph_day.shape[1]

    @property
    def steps_per_hour(self) -> int:
        """Steps in an hour (1 for hourly or longer steps)."""
        return max(1, round(1 / self.step_hours))

    @property
    def steps_per_day(self) -> int:
        return round(HOURS_PER_DAY / self.step_hours)

    @property
    def hashprice_usd_per_th_hour(self) -> np.ndarray:
        return self.hashprice_usd_per_ph_day / TH_PER_PH / HOURS_PER_DAY

    def power_price(self, market_id: str) -> np.ndarray:
        """[S, T] power price of one market."""
        return self.power_price_usd_per_mwh[self._position(market_id)]

    def available_fraction(self, market_id: str) -> np.ndarray:
        """[S, T] share of capacity sites of the market may draw (1 outside curtailment events)."""
        if self.available_power_fraction is None:
            self._position(market_id)
            return np.ones(self.hashprice_usd_per_ph_day.shape)
        return self.available_power_fraction[self._position(market_id)]

    def dr_called(self, market_id: str) -> np.ndarray:
        """[S, T] bool: the market calls demand response in the step."""
        if self.dr_call is None:
            self._position(market_id)
            return np.zeros(self.hashprice_usd_per_ph_day.shape, dtype=bool)
        return self.dr_call[self._position(market_id)]

    def _position(self, market_id: str) -> int:
        try:
            return self.markets.index(market_id)
        except ValueError:
            raise KeyError(f"no power market {market_id!r} in scenarios; have {list(self.markets)}") from None


def concat_scenarios(parts: Sequence[ScenarioSet]) -> ScenarioSet:
    """Stack scenario sets along the scenario axis; they must share markets, step and length."""
    if not parts:
        raise ValueError("concat_scenarios needs at least one ScenarioSet")
    first = parts[0]
    for part in parts[1:]:
        if part.markets != first.markets:
            raise ValueError(f"markets differ: {part.markets} vs {first.markets}")
        if part.step_hours != first.step_hours:
            raise ValueError(f"step_hours differ: {part.step_hours} vs {first.step_hours}")
        if part.n_steps != first.n_steps:
            raise ValueError(f"step counts differ: {part.n_steps} vs {first.n_steps}")

    def stack(name: str, axis: int = 0) -> np.ndarray:
        return np.concatenate([getattr(part, name) for part in parts], axis=axis)

    def stack_optional(name: str, fill) -> np.ndarray | None:
        if all(getattr(part, name) is None for part in parts):
            return None
        arrays = [getattr(part, name) for part in parts]
        shapes = [part.power_price_usd_per_mwh.shape for part in parts]
        filled = [np.full(shape, fill) if a is None else a for a, shape in zip(arrays, shapes, strict=True)]
        return np.concatenate(filled, axis=1)

    return ScenarioSet(
        indices=stack("indices"),
        step_hours=first.step_hours,
        btc_price_usd=stack("btc_price_usd"),
        network_hashrate_ehs=stack("network_hashrate_ehs"),
        fees_btc_per_block=stack("fees_btc_per_block"),
        subsidy_btc=stack("subsidy_btc"),
        hashprice_usd_per_ph_day=stack("hashprice_usd_per_ph_day"),
        markets=first.markets,
        power_price_usd_per_mwh=stack("power_price_usd_per_mwh", axis=1),
        available_power_fraction=stack_optional("available_power_fraction", 1.0),
        dr_call=stack_optional("dr_call", False),
    )


def select_rows(scenarios: ScenarioSet, rows: range) -> ScenarioSet:
    """A contiguous run of rows (positions) of a scenario set; market-axis arrays are cut on their axis 1."""
    sl = slice(rows.start, rows.stop)
    values = {f.name: getattr(scenarios, f.name) for f in fields(scenarios)}
    for name, value in values.items():
        if isinstance(value, np.ndarray) and value.ndim >= 1:
            values[name] = value[:, sl] if name in MARKET_AXIS_FIELDS else value[sl]
    return ScenarioSet(**values)


def hourly_means(scenarios: ScenarioSet) -> ScenarioSet:
    """The same paths at hourly steps: every [.., T] array averaged over the steps of each hour.

    Hourly or longer sets come back unchanged. The subsidy is the hour's first (so a halving still starts
    on a step boundary); a demand-response call holds in the hour when it covers most of its steps, the
    available power fraction is the hour's mean (its energy).
    """
    k = scenarios.steps_per_hour
    if k == 1:
        return scenarios
    if scenarios.n_steps % k:
        raise ValueError(f"{scenarios.n_steps} steps of {scenarios.step_hours} h are not whole hours")

    def mean(values: np.ndarray | None) -> np.ndarray | None:
        if values is None:
            return None
        values = np.asarray(values, dtype=float)
        return values.reshape(*values.shape[:-1], values.shape[-1] // k, k).mean(axis=-1)

    return ScenarioSet(
        indices=scenarios.indices,
        step_hours=1.0,
        btc_price_usd=mean(scenarios.btc_price_usd),
        network_hashrate_ehs=mean(scenarios.network_hashrate_ehs),
        fees_btc_per_block=mean(scenarios.fees_btc_per_block),
        subsidy_btc=scenarios.subsidy_btc[:, ::k].copy(),
        hashprice_usd_per_ph_day=mean(scenarios.hashprice_usd_per_ph_day),
        markets=scenarios.markets,
        power_price_usd_per_mwh=mean(scenarios.power_price_usd_per_mwh),
        available_power_fraction=mean(scenarios.available_power_fraction),
        dr_call=None if scenarios.dr_call is None else mean(scenarios.dr_call) > 0.5,
    )


def scenario_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The only source of randomness of scenario `index` in `stream` (0 optimisation, 1 evaluation, 2+k SAA k)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))


def hashprice_usd_per_ph_day(btc_price_usd, difficulty_hashrate_ehs, subsidy_btc, fees_btc_per_block):
    """Revenue of one PH/s per day: BLOCKS_PER_DAY * (subsidy + fees) * price / difficulty hashrate."""
    reward_usd_per_day = BLOCKS_PER_DAY * (subsidy_btc + fees_btc_per_block) * btc_price_usd
    return reward_usd_per_day / (difficulty_hashrate_ehs * TH_PER_EH) * TH_PER_PH


def expected_spike_usd_per_mwh(market: PowerMarket) -> float:
    """Long-run mean that spikes add to the base price (before the cap clips them)."""
    return market.spike_prob_per_hour * market.spike_mean_usd_per_mwh * market.spike_decay_hours


def generate_scenarios(
    bitcoin: BitcoinMarket,
    markets: Sequence[PowerMarket],
    horizon: Horizon,
    indices: Sequence[int],
    seed: int,
    stream: int = OPTIMIZATION_STREAM,
) -> ScenarioSet:
    """Draw the scenarios with the given global indices; row i depends only on (seed, stream, indices[i])."""
    market_ids = tuple(market.id for market in markets)
    if len(set(market_ids)) != len(market_ids):
        raise ValueError(f"duplicate power market ids: {market_ids}")
    index_array = np.asarray(indices, dtype=np.int64).reshape(-1)
    if np.any(index_array < 0):
        raise ValueError("scenario indices must be non-negative")
    calendar = _Calendar.of(horizon)
    base_prices = [_base_price_usd_per_mwh(market, calendar) for market in markets]  # same for every scenario
    rows = [
        _draw_scenario(scenario_rng(seed, stream, int(i)), bitcoin, markets, base_prices, calendar) for i in index_array
    ]
    n_steps = horizon.n_steps

    def stack(name: str) -> np.ndarray:
        return np.array([row[name] for row in rows]).reshape(len(rows), n_steps)

    def by_market(name: str) -> np.ndarray:
        values = np.array([row[name] for row in rows]).reshape(len(rows), len(markets), n_steps)
        return np.ascontiguousarray(values.transpose(1, 0, 2))

    has_events = any(market.curtailment_events for market in markets)
    has_calls = any(market.demand_response_calls is not None for market in markets)
    return ScenarioSet(
        indices=index_array,
        step_hours=horizon.step_hours,
        btc_price_usd=stack("btc"),
        network_hashrate_ehs=stack("hashrate"),
        fees_btc_per_block=stack("fees"),
        subsidy_btc=stack("subsidy"),
        hashprice_usd_per_ph_day=stack("hashprice"),
        markets=market_ids,
        power_price_usd_per_mwh=by_market("power"),
        available_power_fraction=by_market("available") if has_events else None,
        dr_call=by_market("dr_call").astype(bool) if has_calls else None,
    )


@dataclass(frozen=True)
class _Calendar:
    """Time grid shared by all scenarios of a horizon."""

    step_hours: float
    n_steps: int
    dt_years: float
    hour_slot: np.ndarray  # [T] which step of the day each step is (0 .. 24/step_hours - 1)
    steps_per_day: int
    year_fraction: np.ndarray  # [T] position of the step's middle in the calendar year
    month: np.ndarray  # [T] calendar month (1-12) of the step
    month_index: np.ndarray  # [T] months since the horizon's first month (0, 1, ...)

    @staticmethod
    def of(horizon: Horizon) -> _Calendar:
        step_hours, n_steps = horizon.step_hours, horizon.n_steps
        minutes_from_start = np.arange(n_steps, dtype=np.int64) * horizon.step_minutes
        hours_from_start = minutes_from_start / 60
        steps_per_day = horizon.steps_per_day
        start_day_of_year = horizon.start.timetuple().tm_yday - 1
        middle_days = start_day_of_year + (hours_from_start + step_hours / 2) / HOURS_PER_DAY
        step_starts = np.datetime64(horizon.start, "m") + minutes_from_start.astype("timedelta64[m]")
        return _Calendar(
            step_hours=step_hours,
            n_steps=n_steps,
            dt_years=step_hours / HOURS_PER_DAY / DAYS_PER_YEAR,
            hour_slot=np.arange(n_steps) % steps_per_day,
            steps_per_day=steps_per_day,
            year_fraction=(middle_days / DAYS_PER_YEAR) % 1.0,
            month=step_starts.astype("datetime64[M]").astype(np.int64) % MONTHS_PER_YEAR + 1,
            month_index=step_starts.astype("datetime64[M]").astype(np.int64)
            - np.datetime64(horizon.start, "M").astype(np.int64),
        )

    @property
    def steps_per_hour(self) -> int:
        return max(1, round(1 / self.step_hours))

    def in_months(self, months: Sequence[int]) -> np.ndarray:
        """[T] bool: the step lies in one of the calendar months."""
        return np.isin(self.month, months)

    def expected_count(self, per_year: float, months: Sequence[int]) -> float:
        """Mean number of arrivals in the horizon of a process at `per_year`, spread evenly over `months`."""
        season_hours_per_year = HOURS_PER_DAY * DAYS_PER_YEAR * len(months) / MONTHS_PER_YEAR
        return per_year * self.in_months(months).sum() * self.step_hours / season_hours_per_year


def _draw_scenario(
    rng: np.random.Generator,
    bitcoin: BitcoinMarket,
    markets: Sequence[PowerMarket],
    base_prices: Sequence[np.ndarray],
    calendar: _Calendar,
) -> dict:
    btc = _btc_price_path(rng, bitcoin, calendar)
    fees = _fees_path(rng, bitcoin, calendar)
    network = simulate_network(bitcoin, btc, fees, rng.standard_normal(calendar.n_steps), calendar.step_hours)
    power = [_power_price_path(rng, market, base, calendar) for market, base in zip(markets, base_prices, strict=True)]
    # pinned inputs (docs/scenarios.md) replace paths AFTER they are drawn: every other path keeps its draws
    hashprice = network.hashprice_usd_per_ph_day
    if bitcoin.hashprice_usd_per_ph_day is not None:
        hashprice = _pinned_path(bitcoin.hashprice_usd_per_ph_day, calendar)
    for m, market in enumerate(markets):
        if market.pinned_price_usd_per_mwh is not None:
            power[m] = _pinned_path(market.pinned_price_usd_per_mwh, calendar)
    # grid events after every existing draw, so they leave the paths above untouched
    available, calls = [], []
    for market, price in zip(markets, power, strict=True):
        available.append(_curtailment_events(rng, market, price, calendar))  # may raise price to event floors
        calls.append(_demand_response_calls(rng, market, price, calendar))
    return {
        "btc": btc,
        "fees": fees,
        "hashrate": network.hashrate_ehs,
        "subsidy": network.subsidy_btc,
        "hashprice": hashprice,
        "power": power,
        "available": available,
        "dr_call": calls,
    }


def _pinned_path(value, calendar: _Calendar) -> np.ndarray:
    """[T] a pinned level, or a per-month path by the step's month of the horizon (0 = the start's month)."""
    values = np.asarray(pinned_by_step(value, calendar.month_index), dtype=float)
    return np.broadcast_to(values, (calendar.n_steps,)).copy()


def _btc_price_path(rng: np.random.Generator, bitcoin: BitcoinMarket, calendar: _Calendar) -> np.ndarray:
    n_moves, dt = calendar.n_steps - 1, calendar.dt_years
    sigma, intensity = bitcoin.price_vol_per_year, bitcoin.jump_intensity_per_year
    mean_jump_return = np.expm1(bitcoin.jump_mean_log + bitcoin.jump_std_log**2 / 2)
    drift = (bitcoin.price_drift_per_year - sigma**2 / 2 - intensity * mean_jump_return) * dt
    diffusion = sigma * np.sqrt(dt) * rng.standard_normal(n_moves)
    jump_counts = rng.poisson(intensity * dt, n_moves)
    jump_noise = rng.standard_normal(n_moves)
    # the sum of n normal jumps is normal with n times the mean and the variance
    jumps = jump_counts * bitcoin.jump_mean_log + np.sqrt(jump_counts) * bitcoin.jump_std_log * jump_noise
    log_moves = np.concatenate(([0.0], np.cumsum(drift + diffusion + jumps)))
    return bitcoin.btc_price_usd * np.exp(log_moves)


def _fees_path(rng: np.random.Generator, bitcoin: BitcoinMarket, calendar: _Calendar) -> np.ndarray:
    noise = rng.standard_normal(calendar.n_steps)
    if bitcoin.fees_btc_per_block == 0 or bitcoin.fees_vol == 0:
        return np.full(calendar.n_steps, bitcoin.fees_btc_per_block)
    persistence = FEES_PERSISTENCE_PER_DAY ** (calendar.step_hours / HOURS_PER_DAY)
    log_std = bitcoin.fees_vol
    # centre at -var/2 so the mean fee is fees_btc_per_block; start at today's level
    innovations = log_std * np.sqrt(1 - persistence**2) * noise
    innovations[0] = log_std**2 / 2
    deviation = _linear_recursion(persistence, innovations)
    return bitcoin.fees_btc_per_block * np.exp(deviation - log_std**2 / 2)


@dataclass(frozen=True)
class NetworkPath:
    """Per-step network state of one scenario; heights are expected (fractional) block counts."""

    hashrate_ehs: np.ndarray  # [T] actual hashrate
    difficulty_hashrate_ehs: np.ndarray  # [T] hashrate the current difficulty is tuned to
    height: np.ndarray  # [T] chain height at the start of each step
    subsidy_btc: np.ndarray  # [T]
    hashprice_usd_per_ph_day: np.ndarray  # [T]
    end_state: _NetworkState | None = None  # the state after the last step (a scenario tree's children start there)


def simulate_network(
    bitcoin: BitcoinMarket,
    btc_price_usd: np.ndarray,
    fees_btc_per_block: np.ndarray,
    hashrate_noise: np.ndarray,
    step_hours: float,
    start: _NetworkState | None = None,
) -> NetworkPath:
    """Hashrate, difficulty, height and hashprice along one price path ([T] arrays).

    Loops over segments in which the difficulty and the subsidy are constant (between retargets
    and halvings), vectorised over the steps within: within a segment the hashprice, and so the
    hashrate drift, is known without the hashrate. `start` continues a path from a given state
    (optimizer.tree_scenarios); by default the market's state today.
    """
    n_steps = len(btc_price_usd)
    out = {name: np.empty(n_steps) for name in ("hashrate", "difficulty", "height", "subsidy", "hashprice")}
    state = _NetworkState.start(bitcoin) if start is None else start
    dt = step_hours / HOURS_PER_DAY / DAYS_PER_YEAR
    drift_per_step = (bitcoin.hashrate_growth_per_year - bitcoin.hashrate_vol_per_year**2 / 2) * dt
    shocks = bitcoin.hashrate_vol_per_year * np.sqrt(dt) * hashrate_noise
    blocks_per_step_at_target = BLOCKS_PER_HOUR * step_hours
    # long enough that most epochs end inside one window, short enough not to redo much work
    window_steps = max(1, int(2 * RETARGET_INTERVAL_BLOCKS / blocks_per_step_at_target))
    t = 0
    while t < n_steps:
        end = min(n_steps, t + window_steps)
        subsidy = float(block_subsidy_btc(int(state.height)))
        hashprice = hashprice_usd_per_ph_day(
            btc_price_usd[t:end], state.difficulty_ehs, subsidy, fees_btc_per_block[t:end]
        )
        margin = bitcoin.hashrate_margin_response_per_year * np.log(
            hashprice / bitcoin.network_breakeven_hashprice_usd_per_ph_day
        )
        log_moves = drift_per_step + margin * dt + shocks[t:end]
        log_hashrate = state.log_hashrate_ehs + np.concatenate(([0.0], np.cumsum(log_moves[:-1])))
        hashrate = np.exp(log_hashrate)
        height_after = state.height + np.cumsum(blocks_per_step_at_target * hashrate / state.difficulty_ehs)
        boundary = min(state.next_retarget_height, state.next_halving_height)
        n_taken = min(int(np.searchsorted(height_after, boundary)) + 1, end - t)
        taken = slice(t, t + n_taken)
        out["hashrate"][taken] = hashrate[:n_taken]
        out["difficulty"][taken] = state.difficulty_ehs
        out["height"][taken] = np.concatenate(([state.height], height_after[: n_taken - 1]))
        out["subsidy"][taken] = subsidy
        out["hashprice"][taken] = hashprice[:n_taken]
        state = state.advance(
            log_hashrate_ehs=log_hashrate[n_taken - 1] + log_moves[n_taken - 1],
            height=float(height_after[n_taken - 1]),
            hashrate_hours_ehs=float(np.sum(hashrate[:n_taken])) * step_hours,
            hours=n_taken * step_hours,
        )
        t += n_taken
    return NetworkPath(
        hashrate_ehs=out["hashrate"],
        difficulty_hashrate_ehs=out["difficulty"],
        height=out["height"],
        subsidy_btc=out["subsidy"],
        hashprice_usd_per_ph_day=out["hashprice"],
        end_state=state,
    )


@dataclass(frozen=True)
class _NetworkState:
    log_hashrate_ehs: float
    height: float
    difficulty_ehs: float
    epoch_hashrate_hours_ehs: float  # sum of H * hours since the epoch began
    epoch_hours: float
    next_retarget_height: int
    next_halving_height: int

    @staticmethod
    def start(bitcoin: BitcoinMarket) -> _NetworkState:
        height = bitcoin.start_block_height
        hashrate = bitcoin.network_hashrate_ehs
        # blocks of the current epoch before the horizon: mined on schedule at today's hashrate
        hours_before = (height % RETARGET_INTERVAL_BLOCKS) / BLOCKS_PER_HOUR
        return _NetworkState(
            log_hashrate_ehs=float(np.log(hashrate)),
            height=float(height),
            difficulty_ehs=hashrate,
            epoch_hashrate_hours_ehs=hashrate * hours_before,
            epoch_hours=hours_before,
            next_retarget_height=_next_multiple(height, RETARGET_INTERVAL_BLOCKS),
            next_halving_height=_next_multiple(height, HALVING_INTERVAL_BLOCKS),
        )

    def advance(self, log_hashrate_ehs: float, height: float, hashrate_hours_ehs: float, hours: float):
        epoch_hashrate_hours = self.epoch_hashrate_hours_ehs + hashrate_hours_ehs
        epoch_hours = self.epoch_hours + hours
        difficulty, next_retarget = self.difficulty_ehs, self.next_retarget_height
        if height >= self.next_retarget_height:
            epoch_mean = epoch_hashrate_hours / epoch_hours
            difficulty = min(max(epoch_mean, difficulty / MAX_RETARGET_FACTOR), difficulty * MAX_RETARGET_FACTOR)
            epoch_hashrate_hours, epoch_hours = 0.0, 0.0
            next_retarget = _next_multiple(int(height), RETARGET_INTERVAL_BLOCKS)
        return _NetworkState(
            log_hashrate_ehs=float(log_hashrate_ehs),
            height=height,
            difficulty_ehs=difficulty,
            epoch_hashrate_hours_ehs=epoch_hashrate_hours,
            epoch_hours=epoch_hours,
            next_retarget_height=next_retarget,
            next_halving_height=_next_multiple(int(height), HALVING_INTERVAL_BLOCKS),
        )


def _next_multiple(height: int, interval: int) -> int:
    return (height // interval + 1) * interval


def _base_price_usd_per_mwh(market: PowerMarket, calendar: _Calendar) -> np.ndarray:
    """Mean price shaped by hour of day and season: [T], averaging mean_price_usd_per_mwh."""
    return market.mean_price_usd_per_mwh * _daily_factor(market, calendar) * _seasonal_factor(market, calendar)


def _power_price_path(
    rng: np.random.Generator, market: PowerMarket, base_price: np.ndarray, calendar: _Calendar
) -> np.ndarray:
    base = base_price * np.exp(_ou_log_deviation(rng, market, calendar))
    spikes = _spikes(rng, market, calendar)
    if calendar.steps_per_hour > 1:  # drawn last and only below an hour: hourly paths keep their draws
        base = base * _intra_hour_factor(rng, market, calendar)
    return np.clip(base + spikes, market.floor_usd_per_mwh, market.cap_usd_per_mwh)


def _intra_hour_factor(
    rng: np.random.Generator, market: PowerMarket, calendar: _Calendar, first: int = 0
) -> np.ndarray:
    """[T] 1 + v e_t, e_t standard normals demeaned within each hour and rescaled to unit variance.

    The factor averages exactly one over every hour, so its variance vanishes at hourly granularity; it is
    floored at zero (at the default v = 0.15 a floor needs a 6.7-sigma draw). A path segment starting at
    step `first` (optimizer.tree_scenarios) may begin or end inside an hour: each part of an hour is
    demeaned within itself, so the factor still averages one over the hour; a part of one step gets none.
    """
    k = calendar.steps_per_hour
    z = rng.standard_normal(calendar.n_steps)
    head = min(-first % k, z.size)
    whole = (z.size - head) // k * k
    parts = (z[:head].reshape(1, -1), z[head : head + whole].reshape(-1, k), z[head + whole :].reshape(1, -1))
    e = np.concatenate([_demeaned_unit(part).reshape(-1) for part in parts])
    return np.maximum(0.0, 1.0 + market.intra_hour_vol * e)


def _demeaned_unit(z: np.ndarray) -> np.ndarray:
    """Each row (the steps of one hour) less its mean, rescaled to unit variance; zero for rows of one step."""
    k = z.shape[1]
    if k < 2:
        return np.zeros_like(z)
    return (z - z.mean(axis=1, keepdims=True)) * np.sqrt(k / (k - 1))


def _daily_factor(market: PowerMarket, calendar: _Calendar) -> np.ndarray:
    hours = np.arange(HOURS_PER_DAY)
    hourly = np.exp(market.daily_shape_amplitude * np.cos(2 * np.pi * (hours - market.peak_hour) / HOURS_PER_DAY))
    hourly /= hourly.mean()  # mean one over the day
    if calendar.steps_per_hour > 1:  # a sub-hourly step takes its hour's value
        per_slot = np.repeat(hourly, calendar.steps_per_hour)
    else:
        per_slot = hourly.reshape(-1, round(calendar.step_hours)).mean(axis=1)  # a step averages its hours
    return per_slot[calendar.hour_slot]


def _seasonal_factor(market: PowerMarket, calendar: _Calendar) -> np.ndarray:
    amplitude = market.seasonal_amplitude
    peak_fraction = (market.peak_month - 0.5) / MONTHS_PER_YEAR  # middle of the peak month
    phase = 2 * np.pi * (calendar.year_fraction - peak_fraction)
    # the mean of exp(a cos(phase)) over a year is the modified Bessel function I0(a)
    return np.exp(amplitude * np.cos(phase)) / np.i0(amplitude)


def _ou_log_deviation(rng: np.random.Generator, market: PowerMarket, calendar: _Calendar) -> np.ndarray:
    dt_days = calendar.step_hours / HOURS_PER_DAY
    decay = np.exp(-market.reversion_per_day * dt_days)
    stationary_var = market.vol_per_sqrt_day**2 / (2 * market.reversion_per_day)
    innovations = np.sqrt(stationary_var * (1 - decay**2)) * rng.standard_normal(calendar.n_steps)
    innovations[0] = np.sqrt(stationary_var) * rng.standard_normal()  # start from the stationary law
    # centred at -var/2 so E[exp(X)] = 1 and the base keeps its mean
    return _linear_recursion(decay, innovations) - stationary_var / 2


def _spikes(rng: np.random.Generator, market: PowerMarket, calendar: _Calendar) -> np.ndarray:
    step_hours, tau = calendar.step_hours, market.spike_decay_hours
    start_prob = 1 - (1 - market.spike_prob_per_hour) ** step_hours
    starts = rng.random(calendar.n_steps) < start_prob
    sizes = rng.exponential(market.spike_mean_usd_per_mwh, calendar.n_steps)
    decay = np.exp(-step_hours / tau)
    level_at_step_start = _linear_recursion(decay, np.where(starts, sizes, 0.0))
    # average of level * exp(-h / tau) over the step's hours
    return level_at_step_start * tau / step_hours * (1 - decay)


def _curtailment_events(
    rng: np.random.Generator, market: PowerMarket, price: np.ndarray, calendar: _Calendar
) -> np.ndarray:
    """[T] available share of capacity; raises `price` in place to each event's floor."""
    available = np.ones(calendar.n_steps)
    for kind in market.curtailment_events:
        season = np.flatnonzero(calendar.in_months(kind.months))
        count = rng.poisson(calendar.expected_count(kind.events_per_year, kind.months)) if len(season) else 0
        starts = rng.choice(season, size=count) if count else np.empty(0, dtype=np.int64)
        hours = rng.exponential(kind.mean_duration_hours, count)
        for start, duration_hours in zip(starts, hours, strict=True):
            steps = slice(start, start + max(1, int(np.ceil(duration_hours / calendar.step_hours))))
            available[steps] = np.minimum(available[steps], kind.available_fraction)
            if kind.price_floor_usd_per_mwh is not None:
                price[steps] = np.maximum(price[steps], kind.price_floor_usd_per_mwh)
    return available


def _demand_response_calls(
    rng: np.random.Generator, market: PowerMarket, price: np.ndarray, calendar: _Calendar
) -> np.ndarray:
    """[T] bool: steps in which the market calls demand response."""
    called = np.zeros(calendar.n_steps, dtype=bool)
    calls = market.demand_response_calls
    if calls is None:
        return called
    steps_per_day = calendar.steps_per_day
    days_in_season = np.flatnonzero(calendar.in_months(calls.months)[::steps_per_day])
    count = rng.poisson(calendar.expected_count(calls.calls_per_year, calls.months)) if len(days_in_season) else 0
    length = int(np.ceil(calls.call_hours / calendar.step_hours))
    for day in rng.choice(days_in_season, size=count) if count else ():
        first = day * steps_per_day
        peak = first + int(np.argmax(price[first : first + steps_per_day]))
        called[peak : peak + length] = True
    return called


def _linear_recursion(decay: float, inputs: np.ndarray) -> np.ndarray:
    """y[t] = decay * y[t-1] + inputs[t] with y[-1] = 0, without a loop over steps.

    Within a chunk y[k] = decay**k * (decay * carry + cumsum(inputs[j] * decay**-j)); chunks are
    cut so decay**-k stays far below float overflow. The rounding error stays relative to the
    recent inputs because the growing weights favour them. One chunk covers a quarter at the
    default parameters.
    """
    if decay < NEGLIGIBLE_DECAY:
        return inputs.astype(float, copy=True)
    log_growth = -np.log(decay)
    chunk = len(inputs) if log_growth == 0 else max(1, int(MAX_LOG_GROWTH / log_growth))
    out = np.empty(len(inputs))
    carry = 0.0
    for start in range(0, len(inputs), chunk):
        block = inputs[start : start + chunk]
        growth = np.exp(np.arange(len(block)) * log_growth)
        out[start : start + len(block)] = (decay * carry + np.cumsum(block * growth)) / growth
        carry = out[start + len(block) - 1]
    return out
