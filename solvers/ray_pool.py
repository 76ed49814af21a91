"""Ray plumbing: start or join a cluster, and fan batches out with bounded concurrency."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ray

RAY_ADDRESS_ENV = "RAY_ADDRESS"
LOOPBACK = "127.0.0.1"


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS); otherwise start an embedded local Ray once."""
    if ray.is_initialized():
        return
    address = address or os.environ.get(RAY_ADDRESS_ENV)
    if address:
        if _is_loopback_address(address):  # a Ray on this machine kept on loopback (e.g. by another ensure_ray)
            _keep_on_loopback()
        ray.init(address=address, log_to_driver=False)
        return
    _keep_on_loopback()
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address=LOOPBACK,  # ray.init's documented node-IP option: GCS, raylet, workers bind here
    )


def _is_loopback_address(address: str) -> bool:
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", LOOPBACK, "::1")


def _keep_on_loopback() -> None:
    """An embedded Ray serves only this process, so none of its ports may listen beyond loopback.

    Ray replaces a loopback _node_ip_address by the machine's routable IP (services.
    resolve_ip_for_localhost) unless multi-node clustering is off, which is how Ray itself runs on
    macOS and Windows; turning it off here keeps every port of the embedded node on 127.0.0.1
    (tests/services/test_security.py checks the listening sockets).
    """
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # also makes a driver joining such a Ray find its node on 127.0.0.1


def batches(count: int, batch_size: int) -> list[range]:
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def fan_out(
    remote_fn: Any,
    arg_lists: Sequence[tuple],
    max_in_flight: int | None = None,
    on_done: Callable[[int], None] | None = None,
) -> list[Any]:
    """Run `remote_fn.remote(*args)` for each args tuple; results in submission order.

    At most `max_in_flight` tasks run at once (None: all submitted together), so the
    number of workers is a setting that never changes the result.
    """
    results: list[Any] = [None] * len(arg_lists)
    pending: dict[Any, int] = {}
    queue: Iterable[tuple[int, tuple]] = iter(enumerate(arg_lists))
    limit = max_in_flight or len(arg_lists)
    try:
        for index, args in queue:
            pending[remote_fn.remote(*args)] = index
            if len(pending) >= limit:
                _collect_one(pending, results, on_done)
        while pending:
            _collect_one(pending, results, on_done)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return results


def _collect_one(pending: dict[Any, int], results: list[Any], on_done: Callable[[int], None] | None) -> None:
    [ready], _ = ray.wait(list(pending), num_returns=1)
    index = pending.pop(ready)
    results[index] = ray.get(ready)
    if on_done:
        on_done(index)
