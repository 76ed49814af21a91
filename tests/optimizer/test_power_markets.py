"""Power markets as miners live them: take-or-pay with resale, demand response, curtailment events.

Hand arithmetic for the contract terms and for single coupled steps; the numpy evaluation against
the dispatch LP for arbitrary plans; the compact model against the textbook extensive form for every
objective; the scenario generator's event frequencies; the scenario file format.
"""

from __future__ import annotations

import copy

import numpy as np
import pyomo.environ as pyo
import pytest

from optimizer.allocation import (
    Allocation,
    Mode,
    check_feasible,
    scenario_profits_usd,
    site_profits,
)
from optimizer.cashflows import monthly_credit_pv
from optimizer.economics import concat_economics, group_economics
from optimizer.extensive import build_extensive_model
from optimizer.fleet import FleetError, load_fleet, parse_fleet
from optimizer.formulation import build_compact_model, extract_allocation, fix_allocation
from optimizer.lifecycles import plan_grid
from optimizer.market import BitcoinMarket, Horizon, PowerMarket
from optimizer.plan_result import site_breakdowns
from optimizer.risk import risk_objective_value
from optimizer.scenario_io import ScenarioFileError, load_scenarios, save_scenarios
from optimizer.scenarios import concat_scenarios, generate_scenarios
from solvers.highs import solve
from tests.fleets import EXAMPLES, RISKS, hand_scenarios, small_fleet_data
from tests.fleets import events_fleet_data as shared_events_fleet_data

# --- hand-made paths --------------------------------------------------------------------------


def one_day_fleet(contract: dict, dr: bool = False, offers: int = 1, ai_lead_days: int = 1):
    """small_fleet_data for one day; the 'spot' site (groups s-old, s-new) gets `contract`."""
    data = small_fleet_data(days=1, scenarios=1)
    data["sites"][1]["contract"] = contract
    data["sites"][1]["ai"]["lead_time_days"] = ai_lead_days
    data["markets"][0]["demand_response_calls"] = {"calls_per_year": 10, "call_hours": 1}
    if dr:
        data["sites"][1]["demand_response"] = {"credit_usd_per_mw_month": 6_000, "max_mw": 0.2}
    if offers == 2:
        data["lease_offers"].append({**data["lease_offers"][0], "id": "cheap-sla", "sla_penalty_usd_per_mwh": 200})
    return parse_fleet(data)


# Per-rack figures at a 36 $/PH/day hashprice and a 30 $/MWh price (small_fleet_data machines, PUE 1.05):
OLD_KW = 10 * 104 * 29.5 / 1000 * 1.05  # 32.214 kW at the meter
NEW_KW = 10 * 200 * 17.5 / 1000 * 1.05  # 36.75 kW
OLD_REVENUE = 1040 * 36 / 1000 / 24 * 0.98  # 1.5288 $/h after the 2% pool fee
NEW_REVENUE = 2000 * 36 / 1000 / 24 * 0.98  # 2.94 $/h
OLD_MARGIN = OLD_REVENUE - OLD_KW * 30 / 1000  # 0.56238 $/h
NEW_MARGIN = NEW_REVENUE - NEW_KW * 30 / 1000  # 1.8375 $/h = 0.05 $ per kWh


def mining(old: int, new: int, ai_new: int = 0) -> dict:
    return {
        "f-old": {Mode.MINE: 0, Mode.AI: 0, Mode.IDLE: 4},
        "s-old": {Mode.MINE: old, Mode.AI: 0, Mode.IDLE: 3 - old},
        "s-new": {Mode.MINE: new, Mode.AI: ai_new, Mode.IDLE: 3 - new - ai_new},
    }


def profit_change(fleet, allocation, hashprice, spot, available=None, dr_call=None) -> float:
    """Profit with the events/calls minus profit on the same paths without them."""
    with_events = hand_scenarios(hashprice, spot, available, dr_call)
    without = hand_scenarios(hashprice, spot)
    return float(
        scenario_profits_usd(fleet, group_economics(fleet, with_events), allocation)[0]
        - scenario_profits_usd(fleet, group_economics(fleet, without), allocation)[0]
    )


# --- contracts --------------------------------------------------------------------------------


