"""Every RPC and error path of a real server on a loopback port, through the generated stubs."""

import base64
import time

import grpc
import pytest
import ray
import yaml
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from optimizer.allocation import Mode
from optimizer.dispatch import build_dispatch_table, decide, site_conditions, site_prices_usd_per_mwh
from optimizer.fleet import parse_fleet
from optimizer.rack_ranges import expand
from optimizer.robustness import RobustnessSettings
from protos.hashpivot.v1 import jobs_pb2, plan_pb2
from protos.hashpivot.v1 import planner_service_pb2 as pb
from services import convert
from services.client import PlannerError
from services.dispatcher import SERVER_TIME_METADATA
from services.servicer import SERVICE_NAME
from solvers.planner import plan_fleet
from tests.conftest import wait_for_free_cpus
from tests.fleets import EXAMPLES, events_fleet_data, small_fleet_data
from tests.services.grpc_harness import ServerThread, fleet_message, hard_fleet_data, rich_details
from tests.services.test_contract import power_plan_with_robustness

FINAL = {jobs_pb2.PLAN_JOB_STATE_SUCCEEDED, jobs_pb2.PLAN_JOB_STATE_FAILED, jobs_pb2.PLAN_JOB_STATE_CANCELLED}


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    with ServerThread(tmp_path_factory.mktemp("grpc") / "hashpivot.sqlite") as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(server):
    channel = server.channel()
    yield channel
    channel.close()


@pytest.fixture(scope="module")
def stub(server, channel):
    return server.stub(channel)


def optimize(stub, data: dict, timeout: float = 120, **kwargs) -> plan_pb2.Plan:
    return stub.Optimize(pb.OptimizeRequest(fleet=fleet_message(data), **kwargs), timeout=timeout).plan


def call_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    return err.value


def watch_until_final(stub, job_id: str, timeout: float = 120) -> list[jobs_pb2.PlanJob]:
    return [e.job for e in stub.WatchPlanJob(pb.WatchPlanJobRequest(job_id=job_id), timeout=timeout)]


# health, reflection -----------------------------------------------------------------------


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
    ]
    listed, described = list(reflection.ServerReflectionInfo(iter(requests)))
    names = {s.name for s in listed.list_services_response.service}
    assert {"hashpivot.v1.PlannerService", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # what grpcurl reads to build requests


# Optimize ---------------------------------------------------------------------------------


def test_optimize_returns_the_plan_the_planner_makes(stub, server):
    data = small_fleet_data()
    plan = optimize(stub, data)
    fleet = parse_fleet(data)
    local, _ = plan_fleet(fleet)  # the same pipeline in process, without the service in between
    assert plan.plan_id.startswith("plan-")
    assert plan.solver.status == plan_pb2.SOLVE_STATUS_OPTIMAL
    assert plan.solver.objective_usd == pytest.approx(local.solver.objective_usd, rel=1e-9)
    assert [(g.racks_mine, g.racks_ai, g.racks_idle) for g in plan.allocation] == [
        (g.racks_mine, g.racks_ai, g.racks_idle) for g in local.allocation
    ]
    assert [g.racks_mine + g.racks_ai + g.racks_idle for g in plan.allocation] == [g.racks for g in fleet.rack_groups]
    assert plan.profit.mean_usd == pytest.approx(local.profit["mean_usd"], rel=1e-9)
    assert plan.create_time.seconds > 0
    stored = stub.GetPlan(pb.GetPlanRequest(plan_id=plan.plan_id)).plan
    assert stored == plan


def test_invalid_fleet_names_the_field(stub):
    data = small_fleet_data()
    data["sites"][1]["capacity_mw"] = 0
    error = call_error(optimize, stub, data)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    fields = rich_details(error)["fields"]
    assert [f for f, _ in fields] == ["fleet.sites[1].capacity_mw"]
    assert "greater than 0" in fields[0][1]

    data = small_fleet_data()
    data["sites"][0]["market"] = "nowhere"
    error = call_error(optimize, stub, data)
    assert [f for f, _ in rich_details(error)["fields"]] == ["fleet.sites[0].market"]

    error = call_error(stub.Optimize, pb.OptimizeRequest(), timeout=30)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert rich_details(error)["fields"] == [("fleet", "required")]


def test_unknown_commitment_is_invalid(stub):
    request = pb.OptimizeRequest(
        fleet=fleet_message(small_fleet_data()), commitments=pb.Commitments(accept_offers=["colo", "nope"])
    )
    error = call_error(stub.Optimize, request, timeout=30)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in rich_details(error)["fields"]] == ["commitments.accept_offers[1]"]


def _budget_too_small(data):  # converting "spot" costs at least its 20,000 USD fixed capex
    data["capital_budget_usd"] = 10_000


def _ai_block_too_big(data):  # spot's convertible racks hold 0.197 MW, the block needs 0.25 MW
    data["sites"][1]["capacity_mw"] = 0.5
    data["sites"][1]["ai"].update(min_mw=0.25, max_mw=0.3)
    data["capital_budget_usd"] = None


