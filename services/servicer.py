"""The PlannerService handlers: translate requests, call the planning core, translate results.

No math here: plans come from solvers.planner (via solvers/runs.py), scores from
optimizer.allocation/risk, dispatch decisions from optimizer/dispatch.py; messages are built in
services/convert.py. Every handler runs behind services/auth.py's interceptor (the caller is
`current_caller()`), checks the request's bounds (services/validation.py) and, for planning work,
admission (services/admission.py) before anything else, and maps domain errors to canonical status
codes with rich details (services/errors.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

import grpc

from optimizer.allocation import check_feasible
from optimizer.fleet import Fleet, FleetError, with_overrides
from optimizer.robustness import RobustnessSettings
from optimizer.scenarios import ScenarioSet
from protos.hashpivot.v1 import planner_service_pb2, planner_service_pb2_grpc
from services import admission, convert, metrics, paging, scenario_sets
from services.auth import current_caller
from services.dispatcher import PlanDispatcher
from services.errors import (
    QuotaViolation,
    ServiceError,
    allocation_error,
    invalid_argument,
    not_found,
    resource_exhausted,
)
from services.handlers import abort_with, handle_errors, handle_stream_errors
from services.runner import JobRunner
from services.store import JobState, JobStore
from solvers.planner import ScenarioSpec
from solvers.runs import STOP_CANCELLED, RunControl, RunStopped, run_evaluation, run_plan

log = logging.getLogger(__name__)

SERVICE_NAME = planner_service_pb2.DESCRIPTOR.services_by_name["PlannerService"].full_name
CANCEL_WAIT_S = 30.0  # CancelPlanJob waits this long (or the call deadline) for the work to stop

_PROTO_TO_STATE = {convert.job_state_number(state): state for state in JobState}


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _parse_fleet(request, field: str = "fleet") -> Fleet:
    if not request.HasField(field):
        raise invalid_argument([(field, "required")])
    try:
        return convert.fleet_from_message(getattr(request, field))
    except FleetError as exc:
        raise invalid_argument(exc.violations, field) from None


def _robustness(request):
    """The request's robustness settings, validated; None when the request asks for none."""
    if not request.HasField("robustness"):
        return None
    return _request_fields(convert.robustness_settings_from_message, request.robustness)


def _request_fields(fn: Callable, *args):
    """Run a converter whose FleetError paths are already request paths."""
    try:
        return fn(*args)
    except FleetError as exc:
        raise invalid_argument(exc.violations) from None


def _admit(
    fleet: Fleet,
    robustness: RobustnessSettings | None,
    limits: admission.Limits,
    provided: ScenarioSet | None = None,
) -> None:
    """RESOURCE_EXHAUSTED naming each limit the request's estimate exceeds, before any work starts."""
    scenario_set = None if provided is None else ("scenario_set_id", provided.n_scenarios)
    over = admission.check(fleet, robustness, limits, scenario_set=scenario_set)
    if not over:
        return
    for limit, _, _ in over:
        metrics.ADMISSION_REFUSALS.labels(limit).inc()
    summary = "; ".join(f"{limit} ({description}; set by {fields})" for limit, fields, description in over)
    raise resource_exhausted(
        f"the request exceeds server limits: {summary}",
        [QuotaViolation(limit, f"{description}; request fields: {fields}") for limit, fields, description in over],
    )


