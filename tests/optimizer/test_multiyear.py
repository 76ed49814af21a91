"""The pivot over the life of a deal: years, NPV, conversion projects, fleet moves.

The compact model against brute force over every first stage and against the textbook extensive form
on a small multi-year fleet with every lifecycle live; present values, IRR and breakevens by hand.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from optimizer.allocation import Allocation, check_feasible, lease_terms, scenario_profits_usd
from optimizer.cashflows import irr, npv, payback_months, rent_value
from optimizer.constants import DAYS_PER_MONTH
from optimizer.economics import group_economics
from optimizer.extensive import build_extensive_model
from optimizer.fleet import Fleet, RiskSettings, parse_fleet
from optimizer.formulation import build_compact_model, extract_allocation
from optimizer.lifecycles import PlanGrid, plan_grid
from optimizer.plan_result import group_breakevens
from optimizer.risk import risk_objective_value
from solvers.highs import solve
from tests.fleets import RISKS, long_lease_fleet_data, pivot_fleet_data, scenarios_for


@pytest.fixture(scope="module")
def pivot_case():
    fleet = parse_fleet(pivot_fleet_data())
    scenarios = scenarios_for(fleet)
    return fleet, scenarios, group_economics(fleet, scenarios), plan_grid(fleet)


def compositions(total: int, parts: int):
    """Every way to put `total` identical racks into `parts` lifecycle options."""
    for cut in itertools.combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *cut, total + parts - 1)
        yield [edges[i + 1] - edges[i] - 1 for i in range(parts)]


def largest_lease_mw(fleet: Fleet, grid: PlanGrid, allocation: Allocation, start: int) -> float:
    """Rent per MW is positive in every scenario, so the best lease is the largest that fits."""
    from optimizer.allocation import converted_mw, planned_mining_kw, present_racks

    offer, site = fleet.lease_offers[0], fleet.site("a")
    term = lease_terms(fleet, grid)[offer.id, "a", start]
    mining_kw = planned_mining_kw(fleet, grid, present_racks(fleet, grid, allocation))[0]
    room_mw = min((site.capacity_mw * 1000 - mining_kw[p]) / site.pue_ai / 1000 for p in range(term.ready, term.end))
    mw = min(converted_mw(fleet, allocation, "a"), offer.max_mw, room_mw)
    return mw if mw >= offer.min_mw else 0.0


def brute_force(fleet: Fleet, grid: PlanGrid, economics, risk: RiskSettings) -> tuple[float, Allocation]:
    options = [[life.key for life in lives] for lives in grid.lifecycles]
    per_group = [
        [dict(zip(keys, counts, strict=True)) for counts in compositions(group.racks, len(keys))]
        for group, keys in zip(fleet.rack_groups, options, strict=True)
    ]
    best, best_plan = -np.inf, None
    for combo in itertools.product(*per_group, range(fleet.purchases[0].max_racks + 1)):
        *counts, bought = combo
        lifecycles = {g.id: {k: n for k, n in c.items() if n} for g, c in zip(fleet.rack_groups, counts, strict=True)}
        starts = {int(k[3]) for c in lifecycles.values() for k in c if k.startswith("ai@")}
        if len(starts) > 1:
            continue  # a site converts once
        conversion = {"a": starts.pop()} if starts else {}
        plan = Allocation.from_lifecycles(fleet, grid, lifecycles, conversion, purchases={"new-a": bought})
        if conversion:
            mw = largest_lease_mw(fleet, grid, plan, conversion["a"])
            lease = {("colo", "a"): mw} if mw > 0 else {}
            plan = Allocation.from_lifecycles(fleet, grid, lifecycles, conversion, lease, purchases={"new-a": bought})
        if check_feasible(fleet, plan):
            continue
        value = risk_objective_value(
            scenario_profits_usd(fleet, economics, plan, grid), risk.objective.value, risk.alpha, risk.weight
        )
        if value > best:
            best, best_plan = value, plan
    return best, best_plan


@pytest.mark.parametrize("risk", RISKS, ids=lambda r: r.objective.value)
def test_multiyear_compact_equals_brute_force_and_extensive_form(pivot_case, risk):
    fleet, scenarios, economics, grid = pivot_case
    compact = build_compact_model(fleet, economics, risk)
    outcome = solve(compact, time_limit_s=60, mip_rel_gap=0.0)
    expected, _ = brute_force(fleet, grid, economics, risk)
    assert outcome.objective_usd == pytest.approx(expected, rel=1e-8, abs=1e-3)
    allocation = extract_allocation(compact, fleet)
    assert check_feasible(fleet, allocation) == []
    extensive = build_extensive_model(fleet, scenarios, risk)
    extensive_outcome = solve(extensive, time_limit_s=120, mip_rel_gap=0.0)
    assert extensive_outcome.objective_usd == pytest.approx(expected, rel=1e-8, abs=1e-3)


def test_pivot_instance_is_not_trivial(pivot_case):
    """The brute-force instance must make selling, converting and mining all worth something."""
    fleet, _, economics, grid = pivot_case
    _, plan = brute_force(fleet, grid, economics, RISKS[0])
    keys = {k for counts in plan.lifecycle_counts(fleet).values() for k in counts}
    assert any(k.startswith("ai@") for k in keys), keys
    assert plan.lease_mw
    # on its own the instance offers each lifecycle a real, non-zero value
    from optimizer.lifecycles import lifecycle_values_usd

    values = lifecycle_values_usd(fleet, grid, economics).mean(axis=2)
    assert np.all(np.abs(values[0, : len(grid.lifecycles[0])]) > 1.0)


def test_rent_present_value_by_hand():
    """24 months of $150/kW-month with 3% a year from month 3, discounted at 10% a year."""
    fleet = parse_fleet(pivot_fleet_data(months=60))
    grid = plan_grid(fleet)
    value = rent_value(fleet.lease_offers[0], 3.0, grid.timeline)
    months = np.arange(24)
    rent = 150_000 * 1.03 ** (months // 12)
    by_hand = (rent * 1.10 ** (-(3.0 + months) / 12)).sum()
    assert value.pv_usd == pytest.approx(by_hand, rel=1e-12)
    assert value.nominal_usd == pytest.approx(150_000 * 12 + 154_500 * 12)
    short = rent_value(fleet.lease_offers[0], 3.0, plan_grid(parse_fleet(pivot_fleet_data(months=12))).timeline)
    assert short.in_horizon_pv_usd == pytest.approx((rent * 1.10 ** (-(3.0 + months) / 12))[:9].sum(), rel=1e-9)
    assert short.pv_usd == pytest.approx(by_hand, rel=1e-12)  # the rest is terminal value


def test_irr_npv_and_payback_by_hand():
    """Capex 1,000 now, rent 100 a month for 12 months: the monthly IRR solves sum 100 / (1+m)^k = 1,000."""
    cash = np.array([-1000.0] + [100.0] * 12)
    roots = np.roots([100.0] * 12 + [-1000.0])  # 100 x^12 + ... + 100 x - 1000, in x = 1 / (1 + m)
    x = max(r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0)
    monthly = 1 / x - 1
    assert irr(cash) == pytest.approx((1 + monthly) ** 12 - 1, rel=1e-8)
    assert npv(cash, irr(cash)) == pytest.approx(0.0, abs=1e-6)
    assert npv(cash, 0.0) == pytest.approx(200.0)
    assert payback_months(cash) == 10.0  # cumulative -1000 + 100 k >= 0 from k = 10
    assert irr(np.array([100.0, 50.0])) is None


def test_a_planned_conversion_reports_npv_irr_and_payback_by_hand(pivot_case):
    from optimizer.deal_report import conversion_results

    fleet, _, economics, grid = pivot_case
    plan = Allocation.from_lifecycles(
        fleet, grid, {"a-old": {"ai@0:sell": 2}, "b-new": {"mine": 1}}, {"a": 0}, {("colo", "a"): 0.05}
    )
    [result] = conversion_results(fleet, grid, economics, plan)
    it_mw = 2 * 10 * 104 * 29.5 / 1e6  # two racks' slots
    capex = 5_000 + 1_500_000 * (it_mw - 0.2 * 0.05)
    assert result.it_mw == pytest.approx(it_mw)
    assert result.capex_usd == pytest.approx(capex)
    ready = 90 / DAYS_PER_MONTH
    months = np.arange(24)
    rent = 0.05 * 150_000 * 1.03 ** (months // 12)
    rent_pv = (rent * 1.10 ** (-(ready + months) / 12)).sum()
    capex_pv = capex * (0.5 + 0.3 * 1.10 ** (-1 / 12) + 0.2 * 1.10 ** (-2 / 12))
    assert result.capex_pv_usd == pytest.approx(capex_pv, rel=1e-12)
    assert result.rent_pv_usd + result.terminal_value_usd == pytest.approx(rent_pv, rel=1e-12)
    assert result.project_npv_usd == pytest.approx(rent_pv - capex_pv, rel=1e-12)
    cash = np.zeros(28)
    cash[:3] = -capex * np.array([0.5, 0.3, 0.2])
    cash[3:27] += rent  # the hall is ready 90 days in: rent from month 3 (rounded) for 24 months
    assert result.irr == pytest.approx(irr(cash), rel=1e-9)
    assert result.payback_months == payback_months(cash)


def test_breakeven_by_hand_with_pue_pool_fee_and_opex():
    fleet = parse_fleet(pivot_fleet_data())
    rules = {r.group: r for r in group_breakevens(fleet, 36.0)}
    # 36 $/PH/day = 36 / 1000 / 24 $ per TH-hour, 98% after the pool fee; 29.5 J/TH at PUE 1.05 draws
    # 29.5 x 1.05 / 1e6 MWh per TH-hour
    run_below = 36 / 1000 / 24 * 0.98 / (29.5 * 1.05 / 1e6)
    assert rules["a-old"].run_below_usd_per_mwh == pytest.approx(run_below, rel=1e-12)
    # a rack of ten 104 TH/s machines draws 30.68 kW x 1.05 = 32.214 kW: 0.773 MWh a day; $3/day of opex
    assert rules["a-old"].keep_below_usd_per_mwh == pytest.approx(run_below - 3 / (32.214 * 24 / 1000), rel=1e-9)
    assert rules["b-new"].pue == 1.05 and rules["b-new"].hashprice_usd_per_ph_day == 36.0


def breakeven_rate(fleet: Fleet, economics) -> float:
    """Rate at which converting every rack is worth exactly what mining them is: rent = mining + capex."""
    grid = plan_grid(fleet)
    it_mw = 10 * 10 * 200 * 17.5 / 1e6  # 0.35 MW of slots
    mining = economics.mine_value_usd[0].sum(axis=0).mean() * 10
    term = lease_terms(fleet, grid)["hyperscaler", "dc", 0]
    rent_per_rate = term.rent.pv_usd / fleet.lease_offers[0].rate_usd_per_kw_month  # PV of 1 $/kW-month
    return (mining / it_mw + 1_000_000 * term.capex_factor) / rent_per_rate


def test_a_long_lease_with_a_long_build_is_taken_when_it_beats_mining_over_its_life():
    """A 180-day build, a 10-year lease, a 5-year horizon: taken above the breakeven rate, declined below."""
    probe = parse_fleet(long_lease_fleet_data(100.0))
    economics = group_economics(probe, scenarios_for(probe))
    rate = breakeven_rate(probe, economics)
    assert 20 < rate < 200  # mining is worth something, the lease must pay for it
    for factor, converts in ((1.2, True), (0.8, False)):
        fleet = parse_fleet(long_lease_fleet_data(rate * factor))
        model = build_compact_model(fleet, economics, fleet.risk)
        solve(model, time_limit_s=60, mip_rel_gap=0.0)
        allocation = extract_allocation(model, fleet)
        assert (allocation.offer_mw("hyperscaler") > 0.3) is converts, (factor, allocation)
    # the same deal on one quarter: rent past the horizon is terminal value, so it is still taken
    quarter = parse_fleet(long_lease_fleet_data(rate * 1.2, days=91))
    model = build_compact_model(quarter, group_economics(quarter, scenarios_for(quarter)), quarter.risk)
    solve(model, time_limit_s=60, mip_rel_gap=0.0)
    assert extract_allocation(model, quarter).offer_mw("hyperscaler") > 0.3


def test_horizon_in_years_and_months():
    data = pivot_fleet_data()
    data["horizon"] = {"start": "2026-12-01", "years": 5, "step_hours": 24}
    assert parse_fleet(data).horizon.days == 1826  # 2026-12-01 to 2031-12-01 has one leap day
    data["horizon"] = {"start": "2026-12-01", "months": 3}
    assert parse_fleet(data).horizon.days == 90
    data["horizon"] = {"start": "2026-12-01", "years": 2, "days": 10}
    with pytest.raises(ValueError, match="one of days, months or years"):
        parse_fleet(data)


def test_discounting_by_hand():
    fleet = parse_fleet(pivot_fleet_data())
    timeline = plan_grid(fleet).timeline
    assert timeline.discount_at_hours(8766) == pytest.approx(1 / 1.1)
    days = timeline.period_discounted_days()
    by_hand = sum(1.1 ** (-t / 365.25) for t in range(0, 20))  # daily steps of the first period (20 days)
    assert days[0] == pytest.approx(by_hand, rel=1e-12)
    assert math.isclose(timeline.period_days().sum(), fleet.horizon.days)


def test_sorted_prefix_economics_equal_a_direct_sum_per_step():
    """The flat-memory economics against max(margin, 0) summed step by step, discounted, per period."""
    from optimizer.economics import profile_margins_usd

    rng = np.random.default_rng(1)
    data = pivot_fleet_data(months=14, scenarios=5)
    data["rack_groups"][0]["machine"] = "new"
    data["markets"][0]["vol_per_sqrt_day"] = float(rng.uniform(0.2, 1.5))
    fleet = parse_fleet(data)
    scenarios = scenarios_for(fleet)
    economics, grid = group_economics(fleet, scenarios), plan_grid(fleet)
    discount, bounds = grid.timeline.step_discount(), grid.timeline.bounds
    for q, profile in enumerate(grid.profiles):
        revenue, cost = profile_margins_usd(fleet, profile, scenarios)
        margin = np.maximum(revenue - cost, 0.0) * discount
        opex = profile.opex_usd_per_rack_day * discount
        for p in range(grid.n_periods):
            a, b = bounds[p], bounds[p + 1]
            direct = margin[:, a:b].sum(axis=1) - opex[a:b].sum()
            np.testing.assert_allclose(economics.mine_value_usd[q, p], direct, rtol=1e-10, atol=1e-6)