def _offer_above_conversion(data):  # the offer needs >= 0.2 MW, at most 0.15 MW can convert
    data["lease_offers"][0].update(min_mw=0.2, max_mw=0.3)


def _offer_above_capacity(data):  # 0.1 MW leased x PUE 1.3 = 0.13 MW at a 0.12 MW site
    data["sites"][1]["capacity_mw"] = 0.12
    data["lease_offers"][0]["min_mw"] = 0.1


@pytest.mark.parametrize(
    "change, commitments, subjects, words",
    [
        (_budget_too_small, {"convert_sites": ["spot"]}, ["capital_budget", "convert[spot]"], "capital budget"),
        (_ai_block_too_big, {"convert_sites": ["spot"]}, ["ai_min_block[spot,0]", "convert[spot]"], "AI minimum block"),
        (_offer_above_conversion, {"accept_offers": ["colo"]}, ["offer_min[colo]", "accept[colo]"], "offer minimum"),
        (
            _offer_above_capacity,
            {"accept_offers": ["colo"]},
            ["offer_min[colo]", "site_capacity[spot,1]", "accept[colo]"],
            "site capacity",
        ),
    ],
)
def test_infeasible_plan_names_the_constraint(stub, change, commitments, subjects, words):
    data = small_fleet_data()
    change(data)
    request = pb.OptimizeRequest(fleet=fleet_message(data), commitments=pb.Commitments(**commitments))
    error = call_error(stub.Optimize, request, timeout=60)
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert words in error.details()
    assert [s for s, _ in rich_details(error)["constraints"]] == subjects


def test_deadline_returns_the_best_plan_with_its_gap(stub):
    deadline_s = 4.0
    start = time.monotonic()
    plan = optimize(stub, hard_fleet_data(time_limit_s=60), timeout=deadline_s)
    elapsed_s = time.monotonic() - start
    assert elapsed_s < deadline_s
    assert plan.solver.status == plan_pb2.SOLVE_STATUS_TIME_LIMIT
    assert plan.solver.wall_s < deadline_s
    assert 0 < plan.solver.mip_gap < 1
    assert plan.solver.bound_usd > plan.solver.objective_usd  # maximizing: the bound lies above the plan
    assert plan.solver.mip_gap == pytest.approx(
        (plan.solver.bound_usd - plan.solver.objective_usd) / abs(plan.solver.objective_usd)
    )


def test_deadline_too_short_to_solve(stub):
    error = call_error(optimize, stub, small_fleet_data(), timeout=0.2)
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED


# Jobs -------------------------------------------------------------------------------------


def test_job_streams_progress_and_stores_its_plan(stub):
    data = small_fleet_data(scenarios=12)  # batch_size 4: three scenario batches, three progress steps
    job = stub.SubmitPlanJob(pb.SubmitPlanJobRequest(fleet=fleet_message(data)), timeout=30).job
    assert job.job_id.startswith("job-") and job.fleet_name == "small"
    events = watch_until_final(stub, job.job_id)
    assert events[-1].state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED
    scenario_counts = [e.progress.scenarios_done for e in events if e.progress.stage == "scenarios"]
    assert scenario_counts == sorted(scenario_counts) and scenario_counts[-1] == 12
    assert {e.progress.scenarios_total for e in events if e.progress.stage == "scenarios"} == {12}
    stages = [e.progress.stage for e in events]
    assert stages.index("scenarios") < stages.index("solve") < stages.index("done")
    final = stub.GetPlanJob(pb.GetPlanJobRequest(job_id=job.job_id), timeout=30)
    assert final.job.plan_id == events[-1].plan_id == final.plan.plan_id
    assert final.job.attempts == 1 and final.job.end_time.seconds >= final.job.start_time.seconds
    direct = optimize(stub, data)  # deterministic: the same fleet planned unary gives the same plan
    assert final.plan.solver.objective_usd == pytest.approx(direct.solver.objective_usd, rel=1e-9)
    # watching a finished job: one event, then the stream ends
    assert [e.state for e in watch_until_final(stub, job.job_id)] == [jobs_pb2.PLAN_JOB_STATE_SUCCEEDED]


def test_job_streams_the_decomposition_bounds(stub):
    """With solver.method decomposition, WatchPlanJob streams the per-iteration lower and upper bounds
    (incumbent and bound): the lower never falls, the upper never rises, and the last pair is the plan's."""
    data = events_fleet_data(days=3, scenarios=12)
    data["risk"] = {"objective": "cvar", "alpha": 0.8, "weight": 0.5}
    data["solver"] = {"method": "decomposition", "mip_rel_gap": 1e-9, "time_limit_s": 60}
    job = stub.SubmitPlanJob(pb.SubmitPlanJobRequest(fleet=fleet_message(data)), timeout=30).job
    events = watch_until_final(stub, job.job_id)
    assert events[-1].state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED
    bounds = [
        (e.progress.incumbent_usd, e.progress.bound_usd, e.progress.mip_gap)
        for e in events
        if e.progress.HasField("incumbent_usd") and e.progress.HasField("bound_usd")
    ]
    assert bounds, "no decomposition bounds streamed"
    lower, upper, gap = (list(column) for column in zip(*bounds, strict=True))
    assert lower == sorted(lower) and upper == sorted(upper, reverse=True)
    assert all(lo <= up + 1e-9 * abs(up) for lo, up in zip(lower, upper, strict=True))
    solver = stub.GetPlanJob(pb.GetPlanJobRequest(job_id=job.job_id), timeout=30).plan.solver  # plan.json's solver
    assert solver.status == plan_pb2.SOLVE_STATUS_OPTIMAL and solver.mip_gap <= 1e-9
    assert (lower[-1], upper[-1]) == pytest.approx((solver.objective_usd, solver.bound_usd), rel=1e-12)
    assert gap[-1] == pytest.approx(solver.mip_gap, abs=1e-12)


