"""A restart loses no submitted job and no finished result: stop a server, start another on its database."""

import sqlite3

import grpc
import pytest

from optimizer.fleet import parse_fleet
from optimizer.robustness import RobustnessSettings
from protos.hashpivot.v1 import jobs_pb2, plan_pb2
from protos.hashpivot.v1 import planner_service_pb2 as pb
from services import convert
from services.store import SCHEMA_VERSION, JobState, JobStore
from solvers.diagnose import Commitments
from tests.fleets import small_fleet_data
from tests.services.grpc_harness import ServerThread, fleet_message, hard_fleet_data

QUICK_ROBUSTNESS = plan_pb2.RobustnessSettings(
    oos_scenarios=8, replications=2, wait_and_see_scenarios=2, sensitivity=False
)


def submit(stub, data: dict, robustness: plan_pb2.RobustnessSettings | None = None) -> str:
    request = pb.SubmitPlanJobRequest(fleet=fleet_message(data), robustness=robustness)
    return stub.SubmitPlanJob(request, timeout=30).job.job_id


def wait_final(stub, job_id: str) -> jobs_pb2.PlanJob:
    events = [e.job for e in stub.WatchPlanJob(pb.WatchPlanJobRequest(job_id=job_id), timeout=120)]
    return events[-1]


def test_restart_keeps_plans_and_resumes_jobs(ray_session, tmp_path):
    db = tmp_path / "hashpivot.sqlite"
    with ServerThread(db, max_concurrent_jobs=1, grace_s=2.0) as first:
        channel = first.channel()
        stub = first.stub(channel)
        optimized = stub.Optimize(pb.OptimizeRequest(fleet=fleet_message(small_fleet_data())), timeout=120).plan
        done = submit(stub, small_fleet_data())
        assert wait_final(stub, done).state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED
        done_before = stub.GetPlanJob(pb.GetPlanJobRequest(job_id=done), timeout=30)
        # A job caught mid-solve by the shutdown, and one still waiting behind it.
        running = submit(stub, hard_fleet_data(time_limit_s=3))
        for event in stub.WatchPlanJob(pb.WatchPlanJobRequest(job_id=running), timeout=120):
            if event.job.progress.stage == "solve":
                break
        queued = submit(stub, small_fleet_data(scenarios=4), QUICK_ROBUSTNESS)  # its robustness settings persist too
        assert stub.GetPlanJob(pb.GetPlanJobRequest(job_id=queued)).job.state == jobs_pb2.PLAN_JOB_STATE_QUEUED
        channel.close()

    store = JobStore(db)  # what the database holds between the two servers
    assert store.get_job(done).state is JobState.SUCCEEDED
    assert store.get_job(running).state is JobState.QUEUED  # stopped and put back, not failed or lost
    assert store.get_job(queued).state is JobState.QUEUED
    assert store.get_plan(optimized.plan_id) is not None
    store.close()

    with ServerThread(db) as second:
        channel = second.channel()
        stub = second.stub(channel)
        assert stub.GetPlan(pb.GetPlanRequest(plan_id=optimized.plan_id), timeout=30).plan == optimized
        assert stub.GetPlanJob(pb.GetPlanJobRequest(job_id=done), timeout=30) == done_before
        dispatch = stub.Dispatch(
            pb.DispatchRequest(
                plan_id=optimized.plan_id, power_price_usd_per_mwh_by_site={"spot": 30}, hashprice_usd_per_ph_day=35
            ),
            timeout=10,
        )
        assert dispatch.plan_id == optimized.plan_id
        resumed = wait_final(stub, running)
        assert resumed.state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED and resumed.attempts == 2
        plan = stub.GetPlanJob(pb.GetPlanJobRequest(job_id=running), timeout=30).plan
        assert plan.solver.status == plan_pb2.SOLVE_STATUS_TIME_LIMIT and plan.solver.mip_gap > 0  # its 3 s limit
        assert wait_final(stub, queued).state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED
        queued_plan = convert.plan_from_message(stub.GetPlanJob(pb.GetPlanJobRequest(job_id=queued), timeout=30).plan)
        assert queued_plan.robustness is not None and queued_plan.robustness.out_of_sample_scenarios == 8
        assert (
            stub.GetPlanJob(pb.GetPlanJobRequest(job_id=running), timeout=30).plan.HasField("robustness") is False
        )  # none asked
        listed = {j.job_id for j in stub.ListPlanJobs(pb.ListPlanJobsRequest(page_size=100), timeout=30).jobs}
        assert {done, running, queued} <= listed
        channel.close()


def test_draining_server_ends_watches_and_refuses_new_calls(ray_session, tmp_path):
    server = ServerThread(tmp_path / "db.sqlite").start()
    channel = server.channel()
    stub = server.stub(channel)
    job_id = submit(stub, hard_fleet_data(time_limit_s=60))
    watch = stub.WatchPlanJob(pb.WatchPlanJobRequest(job_id=job_id), timeout=60)
    for event in watch:
        if event.job.progress.stage == "solve":
            break
    server.stop(grace_s=5.0)
    with pytest.raises(grpc.RpcError) as err:  # the open stream ends at once, retryable, not at the grace deadline
        for event in watch:
            assert event.job.state != jobs_pb2.PLAN_JOB_STATE_SUCCEEDED
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as err:
        stub.ListPlanJobs(pb.ListPlanJobsRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    channel.close()


V1_JOBS = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY, request_id TEXT UNIQUE, state TEXT NOT NULL, fleet_name TEXT NOT NULL,
    fleet_json TEXT NOT NULL, commitments_json TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL,
    ended_at REAL, attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress_json TEXT, error_json TEXT, plan_id TEXT
);
"""


def test_a_version_1_database_gains_the_robustness_column_and_owners(tmp_path):
    """A database written before robustness settings existed opens, keeps its jobs, and stores new ones."""
    db = tmp_path / "v1.sqlite"
    fleet = parse_fleet(small_fleet_data())
    old = sqlite3.connect(db)
    with old:
        old.executescript(V1_JOBS)
        old.execute(
            "INSERT INTO jobs (job_id, state, fleet_name, fleet_json, commitments_json, created_at)"
            " VALUES ('job-old', 'queued', 'small', ?, '{\"accept_offers\": [], \"convert_sites\": []}', 1.0)",
            (fleet.model_dump_json(),),
        )
        old.execute("PRAGMA user_version=1")
    old.close()
    store = JobStore(db)
    assert store.get_job("job-old").robustness is None and store.get_job("job-old").fleet() == fleet
    settings = RobustnessSettings(oos_scenarios=30, sensitivity=False)
    job, created = store.create_job(fleet, Commitments(), "with-robustness", settings)
    assert created and job.robustness == settings
    store.close()
    reopened = JobStore(db)
    assert reopened.get_job(job.job_id).robustness == settings
    assert reopened._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert reopened.get_job("job-old").scenario_set_id == ""  # version 4 added the column
    # Jobs from before owners existed belong to no tenant: only an admin (owner=None) sees them.
    assert reopened.get_job("job-old", owner=None) is not None and reopened.get_job("job-old", owner="alice") is None
    reopened.close()
