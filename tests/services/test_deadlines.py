"""Deadlines that hold: the time budget covers economics, model build and solve (issue 12, item 5)."""

from __future__ import annotations

import time

import grpc
import pytest
import yaml

from protos.hashpivot.v1 import plan_pb2
from protos.hashpivot.v1 import planner_service_pb2 as pb
from services.client import fleet_message
from solvers.runs import RunDeadlineError, SolveOverhead, solve_time_limit_s
from tests.conftest import EXAMPLES
from tests.services.grpc_harness import ServerThread, hard_fleet_data

DEADLINE_S = 4.0


@pytest.fixture(scope="module")
def stub(ray_session, tmp_path_factory):
    with ServerThread(tmp_path_factory.mktemp("deadlines") / "db.sqlite") as server, server.channel() as channel:
        yield server.stub(channel)


def test_a_short_deadline_on_the_example_fleet_returns_a_plan(stub):
    """Issue 12: examples/fleet.yaml with a 1-3 s deadline ended DEADLINE_EXCEEDED every time, because the
    solver's limit ignored the model build. Now the build is budgeted (learnt from the first solve).
    4 s, not 3: on two cores shared with other test runs the scenarios alone take 1-2 s; more (3/4 of an
    unconstrained run) when the machine is so loaded that an unconstrained run takes longer."""
    # the example's fleet over one quarter (as the issue measured it; the file plans five years)
    data = yaml.safe_load((EXAMPLES / "fleet.yaml").read_text())
    data["horizon"] = {"start": "2026-12-01", "days": 91, "step_hours": 1}
    fleet = fleet_message(data)
    started = time.monotonic()
    stub.Optimize(pb.OptimizeRequest(fleet=fleet), timeout=120)  # warm workers; teaches the build overhead
    # On a machine this loaded an unconstrained run takes longer than 4 s; the deadline stays shorter than it.
    deadline_s = max(DEADLINE_S, 0.75 * (time.monotonic() - started))
    started = time.monotonic()
    plan = stub.Optimize(pb.OptimizeRequest(fleet=fleet), timeout=deadline_s).plan
    assert time.monotonic() - started < deadline_s
    assert plan.solver.status in (plan_pb2.SOLVE_STATUS_OPTIMAL, plan_pb2.SOLVE_STATUS_TIME_LIMIT)
    assert plan.allocation  # a whole plan, not a stub


def test_the_solvers_own_time_limit_is_not_a_deadline(stub):
    """A tiny solver time limit under a generous deadline is the request's doing: never DEADLINE_EXCEEDED
    (clients retry that); either the incumbent found within the limit, or FAILED_PRECONDITION saying so."""
    data = hard_fleet_data(time_limit_s=0.001)
    try:
        plan = stub.Optimize(pb.OptimizeRequest(fleet=fleet_message(data)), timeout=120).plan
    except grpc.RpcError as error:
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert "time_limit_s" in error.details()
    else:
        assert plan.solver.status == plan_pb2.SOLVE_STATUS_TIME_LIMIT


def test_the_solve_limit_leaves_room_for_the_build_and_the_reply():
    assert solve_time_limit_s(60, None) == 60  # no deadline: the fleet's limit
    assert solve_time_limit_s(60, 10.0) == pytest.approx(10 * 0.9 - 0.3)
    assert solve_time_limit_s(60, 10.0, overhead_s=2.0) == pytest.approx(10 * 0.9 - 0.3 - 2.0)
    # A pessimistic estimate shortens the solve to 60 % of the usable time; it does not refuse the call.
    assert solve_time_limit_s(60, 10.0, overhead_s=50.0) == pytest.approx((10 * 0.9 - 0.3) * 0.6)
    with pytest.raises(RunDeadlineError, match="build the model"):
        solve_time_limit_s(60, 0.38, overhead_s=1.0)
    overhead = SolveOverhead()
    assert overhead.estimate_s(1_000) == pytest.approx(0.2 + 0.2)  # the first guess: 0.2 s + 0.2 ms per unit
    for seconds in (1.2, 1.2, 1.2, 30.0, 1.2):  # one cold start (or a wait for a CPU) among warm solves
        overhead.observe(1_000, seconds)
    assert overhead.estimate_s(1_000) == pytest.approx(1.2)  # the median ignores the outlier
    assert overhead.estimate_s(2_000) == pytest.approx(0.2 + 2 * 1.0)  # the fixed part is not scaled