def test_take_or_pay_runs_against_resale_and_adds_the_block_by_hand():
    fleet = one_day_fleet({"type": "take_or_pay", "price_usd_per_mwh": 33, "resale_fee_usd_per_mwh": 2})
    spot = np.full(24, 32.0)  # resale 30 $/MWh: the new rack earns 2.94 - 1.1025 = 1.8375 $/h
    spot[:3] = 92.0  # resale 90: new 2.94 < 36.75 kW x 90 $/MWh = 3.31 curtails, and so does old
    spot[3] = 62.0  # resale 60: new 2.94 > 2.205 runs, old 1.5288 < 1.93284 curtails
    econ = group_economics(fleet, hand_scenarios(np.full(24, 36.0), spot))
    new, old = 2, 1
    assert econ.run_fraction[new, 0] == pytest.approx(21 / 24)
    assert econ.run_fraction[old, 0] == pytest.approx(20 / 24)
    assert econ.power_cost_usd[new, :, 0].sum() == pytest.approx(20 * NEW_KW * 30 / 1000 + NEW_KW * 60 / 1000)
    assert econ.mine_value_usd[new, :, 0].sum() == pytest.approx(20 * NEW_MARGIN + (NEW_REVENUE - NEW_KW * 0.06) - 4.0)
    # the whole 0.25 MW block: resold at spot - fee every hour, paid at 33 every hour
    block_resale = 0.25 * (20 * 30 + 3 * 90 + 60)
    assert econ.block_resale_usd[1, :, 0].sum() == pytest.approx(block_resale)
    assert econ.block_payment_usd[1, :, 0].sum() == pytest.approx(0.25 * 24 * 33)
    assert econ.contract_pv_usd[0, 0] == 0.0  # the fixed-price site has no such term
    # what a planner sees: resale = the block not drawn, at spot - fee
    allocation = Allocation(mining(old=3, new=3))
    profits = site_profits(fleet, econ, allocation)
    drawn_mwh = 3 * NEW_KW / 1000 * np.where(np.arange(24) >= 3, 1, 0) + 3 * OLD_KW / 1000 * (np.arange(24) >= 4)
    assert profits.resale_revenue_usd[1, 0] == pytest.approx(((0.25 - drawn_mwh) * (spot - 2)).sum())
    assert profits.power_cost_usd[1, 0] == pytest.approx(0.25 * 24 * 33)
    assert profits.mining_energy_mwh[1, 0] == pytest.approx(drawn_mwh.sum())


def test_leased_ai_under_take_or_pay_forgoes_resale_once_live():
    """The tenant pays the contract price for its power; the site forgoes spot - fee on it from the ready step."""
    spot = np.linspace(10, 80, 48)
    data = small_fleet_data(days=2, scenarios=1)
    data["sites"][1]["contract"] = {"type": "take_or_pay", "price_usd_per_mwh": 33, "resale_fee_usd_per_mwh": 2}
    fleet = parse_fleet(data)  # lead time 1 day: AI draws from step 24
    econ = group_economics(fleet, hand_scenarios(np.full(48, 36.0), spot))
    meter_mwh = 1.3  # one IT MW at PUE 1.3 for one hour
    live = slice(1, None)  # periods from the ready step (24) on
    assert econ.ai_resale_pv_usd_per_mw[1, live, 0].sum() == pytest.approx(meter_mwh * (spot[24:] - 2).sum())
    assert econ.ai_passthrough_pv_usd_per_mw[1, live, 0].sum() == pytest.approx(33 * meter_mwh * 24)
    allocation = Allocation(mining(old=0, new=0, ai_new=2), frozenset({"spot"}), {("colo", "spot"): 0.05})
    profits = site_profits(fleet, econ, allocation)
    assert profits.ai_resale_usd[1, 0] == pytest.approx(0.05 * meter_mwh * (spot[24:] - 2).sum())


def test_fixed_and_index_contracts_keep_their_economics():
    fleet = one_day_fleet({"type": "index", "adder_usd_per_mwh": 2})
    econ = group_economics(fleet, hand_scenarios(np.full(24, 36.0), np.full(24, 28.0)))
    assert econ.mine_value_usd[2, :, 0].sum() == pytest.approx(24 * NEW_MARGIN - 4.0)
    assert not econ.block_resale_usd.any() and not econ.ai_resale_pv_usd_per_mw.any()
    assert econ.n_coupled == 0


# --- single coupled steps by hand -------------------------------------------------------------

