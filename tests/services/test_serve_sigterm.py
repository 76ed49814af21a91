"""`hashpivot serve` as a real process: SIGTERM drains the in-flight call and leaves the running job resumable."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ray

from services.auth import Role, token_line
from services.client import PlannerClient
from services.store import JobState, JobStore
from tests.services.grpc_harness import hard_fleet_data

HASHPIVOT = str(Path(sys.executable).parent / "hashpivot")
TOKEN = "sigterm-test-token"


def start_serve(db: Path) -> tuple[subprocess.Popen, str, list[str]]:
    """`hashpivot serve` on a free loopback port, joining this session's Ray (no second Ray to start)."""
    address = ray.get_runtime_context().gcs_address
    process = subprocess.Popen(
        [
            HASHPIVOT,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--db",
            str(db),
            "--ray-address",
            address,
            "--grace",
            "20",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HASHPIVOT_TOKENS": token_line(TOKEN, "ops", Role.PLANNER)},  # as a secret store would
    )
    log: list[str] = []
    for line in process.stderr:
        log.append(line)
        found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
        if found:
            threading.Thread(target=lambda: log.extend(process.stderr), daemon=True).start()
            return process, f"127.0.0.1:{found.group(1)}", log
    raise AssertionError("server did not start:\n" + "".join(log))


def test_sigterm_drains_calls_and_requeues_jobs(ray_session, tmp_path):
    db = tmp_path / "hashpivot.sqlite"
    process, target, log = start_serve(db)
    try:
        with PlannerClient(target, timeout_s=60, token=TOKEN) as client:
            assert client.health() == "SERVING"
            job = client.submit(hard_fleet_data(time_limit_s=60))
            for event in client.watch(job.job_id, timeout_s=60):
                if event.progress.stage == "solve":
                    break
            # A unary call in flight when SIGTERM arrives still completes: a solve with a 3 s time limit,
            # signalled 1 s in, inside the 20 s grace period.
            replies: list = []
            call = threading.Thread(target=lambda: replies.append(client.optimize(hard_fleet_data(time_limit_s=3))))
            call.start()
            time.sleep(1.0)
            assert call.is_alive()
            process.send_signal(signal.SIGTERM)
            call.join(60)
            assert process.wait(60) == 0, "".join(log)
    finally:
        if process.poll() is None:
            process.kill()
    assert replies and replies[0].plan.solver.status == "time_limit", "".join(log)
    store = JobStore(db)
    assert store.get_job(job.job_id).state is JobState.QUEUED  # resumable by the next server
    assert store.get_plan(replies[0].plan_id) is not None
    store.close()
    assert any("re-queueing running jobs" in line for line in log)
