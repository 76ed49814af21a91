"""The service's measured figures in one run: Dispatch under load, stop latency, peak memory.

    .venv/bin/python bench/bench_service.py [--clients 30] [--processes 6] [--seconds 10] [--rate 2000]
        [--dispatch-only] [--no-max-request] [--loadgen {cpp,python}]

Starts `hashpivot serve` as its own process tree (supervisor, server, embedded Ray; temporary
database; bearer-token auth on, as in production), plans examples/tiny.yaml, then prints:
1. Dispatch: `--clients` clients, each with its own channel and connection and the token, connected
   before the clock starts, for `--seconds` per row. They are sent by `--loadgen`: `cpp` (the default
   where it builds) is bench/loadgen/dispatch_load.cc, a compiled gRPC client built on first use by
   bench/loadgen.py (needs `apt-get install -y g++ pkg-config libgrpc++-dev`; without it the bench
   falls back to python with a note); `python` is threads spread over `--processes` processes (so they
   are not all behind one GIL). The clients share the machine's 2 cores with the server they measure:
   the Python ones spend 0.3-0.45 ms of CPU per call, the compiled one under half that, and every
   row prints its generator's CPU per call. Any call that does not return OK fails the bench. Two modes:
   - closed loop: each client sends its next call when the last returns. The rate is the saturation
     throughput; its latency is mostly queueing (Little's law: p50 ~ clients / rate).
   - open loop: the clients together send `--rate` calls/s, each on its own fixed schedule, and each
     call is timed from when it was due, not when it was sent, so a stall counts against every call
     it delays (no coordinated omission, as wrk2 and ghz --rps measure). This is the row the latency
     targets are read from: a given load, and how long callers wait under it.
   Both on the idle server, on a bare grpc.aio server that returns a fixed reply (what gRPC, the
   clients and the machine allow at that moment), while a plan job of examples/fleet.yaml
   runs, and on the bare server while such a job runs (what the job's load on the machine alone does
   to the clients). Every row carries the load average at its end;
2. stop latency: seconds from a CancelPlanJob of a running fleet.yaml job, from the deadline of an
   Optimize of it, and from its caller dropping such an Optimize, until the work is gone: no Ray
   worker of the tree runs a task (economics, HiGHS) and the server process is idle again;
3. (unless --no-max-request; about a minute, ~1.4 GB) the largest request admission admits at the
   default limits (examples/fleet.yaml scaled in scenarios), run as a job: the process tree's peak
   memory (PSS: driver, Ray and its workers) next to admission's estimate.
Every figure comes with the machine's cores, memory and load average: other work on the machine
moves them.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import loadgen
from loadgen import Measured

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = "bench-service-token"
METADATA = (("authorization", f"Bearer {TOKEN}"),)
PRICES = 90  # the Dispatch calls' distinct power prices, 30-119 USD/MWh
DISPATCH_METHOD = "/hashpivot.v1.PlannerService/Dispatch"  # protos/hashpivot/v1/planner_service.proto
RUNNING, FINAL_STATES = 2, 3  # PlanJobState numbers (protos/hashpivot/v1/jobs.proto): RUNNING; SUCCEEDED and above end
QUIET_WINDOW_S = 0.25
QUIET_CORES = 0.3  # the server's own upkeep (health, Ray probes) stays well below this
# The job Dispatch runs against: examples/fleet.yaml planned (~20 s on 2 cores), then a light robustness
# pass (~30 s more) that admission admits (14M scenario steps of the default 20M), so the job outlasts
# the client processes' start-up and the measured window.
BUSY_JOB_ROBUSTNESS = {"oos_scenarios": 100, "replications": 1, "wait_and_see_scenarios": 20, "sensitivity": False}
# Ray workers with these titles run no task of ours: idle workers, the progress actor, Ray's agents.
# Every client is told to start this long after the last one connected: time for each to wake from the
# start signal before its first call is due (an open-loop client late at the start would count it).
START_LEAD_S = 0.3
IDLE_TITLES = ("ray::IDLE", "ray::ProgressRelay", "ray::DashboardAgent", "ray::RuntimeEnvAgent")


def start_server(db: Path, fronts: int = 0) -> tuple[subprocess.Popen, str]:
    from common import start_server as start  # here, not at the top: the spawned client processes skip its imports

    from services.auth import Role, token_line

    env = {**os.environ, "HASHPIVOT_TOKENS": token_line(TOKEN, "bench", Role.ADMIN)}
    args = ["--db", str(db), "--max-jobs", "1", "--dispatch-fronts", str(fronts)]
    return start(args, env=env, start_new_session=True)


@contextlib.contextmanager
def serving(db: Path, fronts: int = 0):
    """A `hashpivot serve` process tree with examples/tiny.yaml planned: (process, client, target, plan_id)."""
    from services.client import PlannerClient

    process, target = start_server(db, fronts)
    try:
        with PlannerClient(target, timeout_s=600, token=TOKEN) as client:
            yield process, client, target, client.optimize(ROOT / "examples" / "tiny.yaml").plan_id
    finally:
        process.terminate()
        process.wait(60)


def server_pid(supervisor: int) -> int:
    """The server process: the supervisor's child (services/supervisor.py)."""
    for _ in range(100):
        with open(f"/proc/{supervisor}/task/{supervisor}/children") as f:
            children = f.read().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise RuntimeError("the supervisor has no server process")


