"""Scenario generation: reproducibility, protocol arithmetic, and the shape of the price models."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from optimizer.constants import BLOCKS_PER_DAY, RETARGET_INTERVAL_BLOCKS, TH_PER_EH, TH_PER_PH
from optimizer.market import BitcoinMarket, Horizon, PowerMarket
from optimizer.scenarios import (
    EVALUATION_STREAM,
    OPTIMIZATION_STREAM,
    ScenarioSet,
    concat_scenarios,
    expected_spike_usd_per_mwh,
    generate_scenarios,
    hashprice_usd_per_ph_day,
    scenario_rng,
    simulate_network,
)

ERCOT = PowerMarket(id="ERCOT_HB_NORTH", mean_price_usd_per_mwh=40.0)
QUIET_MARKET = dict(  # no randomness and no shape: the price is the mean
    daily_shape_amplitude=0.0, seasonal_amplitude=0.0, vol_per_sqrt_day=0.0, spike_prob_per_hour=0.0
)
SHORT = Horizon(days=7)
ARRAY_FIELDS = [field.name for field in dataclasses.fields(ScenarioSet) if field.name not in ("step_hours", "markets")]


def quiet_bitcoin(**overrides) -> BitcoinMarket:
    """Deterministic bitcoin: constant price and fees, hashrate moves only by growth and response."""
    settings = dict(
        price_vol_per_year=0.0,
        jump_intensity_per_year=0.0,
        hashrate_vol_per_year=0.0,
        hashrate_margin_response_per_year=0.0,
        fees_vol=0.0,
    )
    return BitcoinMarket(**(settings | overrides))


def assert_identical(left: ScenarioSet, right: ScenarioSet) -> None:
    assert left.markets == right.markets and left.step_hours == right.step_hours
    for name in ARRAY_FIELDS:
        assert np.array_equal(getattr(left, name), getattr(right, name)), name


def difficulty_hashrate_from(scenarios: ScenarioSet) -> np.ndarray:
    """Invert the hashprice formula to recover the difficulty hashrate each step used."""
    reward_usd_per_day = (
        BLOCKS_PER_DAY * (scenarios.subsidy_btc + scenarios.fees_btc_per_block) * scenarios.btc_price_usd
    )
    return reward_usd_per_day * TH_PER_PH / scenarios.hashprice_usd_per_ph_day / TH_PER_EH


# --- reproducibility -------------------------------------------------------------------------


def test_any_batch_split_gives_identical_rows():
    markets = [ERCOT, PowerMarket(id="PJM_WEST", mean_price_usd_per_mwh=55.0)]
    whole = generate_scenarios(BitcoinMarket(), markets, SHORT, range(10), seed=7)
    parts = [
        generate_scenarios(BitcoinMarket(), markets, SHORT, batch, seed=7) for batch in (range(0, 3), range(3, 10))
    ]
    assert_identical(whole, concat_scenarios(parts))


def test_a_row_depends_only_on_its_index_not_on_its_neighbours():
    whole = generate_scenarios(BitcoinMarket(), [ERCOT], SHORT, range(10), seed=7)
    picked = generate_scenarios(BitcoinMarket(), [ERCOT], SHORT, [7, 2], seed=7)
    assert np.array_equal(picked.indices, [7, 2])
    assert np.array_equal(picked.btc_price_usd, whole.btc_price_usd[[7, 2]])
    assert np.array_equal(picked.power_price_usd_per_mwh, whole.power_price_usd_per_mwh[:, [7, 2]])


def test_same_seed_same_scenarios_other_seed_other_scenarios():
    first = generate_scenarios(BitcoinMarket(), [ERCOT], SHORT, range(4), seed=1)
    again = generate_scenarios(BitcoinMarket(), [ERCOT], SHORT, range(4), seed=1)
    other = generate_scenarios(BitcoinMarket(), [ERCOT], SHORT, range(4), seed=2)
    assert_identical(first, again)
    assert not np.array_equal(first.btc_price_usd, other.btc_price_usd)
    assert not np.array_equal(first.power_price_usd_per_mwh, other.power_price_usd_per_mwh)


def test_streams_are_independent():
    optimization = generate_scenarios(BitcoinMarket(), [ERCOT], SHORT, range(4), seed=1, stream=OPTIMIZATION_STREAM)
    evaluation = generate_scenarios(BitcoinMarket(), [ERCOT], SHORT, range(4), seed=1, stream=EVALUATION_STREAM)
    assert not np.any(optimization.btc_price_usd[:, 1:] == evaluation.btc_price_usd[:, 1:])
    assert not np.any(optimization.power_price_usd_per_mwh == evaluation.power_price_usd_per_mwh)


def test_scenario_rng_is_a_seed_sequence_child():
    expected = np.random.default_rng(np.random.SeedSequence(5, spawn_key=(2, 9))).random(3)
    assert np.array_equal(scenario_rng(5, 2, 9).random(3), expected)


# --- bitcoin ----------------------------------------------------------------------------------


def test_first_hashprice_matches_hand_arithmetic():
    scenarios = generate_scenarios(BitcoinMarket(), [ERCOT], SHORT, range(3), seed=0)
    # 144 blocks/day * (3.125 + 0.025) BTC * 67,800 USD / 900e6 TH/s * 1000 TH/PH = 34.17 USD/PH/day
    by_hand = 144 * (3.125 + 0.025) * 67_800 / (900 * 1e6) * 1000
    assert scenarios.hashprice_usd_per_ph_day[:, 0] == pytest.approx(by_hand, rel=0.01)
    assert scenarios.hashprice_usd_per_th_hour[:, 0] == pytest.approx(by_hand / 1000 / 24, rel=0.01)


def test_hashprice_function_units():
    assert hashprice_usd_per_ph_day(67_800.0, 900.0, 3.125, 0.025) == pytest.approx(34.1712)


def test_difficulty_retargets_exactly_when_the_height_crosses_the_boundary():
    boundary = RETARGET_INTERVAL_BLOCKS * 500
    bitcoin = quiet_bitcoin(start_block_height=boundary - 10, hashrate_growth_per_year=5.0)
    scenarios = generate_scenarios(bitcoin, [ERCOT], Horizon(days=30), range(1), seed=0)
    difficulty = difficulty_hashrate_from(scenarios)[0]
    # about 6 blocks an hour: heights 990 - 10, -4, +2, so the new difficulty applies from step 2
    assert np.allclose(difficulty[:2], bitcoin.network_hashrate_ehs, rtol=1e-12)
    assert difficulty[2] > difficulty[1] * (1 + 1e-9)

    network = simulate_network(
        bitcoin, scenarios.btc_price_usd[0], scenarios.fees_btc_per_block[0], np.zeros(scenarios.n_steps), 1
    )
    assert np.allclose(network.difficulty_hashrate_ehs, difficulty, rtol=1e-12)
    epochs = np.floor(network.height / RETARGET_INTERVAL_BLOCKS)
    changes = np.flatnonzero(np.diff(network.difficulty_hashrate_ehs)) + 1
    assert np.array_equal(changes, np.flatnonzero(np.diff(epochs)) + 1)
    assert len(changes) == 3  # the crossing after 10 blocks, then two full epochs in 30 days


def test_new_difficulty_is_the_mean_hashrate_of_the_epoch_just_finished():
    bitcoin = quiet_bitcoin(start_block_height=RETARGET_INTERVAL_BLOCKS * 500, hashrate_growth_per_year=3.0)
    n_steps = Horizon(days=40).n_steps
    network = simulate_network(
        bitcoin, np.full(n_steps, bitcoin.btc_price_usd), np.full(n_steps, 0.025), np.zeros(n_steps), 1
    )
    first, second = (np.flatnonzero(np.diff(network.difficulty_hashrate_ehs)) + 1)[:2]
    # the horizon starts exactly at an epoch boundary, so the first epoch lies wholly inside it
    assert network.difficulty_hashrate_ehs[first] == pytest.approx(network.hashrate_ehs[:first].mean(), rel=1e-12)
    assert network.difficulty_hashrate_ehs[second] == pytest.approx(
        network.hashrate_ehs[first:second].mean(), rel=1e-12
    )
    # growing hashrate finds the 2016 blocks faster than two weeks
    assert second - first < 14 * 24


def test_subsidy_halves_at_block_1_050_000_part_way_through():
    bitcoin = quiet_bitcoin(start_block_height=1_049_000, hashrate_growth_per_year=0.0)
    scenarios = generate_scenarios(bitcoin, [ERCOT], Horizon(days=14), range(2), seed=0)
    subsidy = scenarios.subsidy_btc[0]
    halving_step = int(np.argmax(subsidy < 3.125))
    assert subsidy[0] == 3.125 and subsidy[-1] == 1.5625
    assert np.all(subsidy[:halving_step] == 3.125) and np.all(subsidy[halving_step:] == 1.5625)
    assert halving_step == pytest.approx(1000 / 6, abs=1)  # 1,000 blocks at 6 an hour
    hashprice = scenarios.hashprice_usd_per_ph_day[0]
    assert hashprice[halving_step] / hashprice[halving_step - 1] == pytest.approx((1.5625 + 0.025) / (3.125 + 0.025))


def test_hashrate_follows_growth_and_margin_response():
    horizon = Horizon(days=30)
    plain = quiet_bitcoin(hashrate_growth_per_year=0.2)
    hashrate = generate_scenarios(plain, [ERCOT], horizon, range(1), seed=0).network_hashrate_ehs[0]
    years = np.arange(horizon.n_steps) / 24 / 365.25
    assert hashrate == pytest.approx(900.0 * np.exp(0.2 * years), rel=1e-9)

    # hashprice ~34 is below the 40 breakeven: miners unplug
    responsive = quiet_bitcoin(hashrate_growth_per_year=0.2, hashrate_margin_response_per_year=5.0)
    unplugging = generate_scenarios(responsive, [ERCOT], horizon, range(1), seed=0).network_hashrate_ehs[0]
    assert unplugging[-1] < hashrate[-1]


def test_btc_price_drift_is_compensated_for_volatility_and_jumps():
    bitcoin = BitcoinMarket(jump_intensity_per_year=20.0, jump_mean_log=-0.1, jump_std_log=0.08)
    horizon = Horizon(days=91, step_hours=24)
    terminal = generate_scenarios(bitcoin, [], horizon, range(4000), seed=3).btc_price_usd[:, -1]
    years = (horizon.n_steps - 1) / 365.25
    k = np.expm1(-0.1 + 0.08**2 / 2)
    expected_log = (0.0 - 0.55**2 / 2 - 20.0 * k) * years + 20.0 * years * -0.1
    assert np.log(terminal / 67_800).mean() == pytest.approx(expected_log, abs=0.025)
    assert terminal.mean() == pytest.approx(67_800, rel=0.03)  # zero drift: a martingale


def test_fees_start_today_and_average_the_given_level():
    bitcoin = BitcoinMarket(fees_vol=1.0)
    fees = generate_scenarios(bitcoin, [], Horizon(days=365, step_hours=24), range(1000), seed=4).fees_btc_per_block
    assert np.all(fees[:, 0] == 0.025)
    assert fees.mean() == pytest.approx(0.025, rel=0.08)
    assert fees.std() > 0.01


# --- power ------------------------------------------------------------------------------------


def test_power_price_shape_is_markets_by_scenarios_by_steps():
    markets = [ERCOT, PowerMarket(id="PJM_WEST", mean_price_usd_per_mwh=55.0)]
    scenarios = generate_scenarios(BitcoinMarket(), markets, SHORT, range(4), seed=0)
    assert scenarios.power_price_usd_per_mwh.shape == (2, 4, SHORT.n_steps)
    assert scenarios.btc_price_usd.shape == (4, SHORT.n_steps)
    assert (scenarios.n_scenarios, scenarios.n_steps, scenarios.markets) == (4, 168, ("ERCOT_HB_NORTH", "PJM_WEST"))
    assert np.array_equal(scenarios.power_price("PJM_WEST"), scenarios.power_price_usd_per_mwh[1])


def test_unknown_market_is_a_key_error_naming_it():
    scenarios = generate_scenarios(BitcoinMarket(), [ERCOT], SHORT, range(1), seed=0)
    with pytest.raises(KeyError, match="CAISO_SP15"):
        scenarios.power_price("CAISO_SP15")


def test_long_run_mean_is_the_given_mean_despite_shape_and_volatility():
    # unnormalised, daily shape 0.8 (I0 = 1.17) and lognormal vol (exp(var/2) = 1.18) would add ~37%
    market = PowerMarket(
        id="X",
        mean_price_usd_per_mwh=40.0,
        daily_shape_amplitude=0.8,
        vol_per_sqrt_day=1.0,
        seasonal_amplitude=0.0,
        spike_prob_per_hour=0.0,
    )
    prices = generate_scenarios(BitcoinMarket(), [market], Horizon(days=91), range(200), seed=5).power_price("X")
    assert prices.mean() == pytest.approx(40.0, rel=0.03)


def test_spikes_add_their_expected_contribution():
    market = PowerMarket(id="X", mean_price_usd_per_mwh=40.0, spike_prob_per_hour=0.02, seasonal_amplitude=0.0)
    prices = generate_scenarios(BitcoinMarket(), [market], Horizon(days=91), range(200), seed=6).power_price("X")
    expected = 40.0 + expected_spike_usd_per_mwh(market)  # 40 + 0.02 * 600 * 3 = 76
    assert prices.mean() == pytest.approx(expected, rel=0.1)


def test_no_spikes_and_no_noise_leave_exactly_the_mean():
    market = PowerMarket(id="X", mean_price_usd_per_mwh=40.0, **QUIET_MARKET)
    prices = generate_scenarios(BitcoinMarket(), [market], SHORT, range(3), seed=0).power_price("X")
    assert np.allclose(prices, 40.0, rtol=1e-12)


def test_spikes_present_when_likely_absent_when_impossible():
    quiet = dict(QUIET_MARKET) | {"spike_prob_per_hour": 0.0}
    never = PowerMarket(id="never", mean_price_usd_per_mwh=40.0, **quiet)
    often = PowerMarket(id="often", mean_price_usd_per_mwh=40.0, **(quiet | {"spike_prob_per_hour": 0.3}))
    scenarios = generate_scenarios(BitcoinMarket(), [never, often], SHORT, range(5), seed=0)
    assert scenarios.power_price("never").max() == pytest.approx(40.0)
    spiking = scenarios.power_price("often")
    assert spiking.max() > 500.0
    assert np.mean(spiking > 100.0) > 0.3


def test_prices_stay_within_floor_and_cap():
    market = PowerMarket(
        id="X",
        mean_price_usd_per_mwh=40.0,
        vol_per_sqrt_day=2.0,
        spike_prob_per_hour=0.2,
        spike_mean_usd_per_mwh=3_000.0,
        cap_usd_per_mwh=1_000.0,
        floor_usd_per_mwh=-10.0,
    )
    prices = generate_scenarios(BitcoinMarket(), [market], SHORT, range(20), seed=0).power_price("X")
    assert prices.max() == 1_000.0  # the cap binds
    assert prices.min() >= -10.0


def test_daily_peak_at_peak_hour_and_seasonal_peak_in_peak_month():
    market = PowerMarket(
        id="X",
        mean_price_usd_per_mwh=40.0,
        **(QUIET_MARKET | {"daily_shape_amplitude": 0.3, "seasonal_amplitude": 0.3}),
    )
    hourly = generate_scenarios(BitcoinMarket(), [market], Horizon(days=2), range(1), seed=0).power_price("X")[0]
    assert int(np.argmax(hourly[:24])) == market.peak_hour

    year = Horizon(start=dt.date(2027, 1, 1), days=365, step_hours=24)
    daily = generate_scenarios(BitcoinMarket(), [market], year, range(1), seed=0).power_price("X")[0]
    peak_day = year.start + dt.timedelta(days=int(np.argmax(daily)))
    assert peak_day.month == market.peak_month
    assert daily.mean() == pytest.approx(40.0, rel=0.01)


def test_daily_steps_average_the_hours_of_the_day():
    market = PowerMarket(id="X", mean_price_usd_per_mwh=40.0, **(QUIET_MARKET | {"daily_shape_amplitude": 0.5}))
    horizon = Horizon(days=91, step_hours=24)
    scenarios = generate_scenarios(BitcoinMarket(), [market], horizon, range(3), seed=0)
    assert scenarios.n_steps == 91 and scenarios.step_hours == 24
    assert np.allclose(scenarios.power_price("X"), 40.0, rtol=1e-12)
    assert scenarios.hashprice_usd_per_ph_day[:, 0] == pytest.approx(34.1712)
    assert np.all(np.isfinite(scenarios.hashprice_usd_per_ph_day))


# --- containers -------------------------------------------------------------------------------


def test_concat_rejects_mismatched_parts():
    base = generate_scenarios(BitcoinMarket(), [ERCOT], SHORT, range(2), seed=0)
    other_market = generate_scenarios(BitcoinMarket(), [ERCOT.model_copy(update={"id": "Y"})], SHORT, range(2), seed=0)
    other_step = generate_scenarios(BitcoinMarket(), [ERCOT], Horizon(days=7, step_hours=2), range(2), seed=0)
    with pytest.raises(ValueError, match="markets"):
        concat_scenarios([base, other_market])
    with pytest.raises(ValueError, match="step_hours"):
        concat_scenarios([base, other_step])


def test_duplicate_market_ids_are_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        generate_scenarios(BitcoinMarket(), [ERCOT, ERCOT], SHORT, range(1), seed=0)


def test_empty_batch_has_the_right_shape():
    scenarios = generate_scenarios(BitcoinMarket(), [ERCOT], SHORT, [], seed=0)
    assert scenarios.power_price_usd_per_mwh.shape == (1, 0, SHORT.n_steps)
    assert scenarios.indices.dtype == np.int64
