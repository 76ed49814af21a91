"""A small Python client of the PlannerService, for planning tools and scripts.

    from services.client import PlannerClient
    with PlannerClient("planner.internal:50051") as client:
        reply = client.optimize("examples/tiny.yaml", timeout_s=60)
        print(reply.plan_id, reply.plan.profit["mean_usd"])
        checked = client.optimize("examples/tiny.yaml", robustness=RobustnessSettings(oos_scenarios=200))
        print(checked.plan.robustness.plan("stochastic").mean_profit_usd)
        now = client.dispatch(reply.plan_id, {"texas": 41.0}, hashprice_usd_per_ph_day=35.0)
        paths = client.upload_scenarios("desk_paths.npz")  # our own scenarios, streamed in chunks
        on_ours = client.optimize("examples/tiny.yaml", scenario_set_id=paths.scenario_set_id)

Credentials: `token` (default $HASHPIVOT_TOKEN) travels as "authorization: Bearer <token>" on
every call; `tls` (Credentials.from_env reads $HASHPIVOT_TLS_CA, $HASHPIVOT_CLIENT_CERT,
$HASHPIVOT_CLIENT_KEY) makes the channel TLS, with a client certificate for mTLS.

Fleets are given as a fleet file path (the same YAML/JSON as `hashpivot plan`), a validated
`optimizer.fleet.Fleet`, a fleet mapping, or a `hashpivot.v1.Fleet` message. Plans come back as
`optimizer.plan_result.PlanResult` (what plan.json holds). Errors raise `PlannerError` with the
status code and the field or constraint violations the server sent (`constraints`: the records, with
amounts); a failed job's `status` reads the same way with `PlannerError.from_status`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from optimizer.allocation import Allocation
from optimizer.fleet import Fleet, load_fleet, parse_fleet
from optimizer.plan_result import PlanResult
from optimizer.robustness import RobustnessSettings
from optimizer.scenario_io import save_scenarios
from optimizer.scenarios import ScenarioSet
from protos.hashpivot.v1 import fleet_pb2, jobs_pb2, plan_pb2, planner_service_pb2, planner_service_pb2_grpc
from services import convert
from services.serving import MESSAGE_OPTIONS
from services.validation import MAX_CHUNK_BYTES
from solvers.diagnose import Commitments

TARGET_ENV = "HASHPIVOT_TARGET"
TOKEN_ENV = "HASHPIVOT_TOKEN"
TLS_CA_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV = "HASHPIVOT_TLS_CA", "HASHPIVOT_CLIENT_CERT", "HASHPIVOT_CLIENT_KEY"

FleetLike = Fleet | str | Path | Mapping[str, Any] | fleet_pb2.Fleet
# Robustness settings as the domain model, a mapping of the fields to set (the server validates them and
# applies the defaults of `hashpivot plan` to the others), or the message.
RobustnessLike = RobustnessSettings | Mapping[str, Any] | plan_pb2.RobustnessSettings
ScenariosLike = str | Path | bytes | ScenarioSet  # a scenario file (docs/scenarios.md), its bytes, or the paths


def default_target() -> str:
    """$HASHPIVOT_TARGET, else localhost on $HASHPIVOT_PORT (default 50051)."""
    return os.environ.get(TARGET_ENV) or f"localhost:{os.environ.get('HASHPIVOT_PORT', '50051')}"


@dataclass(frozen=True)
class TlsConfig:
    """Client side of TLS: the CA that signed the server's certificate, and for mTLS our own pair."""

    ca: Path | None = None  # None: the system's roots
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_env(cls) -> TlsConfig | None:
        paths = [os.environ.get(name) for name in (TLS_CA_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV)]
        if not any(paths):
            return None
        return cls(*(Path(p) if p else None for p in paths))

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


