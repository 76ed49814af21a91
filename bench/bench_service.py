"""Dispatch under load: throughput and client-side p50/p99 from 30 concurrent clients on loopback.

    .venv/bin/python bench/bench_service.py [--clients 30] [--processes 6] [--seconds 10] [--max-request]

Starts `hashpivot serve` as its own process (embedded Ray, temporary database, bearer-token auth on,
as in production), plans examples/tiny.yaml, then runs `--clients` Dispatch clients (threads spread
over `--processes` processes, so the Python clients are not all behind one GIL), each with its own
channel and token, sending back-to-back calls for `--seconds`:
1. idle server;
2. while a plan job of examples/fleet.yaml (with robustness) runs on the same server.
Prints calls/s and client-side p50/p99/max per phase. With --max-request, also submits the largest
request admission lets through (scaled from examples/fleet.yaml) and prints the server process
tree's peak RSS while it runs (slow: minutes, several GB).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = "bench-service-token"


def start_server(db: Path) -> tuple[subprocess.Popen, str]:
    from services.auth import Role, token_line

    hashpivot = str(Path(sys.executable).parent / "hashpivot")
    env = {**os.environ, "HASHPIVOT_TOKENS": token_line(TOKEN, "bench", Role.ADMIN)}
    process = subprocess.Popen(
        [hashpivot, "serve", "--port", "0", "--db", str(db), "--max-jobs", "1"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    for line in process.stderr:
        found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
        if found:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe drained
            return process, f"127.0.0.1:{found.group(1)}"
    raise RuntimeError("the server did not start")


def _client_thread(target: str, plan_id: str, start_at: float, stop_at: float, out: list[float], seed: int) -> None:
    import grpc

    from protos.hashpivot.v1 import planner_service_pb2 as pb
    from protos.hashpivot.v1 import planner_service_pb2_grpc

    metadata = (("authorization", f"Bearer {TOKEN}"),)
    prices = [30.0 + (seed * 7 + k) % 90 for k in range(64)]
    with grpc.insecure_channel(target) as channel:
        stub = planner_service_pb2_grpc.PlannerServiceStub(channel)
        requests = [
            pb.DispatchRequest(
                plan_id=plan_id, power_price_usd_per_mwh_by_site={"texas": p}, hashprice_usd_per_ph_day=35
            )
            for p in prices
        ]
        stub.Dispatch(requests[0], metadata=metadata, timeout=10)  # connect before the clock starts
        time.sleep(max(0.0, start_at - time.time()))
        k = 0
        while time.time() < stop_at:
            begin = time.perf_counter()
            stub.Dispatch(requests[k % len(requests)], metadata=metadata, timeout=10)
            out.append(time.perf_counter() - begin)
            k += 1


def _client_process(target: str, plan_id: str, threads: int, start_at: float, stop_at: float, first: int, queue):
    results: list[list[float]] = [[] for _ in range(threads)]
    workers = [
        threading.Thread(target=_client_thread, args=(target, plan_id, start_at, stop_at, results[i], first + i))
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put([x for r in results for x in r])


def dispatch_load(target: str, plan_id: str, clients: int, processes: int, seconds: float) -> tuple[float, list[float]]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 3.0  # every process imported and connected
    stop_at = start_at + seconds
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    procs = [
        ctx.Process(target=_client_process, args=(target, plan_id, n, start_at, stop_at, sum(per[:i]), queue))
        for i, n in enumerate(per)
        if n
    ]
    for p in procs:
        p.start()
    latencies = [x for _ in procs for x in queue.get()]
    for p in procs:
        p.join()
    return len(latencies) / seconds, latencies


def report(label: str, rate: float, latencies: list[float]) -> None:
    import numpy as np

    ms = np.asarray(latencies) * 1e3
    print(
        f"Dispatch, {label}: {rate:,.0f} calls/s; client-side p50 {np.percentile(ms, 50):.1f} ms, "
        f"p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms ({len(ms):,} calls)",
        flush=True,
    )


def tree_rss_bytes(pid: int) -> int:
    """RSS of a process and all its descendants (the server, its Ray and workers), from /proc."""
    total, frontier, seen = 0, [pid], set()
    while frontier:
        p = frontier.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as f:
                frontier += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def max_admitted_request(client, pid: int) -> None:
    from optimizer.fleet import load_fleet, with_overrides
    from services.admission import Limits, estimate

    fleet = load_fleet(ROOT / "examples" / "fleet.yaml")
    limits, count = Limits(), fleet.scenarios.count
    while True:  # the largest scenario count admission admits, in steps of 10 %
        bigger = with_overrides(fleet, {"scenarios": {"count": int(count * 1.1)}})
        e = estimate(bigger)
        if e.scenario_steps > limits.max_scenario_steps or e.memory_bytes > limits.max_memory_bytes:
            break
        fleet, count = bigger, bigger.scenarios.count
    e = estimate(fleet)
    job = client.submit(fleet)
    peak = 0
    while True:
        peak = max(peak, tree_rss_bytes(pid))
        state = client.get(job.job_id)[0].state
        if state >= 3:  # a final PlanJobState
            break
        time.sleep(0.5)
    print(
        f"max admitted request: {count:,} scenarios x {fleet.horizon.n_steps:,} steps; estimate "
        f"{e.memory_bytes / 2**30:.2f} GiB; peak RSS of the server tree {peak / 2**30:.2f} GiB; final state {state}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-request", action="store_true")
    args = parser.parse_args()

    from services.client import PlannerClient

    with tempfile.TemporaryDirectory() as tmp:
        process, target = start_server(Path(tmp) / "bench.sqlite")
        try:
            with PlannerClient(target, timeout_s=600, token=TOKEN) as client:
                plan_id = client.optimize(ROOT / "examples" / "tiny.yaml").plan_id
                rate, latencies = dispatch_load(target, plan_id, args.clients, args.processes, args.seconds)
                report(f"{args.clients} clients, idle server", rate, latencies)
                job = client.submit(ROOT / "examples" / "fleet.yaml", robustness={})
                for event in client.watch(job.job_id, timeout_s=600):
                    if event.state == 2:  # RUNNING
                        break
                rate, latencies = dispatch_load(target, plan_id, args.clients, args.processes, args.seconds)
                still = client.get(job.job_id)[0].state == 2
                report(f"{args.clients} clients, fleet.yaml job running{'' if still else ' (job ended early)'}",
                       rate, latencies)  # fmt: skip
                client.cancel(job.job_id)
                if args.max_request:
                    max_admitted_request(client, process.pid)
        finally:
            process.terminate()
            process.wait(60)


if __name__ == "__main__":
    main()
