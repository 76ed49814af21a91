"""Dispatch fronts (services/front.py): Dispatch answered in front processes, everything else forwarded.

Identity through a front (tokens, roles, tenants, TLS) is tested by running test_security.py's tests
against a server with a front too; here, what is the front's own: the same Dispatch replies as the
main server's, forwarded calls keeping their status and details, streams both ways, deleted plans,
and a dead front replaced.
"""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.hashpivot.v1 import jobs_pb2, planner_service_pb2_grpc
from protos.hashpivot.v1 import planner_service_pb2 as pb
from services.auth import Role, parse_token_lines, token_line
from services.client import PlannerClient, PlannerError
from services.front import RECHECK_S, method_kinds
from services.server import HEALTH_POLL_S, ServerConfig
from tests.conftest import small_fleet_data
from tests.services.grpc_harness import ServerThread, fleet_message, rich_details

TOKEN = "planner-secret"


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    config = ServerConfig(
        tokens=parse_token_lines([token_line(TOKEN, "alice", Role.PLANNER)], "test"), dispatch_fronts=1
    )
    with ServerThread(tmp_path_factory.mktemp("front") / "db.sqlite", config=config) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with PlannerClient(server.target, timeout_s=60, token=TOKEN) as c:
        yield c


@pytest.fixture(scope="module")
def plan_id(client) -> str:
    return client.optimize(small_fleet_data(scenarios=4)).plan_id


def _direct_stub(server: ServerThread):
    """A stub on the main server's private socket: the calls the fronts forward, answered by it directly."""
    channel = grpc.insecure_channel(server.server.private_address)
    return channel, planner_service_pb2_grpc.PlannerServiceStub(channel)


def test_every_served_method_is_known_to_the_forwarder_with_its_streaming_kind():
    kinds = method_kinds()
    assert kinds["/hashpivot.v1.PlannerService/Dispatch"] == (False, False)
    assert kinds["/hashpivot.v1.PlannerService/WatchPlanJob"] == (False, True)
    assert kinds["/hashpivot.v1.PlannerService/UploadScenarios"] == (True, False)
    assert kinds["/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"] == (True, True)
    assert kinds["/grpc.health.v1.Health/Watch"] == (False, True)
    assert any(m.startswith("/hashpivot.v1.SweepService/") for m in kinds)


def test_the_front_dispatches_exactly_as_the_main_server(server, plan_id):
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    channel, direct = _direct_stub(server)
    with channel, grpc.insecure_channel(server.target) as public:
        front = planner_service_pb2_grpc.PlannerServiceStub(public)
        for price in (5.0, 30.0, 41.5, 60.0, 250.0):
            for hashprice in (20.0, 35.0, 80.0):
                request = _request(plan_id, price, hashprice)
                assert front.Dispatch(request, metadata=metadata, timeout=10) == direct.Dispatch(
                    request, metadata=metadata, timeout=10
                )
        runs = {
            front.Dispatch(_request(plan_id, power_price), metadata=metadata, timeout=10).racks_run
            for power_price in (1.0, 1000.0)
        }
        assert len(runs) == 2  # cheap power runs racks that dear power curtails: the decision is live


def _request(plan_id: str, price_usd_per_mwh: float, hashprice_usd_per_ph_day: float = 35.0) -> pb.DispatchRequest:
    return pb.DispatchRequest(
        plan_id=plan_id,
        power_price_usd_per_mwh_by_site={"spot": price_usd_per_mwh},
        hashprice_usd_per_ph_day=hashprice_usd_per_ph_day,
        include_rack_ids=True,
    )


def test_forwarded_calls_keep_their_status_and_rich_details(server, client):
    bad = small_fleet_data(scenarios=4)
    bad["sites"][0]["capacity_mw"] = -1.0
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(server.target) as public:
        stub = planner_service_pb2_grpc.PlannerServiceStub(public)
        with pytest.raises(grpc.RpcError) as err:
            stub.Optimize(pb.OptimizeRequest(fleet=fleet_message(bad)), metadata=metadata, timeout=30)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in rich_details(err.value)["fields"]] == ["fleet.sites[0].capacity_mw"]
    with pytest.raises(PlannerError) as missing:
        client.get_plan("plan-none")
    assert missing.value.code is grpc.StatusCode.NOT_FOUND


def test_streams_are_forwarded_both_ways_and_health_needs_no_token(server, client, tmp_path):
    from optimizer.fleet import parse_fleet
    from optimizer.scenario_io import save_scenarios
    from tests.fleets import scenarios_for

    fleet = parse_fleet(small_fleet_data(scenarios=4))
    path = tmp_path / "paths.npz"
    save_scenarios(path, scenarios_for(fleet))
    uploaded = client.upload_scenarios(path, name="via front")  # client streaming
    assert uploaded.scenarios == 4 and uploaded.size_bytes == path.stat().st_size
    job = client.submit(fleet, scenario_set_id=uploaded.scenario_set_id)
    states = [j.state for j in client.watch(job.job_id)]  # server streaming
    final, reply = client.get(job.job_id)
    assert states[-1] == final.state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED
    assert reply.plan.scenarios["source"] == "file" and reply.plan.scenarios["count"] == 4
    with grpc.insecure_channel(server.target) as public:
        reply = health_pb2_grpc.HealthStub(public).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_deleted_plan_stops_dispatching_at_the_front(client):
    plan_id = client.optimize(small_fleet_data(scenarios=4)).plan_id
    assert client.dispatch(plan_id, {"spot": 30.0}, hashprice_usd_per_ph_day=35).plan_id == plan_id  # cached now
    client.delete_plan(plan_id)
    deadline = time.monotonic() + 5 * RECHECK_S + 5
    while True:
        try:
            client.dispatch(plan_id, {"spot": 30.0}, hashprice_usd_per_ph_day=35)
        except PlannerError as err:
            assert err.code is grpc.StatusCode.NOT_FOUND
            break
        assert time.monotonic() < deadline, "the front still dispatches a deleted plan"
        time.sleep(0.2)


def test_a_dead_front_is_replaced_on_the_same_port(server, client, plan_id):
    (front,) = server.server.fronts.pids()
    os.kill(front, signal.SIGKILL)
    deadline = time.monotonic() + 10 * HEALTH_POLL_S + 60  # the next check, then a new front's start-up
    while server.server.fronts.pids() == [front] or not _answers(client, plan_id):
        assert time.monotonic() < deadline, "no front came back"
        time.sleep(0.5)
    assert server.server.fronts.pids() != [front]


def _answers(client: PlannerClient, plan_id: str) -> bool:
    try:
        return client.dispatch(plan_id, {"spot": 30.0}, hashprice_usd_per_ph_day=35).plan_id == plan_id
    except PlannerError:
        return False
