"""One planning or evaluation run as a server drives it: cancellable, deadline-bound, observable.

The pipeline is solvers.planner's (`plan_fleet`, `compute_economics`); this module adds what a
server needs around it:
- stop: `RunControl.stop()` from any thread. The next progress tick raises `RunStopped`, which
  makes `fan_out` cancel the pending Ray batches (it ticks every WAIT_POLL_S while it waits on
  batches, so a stop acts within that, not after the next batch); during the MIP the solve task is polled and
  `ray.cancel(ref, force=True)` kills the worker running HiGHS.
- deadline: the time left on the call becomes the HiGHS time limit, minus what the call still
  needs around HiGHS: the model build and transfer inside the Ray task (learnt from earlier solves,
  per unit of model size: SolveOverhead) and a margin for the reply. So a plan with its gap comes
  back before the caller gives up, rather than DEADLINE_EXCEEDED with the plan half made.
- progress: stage and scenarios done from the pipeline; incumbent and bound from the HiGHS MIP
  callbacks inside the Ray worker, relayed through a small Ray actor.
- robustness (optional, after the plan): solvers.robustness.assess_plan runs inside one Ray task of
  its own, so that a stop kills it together with every task it submitted (out-of-sample batches, SAA
  replications, wait-and-see and sensitivity solves: `ray.cancel(ref, force=True, recursive=True)`);
  its stages reach the progress through the same relay actor.
"""

from __future__ import annotations

import collections
import dataclasses
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import ray

from optimizer.allocation import Allocation, scenario_profits_usd
from optimizer.economics import GroupEconomics
from optimizer.fleet import Fleet
from optimizer.plan_result import PlanResult, SiteBreakdown, site_breakdowns
from optimizer.risk import ProfitStats, profit_stats, risk_objective_value
from optimizer.robustness import RobustnessReport, RobustnessSettings
from optimizer.scenarios import ScenarioSet
from solvers.diagnose import Commitments
from solvers.highs import MipProgress, NoSolutionInTimeError, SolveError, finite_or_none
from solvers.limits import resolved_time_limit_s
from solvers.planner import ScenarioSpec, SolvedPlan, compute_economics, plan_fleet, solve_remote
from solvers.robustness import assess_plan

# Of the time left on a call, the solve gets all but this share and this margin: the reply still
# has to assemble the plan, store it and travel back.
DEADLINE_SHARE_KEPT = 0.1
DEADLINE_MARGIN_S = 0.3
MIN_SOLVE_S = 0.05  # less than this left: no point starting HiGHS
# Around HiGHS, a solve task also starts (or reuses) a worker, ships the economics and builds the
# model: a fixed part plus a part per (group x scenario). The per-unit rate is learnt from this
# server's solves (median of the latest, so a cold worker start or a wait for a free CPU does not
# distort it); the first guess fits examples/fleet.yaml (~0.5 s warm for 1,600 units).
MIN_OVERHEAD_S = 0.2
INITIAL_OVERHEAD_S_PER_UNIT = 2e-4
OVERHEAD_SAMPLES = 9
# Never reserve more than this share of the usable time for the overhead: a pessimistic estimate
# must shorten the solve, not refuse a call that could have returned a plan.
MAX_OVERHEAD_SHARE = 0.4
POLL_S = 0.2  # how often a running solve is checked for a stop and for MIP progress

ROBUSTNESS_STAGE = "robustness"  # reported when the assessment starts, before its own stages
STOP_CANCELLED = "cancelled"  # a user cancelled: the job ends CANCELLED
STOP_SHUTDOWN = "shutdown"  # the server is stopping: the job goes back to the queue


class RunDeadlineError(SolveError):
    """The call's deadline came before the run could finish its work (the solver's own limit is
    NoSolutionInTimeError: a caller that retries on DEADLINE_EXCEEDED must only see this one)."""


# Ray losing the process or node a run depends on: the run did not fail, the cluster did; re-run it.
RAY_LOST_ERRORS = (
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.RaySystemError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.RayActorError,
)


