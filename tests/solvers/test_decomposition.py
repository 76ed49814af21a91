"""The decomposition (solvers/decomposition.py) finds the monolithic MIP's optimum, certifies it, and
gives the same plan for any number of workers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optimizer.allocation import scenario_profits_usd
from optimizer.economics import economics_grid
from optimizer.fleet import SolveMethod, load_fleet, parse_fleet, with_overrides
from optimizer.risk import risk_objective_value
from solvers.decomposition import (
    AUTO_MIN_SCENARIOS,
    AUTO_THRESHOLD_NONZEROS,
    EARLY_MASTER_GAP,
    build_master_model,
    choose_method,
    converted_rack_classes,
    coupled_levels,
    dispatch_values,
    master_layout,
    next_master_gap,
    prepare_batch,
    risk_value,
    scenario_nonzeros,
    solve_decomposition,
)
from solvers.highs import to_matrix
from solvers.planner import ScenarioSpec, compute_economics, solve_allocation
from solvers.ray_pool import in_process
from tests.fleets import EXAMPLES, events_fleet_data, medium_fleet_data, pivot_fleet_data, small_fleet_data

OBJECTIVES = ("expected", "cvar", "worst")
REL_TOL = 1e-6


def _economics(fleet, count: int, seed: int = 7):
    with in_process():
        return compute_economics(fleet, ScenarioSpec(count=count, seed=seed), batch_size=50)[0]


def _value(fleet, economics, allocation) -> float:
    """The exact objective of an allocation (numpy evaluator, coupled steps dispatched exactly)."""
    profits = scenario_profits_usd(fleet, economics, allocation)
    return risk_objective_value(profits, fleet.risk.objective.value, fleet.risk.alpha, fleet.risk.weight)


def _both(fleet, economics, gap: float):
    out = {}
    with in_process():
        for method in (SolveMethod.MONOLITHIC, SolveMethod.DECOMPOSITION):
            solver = fleet.solver.model_copy(update={"method": method, "time_limit_s": 120, "mip_rel_gap": gap})
            out[method] = solve_allocation(fleet, economics, fleet.risk, solver)
    return out[SolveMethod.MONOLITHIC], out[SolveMethod.DECOMPOSITION]


def _assert_same_optimum(fleet, economics, gap: float = REL_TOL):
    """Both methods solved to the relative gap `gap`: their optima agree within it, the decomposition certifies it."""
    mono, dec = _both(fleet, economics, gap)
    assert mono.outcome.status == dec.outcome.status == "optimal"
    # certified: lower <= upper, within the tolerance
    assert dec.outcome.objective_usd <= dec.outcome.bound_usd + 1e-9 * abs(dec.outcome.bound_usd)
    assert dec.outcome.mip_gap <= gap
    scale = max(abs(mono.outcome.objective_usd), 1.0)
    assert abs(dec.outcome.objective_usd - mono.outcome.objective_usd) <= gap * scale + 1e-6
    assert dec.outcome.objective_usd <= mono.outcome.bound_usd + 1e-9 * scale  # below the MIP's own bound
    assert mono.outcome.objective_usd <= dec.outcome.bound_usd + 1e-9 * scale  # and the MIP below ours
    # the reported lower bound is the exact value of the returned plan, and that plan is as good as the MIP's
    exact_dec = _value(fleet, economics, dec.allocation)
    exact_mono = _value(fleet, economics, mono.allocation)
    assert exact_dec == pytest.approx(dec.outcome.objective_usd, rel=1e-9, abs=1e-6)
    assert exact_dec >= exact_mono - gap * scale
    return mono, dec


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_example_fleet_one_quarter(objective):
    fleet = with_overrides(
        load_fleet(EXAMPLES / "fleet.yaml"), {"horizon": {"days": 91}, "risk": {"objective": objective}}
    )
    economics = _economics(fleet, 24)
    assert economics.n_coupled > 0  # the example has curtailment events: Benders cuts are exercised
    # the expected-value MIP of the example takes minutes to close below 1e-5, either way
    _assert_same_optimum(fleet, economics, gap=1e-4 if objective == "expected" else REL_TOL)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_events_and_demand_response(objective):
    fleet = parse_fleet(events_fleet_data(days=3, scenarios=8))
    fleet = with_overrides(fleet, {"risk": {"objective": objective, "alpha": 0.8, "weight": 0.5}})
    economics = _economics(fleet, 10)
    assert economics.coupled_dr_call.any() and np.isfinite(economics.coupled_cap_kw).any()
    mono, dec = _assert_same_optimum(fleet, economics)
    assert mono.allocation.dr_mw or mono.allocation.lease_mw  # the coupled first stage is in play


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_multi_year_pivot(objective):
    fleet = parse_fleet(pivot_fleet_data(months=18, scenarios=4))
    fleet = with_overrides(fleet, {"risk": {"objective": objective, "alpha": 0.75}})
    _assert_same_optimum(fleet, _economics(fleet, 4))


@pytest.mark.parametrize("seed", range(6))
def test_random_small_fleets(seed):
    rng = np.random.default_rng(seed)
    data = (small_fleet_data if seed % 2 else medium_fleet_data)(days=int(rng.integers(2, 4)))
    data["markets"][0]["mean_price_usd_per_mwh"] = float(rng.uniform(25, 70))
    data["markets"][0]["vol_per_sqrt_day"] = float(rng.uniform(0.2, 1.0))
    objective = OBJECTIVES[seed % 3]
    data["risk"] = {"objective": objective, "alpha": float(rng.uniform(0.6, 0.95)), "weight": float(rng.uniform(0, 1))}
    fleet = parse_fleet(data)
    _assert_same_optimum(fleet, _economics(fleet, int(rng.integers(5, 15)), seed=seed))


def test_benders_cut_is_valid_at_every_first_stage():
    """A cut from one first stage bounds the coupled dispatch value at any other (weak duality), tight where made."""
    fleet = parse_fleet(events_fleet_data(days=3, scenarios=6))
    economics = _economics(fleet, 6)
    grid = economics_grid(fleet, economics)
    model = build_master_model(fleet, grid, coupled_levels(fleet, economics))
    matrix = to_matrix(model)
    layout, columns = master_layout(model, fleet, grid, matrix)
    batch = prepare_batch(fleet, economics, np.arange(economics.n_scenarios), layout)
    assert batch.coupled.any()
    rng = np.random.default_rng(0)
    lower = np.array([v.bounds[0] or 0.0 for v in columns])
    upper = np.array([min(v.bounds[1] if v.bounds[1] is not None else 10.0, 10.0) for v in columns])
    points = [lower + rng.uniform(size=len(columns)) * (upper - lower) for _ in range(8)]
    # feasible first stages: no AI (caps minus AI stay >= 0), DR at most half the least planned mining
    zero = np.zeros(len(columns), dtype=bool)
    zero[layout.lease_col] = True
    zero[layout.shed_col] = True
    P = layout.n_periods
    for y in points:
        y[zero] = 0.0
        mining = layout.mining.apply(y)
        for n, col in enumerate(layout.dr_col.tolist()):
            if col >= 0:
                y[col] = 0.5 * mining[n * P : (n + 1) * P].min() / 1000 * rng.uniform()
    want = batch.coupled.copy()
    for y0 in points:
        value0, (scen, coef, const) = dispatch_values(batch, layout, y0, want)
        np.testing.assert_allclose(coef @ y0 + const, value0[scen], rtol=1e-9, atol=1e-6)  # tight at y0
        for y1 in points:
            value1, _ = dispatch_values(batch, layout, y1)
            assert np.all(coef @ y1 + const >= value1[scen] - 1e-6 * np.maximum(1.0, np.abs(value1[scen])))


def test_risk_value_matches_the_compact_objective():
    rng = np.random.default_rng(3)
    profit = rng.normal(size=37) * 1e6
    p = np.full(37, 1 / 37)
    for objective in OBJECTIVES:
        fleet = parse_fleet({**small_fleet_data(), "risk": {"objective": objective, "alpha": 0.9, "weight": 0.4}})
        assert risk_value(profit, fleet.risk, p) == pytest.approx(
            risk_objective_value(profit, objective, 0.9, 0.4), rel=1e-12
        )


def test_progress_streams_certified_bounds_and_a_deadline_returns_the_best_plan():
    fleet = with_overrides(
        load_fleet(EXAMPLES / "fleet.yaml"), {"horizon": {"days": 91}, "risk": {"objective": "cvar"}}
    )
    economics = _economics(fleet, 16)
    seen = []
    with in_process():
        result = solve_decomposition(fleet, economics, fleet.risk, fleet.solver, 120, on_progress=seen.append)
    assert seen, "no progress reported"
    lows = [s.incumbent_usd for s in seen]
    highs = [s.bound_usd for s in seen]
    assert lows == sorted(lows) and highs == sorted(highs, reverse=True)
    assert all(lo <= hi + 1e-6 * abs(hi) for lo, hi in zip(lows, highs, strict=True))
    assert seen[-1].incumbent_usd == result.outcome.objective_usd

    stop_after_first = iter([False, True, True, True])
    with in_process():
        stopped = solve_decomposition(
            fleet, economics, fleet.risk, fleet.solver, 120, should_stop=lambda: next(stop_after_first, True)
        )
    assert stopped.report.iterations <= 2
    assert stopped.outcome.objective_usd <= result.outcome.objective_usd + 1e-6 * abs(result.outcome.objective_usd)
    assert stopped.outcome.bound_usd >= result.outcome.objective_usd - 1e-6 * abs(result.outcome.objective_usd)
    assert math.isfinite(stopped.outcome.mip_gap)


def test_auto_picks_by_model_size():
    fleet = with_overrides(load_fleet(EXAMPLES / "fleet.yaml"), {"horizon": {"days": 91}})
    small = _economics(fleet, 8)
    assert scenario_nonzeros(fleet, small) < AUTO_THRESHOLD_NONZEROS
    assert choose_method(fleet, small, SolveMethod.AUTO) is SolveMethod.MONOLITHIC
    per_scenario = scenario_nonzeros(fleet, small) / small.n_scenarios
    big = small.columns(np.tile(np.arange(8), int(AUTO_THRESHOLD_NONZEROS / per_scenario / 8) + 2))
    assert choose_method(fleet, big, SolveMethod.AUTO) is SolveMethod.DECOMPOSITION
    assert choose_method(fleet, big, SolveMethod.MONOLITHIC) is SolveMethod.MONOLITHIC
    many = small.columns(np.tile(np.arange(8), AUTO_MIN_SCENARIOS // 8 + 1))
    assert choose_method(fleet, many, SolveMethod.AUTO) is SolveMethod.DECOMPOSITION
    assert choose_method(fleet, small.columns(np.arange(7)), SolveMethod.DECOMPOSITION) is SolveMethod.DECOMPOSITION


def test_same_plan_for_one_and_two_workers_and_in_process(ray_session):
    fleet = with_overrides(
        load_fleet(EXAMPLES / "fleet.yaml"),
        {"horizon": {"days": 91}, "risk": {"objective": "cvar"}, "scenarios": {"batch_size": 6}},
    )
    economics = _economics(fleet, 24)
    with in_process():
        here = solve_decomposition(fleet, economics, fleet.risk, fleet.solver, 120)
    one = solve_decomposition(fleet, economics, fleet.risk, fleet.solver, 120, workers=1)
    two = solve_decomposition(fleet, economics, fleet.risk, fleet.solver, 120, workers=2)
    assert "in-process" not in one.report.nodes  # the scenario work ran in Ray tasks
    for other in (one, two):
        np.testing.assert_array_equal(other.y, here.y)
        assert other.outcome.objective_usd == here.outcome.objective_usd
        assert other.outcome.bound_usd == here.outcome.bound_usd
        assert other.report.history == here.report.history


def test_master_gap_loose_first_then_the_tolerance():
    """Early masters to EARLY_MASTER_GAP, then a tenth of the open gap, the tolerance once within 100 of it."""
    tol = 1e-6
    assert next_master_gap(EARLY_MASTER_GAP, 2e-2, tol) == EARLY_MASTER_GAP  # never looser than now
    assert next_master_gap(EARLY_MASTER_GAP, 4e-3, tol) == pytest.approx(4e-4)
    assert next_master_gap(4e-4, 8e-3, tol) == pytest.approx(4e-4)  # the open gap grew: keep the tighter
    assert next_master_gap(4e-4, 9e-5, tol) == tol  # within 100 tolerances: straight to it
    assert next_master_gap(1e-3, 0.0, 1e-4) == 1e-4


def _split_groups(data: dict, ways: int) -> dict:
    """Each rack group split into `ways` groups of slightly different opex, as bench/bench_scale.py does:
    near-identical groups whose converted racks weigh the same in a site's AI MW."""
    out = []
    for group in data["rack_groups"]:
        racks = [group["racks"] // ways + (1 if j < group["racks"] % ways else 0) for j in range(ways)]
        for j, count in enumerate(racks):
            if count:
                opex = group.get("opex_usd_per_rack_day", 0.0) * (0.9 + 0.2 * j / max(1, ways - 1))
                out.append({**group, "id": f"{group['id']}-{j}", "racks": count, "opex_usd_per_rack_day": opex})
    return {**data, "rack_groups": out}


def test_converted_rack_counts_are_the_sums_of_their_classes_and_keep_the_optimum():
    """Each count sums racks converting at one (site, start) with one rack kW; the master with them (and
    without presolve) still finds the monolithic MIP's optimum on near-identical groups with events and DR."""
    fleet = parse_fleet(_split_groups(events_fleet_data(days=3, scenarios=8), 3))
    fleet = with_overrides(fleet, {"risk": {"objective": "cvar", "alpha": 0.8, "weight": 0.5}})
    economics = _economics(fleet, 10)
    grid = economics_grid(fleet, economics)
    classes = converted_rack_classes(fleet, grid)
    assert classes  # the split groups share a class
    for (site, start, kw), members in classes.items():
        for g, ell in members:
            group = fleet.rack_groups[g]
            assert (group.site, grid.lifecycles[g][ell].conversion, fleet.rack_power_kw(group)) == (site, start, kw)
    converting = {
        (g, ell)
        for g, options in enumerate(grid.lifecycles)
        for ell, o in enumerate(options)
        if o.conversion is not None
    }
    in_classes = [m for members in classes.values() for m in members]
    assert len(in_classes) == len(set(in_classes)) and set(in_classes) <= converting
    _, dec = _assert_same_optimum(fleet, economics)
    with in_process():
        solver = fleet.solver.model_copy(update={"method": SolveMethod.DECOMPOSITION, "mip_rel_gap": REL_TOL})
        result = solve_decomposition(fleet, economics, fleet.risk, solver, 120)
    model = result.model
    for c, members in enumerate(classes.values()):
        assert model.converted_racks[c].value == pytest.approx(sum(model.x[g, ell].value for g, ell in members))
    assert result.outcome.objective_usd == pytest.approx(dec.outcome.objective_usd, rel=REL_TOL)