FIXED_30 = {"type": "fixed", "price_usd_per_mwh": 30}


def test_a_cap_fills_the_best_margin_per_kw_first():
    fleet = one_day_fleet(FIXED_30)
    available = np.ones(24)
    available[5] = 0.4  # 100 kW of the 250 kW site
    econ = group_economics(fleet, hand_scenarios(np.full(24, 36.0), np.full(24, 30.0), available))
    # events hit the whole market: at the spot site 3 x 36.75 + 3 x 32.214 kW could run against 100 kW,
    # at the fixed site 4 x 32.214 kW against 80 kW; both caps can bind
    assert econ.n_coupled == 2
    change = profit_change(fleet, Allocation(mining(3, 3)), 36.0 * np.ones(24), 30 * np.ones(24), available)
    # s-new earns 0.05 $/kWh, s-old 0.0175: 100 kW all to s-new (2.72 racks), none to s-old
    assert change == pytest.approx(100 * 0.05 - (3 * NEW_MARGIN + 3 * OLD_MARGIN))


def test_a_cap_that_cannot_bind_stays_separable():
    fleet = one_day_fleet(FIXED_30)
    available = np.ones(24)
    available[5] = 0.95  # 237.5 kW > 3 x 36.75 + 3 x 32.214 = 206.9 kW, and no AI is possible at 0 MW offers
    data = small_fleet_data(days=1, scenarios=1)
    data["sites"][1]["contract"] = FIXED_30
    data["sites"][1].pop("ai")
    data["lease_offers"] = []
    fleet = parse_fleet(data)
    econ = group_economics(fleet, hand_scenarios(np.full(24, 36.0), np.full(24, 30.0), available))
    assert econ.n_coupled == 0
    assert econ.mine_value_usd[2, :, 0].sum() == pytest.approx(24 * NEW_MARGIN - 4.0)


def test_ai_keeps_priority_and_loses_only_what_exceeds_the_cap():
    fleet = one_day_fleet(FIXED_30, offers=2, ai_lead_days=0)
    lease = {("colo", "spot"): 0.03, ("cheap-sla", "spot"): 0.02}  # 50 kW IT = 65 kW at PUE 1.3
    allocation = Allocation(mining(3, 1, ai_new=2), frozenset({"spot"}), lease)
    hashprice, spot = np.full(24, 36.0), np.full(24, 30.0)
    available = np.ones(24)
    available[5] = 0.4  # 100 kW: AI 65 kW first, mining gets 35 kW, all to s-new
    unconstrained = 1 * NEW_MARGIN + 3 * OLD_MARGIN
    assert profit_change(fleet, allocation, hashprice, spot, available) == pytest.approx(35 * 0.05 - unconstrained)
    available[5] = 0.2  # 50 kW: 15 kW of AI shed (11.54 IT kW), from the cheap SLA offer first; no mining
    lost_it_mwh = 15 / 1.3 / 1000
    change = profit_change(fleet, allocation, hashprice, spot, available)
    assert change == pytest.approx(-unconstrained - lost_it_mwh * 200)
    profits = site_profits(fleet, group_economics(fleet, hand_scenarios(hashprice, spot, available)), allocation)
    assert profits.lost_ai_mwh[1, 0] == pytest.approx(lost_it_mwh)
    assert profits.lost_ai_hours[1, 0] == 1.0
    assert profits.event_curtailed_mwh[1, 0] == pytest.approx((NEW_KW + 3 * OLD_KW) / 1000)


def test_a_demand_response_call_drops_the_worst_margins_first():
    fleet = one_day_fleet(FIXED_30, dr=True)
    allocation = Allocation(mining(3, 3), dr_mw={"spot": 0.05})
    hashprice, spot, calls = np.full(24, 36.0), np.full(24, 30.0), np.zeros(24, dtype=bool)
    calls[7] = True
    # 50 kW below the planned 206.9 kW: s-new keeps running, s-old gives up 50 kW
    change = profit_change(fleet, allocation, hashprice, spot, dr_call=calls)
    assert change == pytest.approx(-50 * OLD_MARGIN / OLD_KW)
    hashprice[7] = 20.0  # s-old loses money (0.849 < 0.966 $/h) and is off anyway: the call costs nothing
    assert profit_change(fleet, allocation, hashprice, spot, dr_call=calls) == pytest.approx(0.0, abs=1e-9)
    econ = group_economics(fleet, hand_scenarios(hashprice, spot, dr_call=calls))
    credit = site_profits(fleet, econ, allocation).dr_credit_usd[1, 0]
    assert credit == pytest.approx(0.05 * 6_000 * 1 / (365.25 / 12))  # one day of a monthly credit, undiscounted
    assert monthly_credit_pv(6_000, plan_grid(fleet).timeline) == pytest.approx(6_000 / (365.25 / 12))