class RunStopped(Exception):
    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"run stopped ({reason})")


@dataclass(frozen=True)
class ProgressSnapshot:
    stage: str = "queued"
    stage_done: int = 0
    stage_total: int = 0
    scenarios_done: int = 0
    scenarios_total: int = 0
    incumbent_usd: float | None = None
    bound_usd: float | None = None
    mip_gap: float | None = None
    elapsed_s: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class RunControl:
    """Shared between the thread running the pipeline and the server: stop flag, deadline, progress."""

    def __init__(self, deadline: float | None = None, on_progress: Callable[[ProgressSnapshot], None] | None = None):
        self.deadline = deadline  # time.monotonic() value, or None
        self.stop_reason: str | None = None
        self._stopped = threading.Event()
        self._on_progress = on_progress
        self._start = time.monotonic()
        self.snapshot = ProgressSnapshot()

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stopped.set()

    def check(self) -> None:
        if self.stop_reason is not None:
            raise RunStopped(self.stop_reason)

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def update(self, **fields) -> None:
        self.snapshot = dataclasses.replace(self.snapshot, elapsed_s=time.monotonic() - self._start, **fields)
        if self._on_progress is not None:
            self._on_progress(self.snapshot)

    def pipeline_progress(self, stage: str, done: int, total: int) -> None:
        """The `progress` callback of solvers.planner: stop here if asked to, else report (a heartbeat
        with unchanged figures reports nothing)."""
        self.check()
        current = self.snapshot
        if (current.stage, current.stage_done, current.stage_total) == (stage, done, total):
            return
        fields = {"stage": stage, "stage_done": done, "stage_total": total}
        if stage == "scenarios":
            fields.update(scenarios_done=done, scenarios_total=total)
        self.update(**fields)


# ---------------------------------------------------------------------------------------------
# MIP progress out of the Ray worker


