"""The PlannerService handlers: translate requests, call the planning core, translate results.

No math here: plans come from solvers.planner (via solvers/runs.py), scores from
optimizer.allocation/risk, dispatch decisions from optimizer/dispatch.py. Every handler maps
domain errors to canonical status codes with rich details (services/errors.py).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from optimizer.allocation import check_feasible
from optimizer.dispatch import (
    DispatchTable,
    build_dispatch_table,
    decide,
    network_hashprice_usd_per_ph_day,
    site_conditions,
    site_prices_usd_per_mwh,
)
from optimizer.fleet import Fleet, FleetError, with_overrides
from optimizer.plan_result import PlanResult
from protos.hashpivot.v1 import jobs_pb2, planner_service_pb2, planner_service_pb2_grpc
from services import convert
from services.errors import ServiceError, abort, allocation_error, invalid_argument, not_found, to_service_error
from services.runner import JobRunner
from services.store import JobRecord, JobState, JobStore
from solvers.planner import ScenarioSpec
from solvers.runs import STOP_CANCELLED, RunControl, RunStopped, run_evaluation, run_plan

log = logging.getLogger(__name__)

SERVICE_NAME = planner_service_pb2.DESCRIPTOR.services_by_name["PlannerService"].full_name
SERVER_TIME_METADATA = "hashpivot-server-time-us"  # Dispatch trailing metadata: handler time, microseconds
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
CANCEL_WAIT_S = 30.0  # CancelPlanJob waits this long (or the call deadline) for the work to stop
DISPATCH_CACHE_PLANS = 1024

_STATE_TO_PROTO = {state: jobs_pb2.PlanJobState.Value(f"PLAN_JOB_STATE_{state.name}") for state in JobState}
_PROTO_TO_STATE = {number: state for state, number in _STATE_TO_PROTO.items()}


def _handle_errors(method: Callable) -> Callable:
    """Turn domain and solver errors into a status with details; log the unexpected."""

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            await _abort(context, exc)

    return unary


def _handle_stream_errors(method: Callable) -> Callable:
    @functools.wraps(method)
    async def stream(self, request, context):
        try:
            async for response in method(self, request, context):
                yield response
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc)

    return stream


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    error = to_service_error(exc)
    if error.code is grpc.StatusCode.INTERNAL:
        log.error("internal error", exc_info=exc)
    await abort(context, error)


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


@dataclass(frozen=True)
class _DispatchEntry:
    plan_id: str
    table: DispatchTable


class PlannerServicer(planner_service_pb2_grpc.PlannerServiceServicer):
    def __init__(self, store: JobStore, runner: JobRunner, relay=None):
        self._store = store
        self._runner = runner
        self._relay = relay
        self._dispatch: collections.OrderedDict[str, _DispatchEntry] = collections.OrderedDict()

    # plans

    @_handle_errors
    async def Optimize(self, request, context):
        fleet = _parse_fleet(request)
        commitments = _request_fields(convert.commitments_from_message, request.commitments, fleet)
        robustness = _robustness(request)
        control = RunControl(deadline=_deadline(context))
        try:
            plan = await asyncio.to_thread(run_plan, fleet, commitments, control, self._relay, robustness)
        except asyncio.CancelledError:  # the caller went away: stop the Ray tasks and HiGHS too
            control.stop(STOP_CANCELLED)
            raise
        except RunStopped:
            raise ServiceError(grpc.StatusCode.CANCELLED, "the plan was cancelled") from None
        created_at = time.time()
        plan_id = self._store.save_plan(fleet, plan, created_at=created_at)
        self.remember_plan(plan_id, fleet, plan)
        created = dt.datetime.fromtimestamp(created_at, tz=dt.UTC)
        return planner_service_pb2.OptimizeResponse(plan=convert.plan_to_message(plan, plan_id, created))

    @_handle_errors
    async def GetPlan(self, request, context):
        record = self._store.get_plan(request.plan_id)
        if record is None:
            raise not_found("plan", request.plan_id)
        return planner_service_pb2.GetPlanResponse(
            plan=convert.plan_to_message(record.plan, record.plan_id, record.created)
        )

    # jobs

    @_handle_errors
    async def SubmitPlanJob(self, request, context):
        fleet = _parse_fleet(request)
        commitments = _request_fields(convert.commitments_from_message, request.commitments, fleet)
        job = await self._runner.submit(fleet, commitments, request.request_id, _robustness(request))
        return planner_service_pb2.SubmitPlanJobResponse(job=job_to_message(job))

    @_handle_errors
    async def GetPlanJob(self, request, context):
        job = self._runner.view(request.job_id)
        if job is None:
            raise not_found("job", request.job_id)
        response = planner_service_pb2.GetPlanJobResponse(job=job_to_message(job))
        if job.plan_id:
            record = self._store.get_plan(job.plan_id)
            response.plan.CopyFrom(convert.plan_to_message(record.plan, record.plan_id, record.created))
        return response

    @_handle_errors
    async def ListPlanJobs(self, request, context):
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise invalid_argument([("page_size", f"must be between 1 and {MAX_PAGE_SIZE} (got {request.page_size})")])
        offset = _decode_page_token(request.page_token)
        state = _PROTO_TO_STATE.get(request.state) if request.state else None
        jobs = self._store.list_jobs(state, size + 1, offset)
        response = planner_service_pb2.ListPlanJobsResponse(jobs=[job_to_message(j) for j in jobs[:size]])
        if len(jobs) > size:
            response.next_page_token = _encode_page_token(offset + size)
        return response

    @_handle_errors
    async def CancelPlanJob(self, request, context):
        remaining = context.time_remaining()
        wait_s = CANCEL_WAIT_S if remaining is None else max(0.0, min(CANCEL_WAIT_S, remaining - 0.2))
        job = await self._runner.cancel(request.job_id, wait_s)
        return planner_service_pb2.CancelPlanJobResponse(job=job_to_message(job))

    @_handle_stream_errors
    async def WatchPlanJob(self, request, context):
        async for job in self._runner.watch(request.job_id):
            yield planner_service_pb2.WatchPlanJobResponse(job=job_to_message(job))

    # what-if and dispatch

    @_handle_errors
    async def Evaluate(self, request, context):
        record = None
        if request.plan_id:
            record = self._store.get_plan(request.plan_id)
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
        fleet, spec = _scenario_selection(fleet, request.scenarios)
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

    @_handle_errors
    async def Dispatch(self, request, context):
        started = time.perf_counter()
        entry = self._dispatch_entry(request.plan_id)
        table = entry.table
        prices = site_prices_usd_per_mwh(
            table, request.power_price_usd_per_mwh_by_site, request.spot_price_usd_per_mwh_by_market
        )
        conditions = site_conditions(table, request.available_mw_by_site, request.dr_call_sites)
        source = request.WhichOneof("hashprice_source")
        if source == "hashprice_usd_per_ph_day":
            hashprice = request.hashprice_usd_per_ph_day
        elif source == "network":
            network = request.network
            hashprice = network_hashprice_usd_per_ph_day(
                table,
                network.btc_price_usd,
                network.network_hashrate_ehs,
                network.fees_btc_per_block if network.HasField("fees_btc_per_block") else None,
                network.block_height if network.HasField("block_height") else None,
            )
        else:
            raise invalid_argument([("hashprice_source", "give hashprice_usd_per_ph_day or network")])
        decision = decide(table, prices, hashprice, conditions)
        response = _dispatch_response(entry, decision, request.include_rack_ids)
        context.set_trailing_metadata(((SERVER_TIME_METADATA, str(round((time.perf_counter() - started) * 1e6))),))
        return response

    # plan cache for Dispatch

    def remember_plan(self, plan_id: str, fleet: Fleet, plan: PlanResult) -> None:
        """Lay out a plan's dispatch table once, when the plan is made or first dispatched."""
        racks = {g.group: g.racks_mine for g in plan.allocation}
        ids = {g.group: g.rack_ids_mine for g in plan.allocation}
        table = build_dispatch_table(fleet, racks, ids, allocation=convert.plan_allocation(plan))
        self._dispatch[plan_id] = _DispatchEntry(plan_id, table)
        self._dispatch.move_to_end(plan_id)
        while len(self._dispatch) > DISPATCH_CACHE_PLANS:
            self._dispatch.popitem(last=False)

    def _dispatch_entry(self, plan_id: str) -> _DispatchEntry:
        entry = self._dispatch.get(plan_id)
        if entry is None:
            record = self._store.get_plan(plan_id)
            if record is None:
                raise not_found("plan", plan_id)
            self.remember_plan(plan_id, record.fleet(), record.plan)
            entry = self._dispatch[plan_id]
        return entry


