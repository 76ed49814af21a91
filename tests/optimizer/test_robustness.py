"""Robustness arithmetic and sensitivity math, checked by hand and by brute force (no Ray)."""

import dataclasses

import numpy as np
import pytest

from optimizer.allocation import Mode
from optimizer.economics import breakeven_power_price_usd_per_mwh, group_economics, rack_margin_usd
from optimizer.fleet import parse_fleet
from optimizer.lifecycles import plan_grid
from optimizer.risk import risk_objective_value
from optimizer.robustness import (
    RiskObjective,
    add_sums,
    calculator_allocation,
    candidate_sample_objective,
    mean_scenario,
    mean_scenario_from_sums,
    mmw_upper_bound,
    optimality_gap,
    paired_bootstrap_interval,
    rockafellar_uryasev_value,
    scenario_sums,
    t_interval,
    typical_and_stress,
)
from optimizer.scenarios import ScenarioSet, generate_scenarios
from optimizer.sensitivity import (
    DOWN_GRID,
    UP_GRID,
    economics_at_factor,
    group_profile_usd,
    hashprice_profile_usd,
    hashprice_profiles_usd,
    initial_brackets,
    interpolate_profile,
    pending_factors,
    profile_factors,
    refine,
    separable_steps,
    with_site_capacity,
)
from tests.fleets import small_fleet_data