def test_submit_is_idempotent_per_request_id(stub):
    request = pb.SubmitPlanJobRequest(fleet=fleet_message(small_fleet_data()), request_id="quarterly-2026Q4")
    first = stub.SubmitPlanJob(request, timeout=30).job
    again = stub.SubmitPlanJob(request, timeout=30).job
    assert again.job_id == first.job_id
    watch_until_final(stub, first.job_id)


def test_mip_progress_then_cancel_stops_highs_and_ray(stub):
    request = pb.SubmitPlanJobRequest(fleet=fleet_message(hard_fleet_data(time_limit_s=120)))
    job = stub.SubmitPlanJob(request, timeout=30).job
    solving = None
    for event in stub.WatchPlanJob(pb.WatchPlanJobRequest(job_id=job.job_id), timeout=120):
        progress = event.job.progress
        if progress.stage == "solve" and progress.HasField("incumbent_usd") and progress.HasField("bound_usd"):
            solving = event.job
            break
    assert solving is not None, "no MIP incumbent and bound reported"
    assert solving.state == jobs_pb2.PLAN_JOB_STATE_RUNNING
    assert solving.progress.bound_usd >= solving.progress.incumbent_usd
    assert solving.progress.scenarios_done == solving.progress.scenarios_total == 40

    start = time.monotonic()
    cancelled = stub.CancelPlanJob(pb.CancelPlanJobRequest(job_id=job.job_id), timeout=60).job
    assert cancelled.state == jobs_pb2.PLAN_JOB_STATE_CANCELLED and cancelled.cancel_requested
    assert time.monotonic() - start < 10  # the solve had up to 120 s left
    assert wait_for_free_cpus()  # the Ray worker running HiGHS is gone: the session's CPUs are free again
    got = stub.GetPlanJob(pb.GetPlanJobRequest(job_id=job.job_id), timeout=30)
    assert got.job.state == jobs_pb2.PLAN_JOB_STATE_CANCELLED and not got.HasField("plan")
    again = stub.CancelPlanJob(pb.CancelPlanJobRequest(job_id=job.job_id), timeout=30).job  # idempotent
    assert again.state == jobs_pb2.PLAN_JOB_STATE_CANCELLED


def test_abandoned_optimize_stops_its_solve(stub):
    """A client cancelling a unary call (no deadline, 120 s time limit) stops the MIP's Ray task."""
    future = stub.Optimize.future(pb.OptimizeRequest(fleet=fleet_message(hard_fleet_data(time_limit_s=120))))
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.05)  # until the server's work holds a CPU
    time.sleep(1.0)  # scenarios done, HiGHS running
    assert future.cancel()
    assert wait_for_free_cpus(), "the solve kept running after the call was cancelled"


def test_cancel_errors(stub):
    error = call_error(stub.CancelPlanJob, pb.CancelPlanJobRequest(job_id="job-nope"), timeout=30)
    assert error.code() is grpc.StatusCode.NOT_FOUND
    job = stub.SubmitPlanJob(pb.SubmitPlanJobRequest(fleet=fleet_message(small_fleet_data())), timeout=30).job
    watch_until_final(stub, job.job_id)
    error = call_error(stub.CancelPlanJob, pb.CancelPlanJobRequest(job_id=job.job_id), timeout=30)
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    for rpc, request in [
        (stub.GetPlanJob, pb.GetPlanJobRequest(job_id="job-nope")),
        (stub.GetPlan, pb.GetPlanRequest(plan_id="plan-nope")),
    ]:
        assert call_error(rpc, request, timeout=30).code() is grpc.StatusCode.NOT_FOUND
    error = call_error(lambda: list(stub.WatchPlanJob(pb.WatchPlanJobRequest(job_id="job-nope"), timeout=30)))
    assert error.code() is grpc.StatusCode.NOT_FOUND