def test_demand_response_needs_a_programme_and_planned_mining_load():
    fleet = one_day_fleet(FIXED_30, dr=True)
    assert check_feasible(fleet, Allocation(mining(1, 0), dr_mw={"spot": 0.03})) == []
    (too_much,) = check_feasible(fleet, Allocation(mining(1, 0), dr_mw={"spot": 0.04}))
    assert (too_much.constraint, too_much.subject) == ("site_demand_response", "spot")
    assert too_much.field == "sites.spot.demand_response"
    assert "planned mining load" in too_much.message
    # the record carries the amounts: 0.04 MW committed against the planned mining load (one rack at the meter)
    assert too_much.needed == pytest.approx(0.04) and too_much.unit == "MW" and 0.03 <= too_much.limit < 0.04
    (nowhere,) = check_feasible(fleet, Allocation(mining(1, 0), dr_mw={"fixed": 0.01}))
    assert nowhere.field == "sites.fixed.demand_response" and "without a programme" in nowhere.message
    assert (nowhere.needed, nowhere.limit) == (pytest.approx(0.01), 0.0)


# --- the numpy evaluation is the dispatch LP --------------------------------------------------


def events_fleet_data(days: int = 2, scenarios: int = 5) -> dict:
    """The shared events fleet plus a second, cheaper-SLA offer, so AI shedding has an order."""
    data = shared_events_fleet_data(days=days, scenarios=scenarios)
    data["lease_offers"].append(
        {**data["lease_offers"][0], "id": "neo", "min_mw": 0.0, "max_mw": 0.6, "sla_penalty_usd_per_mwh": 150}
    )
    return data


@pytest.fixture(scope="module")
def events_case():
    fleet = parse_fleet(events_fleet_data())
    scenarios = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(5), fleet.scenarios.seed)
    return fleet, scenarios, group_economics(fleet, scenarios)


def random_plans(fleet, rng, count: int):
    """Feasible plans across the space: mining/AI mixes, leases above and below the event caps, DR."""
    plans = []
    while len(plans) < count:
        racks = {}
        for group in fleet.rack_groups:
            ai = int(rng.integers(0, group.racks + 1)) if fleet.can_convert(group) else 0
            mine = int(rng.integers(0, group.racks - ai + 1))
            racks[group.id] = {Mode.MINE: mine, Mode.AI: ai, Mode.IDLE: group.racks - mine - ai}
        base = Allocation(racks, frozenset({"spot"}))
        ai_mw = sum(racks[g.id][Mode.AI] * fleet.rack_power_kw(g) / 1000 for g in fleet.rack_groups)
        colo = float(rng.uniform(0.4, 1.2))
        neo = float(rng.uniform(0, 0.6))
        dr = {s: float(rng.uniform(0, 1)) * min(1.0, _planned_mw(fleet, base, s)) for s in ("fixed", "spot")}
        plan = Allocation(racks, frozenset({"spot"}) if ai_mw else frozenset(), {}, dr)
        if ai_mw >= 0.5:
            plan = Allocation(racks, frozenset({"spot"}), {("colo", "spot"): colo, ("neo", "spot"): neo}, dr)
        if not check_feasible(fleet, plan):
            plans.append(plan)
    return plans


def _planned_mw(fleet, allocation, site_id):
    from optimizer.allocation import planned_mining_kw, present_racks

    grid = plan_grid(fleet)
    n = [s.id for s in fleet.sites].index(site_id)
    return planned_mining_kw(fleet, grid, present_racks(fleet, grid, allocation))[n].min() / 1000


