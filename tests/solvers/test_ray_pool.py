"""solvers/ray_pool.py: the fan-out keeps the order and stops at once; a serving process's Ray workers yield the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import ray

from solvers.ray_pool import SERVING_WORKER_NICENESS, WAIT_POLL_S, fan_out, lazy_remote
from tests.conftest import ROOT, wait_for_free_cpus


@lazy_remote(num_cpus=1)
def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class _Stop(Exception):
    pass


def test_waiting_calls_on_wait_and_keeps_the_order(ray_session):
    waits = []
    assert fan_out(_sleep, [(1.0,), (0.1,)], on_wait=lambda: waits.append(1)) == [1.0, 0.1]
    assert len(waits) >= 1  # the 1 s batch outlasts several polls


def test_a_stop_while_batches_run_cancels_them_without_waiting_for_them(ray_session):
    """Two 10-minute batches hold both CPUs; the third poll raises: fan_out re-raises and the batches are killed."""
    polls = []

    def on_wait() -> None:
        polls.append(time.monotonic())
        if ray.available_resources().get("CPU", 0) == 0 and len(polls) >= 3:
            raise _Stop

    start = time.monotonic()
    with pytest.raises(_Stop):
        fan_out(_sleep, [(600.0,), (600.0,)], on_wait=on_wait)
    assert len(polls) >= 3 and polls[1] - polls[0] >= WAIT_POLL_S * 0.5
    assert time.monotonic() - start < 300  # not after the batches (600 s)
    assert wait_for_free_cpus(), "the cancelled batches kept their CPUs"


_WORKER_NICENESS = """
import os, sys, threading
import ray
from solvers.ray_pool import _descendants, ensure_ray

ensure_ray(num_cpus=1, yield_to_serving=True)

@ray.remote(num_cpus=1)
def niceness():
    started = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
    started.start()  # threads a task starts inherit it
    tids = [int(tid) for tid in os.listdir("/proc/self/task")]
    return sorted({os.getpriority(os.PRIO_PROCESS, t) for t in tids}), sorted({os.sched_getscheduler(t) for t in tids})

def control_plane():  # the GCS, raylet and agents this process started: not the workers
    pids = [p for p in _descendants(os.getpid()) if "ray::" not in open(f"/proc/{p}/cmdline").read()]
    tids = [int(tid) for pid in pids for tid in os.listdir(f"/proc/{pid}/task")]
    return sorted({os.getpriority(os.PRIO_PROCESS, t) for t in tids}), sorted({os.sched_getscheduler(t) for t in tids})

print(ray.get(niceness.remote()), os.getpriority(os.PRIO_PROCESS, 0), control_plane())
"""


def test_a_serving_process_embedded_ray_runs_its_workers_at_a_lower_priority(tmp_path):
    """Every thread of a worker at SERVING_WORKER_NICENESS and SCHED_IDLE; the GCS and raylet (whose forks,
    the workers, are then low from their start) niced but in the normal class; the serving process itself
    keeps its priority."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", _WORKER_NICENESS], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    low = own + SERVING_WORKER_NICENESS
    line = done.stdout.split("\n")[-2]
    assert line == f"([{low}], [{os.SCHED_IDLE}]) {own} ([{low}], [{os.SCHED_OTHER}])", line
