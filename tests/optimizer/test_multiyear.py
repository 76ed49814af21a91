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
from tests.fleets import EXAMPLES, RISKS, long_lease_fleet_data, pivot_fleet_data, random_fleet_data, scenarios_for


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


def every_plan(fleet: Fleet, grid: PlanGrid):
    """Every feasible full plan (lifecycle counts, conversion, the largest lease that fits, purchases)."""
    options = [[life.key for life in lives] for lives in grid.lifecycles]
    per_group = [
        [dict(zip(keys, counts, strict=True)) for counts in compositions(group.racks, len(keys))]
        for group, keys in zip(fleet.rack_groups, options, strict=True)
    ]
    for combo in itertools.product(*per_group, purchase_splits(fleet, grid)):
        *counts, bought = combo
        lifecycles = {g.id: {k: n for k, n in c.items() if n} for g, c in zip(fleet.rack_groups, counts, strict=True)}
        starts = {int(k[3]) for c in lifecycles.values() for k in c if k.startswith("ai@")}
        if len(starts) > 1:
            continue  # a site converts once
        conversion = {"a": starts.pop()} if starts else {}
        plan = Allocation.from_lifecycles(fleet, grid, lifecycles, conversion, purchases=bought)
        if conversion:
            mw = largest_lease_mw(fleet, grid, plan, conversion["a"])
            lease = {("colo", "a"): mw} if mw > 0 else {}
            plan = Allocation.from_lifecycles(fleet, grid, lifecycles, conversion, lease, purchases=bought)
        if not check_feasible(fleet, plan):
            yield plan


def purchase_splits(fleet: Fleet, grid: PlanGrid) -> list[dict[str, int]]:
    """Every way to order the one purchase option's racks over its lots (today, and each recourse date)."""
    option, keys = fleet.purchases[0], [lot.key for lot in grid.purchase_lots]
    counts = itertools.product(range(option.max_racks + 1), repeat=len(keys))
    return [
        {k: n for k, n in zip(keys, c, strict=True) if n}
        for c in counts
        if c[0] >= option.min_racks and sum(c) <= option.max_racks
    ]


def brute_force(fleet: Fleet, grid: PlanGrid, economics, risk: RiskSettings) -> tuple[float, Allocation]:
    best, best_plan = -np.inf, None
    for plan in every_plan(fleet, grid):
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


def direct_economics(fleet: Fleet, scenarios, economics, grid: PlanGrid) -> dict[str, np.ndarray]:
    """Every per-rack figure step by step: a rack runs where its margin is positive; coupled steps are left
    out of the sums (they are dispatched explicitly) but count as run steps in the price rule."""
    from optimizer.economics import NO_SITE, profile_margins_usd

    discount, bounds, hours = grid.timeline.step_discount(), grid.timeline.bounds, grid.timeline.step_hours
    n_q, n_s, n_t = len(grid.profiles), scenarios.n_scenarios, scenarios.n_steps
    coupled = np.zeros((len(fleet.sites), n_s, n_t), dtype=bool)
    k, s = np.nonzero(economics.coupled_site != NO_SITE)
    coupled[economics.coupled_site[k, s], s, economics.coupled_step[k, s]] = True
    out = {name: np.zeros((n_q, grid.n_periods, n_s)) for name in ("rev", "cost", "rev_pv", "cost_pv", "mwh", "btc")}
    out["runs"] = np.zeros((n_q, n_s))
    for q, profile in enumerate(grid.profiles):
        revenue, cost = profile_margins_usd(fleet, profile, scenarios)
        run = revenue > cost
        out["runs"][q] = run.sum(axis=1) / n_t
        runs = run & ~coupled[profile.site]
        per_step = {
            "rev": revenue * runs,
            "cost": cost * runs,
            "rev_pv": revenue * runs * discount,
            "cost_pv": cost * runs * discount,
            "mwh": profile.meter_kw / 1000 * hours * runs,
            "btc": revenue / scenarios.btc_price_usd * runs,
        }
        for name, values in per_step.items():
            for p in range(grid.n_periods):
                out[name][q, p] = values[:, bounds[p] : bounds[p + 1]].sum(axis=1)
    return out