def _request_bytes(plan_id: str) -> list[bytes]:
    """The C++ generator's requests: every price the Python clients send, serialized (each of its clients
    starts at a different one, as the seeds spread the Python clients)."""
    return [request.SerializeToString() for request in _requests(plan_id, 0, PRICES)]


def _requests(plan_id: str, seed: int, count: int = 64) -> list:
    from protos.hashpivot.v1 import planner_service_pb2 as pb

    prices = [30.0 + (seed * 7 + k) % PRICES for k in range(count)]
    return [
        pb.DispatchRequest(plan_id=plan_id, power_price_usd_per_mwh_by_site={"texas": p}, hashprice_usd_per_ph_day=35)
        for p in prices
    ]


def _client_thread(target: str, plan_id: str, ready, go, load: Load, out: list[float], seed: int) -> None:
    """One client: connected before the clock starts, then closed loop (the next call when the last
    returns) or open loop (calls on its own fixed schedule, each timed from its scheduled send)."""
    import grpc

    from protos.hashpivot.v1 import planner_service_pb2_grpc

    requests = _requests(plan_id, seed)
    # Its own connection: by default channels with the same target and options share one (gRPC's global
    # subchannel pool), so a process's threads would be one connection to the server, not five.
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = planner_service_pb2_grpc.PlannerServiceStub(channel)
        stub.Dispatch(requests[0], metadata=METADATA, timeout=30)  # connect before the clock starts
        ready.put(seed)
        go.wait()
        if load.rate_per_client is None:
            _closed_loop(stub, requests, load.start.value + load.seconds, out)
        else:
            _open_loop(stub, requests, load, seed, out)


def _closed_loop(stub, requests: list, stop_at: float, out: list[float]) -> None:
    k = 0
    while (begin := time.monotonic()) < stop_at:
        stub.Dispatch(requests[k % len(requests)], metadata=METADATA, timeout=10)
        out.append(time.monotonic() - begin)
        k += 1


def _open_loop(stub, requests: list, load: Load, seed: int, out: list[float]) -> None:
    """Call k is due at start + phase + k / rate; a call sent late (the previous one stalled) is timed
    from when it was due, so a stall counts against every call it delays (no coordinated omission)."""
    interval_s = 1.0 / load.rate_per_client
    first = load.start.value + interval_s * random.Random(seed).random()  # clients spread over one interval
    for k in range(int(load.seconds * load.rate_per_client)):
        due = first + k * interval_s
        if (wait_s := due - time.monotonic()) > 0:
            time.sleep(wait_s)
        stub.Dispatch(requests[k % len(requests)], metadata=METADATA, timeout=10)
        out.append(time.monotonic() - due)
    out.append(-time.monotonic())  # the end of this client's last call, negated: marks the end of its run


