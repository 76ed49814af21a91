"""solvers/ray_pool.py's fan-out: results in order, and a stop raised while batches run cancels them at once."""

from __future__ import annotations

import time

import pytest
import ray

from solvers.ray_pool import WAIT_POLL_S, fan_out, lazy_remote
from tests.conftest import wait_for_free_cpus


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