def test_evaluation_equals_the_dispatch_lp_for_any_plan(events_case):
    """For fixed first stages, the LP's best profit per scenario is what numpy computes, in both models."""
    fleet, scenarios, economics = events_case
    plans = random_plans(fleet, np.random.default_rng(5), 6)
    assert any(p.site_lease_mw("spot") * 1.3 > 0.3 * 3.0 for p in plans)  # some plans shed AI in storms
    for plan in plans:
        profits = scenario_profits_usd(fleet, economics, plan)
        for build in (
            lambda: build_compact_model(fleet, economics, RISKS[0]),
            lambda: build_extensive_model(fleet, scenarios, RISKS[0]),
        ):
            model = build()
            fix_allocation(model, fleet, plan)
            solve(model, time_limit_s=60, mip_rel_gap=0.0)
            lp = np.array([pyo.value(model.profit[w]) for w in model.S])
            np.testing.assert_allclose(profits, lp, rtol=1e-9, atol=1e-6)


def test_evaluation_follows_the_mip_coefficient(events_case):
    """A shifted mine_value_usd (as a hashprice sensitivity does) moves profits by shift x mining racks."""
    import dataclasses

    fleet, _, economics = events_case
    plan = random_plans(fleet, np.random.default_rng(3), 1)[0]
    shift = np.arange(economics.mine_value_usd.size, dtype=float).reshape(economics.mine_value_usd.shape)
    shifted = dataclasses.replace(economics, mine_value_usd=economics.mine_value_usd + shift)
    mining = np.array([plan.count(g.id, Mode.MINE) for g in fleet.rack_groups])
    change = scenario_profits_usd(fleet, shifted, plan) - scenario_profits_usd(fleet, economics, plan)
    np.testing.assert_allclose(change, mining @ shift.sum(axis=1), rtol=1e-9)


# --- compact = extensive ----------------------------------------------------------------------


@pytest.mark.parametrize("risk", RISKS, ids=lambda r: r.objective.value)
def test_compact_equals_extensive_with_events_resale_and_demand_response(events_case, risk):
    fleet, scenarios, economics = events_case
    compact = build_compact_model(fleet, economics, risk)
    extensive = build_extensive_model(fleet, scenarios, risk)
    compact_outcome = solve(compact, time_limit_s=60, mip_rel_gap=0.0)
    extensive_outcome = solve(extensive, time_limit_s=300, mip_rel_gap=0.0)
    assert extensive.nvariables() > 5 * compact.nvariables()
    assert compact_outcome.objective_usd == pytest.approx(extensive_outcome.objective_usd, rel=1e-7, abs=1e-3)

    allocation = extract_allocation(compact, fleet)
    assert check_feasible(fleet, allocation) == []
    profits = scenario_profits_usd(fleet, economics, allocation)
    assert risk_objective_value(profits, risk.objective.value, risk.alpha, risk.weight) == pytest.approx(
        compact_outcome.objective_usd, rel=1e-7, abs=1e-3
    )
    model_profits = np.array([pyo.value(compact.profit[w]) for w in compact.S])
    if risk.objective.value == "worst":  # only the worst scenario is pushed to its best dispatch
        assert profits.min() == pytest.approx(model_profits.min(), rel=1e-7, abs=1e-3)
    else:
        np.testing.assert_allclose(profits, model_profits, rtol=1e-7, atol=1e-3)


def test_events_instance_is_not_trivial(events_case):
    """The optimum must use resale, DR and AI, and meet binding caps and calls, or the tests prove little."""
    fleet, _, economics = events_case
    model = build_compact_model(fleet, economics, RISKS[0])
    solve(model, time_limit_s=60, mip_rel_gap=0.0)
    allocation = extract_allocation(model, fleet)
    profits = site_profits(fleet, economics, allocation)
    assert allocation.site_dr_mw("fixed") > 0.1 and allocation.site_dr_mw("spot") > 0.1
    assert allocation.site_lease_mw("spot") > 0.5
    assert profits.event_curtailed_mwh.sum() > 1.0  # caps and calls stop profitable racks
    assert profits.lost_ai_mwh[1].sum() > 0.0  # storms cut the site below its AI load
    assert abs(profits.resale_revenue_usd[1]).sum() > 1_000
    assert len(model.LEVELS) >= 1 and len(model.DR_SLOTS) >= 1 and len(model.CAP_SLOTS) >= 1


