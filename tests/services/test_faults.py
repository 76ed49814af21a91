"""A bad day in operations: killed servers, broken and full disks, oversized and poison requests (issue 12)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from optimizer.fleet import parse_fleet
from protos.hashpivot.v1 import jobs_pb2
from protos.hashpivot.v1 import planner_service_pb2 as pb
from services.admission import Limits
from services.errors import StoreError, to_service_error
from services.server import ServerConfig
from services.store import JobState, JobStore
from solvers.diagnose import Commitments
from solvers.highs import InfeasiblePlanError, NoSolutionInTimeError, SolveError
from solvers.runs import ProgressSnapshot, RunDeadlineError
from tests.conftest import ROOT, small_fleet_data
from tests.services.grpc_harness import ServerThread, fleet_message, hard_fleet_data, rich_details

HASHPIVOT = str(Path(sys.executable).parent / "hashpivot")


def error_of(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    return err.value


def wait_for(predicate, timeout_s: float = 30.0, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"not true within {timeout_s} s")


def health_status(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


# start-up --------------------------------------------------------------------------------------


def serve_once(db: Path, *extra: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HASHPIVOT, "serve", "--insecure", "--port", "0", "--db", str(db), *extra],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
    )


def test_a_garbage_database_fails_start_up_in_one_line_naming_it(tmp_path):
    db = tmp_path / "garbage.sqlite"
    db.write_bytes(os.urandom(64 * 1024))
    started = time.monotonic()
    result = serve_once(db)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(db) in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert time.monotonic() - started < 30  # refused before Ray started


def test_a_half_zeroed_database_is_refused_at_open(tmp_path):
    db = tmp_path / "zeroed.sqlite"
    store = JobStore(db)
    fleet = parse_fleet(small_fleet_data())
    for _ in range(40):  # enough pages that zeroing the middle hits table and index b-tree pages
        store.create_job(fleet, Commitments())
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = bytearray(db.read_bytes())
    middle = len(data) // 2
    data[middle - len(data) // 4 : middle + len(data) // 4] = bytes(len(data) // 2)
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError) as err:
        JobStore(db)
    assert str(db) in str(err.value)


def test_a_database_path_that_cannot_be_written_is_refused(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the database directory should be")
    with pytest.raises(StoreError) as err:
        JobStore(blocker / "db.sqlite")
    assert str(blocker / "db.sqlite") in str(err.value)


# runtime store faults --------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_a_store_that_stops_writing_turns_health_not_serving_and_loses_no_result(ray_session, tmp_path, fault):
    with ServerThread(tmp_path / "db.sqlite") as server, server.channel() as channel:
        stub = server.stub(channel)
        store = server.server.store
        job = stub.SubmitPlanJob(pb.SubmitPlanJobRequest(fleet=fleet_message(hard_fleet_data(time_limit_s=2))))
        wait_for(lambda: stub.GetPlanJob(pb.GetPlanJobRequest(job_id=job.job.job_id)).job.progress.stage == "solve")

        async def break_store():
            if fault == "read-only":
                store._db.execute("PRAGMA query_only=1")
            else:  # no page may be added and the free space is used up: SQLITE_FULL, as a full disk gives
                pages = store._db.execute("PRAGMA page_count").fetchone()[0]
                store._db.execute(f"PRAGMA max_page_count={pages}")

        server.call(break_store)
        wait_for(lambda: health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout_s=60)
        # a job row larger than any page's free room: it needs new pages, as most real writes do
        big = small_fleet_data()
        big["rack_groups"] += [dict(big["rack_groups"][0], id=f"extra-{i:04d}") for i in range(400)]
        error = error_of(stub.SubmitPlanJob, pb.SubmitPlanJobRequest(fleet=fleet_message(big)))
        assert error.code() is grpc.StatusCode.UNAVAILABLE and "error id" in error.details()
        # The job ends while nothing can be written: it shows SUCCEEDED, never stuck RUNNING.
        ended = wait_for(
            lambda: (
                (j := stub.GetPlanJob(pb.GetPlanJobRequest(job_id=job.job.job_id)).job).state
                == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED
                and j
            ),
            timeout_s=60,
        )
        assert ended.state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED

        async def repair():
            store._db.execute("PRAGMA query_only=0")
            store._db.execute("PRAGMA max_page_count=1073741823")

        server.call(repair)
        wait_for(lambda: health_status(channel) == health_pb2.HealthCheckResponse.SERVING, timeout_s=30)
        stored = stub.GetPlanJob(pb.GetPlanJobRequest(job_id=job.job.job_id))
        assert stored.job.state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED and stored.plan.plan_id  # written once repaired


# killed server, poison job --------------------------------------------------------------------


def test_kill_9_mid_job_then_restart_reruns_the_job(ray_session, tmp_path):
    db = tmp_path / "db.sqlite"
    port_file = tmp_path / "port"
    script = (
        "import asyncio, sys\n"
        "from services.server import PlannerServer, ServerConfig\n"
        "from solvers.ray_pool import ensure_ray\n"
        "ensure_ray(num_cpus=1)\n"
        "async def main():\n"
        f"    server = PlannerServer(ServerConfig(insecure=True, port=0, db_path={str(db)!r}))\n"
        f"    open({str(port_file)!r}, 'w').write(str(await server.start()))\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True)
    try:
        port = wait_for(lambda: port_file.exists() and port_file.read_text(), timeout_s=120)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_stub(channel)
            job_id = stub.SubmitPlanJob(
                pb.SubmitPlanJobRequest(fleet=fleet_message(hard_fleet_data(time_limit_s=2))), timeout=30
            ).job.job_id
            wait_for(
                lambda: (
                    stub.GetPlanJob(pb.GetPlanJobRequest(job_id=job_id), timeout=10).job.state
                    == jobs_pb2.PLAN_JOB_STATE_RUNNING
                ),
                timeout_s=120,
            )
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the server and its embedded Ray, as a machine dies
        child.wait(30)
    assert JobStore(db).get_job(job_id).state is JobState.RUNNING  # what the dead server left
    config = ServerConfig(insecure=True, crash_backoff_s=0.5)
    with ServerThread(db, config=config) as server, server.channel() as channel:
        stub = server.stub(channel)
        final = [e.job for e in stub.WatchPlanJob(pb.WatchPlanJobRequest(job_id=job_id), timeout=120)][-1]
        assert final.state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED and final.attempts == 2
        assert server.server.store.get_job(job_id).crashes == 1


def _descendants(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        out = subprocess.run(["pgrep", "-P", str(frontier.pop())], capture_output=True, text=True).stdout
        children = {int(p) for p in out.split()} - found
        frontier += list(children)
        found |= children
    return found


def _program(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not os.environ.get("HASHPIVOT_SLOW_TESTS"),
    reason="starts two servers with their own Ray (1-2 min on 2 cores): set HASHPIVOT_SLOW_TESTS=1",
)
def test_a_dead_ray_node_restarts_the_server_and_requeues_its_job(tmp_path):
    """Killing the embedded Ray's raylet ends the server process from native code; the supervisor of
    `hashpivot serve` says so in the log, starts a new server (and Ray), and the job runs again."""
    port, db, log_path = _free_port(), tmp_path / "db.sqlite", tmp_path / "serve.log"
    with open(log_path, "w") as log_file:
        supervisor = subprocess.Popen(
            [HASHPIVOT, "serve", "--insecure", "--port", str(port), "--db", str(db)],
            stderr=log_file,
            cwd=ROOT,
            start_new_session=True,
        )
    target = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: "serving on" in log_path.read_text(), timeout_s=120)
        with grpc.insecure_channel(target) as channel:
            stub = pb_stub(channel)
            request = pb.SubmitPlanJobRequest(fleet=fleet_message(hard_fleet_data(time_limit_s=2)))
            job_id = stub.SubmitPlanJob(request, timeout=30).job.job_id
            wait_for(
                lambda: (
                    stub.GetPlanJob(pb.GetPlanJobRequest(job_id=job_id), timeout=10).job.state
                    == jobs_pb2.PLAN_JOB_STATE_RUNNING
                ),
                timeout_s=120,
            )
            raylets = [p for p in _descendants(supervisor.pid) if _program(p).endswith("/raylet")]
            assert raylets, "no raylet under the server"
            os.kill(raylets[0], signal.SIGKILL)
            wait_for(lambda: "exited unexpectedly" in log_path.read_text(), timeout_s=60)
            assert supervisor.poll() is None  # the supervisor lives on
        with grpc.insecure_channel(target) as channel:  # the new server, same port and database
            wait_for(lambda: _serving(channel), timeout_s=120)
            job = pb_stub(channel).GetPlanJob(pb.GetPlanJobRequest(job_id=job_id), timeout=10).job
            assert job.state in (jobs_pb2.PLAN_JOB_STATE_QUEUED, jobs_pb2.PLAN_JOB_STATE_RUNNING)  # to run again
        assert JobStore(db).get_job(job_id).crashes == 1  # counted towards the poison-job cap
    finally:  # the whole group at once: a graceful stop is test_serve_sigterm's subject, not this one's
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor.pid, signal.SIGKILL)
        supervisor.wait(30)


def test_the_supervisor_restarts_a_server_that_dies_and_stops_with_one_that_stops(tmp_path, caplog):
    """What a dead Ray node does to the server (the process ends from native code), in miniature: the
    child dies once with code 1, is restarted after the back-off, then stops cleanly."""
    from services.supervisor import supervise

    marker = tmp_path / "died-once"
    child = f"import pathlib, sys; m = pathlib.Path({str(marker)!r}); sys.exit(0 if m.exists() else m.touch() or 1)"
    with caplog.at_level(logging.ERROR):
        assert supervise([], command=[sys.executable, "-c", child]) == 0
    assert marker.exists()
    assert [r.getMessage().split(";")[0] for r in caplog.records] == ["the server process exited unexpectedly (code 1"]
    assert supervise([], command=[sys.executable, "-c", "import sys; sys.exit(2)"]) == 2  # a refused start: no retry


def test_a_run_that_loses_its_ray_node_is_requeued_not_failed(tmp_path):
    import ray

    store = JobStore(tmp_path / "db.sqlite")
    job, _ = store.create_job(parse_fleet(small_fleet_data()), Commitments())
    store.claim_next()
    assert store.requeue_crashed(job.job_id, max_crashes=2, backoff_s=60) is JobState.QUEUED
    assert store.get_job(job.job_id).crashes == 1 and store.claim_next() is None  # backing off
    store._db.execute("UPDATE jobs SET state = 'running' WHERE job_id = ?", (job.job_id,))
    assert store.requeue_crashed(job.job_id, max_crashes=2, backoff_s=60) is JobState.FAILED  # the cap
    store.close()
    lost = to_service_error(ray.exceptions.LocalRayletDiedError())
    assert lost.code is grpc.StatusCode.UNAVAILABLE  # a unary call: retryable, not INTERNAL


def _serving(channel) -> bool:
    try:
        return health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def pb_stub(channel):
    from protos.hashpivot.v1 import planner_service_pb2_grpc

    return planner_service_pb2_grpc.PlannerServiceStub(channel)


def test_a_poison_job_is_retried_with_back_off_then_failed(tmp_path):
    """A job the server died under max_crashes times ends FAILED with its reason; one that died once waits."""
    store = JobStore(tmp_path / "db.sqlite")
    fleet = parse_fleet(small_fleet_data())
    poison, _ = store.create_job(fleet, Commitments())
    victim, _ = store.create_job(fleet, Commitments())
    for _ in (poison, victim):
        store.claim_next()
    store._db.execute("UPDATE jobs SET crashes = 2 WHERE job_id = ?", (poison.job_id,))
    requeued, failed = store.requeue_unfinished(max_crashes=3, backoff_s=60)
    assert (requeued, failed) == (1, 1)
    dead = store.get_job(poison.job_id)
    assert dead.state is JobState.FAILED and dead.error.code is grpc.StatusCode.ABORTED
    assert "3 times" in dead.error.message
    assert store.get_job(victim.job_id).state is JobState.QUEUED
    assert store.claim_next() is None  # backing off: not due for a minute
    assert 55 < store.next_due_s() <= 60
    store.close()


# requests too big, malformed, or hostile -------------------------------------------------------


@pytest.fixture(scope="module")
def small_limits_server(ray_session, tmp_path_factory):
    config = ServerConfig(insecure=True, limits=Limits(max_queued_jobs_per_caller=1))
    with ServerThread(tmp_path_factory.mktemp("limits") / "db.sqlite", config=config) as server:
        yield server


@pytest.fixture(scope="module")
def stub(small_limits_server):
    with small_limits_server.channel() as channel:
        yield small_limits_server.stub(channel)


def test_oversized_requests_are_refused_before_any_work(stub):
    big = small_fleet_data()
    big["horizon"]["days"] = 1096
    big["scenarios"]["count"] = 2000
    started = time.monotonic()
    error = error_of(stub.Optimize, pb.OptimizeRequest(fleet=fleet_message(big)), timeout=30)
    assert time.monotonic() - started < 2.0  # refused, not attempted
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_scenario_steps" in error.details() and "52,608,000" in error.details()  # the limit and the estimate
    robust = pb.OptimizeRequest(fleet=fleet_message(small_fleet_data()))
    robust.robustness.bootstrap_resamples = 2**31 - 1
    error = error_of(stub.Optimize, robust, timeout=30)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "max_bootstrap_resamples" in error.details()


def test_strings_numbers_and_enums_are_bounded_and_named(stub):
    cases = []
    long_name = fleet_message(small_fleet_data())
    long_name.name = "x" * 10_000_000
    cases.append((long_name, "fleet.name"))
    infinite = fleet_message(small_fleet_data())
    infinite.rack_groups[0].opex_usd_per_rack_day = float("inf")
    cases.append((infinite, "fleet.rack_groups[0].opex_usd_per_rack_day"))
    huge = fleet_message(small_fleet_data())
    huge.sites[1].ai.max_mw = 1e308
    cases.append((huge, "fleet.sites[1].ai.max_mw"))
    objective = fleet_message(small_fleet_data())
    objective.risk.objective = 99
    cases.append((objective, "fleet.risk.objective"))
    for fleet, field in cases:
        error = error_of(stub.Optimize, pb.OptimizeRequest(fleet=fleet), timeout=30)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, field
        assert [f for f, _ in rich_details(error)["fields"]] == [field]
        assert len(error.details()) < 2_000  # quotes at most ~200 characters of the input


def test_the_queued_job_quota_is_per_caller(stub):
    request = pb.SubmitPlanJobRequest(fleet=fleet_message(hard_fleet_data(time_limit_s=30)))
    first = stub.SubmitPlanJob(request, timeout=30).job
    try:
        error = error_of(stub.SubmitPlanJob, request, timeout=30)
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queued_jobs_per_caller" in error.details()
    finally:
        stub.CancelPlanJob(pb.CancelPlanJobRequest(job_id=first.job_id), timeout=60)


def test_internal_errors_carry_an_id_that_is_in_the_log_not_the_exception(small_limits_server, stub, caplog):
    servicer = small_limits_server.server.servicer
    original = servicer._store.get_plan

    def broken(*args, **kwargs):
        raise RuntimeError("secret: /var/lib/hashpivot/db.sqlite SELECT * FROM plans")

    async def inject():
        servicer._store.get_plan = broken

    async def restore():
        servicer._store.get_plan = original

    small_limits_server.call(inject)
    try:
        with caplog.at_level(logging.ERROR):
            error = error_of(stub.GetPlan, pb.GetPlanRequest(plan_id="plan-x"), timeout=10)
    finally:
        small_limits_server.call(restore)
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in error.details() and "RuntimeError" not in error.details()
    error_id = error.details().split("error id ")[1].split(";")[0]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)


# retention and deletion -------------------------------------------------------------------------


def test_retention_deletes_old_and_surplus_plans_and_finished_jobs(tmp_path):
    store = JobStore(tmp_path / "db.sqlite")
    fleet = parse_fleet(small_fleet_data())
    now = time.time()
    for k, age_days in enumerate((40, 20, 2, 1, 0)):  # rows as _insert_plan writes them; bodies are not read
        store._db.execute(
            "INSERT INTO plans (plan_id, created_at, fleet_json, plan_json, owner, fleet_name)"
            " VALUES (?, ?, '{}', '{}', 'acme', 'small')",
            (f"plan-{k}", now - age_days * 86400),
        )
    done, _ = store.create_job(fleet, Commitments())
    store.claim_next()
    store.finish_job(done.job_id, JobState.FAILED, ProgressSnapshot())
    waiting, _ = store.create_job(fleet, Commitments())
    store._db.execute("UPDATE jobs SET created_at = ?", (now - 40 * 86400,))
    plans, jobs = store.sweep(max_age_s=30 * 86400, max_plans=3, max_jobs=None)
    assert jobs == 1 and store.get_job(done.job_id) is None
    assert store.get_job(waiting.job_id) is not None  # a queued job is never deleted
    assert [p.plan_id for p in store.list_plans(None, 100)] == ["plan-4", "plan-3", "plan-2"] and plans == 2
    assert [p.plan_id for p in store.list_plans("globex", 100)] == []  # another tenant's listing
    assert store.delete_plan("plan-4") and store.get_plan("plan-4") is None
    store.close()


# solve errors ----------------------------------------------------------------------------------


def test_out_of_time_is_not_a_kind_of_infeasible_and_is_deadline_exceeded_only_for_the_callers_deadline():
    assert issubclass(NoSolutionInTimeError, SolveError) and issubclass(InfeasiblePlanError, SolveError)
    assert not issubclass(NoSolutionInTimeError, InfeasiblePlanError)
    assert to_service_error(RunDeadlineError("deadline")).code is grpc.StatusCode.DEADLINE_EXCEEDED
    solver_limit = to_service_error(NoSolutionInTimeError("no plan found within the time limit of 0.05 s"))
    assert solver_limit.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "time_limit_s" in solver_limit.message