def test_failed_job_keeps_its_error(stub):
    data = small_fleet_data()
    data["capital_budget_usd"] = 10_000
    request = pb.SubmitPlanJobRequest(fleet=fleet_message(data), commitments=pb.Commitments(convert_sites=["spot"]))
    job = stub.SubmitPlanJob(request, timeout=30).job
    final = watch_until_final(stub, job.job_id)[-1]
    assert final.state == jobs_pb2.PLAN_JOB_STATE_FAILED and not final.plan_id
    assert final.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]  # the deprecated JobError, still filled
    assert [v.subject for v in final.error.constraint_violations] == ["capital_budget", "convert[spot]"]
    # the job's error is a google.rpc.Status: what a unary call would have ended with, details included
    assert final.status.code == code_pb2.FAILED_PRECONDITION and final.status.message == final.error.message
    failure = error_details_pb2.PreconditionFailure()
    assert final.status.details[0].Unpack(failure)
    assert [(v.type, v.subject) for v in failure.violations] == [
        ("CONSTRAINT", "capital_budget"),
        ("CONSTRAINT", "convert[spot]"),
    ]
    as_raised = PlannerError.from_status(final.status)
    assert as_raised.code is grpc.StatusCode.FAILED_PRECONDITION
    assert [s for s, _ in as_raised.constraint_violations] == ["capital_budget", "convert[spot]"]
    assert [v.constraint for v in as_raised.constraints] == ["capital_budget", "commitments"]
    # a job with a bad fleet is refused at submission, not failed later
    data["sites"][0]["capacity_mw"] = -1
    error = call_error(stub.SubmitPlanJob, pb.SubmitPlanJobRequest(fleet=fleet_message(data)), timeout=30)
    assert [f for f, _ in rich_details(error)["fields"]] == ["fleet.sites[0].capacity_mw"]


def test_list_jobs_pages_and_filters(stub):
    request = pb.SubmitPlanJobRequest(fleet=fleet_message(small_fleet_data()))
    ids = [stub.SubmitPlanJob(request, timeout=30).job.job_id for _ in range(3)]
    for job_id in ids:
        watch_until_final(stub, job_id)
    seen, token, pages = [], "", 0
    while True:
        page = stub.ListPlanJobs(pb.ListPlanJobsRequest(page_size=2, page_token=token), timeout=30)
        seen += [j.job_id for j in page.jobs]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) and set(ids) <= set(seen) and pages >= 2
    assert seen[: len(ids)] == ids[::-1]  # newest first
    succeeded = stub.ListPlanJobs(pb.ListPlanJobsRequest(state=jobs_pb2.PLAN_JOB_STATE_SUCCEEDED, page_size=1000))
    assert set(ids) <= {j.job_id for j in succeeded.jobs}
    assert all(j.state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED for j in succeeded.jobs)
    assert len(stub.ListPlanJobs(pb.ListPlanJobsRequest(page_size=5000), timeout=30).jobs) >= 3  # coerced (AIP-158)
    first = stub.ListPlanJobs(pb.ListPlanJobsRequest(page_size=1), timeout=30).next_page_token
    overflow = base64.urlsafe_b64encode(b"offset:9223372036854775808").decode()
    for request, field in [
        (pb.ListPlanJobsRequest(page_token="garbage"), "page_token"),
        (pb.ListPlanJobsRequest(page_token=overflow), "page_token"),
        (pb.ListPlanJobsRequest(page_token=first, state=jobs_pb2.PLAN_JOB_STATE_FAILED), "page_token"),  # other filter
        (pb.ListPlanJobsRequest(page_size=-1), "page_size"),
        (pb.ListPlanJobsRequest(state=99), "state"),
    ]:
        error = call_error(stub.ListPlanJobs, request, timeout=30)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in rich_details(error)["fields"]] == [field]


# Evaluate ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_plan(stub):
    return optimize(stub, small_fleet_data())


def test_evaluate_the_plan_on_its_own_scenarios_reproduces_its_profit(stub, small_plan):
    response = stub.Evaluate(pb.EvaluateRequest(plan_id=small_plan.plan_id, include_scenario_profits=True), timeout=60)
    assert response.scenario_count == 6 and len(response.scenario_profits_usd) == 6
    for field in ("mean_usd", "std_usd", "p5_usd", "cvar_usd", "worst_usd"):
        assert getattr(response.profit, field) == pytest.approx(getattr(small_plan.profit, field), rel=1e-9, abs=1e-6)
    assert response.risk_objective_usd == pytest.approx(small_plan.solver.objective_usd, rel=1e-9)
    assert sum(s.expected_profit_usd for s in response.sites) == pytest.approx(small_plan.profit.mean_usd, rel=1e-9)
    out_of_sample = stub.Evaluate(
        pb.EvaluateRequest(plan_id=small_plan.plan_id, scenarios=pb.ScenarioSelection(stream=1)), timeout=60
    )
    assert out_of_sample.profit.mean_usd != pytest.approx(response.profit.mean_usd, rel=1e-9)