def example_five_years():
    from optimizer.fleet import load_fleet, with_overrides

    return with_overrides(load_fleet(EXAMPLES / "fleet.yaml"), {"scenarios": {"count": 3}})


@pytest.mark.parametrize("kernel", [False, True], ids=["numpy", "kernel"])
@pytest.mark.parametrize(
    "make_fleet",
    [example_five_years, *(lambda seed=seed: parse_fleet(random_fleet_data(seed)) for seed in range(6))],
    ids=["example", *(f"random{seed}" for seed in range(6))],
)
def test_streamed_economics_equal_a_direct_computation_per_step_to_the_cent(make_fleet, kernel):
    """Every profile sum of the threshold-shared economics, by numpy (masks by matmul) and by the compiled
    one-pass kernel, against the plain per-step sums: the example fleet (five years hourly, moves, purchases,
    events, take-or-pay) and random fleets (every contract type, 15-, 30-, 60- and 180-minute steps, events
    and calls, many groups per threshold)."""
    fleet = make_fleet()
    scenarios = scenarios_for(fleet)
    economics, grid = group_economics(fleet, scenarios, kernel=kernel), plan_grid(fleet)
    direct = direct_economics(fleet, scenarios, economics, grid)
    cent = 0.005
    np.testing.assert_allclose(economics.hash_revenue_usd, direct["rev"], rtol=0, atol=cent)
    np.testing.assert_allclose(economics.power_cost_usd, direct["cost"], rtol=0, atol=cent)
    np.testing.assert_allclose(economics.hash_revenue_pv_usd, direct["rev_pv"], rtol=0, atol=cent)
    np.testing.assert_allclose(economics.power_cost_pv_usd, direct["cost_pv"], rtol=0, atol=cent)
    np.testing.assert_allclose(economics.energy_mwh, direct["mwh"], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(economics.btc_mined, direct["btc"], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(economics.run_fraction, direct["runs"])
    opex = np.array([p.opex_usd_per_rack_day for p in grid.profiles])[:, None] * grid.timeline.period_discounted_days()
    np.testing.assert_allclose(
        economics.mine_value_usd, direct["rev_pv"] - direct["cost_pv"] - opex[:, :, None], rtol=0, atol=cent
    )
    assert (economics.hash_revenue_usd > 0).any() and (direct["runs"] < 1).any()  # racks run and curtail
    if fleet.markets[0].curtailment_events:
        assert economics.n_coupled > 0  # the coupled steps are exercised too


def test_economics_do_not_depend_on_the_chunks_priced_before():
    """Scratch buffers are reused chunk after chunk: a batch priced after a larger and a smaller one, in other
    fleets, gives the same figures as priced first, and a batch split in two rejoins to the whole."""
    from optimizer.economics import concat_economics
    from optimizer.scenarios import select_rows

    fleet, other = parse_fleet(random_fleet_data(0, scenarios=4)), parse_fleet(random_fleet_data(1, scenarios=6))
    scenarios = scenarios_for(fleet)
    first = group_economics(fleet, scenarios)
    group_economics(other, scenarios_for(other))
    group_economics(fleet, select_rows(scenarios, range(1, 2)))
    again = group_economics(fleet, scenarios)
    halves = concat_economics([group_economics(fleet, select_rows(scenarios, r)) for r in (range(0, 3), range(3, 4))])
    for name in ("mine_value_usd", "hash_revenue_usd", "power_cost_pv_usd", "run_fraction", "item_power_cost_usd"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
        np.testing.assert_allclose(getattr(halves, name), getattr(first, name), rtol=1e-12, atol=1e-9)