def test_site_breakdown_adds_up_to_the_plan_profit(events_case):
    fleet, _, economics = events_case
    plan = random_plans(fleet, np.random.default_rng(9), 1)[0]
    sites = site_breakdowns(fleet, economics, plan)
    mean = scenario_profits_usd(fleet, economics, plan).mean()
    assert sum(s.expected_profit_usd for s in sites) == pytest.approx(mean, rel=1e-12)
    for s in sites:
        parts = (
            s.expected_hash_revenue_usd
            - s.expected_power_cost_usd
            + s.expected_resale_revenue_usd
            + s.demand_response_credit_usd
            - s.expected_sla_penalty_usd
            - s.mining_opex_usd
            - s.idle_cost_usd
            + s.lease_revenue_usd
            + s.terminal_value_usd
            - s.capex_usd
            + s.machine_sales_usd
            - s.move_cost_usd
            - s.machines_bought_usd
        )
        assert parts == pytest.approx(s.expected_profit_usd, rel=1e-9, abs=1e-6)
        assert s.expected_curtailed_mwh >= s.expected_event_curtailed_mwh - 1e-9
    spot = sites[1]
    assert spot.contract == "take_or_pay" and spot.dr_commitment_mw == plan.site_dr_mw("spot")


def test_batches_of_economics_rejoin_with_their_coupled_steps(events_case):
    fleet, scenarios, whole = events_case
    parts = [
        group_economics(fleet, generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, rows, 11))
        for rows in (range(3, 5), range(0, 3))
    ]
    joined = concat_economics(parts)
    plan = random_plans(fleet, np.random.default_rng(2), 1)[0]
    np.testing.assert_array_equal(joined.indices, whole.indices)
    np.testing.assert_allclose(
        scenario_profits_usd(fleet, joined, plan), scenario_profits_usd(fleet, whole, plan), rtol=1e-12
    )
    picked = whole.columns([4, 1])
    np.testing.assert_allclose(
        scenario_profits_usd(fleet, picked, plan), scenario_profits_usd(fleet, whole, plan)[[4, 1]], rtol=1e-12
    )


# --- scenario generation ----------------------------------------------------------------------

ERCOT = PowerMarket(id="ERCOT", mean_price_usd_per_mwh=36.0)
WINTER_STORM = {
    "name": "storm",
    "events_per_year": 2.0,
    "months": [12, 1, 2],
    "mean_duration_hours": 6,
    "available_fraction": 0.25,
    "price_floor_usd_per_mwh": 1_500,
}
DECEMBER = Horizon(start="2026-12-01", days=31)


def ercot_with(**events) -> PowerMarket:
    return PowerMarket(**{**ERCOT.model_dump(), **events})


def test_events_leave_every_existing_path_unchanged():
    pjm = PowerMarket(id="PJM", mean_price_usd_per_mwh=48.0)
    calls = {"calls_per_year": 20, "call_hours": 3}
    plain = generate_scenarios(BitcoinMarket(), [ERCOT, pjm], DECEMBER, range(20), seed=4)
    stormy = ercot_with(curtailment_events=[WINTER_STORM], demand_response_calls=calls)
    eventful = generate_scenarios(BitcoinMarket(), [stormy, pjm], DECEMBER, range(20), seed=4)
    for name in ("btc_price_usd", "network_hashrate_ehs", "fees_btc_per_block", "hashprice_usd_per_ph_day"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(eventful, name))
    np.testing.assert_array_equal(plain.power_price("PJM"), eventful.power_price("PJM"))
    in_event = eventful.available_fraction("ERCOT") < 1
    assert in_event.any() and eventful.dr_called("ERCOT").any() and not eventful.dr_called("PJM").any()
    np.testing.assert_array_equal(plain.power_price("ERCOT")[~in_event], eventful.power_price("ERCOT")[~in_event])
    assert np.all(eventful.power_price("ERCOT")[in_event] >= 1_500)
    assert set(np.unique(eventful.available_fraction("ERCOT"))) == {0.25, 1.0}
    assert plain.available_power_fraction is None and plain.dr_call is None  # no events anywhere: none