def test_evaluate_a_what_if_allocation_by_hand(stub):
    # All racks idle: profit is minus the idle cost in every scenario. Only s-new has one:
    # 1 USD per rack-day x 3 racks x 3 days = 9 USD.
    data = small_fleet_data()
    allocation = pb.Allocation(
        racks=[pb.GroupCounts(group=g["id"], racks_idle=g["racks"]) for g in data["rack_groups"]]
    )
    request = pb.EvaluateRequest(
        fleet=fleet_message(data),
        allocation=allocation,
        scenarios=pb.ScenarioSelection(count=3, seed=99),
        include_scenario_profits=True,
    )
    response = stub.Evaluate(request, timeout=60)
    assert list(response.scenario_profits_usd) == [-9.0, -9.0, -9.0]
    assert response.profit.mean_usd == -9.0 and response.profit.std_usd == 0.0 and response.scenario_count == 3


def test_evaluate_errors(stub, small_plan):
    data = small_fleet_data()
    data["sites"][1]["capacity_mw"] = 0.1  # all racks mining at "spot" would draw ~0.21 MW
    all_mining = pb.Allocation(
        racks=[pb.GroupCounts(group=g["id"], racks_mine=g["racks"]) for g in data["rack_groups"]]
    )
    error = call_error(stub.Evaluate, pb.EvaluateRequest(fleet=fleet_message(data), allocation=all_mining), timeout=60)
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert [s for s, _ in rich_details(error)["constraints"]] == ["site_capacity[spot]"]
    # the same violation as a record with its amounts: the site's mining load at the meter against its capacity
    (record,) = PlannerError.from_rpc_error(error).constraints
    fleet = parse_fleet(data)
    spot = fleet.site("spot")
    load_kw = sum(g.racks * fleet.rack_power_kw(g) for g in fleet.rack_groups if g.site == "spot") * spot.pue_mining
    assert (record.constraint, record.subject, record.field) == (
        "site_capacity",
        "site_capacity[spot]",
        "sites.spot.capacity_mw",
    )
    assert record.needed == pytest.approx(load_kw / 1000) and record.limit == 0.1 and record.unit == "MW"

    short = pb.Allocation(racks=[pb.GroupCounts(group=g["id"], racks_mine=1) for g in data["rack_groups"]])
    error = call_error(stub.Evaluate, pb.EvaluateRequest(fleet=fleet_message(data), allocation=short), timeout=60)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in rich_details(error)["fields"]] == [f"allocation.racks[{i}]" for i in range(3)]

    error = call_error(stub.Evaluate, pb.EvaluateRequest(), timeout=30)
    assert [f for f, _ in rich_details(error)["fields"]] == ["fleet"]
    error = call_error(stub.Evaluate, pb.EvaluateRequest(plan_id="plan-nope"), timeout=30)
    assert error.code() is grpc.StatusCode.NOT_FOUND
    request = pb.EvaluateRequest(plan_id=small_plan.plan_id, scenarios=pb.ScenarioSelection(count=0))
    error = call_error(stub.Evaluate, request, timeout=30)
    assert [f for f, _ in rich_details(error)["fields"]] == ["scenarios.count"]


# Dispatch ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_plan(stub):
    data = yaml.safe_load((EXAMPLES / "tiny.yaml").read_text())
    data["horizon"]["days"] = 7
    data["scenarios"] = {"count": 8, "seed": 7, "batch_size": 4}
    plan = optimize(stub, data)
    return data, plan


def dispatch_request(plan_id: str, prices: dict, **kwargs) -> pb.DispatchRequest:
    return pb.DispatchRequest(plan_id=plan_id, power_price_usd_per_mwh_by_site=prices, **kwargs)


def expected_margin_usd_per_hour(data: dict, group_id: str, price: float, hashprice: float) -> float:
    group = next(g for g in data["rack_groups"] if g["id"] == group_id)
    machine = next(m for m in data["machines"] if m["id"] == group["machine"])
    site = next(s for s in data["sites"] if s["id"] == group["site"])
    rack_ths = group["machines_per_rack"] * machine["hashrate_ths"]
    rack_mw = rack_ths * machine["efficiency_j_per_th"] / 1e6  # TH/s x J/TH = W
    revenue = rack_ths * hashprice / 1000 / 24 * (1 - data.get("pool_fee_fraction", 0.02))
    return revenue - rack_mw * site.get("pue_mining", 1.05) * price


def test_dispatch_decides_by_hand_arithmetic(stub, tiny_plan):
    data, plan = tiny_plan
    mining = {g.group: g for g in plan.allocation if g.racks_mine > 0}
    assert {"hydro-s19", "texas-s21"} <= set(mining)  # a fixed-price site and an index site both mine
    for texas_price, hashprice in [(30.0, 35.0), (120.0, 35.0), (30.0, 20.0)]:
        request = dispatch_request(plan.plan_id, {"texas": texas_price}, hashprice_usd_per_ph_day=hashprice)
        response, call = stub.Dispatch.with_call(request, timeout=10)
        assert [g.group for g in response.groups] == [g.group for g in plan.allocation if g.racks_mine > 0]
        for g in response.groups:
            price = texas_price if g.site == "texas" else 32.0  # hydro: its fixed contract price
            margin = expected_margin_usd_per_hour(data, g.group, price, hashprice)
            assert g.margin_usd_per_rack_hour == pytest.approx(margin)
            assert g.action == (pb.RACK_ACTION_RUN if margin > 0 else pb.RACK_ACTION_CURTAIL)
            assert g.racks == mining[g.group].racks_mine and g.power_price_usd_per_mwh == price
        assert response.racks_run + response.racks_curtailed == sum(g.racks_mine for g in mining.values())
        server_us = int(dict(call.trailing_metadata())[SERVER_TIME_METADATA])
        assert 0 < server_us < 10_000
    # 120 $/MWh is above the S21's breakeven (~78 at 35 $/PH/day): Texas curtails, the hydro site runs.
    request = dispatch_request(plan.plan_id, {"texas": 120.0}, hashprice_usd_per_ph_day=35.0)
    actions = {g.group: g.action for g in stub.Dispatch(request, timeout=10).groups}
    assert actions["texas-s21"] == pb.RACK_ACTION_CURTAIL and actions["hydro-s19"] == pb.RACK_ACTION_RUN


