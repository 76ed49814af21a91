"""Scenario files: round trip, hand-made user files, and errors that name their array."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.market import BitcoinMarket, Horizon, PowerMarket
from optimizer.scenario_io import ScenarioFileError, load_scenarios, save_scenarios
from optimizer.scenarios import generate_scenarios

ERCOT = "power_price_usd_per_mwh__ERCOT_HB_NORTH"
S, T = 3, 48


@pytest.fixture
def generated():
    markets = [
        PowerMarket(id="ERCOT_HB_NORTH", mean_price_usd_per_mwh=40.0),
        PowerMarket(id="PJM_WEST", mean_price_usd_per_mwh=55.0),
    ]
    return generate_scenarios(BitcoinMarket(), markets, Horizon(days=2), [4, 9, 11], seed=3)


def write(tmp_path, **arrays):
    path = tmp_path / "scenarios.npz"
    np.savez(path, **arrays)
    return path


def user_arrays(**overrides):
    """A minimal hand-made file: hashprice and one power market."""
    rng = np.random.default_rng(0)
    arrays = {
        "step_hours": np.int64(1),
        "hashprice_usd_per_ph_day": rng.uniform(30, 40, (S, T)),
        ERCOT: rng.uniform(20, 60, (S, T)),
    }
    arrays.update(overrides)
    return {name: value for name, value in arrays.items() if value is not None}


def error_for(tmp_path, arrays, **load_args) -> ScenarioFileError:
    with pytest.raises(ScenarioFileError) as caught:
        load_scenarios(write(tmp_path, **arrays), **load_args)
    return caught.value


def test_generated_scenarios_round_trip_exactly(tmp_path, generated):
    path = tmp_path / "plan_scenarios.npz"
    save_scenarios(path, generated)
    loaded = load_scenarios(path, required_markets=["PJM_WEST"], expected_steps=48, expected_step_hours=1)
    assert loaded.markets == generated.markets and loaded.step_hours == generated.step_hours
    for name in (
        "indices",
        "btc_price_usd",
        "network_hashrate_ehs",
        "fees_btc_per_block",
        "subsidy_btc",
        "hashprice_usd_per_ph_day",
        "power_price_usd_per_mwh",
    ):
        assert np.array_equal(getattr(loaded, name), getattr(generated, name)), name


def test_save_writes_exactly_the_given_path(tmp_path, generated):
    path = tmp_path / "scenarios.data"
    save_scenarios(path, generated)
    assert path.exists() and not (tmp_path / "scenarios.data.npz").exists()


def test_user_file_with_only_hashprice_and_power_loads(tmp_path):
    arrays = user_arrays()
    loaded = load_scenarios(write(tmp_path, **arrays), required_markets=["ERCOT_HB_NORTH"], expected_steps=T)
    assert loaded.markets == ("ERCOT_HB_NORTH",)
    assert np.array_equal(loaded.hashprice_usd_per_ph_day, arrays["hashprice_usd_per_ph_day"])
    assert np.array_equal(loaded.power_price("ERCOT_HB_NORTH"), arrays[ERCOT])
    assert np.isnan(loaded.btc_price_usd).all() and np.isnan(loaded.network_hashrate_ehs).all()
    assert np.all(loaded.fees_btc_per_block == 0.025) and np.all(loaded.subsidy_btc == 3.125)
    assert np.array_equal(loaded.indices, np.arange(S))


def test_hashprice_is_derived_from_price_and_hashrate(tmp_path):
    arrays = user_arrays(
        hashprice_usd_per_ph_day=None,
        btc_price_usd=np.full((S, T), 67_800.0),
        network_hashrate_ehs=np.full((S, T), 900.0),
    )
    loaded = load_scenarios(write(tmp_path, **arrays))
    assert np.allclose(loaded.hashprice_usd_per_ph_day, 144 * 3.15 * 67_800 / 900e6 * 1000)

    arrays |= {"fees_btc_per_block": np.zeros((S, T)), "subsidy_btc": np.full((S, T), 1.5625)}
    halved = load_scenarios(write(tmp_path, **arrays))
    assert np.allclose(halved.hashprice_usd_per_ph_day, 144 * 1.5625 * 67_800 / 900e6 * 1000)


def test_a_loaded_set_with_unknown_prices_saves_and_loads_again(tmp_path):
    loaded = load_scenarios(write(tmp_path, **user_arrays()))
    again_path = tmp_path / "again.npz"
    save_scenarios(again_path, loaded)
    again = load_scenarios(again_path)
    assert np.array_equal(again.btc_price_usd, loaded.btc_price_usd, equal_nan=True)
    assert np.array_equal(again.hashprice_usd_per_ph_day, loaded.hashprice_usd_per_ph_day)


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"step_hours": None}, "step_minutes", "missing"),
        ({"step_hours": None, "step_minutes": np.int64(7)}, "step_minutes", "one of"),
        ({"step_minutes": np.int64(30)}, "step_hours", "but step_minutes is 30"),
        ({"step_hours": np.int64(5)}, "step_hours", "one of"),
        ({"hashprice_usd_per_ph_day": None}, "btc_price_usd", "missing"),
        ({"hashprice_usd_per_ph_day": None, "btc_price_usd": np.ones((S, T))}, "network_hashrate_ehs", "missing"),
        ({ERCOT: np.ones((S, T + 1))}, ERCOT, "shape"),
        ({"hashprice_usd_per_ph_day": np.ones(T)}, "hashprice_usd_per_ph_day", "2-D"),
        ({"fees_btc_per_block": np.ones((S - 1, T))}, "fees_btc_per_block", "shape"),
        ({"hashprice_usd_per_ph_day": np.where(np.eye(S, T) > 0, np.nan, 35.0)}, "hashprice_usd_per_ph_day", "finite"),
        ({ERCOT: np.full((S, T), np.inf)}, ERCOT, "finite"),
        ({"hashprice_usd_per_ph_day": np.full((S, T), -1.0)}, "hashprice_usd_per_ph_day", "positive"),
        ({"btc_price_usd": np.zeros((S, T))}, "btc_price_usd", "positive"),
        (
            {
                "hashprice_usd_per_ph_day": None,
                "btc_price_usd": np.ones((S, T)),
                "network_hashrate_ehs": np.zeros((S, T)),
            },
            "network_hashrate_ehs",
            "positive",
        ),
        ({"subsidy_btc": np.full((S, T), -3.125)}, "subsidy_btc", "negative"),
        ({"indices": np.array([0, 0, 1])}, "indices", "distinct"),
        ({"indices": np.arange(S + 1)}, "indices", "one per scenario"),
        ({"hashrate": np.ones((S, T))}, "hashrate", "unknown"),
    ],
)
def test_each_error_names_its_array(tmp_path, overrides, field, words):
    error = error_for(tmp_path, user_arrays(**overrides))
    assert error.field == field
    assert field in str(error) and words in str(error)


def test_market_required_by_the_fleet_must_be_present(tmp_path):
    error = error_for(tmp_path, user_arrays(), required_markets=["ERCOT_HB_NORTH", "PJM_WEST"])
    assert error.field == "power_price_usd_per_mwh__PJM_WEST"
    assert "PJM_WEST" in str(error) and "ERCOT_HB_NORTH" in str(error)


def test_step_count_must_match_the_horizon(tmp_path):
    error = error_for(tmp_path, user_arrays(), expected_steps=2184)
    assert error.field == "hashprice_usd_per_ph_day"
    assert "48 steps" in str(error) and "2184" in str(error)
    assert error_for(tmp_path, user_arrays(), expected_step_hours=2).field == "step_hours"


def test_errors_are_value_errors(tmp_path):
    assert isinstance(error_for(tmp_path, user_arrays(step_hours=None)), ValueError)


def test_not_an_archive_is_a_file_level_error(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("hour,price\n0,40\n")
    with pytest.raises(ScenarioFileError) as caught:
        load_scenarios(path)
    assert caught.value.field is None
    single = tmp_path / "single.npy"
    np.save(single, np.ones(3))
    with pytest.raises(ScenarioFileError, match="single array"):
        load_scenarios(single)


def test_pickled_arrays_are_refused(tmp_path):
    error = error_for(tmp_path, user_arrays(**{ERCOT: np.array([{"price": 40}], dtype=object)}))
    assert error.field == ERCOT
