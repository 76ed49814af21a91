"""Run/curtail decisions: hand arithmetic, and the same rule the plan's hourly economics apply."""

import math

import numpy as np
import pytest

from optimizer.allocation import Allocation, Mode, check_feasible, site_profits
from optimizer.dispatch import (
    DispatchInputError,
    build_dispatch_table,
    decide,
    network_hashprice_usd_per_ph_day,
    site_conditions,
    site_prices_usd_per_mwh,
)
from optimizer.economics import group_economics, rack_margin_usd, rack_meter_kw, site_power_price_usd_per_mwh
from optimizer.fleet import parse_fleet
from optimizer.rack_ranges import expand, group_range
from optimizer.scenarios import generate_scenarios
from tests.fleets import hand_scenarios, small_fleet_data


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
    table = build_dispatch_table(fleet, {"g": 5}, {"g": [group_range("g", 0, 5)]})
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
    assert expand(table.rack_ranges[0])[-1] == "g-00004"


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


# --- take-or-pay: the run rule prices a drawn MWh at the resale it forgoes ---------------------


def test_take_or_pay_runs_against_spot_minus_the_resale_fee_by_hand():
    contract = {"type": "take_or_pay", "price_usd_per_mwh": 30, "resale_fee_usd_per_mwh": 2}
    fleet = parse_fleet(one_group_fleet(contract))
    table = build_dispatch_table(fleet, {"g": 5})
    # breakeven at 40 $/PH/day: 1.633333 $/h / 0.021 MWh/h = 77.78 $/MWh. Spot 79 is above it, but a MWh
    # drawn forgoes only 79 - 2 = 77 $ of resale: run. (The fixed 30 $/MWh is paid for the block either way.)
    prices = site_prices_usd_per_mwh(table, {"s": 79.0})
    assert prices.tolist() == [77.0]
    run = decide(table, prices, 40.0)
    assert run.run.tolist() == [True] and run.racks_run.tolist() == [5]
    assert run.margin_usd_per_rack_hour[0] == pytest.approx(1.633333333 - 0.021 * 77)
    assert run.power_price_usd_per_mwh[0] == 77.0
    # spot 80: 78 > 77.78, curtail
    curtail = decide(table, site_prices_usd_per_mwh(table, {"s": 80.0}), 40.0)
    assert curtail.run.tolist() == [False] and curtail.racks_run.tolist() == [0]
    assert curtail.margin_usd_per_rack_hour[0] == pytest.approx(1.633333333 - 0.021 * 78)
    # the market's spot gives the same marginal price
    assert site_prices_usd_per_mwh(table, {}, {"m": 79.0}).tolist() == [77.0]
    with pytest.raises(DispatchInputError) as err:  # the contract price is no default: the spot is needed
        site_prices_usd_per_mwh(table, {})
    assert err.value.field == "power_price_usd_per_mwh_by_site[s]"


def test_market_spot_prices_index_and_fixed_sites_by_hand():
    index = parse_fleet(one_group_fleet({"type": "index", "adder_usd_per_mwh": 3}))
    table = build_dispatch_table(index, {"g": 1})
    assert site_prices_usd_per_mwh(table, {}, {"m": 50.0}).tolist() == [53.0]  # spot + adder
    assert site_prices_usd_per_mwh(table, {"s": 50.0}, {"m": 10.0}).tolist() == [50.0]  # the site's own price wins
    fixed = build_dispatch_table(parse_fleet(one_group_fleet({"type": "fixed", "price_usd_per_mwh": 30})), {"g": 1})
    assert site_prices_usd_per_mwh(fixed, {}, {"m": 500.0}).tolist() == [30.0]  # a fixed price ignores spot
    with pytest.raises(DispatchInputError) as err:
        site_prices_usd_per_mwh(table, {}, {"nowhere": 50.0})
    assert err.value.field == "spot_price_usd_per_mwh_by_market[nowhere]"
    with pytest.raises(DispatchInputError):
        site_prices_usd_per_mwh(table, {}, {"m": math.inf})


@pytest.mark.parametrize(
    "contract",
    [
        {"type": "index", "adder_usd_per_mwh": 2},
        {"type": "take_or_pay", "price_usd_per_mwh": 38, "resale_fee_usd_per_mwh": 5},
    ],
)
def test_market_spot_gives_the_marginal_price_of_the_economics(contract):
    """Every (scenario, hour): the site prices from the market spot are optimizer.economics' marginal prices,
    and the groups run exactly when economics.py runs them."""
    data = small_fleet_data(days=2, scenarios=3)
    data["sites"][1]["contract"] = contract
    fleet = parse_fleet(data)
    scenarios = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(3), fleet.scenarios.seed)
    table = build_dispatch_table(fleet, {g.id: g.racks for g in fleet.rack_groups})
    site_price = np.stack([site_power_price_usd_per_mwh(s, scenarios) for s in fleet.sites])  # [sites, S, T]
    expected = np.stack([np.greater(*rack_margin_usd(fleet, g, scenarios)) for g in range(len(fleet.rack_groups))])
    spot = scenarios.power_price("ercot")
    for s in range(scenarios.n_scenarios):
        for t in range(scenarios.n_steps):
            prices = site_prices_usd_per_mwh(table, {}, {"ercot": float(spot[s, t])})
            np.testing.assert_allclose(prices, site_price[:, s, t], rtol=0, atol=1e-9)
            decision = decide(table, prices, float(scenarios.hashprice_usd_per_ph_day[s, t]))
            assert decision.run.tolist() == expected[:, s, t].tolist(), (s, t)