def test_dispatch_from_network_figures_and_rack_ids(stub, tiny_plan):
    data, plan = tiny_plan
    request = pb.DispatchRequest(
        plan_id=plan.plan_id,
        power_price_usd_per_mwh_by_site={"texas": 40.0},
        network=pb.NetworkState(btc_price_usd=67_800, network_hashrate_ehs=900),
        include_rack_ids=True,
    )
    response = stub.Dispatch(request, timeout=10)
    assert response.hashprice_usd_per_ph_day == pytest.approx(144 * (3.125 + 0.025) * 67_800 / 900_000)
    ids = {g.group: g.rack_ids(Mode.MINE) for g in convert.plan_from_message(plan).allocation}
    assert all(expand(convert.rack_ranges_from_message(g.rack_ranges)) == ids[g.group] for g in response.groups)


def test_dispatch_errors(stub, tiny_plan):
    _, plan = tiny_plan
    plan_id = plan.plan_id
    cases = [
        (dispatch_request(plan_id, {}, hashprice_usd_per_ph_day=35), "power_price_usd_per_mwh_by_site[texas]"),
        (dispatch_request(plan_id, {"texas": 40}), "hashprice_source"),
        (
            dispatch_request(plan_id, {"texas": 40, "ohio": 1}, hashprice_usd_per_ph_day=35),
            "power_price_usd_per_mwh_by_site[ohio]",
        ),
        (
            dispatch_request(plan_id, {"texas": 40}, network=pb.NetworkState(btc_price_usd=1, network_hashrate_ehs=0)),
            "network.network_hashrate_ehs",
        ),
    ]
    for request, field in cases:
        error = call_error(stub.Dispatch, request, timeout=10)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in rich_details(error)["fields"]] == [field]
    error = call_error(stub.Dispatch, pb.DispatchRequest(plan_id="plan-nope", hashprice_usd_per_ph_day=35), timeout=10)
    assert error.code() is grpc.StatusCode.NOT_FOUND


def test_plan_conversion_back_to_the_domain(stub, tiny_plan):
    """A Plan message read back is a PlanResult that the CLI tables accept."""
    _, plan = tiny_plan
    result = convert.plan_from_message(plan)
    assert result.fleet == "tiny" and result.solver.status == "optimal"
    assert sum(g.racks_mine for g in result.allocation) == sum(g.racks_mine for g in plan.allocation)


# Power markets and robustness -------------------------------------------------------------

ROBUSTNESS = plan_pb2.RobustnessSettings(
    oos_scenarios=12, replications=2, wait_and_see_scenarios=4, sensitivity_scenarios=4, bootstrap_resamples=100
)


@pytest.fixture(scope="module")
def power_plan(stub):
    """The fleet of test_contract.power_plan_with_robustness, planned and assessed by the server."""
    data = events_fleet_data(days=2, scenarios=6, events_per_year=60)
    plan = optimize(stub, data, robustness=ROBUSTNESS)
    return data, plan


def without_timings(report):
    return report.model_copy(update={"timings_s": {}})


def test_optimize_with_robustness_returns_the_report(stub, power_plan):
    data, plan = power_plan
    assert plan.HasField("robustness")
    report = convert.plan_from_message(plan).robustness
    assert [p.plan for p in report.plans] == ["stochastic", "mean_value", "calculator", "all_mining"]
    assert report.out_of_sample_scenarios == 12 and report.optimality_gap.replications == 2
    assert report.wait_and_see.scenarios == 4 and report.sensitivity.scenarios == 4
    # the same assessment as in process: seeded scenarios, exact re-solves
    fleet, local = power_plan_with_robustness()
    assert fleet == parse_fleet(data)
    assert without_timings(report) == without_timings(local.robustness)
    assert stub.GetPlan(pb.GetPlanRequest(plan_id=plan.plan_id), timeout=30).plan == plan  # stored with it
    # Evaluate on the plan's own scenarios reproduces its profit: the DR commitment travels with the allocation
    assert sum(s.dr_commitment_mw for s in plan.sites) > 0
    response = stub.Evaluate(pb.EvaluateRequest(plan_id=plan.plan_id), timeout=60)
    assert response.profit.mean_usd == pytest.approx(plan.profit.mean_usd, rel=1e-9)
    assert sum(s.demand_response_credit_usd for s in response.sites) == pytest.approx(
        sum(s.demand_response_credit_usd for s in plan.sites), rel=1e-9
    )


