"""The matrix hand-off to HiGHS (solvers/highs.py) against Pyomo's own HiGHS interface, the path it replaced."""

import math

import numpy as np
import pyomo.environ as pyo
import pytest
from pyomo.contrib.solver.common.factory import SolverFactory

from optimizer.allocation import scenario_profits_usd
from optimizer.economics import group_economics
from optimizer.fleet import RiskSettings, parse_fleet
from optimizer.formulation import build_compact_model, extract_allocation
from optimizer.risk import risk_objective_value
from optimizer.scenarios import generate_scenarios
from solvers.diagnose import Commitments, apply_commitments
from solvers.highs import InfeasiblePlanError, MipProgress, relative_gap, solve, to_matrix
from tests.conftest import events_fleet_data, medium_fleet_data, small_fleet_data

FLEETS = {
    "small": lambda: small_fleet_data(days=3, scenarios=8),
    "medium": lambda: medium_fleet_data(days=2, scenarios=6),
    "events": lambda: events_fleet_data(days=2, scenarios=6),
}
RISKS = {
    "expected": RiskSettings(objective="expected"),
    "cvar": RiskSettings(objective="cvar", alpha=0.8, weight=0.6),
    "worst": RiskSettings(objective="worst"),
}


def compact(name: str, risk: RiskSettings):
    fleet = parse_fleet(FLEETS[name]())
    scenarios = generate_scenarios(
        fleet.bitcoin, fleet.markets, fleet.horizon, range(fleet.scenarios.count), fleet.scenarios.seed
    )
    economics = group_economics(fleet, scenarios)
    return fleet, economics, build_compact_model(fleet, economics, risk)


def pyomo_interface_optimum(model) -> float:
    """The optimum through pyomo.contrib.solver's HiGHS interface (the previous hand-off)."""
    results = SolverFactory("highs").solve(model, rel_gap=0.0, threads=1, load_solutions=False)
    return float(results.incumbent_objective)


@pytest.mark.parametrize("risk", RISKS, ids=list(RISKS))
@pytest.mark.parametrize("name", FLEETS, ids=list(FLEETS))
def test_same_optimum_as_pyomo_interface(name, risk):
    fleet, economics, model = compact(name, RISKS[risk])
    reference = pyomo_interface_optimum(model)
    outcome = solve(model, time_limit_s=120, mip_rel_gap=0.0)
    assert outcome.status == "optimal"
    assert outcome.objective_usd == pytest.approx(reference, rel=1e-7, abs=1e-3)
    assert outcome.mip_gap <= 1e-6
    # the values went back into the Pyomo variables: the objective evaluates to the optimum there,
    # and the allocation read from them scores the optimum on the scenarios
    assert pyo.value(model.objective) == pytest.approx(outcome.objective_usd, rel=1e-7, abs=1e-3)
    allocation = extract_allocation(model, fleet)
    profits = scenario_profits_usd(fleet, economics, allocation)
    r = fleet.risk if risk == "expected" else RISKS[risk]
    scored = risk_objective_value(profits, r.objective.value, r.alpha, r.weight)
    assert scored == pytest.approx(outcome.objective_usd, rel=1e-6, abs=1e-2)


def test_matrix_matches_the_model():
    """Rows, columns and senses: A x evaluated on the solution equals each Pyomo constraint body."""
    _, _, model = compact("events", RISKS["cvar"])
    solve(model, time_limit_s=120, mip_rel_gap=0.0)
    matrix = to_matrix(model)
    assert matrix.sense == -1  # maximize
    assert matrix.n_cols == sum(1 for v in model.component_data_objects(pyo.Var) if not v.fixed)
    x = np.array([v.value for v in matrix.columns])
    import scipy.sparse as sp

    a = sp.csc_array((matrix.a_value, matrix.a_index, matrix.a_start), shape=(matrix.n_rows, matrix.n_cols))
    activity = a @ x
    assert np.all(activity >= matrix.row_lower - 1e-5) and np.all(activity <= matrix.row_upper + 1e-5)
    assert float(matrix.cost @ x + matrix.offset) == pytest.approx(pyo.value(model.objective), rel=1e-9)
    ints = [v for v, i in zip(matrix.columns, matrix.integer, strict=True) if i]
    assert ints and all(v.is_integer() for v in ints)
    assert all(abs(v.value - round(v.value)) < 1e-6 for v in ints)


def test_fixed_variables_fold_into_bounds():
    """Commitments fix binaries: they leave the matrix, and the optimum is the constrained one."""
    fleet, _, free = compact("medium", RISKS["expected"])
    _, _, committed = compact("medium", RISKS["expected"])
    apply_commitments(committed, Commitments(accept_offers=("colo",)))
    free_outcome = solve(free, 120, 0.0)
    committed_outcome = solve(committed, 120, 0.0)
    assert committed_outcome.objective_usd == pytest.approx(pyomo_interface_optimum(committed), rel=1e-7, abs=1e-3)
    assert committed_outcome.objective_usd <= free_outcome.objective_usd + 1e-6
    assert committed.accept["colo"].value == 1
    leased = extract_allocation(committed, fleet).lease_mw
    assert sum(mw for (offer, _), mw in leased.items() if offer == "colo") >= fleet.lease_offers[0].min_mw - 1e-9
    assert all(v is not committed.accept["colo"] for v in to_matrix(committed).columns)