def test_events_and_calls_are_identical_for_any_batch_split():
    calls = {"calls_per_year": 30, "call_hours": 2}
    market = ercot_with(curtailment_events=[WINTER_STORM], demand_response_calls=calls)
    whole = generate_scenarios(BitcoinMarket(), [market], DECEMBER, range(12), seed=8)
    parts = [generate_scenarios(BitcoinMarket(), [market], DECEMBER, r, seed=8) for r in (range(5), range(5, 12))]
    joined = concat_scenarios(parts)
    np.testing.assert_array_equal(whole.available_power_fraction, joined.available_power_fraction)
    np.testing.assert_array_equal(whole.dr_call, joined.dr_call)
    np.testing.assert_array_equal(whole.power_price_usd_per_mwh, joined.power_price_usd_per_mwh)


def test_event_count_matches_its_yearly_rate_and_months():
    scenarios = generate_scenarios(
        BitcoinMarket(), [ercot_with(curtailment_events=[WINTER_STORM])], DECEMBER, range(2_000), seed=1
    )
    in_event = scenarios.available_fraction("ERCOT") < 1
    starts = in_event[:, 0].astype(int) + (in_event[:, 1:] & ~in_event[:, :-1]).sum(axis=1)
    # 2 a year over Dec-Feb (2,191.5 h a year), the horizon holds 744 December hours: 0.679 expected
    expected = 2.0 * 744 / (8_766 * 3 / 12)
    assert starts.mean() == pytest.approx(expected, abs=4 * np.sqrt(expected / 2_000) + 0.01)
    lengths = in_event.sum(axis=1)[starts == 1]
    assert lengths.mean() == pytest.approx(6.5, abs=0.6)  # exponential mean 6 h, rounded up to whole hours
    summer = Horizon(start="2026-06-01", days=30)
    none = generate_scenarios(BitcoinMarket(), [ercot_with(curtailment_events=[WINTER_STORM])], summer, range(50), 1)
    assert not (none.available_power_fraction < 1).any()


def test_demand_response_calls_start_at_the_daily_price_peak():
    market = ercot_with(demand_response_calls={"calls_per_year": 40, "months": [12], "call_hours": 3})
    scenarios = generate_scenarios(BitcoinMarket(), [market], DECEMBER, range(200), seed=3)
    calls, price = scenarios.dr_called("ERCOT"), scenarios.power_price("ERCOT")
    expected_calls = 40 * 744 / (8_766 / 12)  # Poisson mean over December's 744 hours
    # each call picks one of the 31 days; calls on the same day start at the same peak and merge, so a
    # day is called with probability 1 - exp(-mean / 31)
    called_days = 31 * (1 - np.exp(-expected_calls / 31))
    starts = calls[:, 0].astype(int) + (calls[:, 1:] & ~calls[:, :-1]).sum(axis=1)
    assert starts.mean() == pytest.approx(called_days, rel=0.05)
    for s, t in zip(*np.nonzero(calls[:, 1:] & ~calls[:, :-1]), strict=True):
        day = (t + 1) // 24
        assert t + 1 == day * 24 + np.argmax(price[s, day * 24 : day * 24 + 24])


# --- scenario files ---------------------------------------------------------------------------


def test_scenario_files_carry_events_and_calls(tmp_path, events_case):
    _, scenarios, _ = events_case
    path = tmp_path / "events.npz"
    save_scenarios(path, scenarios)
    loaded = load_scenarios(path, required_markets=["ercot"], expected_steps=48)
    np.testing.assert_array_equal(loaded.available_power_fraction, scenarios.available_power_fraction)
    np.testing.assert_array_equal(loaded.dr_call, scenarios.dr_call)
    assert loaded.dr_call.dtype == bool


def _file(tmp_path, **extra):
    arrays = {
        "step_hours": np.int64(1),
        "hashprice_usd_per_ph_day": np.full((2, 24), 35.0),
        "power_price_usd_per_mwh__ercot": np.full((2, 24), 30.0),
        "power_price_usd_per_mwh__pjm": np.full((2, 24), 40.0),
        **extra,
    }
    path = tmp_path / "user.npz"
    np.savez(path, **arrays)
    return path


def test_user_files_may_give_events_for_some_markets(tmp_path):
    fraction = np.ones((2, 24))
    fraction[1, 3:6] = 0.5
    loaded = load_scenarios(_file(tmp_path, available_power_fraction__pjm=fraction))
    np.testing.assert_array_equal(loaded.available_fraction("pjm"), fraction)
    np.testing.assert_array_equal(loaded.available_fraction("ercot"), np.ones((2, 24)))
    assert loaded.dr_call is None and not loaded.dr_called("ercot").any()
    assert load_scenarios(_file(tmp_path)).available_power_fraction is None