def test_bad_robustness_settings_name_the_field(stub):
    request = pb.OptimizeRequest(
        fleet=fleet_message(small_fleet_data()), robustness=plan_pb2.RobustnessSettings(oos_scenarios=1)
    )
    error = call_error(stub.Optimize, request, timeout=30)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in rich_details(error)["fields"]] == ["robustness.oos_scenarios"]
    request = pb.SubmitPlanJobRequest(
        fleet=fleet_message(small_fleet_data()), robustness=plan_pb2.RobustnessSettings(replications=-1)
    )
    error = call_error(stub.SubmitPlanJob, request, timeout=30)
    assert [f for f, _ in rich_details(error)["fields"]] == ["robustness.replications"]


ROBUSTNESS_STAGES = {"out-of-sample", "wait-and-see", "sensitivity", "replications"}


def test_job_with_robustness_shows_its_stages_and_stores_the_report(stub):
    settings = plan_pb2.RobustnessSettings(oos_scenarios=40, replications=2, wait_and_see_scenarios=20)
    request = pb.SubmitPlanJobRequest(fleet=fleet_message(small_fleet_data(scenarios=12)), robustness=settings)
    job = stub.SubmitPlanJob(request, timeout=30).job
    resolved = RobustnessSettings(oos_scenarios=40, replications=2, wait_and_see_scenarios=20)
    assert convert.robustness_settings_from_message(job.robustness) == resolved  # what it will do, defaults filled
    events = watch_until_final(stub, job.job_id)
    assert events[-1].state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED
    stages = [e.progress.stage for e in events]
    assert stages.index("solve") < stages.index("robustness") < stages.index("done")
    seen = set(stages[stages.index("robustness") : stages.index("done")])
    assert seen & ROBUSTNESS_STAGES, stages  # the assessment's own stages come through the relay
    final = stub.GetPlanJob(pb.GetPlanJobRequest(job_id=job.job_id), timeout=30)
    assert final.job.robustness == job.robustness
    report = convert.plan_from_message(final.plan).robustness
    assert report.out_of_sample_scenarios == 40 and report.wait_and_see.scenarios == 20
    assert report.plan("stochastic").racks_mine == sum(g.racks_mine for g in final.plan.allocation)


def _robustness_running(stub, job_id: str) -> jobs_pb2.PlanJob | None:
    for event in stub.WatchPlanJob(pb.WatchPlanJobRequest(job_id=job_id), timeout=120):
        if event.job.progress.stage in ROBUSTNESS_STAGES | {"robustness"}:
            return event.job
        if event.job.state in FINAL:
            return None
    return None


def test_cancel_stops_the_robustness_assessment_and_its_ray_tasks(stub):
    """Plan a hard fleet (2 s time limit), then assess it: replications and sensitivity re-solves would run for
    minutes. A cancel kills the assessment task and every task it submitted."""
    settings = plan_pb2.RobustnessSettings(oos_scenarios=40, replications=3, wait_and_see_scenarios=0)
    request = pb.SubmitPlanJobRequest(fleet=fleet_message(hard_fleet_data(time_limit_s=2)), robustness=settings)
    job = stub.SubmitPlanJob(request, timeout=30).job
    running = _robustness_running(stub, job.job_id)
    assert running is not None and running.state == jobs_pb2.PLAN_JOB_STATE_RUNNING
    time.sleep(1.5)  # replications and out-of-sample batches hold the CPUs
    assert ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]
    start = time.monotonic()
    cancelled = stub.CancelPlanJob(pb.CancelPlanJobRequest(job_id=job.job_id), timeout=60).job
    assert cancelled.state == jobs_pb2.PLAN_JOB_STATE_CANCELLED
    assert time.monotonic() - start < 10
    assert wait_for_free_cpus(), "robustness tasks kept running after the cancel"
    got = stub.GetPlanJob(pb.GetPlanJobRequest(job_id=job.job_id), timeout=30)
    assert got.job.state == jobs_pb2.PLAN_JOB_STATE_CANCELLED and not got.HasField("plan")


def test_deadline_during_robustness_stops_it(stub):
    request = pb.OptimizeRequest(
        fleet=fleet_message(hard_fleet_data(time_limit_s=1)),
        robustness=plan_pb2.RobustnessSettings(oos_scenarios=40, replications=3, wait_and_see_scenarios=0),
    )
    start = time.monotonic()
    error = call_error(stub.Optimize, request, timeout=8)
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 9
    assert wait_for_free_cpus(), "robustness tasks kept running after the deadline"


