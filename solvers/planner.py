"""The planning pipeline: scenarios and per-rack economics on Ray, then the compact MIP on HiGHS.

mpi-sppy style: workers receive plain numbers (fleet, scenario indices, seeds) and build what
they need; Pyomo models are built inside the worker that solves them.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from optimizer.allocation import Allocation, scenario_profits_usd
from optimizer.deal_report import conversion_results, timeline_events, year_figures
from optimizer.economics import GroupEconomics, concat_economics, economics_grid, group_economics
from optimizer.fleet import Fleet, RiskSettings, SolverSettings, with_overrides
from optimizer.formulation import build_compact_model, extract_allocation
from optimizer.lifecycles import plan_grid
from optimizer.market import Horizon
from optimizer.plan_result import (
    PlanResult,
    SolverReport,
    SubhourlyValue,
    ai_results,
    group_allocations,
    group_breakevens,
    site_breakdowns,
)
from optimizer.report_sums import scenario_sums
from optimizer.risk import profit_stats
from optimizer.scenarios import ScenarioSet, concat_scenarios, generate_scenarios, hourly_means, select_rows
from optimizer.ties import break_ties
from solvers.diagnose import Commitments, apply_commitments, explain_infeasible
from solvers.economics_batches import EconomicsBatches
from solvers.highs import (
    InfeasiblePlanError,
    MipProgress,
    NoSolutionInTimeError,
    SolveOutcome,
    finite_or_none,
    solve,
)
from solvers.limits import gap_exceeded, resolved_time_limit_s
from solvers.ray_pool import (
    batches,
    ensure_ray,
    fan_out,
    fan_out_refs,
    get,
    in_process,
    lazy_remote,
    put,
    running_in_process,
    runs_in_process,
)

# (stage, done, total). It is also called again with unchanged figures while a stage waits on long
# batches: a heartbeat, so that a callback that stops the run (solvers/runs.py) acts within a poll.
Progress = Callable[[str, int, int], None]

OPTIMIZATION_STREAM = 0  # seed streams: see optimizer.scenarios.scenario_rng


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class ScenarioSpec:
    """Where a run's scenarios come from: drawn from the fleet's market model, or given by the user."""

    count: int
    seed: int
    stream: int = OPTIMIZATION_STREAM
    provided: ScenarioSet | None = None
    # draw (or read) the paths at this sub-hourly step, then average them to the fleet's hourly step
    # (optimizer.scenarios.hourly_means): the hourly twin of a sub-hourly plan, same paths
    draw_step_minutes: int | None = None


def batch_scenarios(
    fleet: Fleet,
    rows: range,
    seed: int,
    stream: int,
    provided: ScenarioSet | None,
    draw_step_minutes: int | None = None,
) -> ScenarioSet:
    """The scenarios of one batch: drawn from the fleet's market model, or the user's own rows.

    `draw_step_minutes`: drawn at that (sub-hourly) step and returned as hourly means.
    """
    if draw_step_minutes is None:
        if provided is None:
            return generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, rows, seed, stream)
        return select_rows(provided, rows)
    if provided is None:
        horizon = Horizon(start=fleet.horizon.start, days=fleet.horizon.days, step_minutes=draw_step_minutes)
        return hourly_means(generate_scenarios(fleet.bitcoin, fleet.markets, horizon, rows, seed, stream))
    return hourly_means(select_rows(provided, rows))


# Scenario-steps one chunk of a batch holds at once (~2 MB per float path array): a batch is drawn and
# priced chunk by chunk, so a task's memory stays flat however long the horizon (a quarter's 2,184
# hourly steps fit 114 scenarios a chunk, five years' 43,830 fit 5).
STREAM_CELLS = 250_000


def economics_chunks(
    fleet: Fleet,
    rows: range,
    seed: int,
    stream: int,
    provided: ScenarioSet | None,
    draw_step_minutes: int | None = None,
) -> Iterator[tuple[GroupEconomics, ScenarioSet]]:
    """A batch's scenarios and their economics, chunk by chunk (at most STREAM_CELLS scenario-steps each)."""
    grid = plan_grid(fleet)
    drawn_steps = fleet.horizon.n_steps * (60 // draw_step_minutes if draw_step_minutes else 1)
    per_chunk = max(1, STREAM_CELLS // max(1, drawn_steps))
    for start in range(rows.start, rows.stop, per_chunk):
        chunk = range(start, min(start + per_chunk, rows.stop))
        scenarios = batch_scenarios(fleet, chunk, seed, stream, provided, draw_step_minutes)
        yield group_economics(fleet, scenarios, grid if scenarios.n_steps == grid.timeline.n_steps else None), scenarios


def streamed_economics(
    fleet: Fleet,
    rows: range,
    seed: int,
    stream: int,
    provided: ScenarioSet | None,
    keep: bool = False,
    draw_step_minutes: int | None = None,
) -> tuple[GroupEconomics, ScenarioSet | None]:
    """Economics of a batch computed chunk by chunk; identical to one pass over the whole batch."""
    parts, kept = [], []
    for economics, scenarios in economics_chunks(fleet, rows, seed, stream, provided, draw_step_minutes):
        parts.append(economics)
        if keep:
            kept.append(scenarios)
    return concat_economics(parts), (concat_scenarios(kept) if keep else None)


def _scenario_ticker(
    parts: list[range], count: int, progress: Progress
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """Reports 0 of `count` scenarios now; returns the per-batch callback that counts the rest, and one
    that repeats the last report (while waiting)."""
    done = [0]

    def tick(index: int) -> None:
        done[0] += len(parts[index])
        progress("scenarios", done[0], count)

    def again() -> None:
        progress("scenarios", done[0], count)

    progress("scenarios", 0, count)
    return tick, again


@lazy_remote(num_cpus=1)
def _economics_batch(fleet: Fleet, rows: range, seed: int, stream: int, provided, keep: bool, draw_step_minutes=None):
    return streamed_economics(fleet, rows, seed, stream, provided, keep, draw_step_minutes)


@lazy_remote(num_cpus=1)
def _economics_only(fleet: Fleet, rows: range, seed: int, stream: int, provided, draw_step_minutes=None):
    return streamed_economics(fleet, rows, seed, stream, provided, False, draw_step_minutes)[0]


def economics_batches(
    fleet: Fleet,
    spec: ScenarioSpec,
    batch_size: int,
    workers: int | None = None,
    progress: Progress = _no_progress,
) -> EconomicsBatches:
    """The economics of every scenario left in the object store batch by batch (solvers/economics_batches.py):
    the driver fetches a summary per batch, never the scenarios; the same numbers as `compute_economics`."""
    fleet_ref = put(fleet)
    provided_ref = None if spec.provided is None else put(spec.provided)
    parts = batches(spec.count, batch_size)
    tick, _ = _scenario_ticker(parts, spec.count, progress)
    args = [(fleet_ref, rows, spec.seed, spec.stream, provided_ref, spec.draw_step_minutes) for rows in parts]
    return EconomicsBatches.from_refs(fleet, fan_out_refs(_economics_only, args, workers, tick), workers)


def compute_economics(
    fleet: Fleet,
    spec: ScenarioSpec,
    batch_size: int,
    workers: int | None = None,
    keep_scenarios: bool = False,
    progress: Progress = _no_progress,
) -> tuple[GroupEconomics, ScenarioSet | None]:
    """Per-rack economics of every scenario, computed in Ray batches; identical for any batching."""
    fleet_ref = put(fleet)
    provided_ref = None if spec.provided is None else put(spec.provided)  # put once, pass references
    parts = batches(spec.count, batch_size)
    tick, again = _scenario_ticker(parts, spec.count, progress)
    results = fan_out(
        _economics_batch,
        [
            (fleet_ref, rows, spec.seed, spec.stream, provided_ref, keep_scenarios, spec.draw_step_minutes)
            for rows in parts
        ],
        workers,
        tick,
        on_wait=again,
    )
    economics = concat_economics([econ for econ, _ in results])
    scenarios = concat_scenarios([s for _, s in results]) if keep_scenarios else None
    return economics, scenarios


@dataclass(frozen=True)
class SolvedPlan:
    allocation: Allocation
    outcome: SolveOutcome
    build_s: float
    variables: int
    constraints: int
    time_limit_s: float | None = None


def solve_allocation(
    fleet: Fleet,
    economics: GroupEconomics | EconomicsBatches,
    risk: RiskSettings,
    solver: SolverSettings,
    on_mip_progress: Callable[[MipProgress], None] | None = None,
    commitments: Commitments | None = None,
) -> SolvedPlan:
    """Build the compact MIP and solve it here; called inside a Ray worker by `solve_remote`.

    `commitments` fix decisions first; an infeasible model raises an error naming the constraints at fault.
    """
    from solvers.decomposition import SolveMethod, choose_method

    if choose_method(fleet, economics, solver.method) is SolveMethod.DECOMPOSITION:
        return solve_decomposed(fleet, economics, risk, solver, on_mip_progress, commitments)
    if isinstance(economics, EconomicsBatches):  # the single MIP needs every scenario here
        economics = economics.gather()
    start = time.perf_counter()
    model = build_compact_model(fleet, economics, risk)
    if commitments is not None:
        apply_commitments(model, commitments)
    build_s = time.perf_counter() - start
    time_limit_s = resolved_time_limit_s(solver, fleet, economics)
    try:
        outcome = solve(model, time_limit_s, solver.mip_rel_gap, solver.threads, on_mip_progress)
    except NoSolutionInTimeError:
        raise
    except InfeasiblePlanError:
        raise explain_infeasible(model) from None
    return SolvedPlan(
        allocation=break_ties(fleet, extract_allocation(model, fleet)),  # optimizer/ties.py
        outcome=outcome,
        build_s=build_s,
        variables=model.nvariables(),
        constraints=model.nconstraints(),
        time_limit_s=time_limit_s,
    )


def solve_decomposed(
    fleet: Fleet,
    economics: GroupEconomics | EconomicsBatches,
    risk: RiskSettings,
    solver: SolverSettings,
    on_mip_progress: Callable[[MipProgress], None] | None = None,
    commitments: Commitments | None = None,
    workers: int | None = None,
) -> SolvedPlan:
    """The same plan by exact decomposition (solvers/decomposition.py): master here, scenario work on Ray."""
    from solvers.decomposition import solve_decomposition

    time_limit_s = resolved_time_limit_s(solver, fleet, economics)
    result = solve_decomposition(
        fleet, economics, risk, solver, time_limit_s, on_mip_progress, workers=workers, commitments=commitments
    )
    return SolvedPlan(
        allocation=break_ties(fleet, extract_allocation(result.model, fleet)),
        outcome=result.outcome,
        build_s=result.report.setup_s,
        variables=result.variables,
        constraints=result.constraints,
        time_limit_s=time_limit_s,
    )


solve_remote = lazy_remote(num_cpus=1)(solve_allocation)


def plan_fleet(
    fleet: Fleet,
    provided: ScenarioSet | None = None,
    workers: int | None = None,
    keep_scenarios: bool = False,
    progress: Progress = _no_progress,
    solve_plan: Callable[[Fleet, GroupEconomics], SolvedPlan] | None = None,
    local: bool | None = None,
) -> tuple[PlanResult, ScenarioSet | None]:
    """Plan the fleet end to end; returns the plan and, if asked, the scenarios it used.

    `solve_plan` replaces the default MIP solve (one `solve_remote` task), e.g. by one a caller can
    cancel, bound by a deadline or follow (solvers/runs.py). `local`: True runs every task in this
    process, False on Ray, None decides by the work (`runs_in_process`); the plan is the same.
    """
    count = fleet.scenarios.count if provided is None else provided.n_scenarios
    if local is None:
        local = runs_in_process(fleet, count)
    if not local:
        ensure_ray()
    with in_process(local):
        return _plan_fleet(fleet, provided, count, workers, keep_scenarios, progress, solve_plan)


def _plan_fleet(fleet, provided, count, workers, keep_scenarios, progress, solve_plan):
    timings: dict[str, float] = {}
    start = time.perf_counter()
    spec = ScenarioSpec(count=count, seed=fleet.scenarios.seed, provided=provided)
    if not keep_scenarios and decomposes(fleet, count):  # the batches stay where they were computed
        economics, scenarios = economics_batches(fleet, spec, fleet.scenarios.batch_size, workers, progress), None
    else:
        economics, scenarios = compute_economics(
            fleet, spec, fleet.scenarios.batch_size, workers, keep_scenarios, progress
        )
    timings["scenarios_s"] = time.perf_counter() - start

    progress("solve", 0, 1)
    solved: SolvedPlan = (solve_plan or _solve_on_ray)(fleet, economics)
    progress("solve", 1, 1)
    timings["model_build_s"] = solved.build_s
    timings["solve_s"] = solved.outcome.wall_s
    result = assemble_plan(fleet, economics, solved, spec, source="file" if provided is not None else "generated")
    if fleet.horizon.step_minutes < 60:
        hourly_start = time.perf_counter()
        result = result.model_copy(
            update={"subhourly": subhourly_value(fleet, spec, solved, result, workers, solve_plan or _solve_on_ray)}
        )
        timings["hourly_twin_s"] = time.perf_counter() - hourly_start
    timings["total_s"] = time.perf_counter() - start
    return result.model_copy(update={"timings_s": timings}), scenarios


def decomposes(fleet: Fleet, count: int) -> bool:
    """Whether the solve will decompose, known before the economics: `decomposition`, or `auto` at
    AUTO_MIN_SCENARIOS scenarios or more. (`auto` may also decompose a smaller run on its nonzeros, which
    are counted from the economics: that run gathers them, as the monolithic MIP does.)"""
    from solvers.decomposition import AUTO_MIN_SCENARIOS, SolveMethod

    method = fleet.solver.method
    return method is SolveMethod.DECOMPOSITION or (method is SolveMethod.AUTO and count >= AUTO_MIN_SCENARIOS)


def hourly_fleet(fleet: Fleet) -> Fleet:
    """The same fleet on an hourly horizon: the twin a sub-hourly plan is compared with."""
    return with_overrides(fleet, {"horizon": {"step_minutes": 60}})


def hourly_twin(
    fleet: Fleet,
    spec: ScenarioSpec,
    workers: int | None = None,
    solve_plan: Callable[[Fleet, GroupEconomics], SolvedPlan] | None = None,
) -> tuple[Fleet, GroupEconomics, SolvedPlan]:
    """Plan the hourly twin of a sub-hourly fleet on the hourly means of the same scenarios."""
    twin = hourly_fleet(fleet)
    twin_spec = dataclasses.replace(spec, draw_step_minutes=fleet.horizon.step_minutes)
    economics, _ = compute_economics(twin, twin_spec, fleet.scenarios.batch_size, workers)
    return twin, economics, (solve_plan or _solve_on_ray)(twin, economics)


def subhourly_value(
    fleet: Fleet,
    spec: ScenarioSpec,
    solved: SolvedPlan,
    result: PlanResult,
    workers: int | None = None,
    solve_plan: Callable[[Fleet, GroupEconomics], SolvedPlan] | None = None,
) -> SubhourlyValue:
    """The sub-hourly plan against the hourly plan on the same paths averaged to hours."""
    twin, economics, hourly = hourly_twin(fleet, spec, workers, solve_plan)
    profits = scenario_profits_usd(twin, economics, hourly.allocation, economics_grid(twin, economics))
    hourly_mean = float(profits.mean())
    objective, hourly_objective = solved.outcome.objective_usd, hourly.outcome.objective_usd
    mean = float(result.profit["mean_usd"])
    return SubhourlyValue(
        step_minutes=fleet.horizon.step_minutes,
        objective_usd=objective,
        hourly_objective_usd=hourly_objective,
        value_usd=objective - hourly_objective,
        mean_profit_usd=mean,
        hourly_mean_profit_usd=hourly_mean,
        mean_profit_value_usd=mean - hourly_mean,
        same_allocation=solved.allocation.lifecycle_counts(fleet) == hourly.allocation.lifecycle_counts(twin),
    )


def _solve_on_ray(fleet: Fleet, economics: GroupEconomics) -> SolvedPlan:
    if running_in_process():
        return solve_allocation(fleet, economics, fleet.risk, fleet.solver)
    return get(solve_remote.remote(fleet, economics, fleet.risk, fleet.solver))


def assemble_plan(
    fleet: Fleet, economics: GroupEconomics | EconomicsBatches, solved: SolvedPlan, spec: ScenarioSpec, source: str
) -> PlanResult:
    """The plan's report. Batches left in the object store (`economics_batches`) are summed where they live
    and only their sums come here (optimizer/report_sums.py): the driver never holds every scenario."""
    allocation, grid = solved.allocation, economics_grid(fleet, economics)
    if isinstance(economics, EconomicsBatches):
        sums = economics.report_sums(fleet, allocation)
    else:
        sums = scenario_sums(fleet, economics, allocation, grid)
    means = sums.means()
    stats = profit_stats(sums.profit_usd, fleet.risk.alpha)
    ai_sites, offers = ai_results(fleet, allocation, grid)
    hashprice = means.hashprice_usd_per_ph_day
    years, site_years = year_figures(fleet, grid, means, allocation)
    rate = fleet.finance.discount_rate_per_year
    return PlanResult(
        fleet=fleet.name,
        objective=fleet.risk.objective.value,
        alpha=fleet.risk.alpha,
        weight=fleet.risk.weight,
        horizon_days=fleet.horizon.days,
        expected_hashprice_usd_per_ph_day=hashprice,
        allocation=group_allocations(fleet, means, allocation, grid),
        ai_sites=ai_sites,
        offers=offers,
        profit=stats.as_dict(),
        sites=site_breakdowns(fleet, means, allocation, grid),
        breakeven=group_breakevens(fleet, hashprice),
        solver=SolverReport(
            status=solved.outcome.status,
            objective_usd=solved.outcome.objective_usd,
            bound_usd=finite_or_none(solved.outcome.bound_usd),
            mip_gap=finite_or_none(solved.outcome.mip_gap),
            wall_s=solved.outcome.wall_s,
            variables=solved.variables,
            constraints=solved.constraints,
            time_limit_s=solved.time_limit_s,
            max_accepted_gap=fleet.solver.max_accepted_gap,
            gap_exceeded=gap_exceeded(solved.outcome.status, solved.outcome.mip_gap, fleet.solver.max_accepted_gap),
        ),
        scenarios={
            "count": spec.count,
            "seed": spec.seed,
            "stream": spec.stream,
            "source": source,
            "batch_size": fleet.scenarios.batch_size,
        },
        timings_s={},
        versions=software_versions(),
        horizon_start=fleet.horizon.start.isoformat(),
        discount_rate_per_year=rate,
        money_basis=f"present value at {fleet.horizon.start.isoformat()}, discounted at {rate:.1%} a year"
        if rate
        else "nominal (no discounting)",
        purchases=dict(allocation.purchases),
        conversions=conversion_results(fleet, grid, means, allocation),
        years=years,
        site_years=site_years,
        timeline=timeline_events(fleet, grid, means, allocation),
    )


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("hashpivot", "pyomo", "highspy", "ray", "numpy", "pydantic"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions
