"""Direct market inputs: a pinned hashprice or power price replaces the generated path, nothing else."""

import numpy as np
import pytest

from optimizer.fleet import FleetError, parse_fleet
from optimizer.scenarios import generate_scenarios


def _scenarios(data, count=3):
    fleet = parse_fleet(data)
    return generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(count), 7)


def test_pinned_hashprice_level_is_the_hashprice_of_every_step(tiny_fleet_data):
    free = _scenarios(tiny_fleet_data)
    tiny_fleet_data["bitcoin"] = {"hashprice_usd_per_ph_day": 30.0}
    pinned = _scenarios(tiny_fleet_data)
    assert np.all(pinned.hashprice_usd_per_ph_day == 30.0)  # $30 means $30, not $31.09 through the hashrate
    np.testing.assert_array_equal(pinned.power_price_usd_per_mwh, free.power_price_usd_per_mwh)  # same draws
    np.testing.assert_array_equal(pinned.btc_price_usd, free.btc_price_usd)


def test_pinned_power_path_per_month(tiny_fleet_data):
    tiny_fleet_data["horizon"].update(days=45)  # 1 Dec - 14 Jan
    tiny_fleet_data["markets"][0]["pinned_price_usd_per_mwh"] = [40.0, 55.0]
    s = _scenarios(tiny_fleet_data)
    power = s.power_price("ercot_west")
    assert np.all(power[:, : 31 * 24] == 40.0) and np.all(power[:, 31 * 24 :] == 55.0)
    assert np.std(s.hashprice_usd_per_ph_day) > 0  # hashprice still from the Monte Carlo


def test_pinned_values_are_validated(tiny_fleet_data):
    tiny_fleet_data["bitcoin"] = {"hashprice_usd_per_ph_day": -3}
    with pytest.raises(FleetError, match="bitcoin.hashprice_usd_per_ph_day"):
        parse_fleet(tiny_fleet_data)
    tiny_fleet_data["bitcoin"] = {"hashprice_usd_per_ph_day": []}
    with pytest.raises(FleetError, match="at least one value"):
        parse_fleet(tiny_fleet_data)


def test_pinned_inputs_cross_the_grpc_contract(tiny_fleet_data):
    from services import convert

    tiny_fleet_data["bitcoin"] = {"hashprice_usd_per_ph_day": 30.0}
    tiny_fleet_data["markets"][0]["pinned_price_usd_per_mwh"] = [40.0, 55.0]
    fleet = parse_fleet(tiny_fleet_data)
    assert fleet.bitcoin.hashprice_usd_per_ph_day == [30.0]  # a level is a one-value path
    assert convert.fleet_from_message(convert.fleet_to_message(fleet)) == fleet