# --- a curtailment event or a demand-response call now ----------------------------------------

# small_fleet_data machines at 36 $/PH/day and 30 $/MWh, PUE 1.05 (as tests/optimizer/test_power_markets.py):
OLD_KW = 10 * 104 * 29.5 / 1000 * 1.05  # 32.214 kW per s-old rack at the meter
NEW_KW = 10 * 200 * 17.5 / 1000 * 1.05  # 36.75 kW per s-new rack


def event_fleet(contract: dict | None = None):
    """small_fleet_data for a day: the 'spot' site on a fixed 30 $/MWh (or `contract`), AI live at once,
    a demand-response programme at both sites, and an offer with a cheaper SLA."""
    data = small_fleet_data(days=1, scenarios=1)
    data["sites"][1]["contract"] = contract or {"type": "fixed", "price_usd_per_mwh": 30}
    data["sites"][1]["ai"]["lead_time_days"] = 0
    data["markets"][0]["demand_response_calls"] = {"calls_per_year": 10, "call_hours": 1}
    for site in data["sites"]:
        site["demand_response"] = {"credit_usd_per_mw_month": 6_000, "max_mw": 0.2}
    data["lease_offers"].append({**data["lease_offers"][0], "id": "cheap-sla", "sla_penalty_usd_per_mwh": 200})
    return parse_fleet(data)


def mining(old: int, new: int, ai_new: int = 0, fixed_old: int = 4) -> dict:
    return {
        "f-old": {Mode.MINE: fixed_old, Mode.AI: 0, Mode.IDLE: 4 - fixed_old},
        "s-old": {Mode.MINE: old, Mode.AI: 0, Mode.IDLE: 3 - old},
        "s-new": {Mode.MINE: new, Mode.AI: ai_new, Mode.IDLE: 3 - new - ai_new},
    }


def table_for(fleet, allocation: Allocation):
    assert check_feasible(fleet, allocation) == []
    racks = {g: counts[Mode.MINE] for g, counts in allocation.racks.items()}
    return build_dispatch_table(fleet, racks, allocation=allocation)


def run_now(table, hashprice=36.0, available=None, calls=(), prices=None):
    conditions = site_conditions(table, available or {}, list(calls))
    decision = decide(table, site_prices_usd_per_mwh(table, prices or {}), hashprice, conditions)
    return dict(zip(table.group_ids, decision.racks_run.tolist(), strict=True)), decision


def test_an_event_fills_the_limit_with_the_best_margin_per_kw_first():
    fleet = event_fleet()
    table = table_for(fleet, Allocation(mining(3, 3)))
    # 100 kW at "spot": s-new earns 0.05 $/kWh, s-old 0.0175: 100 / 36.75 = 2.72 s-new racks in the LP,
    # so 2 whole racks run, s-old none; the "fixed" site has no event and runs its 4 racks (44 $/MWh < breakeven)
    racks, decision = run_now(table, available={"spot": 0.1})
    assert racks == {"f-old": 4, "s-old": 0, "s-new": 2}
    assert decision.lp_racks_run.tolist() == pytest.approx([4, 0, 100 / NEW_KW])
    [spot] = decision.sites
    assert spot.site == "spot" and spot.available_mw == 0.1 and not spot.dr_call
    assert spot.run_mw == pytest.approx(2 * NEW_KW / 1000) and spot.shed_ai_mw == 0.0
    # a limit above the load binds nothing
    assert run_now(table, available={"spot": 1.0})[0] == {"f-old": 4, "s-old": 3, "s-new": 3}
    # no power: nothing runs
    assert run_now(table, available={"spot": 0.0})[0] == {"f-old": 4, "s-old": 0, "s-new": 0}


def test_ai_keeps_priority_and_sheds_only_above_the_limit():
    fleet = event_fleet()
    lease = {("colo", "spot"): 0.05}  # 50 kW IT = 65 kW at PUE 1.3
    table = table_for(fleet, Allocation(mining(3, 1, ai_new=2), frozenset({"spot"}), lease))
    # 100 kW: AI takes 65, mining 35 kW: 0.95 of the s-new rack in the LP, no whole rack
    racks, decision = run_now(table, available={"spot": 0.1})
    assert racks == {"f-old": 4, "s-old": 0, "s-new": 0}
    assert decision.lp_racks_run[2] == pytest.approx(35 / NEW_KW)
    assert decision.sites[0].ai_load_mw == pytest.approx(0.065) and decision.sites[0].shed_ai_mw == 0.0
    # 50 kW: 15 kW of AI shed at the meter, 15 / 1.3 kW of critical IT load; no mining
    racks, decision = run_now(table, available={"spot": 0.05})
    assert racks == {"f-old": 4, "s-old": 0, "s-new": 0}
    assert decision.sites[0].shed_ai_mw == pytest.approx(0.015 / 1.3)