@pytest.mark.parametrize(
    "extra, field, words",
    [
        ({"available_power_fraction__ercot": np.full((2, 24), 1.5)}, "available_power_fraction__ercot", "[0, 1]"),
        ({"dr_call__ercot": np.full((2, 24), 0.5)}, "dr_call__ercot", "0 or 1"),
        ({"dr_call__caiso": np.zeros((2, 24))}, "dr_call__caiso", "no power price array"),
        ({"dr_call__ercot": np.zeros((2, 23))}, "dr_call__ercot", "shape"),
        ({"dr_call__": np.zeros((2, 24))}, "dr_call__", "without a market id"),
    ],
)
def test_bad_event_arrays_name_the_array(tmp_path, extra, field, words):
    with pytest.raises(ScenarioFileError) as caught:
        load_scenarios(_file(tmp_path, **extra))
    assert caught.value.field == field and words in str(caught.value)


def test_select_rows_slices_event_arrays_by_scenario(events_case):
    from optimizer.scenarios import select_rows

    _, scenarios, _ = events_case
    picked = select_rows(scenarios, range(1, 3))
    np.testing.assert_array_equal(picked.available_power_fraction, scenarios.available_power_fraction[:, 1:3])
    np.testing.assert_array_equal(picked.dr_call, scenarios.dr_call[:, 1:3])


# --- fleet file -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, path, fragment",
    [
        (lambda d: d["sites"][1].update(demand_response={"credit_usd_per_mw_month": 1, "max_mw": 1}),
         "sites.1.demand_response", "no demand_response_calls"),
        (lambda d: d["sites"][1].update(contract={"type": "take_or_pay"}), "sites.1.contract", "price_usd_per_mwh"),
        (lambda d: d["sites"][1]["contract"].update(resale_fee_usd_per_mwh=2), "sites.1.contract", "take_or_pay"),
        (lambda d: d["lease_offers"][0].update(sla_penalty_usd_per_mwh=-1), "lease_offers.0.sla_penalty_usd_per_mwh",
         "-1"),
        (lambda d: d["markets"][0].update(curtailment_events=[{**WINTER_STORM, "months": [13]}]),
         "markets.0.curtailment_events.0.months", "calendar months"),
        (lambda d: d["markets"][0].update(curtailment_events=[{**WINTER_STORM, "price_floor_usd_per_mwh": 9e3}]),
         "markets.0", "exceeds cap_usd_per_mwh"),
    ],
)  # fmt: skip
def test_power_market_errors_name_the_field(mutate, path, fragment):
    data = copy.deepcopy(small_fleet_data())
    mutate(data)
    with pytest.raises(FleetError) as caught:
        parse_fleet(data)
    errors = dict(caught.value.violations)
    assert path in errors, errors
    assert fragment in errors[path]


def test_example_fleet_uses_resale_demand_response_and_events():
    fleet = load_fleet(EXAMPLES / "fleet.yaml")
    texas = fleet.site("texas-west")
    assert texas.contract.type.value == "take_or_pay" and texas.demand_response is not None
    assert any(s.contract.type.value == "index" for s in fleet.sites)
    ercot = next(m for m in fleet.markets if m.id == texas.market)
    assert ercot.curtailment_events and ercot.demand_response_calls is not None


def test_plan_reports_resale_demand_response_and_events(ray_session):
    """End to end on Ray, in batches: the report adds up, and user scenarios with events give the same plan."""
    from solvers.planner import plan_fleet

    fleet = parse_fleet(events_fleet_data(days=2, scenarios=6))  # batches of 4: uneven coupled counts
    plan, scenarios = plan_fleet(fleet, keep_scenarios=True)
    assert sum(s.expected_profit_usd for s in plan.sites) == pytest.approx(plan.profit["mean_usd"], rel=1e-9)
    spot = next(s for s in plan.sites if s.site == "spot")
    assert spot.contract == "take_or_pay" and spot.expected_resale_revenue_usd != 0
    assert spot.demand_response_credit_usd > 0 and spot.dr_commitment_mw > 0
    assert sum(s.expected_event_curtailed_mwh for s in plan.sites) > 0
    again, _ = plan_fleet(fleet, provided=scenarios)  # rows cut by select_rows, events included
    assert again.profit == plan.profit