def test_infeasible_model_raises():
    model = pyo.ConcreteModel()
    model.x = pyo.Var(domain=pyo.NonNegativeIntegers, bounds=(0, 3))
    model.y = pyo.Var(domain=pyo.NonNegativeReals)
    model.c1 = pyo.Constraint(expr=model.x + model.y >= 5)
    model.c2 = pyo.Constraint(expr=model.y <= 1)
    model.obj = pyo.Objective(expr=model.x, sense=pyo.maximize)
    with pytest.raises(InfeasiblePlanError):
        solve(model, 10, 0.0)
    model.x.fix(3)
    model.y.fix(0)
    with pytest.raises(InfeasiblePlanError):  # every variable fixed: the compiler sees a constant violated row
        solve(model, 10, 0.0)
    model.c2.deactivate()
    model.y.fix(2)  # every variable fixed, every row satisfied: the objective is a constant
    outcome = solve(model, 10, 0.0)
    assert outcome.status == "optimal" and outcome.objective_usd == 3 and outcome.mip_gap == 0


def test_ranged_and_equality_rows_and_unused_variables():
    model = pyo.ConcreteModel()
    model.x = pyo.Var(domain=pyo.Integers, bounds=(-10, 10))
    model.y = pyo.Var(domain=pyo.Reals)
    model.unused = pyo.Var(domain=pyo.Reals, bounds=(2, 5))
    model.r = pyo.Constraint(expr=pyo.inequality(-3.5, 2 * model.x + model.y, 7.25))
    model.e = pyo.Constraint(expr=model.y - 0.5 * model.x == 0.25)
    model.obj = pyo.Objective(expr=model.x + 3 * model.y + 4, sense=pyo.maximize)
    outcome = solve(model, 10, 0.0)
    # y = 0.5 x + 0.25, 2.5 x + 0.25 <= 7.25 -> x <= 2.8 -> x = 2, y = 1.25: 2 + 3.75 + 4
    assert model.x.value == pytest.approx(2) and model.y.value == pytest.approx(1.25)
    assert outcome.objective_usd == pytest.approx(9.75) and outcome.status == "optimal"
    assert model.unused.value == 2  # in no row: the value nearest zero within its bounds


def test_mip_progress_reaches_the_callback():
    from tests.services.grpc_harness import hard_fleet_data

    fleet = parse_fleet(hard_fleet_data(time_limit_s=1.0))
    scenarios = generate_scenarios(
        fleet.bitcoin, fleet.markets, fleet.horizon, range(fleet.scenarios.count), fleet.scenarios.seed
    )
    model = build_compact_model(fleet, group_economics(fleet, scenarios), fleet.risk)
    seen: list[MipProgress] = []
    outcome = solve(model, time_limit_s=1.0, mip_rel_gap=0.0, on_progress=seen.append)
    assert outcome.status == "time_limit" and 0 < outcome.mip_gap < 1
    assert seen and any(math.isfinite(p.incumbent_usd) for p in seen)
    finite = [p for p in seen if math.isfinite(p.incumbent_usd)]
    assert max(p.incumbent_usd for p in finite) <= outcome.objective_usd + 1e-6
    assert outcome.mip_gap == pytest.approx(relative_gap(outcome.objective_usd, outcome.bound_usd))


def test_should_stop_interrupts_with_the_best_plan_so_far():
    from tests.services.grpc_harness import hard_fleet_data

    fleet = parse_fleet(hard_fleet_data(time_limit_s=60.0))
    scenarios = generate_scenarios(
        fleet.bitcoin, fleet.markets, fleet.horizon, range(fleet.scenarios.count), fleet.scenarios.seed
    )
    model = build_compact_model(fleet, group_economics(fleet, scenarios), fleet.risk)
    found: list[MipProgress] = []
    outcome = solve(
        model,
        time_limit_s=60.0,
        mip_rel_gap=0.0,
        on_progress=found.append,
        should_stop=lambda: any(math.isfinite(p.incumbent_usd) for p in found),  # stop at the first plan
    )
    assert outcome.status == "interrupted"
    assert outcome.wall_s < 30  # well before the 60 s limit (HiGHS does not close this gap in 20 s)
    assert math.isfinite(outcome.objective_usd) and outcome.mip_gap > 0
    assert pyo.value(model.objective) == pytest.approx(outcome.objective_usd, rel=1e-7, abs=1e-3)
    extract_allocation(model, fleet)  # a plan was loaded
