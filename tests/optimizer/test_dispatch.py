"""Run/curtail decisions: hand arithmetic, and the same rule the plan's hourly economics apply."""

import math

import numpy as np
import pytest

from optimizer.dispatch import (
    DispatchInputError,
    build_dispatch_table,
    decide,
    network_hashprice_usd_per_ph_day,
    site_prices_usd_per_mwh,
)
from optimizer.economics import rack_margin_usd, site_power_price_usd_per_mwh
from optimizer.fleet import parse_fleet
from optimizer.scenarios import generate_scenarios
from tests.conftest import small_fleet_data


def one_group_fleet(contract: dict) -> dict:
    # A rack of 10 machines at 100 TH/s and 20 J/TH: 1,000 TH/s and 20 kW; PUE 1.05, pool fee 2%.
    return {
        "name": "hand",
        "pool_fee_fraction": 0.02,
        "markets": [{"id": "m", "mean_price_usd_per_mwh": 40}],
        "machines": [{"id": "a", "hashrate_ths": 100, "efficiency_j_per_th": 20}],
        "sites": [{"id": "s", "market": "m", "capacity_mw": 1, "pue_mining": 1.05, "contract": contract}],
        "rack_groups": [{"id": "g", "site": "s", "machine": "a", "racks": 7, "machines_per_rack": 10}],
    }


def test_hand_arithmetic_run_and_curtail():
    fleet = parse_fleet(one_group_fleet({"type": "index", "adder_usd_per_mwh": 0}))
    table = build_dispatch_table(fleet, {"g": 5}, {"g": [f"g-{k:05d}" for k in range(5)]})
    # revenue/h = 1000 TH/s x 40 $/PH/day / 1000 / 24 x 0.98 = 1.633333; cost/h = 20 kW x 1.05 / 1000 x price
    # breakeven = 1.633333 / 0.021 = 77.7778 $/MWh
    run = decide(table, np.array([50.0]), 40.0)
    assert run.run.tolist() == [True]
    assert run.margin_usd_per_rack_hour[0] == pytest.approx(1.633333333 - 0.021 * 50)
    assert run.breakeven_power_price_usd_per_mwh[0] == pytest.approx(77.777777, rel=1e-6)
    curtail = decide(table, np.array([80.0]), 40.0)
    assert curtail.run.tolist() == [False]
    assert curtail.margin_usd_per_rack_hour[0] == pytest.approx(1.633333333 - 0.021 * 80)
    assert table.meter_mw[0] == pytest.approx(5 * 20 * 1.05 / 1000)  # 5 mining racks, not all 7
    assert table.rack_ids[0][-1] == "g-00004"


def test_network_hashprice_by_hand():
    fleet = parse_fleet(one_group_fleet({"type": "fixed", "price_usd_per_mwh": 30}))
    table = build_dispatch_table(fleet, {"g": 1})
    # 144 blocks/day x (3.125 + 0.025) BTC x 67,800 USD / 900,000 PH/s = 34.1712 $/PH/day
    assert network_hashprice_usd_per_ph_day(table, 67_800, 900, 0.025, 975_000) == pytest.approx(34.1712)
    # after the halving at block 1,050,000 the subsidy is 1.5625 BTC
    assert network_hashprice_usd_per_ph_day(table, 67_800, 900, 0.025, 1_050_000) == pytest.approx(
        144 * 1.5875 * 67_800 / 900_000
    )
    # fees and height default to the fleet's (0.025 BTC, block 975,000)
    assert network_hashprice_usd_per_ph_day(table, 67_800, 900) == pytest.approx(34.1712)
    with pytest.raises(DispatchInputError) as err:
        network_hashprice_usd_per_ph_day(table, 67_800, 0)
    assert err.value.field == "network.network_hashrate_ehs"


def test_prices_default_to_fixed_contracts_and_index_sites_need_one():
    fleet = parse_fleet(small_fleet_data())  # site "fixed" at 44 $/MWh, site "spot" on an index contract
    table = build_dispatch_table(fleet, {"f-old": 4, "s-old": 3, "s-new": 0})
    assert table.group_ids == ("f-old", "s-old")  # groups without mining racks have nothing to dispatch
    assert site_prices_usd_per_mwh(table, {"spot": 20.0}).tolist() == [44.0, 20.0]
    assert site_prices_usd_per_mwh(table, {"spot": 20.0, "fixed": 10.0}).tolist() == [10.0, 20.0]
    with pytest.raises(DispatchInputError) as err:
        site_prices_usd_per_mwh(table, {})
    assert err.value.field == "power_price_usd_per_mwh_by_site[spot]"
    with pytest.raises(DispatchInputError) as err:
        site_prices_usd_per_mwh(table, {"spot": 20.0, "mars": 1.0})
    assert err.value.field == "power_price_usd_per_mwh_by_site[mars]"
    with pytest.raises(DispatchInputError):
        site_prices_usd_per_mwh(table, {"spot": math.nan})


def test_same_decisions_as_the_hourly_economics():
    """Every (scenario, hour, group): dispatch on that hour's prices runs exactly when economics.py runs."""
    fleet = parse_fleet(small_fleet_data(days=2, scenarios=3))
    scenarios = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(3), fleet.scenarios.seed)
    table = build_dispatch_table(fleet, {g.id: g.racks for g in fleet.rack_groups})
    site_price = np.stack([site_power_price_usd_per_mwh(s, scenarios) for s in fleet.sites])  # [sites, S, T]
    expected = np.stack([np.greater(*rack_margin_usd(fleet, g, scenarios)) for g in range(len(fleet.rack_groups))])
    hashprice = scenarios.hashprice_usd_per_ph_day
    runs = 0
    for s in range(scenarios.n_scenarios):
        for t in range(scenarios.n_steps):
            decision = decide(table, site_price[:, s, t], float(hashprice[s, t]))
            assert decision.run.tolist() == expected[:, s, t].tolist(), (s, t)
            below = decision.power_price_usd_per_mwh < decision.breakeven_power_price_usd_per_mwh
            assert decision.run.tolist() == below.tolist()
            runs += int(decision.run.sum())
    assert 0 < runs < expected.size  # the sample has both running and curtailed hours
