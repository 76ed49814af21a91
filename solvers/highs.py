"""Solve a Pyomo model with HiGHS (highspy) through Pyomo's solver interface."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyomo.environ as pyo
from pyomo.contrib.solver.common.factory import SolverFactory
from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition


class SolveError(RuntimeError):
    """Base of the ways a solve ends without a plan; each kind is a sibling, so catching one never catches another."""


class InfeasiblePlanError(SolveError):
    """No plan satisfies the constraints (a proof, not a timeout)."""


class NoSolutionInTimeError(SolveError):
    """The time limit hit before HiGHS found any plan: not a proof that none exists, so not infeasible."""


@dataclass(frozen=True)
class MipProgress:
    """What HiGHS knows mid-solve (callbacks): best objective found, proven bound, their gap."""

    incumbent_usd: float  # -inf (maximizing) until the first plan is found
    bound_usd: float  # +inf until the first bound
    mip_gap: float
    running_s: float


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


def solve(
    model: pyo.ConcreteModel,
    time_limit_s: float,
    mip_rel_gap: float,
    threads: int = 1,
    on_progress: Callable[[MipProgress], None] | None = None,
) -> SolveOutcome:
    """Solve to the gap or the time limit and load the best solution found into the model.

    `on_progress` hears each improving solution and each MIP log line (incumbent and bound).
    """
    solver = SolverFactory("highs")
    start = time.perf_counter()
    if on_progress is not None:
        _subscribe_progress(solver, model, on_progress)
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
        if results.termination_condition is TerminationCondition.maxTimeLimit:
            raise NoSolutionInTimeError(f"no plan found within the time limit of {time_limit_s:.3g} s")
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


def _subscribe_progress(solver, model: pyo.ConcreteModel, on_progress: Callable[[MipProgress], None]) -> None:
    """Hook HiGHS's MIP callbacks. Pyomo's persistent HiGHS interface creates the highspy object when
    the model is loaded and `solve` reuses it for the same model, so loading first exposes it."""
    solver.set_instance(model)
    highs = getattr(solver, "_solver_model", None)
    if highs is None:  # another Pyomo layout: solve without progress rather than fail
        return

    def relay(event) -> None:
        out = event.data_out
        try:
            on_progress(MipProgress(out.mip_primal_bound, out.mip_dual_bound, out.mip_gap, out.running_time))
        except Exception:  # noqa: BLE001 - a progress sink must never break the solve
            pass

    highs.cbMipImprovingSolution += relay
    highs.cbMipLogging += relay
