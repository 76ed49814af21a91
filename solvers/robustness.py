"""Robustness on Ray: out-of-sample scoring, SAA replications, wait-and-see and sensitivity re-solves.

Every fan-out passes numbers (fleet, scenario rows, seeds, per-rack economics) and builds Pyomo
models inside the worker that solves them, with HiGHS on one thread (DESIGN.md section 4).
Profits always come from optimizer.allocation.scenario_profits_usd and optimal plans from
solvers.planner.solve_allocation, so any change to the economics flows into these numbers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import ray

from optimizer.allocation import Allocation, Mode, all_mining, scenario_profits_usd
from optimizer.economics import GroupEconomics, concat_economics, economics_grid, group_economics
from optimizer.economics import site_power_price_usd_per_mwh as site_price_paths
from optimizer.fleet import Fleet, Objective, SolverSettings
from optimizer.plan_result import PlanResult
from optimizer.robustness import (
    OptimalityGap,
    RiskObjective,
    RobustnessReport,
    RobustnessSettings,
    ScenarioSums,
    WaitAndSee,
    add_sums,
    allocation_from_plan,
    calculator_allocation,
    candidate_sample_objective,
    evaluate_plan,
    mean_scenario_from_sums,
    optimality_gap,
    plan_difference,
    scenario_sums,
    typical_and_stress,
    value_at_risk,
)
from optimizer.scenarios import EVALUATION_STREAM, SAA_FIRST_STREAM, ScenarioSet, select_rows
from optimizer.sensitivity import (
    DOWN_GRID,
    EXTRA_MW,
    FACTOR_MAX,
    FACTOR_MIN,
    FLIP_TOLERANCE,
    UP_GRID,
    SensitivityReport,
    capacity_value,
    economics_at_factor,
    hashprice_flips,
    hashprice_profiles_usd,
    initial_brackets,
    pending_factors,
    profile_factors,
    refine,
    with_site_capacity,
)
from solvers.planner import (
    Progress,
    ScenarioSpec,
    SolvedPlan,
    compute_economics,
    economics_chunks,
    solve_allocation,
    solve_remote,
    streamed_economics,
)
from solvers.ray_pool import batches, ensure_ray, fan_out

WAIT_AND_SEE_BATCH = 20  # single-scenario solves per Ray task: amortises task overhead (~0.04 s a solve)

PLAN_DESCRIPTIONS = {
    "stochastic": "the plan: optimised over the Monte Carlo scenarios with the fleet's risk objective",
    "mean_value": "optimised on one scenario of mean prices (BTC, hashprice, power per step)",
    "calculator": "profitability calculator: mine where breakeven power price > expected site price, idle the rest",
    "all_mining": "every rack mining, no AI",
}


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class RobustnessRun:
    """The report plus what charts need: each plan's out-of-sample profits, by scenario."""

    report: RobustnessReport
    allocations: dict[str, Allocation]
    oos_indices: np.ndarray
    oos_profits_usd: dict[str, np.ndarray]
    wait_and_see_profits_usd: np.ndarray
    seed: int


def _one_thread(solver: SolverSettings) -> SolverSettings:
    return solver.model_copy(update={"threads": 1})


# ---------------------------------------------------------------------------------------------
# Remote work


@ray.remote(num_cpus=1)
def _optimization_batch(fleet: Fleet, rows: range, seed: int, stream: int, provided, factors, profile_rows: int):
    """Economics, per-step sums (for the mean scenario) and the hashprice profile of a batch of the plan's scenarios."""
    parts, sums, profiles = [], [], []
    for economics, scenarios in economics_chunks(fleet, rows, seed, stream, provided):
        parts.append(economics)
        sums.append(scenario_sums(scenarios))
        start = int(economics.indices[0]) if economics.n_scenarios else rows.stop
        keep = max(0, min(scenarios.n_scenarios, profile_rows - start))
        if factors is not None and keep:
            head, head_economics = select_rows(scenarios, range(keep)), economics.columns(np.arange(keep))
            grid = economics_grid(fleet, economics)
            profiles.append(hashprice_profiles_usd(fleet, grid, head, head_economics, factors))
    profile = np.concatenate(profiles, axis=2) if profiles else None
    return concat_economics(parts), add_sums(sums), profile


