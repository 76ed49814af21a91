"""services/errors.py: feasibility records become statuses with details, and stored job errors read back."""

import grpc
from google.rpc import error_details_pb2

from optimizer.allocation import Violation
from protos.hashpivot.v1 import jobs_pb2
from services.errors import ConstraintViolation, QuotaViolation, ServiceError, allocation_error

CAPACITY = Violation(
    "site_capacity", "texas", "sites.texas.capacity_mw", "load 5.200 MW exceeds capacity", 5.2, 5.0, "MW"
)
BUDGET = Violation("capital_budget", "", "capital_budget_usd", "needs $35.0M, budget $20.0M", 35e6, 20e6, "USD")


def test_broken_constraints_are_failed_precondition_with_records():
    error = allocation_error([CAPACITY, BUDGET], {})
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert [v.subject for v in error.constraint_violations] == ["site_capacity[texas]", "capital_budget"]
    status = error.to_rpc_status()
    failure, records = error_details_pb2.PreconditionFailure(), jobs_pb2.ConstraintViolations()
    assert status.details[0].Unpack(failure) and status.details[1].Unpack(records)
    assert [v.description for v in failure.violations] == [CAPACITY.message, BUDGET.message]  # what the CLI prints
    capacity = records.violations[0]
    assert (capacity.constraint, capacity.needed, capacity.limit, capacity.unit) == ("site_capacity", 5.2, 5.0, "MW")
    assert capacity.field == "sites.texas.capacity_mw"


def test_rack_counts_are_a_malformed_request_naming_the_group_position():
    counts = Violation(
        "rack_counts", "b", "allocation.b", "counts {'mine': 1} must be >= 0 and sum to 4", 1, 4, "racks"
    )
    error = allocation_error([counts, CAPACITY], {"a": 0, "b": 1})
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations == [("allocation.racks[1]", counts.message)]


def test_a_record_without_amounts_leaves_them_unset():
    start = Violation("offer_start", "colo", "lease_offers.colo", "cannot start at spot's chosen option")
    (record,) = jobs_pb2.ConstraintViolations.FromString(
        allocation_error([start], {}).to_rpc_status().details[1].value
    ).violations
    assert not record.HasField("needed") and not record.HasField("limit")


def test_stored_job_errors_read_back_including_the_older_list_form():
    error = ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "broken",
        constraint_violations=[ConstraintViolation("site_capacity", "site_capacity[t]", "over", 2.0, 1.0, "MW", "f")],
        quota_violations=[QuotaViolation("max_work", "estimated 9, limit 1")],
    )
    assert ServiceError.from_dict(error.as_dict()) == error
    older = {"code": "FAILED_PRECONDITION", "message": "m", "constraint_violations": [["capital_budget", "c", "d"]]}
    assert ServiceError.from_dict(older).constraint_violations == [ConstraintViolation("capital_budget", "c", "d")]
