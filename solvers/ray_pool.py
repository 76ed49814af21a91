"""Ray plumbing: start or join a cluster, fan batches out with bounded concurrency, or run in-process.

Ray is imported only when a run uses it (its import and start-up are ~1 s and several seconds on
a small machine). The embedded Ray starts with what the run needs: no dashboard, CPUs sized to
the work, and it can start in a background thread (`start_ray_background`) while the caller does
other things; `ensure_ray` then waits for it. Small runs execute the same task functions in the
calling process (`in_process()`), where Ray would cost more than the work: same functions, same
arguments, same order, so the same results.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

RAY_ADDRESS_ENV = "RAY_ADDRESS"
LOOPBACK = "127.0.0.1"

_state = threading.local()  # .in_process: the calling thread runs tasks in-process
_start_lock = threading.Lock()
_starting: threading.Event | None = None  # set when a background start has finished
_start_error: BaseException | None = None


# ---------------------------------------------------------------------------------------------
# Where tasks run


def running_in_process() -> bool:
    return getattr(_state, "in_process", False)


@contextlib.contextmanager
def in_process(enabled: bool = True) -> Iterator[None]:
    """Within the block (this thread), fan_out, put and LazyRemote calls run here instead of on Ray."""
    before = running_in_process()
    _state.in_process = enabled
    try:
        yield
    finally:
        _state.in_process = before


def ray_active() -> bool:
    """Ray is up or starting in this process (without importing Ray when it never was)."""
    if _starting is not None:
        return True
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def cluster_configured(address: str | None = None) -> bool:
    return bool(address or os.environ.get(RAY_ADDRESS_ENV))


# A run of little work skips Ray, whose start-up would cost more than the work. Work is counted in
# cells, scenario x step x (rack group + site), the shape of the economics. Drawing and pricing the
# scenarios of examples/fleet.yaml took 0.08 us of CPU per cell (200 and 1,000 scenarios, 2 cores)
# and ~0.2 us of wall time with the machine shared four ways; ECONOMICS_S_PER_CELL takes the loaded
# figure. An embedded Ray costs RAY_STARTUP_S before its first task runs (import ~0.7 s, init
# ~5 s: GCS, raylet, agents, prestarted workers; bench/bench_pipeline.py shows the tiny plan at
# ~11 s on Ray against ~1-2 s in-process). Ray saves at most the share (1 - 1/cores) of the work,
# so it only pays when that exceeds its cost: on two cores, above ~40M cells (the example fleet at
# ~1,500 scenarios).
ECONOMICS_S_PER_CELL = 0.25e-6
RAY_STARTUP_S = 5.0


def work_cells(fleet: Any, count: int) -> int:
    """Scenario x step x (rack group + site) of a run on `fleet` (an optimizer.fleet.Fleet)."""
    return count * fleet.horizon.n_steps * (len(fleet.rack_groups) + len(fleet.sites))


def runs_in_process(fleet: Any, count: int, address: str | None = None, cores: int | None = None) -> bool:
    """True when a run should skip Ray: no cluster configured, Ray not already up or starting, and the
    parallel saving on the economics smaller than the start-up of an embedded Ray."""
    if cluster_configured(address) or ray_active():
        return False
    cores = cores or os.cpu_count() or 1
    saving_s = work_cells(fleet, count) * ECONOMICS_S_PER_CELL * (1 - 1 / cores)
    return saving_s < RAY_STARTUP_S


class LazyRemote:
    """`ray.remote(**options)(fn)`, made on first `.remote()`, so importing a module does not import Ray.

    Calling it runs `fn` here; `fan_out` runs `fn` in-process under `in_process()`.
    """

    def __init__(self, fn: Callable, **options: Any):
        self.fn = fn
        self._options = options
        self._remote = None
        self.__name__ = getattr(fn, "__name__", "task")
        self.__doc__ = fn.__doc__

    def _ray_function(self):
        if self._remote is None:
            import ray

            self._remote = ray.remote(**self._options)(self.fn)
        return self._remote

    def remote(self, *args: Any, **kwargs: Any):
        return self._ray_function().remote(*args, **kwargs)

    def options(self, **options: Any):
        return self._ray_function().options(**options)

    def __call__(self, *args: Any, **kwargs: Any):
        return self.fn(*args, **kwargs)


def lazy_remote(**options: Any) -> Callable[[Callable], LazyRemote]:
    """Decorator: `@lazy_remote(num_cpus=1)` in place of `@ray.remote(num_cpus=1)`."""
    return lambda fn: LazyRemote(fn, **options)


def put(value: Any) -> Any:
    """ray.put on Ray (put once, pass the reference); the value itself in-process."""
    if running_in_process():
        return value
    import ray

    return ray.put(value)


def get(ref: Any) -> Any:
    if running_in_process():
        return ref
    import ray

    return ray.get(ref)


# ---------------------------------------------------------------------------------------------
# Starting Ray


# An embedded Ray started by the server runs its workers at this niceness: planning work (scenario
# batches, HiGHS) is batch work, a Dispatch call is not, and on a small machine both want the same
# cores. The scheduler then gives the server the CPU whenever it has a call to answer
# (bench/bench_service.py measures Dispatch while a job runs).
SERVING_WORKER_NICENESS = 10


def lower_worker_priority() -> None:
    """Ray's worker_process_setup_hook for a serving process's embedded Ray: every thread of the worker
    (Linux niceness and policy are per thread; threads started later inherit them) at
    SERVING_WORKER_NICENESS and in the SCHED_IDLE class.

    Why SCHED_IDLE as well: a niced task still holds ~10 % of a core against each busy serving thread
    and is preempted only at the scheduler's next tick, which is what a Dispatch call then waits; a
    SCHED_IDLE task runs only on a core nothing else wants and is preempted at once, so a plan job uses
    the machine's spare time and the serving processes keep theirs. Only the workers: the GCS and
    raylet (Ray's own control plane) stay niced, so that a serving load cannot starve Ray's health
    checks. A job therefore takes longer while Dispatch load fills the cores (docs/service.md).
    """
    _lower_threads("self")
    _idle_threads("self")


def _lower_threads(pid: int | str) -> None:
    tasks = f"/proc/{pid}/task"
    for tid in os.listdir(tasks) if os.path.isdir(tasks) else [str(os.getpid() if pid == "self" else pid)]:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, int(tid), SERVING_WORKER_NICENESS)


def _idle_threads(pid: int | str) -> None:
    tasks = f"/proc/{pid}/task"
    for tid in os.listdir(tasks) if os.path.isdir(tasks) and hasattr(os, "SCHED_IDLE") else ():
        with contextlib.suppress(OSError):
            os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))


def lower_embedded_ray_priority() -> None:
    """Every thread of the processes the embedded Ray consists of (GCS, raylet, agents, workers started so
    far: this process's descendants) at SERVING_WORKER_NICENESS.

    Why, besides worker_process_setup_hook: that hook runs only once a worker has imported Ray and our
    modules (1-2 s of CPU per worker start, at the server's priority), and the raylet and GCS work
    hardest while a plan's tasks are scheduled. A worker the raylet forks afterwards inherits its
    niceness from the raylet's thread, so it is low from its first instruction.
    """
    for pid in _descendants(os.getpid()):
        _lower_threads(pid)


def _descendants(root: int) -> list[int]:
    """Processes under `root`, from the parent pid field of /proc/PID/stat (empty off Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found, frontier = [], list(children.get(root, ()))
    while frontier:
        pid = frontier.pop()
        found.append(pid)
        frontier += children.get(pid, ())
    return found


def _init(address: str | None, num_cpus: int | None, yield_to_serving: bool = False) -> None:
    import ray

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
        runtime_env={"worker_process_setup_hook": f"{__name__}.lower_worker_priority"} if yield_to_serving else None,
    )
    if yield_to_serving:
        lower_embedded_ray_priority()


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


def start_ray_background(address: str | None = None, num_cpus: int | None = None) -> None:
    """Import and start Ray in a background thread; `ensure_ray` waits for it. No-op if up or starting.

    The thread stays alive, parked, for the life of the process: Ray starts its GCS and raylet with
    PR_SET_PDEATHSIG, which on Linux kills them when the *thread* that forked them exits.
    """
    global _starting, _start_error
    with _start_lock:
        if ray_active():
            return
        started = threading.Event()

        def run() -> None:
            global _start_error
            quiet = _NotMainThreadFilter()
            loggers = [logging.getLogger(name) for name in ("ray", "ray._private.worker")]
            for logger in loggers:
                logger.addFilter(quiet)
            try:
                _init(address, num_cpus)
            except BaseException as exc:  # noqa: BLE001 - re-raised by ensure_ray in the caller's thread
                _start_error = exc
            finally:
                for logger in loggers:
                    logger.removeFilter(quiet)
                started.set()
            _park.wait()  # keep Ray's processes alive: they die with the thread that started them

        _start_error = None
        _starting = started
        threading.Thread(target=run, name="ray-start", daemon=True).start()


_park = threading.Event()  # never set: the background starter thread waits on it until the process exits


class _NotMainThreadFilter(logging.Filter):
    """Ray warns that it sets no SIGTERM handler off the main thread: expected when started in the background."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def ensure_ray(address: str | None = None, num_cpus: int | None = None, yield_to_serving: bool = False) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS); otherwise start an embedded local Ray once, with
    `yield_to_serving` its workers at a lower CPU priority than this process (lower_worker_priority).

    If `start_ray_background` started one, wait for it (and raise what it raised).
    """
    if settle_ray_start():
        if _start_error is not None:
            raise _start_error
        return
    _init(address, num_cpus, yield_to_serving)


def settle_ray_start() -> bool:
    """Wait for a background start still running; True if there was one (its error, if any, is in
    `_start_error`). A process must not exit with Ray half-started: its processes would outlive it."""
    global _starting
    with _start_lock:
        started = _starting
    if started is None:
        return False
    started.wait()
    with _start_lock:
        _starting = None
    return True


def cpus_for(batches_count: int) -> int:
    """CPUs of an embedded Ray sized to the work: no more workers than batches, nor than cores."""
    return max(1, min(os.cpu_count() or 1, batches_count))


# ---------------------------------------------------------------------------------------------
# Fan-out

WAIT_POLL_S = 0.2  # how often a fan-out waiting on long batches asks whether to stop (a cancel must act within 2 s)


def batches(count: int, batch_size: int) -> list[range]:
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def fan_out(
    remote_fn: Any,
    arg_lists: Sequence[tuple],
    max_in_flight: int | None = None,
    on_done: Callable[[int], None] | None = None,
    placements: Sequence[Any] | None = None,
    on_wait: Callable[[], None] | None = None,
) -> list[Any]:
    """Run `remote_fn.remote(*args)` for each args tuple; results in submission order.

    At most `max_in_flight` tasks run at once (None: all submitted together), so the
    number of workers is a setting that never changes the result. Under `in_process()`
    the task function runs here, one batch after the other. `placements` (one scheduling
    strategy per task, see `spread_over_nodes`) pins each task to a node. `on_wait` is called every
    WAIT_POLL_S while no task finishes: an exception it raises (a stop) cancels the tasks still
    running at once, rather than after the next batch, which may take minutes.
    """
    if running_in_process():
        return _run_here(remote_fn, arg_lists, on_done)
    import ray

    results: list[Any] = [None] * len(arg_lists)
    pending: dict[Any, int] = {}
    queue: Iterable[tuple[int, tuple]] = iter(enumerate(arg_lists))
    limit = max_in_flight or len(arg_lists)
    try:
        for index, args in queue:
            task = remote_fn.options(scheduling_strategy=placements[index]) if placements else remote_fn
            pending[task.remote(*args)] = index
            if len(pending) >= limit:
                _collect_one(pending, results, on_done, on_wait)
        while pending:
            _collect_one(pending, results, on_done, on_wait)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return results


def spread_over_nodes(count: int) -> list[Any]:
    """Scheduling strategies that place `count` tasks round-robin over the nodes with CPUs.

    Ray's SPREAD reads a resource view that can lag behind a busy cluster and then packs every task on
    one node; naming the node (soft, so a lost node falls back to any other) places the batches' data
    across the nodes for certain, and the later tasks that read a batch go where it is.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)
    if len(nodes) < 2:
        return ["DEFAULT"] * count
    return [NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=True) for i in range(count)]


def _run_here(remote_fn: Any, arg_lists: Sequence[tuple], on_done: Callable[[int], None] | None) -> list[Any]:
    fn = getattr(remote_fn, "fn", None) or getattr(remote_fn, "_function", None)
    if fn is None:
        raise TypeError(f"{remote_fn!r} cannot run in-process: make it with lazy_remote")
    results = []
    for index, args in enumerate(arg_lists):
        results.append(fn(*args))
        if on_done:
            on_done(index)
    return results


def _collect_one(
    pending: dict[Any, int],
    results: list[Any],
    on_done: Callable[[int], None] | None,
    on_wait: Callable[[], None] | None = None,
) -> None:
    import ray

    ready: list[Any] = []
    while not ready:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=None if on_wait is None else WAIT_POLL_S)
        if not ready and on_wait is not None:
            on_wait()
    index = pending.pop(ready[0])
    results[index] = ray.get(ready[0])
    if on_done:
        on_done(index)


def fan_out_refs(
    remote_fn: Any,
    arg_lists: Sequence[tuple],
    max_in_flight: int | None = None,
    on_done: Callable[[int], None] | None = None,
    **options: Any,
) -> list[Any]:
    """Like `fan_out`, but leaves the results in the object store: their references, in submission
    order, once every task has finished (in-process: the values). `options` go to `.options()`."""
    if running_in_process():
        return _run_here(remote_fn, arg_lists, on_done)
    import ray

    refs, pending = [], {}
    try:
        for index, args in enumerate(arg_lists):
            if max_in_flight and len(pending) >= max_in_flight:
                _wait_one(pending, on_done)
            ref = (remote_fn.options(**options) if options else remote_fn).remote(*args)
            refs.append(ref)
            pending[ref] = index
        while pending:
            _wait_one(pending, on_done)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return refs


def _wait_one(pending: dict[Any, int], on_done: Callable[[int], None] | None) -> None:
    import ray

    [ready], _ = ray.wait(list(pending), num_returns=1, fetch_local=False)
    index = pending.pop(ready)
    if on_done:
        on_done(index)