@ray.remote(num_cpus=1)
def _replication(
    fleet: Fleet, stream: int, count: int, seed: int, batch_size: int, solver: SolverSettings, candidate: Allocation
):
    """One SAA replication: draw its scenarios, solve its optimum here, score the candidate on the same sample."""
    parts = [streamed_economics(fleet, rows, seed, stream, None)[0] for rows in batches(count, batch_size)]
    economics = concat_economics(parts)
    solved = solve_allocation(fleet, economics, fleet.risk, solver)
    bound = solved.outcome.bound_usd
    # the dual bound is >= the sample optimum, so E[bound] >= v* keeps the MMW bound valid at any MIP gap
    optimum = bound if math.isfinite(bound) else solved.outcome.objective_usd
    return optimum, scenario_profits_usd(fleet, economics, candidate), solved.outcome.status


@ray.remote(num_cpus=1)
def _wait_and_see_batch(fleet: Fleet, economics: GroupEconomics, solver: SolverSettings):
    """Each scenario solved with perfect foresight: its best plan's profit there."""
    profits, statuses = [], []
    for s in range(economics.n_scenarios):
        one = economics.columns([s])
        solved = solve_allocation(fleet, one, fleet.risk, solver)
        profits.append(float(scenario_profits_usd(fleet, one, solved.allocation)[0]))
        statuses.append(solved.outcome.status)
    return np.array(profits), statuses


# ---------------------------------------------------------------------------------------------
# Stages


@dataclass(frozen=True)
class OptimizationPass:
    economics: GroupEconomics
    mean_scenario: ScenarioSet
    profile: np.ndarray | None  # [Q, P, S', F], S' = min(count, settings.sensitivity_scenarios)
    profile_indices: np.ndarray | None  # [S'] global indices of the profile's scenarios, ascending
    factors: np.ndarray | None


def optimization_pass(
    fleet: Fleet, spec: ScenarioSpec, batch_size: int, profile_scenarios: int, workers: int | None
) -> OptimizationPass:
    fleet_ref = ray.put(fleet)
    provided_ref = None if spec.provided is None else ray.put(spec.provided)
    with_profile = profile_scenarios > 0
    factors = profile_factors() if with_profile else None
    results = fan_out(
        _optimization_batch,
        [
            (fleet_ref, rows, spec.seed, spec.stream, provided_ref, factors, profile_scenarios)
            for rows in batches(spec.count, batch_size)
        ],
        workers,
    )
    economics = concat_economics([r[0] for r in results])
    sums: ScenarioSums = add_sums([r[1] for r in results])
    profile, profile_indices = None, None
    if with_profile:
        profile = np.concatenate([r[2] for r in results if r[2] is not None], axis=2)
        # concat_economics orders scenarios by global index: put the profile in the same order
        head_indices = np.concatenate([r[0].indices for r in results])[: profile.shape[2]]
        order = np.argsort(head_indices, kind="stable")
        profile, profile_indices = profile[:, :, order], head_indices[order]
    return OptimizationPass(economics, mean_scenario_from_sums(sums), profile, profile_indices, factors)


def evaluate_out_of_sample(
    fleet: Fleet,
    allocations: dict[str, Allocation],
    count: int,
    seed: int,
    batch_size: int,
    workers: int | None = None,
    progress: Progress = _no_progress,
) -> tuple[GroupEconomics, dict[str, np.ndarray]]:
    """Score plans on `count` fresh scenarios of stream 1: economics on Ray, profits per plan."""
    spec = ScenarioSpec(count=count, seed=seed, stream=EVALUATION_STREAM)
    economics, _ = compute_economics(
        fleet, spec, batch_size, workers, progress=lambda _s, done, total: progress("out-of-sample", done, total)
    )
    return economics, {name: scenario_profits_usd(fleet, economics, a) for name, a in allocations.items()}


def submit_replications(
    fleet: Fleet, replications: int, count: int, seed: int, batch_size: int, candidate: Allocation
) -> list:
    fleet_ref, solver = ray.put(fleet), _one_thread(fleet.solver)
    return [
        _replication.remote(fleet_ref, SAA_FIRST_STREAM + k, count, seed, batch_size, solver, candidate)
        for k in range(replications)
    ]