def test_a_demand_response_call_drops_the_committed_mw_worst_margins_first():
    fleet = event_fleet()
    planned_kw = 3 * OLD_KW + 3 * NEW_KW  # 206.89 kW
    # committed exactly two s-old racks: the call leaves 3 s-new and 1 s-old running
    table = table_for(fleet, Allocation(mining(3, 3), dr_mw={"spot": 2 * OLD_KW / 1000}))
    racks, decision = run_now(table, calls=["spot"])
    assert racks == {"f-old": 4, "s-old": 1, "s-new": 3}
    assert decision.sites[0].run_mw == pytest.approx((planned_kw - 2 * OLD_KW) / 1000)
    assert decision.sites[0].dr_call and decision.sites[0].available_mw is None
    # 50 kW committed: 156.89 kW left, 3 s-new (110.25) and 1.45 s-old racks in the LP: 1 s-old runs
    table = table_for(fleet, Allocation(mining(3, 3), dr_mw={"spot": 0.05}))
    racks, decision = run_now(table, calls=["spot"])
    assert racks == {"f-old": 4, "s-old": 1, "s-new": 3}
    assert decision.lp_racks_run[1] == pytest.approx((planned_kw - 50 - 3 * NEW_KW) / OLD_KW)
    # a call at a site that committed nothing changes nothing
    assert run_now(table, calls=["fixed"])[0] == {"f-old": 4, "s-old": 3, "s-new": 3}
    # s-old already loses money at 20 $/PH/day: the call is met by the price rule, s-new keeps running
    assert run_now(table, hashprice=20.0, calls=["spot"])[0] == {"f-old": 0, "s-old": 0, "s-new": 3}
    # an event and a call together: the tighter of the two
    assert run_now(table, available={"spot": 0.08}, calls=["spot"])[0] == {"f-old": 4, "s-old": 0, "s-new": 2}


def test_conditions_name_the_bad_field():
    table = table_for(event_fleet(), Allocation(mining(3, 3)))
    assert site_conditions(table, {}, []) is None  # the fast path
    for available, calls, field in [
        ({"mars": 1.0}, [], "available_mw_by_site[mars]"),
        ({"spot": -1.0}, [], "available_mw_by_site[spot]"),
        ({"spot": math.nan}, [], "available_mw_by_site[spot]"),
        ({}, ["spot", "mars"], "dr_call_sites[1]"),
    ]:
        with pytest.raises(DispatchInputError) as err:
            site_conditions(table, available, calls)
        assert err.value.field == field


def test_the_step_is_dispatched_as_the_plan_evaluation_dispatches_it():
    """For random prices, events and calls: the LP racks of Dispatch draw exactly the energy the plan's
    evaluation (group_economics on a one-step scenario, then site_profits) gives every site."""
    contract = {"type": "take_or_pay", "price_usd_per_mwh": 38, "resale_fee_usd_per_mwh": 2}
    fleet = event_fleet(contract)
    lease = {("colo", "spot"): 0.05, ("cheap-sla", "spot"): 0.04}  # 117 kW of AI at the meter
    allocation = Allocation(
        mining(3, 0, ai_new=3, fixed_old=3), frozenset({"spot"}), lease, dr_mw={"spot": 0.05, "fixed": 0.04}
    )
    table = table_for(fleet, allocation)
    meter_kw = {g.id: rack_meter_kw(fleet, g) for g in fleet.rack_groups}
    rng = np.random.default_rng(4)
    binding = 0
    for _ in range(40):
        hashprice, spot = rng.uniform(15, 60), rng.uniform(-20, 120)
        fraction, called = rng.choice([1.0, rng.uniform(0, 1)]), bool(rng.integers(2))
        scenario = hand_scenarios([[hashprice]], [[spot]], [[fraction]], [[called]])
        profits = site_profits(fleet, group_economics(fleet, scenario), allocation)
        available = {s.id: fraction * s.capacity_mw for s in fleet.sites} if fraction < 1 else {}
        conditions = site_conditions(table, available, ["fixed", "spot"] if called else [])
        decision = decide(table, site_prices_usd_per_mwh(table, {}, {"ercot": spot}), hashprice, conditions)
        for n, site in enumerate(fleet.sites):
            drawn_kw = sum(
                decision.lp_racks_run[g] * meter_kw[gid]
                for g, gid in enumerate(table.group_ids)
                if table.group_sites[g] == site.id
            )
            assert drawn_kw / 1000 == pytest.approx(profits.mining_energy_mwh[n, 0], abs=1e-9)
            if conditions is not None:
                state = next(st for st in decision.sites if st.site == site.id)
                assert state.shed_ai_mw == pytest.approx(profits.lost_ai_mwh[n, 0], abs=1e-12)
        assert np.array_equal(decision.racks_run, np.floor(decision.lp_racks_run + 1e-9))
        binding += int(np.any(decision.racks_run < np.where(decision.run, table.racks, 0)))
    assert binding > 5  # events and calls did bind in a good share of the draws
