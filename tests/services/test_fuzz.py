"""Fuzz: 1,000 mutated Fleet messages through a real server find no INTERNAL/UNKNOWN, and every refusal
names its field (INVALID_ARGUMENT: BadRequest field paths; RESOURCE_EXHAUSTED: QuotaFailure limits).

The server's admission limit is set to one scenario step, so a mutation that leaves the fleet valid is
refused by admission (its estimate named) instead of being planned: the whole request path runs,
parse, bounds, model validation, admission, with no compute.
"""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.hashpivot.v1 import fleet_pb2
from protos.hashpivot.v1 import planner_service_pb2 as pb
from services.admission import Limits
from services.server import ServerConfig
from tests.conftest import events_fleet_data
from tests.services.grpc_harness import ServerThread, fleet_message

EXAMPLES = 1_000
BASE = fleet_message(events_fleet_data())  # every section of the contract present: sites, AI, DR, events, offers
_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


@pytest.fixture(scope="module")
def stub(ray_session, tmp_path_factory):
    config = ServerConfig(insecure=True, limits=Limits(max_scenario_steps=1))
    with ServerThread(tmp_path_factory.mktemp("fuzz") / "db.sqlite", config=config) as server:
        with server.channel() as channel:
            yield server.stub(channel)


def scalar_slots(message, prefix: str = "fleet") -> list[tuple[object, FieldDescriptor, int | None, str]]:
    """Every scalar a mutation may change: (parent message, field, index in a repeated field, request path)."""
    slots = []
    for field in message.DESCRIPTOR.fields:
        path = f"{prefix}.{field.name}"
        if field.message_type is not None:
            if field.is_repeated:
                for i, item in enumerate(getattr(message, field.name)):
                    slots += scalar_slots(item, f"{path}[{i}]")
            elif message.HasField(field.name):
                slots += scalar_slots(getattr(message, field.name), path)
        elif field.is_repeated:
            slots += [(message, field, i, f"{path}[{i}]") for i in range(len(getattr(message, field.name)))]
        else:
            slots.append((message, field, None, path))
    return slots


def value_for(field: FieldDescriptor) -> st.SearchStrategy:
    if field.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        edge = st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -1e308, 0.0, -1.0, 1e-300])
        return st.one_of(edge, st.floats(width=64 if field.cpp_type == FieldDescriptor.CPPTYPE_DOUBLE else 32))
    if field.cpp_type in _INT_RANGES:
        low, high = _INT_RANGES[field.cpp_type]
        return st.one_of(st.sampled_from([low, high, 0, -1]), st.integers(low, high))
    if field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return st.integers(-5, 120)
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    return st.one_of(st.text(max_size=40), st.just("x" * 5000), st.sampled_from(["", "ercot", "spot", "fixed"]))


@st.composite
def mutated_fleets(draw) -> tuple[fleet_pb2.Fleet, list[tuple[str, object]]]:
    fleet = fleet_pb2.Fleet()
    fleet.CopyFrom(BASE)
    changes = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "set", "set", "drop", "duplicate"]))
        if kind == "set":
            parent, field, index, path = draw(st.sampled_from(scalar_slots(fleet)))
            value = draw(value_for(field))
            try:
                if index is None:
                    setattr(parent, field.name, value)
                else:
                    getattr(parent, field.name)[index] = value
            except (ValueError, TypeError):  # the client library itself refuses (e.g. a float32 overflow)
                continue
            changes.append((path, value))  # (a 5,000-character string shows in a failure as its length)
        else:
            lists = [f for f in fleet.DESCRIPTOR.fields if f.is_repeated and len(getattr(fleet, f.name))]
            if not lists:
                continue
            field = draw(st.sampled_from(lists))
            items = getattr(fleet, field.name)
            index = draw(st.integers(0, len(items) - 1))
            if kind == "drop":
                del items[index]
            elif field.message_type is not None:
                items.add().CopyFrom(items[index])
            changes.append((f"fleet.{field.name}[{index}]", kind))
    return fleet, changes


def details_of(error: grpc.RpcError) -> tuple[list[str], list[str]]:
    fields, limits = [], []
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            limits += [v.subject for v in quota.violations]
    return fields, limits


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same 1,000 cases every run: a failure here is a regression, not luck
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(case=mutated_fleets())
def test_mutated_fleets_are_refused_by_name_never_internal(stub, case):
    fleet, changes = case
    with pytest.raises(grpc.RpcError) as err:
        stub.Optimize(pb.OptimizeRequest(fleet=fleet), timeout=30)
    code = err.value.code()
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (code, changes)
    fields, limits = details_of(err.value)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        assert fields and all(f.startswith("fleet") for f in fields), (fields, changes)
    else:
        assert "max_scenario_steps" in limits, (limits, changes)
    assert len(err.value.details()) <= 1_200  # no echo of a 5,000-character input
    if any(value in ("drop", "duplicate") for _, value in changes):
        return  # list positions moved: paths of earlier changes no longer name the same element
    final = dict(changes)  # a later change of the same path overrides an earlier one
    for path, value in final.items():  # a non-finite number is refused at exactly its own path
        if isinstance(value, float) and not math.isfinite(value):
            assert path in fields, (path, fields)