def collect_gap(
    refs: list, fleet: Fleet, count: int, candidate_oos_profits_usd: np.ndarray, confidence_level: float
) -> OptimalityGap:
    """The MMW interval from submitted replications; the candidate's out-of-sample profits give its VaR (eta)."""
    risk = RiskObjective(fleet.risk.objective.value, fleet.risk.alpha, fleet.risk.weight)
    results = ray.get(refs)
    candidate_var = (
        value_at_risk(candidate_oos_profits_usd, risk.alpha) if risk.objective == Objective.CVAR.value else None
    )
    return optimality_gap(
        replication_objective_usd=[r[0] for r in results],
        candidate_objective_usd=[candidate_sample_objective(r[1], risk, candidate_var) for r in results],
        scenarios_per_replication=count,
        streams=[SAA_FIRST_STREAM + k for k in range(len(results))],
        confidence_level=confidence_level,
        plan_objective_usd=risk(candidate_oos_profits_usd),
        objective=risk.objective,
        candidate_var_usd=candidate_var,
        solver_status=[r[2] for r in results],
    )


def wait_and_see(fleet: Fleet, economics: GroupEconomics, workers: int | None, progress: Progress = _no_progress):
    fleet_ref, solver = ray.put(fleet), _one_thread(fleet.solver)
    parts = batches(economics.n_scenarios, WAIT_AND_SEE_BATCH)
    done = [0]

    def tick(i: int) -> None:
        done[0] += len(parts[i])
        progress("wait-and-see", done[0], economics.n_scenarios)

    results = fan_out(
        _wait_and_see_batch,
        [(fleet_ref, economics.columns(list(rows)), solver) for rows in parts],
        workers,
        tick,
    )
    return np.concatenate([r[0] for r in results]), [s for r in results for s in r[1]]


def _solve_many(
    jobs: list[tuple[Fleet, GroupEconomics]], solver: SolverSettings, fleet: Fleet, workers: int | None
) -> list[SolvedPlan]:
    return fan_out(solve_remote, [(f, e, fleet.risk, solver) for f, e in jobs], workers)


def mining_counts(fleet: Fleet, allocation: Allocation) -> list[int]:
    return [allocation.count(g.id, Mode.MINE) for g in fleet.rack_groups]


@ray.remote(num_cpus=1)
def _capacity_objective(
    fleet: Fleet, count: int, seed: int, stream: int, provided, batch_size: int, solver: SolverSettings
) -> float:
    """The optimum of a fleet variant on the plan's scenarios, economics recomputed here: a site's
    capacity also sets its caps in curtailment events, which the economics hold."""
    parts = []
    for rows in batches(count, batch_size):
        parts.append(streamed_economics(fleet, rows, seed, stream, provided)[0])
    return solve_allocation(fleet, concat_economics(parts), fleet.risk, solver).outcome.objective_usd


def capacity_objectives(
    fleet: Fleet, spec: ScenarioSpec, batch_size: int, solver: SolverSettings, workers: int | None
) -> list[float]:
    """The optimum with each site's capacity + EXTRA_MW, on the spec's scenarios."""
    provided_ref = None if spec.provided is None else ray.put(spec.provided)
    args = [
        (
            with_site_capacity(fleet, s.id, EXTRA_MW),
            spec.count,
            spec.seed,
            spec.stream,
            provided_ref,
            batch_size,
            solver,
        )
        for s in fleet.sites
    ]
    return fan_out(_capacity_objective, args, workers)