@dataclass
class PlannerError(Exception):
    """A failed call: status code, message, and the rich details the server attached."""

    code: grpc.StatusCode
    message: str
    field_violations: list[tuple[str, str]] = field(default_factory=list)  # (field path, description)
    constraint_violations: list[tuple[str, str]] = field(default_factory=list)  # (subject, description)
    quota_violations: list[tuple[str, str]] = field(default_factory=list)  # (limit, estimate and fields)
    # the broken constraints as records: family, subject, amount needed, limit, unit, fleet field
    constraints: list[jobs_pb2.ConstraintViolation] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> PlannerError:
        status = rpc_status.from_call(error)
        out = cls(error.code(), error.details() or "")
        out._read_details(status.details if status is not None else ())
        return out

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> PlannerError:
        """The error a failed job holds (PlanJob.status), as a failed call would have raised it."""
        out = cls(grpc.StatusCode[code_pb2.Code.Name(status.code)], status.message)
        out._read_details(status.details)
        return out

    def _read_details(self, details) -> None:
        for detail in details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                self.field_violations += [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                failure = error_details_pb2.PreconditionFailure()
                detail.Unpack(failure)
                self.constraint_violations += [(v.subject, v.description) for v in failure.violations]
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                quota = error_details_pb2.QuotaFailure()
                detail.Unpack(quota)
                self.quota_violations += [(v.subject, v.description) for v in quota.violations]
            elif detail.Is(jobs_pb2.ConstraintViolations.DESCRIPTOR):
                records = jobs_pb2.ConstraintViolations()
                detail.Unpack(records)
                self.constraints += list(records.violations)


@dataclass(frozen=True)
class PlanReply:
    plan_id: str
    plan: PlanResult
    message: Any  # the hashpivot.v1.Plan as received


def fleet_message(fleet: FleetLike) -> fleet_pb2.Fleet:
    """A fleet file path, Fleet, mapping or message as the request message (files validated locally first)."""
    if isinstance(fleet, fleet_pb2.Fleet):
        return fleet
    if isinstance(fleet, str | Path):
        fleet = load_fleet(fleet)
    elif isinstance(fleet, Mapping):
        fleet = parse_fleet(dict(fleet))
    return convert.fleet_to_message(fleet)


def scenario_bytes(scenarios: ScenariosLike) -> bytes:
    """The NPZ bytes of a scenario file path, of bytes as they are, or of a ScenarioSet (saved as a file would be)."""
    if isinstance(scenarios, bytes):
        return scenarios
    if isinstance(scenarios, str | Path):
        return Path(scenarios).read_bytes()
    buffer = io.BytesIO()
    save_scenarios(buffer, scenarios)
    return buffer.getvalue()


def robustness_message(settings: RobustnessLike) -> plan_pb2.RobustnessSettings:
    if isinstance(settings, plan_pb2.RobustnessSettings):
        return settings
    message = plan_pb2.RobustnessSettings()
    dropped = convert.fill_message(message, settings)
    if dropped:
        raise ValueError(f"no such robustness settings: {', '.join(dropped)}")
    return message


class PlannerClient:
    def __init__(
        self,
        target: str | None = None,
        timeout_s: float | None = None,
        channel: grpc.Channel | None = None,
        token: str | None = None,
        tls: TlsConfig | None = None,
    ):
        self.target = target or default_target()
        self.timeout_s = timeout_s  # default deadline of every call; None: none
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = channel or _channel(self.target, tls if tls is not None else TlsConfig.from_env())
        self.stub = planner_service_pb2_grpc.PlannerServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PlannerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, timeout_s: float | None = None):
        try:
            timeout = timeout_s if timeout_s is not None else self.timeout_s
            return method(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise PlannerError.from_rpc_error(error) from None

    # plans

    def optimize(
        self,
        fleet: FleetLike,
        commitments: Commitments | None = None,
        timeout_s: float | None = None,
        robustness: RobustnessLike | None = None,
        scenario_set_id: str = "",
    ) -> PlanReply:
        """Plan within the call; the deadline bounds the solve (best plan so far, with its gap).
        With `robustness`, the plan comes back assessed (plan.robustness); the deadline must cover that too.
        With `scenario_set_id` (upload_scenarios), the plan is made on those scenarios."""
        request = planner_service_pb2.OptimizeRequest(fleet=fleet_message(fleet), scenario_set_id=scenario_set_id)
        if commitments is not None:
            request.commitments.CopyFrom(convert.commitments_to_message(commitments))
        if robustness is not None:
            request.robustness.CopyFrom(robustness_message(robustness))
        plan = self._call(self.stub.Optimize, request, timeout_s).plan
        return PlanReply(plan.plan_id, convert.plan_from_message(plan), plan)

    def get_plan(self, plan_id: str) -> PlanReply:
        plan = self._call(self.stub.GetPlan, planner_service_pb2.GetPlanRequest(plan_id=plan_id)).plan
        return PlanReply(plan.plan_id, convert.plan_from_message(plan), plan)

    # jobs

    def submit(
        self,
        fleet: FleetLike,
        commitments: Commitments | None = None,
        request_id: str = "",
        robustness: RobustnessLike | None = None,
        scenario_set_id: str = "",
    ) -> jobs_pb2.PlanJob:
        """Queue a plan job; with `robustness`, its plan is stored with its robustness report."""
        request = planner_service_pb2.SubmitPlanJobRequest(
            fleet=fleet_message(fleet), request_id=request_id, scenario_set_id=scenario_set_id
        )
        if commitments is not None:
            request.commitments.CopyFrom(convert.commitments_to_message(commitments))
        if robustness is not None:
            request.robustness.CopyFrom(robustness_message(robustness))
        return self._call(self.stub.SubmitPlanJob, request).job

    def get(self, job_id: str) -> tuple[jobs_pb2.PlanJob, PlanReply | None]:
        response = self._call(self.stub.GetPlanJob, planner_service_pb2.GetPlanJobRequest(job_id=job_id))
        plan = None
        if response.HasField("plan"):
            plan = PlanReply(response.plan.plan_id, convert.plan_from_message(response.plan), response.plan)
        return response.job, plan

    def list_jobs(self, state: int = 0, page_size: int = 50) -> Iterator[jobs_pb2.PlanJob]:
        """Every job (optionally in one PlanJobState), newest first, page by page."""
        token = ""
        while True:
            request = planner_service_pb2.ListPlanJobsRequest(page_size=page_size, page_token=token, state=state)
            response = self._call(self.stub.ListPlanJobs, request)
            yield from response.jobs
            token = response.next_page_token
            if not token:
                return

    def cancel(self, job_id: str) -> jobs_pb2.PlanJob:
        return self._call(self.stub.CancelPlanJob, planner_service_pb2.CancelPlanJobRequest(job_id=job_id)).job

    def delete_job(self, job_id: str) -> None:
        self._call(self.stub.DeletePlanJob, planner_service_pb2.DeletePlanJobRequest(job_id=job_id))

    def list_plans(self, page_size: int = 50) -> Iterator[planner_service_pb2.PlanSummary]:
        """Every stored plan the caller may see, newest first, page by page."""
        token = ""
        while True:
            request = planner_service_pb2.ListPlansRequest(page_size=page_size, page_token=token)
            response = self._call(self.stub.ListPlans, request)
            yield from response.plans
            token = response.next_page_token
            if not token:
                return

    def delete_plan(self, plan_id: str) -> None:
        self._call(self.stub.DeletePlan, planner_service_pb2.DeletePlanRequest(plan_id=plan_id))

    def watch(self, job_id: str, timeout_s: float | None = None) -> Iterator[jobs_pb2.PlanJob]:
        """The job at every change until it ends."""
        request = planner_service_pb2.WatchPlanJobRequest(job_id=job_id)
        stream = self.stub.WatchPlanJob(request, timeout=timeout_s, metadata=self._metadata)
        try:
            for event in stream:
                yield event.job
        except grpc.RpcError as error:
            raise PlannerError.from_rpc_error(error) from None

    # scenario sets

    def upload_scenarios(
        self, scenarios: ScenariosLike, name: str = "", timeout_s: float | None = None
    ) -> planner_service_pb2.ScenarioSet:
        """Upload a scenario file (a path, its bytes, or a ScenarioSet) in chunks; reference the returned
        scenario_set_id from optimize, submit and evaluate."""
        data = scenario_bytes(scenarios)
        chunks = [data[i : i + MAX_CHUNK_BYTES] for i in range(0, len(data), MAX_CHUNK_BYTES)] or [b""]
        requests = (
            planner_service_pb2.UploadScenariosRequest(chunk=chunk, name=name if i == 0 else "")
            for i, chunk in enumerate(chunks)
        )
        return self._call(self.stub.UploadScenarios, requests, timeout_s).scenario_set

    def delete_scenario_set(self, scenario_set_id: str) -> None:
        request = planner_service_pb2.DeleteScenarioSetRequest(scenario_set_id=scenario_set_id)
        self._call(self.stub.DeleteScenarioSet, request)

    # what-if and dispatch

    def evaluate(
        self,
        plan_id: str = "",
        fleet: FleetLike | None = None,
        allocation: Allocation | PlanResult | None = None,
        count: int | None = None,
        seed: int | None = None,
        stream: int | None = None,
        include_scenario_profits: bool = False,
        timeout_s: float | None = None,
        scenario_set_id: str = "",
    ) -> planner_service_pb2.EvaluateResponse:
        """Score an allocation; on every scenario of `scenario_set_id` when given (then no count, seed, stream)."""
        request = planner_service_pb2.EvaluateRequest(
            plan_id=plan_id, include_scenario_profits=include_scenario_profits, scenario_set_id=scenario_set_id
        )
        if fleet is not None:
            request.fleet.CopyFrom(fleet_message(fleet))
        if isinstance(allocation, PlanResult):
            allocation = convert.plan_allocation(allocation)
        if allocation is not None:
            request.allocation.CopyFrom(convert.allocation_to_message(allocation))
        for name, value in (("count", count), ("seed", seed), ("stream", stream)):
            if value is not None:
                setattr(request.scenarios, name, value)
        return self._call(self.stub.Evaluate, request, timeout_s)

    def dispatch(
        self,
        plan_id: str,
        power_price_usd_per_mwh_by_site: Mapping[str, float],
        hashprice_usd_per_ph_day: float | None = None,
        btc_price_usd: float | None = None,
        network_hashrate_ehs: float | None = None,
        include_rack_ids: bool = False,
        spot_price_usd_per_mwh_by_market: Mapping[str, float] | None = None,
        available_mw_by_site: Mapping[str, float] | None = None,
        dr_call_sites: tuple[str, ...] = (),
    ) -> planner_service_pb2.DispatchResponse:
        """Run or curtail now. Prices per site (index: price paid; take-or-pay: spot, the server deducts the
        resale fee) or spot per market; a curtailment event as available MW per site; active DR calls."""
        request = self.dispatch_request(
            plan_id,
            power_price_usd_per_mwh_by_site,
            hashprice_usd_per_ph_day,
            btc_price_usd,
            network_hashrate_ehs,
            spot_price_usd_per_mwh_by_market=spot_price_usd_per_mwh_by_market,
            available_mw_by_site=available_mw_by_site,
            dr_call_sites=dr_call_sites,
        )
        request.include_rack_ids = include_rack_ids
        return self._call(self.stub.Dispatch, request)

    @staticmethod
    def dispatch_request(
        plan_id: str,
        prices: Mapping[str, float],
        hashprice_usd_per_ph_day: float | None = None,
        btc_price_usd: float | None = None,
        network_hashrate_ehs: float | None = None,
        spot_price_usd_per_mwh_by_market: Mapping[str, float] | None = None,
        available_mw_by_site: Mapping[str, float] | None = None,
        dr_call_sites: tuple[str, ...] = (),
    ) -> planner_service_pb2.DispatchRequest:
        request = planner_service_pb2.DispatchRequest(
            plan_id=plan_id,
            power_price_usd_per_mwh_by_site=dict(prices),
            spot_price_usd_per_mwh_by_market=dict(spot_price_usd_per_mwh_by_market or {}),
            available_mw_by_site=dict(available_mw_by_site or {}),
            dr_call_sites=list(dr_call_sites),
        )
        if hashprice_usd_per_ph_day is not None:
            request.hashprice_usd_per_ph_day = hashprice_usd_per_ph_day
        elif btc_price_usd is not None and network_hashrate_ehs is not None:
            request.network.btc_price_usd = btc_price_usd
            request.network.network_hashrate_ehs = network_hashrate_ehs
        else:
            raise ValueError("give hashprice_usd_per_ph_day, or btc_price_usd and network_hashrate_ehs")
        return request

    # health

    def health(self, service: str = "", timeout_s: float = 5.0) -> str:
        """SERVING, NOT_SERVING, ... as the standard health service reports it."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            raise PlannerError.from_rpc_error(error) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _channel(target: str, tls: TlsConfig | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target, options=MESSAGE_OPTIONS)
    return grpc.secure_channel(target, tls.credentials(), options=MESSAGE_OPTIONS)