_ACTIONS = (  # index 0: every rack of the group runs, 1: none, 2: some (a limit or a DR call binds)
    planner_service_pb2.RACK_ACTION_RUN,
    planner_service_pb2.RACK_ACTION_CURTAIL,
    planner_service_pb2.RACK_ACTION_RUN_PARTIAL,
)


def _dispatch_response(entry: _DispatchEntry, decision, include_rack_ids: bool):
    table = entry.table
    racks, racks_run = table.racks, decision.racks_run
    mw, run_mw = table.meter_mw, racks_run * table.rack_meter_mw
    groups = [
        planner_service_pb2.GroupDispatch(
            group=table.group_ids[g],
            site=table.group_sites[g],
            action=_ACTIONS[0 if racks_run[g] == racks[g] else 1 if racks_run[g] == 0 else 2],
            racks=int(racks[g]),
            mw=float(mw[g]),
            power_price_usd_per_mwh=float(decision.power_price_usd_per_mwh[g]),
            breakeven_power_price_usd_per_mwh=float(decision.breakeven_power_price_usd_per_mwh[g]),
            margin_usd_per_rack_hour=float(decision.margin_usd_per_rack_hour[g]),
            rack_ids=table.rack_ids[g] if include_rack_ids else (),
            racks_run=int(racks_run[g]),
            run_mw=float(run_mw[g]),
        )
        for g in range(len(table.group_ids))
    ]
    total_run_mw = float(run_mw.sum())
    response = planner_service_pb2.DispatchResponse(
        plan_id=entry.plan_id,
        hashprice_usd_per_ph_day=decision.hashprice_usd_per_ph_day,
        groups=groups,
        racks_run=int(racks_run.sum()),
        racks_curtailed=int((racks - racks_run).sum()),
        run_mw=total_run_mw,
        curtailed_mw=float((mw - run_mw).sum()),
    )
    for state in decision.sites:
        convert.fill_message(response.sites.add(), dataclasses.asdict(state))
    return response


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


def job_to_message(job: JobRecord) -> jobs_pb2.PlanJob:
    message = jobs_pb2.PlanJob(
        job_id=job.job_id,
        request_id=job.request_id,
        state=_STATE_TO_PROTO[job.state],
        fleet_name=job.fleet_name,
        plan_id=job.plan_id,
        cancel_requested=job.cancel_requested,
        attempts=job.attempts,
        create_time=convert.timestamp(job.created_at),
    )
    convert.fill_message(message.progress, job.progress.as_dict())
    if job.started_at is not None:
        message.start_time.CopyFrom(convert.timestamp(job.started_at))
    if job.ended_at is not None:
        message.end_time.CopyFrom(convert.timestamp(job.ended_at))
    if job.error is not None:
        message.error.CopyFrom(job.error.to_job_error())
    if job.robustness is not None:
        message.robustness.CopyFrom(convert.robustness_settings_to_message(job.robustness))
    return message


def _encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_page_token(token: str) -> int:
    if not token:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind != "offset" or int(value) < 0:
            raise ValueError(token)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise invalid_argument([("page_token", "not a token this server issued")]) from None
