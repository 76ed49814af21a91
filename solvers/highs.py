"""Solve a Pyomo model with HiGHS (highspy) through Pyomo's solver interface."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pyomo.environ as pyo
from pyomo.contrib.solver.common.factory import SolverFactory
from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition


class InfeasiblePlanError(RuntimeError):
    """No plan satisfies the constraints."""


@dataclass(frozen=True)
class SolveOutcome:
    status: str  # optimal | time_limit | interrupted | other
    objective_usd: float
    bound_usd: float
    mip_gap: float  # relative gap between incumbent and bound, as HiGHS defines it
    wall_s: float


_STATUS = {
    TerminationCondition.convergenceCriteriaSatisfied: "optimal",
    TerminationCondition.maxTimeLimit: "time_limit",
    TerminationCondition.interrupted: "interrupted",
}


def solve(model: pyo.ConcreteModel, time_limit_s: float, mip_rel_gap: float, threads: int = 1) -> SolveOutcome:
    """Solve to the gap or the time limit and load the best solution found into the model."""
    solver = SolverFactory("highs")
    start = time.perf_counter()
    results = solver.solve(
        model,
        time_limit=time_limit_s,
        rel_gap=mip_rel_gap,
        threads=threads,
        load_solutions=False,
        raise_exception_on_nonoptimal_result=False,
    )
    wall_s = time.perf_counter() - start
    if results.termination_condition in (
        TerminationCondition.provenInfeasible,
        TerminationCondition.locallyInfeasible,
        TerminationCondition.infeasibleOrUnbounded,
    ):
        raise InfeasiblePlanError(f"the plan is infeasible ({results.termination_condition.name})")
    if results.solution_status in (SolutionStatus.noSolution, SolutionStatus.infeasible):
        raise InfeasiblePlanError(f"no feasible plan found ({results.termination_condition.name})")
    results.solution_loader.load_vars()
    objective, bound = float(results.incumbent_objective), float(results.objective_bound)
    return SolveOutcome(
        status=_STATUS.get(results.termination_condition, "other"),
        objective_usd=objective,
        bound_usd=bound,
        mip_gap=relative_gap(objective, bound),
        wall_s=wall_s,
    )


def relative_gap(objective: float, bound: float) -> float:
    """|bound - objective| / max(|objective|, 1e-9), HiGHS's definition; inf without a bound."""
    if not math.isfinite(bound):
        return math.inf
    return abs(bound - objective) / max(abs(objective), 1e-9)