def _client_process(target: str, plan_id: str, threads: int, ready, go, load: Load, first: int, results_queue):
    """`threads` clients; -> (their latencies and end marks, this process's CPU seconds from the start signal)."""
    results: list[list[float]] = [[] for _ in range(threads)]
    workers = [
        threading.Thread(target=_client_thread, args=(target, plan_id, ready, go, load, results[i], first + i))
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    go.wait()  # the clients connected before it: what follows is the measured calls' CPU
    cpu_at_go = time.process_time()
    for w in workers:
        w.join()
    results_queue.put(([x for r in results for x in r], time.process_time() - cpu_at_go))


@dataclass
class Load:
    """How the clients call: closed loop (rate_per_client None: back to back) or open loop at a fixed rate."""

    seconds: float
    rate_per_client: float | None = None
    start: Any = None  # a shared double: time.monotonic() (system-wide on Linux) when every client starts


def dispatch_load(
    target: str, plan_id: str, clients: int, processes: int, seconds: float, total_rate: float | None = None
) -> Measured:
    """Every client connected first (client processes start slowly on a loaded machine), then all go at
    once: back to back (`total_rate` None) or together at `total_rate` calls/s, each on its own schedule."""
    ctx = mp.get_context("spawn")
    ready, go, results_queue = ctx.Queue(), ctx.Event(), ctx.Queue()
    load = Load(seconds, None if total_rate is None else total_rate / clients, ctx.Value("d", 0.0))
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    procs = [
        ctx.Process(target=_client_process, args=(target, plan_id, n, ready, go, load, sum(per[:i]), results_queue))
        for i, n in enumerate(per)
        if n
    ]
    for p in procs:
        p.start()
    for _ in range(clients):
        ready.get(timeout=120)
    load.start.value = time.monotonic() + START_LEAD_S
    go.set()
    values, cpu_s = [], 0.0
    for _ in procs:
        process_values, process_cpu_s = results_queue.get()
        values += process_values
        cpu_s += process_cpu_s
    for p in procs:
        p.join()
    latencies = [x for x in values if x >= 0]
    ends = [-x for x in values if x < 0]
    span_s = max(ends) - load.start.value if ends else seconds  # open loop: until the last call returned
    return Measured(len(latencies) / span_s, latencies, cpu_s, "Python")


def _bare_server(port_queue) -> None:
    """A grpc.aio server whose Dispatch returns a fixed reply: no auth, bounds, metrics or decision."""
    import asyncio

    import grpc

    from protos.hashpivot.v1 import planner_service_pb2 as pb
    from protos.hashpivot.v1 import planner_service_pb2_grpc

    reply = pb.DispatchResponse(plan_id="bare", racks_run=1)

    class Bare(planner_service_pb2_grpc.PlannerServiceServicer):
        async def Dispatch(self, request, context):
            return reply

    async def serve() -> None:
        server = grpc.aio.server()
        planner_service_pb2_grpc.add_PlannerServiceServicer_to_server(Bare(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_queue.put(port)  # once listening: a client that connects sooner is refused
        await server.wait_for_termination()

    asyncio.run(serve())


@dataclass
class Rows:
    """The Dispatch load one server state gets: closed loop and open loop, the same clients."""

    clients: int
    processes: int  # the Python clients' processes
    seconds: float
    rate: float  # the open loop's total calls/s
    loadgen: str = "python"  # who sends the calls: "cpp" (bench/loadgen.py) or "python" (dispatch_load)

    def measure(self, label: str, target: str, plan_id: str) -> float:
        """Print both rows; -> the closed loop's rate (saturation throughput)."""
        closed = self.load(target, plan_id)
        report(f"{label}, closed loop ({self.clients} clients back to back)", closed)
        opened = self.load(target, plan_id, self.rate)
        report(f"{label}, open loop ({self.clients} clients, {self.rate:,.0f} calls/s in all)", opened)
        return closed.rate

    def load(self, target: str, plan_id: str, total_rate: float | None = None) -> Measured:
        """One row's calls from the chosen generator: closed loop (`total_rate` None) or open loop."""
        if self.loadgen == "cpp":
            requests = _request_bytes(plan_id)
            return loadgen.run(target, DISPATCH_METHOD, requests, METADATA, self.clients, self.seconds, total_rate)
        return dispatch_load(target, plan_id, self.clients, self.processes, self.seconds, total_rate)

    def measure_bare(self, label: str) -> float:
        """The same rows against the bare server: what gRPC, the clients and the machine allow now."""
        ctx = mp.get_context("spawn")
        port_queue = ctx.Queue()
        bare = ctx.Process(target=_bare_server, args=(port_queue,), daemon=True)
        bare.start()
        try:
            return self.measure(label, f"127.0.0.1:{port_queue.get(timeout=120)}", "bare")
        finally:
            bare.terminate()
            bare.join()


def report(label: str, measured: Measured) -> None:
    import numpy as np

    ms = np.asarray(measured.latencies_s) * 1e3
    print(
        f"Dispatch, {label}: {measured.rate:,.0f} calls/s; client-side p50 {np.percentile(ms, 50):.1f} ms, "
        f"p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms ({len(ms):,} calls); {measured.generator} "
        f"clients' CPU {measured.client_cpu_s / len(ms) * 1e3:.3f} ms/call; load {load_average()}",
        flush=True,
    )


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _tree_pids(pid: int) -> list[int]:
    """A process and all its descendants (the supervisor, the server, its fronts, Ray and its workers); by
    parent pid (psutil), since /proc/PID/task/TID/children lists only what thread TID started."""
    import psutil

    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return [pid]


def tree_memory_bytes(pid: int) -> int:
    """Proportional set size (PSS) of the process tree (bench/common.py, tree_memory): shared pages (Ray's
    object store, libraries) counted once across the processes that map them."""
    from common import tree_memory  # here, not at the top: the spawned client processes skip its imports

    return sum(pss for _, pss, _ in tree_memory(pid))


def busy_ray_workers(pid: int) -> list[str]:
    """Process titles of the tree's Ray workers that run a task (economics, HiGHS, robustness)."""
    busy = []
    for p in _tree_pids(pid):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and not title.startswith(IDLE_TITLES):
            busy.append(title)
    return busy


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seconds_until_quiet(supervisor: int, server: int, since: float, timeout_s: float = 60.0) -> float:
    """Seconds from `since` (time.monotonic) until no Ray worker of the tree runs a task and the server
    process itself uses under QUIET_CORES of a CPU (its run thread stopped too): the end of the first
    quiet QUIET_WINDOW_S window, an upper bound at that resolution."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before, at = cpu_seconds(server), time.monotonic()
        time.sleep(QUIET_WINDOW_S)
        end = time.monotonic()
        if (cpu_seconds(server) - before) / (end - at) < QUIET_CORES and not busy_ray_workers(supervisor):
            return end - since
    return math.inf


def started(client, job_id: str, stage: str = "scenarios") -> None:
    """Until the job runs and has reached `stage` (its Ray tasks hold the CPUs)."""
    for event in client.watch(job_id, timeout_s=600):
        if event.state == RUNNING and event.progress.stage == stage or event.state >= FINAL_STATES:
            return


def stop_latencies(client, supervisor: int, server: int) -> None:
    """Seconds from a cancel, a passed deadline and a dropped caller until the work has stopped; each
    time once the run's Ray tasks are busy (a stop before any work starts proves nothing)."""
    from protos.hashpivot.v1 import planner_service_pb2 as pb
    from services.client import PlannerError, fleet_message

    fleet = ROOT / "examples" / "fleet.yaml"
    job = client.submit(fleet)
    busy_s = wait_until_busy(supervisor)
    asked = time.monotonic()
    state = client.cancel(job.job_id).state
    ended_s = time.monotonic() - asked
    quiet_s = seconds_until_quiet(supervisor, server, asked)
    print(
        f"  CancelPlanJob of a fleet.yaml job {busy_s:.1f} s into its Ray tasks: state {state} "
        f"(5 = CANCELLED) after {ended_s:.2f} s, work gone after {quiet_s:.2f} s",
        flush=True,
    )
    deadline_s = 8.0  # the plan fits (~4-6 s), its robustness pass does not: the deadline stops that
    sent = time.monotonic()
    try:
        client.optimize(fleet, timeout_s=deadline_s, robustness=BUSY_JOB_ROBUSTNESS)
        outcome = "a plan (the deadline did not pass: nothing to stop)"
    except PlannerError as exc:
        outcome = exc.code.name
    replied_s = time.monotonic() - sent
    quiet_s = seconds_until_quiet(supervisor, server, sent + deadline_s)
    print(
        f"  Optimize fleet.yaml with robustness and a {deadline_s:.0f} s deadline: {outcome} after "
        f"{replied_s:.2f} s, work gone {quiet_s:.2f} s after the deadline",
        flush=True,
    )
    future = client.stub.Optimize.future(pb.OptimizeRequest(fleet=fleet_message(fleet)), metadata=METADATA)
    busy_s = wait_until_busy(supervisor)
    dropped = time.monotonic()
    future.cancel()
    quiet_s = seconds_until_quiet(supervisor, server, dropped)
    print(
        f"  Optimize fleet.yaml dropped by its caller {busy_s:.1f} s into its Ray tasks: "
        f"work gone after {quiet_s:.2f} s",
        flush=True,
    )


def wait_until_busy(supervisor: int, settle_s: float = 2.0, timeout_s: float = 120.0) -> float:
    """Until a Ray worker of the tree runs a task, then `settle_s` more; -> seconds since the task was seen."""
    deadline = time.monotonic() + timeout_s
    while not busy_ray_workers(supervisor) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle_s)
    return settle_s


def max_admitted_request(client, supervisor: int) -> None:
    """The largest scaling of examples/fleet.yaml admission admits at the default limits, run as a job,
    with the server tree's peak memory next to admission's estimate."""
    from optimizer.fleet import load_fleet
    from services.admission import Limits

    fleet, e = largest_admitted(load_fleet(ROOT / "examples" / "fleet.yaml"), Limits())
    baseline = tree_memory_bytes(supervisor)
    job = client.submit(fleet)
    peak, state, begin = baseline, RUNNING, time.monotonic()
    while state < FINAL_STATES:
        peak = max(peak, tree_memory_bytes(supervisor))
        state = client.get(job.job_id)[0].state
        time.sleep(0.5)
    print(
        f"max admitted request: examples/fleet.yaml at {fleet.scenarios.count:,} scenarios x "
        f"{fleet.horizon.n_steps:,} steps ({e.scenario_steps:,} scenario steps of {Limits().max_scenario_steps:,}); "
        f"admission estimate {e.memory_bytes / 2**30:.2f} GiB; server tree PSS peak {peak / 2**30:.2f} GiB "
        f"({(peak - baseline) / 2**30:.2f} GiB above the idle server's {baseline / 2**30:.2f} GiB); "
        f"job state {state} after {time.monotonic() - begin:.0f} s",
        flush=True,
    )


def largest_admitted(fleet, limits):
    """Scale the scenario count up in 10 % steps while admission admits the plan request."""
    from optimizer.fleet import with_overrides
    from services.admission import check, estimate

    while True:
        bigger = with_overrides(fleet, {"scenarios": {"count": int(fleet.scenarios.count * 1.1) + 1}})
        if check(bigger, None, limits):
            return fleet, estimate(fleet)
        fleet = bigger


def machine() -> str:
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / 2**20
    return f"{os.cpu_count()} cores, {mem_gib:.0f} GiB, load average {load_average()}"


def dispatch_rows(rows: Rows, client, target: str, plan_id: str, fronts: int) -> None:
    """hashpivot idle, the bare server, hashpivot while a fleet.yaml job runs, the bare server under that job."""
    print(f"hashpivot serve --dispatch-fronts {fronts}: " + (f"{fronts} front processes" if fronts else "one process"))
    rate = rows.measure("idle server", target, plan_id)
    bare_rate = rows.measure_bare("bare grpc.aio server (fixed reply)")
    print(f"  hashpivot's idle closed-loop rate / the bare server's: {rate / bare_rate:.2f}", flush=True)
    job = busy_job(client)
    rate = rows.measure("fleet.yaml job running", target, plan_id)
    ended = client.get(job.job_id)[0].state != RUNNING
    if ended:  # the rows outlasted it (a slow machine): the bare server gets a job of its own
        print("  (the job ended before the rows did)", flush=True)
        job = busy_job(client)
    bare_rate = rows.measure_bare("bare grpc.aio server, a fleet.yaml job running")  # the job's load alone
    still = client.get(job.job_id)[0].state == RUNNING
    note = "" if still else " (the job ended during the bare rows: they are partly without it)"
    print(f"  hashpivot's closed-loop rate under the job / the bare server's: {rate / bare_rate:.2f}{note}", flush=True)
    if still:
        client.cancel(job.job_id)


def busy_job(client):
    """A fleet.yaml job, once its Ray tasks run."""
    job = client.submit(ROOT / "examples" / "fleet.yaml", robustness=BUSY_JOB_ROBUSTNESS)
    started(client, job.job_id)
    return job


def choose_loadgen(parser: argparse.ArgumentParser, asked: str | None) -> str:
    """--loadgen, or cpp where the generator builds (now, before any row is timed) and python where not."""
    if asked == "python":
        return asked
    try:
        print(f"Dispatch load generator: {loadgen.binary()}", flush=True)
        return "cpp"
    except loadgen.Unavailable as exc:
        if asked == "cpp":
            parser.error(f"--loadgen cpp: {exc}")
        print(f"note: Python clients send the Dispatch calls ({exc})", flush=True)
        return "python"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--processes", type=int, default=6, help="the Python clients' processes")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="the open loop's total calls/s")
    parser.add_argument("--dispatch-only", action="store_true", help="only the Dispatch rows")
    parser.add_argument(
        "--dispatch-fronts", type=int, nargs="+", default=[0, 2], help="the Dispatch rows for each (serve's flag)"
    )
    parser.add_argument("--no-max-request", action="store_true", help="skip the largest admitted request (minutes)")
    parser.add_argument(
        "--loadgen",
        choices=("cpp", "python"),
        help="who sends the Dispatch calls: the compiled generator (the default where it builds) or Python clients",
    )
    args = parser.parse_args()

    rows = Rows(args.clients, args.processes, args.seconds, args.rate, choose_loadgen(parser, args.loadgen))
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for fronts in args.dispatch_fronts:
            with serving(Path(tmp) / f"dispatch-{fronts}.sqlite", fronts) as (_, client, target, plan_id):
                dispatch_rows(rows, client, target, plan_id, fronts)
        if args.dispatch_only:
            return
        with serving(Path(tmp) / "bench.sqlite") as (process, client, _, _):
            print(f"stop latency (target 2 s); machine: {machine()}", flush=True)
            stop_latencies(client, process.pid, server_pid(process.pid))
            if not args.no_max_request:
                max_admitted_request(client, process.pid)
            print(f"machine at the end: {machine()}")


if __name__ == "__main__":
    main()
