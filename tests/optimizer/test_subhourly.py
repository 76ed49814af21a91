"""Sub-hourly steps: the horizon's step_minutes, price models at 15 minutes, economics and plans against hourly.

A 15-minute plan equals the hourly plan when prices are constant within each hour and beats it when they
are not (the same paths averaged to hours), and both equal brute force on a tiny fleet.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from optimizer.allocation import scenario_profits_usd
from optimizer.economics import group_economics
from optimizer.fleet import FleetError, RiskSettings, parse_fleet
from optimizer.formulation import build_compact_model, extract_allocation
from optimizer.market import BitcoinMarket, Horizon, PowerMarket
from optimizer.risk import risk_objective_value
from optimizer.scenario_io import ScenarioFileError, load_scenarios, save_scenarios
from optimizer.scenarios import ScenarioSet, expected_spike_usd_per_mwh, generate_scenarios, hourly_means
from solvers.highs import solve
from tests.fleets import hand_scenarios, small_fleet_data
from tests.optimizer.test_formulation import brute_force

RISKS = [
    RiskSettings(objective="expected"),
    RiskSettings(objective="cvar", alpha=0.8, weight=0.6),
    RiskSettings(objective="worst"),
]
QUIET = dict(seasonal_amplitude=0.0, vol_per_sqrt_day=0.0, spike_prob_per_hour=0.0)


# --- the horizon ------------------------------------------------------------------------------


def test_step_minutes_and_the_older_step_hours():
    assert Horizon(days=2, step_minutes=15).n_steps == 2 * 96
    assert Horizon(days=2, step_minutes=15).step_hours == 0.25
    six = Horizon(days=2, step_hours=6)
    assert (six.step_minutes, six.step_hours, six.n_steps) == (360, 6.0, 8)
    assert Horizon(days=2).step_minutes == 60 and Horizon(days=2).step_hours == 1.0
    # the dump carries minutes only, so it parses back to the same horizon
    assert six.model_dump() == {"start": six.start, "days": 2, "step_minutes": 360}
    assert Horizon(**six.model_dump()) == six


@pytest.mark.parametrize(
    ("horizon", "path", "words"),
    [
        ({"step_minutes": 15, "step_hours": 1}, "horizon", "not both"),
        ({"step_minutes": 7}, "horizon.step_minutes", "must be one of"),
        ({"step_minutes": 90}, "horizon.step_minutes", "must be one of"),
        ({"step_hours": 5}, "horizon.step_hours", "must be one of"),
    ],
)
def test_bad_steps_name_the_field(horizon, path, words):
    data = small_fleet_data()
    data["horizon"] = {"start": "2026-12-01", "days": 3, **horizon}
    with pytest.raises(FleetError) as caught:
        parse_fleet(data)
    assert any(p == path and words in m for p, m in caught.value.violations), caught.value.violations


# --- price models at 15 minutes ---------------------------------------------------------------


def test_intra_hour_noise_averages_out_over_each_hour():
    """No OU, no spikes, no season: 15-minute prices average to the hourly path exactly, yet deviate by v."""
    market = PowerMarket(id="X", mean_price_usd_per_mwh=40.0, daily_shape_amplitude=0.35, **QUIET)
    quarter = generate_scenarios(BitcoinMarket(), [market], Horizon(days=30, step_minutes=15), range(4), seed=3)
    hourly = generate_scenarios(BitcoinMarket(), [market], Horizon(days=30), range(4), seed=3)
    assert quarter.n_steps == 4 * hourly.n_steps
    np.testing.assert_allclose(hourly_means(quarter).power_price("X"), hourly.power_price("X"), rtol=1e-12)
    relative = quarter.power_price("X") / np.repeat(hourly.power_price("X"), 4, axis=1) - 1
    assert relative.std() == pytest.approx(market.intra_hour_vol, rel=0.03)
    assert np.abs(relative.reshape(4, -1, 4).sum(axis=2)).max() < 1e-12  # sums to zero within every hour
    # without intra-hour noise the 15-minute path is the hourly one repeated
    flat = market.model_copy(update={"intra_hour_vol": 0.0})
    quarter = generate_scenarios(BitcoinMarket(), [flat], Horizon(days=30, step_minutes=15), range(4), seed=3)
    np.testing.assert_allclose(quarter.power_price("X"), np.repeat(hourly.power_price("X"), 4, axis=1))


def test_ou_is_exact_at_fifteen_minutes():
    """Log price deviation: stationary variance sigma^2 / 2 kappa, lag-one correlation exp(-kappa dt)."""
    market = PowerMarket(
        id="X",
        mean_price_usd_per_mwh=40.0,
        daily_shape_amplitude=0.0,
        seasonal_amplitude=0.0,
        spike_prob_per_hour=0.0,
        vol_per_sqrt_day=0.5,
        reversion_per_day=2.0,
        intra_hour_vol=0.0,
    )
    prices = generate_scenarios(BitcoinMarket(), [market], Horizon(days=20, step_minutes=15), range(60), seed=8)
    x = np.log(prices.power_price("X") / 40.0)
    assert x.var() == pytest.approx(0.5**2 / (2 * 2.0), rel=0.06)
    lag = np.mean((x[:, 1:] - x.mean()) * (x[:, :-1] - x.mean())) / x.var()
    assert lag == pytest.approx(np.exp(-2.0 * 0.25 / 24), abs=0.002)  # 0.97938; hourly would be 0.92


@pytest.mark.parametrize("decay_hours", [3.0, 0.25])
def test_spikes_keep_their_mean_at_fifteen_minutes_and_short_ones_last_a_step(decay_hours):
    market = PowerMarket(
        id="X",
        mean_price_usd_per_mwh=40.0,
        seasonal_amplitude=0.0,
        spike_prob_per_hour=0.02,
        spike_decay_hours=decay_hours,
    )
    prices = generate_scenarios(BitcoinMarket(), [market], Horizon(days=91, step_minutes=15), range(40), seed=6)
    expected = 40.0 + expected_spike_usd_per_mwh(market)  # 76 with 3 h, 43 with 15 minutes
    assert prices.power_price("X").mean() == pytest.approx(expected, rel=0.1)
    if decay_hours == 0.25:
        # a 15-minute spike of mean $600 shows as one step far above its neighbours an hour later
        p = prices.power_price("X")
        high = np.argwhere(p[:, :-4] > 400)
        assert len(high) > 100
        assert np.median(p[high[:, 0], high[:, 1] + 4]) < 100


def test_events_and_calls_cover_whole_steps_at_fifteen_minutes():
    data = small_fleet_data(days=60)
    data["horizon"] = {"start": "2026-12-01", "days": 60, "step_minutes": 15}
    data["markets"][0]["curtailment_events"] = [
        {"name": "storm", "events_per_year": 300, "mean_duration_hours": 0.1, "available_fraction": 0.3}
    ]
    data["markets"][0]["demand_response_calls"] = {"calls_per_year": 200, "call_hours": 0.6}
    fleet = parse_fleet(data)
    scenarios = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(3), seed=2)
    calls = scenarios.dr_called("ercot")
    edges = np.diff(calls.astype(int), axis=1)
    runs = [np.flatnonzero(row == -1) - np.flatnonzero(row == 1)[: len(np.flatnonzero(row == -1))] for row in edges]
    lengths = np.concatenate(runs)
    assert len(lengths) > 10 and np.all(lengths % 3 == 0)  # ceil(0.6 h / 0.25 h) = 3 steps per call
    assert (scenarios.available_fraction("ercot") < 1).any()


def test_hourly_means_by_hand():
    spot = np.array([[10.0, 20.0, 30.0, 40.0, 100.0, 100.0, 0.0, 0.0]])
    quarter = dataclasses.replace(
        hand_scenarios(np.full((1, 8), 40.0), spot, dr_call=np.array([[1, 1, 1, 0, 0, 0, 0, 1]])), step_hours=0.25
    )
    hourly = hourly_means(quarter)
    assert hourly.step_hours == 1.0 and hourly.n_steps == 2
    np.testing.assert_allclose(hourly.power_price("ercot"), [[25.0, 50.0]])
    assert hourly.dr_called("ercot").tolist() == [[True, False]]  # 3 of 4 steps called; 1 of 4 is not
    np.testing.assert_allclose(hourly.hashprice_usd_per_ph_day, 40.0)


# --- economics and plans: 15 minutes against hourly -------------------------------------------


def fifteen_minute_fleet(data: dict):
    quarter = copy.deepcopy(data)
    quarter["horizon"] = {k: v for k, v in data["horizon"].items() if k != "step_hours"} | {"step_minutes": 15}
    return parse_fleet(quarter)


def repeat_within_hours(scenarios: ScenarioSet, k: int = 4) -> ScenarioSet:
    """Hourly paths as 15-minute ones, constant within each hour."""
    values = {}
    for field in dataclasses.fields(scenarios):
        value = getattr(scenarios, field.name)
        if isinstance(value, np.ndarray) and value.ndim >= 2:
            value = np.repeat(value, k, axis=-1)
        values[field.name] = value
    values["step_hours"] = scenarios.step_hours / k
    return ScenarioSet(**values)


def test_a_fifteen_minute_rack_runs_in_the_cheap_quarters_of_an_hour_by_hand():
    """One hour at $10, $10, $100, $100 (+ $2 adder): an S19j Pro rack (30.68 kW x PUE 1.05, breakeven
    ~$46/MWh at $35/PH/day) curtails the whole hour hourly (mean $57) and runs the two cheap quarters."""
    data = small_fleet_data(days=1, scenarios=1)
    data["horizon"]["days"] = 1
    fleet_h, fleet_q = parse_fleet(data), fifteen_minute_fleet(data)
    spot_q = np.tile([10.0, 10.0, 100.0, 100.0], 24)[None]
    quarter = dataclasses.replace(hand_scenarios(np.full((1, 96), 35.0), spot_q), step_hours=0.25)
    hourly = hourly_means(quarter)
    econ_q, econ_h = group_economics(fleet_q, quarter), group_economics(fleet_h, hourly)
    q = 1  # s-old: spot site, index + $2 adder
    kw = 104 * 29.5 * 10 / 1000 * fleet_q.site("spot").pue_mining  # 10 machines of 104 TH/s at 29.5 J/TH
    assert fleet_q.site("spot").pue_mining == 1.05
    revenue_per_hour = 1040 * 35 / 1000 / 24 * 0.98  # TH/s x hashprice per TH-hour after the 2% pool fee
    assert econ_h.hash_revenue_usd[q].sum() == 0.0  # $57/MWh all day: never runs
    assert econ_q.hash_revenue_usd[q].sum() == pytest.approx(24 * 2 * 0.25 * revenue_per_hour)
    assert econ_q.power_cost_usd[q].sum() == pytest.approx(24 * 2 * 0.25 * kw / 1000 * 12.0)
    assert econ_q.run_fraction[q, 0] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def tiny():
    data = small_fleet_data(days=3, scenarios=6)
    data["markets"][0]["intra_hour_vol"] = 0.4  # a spot market that swings within the hour
    return parse_fleet(data), fifteen_minute_fleet(data)


def plan(fleet, economics, risk):
    model = build_compact_model(fleet, economics, risk)
    outcome = solve(model, time_limit_s=60, mip_rel_gap=0.0)
    return outcome.objective_usd, extract_allocation(model, fleet)


@pytest.mark.parametrize("risk", RISKS, ids=lambda r: r.objective.value)
def test_fifteen_minute_plan_equals_hourly_when_prices_are_constant_within_each_hour(tiny, risk):
    fleet_h, fleet_q = tiny
    hourly = generate_scenarios(fleet_h.bitcoin, fleet_h.markets, fleet_h.horizon, range(6), fleet_h.scenarios.seed)
    quarter = repeat_within_hours(hourly)
    econ_h, econ_q = group_economics(fleet_h, hourly), group_economics(fleet_q, quarter)
    np.testing.assert_allclose(econ_q.mine_value_usd, econ_h.mine_value_usd, rtol=1e-10, atol=1e-6)
    value_h, plan_h = plan(fleet_h, econ_h, risk)
    value_q, plan_q = plan(fleet_q, econ_q, risk)
    assert value_q == pytest.approx(value_h, rel=1e-9)
    assert plan_q.lifecycle_counts(fleet_q) == plan_h.lifecycle_counts(fleet_h)
    assert value_q == pytest.approx(brute_force(fleet_q, econ_q, risk), rel=1e-7, abs=1e-4)
    assert value_h == pytest.approx(brute_force(fleet_h, econ_h, risk), rel=1e-7, abs=1e-4)


@pytest.mark.parametrize("risk", RISKS, ids=lambda r: r.objective.value)
def test_fifteen_minute_plan_beats_hourly_on_the_same_paths_averaged_to_hours(tiny, risk):
    fleet_h, fleet_q = tiny
    quarter = generate_scenarios(fleet_q.bitcoin, fleet_q.markets, fleet_q.horizon, range(6), fleet_q.scenarios.seed)
    hourly = hourly_means(quarter)
    econ_h, econ_q = group_economics(fleet_h, hourly), group_economics(fleet_q, quarter)
    value_h, plan_h = plan(fleet_h, econ_h, risk)
    value_q, _ = plan(fleet_q, econ_q, risk)
    assert value_q == pytest.approx(brute_force(fleet_q, econ_q, risk), rel=1e-7, abs=1e-4)
    assert value_h == pytest.approx(brute_force(fleet_h, econ_h, risk), rel=1e-7, abs=1e-4)
    assert value_q > value_h + 10.0  # dollars: the intra-hour swings are worth something to a spot miner
    # the hourly plan, dispatched every 15 minutes, earns at least its hourly value in every scenario
    # (max(a, 0) + max(b, 0) >= max(a + b, 0)), and at most the 15-minute optimum
    on_hours = scenario_profits_usd(fleet_h, econ_h, plan_h)
    on_quarters = scenario_profits_usd(fleet_q, econ_q, plan_h)
    assert np.all(on_quarters >= on_hours - 1e-6) and (on_quarters > on_hours + 1.0).any()
    assert risk_objective_value(on_quarters, risk.objective.value, risk.alpha, risk.weight) <= value_q + 1e-6


def test_plan_reports_the_value_of_fifteen_minute_dispatch(tiny):
    from solvers.planner import plan_fleet

    fleet_h, fleet_q = tiny
    result, _ = plan_fleet(fleet_q, local=True)
    quarter = generate_scenarios(fleet_q.bitcoin, fleet_q.markets, fleet_q.horizon, range(6), fleet_q.scenarios.seed)
    risk = fleet_q.risk
    value_q, _ = plan(fleet_q, group_economics(fleet_q, quarter), risk)
    value_h, _ = plan(fleet_h, group_economics(fleet_h, hourly_means(quarter)), risk)
    sub = result.subhourly
    assert sub is not None and sub.step_minutes == 15
    assert sub.objective_usd == pytest.approx(value_q, rel=1e-9)
    assert sub.hourly_objective_usd == pytest.approx(value_h, rel=1e-9)
    assert sub.value_usd == pytest.approx(value_q - value_h, rel=1e-6) and sub.value_usd > 10.0
    hourly_result, _ = plan_fleet(fleet_h, local=True)
    assert hourly_result.subhourly is None
    # the gRPC Plan carries it (field 50), and a 15-minute fleet crosses the contract with its step
    from services.convert import fleet_from_message, fleet_to_message, plan_from_message, plan_to_message

    message = plan_to_message(result)
    assert message.HasField("subhourly") and message.subhourly.value_usd == pytest.approx(sub.value_usd)
    assert plan_from_message(message).subhourly == sub
    assert not plan_to_message(hourly_result).HasField("subhourly")
    assert fleet_to_message(fleet_q).horizon.step_minutes == 15
    assert fleet_from_message(fleet_to_message(fleet_q)).horizon == fleet_q.horizon


def test_scenario_files_at_fifteen_minutes(tmp_path, tiny):
    _, fleet_q = tiny
    quarter = generate_scenarios(fleet_q.bitcoin, fleet_q.markets, fleet_q.horizon, range(2), seed=1)
    path = tmp_path / "quarter.npz"
    save_scenarios(path, quarter)
    with np.load(path) as arrays:
        assert int(arrays["step_minutes"]) == 15 and "step_hours" not in arrays
    loaded = load_scenarios(path, ["ercot"], fleet_q.horizon.n_steps, 0.25)
    assert loaded.step_hours == 0.25
    np.testing.assert_array_equal(loaded.power_price("ercot"), quarter.power_price("ercot"))
    with pytest.raises(ScenarioFileError, match="is 15 min but the horizon uses 60 min steps") as caught:
        load_scenarios(path, ["ercot"], None, 1.0)
    assert caught.value.field == "step_minutes"