def sensitivity(
    fleet: Fleet,
    opt: OptimizationPass,
    spec: ScenarioSpec,
    batch_size: int,
    workers: int | None,
    progress: Progress = _no_progress,
) -> SensitivityReport:
    """On the first scenarios of the plan (opt.profile's): the plan re-solved at f = 1 (the base), with +1 MW
    per site, and at hashprice factors for the flips (grid scan, then bisection), all solves on Ray."""
    # exact optimality: capacity gains are differences of two optima and must not be solver noise
    solver = _one_thread(fleet.solver).model_copy(update={"mip_rel_gap": 0.0})
    factors, profile = opt.factors, opt.profile
    head = opt.economics.columns(np.searchsorted(opt.economics.indices, opt.profile_indices))
    counts_at: dict[float, list[int]] = {}
    objective_at: dict[float, float] = {}
    solves = 0

    def solve_factors(fs: list[float]) -> None:
        nonlocal solves
        jobs = [(fleet, economics_at_factor(head, profile, factors, f)) for f in fs]
        for f, plan in zip(fs, _solve_many(jobs, solver, fleet, workers), strict=True):
            counts_at[f], objective_at[f] = mining_counts(fleet, plan.allocation), plan.outcome.objective_usd
        solves += len(fs)

    progress("sensitivity", 0, 3)
    solve_factors([1.0, *DOWN_GRID, *UP_GRID])
    progress("sensitivity", 1, 3)
    head_spec = dataclasses.replace(spec, count=head.n_scenarios)
    capacity = [
        capacity_value(fleet, site.id, EXTRA_MW, objective_at[1.0], objective)
        for site, objective in zip(
            fleet.sites, capacity_objectives(fleet, head_spec, batch_size, solver, workers), strict=True
        )
    ]
    solves += len(capacity)
    progress("sensitivity", 2, 3)
    base_counts = counts_at[1.0]
    brackets = initial_brackets(base_counts, counts_at)
    while todo := [f for f in pending_factors(brackets, FLIP_TOLERANCE) if f not in counts_at]:
        solve_factors(todo)
        brackets = refine(brackets, base_counts, counts_at, FLIP_TOLERANCE)
    brackets = refine(brackets, base_counts, counts_at, FLIP_TOLERANCE)
    progress("sensitivity", 3, 3)
    hashprice = float(opt.mean_scenario.hashprice_usd_per_ph_day.mean())
    return SensitivityReport(
        expected_hashprice_usd_per_ph_day=hashprice,
        scenarios=int(profile.shape[2]),
        capacity_method=(
            f"re-solve of the MIP with the site's capacity + {EXTRA_MW:g} MW, economics recomputed (event caps scale "
            "with capacity), exact (mip_rel_gap 0)"
        ),
        capacity=capacity,
        flip_method=(
            "every scenario's hashprice scaled by a factor; the plan re-solved (exact hourly re-dispatch via the "
            "hashprice profile); bisection on the factor where the group's mining rack count changes"
        ),
        factor_min=FACTOR_MIN,
        factor_max=FACTOR_MAX,
        flip_tolerance=FLIP_TOLERANCE,
        hashprice_flips=hashprice_flips(fleet, base_counts, brackets, hashprice),
        solves=solves,
    )


# ---------------------------------------------------------------------------------------------
# The whole assessment