def test_mmw_interval_by_hand():
    # gaps 1..5: mean 3, s = sqrt(2.5) (n - 1), t_{0.95, 4} = 2.13185 (Student t table)
    mean, std, upper = mmw_upper_bound([1.0, 2.0, 3.0, 4.0, 5.0], 0.95)
    assert mean == 3.0
    assert std == pytest.approx(np.sqrt(2.5))
    assert upper == pytest.approx(3.0 + 2.13185 * np.sqrt(2.5) / np.sqrt(5), abs=1e-4)
    assert upper == pytest.approx(4.50744, abs=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        mmw_upper_bound([1.0], 0.95)


def test_gap_is_replication_optimum_minus_candidate():
    gap = optimality_gap(
        replication_objective_usd=[110.0, 105.0, 120.0],
        candidate_objective_usd=[100.0, 101.0, 102.0],
        scenarios_per_replication=10,
        streams=[2, 3, 4],
        confidence_level=0.9,
        plan_objective_usd=-200.0,
        objective="expected",
        candidate_var_usd=None,
        solver_status=["optimal"] * 3,
    )
    assert gap.gap_usd == [10.0, 4.0, 18.0]
    # mean 32/3, s = sqrt(((10-a)^2 + (4-a)^2 + (18-a)^2) / 2), t_{0.9, 2} = 1.88562
    a = 32 / 3
    s = np.sqrt(((10 - a) ** 2 + (4 - a) ** 2 + (18 - a) ** 2) / 2)
    assert gap.upper_bound_usd == pytest.approx(a + 1.88562 * s / np.sqrt(3), abs=1e-4)
    assert gap.relative_upper_bound == pytest.approx(gap.upper_bound_usd / 200.0)


def test_t_interval_by_hand():
    ci = t_interval(np.array([1.0, 2.0, 3.0]), 0.95)
    # s = 1, t_{0.975, 2} = 4.30265
    assert ci.estimate_usd == 2.0
    assert ci.upper_usd - 2.0 == pytest.approx(4.30265 / np.sqrt(3), abs=1e-5)
    assert ci.lower_usd == pytest.approx(4.0 - ci.upper_usd)


def test_paired_bootstrap_sees_a_constant_shift_exactly():
    rng = np.random.default_rng(0)
    b = rng.normal(100, 30, 200)
    ci = paired_bootstrap_interval(b + 7.0, b, np.mean, 0.95, resamples=300)
    assert ci.estimate_usd == pytest.approx(7.0)
    assert ci.lower_usd == pytest.approx(7.0) and ci.upper_usd == pytest.approx(7.0)
    # unpaired noise widens it, and the interval brackets the estimate
    noisy = paired_bootstrap_interval(rng.normal(100, 30, 200), b, np.mean, 0.95, resamples=300)
    assert noisy.lower_usd < noisy.estimate_usd < noisy.upper_usd


def test_rockafellar_uryasev_at_var_equals_the_objective_and_is_below_it_elsewhere():
    profits = np.array([10.0, -5.0, 3.0, 7.0, -20.0, 1.0, 4.0, 8.0, 2.0, 6.0])
    risk = RiskObjective("cvar", 0.8, 0.4)
    at_var = rockafellar_uryasev_value(profits, -5.0, 0.8, 0.4)  # the 20% quantile
    assert at_var == pytest.approx(risk_objective_value(profits, "cvar", 0.8, 0.4))
    for eta in (-30.0, -10.0, 0.0, 5.0):
        assert rockafellar_uryasev_value(profits, eta, 0.8, 0.4) <= at_var + 1e-12
    # by hand at eta = 0: shortfall mean (5 + 20) / 10 = 2.5; 0.6 * 1.6 + 0.4 * (0 - 2.5 / 0.2)
    assert rockafellar_uryasev_value(profits, 0.0, 0.8, 0.4) == pytest.approx(0.6 * 1.6 - 0.4 * 12.5)
    assert candidate_sample_objective(profits, risk, 0.0) == pytest.approx(0.6 * 1.6 - 0.4 * 12.5)
    assert candidate_sample_objective(profits, RiskObjective("expected", 0.8, 0.4), 0.0) == pytest.approx(1.6)


def calculator_fleet():
    return parse_fleet(
        {
            "markets": [{"id": "m", "mean_price_usd_per_mwh": 40}],
            "pool_fee_fraction": 0.0,
            "machines": [
                {"id": "new", "hashrate_ths": 200, "efficiency_j_per_th": 20.0},
                {"id": "old", "hashrate_ths": 100, "efficiency_j_per_th": 30.0},
            ],
            "sites": [
                {"id": "a", "market": "m", "capacity_mw": 5, "pue_mining": 1.0, "contract": {"type": "index"}},
                {"id": "b", "market": "m", "capacity_mw": 5, "pue_mining": 1.2, "contract": {"type": "index"}},
            ],
            "rack_groups": [
                {"id": "a-new", "site": "a", "machine": "new", "racks": 3, "machines_per_rack": 2},
                {"id": "a-old", "site": "a", "machine": "old", "racks": 4, "machines_per_rack": 2},
                {"id": "b-old", "site": "b", "machine": "old", "racks": 5, "machines_per_rack": 2},
            ],
        }
    )


def test_calculator_rule_by_hand():
    fleet = calculator_fleet()
    # At 40 $/PH/day a TH-hour earns 40 / 1000 / 24 $; at e J/TH it draws e / 1e6 MWh:
    # breakeven = 1e6 * 40 / 24000 / e = 83.33 $/MWh at 20 J/TH, 55.56 at 30 J/TH, 46.30 at 30 J/TH and PUE 1.2.
    assert breakeven_power_price_usd_per_mwh(40.0, 30.0, 1.2) == pytest.approx(1e6 * 40 / 24_000 / 36)
    allocation = calculator_allocation(fleet, 40.0, {"a": 50.0, "b": 50.0})

    def counts(group: str) -> list[int]:
        return [allocation.count(group, mode) for mode in (Mode.MINE, Mode.AI, Mode.IDLE)]

    assert counts("a-new") == [3, 0, 0]
    assert counts("a-old") == [4, 0, 0]  # 55.56 > 50
    assert counts("b-old") == [0, 0, 5]  # 46.30 < 50 with PUE 1.2
    dearer = calculator_allocation(fleet, 40.0, {"a": 60.0, "b": 40.0})
    assert [dearer.count(g, Mode.MINE) for g in ("a-new", "a-old", "b-old")] == [3, 0, 5]
    assert not dearer.converted_sites and not dearer.lease_mw


def tiny_scenarios(values: list[float], index_base: int = 0) -> ScenarioSet:
    """Scenarios whose every path is a constant: easy means."""
    n, t = len(values), 4
    col = np.asarray(values, dtype=float)[:, None] * np.ones((n, t))
    return ScenarioSet(
        indices=np.arange(index_base, index_base + n),
        step_hours=6,
        btc_price_usd=1000 * col,
        network_hashrate_ehs=col,
        fees_btc_per_block=0.01 * col,
        subsidy_btc=np.full((n, t), 3.125),
        hashprice_usd_per_ph_day=col,
        markets=("x", "y"),
        power_price_usd_per_mwh=np.stack([col, 2 * col]),
    )


def test_mean_scenario_averages_every_path_and_batches_add_up():
    whole = mean_scenario(tiny_scenarios([10.0, 20.0, 60.0]))
    assert whole.n_scenarios == 1 and whole.n_steps == 4
    np.testing.assert_allclose(whole.hashprice_usd_per_ph_day, 30.0)
    np.testing.assert_allclose(whole.btc_price_usd, 30_000.0)
    np.testing.assert_allclose(whole.power_price("y"), 60.0)
    np.testing.assert_allclose(whole.subsidy_btc, 3.125)
    parts = add_sums([scenario_sums(tiny_scenarios([10.0])), scenario_sums(tiny_scenarios([20.0, 60.0], 1))])
    batched = mean_scenario_from_sums(parts)
    np.testing.assert_allclose(batched.power_price_usd_per_mwh, whole.power_price_usd_per_mwh)


def small_fleet_and_economics(scenarios: int = 5):
    fleet = parse_fleet(small_fleet_data(days=2, scenarios=scenarios))
    sc = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(scenarios), fleet.scenarios.seed)
    return fleet, sc, group_economics(fleet, sc)