@ray.remote(num_cpus=0)
class ProgressRelay:
    """Holds the latest MIP progress of each running solve until the driver picks it up."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[float, float, float, float]] = {}
        self._stages: dict[str, tuple[str, int, int]] = {}

    def report(self, key: str, incumbent: float, bound: float, gap: float, running_s: float) -> None:
        self._latest[key] = (incumbent, bound, gap, running_s)

    def take(self, key: str) -> tuple[float, float, float, float] | None:
        return self._latest.pop(key, None)

    def report_stage(self, key: str, stage: str, done: int, total: int) -> None:
        self._stages[key] = (stage, done, total)

    def take_stage(self, key: str) -> tuple[str, int, int] | None:
        return self._stages.pop(key, None)


class MipReporter:
    """The `on_mip_progress` callback shipped to the solve task: forwards to the relay, fire and forget."""

    def __init__(self, relay, key: str):
        self.relay, self.key = relay, key

    def __call__(self, progress: MipProgress) -> None:
        p = progress
        self.relay.report.remote(self.key, p.incumbent_usd, p.bound_usd, p.mip_gap, p.running_s)


def new_relay():
    return ProgressRelay.remote()


@ray.remote(num_cpus=0)
def ping() -> bool:
    """A task, not an actor call: it needs the raylet (worker lease), so it fails when the Ray node is gone."""
    return True


# ---------------------------------------------------------------------------------------------
# Plan


def run_plan(
    fleet: Fleet,
    commitments: Commitments | None,
    control: RunControl,
    relay=None,
    robustness: RobustnessSettings | None = None,
    provided: ScenarioSet | None = None,
) -> PlanResult:
    """Plan the fleet with solvers.planner.plan_fleet, stoppable and deadline-bound through `control`;
    with `robustness`, assess the plan too (solvers.robustness.assess_plan) and attach the report.
    `provided`: plan on these scenarios (a user's paths) instead of drawing the fleet's."""

    def solve_plan(fleet: Fleet, economics: GroupEconomics) -> SolvedPlan:
        return _solve_stoppable(fleet, economics, commitments, control, relay)

    control.check()
    plan, _ = plan_fleet(fleet, provided=provided, progress=control.pipeline_progress, solve_plan=solve_plan)
    if robustness is not None:
        report = _assess_stoppable(fleet, plan, robustness, control, relay, provided)
        plan = plan.model_copy(update={"robustness": report})
    if fleet.tree is not None:
        from solvers.tree_plan import plan_tree

        plan = plan.model_copy(update={"tree": plan_tree(fleet, progress=control.pipeline_progress)})
    control.update(stage="done", stage_done=1, stage_total=1)
    return plan


class SolveOverhead:
    """What a solve costs besides HiGHS's own time limit: MIN_OVERHEAD_S plus a learnt rate per unit of model size."""

    def __init__(self) -> None:
        self._rates: collections.deque[float] = collections.deque(maxlen=OVERHEAD_SAMPLES)
        self._lock = threading.Lock()

    def estimate_s(self, units: int) -> float:
        with self._lock:
            rate = statistics.median(self._rates) if self._rates else INITIAL_OVERHEAD_S_PER_UNIT
        return MIN_OVERHEAD_S + rate * units

    def observe(self, units: int, overhead_s: float) -> None:
        if units <= 0:
            return
        with self._lock:
            self._rates.append(max(0.0, overhead_s - MIN_OVERHEAD_S) / units)


SOLVE_OVERHEAD = SolveOverhead()


def solve_time_limit_s(configured_s: float, remaining_s: float | None, overhead_s: float = 0.0) -> float:
    """The fleet's time limit, shortened to fit the time left on the call after the work around HiGHS."""
    if remaining_s is None:
        return configured_s
    usable = remaining_s * (1.0 - DEADLINE_SHARE_KEPT) - DEADLINE_MARGIN_S
    usable -= min(overhead_s, MAX_OVERHEAD_SHARE * usable)
    if usable < MIN_SOLVE_S:
        raise RunDeadlineError(
            f"the call deadline leaves no time to solve ({remaining_s:.2f} s left, "
            f"~{overhead_s:.2f} s of it needed to build the model): give the call more time or submit a job"
        )
    return min(configured_s, usable)


def _model_units(fleet: Fleet) -> int:
    return max(1, len(fleet.rack_groups)) * fleet.scenarios.count


def _solve_stoppable(
    fleet: Fleet, economics: GroupEconomics, commitments: Commitments | None, control: RunControl, relay
) -> SolvedPlan:
    control.check()
    units = _model_units(fleet)
    own_limit_s = resolved_time_limit_s(fleet.solver, fleet, economics)
    limit_s = solve_time_limit_s(own_limit_s, control.remaining_s(), SOLVE_OVERHEAD.estimate_s(units))
    solver = fleet.solver.model_copy(update={"time_limit_s": limit_s})
    submitted = time.monotonic()
    key = uuid.uuid4().hex
    reporter = MipReporter(relay, key) if relay is not None else None
    ref = solve_remote.remote(fleet, economics, fleet.risk, solver, on_mip_progress=reporter, commitments=commitments)
    while True:
        ready, _ = ray.wait([ref], timeout=POLL_S)
        if relay is not None:
            _relay_progress(relay, key, control)
        if ready:
            solved = _fetch_solved(ref, limit_s < own_limit_s)
            SOLVE_OVERHEAD.observe(units, time.monotonic() - submitted - solved.outcome.wall_s)
            return solved
        if control.stop_reason is not None:
            ray.cancel(ref, force=True)  # kills the worker process, and HiGHS with it
            raise RunStopped(control.stop_reason)


def _fetch_solved(ref, deadline_bound: bool) -> SolvedPlan:
    """The solve's result; no plan in time is the caller's deadline only when the deadline set the limit."""
    try:
        return unwrap_ray(lambda: ray.get(ref))
    except NoSolutionInTimeError as exc:
        if deadline_bound:
            raise RunDeadlineError(f"no plan found before the call deadline ({exc})") from None
        raise


def _relay_progress(relay, key: str, control: RunControl) -> None:
    try:
        latest = ray.get(relay.take.remote(key), timeout=POLL_S)
    except (ray.exceptions.RayError, TimeoutError):  # progress is best effort; the plan is not
        return
    if latest is not None:
        incumbent, bound, gap, _ = latest
        control.update(
            incumbent_usd=finite_or_none(incumbent), bound_usd=finite_or_none(bound), mip_gap=finite_or_none(gap)
        )


# ---------------------------------------------------------------------------------------------
# Robustness


@ray.remote(num_cpus=0)  # it only waits on the tasks it submits, which hold the CPUs
def assess_remote(
    fleet: Fleet, plan: PlanResult, settings: RobustnessSettings, relay, key: str, provided: ScenarioSet | None = None
) -> RobustnessReport:
    """solvers.robustness.assess_plan as one task: cancelling it recursively stops every task it submitted."""

    def progress(stage: str, done: int, total: int) -> None:
        if relay is not None:
            relay.report_stage.remote(key, stage, done, total)

    return assess_plan(fleet, plan, provided=provided, settings=settings, progress=progress).report


def _assess_stoppable(
    fleet: Fleet,
    plan: PlanResult,
    settings: RobustnessSettings,
    control: RunControl,
    relay,
    provided: ScenarioSet | None = None,
) -> RobustnessReport:
    control.check()
    control.update(stage=ROBUSTNESS_STAGE, stage_done=0, stage_total=1)
    key = uuid.uuid4().hex
    ref = assess_remote.remote(fleet, plan, settings, relay, key, provided)
    while True:
        ready, _ = ray.wait([ref], timeout=POLL_S)
        if relay is not None:
            _relay_stage(relay, key, control)
        if ready:
            return unwrap_ray(lambda: ray.get(ref))
        remaining_s = control.remaining_s()
        out_of_time = remaining_s is not None and remaining_s < DEADLINE_MARGIN_S
        if control.stop_reason is not None or out_of_time:
            ray.cancel(ref, force=True, recursive=True)  # the task and its out-of-sample, SAA and sensitivity tasks
            control.check()
            raise RunDeadlineError(
                "the plan was made, but its robustness assessment did not finish before the call deadline: "
                "give the call more time, fewer robustness scenarios, or submit a plan job",
            )


def _relay_stage(relay, key: str, control: RunControl) -> None:
    try:
        latest = ray.get(relay.take_stage.remote(key), timeout=POLL_S)
    except (ray.exceptions.RayError, TimeoutError):  # progress is best effort
        return
    if latest is not None:
        stage, done, total = latest
        control.update(stage=stage, stage_done=done, stage_total=total)


def unwrap_ray(fetch: Callable):
    """Call `fetch` and re-raise a task's own exception rather than Ray's wrapper of it."""
    try:
        return fetch()
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


# ---------------------------------------------------------------------------------------------
# Evaluate


@dataclass(frozen=True)
class Evaluation:
    profits_usd: np.ndarray  # [S]
    stats: ProfitStats
    risk_objective_usd: float
    sites: list[SiteBreakdown]


def run_evaluation(
    fleet: Fleet, allocation: Allocation, spec: ScenarioSpec, batch_size: int, control: RunControl
) -> Evaluation:
    """Score an allocation on scenarios: per-rack economics on Ray, then plain numpy (no MIP)."""
    control.check()
    economics, _ = compute_economics(fleet, spec, batch_size, progress=control.pipeline_progress)
    profits = scenario_profits_usd(fleet, economics, allocation)
    risk = fleet.risk
    return Evaluation(
        profits_usd=profits,
        stats=profit_stats(profits, risk.alpha),
        risk_objective_usd=risk_objective_value(profits, risk.objective.value, risk.alpha, risk.weight),
        sites=site_breakdowns(fleet, economics, allocation),
    )
