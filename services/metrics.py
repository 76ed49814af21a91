"""Prometheus metrics (prometheus_client), served on --metrics-port, and the interceptor that feeds the RPC ones.

hashpivot_rpc_total{method,code}          calls by final status code
hashpivot_rpc_seconds{method}             handler latency (server side)
hashpivot_queue_depth                     plan jobs waiting
hashpivot_jobs_running                    plan jobs running
hashpivot_job_seconds{state}              job run time by final state
hashpivot_solve_seconds                   MIP wall time of stored plans
hashpivot_store_write_errors_total        failed database writes
hashpivot_store_writable                  1 while the store accepts writes
hashpivot_admission_refusals_total{limit} requests refused by admission
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from services.auth import wrap_handler

RPC_TOTAL = Counter("hashpivot_rpc_total", "RPCs by method and status code", ["method", "code"])
RPC_SECONDS = Histogram(
    "hashpivot_rpc_seconds",
    "RPC handler latency, seconds",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
)
QUEUE_DEPTH = Gauge("hashpivot_queue_depth", "plan jobs queued")
JOBS_RUNNING = Gauge("hashpivot_jobs_running", "plan jobs running")
JOB_SECONDS = Histogram(
    "hashpivot_job_seconds", "plan job run time, seconds", ["state"], buckets=(1, 5, 15, 60, 300, 900, 3600, 14400)
)
SOLVE_SECONDS = Histogram("hashpivot_solve_seconds", "MIP solve wall time, seconds", buckets=(0.1, 1, 5, 30, 120, 600))
STORE_WRITE_ERRORS = Counter("hashpivot_store_write_errors_total", "failed database writes")
STORE_WRITABLE = Gauge("hashpivot_store_writable", "1 while the job store accepts writes")
# Registered services hand out one handler per method, AuthInterceptor one per method and caller: far
# fewer than this. A handler made per call by some future service is then measured uncached, not leaked.
MAX_CACHED_HANDLERS = 10_000
ADMISSION_REFUSALS = Counter("hashpivot_admission_refusals_total", "requests refused by admission", ["limit"])


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics over HTTP (loopback by default: metrics name methods and volumes)."""
    start_http_server(port, addr=host)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call; the code is the one the handler ended with.

    The measured handler is made once per handler it wraps (AuthInterceptor hands out one per method
    and caller) with its method's metric children looked up once, not per call."""

    def __init__(self) -> None:
        self._handlers: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return handler
        known = self._handlers.get(id(handler))
        if known is None:  # keyed by identity, the handler kept alive in the value so its id stays its own
            method = details.method.rsplit("/", 1)[-1]
            known = (handler, wrap_handler(handler, lambda b: _measured(b, method)))
            if len(self._handlers) < MAX_CACHED_HANDLERS:
                self._handlers[id(handler)] = known
        return known[1]


def _code_name(context) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def _measured(behavior: Callable, method: str) -> Callable:
    seconds = RPC_SECONDS.labels(method)
    totals: dict[str, Counter] = {}

    def observe(context, start: float) -> None:
        seconds.observe(time.perf_counter() - start)
        try:
            code = _code_name(context)
        except Exception:  # noqa: BLE001 - a metric must never fail a call
            code = "UNKNOWN"
        total = totals.get(code)
        if total is None:
            total = totals[code] = RPC_TOTAL.labels(method, code)
        total.inc()

    if inspect.isasyncgenfunction(behavior):

        async def stream(request, context):
            start = time.perf_counter()
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                observe(context, start)

        return stream

    async def unary(request, context):
        start = time.perf_counter()
        try:
            return await behavior(request, context)
        finally:
            observe(context, start)

    return unary