def test_select_scenarios_and_typical_and_stress():
    _, _, economics = small_fleet_and_economics()
    picked = economics.columns([3, 1])
    np.testing.assert_array_equal(picked.indices, [3, 1])
    np.testing.assert_array_equal(picked.mine_value_usd, economics.mine_value_usd[..., [3, 1]])
    typical, stress = typical_and_stress(np.array([10, 11, 12, 13, 14]), np.array([5.0, -3.0, 9.0, 1.0, 7.0]))
    assert (typical, stress) == (10, 11)  # median profit 5.0 is scenario 10, worst -3.0 is 11


def test_hashprice_profile_matches_brute_force_and_the_economics():
    fleet, sc, economics = small_fleet_and_economics()
    factors = profile_factors()
    assert 1.0 in factors
    for g, group in enumerate(fleet.rack_groups):
        revenue, cost = rack_margin_usd(fleet, g, sc)
        profile = hashprice_profile_usd(revenue, cost, factors)
        for j in (0, 100, 240, 333, len(factors) - 1):
            brute = np.maximum(factors[j] * revenue - cost, 0.0).sum(axis=1)
            np.testing.assert_allclose(profile[:, j], brute, rtol=1e-10, atol=1e-9)
        opex = group.opex_usd_per_rack_day * fleet.horizon.days
        np.testing.assert_allclose(
            interpolate_profile(profile, factors, 1.0) - opex, economics.mine_value_usd[g].sum(axis=0)
        )
        # between grid points the convex profile is interpolated: never below the exact value, and close to it
        f = 1.234
        exact = np.maximum(f * revenue - cost, 0.0).sum(axis=1)
        between = interpolate_profile(profile, factors, f)
        assert np.all(between >= exact - 1e-9)
        np.testing.assert_allclose(between, exact, rtol=2e-3)


def test_economics_at_factor_scales_only_the_mining_value():
    fleet, sc, economics = small_fleet_and_economics()
    factors = profile_factors()
    profile = hashprice_profiles_usd(fleet, plan_grid(fleet), sc, economics, factors)
    same = economics_at_factor(economics, profile, factors, 1.0)
    np.testing.assert_allclose(same.mine_value_usd, economics.mine_value_usd)
    double = economics_at_factor(economics, profile, factors, 2.0)
    for g, group in enumerate(fleet.rack_groups):
        revenue, cost = rack_margin_usd(fleet, g, sc)
        opex = group.opex_usd_per_rack_day * fleet.horizon.days
        np.testing.assert_allclose(
            double.mine_value_usd[g].sum(axis=0), np.maximum(2 * revenue - cost, 0).sum(axis=1) - opex
        )
    np.testing.assert_array_equal(double.energy_mwh, economics.energy_mwh)