class PlannerServicer(planner_service_pb2_grpc.PlannerServiceServicer):
    def __init__(self, store: JobStore, runner: JobRunner, relay=None, limits: admission.Limits | None = None):
        self._store = store
        self._runner = runner
        self._relay = relay
        self._limits = limits or admission.Limits()
        self.dispatcher = PlanDispatcher(store.get_plan)

    # plans

    @handle_errors
    async def Optimize(self, request, context):
        caller = current_caller()
        fleet = _parse_fleet(request)
        commitments = _request_fields(convert.commitments_from_message, request.commitments, fleet)
        robustness = _robustness(request)
        provided = self._scenario_set(request.scenario_set_id, fleet)
        _admit(fleet, robustness, self._limits, provided)
        control = RunControl(deadline=_deadline(context))
        try:
            plan = await asyncio.to_thread(run_plan, fleet, commitments, control, self._relay, robustness, provided)
        except asyncio.CancelledError:  # the caller went away: stop the Ray tasks and HiGHS too
            control.stop(STOP_CANCELLED)
            raise
        except RunStopped:
            raise ServiceError(grpc.StatusCode.CANCELLED, "the plan was cancelled") from None
        metrics.SOLVE_SECONDS.observe(plan.solver.wall_s)
        created_at = time.time()
        plan_id = self._store.save_plan(fleet, plan, created_at=created_at, owner=caller.owner)
        self.dispatcher.remember(plan_id, fleet, plan, caller.owner)
        created = dt.datetime.fromtimestamp(created_at, tz=dt.UTC)
        return planner_service_pb2.OptimizeResponse(plan=convert.plan_to_message(plan, plan_id, created))

    @handle_errors
    async def GetPlan(self, request, context):
        record = self._store.get_plan(request.plan_id, current_caller().sees)
        if record is None:
            raise not_found("plan", request.plan_id)
        return planner_service_pb2.GetPlanResponse(
            plan=convert.plan_to_message(record.plan, record.plan_id, record.created)
        )

    @handle_errors
    async def ListPlans(self, request, context):
        caller = current_caller()
        page = paging.page_request(request.page_size, request.page_token, "ListPlans", caller.sees)
        plans = self._store.list_plans(caller.sees, page.size + 1, page.after)
        response = planner_service_pb2.ListPlansResponse(
            plans=[convert.plan_summary_to_message(p) for p in plans[: page.size]]
        )
        if len(plans) > page.size:
            last = plans[page.size - 1]
            response.next_page_token = paging.encode_token((last.created_at, last.plan_id), page.filter_digest)
        return response

    @handle_errors
    async def DeletePlan(self, request, context):
        if self._store.get_plan(request.plan_id, current_caller().sees) is None:
            raise not_found("plan", request.plan_id)
        self._store.delete_plan(request.plan_id)
        self.dispatcher.forget(request.plan_id)
        return planner_service_pb2.DeletePlanResponse()

    # jobs

    @handle_errors
    async def SubmitPlanJob(self, request, context):
        caller = current_caller()
        fleet = _parse_fleet(request)
        commitments = _request_fields(convert.commitments_from_message, request.commitments, fleet)
        robustness = _robustness(request)
        provided = self._scenario_set(request.scenario_set_id, fleet)  # checked now, read again when the job runs
        _admit(fleet, robustness, self._limits, provided)
        job = await self._runner.submit(
            fleet, commitments, request.request_id, robustness, caller.owner, request.scenario_set_id
        )
        return planner_service_pb2.SubmitPlanJobResponse(job=convert.job_to_message(job))

    @handle_errors
    async def GetPlanJob(self, request, context):
        sees = current_caller().sees
        job = self._runner.view(request.job_id, owner=sees)
        if job is None:
            raise not_found("job", request.job_id)
        response = planner_service_pb2.GetPlanJobResponse(job=convert.job_to_message(job))
        record = self._store.get_plan(job.plan_id, sees) if job.plan_id else None
        if record is not None:
            response.plan.CopyFrom(convert.plan_to_message(record.plan, record.plan_id, record.created))
        return response

    @handle_errors
    async def ListPlanJobs(self, request, context):
        caller = current_caller()
        state = _PROTO_TO_STATE.get(request.state) if request.state else None
        page = paging.page_request(request.page_size, request.page_token, "ListPlanJobs", caller.sees, request.state)
        jobs = self._store.list_jobs(caller.sees, state, page.size + 1, page.after)
        response = planner_service_pb2.ListPlanJobsResponse(
            jobs=[convert.job_to_message(self._runner.live(j)) for j in jobs[: page.size]]
        )
        if len(jobs) > page.size:
            last = jobs[page.size - 1]
            response.next_page_token = paging.encode_token((last.created_at, last.job_id), page.filter_digest)
        return response

    @handle_errors
    async def CancelPlanJob(self, request, context):
        remaining = context.time_remaining()
        wait_s = CANCEL_WAIT_S if remaining is None else max(0.0, min(CANCEL_WAIT_S, remaining - 0.2))
        job = await self._runner.cancel(request.job_id, wait_s, current_caller().sees)
        return planner_service_pb2.CancelPlanJobResponse(job=convert.job_to_message(job))

    @handle_errors
    async def DeletePlanJob(self, request, context):
        await self._runner.delete(request.job_id, current_caller().sees)
        return planner_service_pb2.DeletePlanJobResponse()

    @handle_stream_errors
    async def WatchPlanJob(self, request, context):
        async for job in self._runner.watch(request.job_id, current_caller().sees):
            yield planner_service_pb2.WatchPlanJobResponse(job=convert.job_to_message(job))

    # scenario sets

    async def UploadScenarios(self, request_iterator, context):
        try:
            info = await scenario_sets.receive(request_iterator, self._store, current_caller().owner, self._limits)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            await abort_with(context, exc)
        return planner_service_pb2.UploadScenariosResponse(scenario_set=convert.scenario_set_to_message(info))

    @handle_errors
    async def DeleteScenarioSet(self, request, context):
        if self._store.get_scenario_set(request.scenario_set_id, current_caller().sees) is None:
            raise not_found("scenario set", request.scenario_set_id)
        self._store.delete_scenario_set(request.scenario_set_id)
        return planner_service_pb2.DeleteScenarioSetResponse()

    def _scenario_set(self, scenario_set_id: str, fleet: Fleet) -> ScenarioSet | None:
        """The caller's uploaded scenario set the request names, checked against its fleet; None if it names none."""
        if not scenario_set_id:
            return None
        return scenario_sets.load(self._store, scenario_set_id, current_caller().sees, fleet, "scenario_set_id")

    # what-if and dispatch

    @handle_errors
    async def Evaluate(self, request, context):
        record = None
        if request.plan_id:
            record = self._store.get_plan(request.plan_id, current_caller().sees)
            if record is None:
                raise not_found("plan", request.plan_id)
        if request.HasField("fleet"):
            fleet = _parse_fleet(request)
        elif record is not None:
            fleet = record.fleet()
        else:
            raise invalid_argument([("fleet", "required unless plan_id names a stored plan")])
        if request.HasField("allocation"):
            message = request.allocation
        elif record is not None:
            message = convert.allocation_to_message(convert.plan_allocation(record.plan))
        else:
            raise invalid_argument([("allocation", "required unless plan_id names a stored plan")])
        allocation = _request_fields(convert.allocation_from_message, message, fleet)
        problems = check_feasible(fleet, allocation)
        if problems:
            raise allocation_error(problems, {c.group: i for i, c in enumerate(message.racks)})
        if request.scenario_set_id:
            if request.HasField("scenarios"):
                raise invalid_argument([("scenarios", "leave unset with scenario_set_id: every scenario is scored")])
            provided = self._scenario_set(request.scenario_set_id, fleet)
            spec = ScenarioSpec(count=provided.n_scenarios, seed=fleet.scenarios.seed, provided=provided)
        else:
            provided = None
            fleet, spec = _scenario_selection(fleet, request.scenarios)
        _admit(fleet, None, self._limits, provided)
        control = RunControl(deadline=_deadline(context))
        try:
            result = await asyncio.to_thread(
                run_evaluation, fleet, allocation, spec, fleet.scenarios.batch_size, control
            )
        except asyncio.CancelledError:
            control.stop(STOP_CANCELLED)
            raise
        response = planner_service_pb2.EvaluateResponse(
            risk_objective_usd=result.risk_objective_usd, scenario_count=spec.count
        )
        convert.fill_message(response.profit, result.stats.as_dict())
        for site in result.sites:
            convert.fill_message(response.sites.add(), site)
        if request.include_scenario_profits:
            response.scenario_profits_usd.extend(result.profits_usd.tolist())
        return response

    async def Dispatch(self, request, context):
        return await self.dispatcher.Dispatch(request, context)


def _scenario_selection(fleet: Fleet, selection: planner_service_pb2.ScenarioSelection) -> tuple[Fleet, ScenarioSpec]:
    """The fleet with the requested scenario settings, validated like the fleet file's."""
    patch = {name: getattr(selection, name) for name in ("count", "seed", "batch_size") if selection.HasField(name)}
    stream = selection.stream if selection.HasField("stream") else 0
    if stream < 0:
        raise invalid_argument([("scenarios.stream", f"must be >= 0 (got {stream})")])
    if patch:
        try:
            fleet = with_overrides(fleet, {"scenarios": patch})
        except FleetError as exc:
            raise invalid_argument(exc.violations) from None
    return fleet, ScenarioSpec(count=fleet.scenarios.count, seed=fleet.scenarios.seed, stream=stream)