def assess_plan(
    fleet: Fleet,
    plan: PlanResult,
    provided: ScenarioSet | None = None,
    settings: RobustnessSettings | None = None,
    workers: int | None = None,
    progress: Progress = _no_progress,
) -> RobustnessRun:
    """Score the plan and its baselines out of sample, bound its optimality gap, measure VSS, EVPI, sensitivity."""
    settings = settings or RobustnessSettings()
    ensure_ray()
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    seed, batch_size = fleet.scenarios.seed, fleet.scenarios.batch_size
    risk = RiskObjective(fleet.risk.objective.value, fleet.risk.alpha, fleet.risk.weight)
    level = settings.confidence_level
    notes: list[str] = []
    stochastic = allocation_from_plan(plan)

    # SAA replications are the largest independent chunk: submit first, collect last
    count = fleet.scenarios.count if provided is None else provided.n_scenarios  # the plan's sample size
    replication_count = settings.replication_scenarios or count
    replication_refs = []
    if settings.replications >= 2:
        replication_refs = submit_replications(
            fleet, settings.replications, replication_count, seed, batch_size, stochastic
        )
    elif settings.replications == 1:
        notes.append("one SAA replication cannot give an interval: the gap was not estimated")

    start = time.perf_counter()
    opt = optimization_pass(
        fleet,
        ScenarioSpec(count=count, seed=seed, provided=provided),
        batch_size,
        settings.sensitivity_scenarios if settings.sensitivity else 0,
        workers,
    )
    timings["optimization_pass_s"] = time.perf_counter() - start
    if provided is not None:
        notes.append(
            "the plan used the provided scenarios; out-of-sample and SAA scenarios come from the fleet's market model"
        )

    start = time.perf_counter()
    mean_value = ray.get(
        solve_remote.remote(fleet, group_economics(fleet, opt.mean_scenario), fleet.risk, _one_thread(fleet.solver))
    ).allocation
    hashprice = float(opt.mean_scenario.hashprice_usd_per_ph_day.mean())
    site_prices = {s.id: float(site_price_paths(s, opt.mean_scenario).mean()) for s in fleet.sites}
    allocations = {
        "stochastic": stochastic,
        "mean_value": mean_value,
        "calculator": calculator_allocation(fleet, hashprice, site_prices),
        "all_mining": all_mining(fleet),
    }
    timings["baselines_s"] = time.perf_counter() - start

    start = time.perf_counter()
    oos_economics, profits = evaluate_out_of_sample(
        fleet, allocations, settings.oos_scenarios, seed, batch_size, workers, progress
    )
    timings["out_of_sample_s"] = time.perf_counter() - start
    evaluations = [
        evaluate_plan(name, PLAN_DESCRIPTIONS[name], fleet, a, profits[name], risk, level)
        for name, a in allocations.items()
    ]
    for e in evaluations:
        if not e.feasible:
            notes.append(f"the {e.plan} plan breaks constraints and is reported as is: {'; '.join(e.violations)}")
    vss, vss_mean = plan_difference(
        profits["stochastic"], profits["mean_value"], risk, level, settings.bootstrap_resamples
    )

    start = time.perf_counter()
    ws_report, evpi, evpi_mean = None, None, None
    ws_profits = np.empty(0)
    n_ws = min(settings.wait_and_see_scenarios, settings.oos_scenarios)
    if n_ws >= 2:
        ws_profits, ws_status = wait_and_see(fleet, oos_economics.columns(np.arange(n_ws)), workers, progress)
        plan_ws = profits["stochastic"][:n_ws]
        evpi, evpi_mean = plan_difference(ws_profits, plan_ws, risk, level, settings.bootstrap_resamples)
        ws_report = WaitAndSee(
            scenarios=n_ws,
            objective_usd=risk(ws_profits),
            mean_profit_usd=float(ws_profits.mean()),
            stochastic_objective_usd=risk(plan_ws),
            stochastic_mean_profit_usd=float(plan_ws.mean()),
        )
        if n_ws < settings.oos_scenarios:
            notes.append(
                f"wait-and-see solved on the first {n_ws} of the {settings.oos_scenarios} out-of-sample scenarios"
            )
        if any(s != "optimal" for s in ws_status):
            notes.append("some wait-and-see solves stopped before optimality: EVPI is then underestimated")
    timings["wait_and_see_s"] = time.perf_counter() - start

    start = time.perf_counter()
    sens = None
    if settings.sensitivity:
        spec = ScenarioSpec(count=count, seed=seed, provided=provided)
        sens = sensitivity(fleet, opt, spec, batch_size, workers, progress)
        if sens.scenarios < count:
            notes.append(f"sensitivity re-solves use the first {sens.scenarios} of the plan's {count} scenarios")
        differ = [f.group for f in sens.hashprice_flips if f.racks_mine != stochastic.count(f.group, Mode.MINE)]
        if differ:
            notes.append(f"re-solved on the sensitivity sample the plan mines differently in {', '.join(differ)}")
    timings["sensitivity_s"] = time.perf_counter() - start

    start = time.perf_counter()
    gap = None
    if replication_refs:
        progress("replications", 0, len(replication_refs))
        gap = collect_gap(replication_refs, fleet, replication_count, profits["stochastic"], level)
        progress("replications", len(replication_refs), len(replication_refs))
    timings["replications_wait_s"] = time.perf_counter() - start
    timings["total_s"] = time.perf_counter() - clock

    typical, stress = typical_and_stress(oos_economics.indices, profits["stochastic"])
    report = RobustnessReport(
        objective=risk.objective,
        alpha=risk.alpha,
        weight=risk.weight,
        confidence_level=level,
        out_of_sample_scenarios=settings.oos_scenarios,
        out_of_sample_seed=seed,
        out_of_sample_stream=EVALUATION_STREAM,
        plans=evaluations,
        wait_and_see=ws_report,
        value_of_stochastic_solution_usd=vss,
        value_of_stochastic_solution_mean_profit_usd=vss_mean,
        expected_value_of_perfect_information_usd=evpi,
        expected_value_of_perfect_information_mean_profit_usd=evpi_mean,
        optimality_gap=gap,
        sensitivity=sens,
        typical_scenario_index=typical,
        stress_scenario_index=stress,
        notes=notes,
        timings_s=timings,
    )
    return RobustnessRun(report, allocations, oos_economics.indices, profits, ws_profits, seed)