def test_economics_at_a_grid_factor_equal_economics_of_scaled_scenarios():
    """Independent route: scale the hashprice paths themselves and recompute the economics."""
    fleet, sc, economics = small_fleet_and_economics()
    factors = profile_factors()
    profile = hashprice_profiles_usd(fleet, plan_grid(fleet), sc, economics, factors)
    for j in (120, 300, 400):
        scaled = dataclasses.replace(sc, hashprice_usd_per_ph_day=sc.hashprice_usd_per_ph_day * factors[j])
        direct = group_economics(fleet, scaled)
        shifted = economics_at_factor(economics, profile, factors, factors[j])
        np.testing.assert_allclose(shifted.mine_value_usd, direct.mine_value_usd, rtol=1e-9, atol=1e-6)


def test_profile_skips_coupled_steps_and_items_scale():
    """With curtailment events and demand-response calls, coupled steps are priced item by item."""
    data = small_fleet_data(days=2, scenarios=5)
    data["markets"][0]["curtailment_events"] = [
        {"name": "storm", "events_per_year": 150, "mean_duration_hours": 8, "available_fraction": 0.2}
    ]
    fleet = parse_fleet(data)
    sc = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(5), fleet.scenarios.seed)
    economics = group_economics(fleet, sc)
    assert economics.n_coupled > 0
    factors = profile_factors()
    sites = {site.id: n for n, site in enumerate(fleet.sites)}
    for g, group in enumerate(fleet.rack_groups):
        separable = separable_steps(economics, sites[group.site], sc.n_steps)
        flat = group_profile_usd(*rack_margin_usd(fleet, g, sc), separable, factors)
        opex = group.opex_usd_per_rack_day * fleet.horizon.days
        np.testing.assert_allclose(
            interpolate_profile(flat, factors, 1.0) - opex, economics.mine_value_usd[g].sum(axis=0)
        )
    assert not separable_steps(economics, sites["spot"], sc.n_steps).all()
    profile = hashprice_profiles_usd(fleet, plan_grid(fleet), sc, economics, factors)
    scaled = economics_at_factor(economics, profile, factors, 1.5)
    np.testing.assert_allclose(scaled.item_hash_revenue_usd, 1.5 * economics.item_hash_revenue_usd)
    np.testing.assert_array_equal(scaled.item_power_cost_usd, economics.item_power_cost_usd)


def test_bisection_brackets_every_groups_flip():
    flips = {0: (0.73, 2.2), 1: (None, 1.31), 2: (0.2, None)}  # group -> (down flip, up flip); none in range

    def counts(f: float) -> list[int]:
        out = []
        for g in range(3):
            down, up = flips[g]
            out.append(10 + (f > up if up else 0) - (f < down if down else 0))
        return out

    counts_at = {f: counts(f) for f in (1.0, *DOWN_GRID, *UP_GRID)}
    base = counts_at[1.0]
    brackets = initial_brackets(base, counts_at)
    while todo := [f for f in pending_factors(brackets, 0.005) if f not in counts_at]:
        counts_at.update({f: counts(f) for f in todo})
        brackets = refine(brackets, base, counts_at, 0.005)
    found = {(b.group, b.direction): b for b in refine(brackets, base, counts_at, 0.005)}
    assert set(found) == {(0, "down"), (0, "up"), (1, "up")}
    assert found[0, "down"].midpoint == pytest.approx(0.73, rel=0.005)
    assert found[0, "up"].midpoint == pytest.approx(2.2, rel=0.005)
    assert found[1, "up"].midpoint == pytest.approx(1.31, rel=0.005)
    assert found[0, "down"].changed_count == 9 and found[1, "up"].changed_count == 11


def test_with_site_capacity_changes_one_site():
    fleet = parse_fleet(small_fleet_data())
    more = with_site_capacity(fleet, "spot", 1.0)
    assert more.site("spot").capacity_mw == pytest.approx(fleet.site("spot").capacity_mw + 1.0)
    assert more.site("fixed").capacity_mw == fleet.site("fixed").capacity_mw
    assert fleet.site("spot").capacity_mw == 0.25  # the original is untouched
