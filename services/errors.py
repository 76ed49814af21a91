"""Errors of the service as canonical gRPC status codes with rich details (google.rpc.Status).

- INVALID_ARGUMENT + google.rpc.BadRequest: one field violation per bad field, named by its path
  in the request ("fleet.sites[1].capacity_mw").
- FAILED_PRECONDITION + google.rpc.PreconditionFailure: no plan meets the constraints, or a given
  allocation breaks one; each violation has type "CONSTRAINT" and names the constraint as subject.
- DEADLINE_EXCEEDED: the caller's deadline passed before a plan was found (only then: a plan the
  solver's own time limit cut short is FAILED_PRECONDITION, so clients that retry on
  DEADLINE_EXCEEDED do not retry a request that can never succeed); NOT_FOUND: an unknown id;
  CANCELLED.
- INTERNAL: the message carries an error id, which the server logs with the traceback; exception
  text never reaches the caller (it may hold paths, SQL or input).
Messages quote at most MAX_QUOTE_CHARS of input: past 16 KB of trailers the caller would see a
metadata-size RESOURCE_EXHAUSTED instead of the real status.
The same information is stored with a failed job (JobError), so GetPlanJob explains it too.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from optimizer.allocation import Violation
from optimizer.dispatch import DispatchInputError
from optimizer.fleet import FleetError
from protos.hashpivot.v1 import jobs_pb2
from services.convert import field_path
from solvers.diagnose import InfeasibleConstraintError
from solvers.highs import InfeasiblePlanError, NoSolutionInTimeError
from solvers.runs import RAY_LOST_ERRORS, RunDeadlineError

log = logging.getLogger(__name__)

CONSTRAINT = "CONSTRAINT"  # PreconditionFailure.Violation.type of a plan constraint
MAX_QUOTE_CHARS = 200  # of any one description (which may quote input)
MAX_MESSAGE_CHARS = 1000  # of the whole message
MAX_VIOLATIONS = 50  # field violations carried in one error


def clip(text: str, limit: int = MAX_QUOTE_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


@dataclass(frozen=True)
class ConstraintViolation:
    constraint: str  # family, e.g. "site_capacity"
    subject: str  # e.g. "site_capacity[texas]"
    description: str
    needed: float | None = None  # the amounts that clash (optimizer.allocation.Violation), in `unit`
    limit: float | None = None
    unit: str = ""
    field: str = ""  # fleet field that sets the limit, e.g. "sites.texas.capacity_mw"

    def to_message(self) -> jobs_pb2.ConstraintViolation:
        message = jobs_pb2.ConstraintViolation(
            constraint=self.constraint,
            subject=self.subject,
            description=self.description,
            unit=self.unit,
            field=self.field,
        )
        if self.needed is not None:
            message.needed = self.needed
        if self.limit is not None:
            message.limit = self.limit
        return message


class StoreError(RuntimeError):
    """The database cannot be used at all (corrupt, unreadable, unwritable at start-up); names its path."""


class StoreWriteError(RuntimeError):
    """A write failed (read-only or full disk, I/O error): the store keeps serving reads."""


@dataclass(frozen=True)
class QuotaViolation:
    subject: str  # the limit, e.g. "max_scenario_steps"
    description: str  # the estimate, the limit and the request fields behind it


@dataclass
class ServiceError(Exception):
    """An error a call (or a job) ends with."""

    code: grpc.StatusCode
    message: str
    field_violations: list[tuple[str, str]] = field(default_factory=list)  # (field path, description)
    constraint_violations: list[ConstraintViolation] = field(default_factory=list)
    quota_violations: list[QuotaViolation] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Bounded here, once, so no path can send the caller an unbounded echo of its input.
        self.message = clip(self.message, MAX_MESSAGE_CHARS)
        self.field_violations = [(clip(f), clip(d)) for f, d in self.field_violations[:MAX_VIOLATIONS]]

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> grpc.Status:
        return rpc_status.to_status(self.to_rpc_status())

    def to_rpc_status(self) -> status_pb2.Status:
        """google.rpc.Status with the rich details: what a call ends with, and what a failed job holds."""
        details = []
        if self.field_violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in self.field_violations
                    ]
                )
            )
        if self.constraint_violations:
            details.append(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=CONSTRAINT, subject=v.subject, description=v.description
                        )
                        for v in self.constraint_violations
                    ]
                )
            )
            details.append(
                jobs_pb2.ConstraintViolations(violations=[v.to_message() for v in self.constraint_violations])
            )
        if self.quota_violations:
            details.append(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(subject=v.subject, description=v.description)
                        for v in self.quota_violations
                    ]
                )
            )
        packed = []
        for detail in details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def to_job_error(self) -> jobs_pb2.JobError:
        """The deprecated PlanJob.error (PlanJob.status has the same as a google.rpc.Status)."""
        return jobs_pb2.JobError(
            code=self.code.value[0],
            message=self.message,
            field_violations=[jobs_pb2.FieldViolation(field=f, description=d) for f, d in self.field_violations],
            constraint_violations=[v.to_message() for v in self.constraint_violations],
        )

    def as_dict(self) -> dict:
        """JSON-able form, for the job store."""
        return {
            "code": self.code.name,
            "message": self.message,
            "field_violations": [list(v) for v in self.field_violations],
            "constraint_violations": [dataclasses.asdict(v) for v in self.constraint_violations],
            "quota_violations": [dataclasses.asdict(v) for v in self.quota_violations],
        }

    @classmethod
    def from_dict(cls, data: dict) -> ServiceError:
        return cls(
            code=grpc.StatusCode[data["code"]],
            message=data["message"],
            field_violations=[tuple(v) for v in data.get("field_violations", [])],
            constraint_violations=[_constraint(v) for v in data.get("constraint_violations", [])],
            quota_violations=[QuotaViolation(**v) for v in data.get("quota_violations", [])],
        )


def _constraint(stored: dict | list) -> ConstraintViolation:
    """A stored constraint violation: a dict, or the [constraint, subject, description] of older databases."""
    return ConstraintViolation(**stored) if isinstance(stored, dict) else ConstraintViolation(*stored)


def invalid_argument(violations: Iterable[tuple[str, str]], prefix: str = "") -> ServiceError:
    """INVALID_ARGUMENT naming every bad field; pydantic-style paths become request field paths."""
    paths = [(field_path(path, prefix), clip(message)) for path, message in violations]
    summary = "; ".join(f"{p}: {m}" for p, m in paths)
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {summary}", paths)


def not_found(kind: str, identifier: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, f"no {kind} {clip(identifier, 80)!r}")


def resource_exhausted(message: str, violations: Iterable[QuotaViolation]) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, quota_violations=list(violations))


def store_unavailable(exc: BaseException) -> ServiceError:
    """UNAVAILABLE (retryable) while the store cannot write; the cause is logged under an error id."""
    error_id = uuid.uuid4().hex[:12]
    log.error("store write failed, error id %s: %s", error_id, exc)
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE, f"the server cannot store results right now; retry later (error id {error_id})"
    )


def internal(exc: BaseException) -> ServiceError:
    """INTERNAL with a fresh error id; the id and the traceback go to the log, not to the caller."""
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s", error_id, exc_info=exc)
    return ServiceError(grpc.StatusCode.INTERNAL, f"internal error (error id {error_id}; the server log has it)")


def failed_precondition(message: str, violations: Iterable[ConstraintViolation] = ()) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message, constraint_violations=list(violations))


def infeasible(exc: InfeasiblePlanError) -> ServiceError:
    """FAILED_PRECONDITION naming the constraints whose relaxation alone would allow a plan."""
    violations = []
    for culprit in getattr(exc, "culprits", ()):
        for subject in culprit.subjects:
            reason = f"relaxing the {culprit.label} alone allows a plan"
            violations.append(ConstraintViolation(culprit.family, subject, reason))
    return failed_precondition(str(exc), violations)


def allocation_error(problems: list[Violation], group_position: dict[str, int]) -> ServiceError:
    """The error for `optimizer.allocation.check_feasible` violations of a requested allocation.

    Counts that do not add up are a malformed request (INVALID_ARGUMENT on "allocation.racks[i]");
    a well-formed allocation that breaks a constraint of the fleet (site capacity, AI block, offer
    bounds, capital budget) is FAILED_PRECONDITION naming the constraint, with the amounts.
    """
    malformed = [v for v in problems if v.constraint == "rack_counts"]
    if malformed:
        return invalid_argument([(_racks_field(v.subject, group_position), v.message) for v in malformed])
    violations = [
        ConstraintViolation(v.constraint, v.label, v.message, v.needed, v.limit, v.unit, v.field) for v in problems
    ]
    summary = "; ".join(f"{v.subject}: {v.description}" for v in violations)
    return failed_precondition(f"the allocation breaks constraints of the fleet: {summary}", violations)


def _racks_field(group: str, group_position: dict[str, int]) -> str:
    return f"allocation.racks[{group_position[group]}]" if group in group_position else "allocation.racks"


def to_service_error(exc: BaseException, fleet_prefix: str = "fleet") -> ServiceError:
    """The status a domain or solver exception ends a call with."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, FleetError):
        return invalid_argument(exc.violations, fleet_prefix)
    if isinstance(exc, DispatchInputError):
        return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), [(exc.field, str(exc))])
    if isinstance(exc, StoreWriteError):
        return store_unavailable(exc)
    if isinstance(exc, RunDeadlineError):
        return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
    if isinstance(exc, RAY_LOST_ERRORS):
        log.error("Ray lost a worker or node: %s", type(exc).__name__)
        return ServiceError(grpc.StatusCode.UNAVAILABLE, "the compute cluster lost a worker or node; retry")
    if isinstance(exc, NoSolutionInTimeError):
        return failed_precondition(f"{exc}: no plan within the solver time limit; raise fleet.solver.time_limit_s")
    if isinstance(exc, InfeasibleConstraintError | InfeasiblePlanError):
        return infeasible(exc)
    return internal(exc)


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    await context.abort_with_status(error.to_status())


def code_name(code: int) -> str:
    return code_pb2.Code.Name(code)