def _in_process(data: dict, plan: plan_pb2.Plan, request: pb.DispatchRequest):
    fleet = parse_fleet(data)
    result = convert.plan_from_message(plan)
    racks = {g.group: g.racks_mine for g in result.allocation}
    table = build_dispatch_table(fleet, racks, allocation=convert.plan_allocation(result))
    prices = site_prices_usd_per_mwh(
        table, request.power_price_usd_per_mwh_by_site, request.spot_price_usd_per_mwh_by_market
    )
    conditions = site_conditions(table, request.available_mw_by_site, request.dr_call_sites)
    return table, decide(table, prices, request.hashprice_usd_per_ph_day, conditions)


def test_dispatch_with_events_calls_and_market_spot(stub, power_plan):
    data, plan = power_plan
    leased_it_mw = {s.site: s.leased_mw for s in plan.ai_sites}
    mining = {g.group: g.racks_mine for g in plan.allocation if g.racks_mine}
    assert {g.site for g in plan.allocation if g.racks_mine} == {"fixed", "spot"}
    requests = [
        pb.DispatchRequest(plan_id=plan.plan_id, spot_price_usd_per_mwh_by_market={"ercot": 35.0}),
        pb.DispatchRequest(
            plan_id=plan.plan_id,
            spot_price_usd_per_mwh_by_market={"ercot": 35.0},
            available_mw_by_site={"spot": 0.0},
        ),
        pb.DispatchRequest(
            plan_id=plan.plan_id,
            power_price_usd_per_mwh_by_site={"spot": 900.0},
            available_mw_by_site={"fixed": 0.4, "spot": 0.6 * 3.0},
            dr_call_sites=["fixed", "spot"],
        ),
    ]
    for request in requests:
        request.hashprice_usd_per_ph_day = 45.0
        response = stub.Dispatch(request, timeout=10)
        table, expected = _in_process(data, plan, request)
        assert [g.group for g in response.groups] == list(table.group_ids)
        assert [g.racks_run for g in response.groups] == expected.racks_run.tolist()
        assert [g.racks for g in response.groups] == [mining[g] for g in table.group_ids]
        for g, racks_run in zip(response.groups, expected.racks_run.tolist(), strict=True):
            action = pb.RACK_ACTION_RUN if racks_run == g.racks else pb.RACK_ACTION_CURTAIL
            assert g.action == (action if racks_run in (0, g.racks) else pb.RACK_ACTION_RUN_PARTIAL)
            assert g.run_mw == pytest.approx(g.mw * racks_run / g.racks)
        assert response.racks_run == sum(expected.racks_run.tolist())
        assert response.run_mw + response.curtailed_mw == pytest.approx(sum(g.mw for g in response.groups))
        assert [s.site for s in response.sites] == [s.site for s in expected.sites]
        for got, want in zip(response.sites, expected.sites, strict=True):
            assert got.run_mw == pytest.approx(want.run_mw) and got.shed_ai_mw == pytest.approx(want.shed_ai_mw)
            assert got.HasField("available_mw") == (want.available_mw is not None)
    # no power at "spot": nothing mines there and its whole leased AI load is shed
    blackout = stub.Dispatch(requests[1], timeout=10)
    assert all(g.racks_run == 0 and g.action == pb.RACK_ACTION_CURTAIL for g in blackout.groups if g.site == "spot")
    [spot] = blackout.sites
    assert spot.available_mw == 0.0 and spot.shed_ai_mw == pytest.approx(leased_it_mw["spot"])
    # take-or-pay: the marginal price is spot minus the 2 $/MWh resale fee
    prices = {g.site: g.power_price_usd_per_mwh for g in blackout.groups}
    assert prices["spot"] == pytest.approx(33.0) and prices["fixed"] == 44.0


def test_dispatch_condition_errors(stub, power_plan):
    _, plan = power_plan
    base = {"plan_id": plan.plan_id, "hashprice_usd_per_ph_day": 40.0, "power_price_usd_per_mwh_by_site": {"spot": 30}}
    cases = [
        (pb.DispatchRequest(**base, available_mw_by_site={"mars": 1.0}), "available_mw_by_site[mars]"),
        (pb.DispatchRequest(**base, available_mw_by_site={"spot": -0.5}), "available_mw_by_site[spot]"),
        (pb.DispatchRequest(**base, dr_call_sites=["spot", "mars"]), "dr_call_sites[1]"),
        (
            pb.DispatchRequest(**base, spot_price_usd_per_mwh_by_market={"pjm": 30}),
            "spot_price_usd_per_mwh_by_market[pjm]",
        ),
        (
            pb.DispatchRequest(plan_id=plan.plan_id, hashprice_usd_per_ph_day=40.0),
            "power_price_usd_per_mwh_by_site[spot]",
        ),
    ]
    for request, field in cases:
        error = call_error(stub.Dispatch, request, timeout=10)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in rich_details(error)["fields"]] == [field]


def test_a_started_server_has_frozen_its_heap_out_of_the_gc(server):
    """A full collection then scans only what was made since start-up, not Ray's and Pyomo's objects."""
    import gc

    from services.serving import GC_GEN0_THRESHOLD

    assert gc.get_freeze_count() > 10_000  # the modules and objects of Ray, Pyomo, grpc at least
    assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
