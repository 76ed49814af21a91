"""Dispatch fronts: processes that answer Dispatch on the server's own port, beside the main server.

Why: a grpc.aio server runs the Python of every call on one event-loop thread. A Dispatch call costs
that thread ~0.4 ms (token, metrics, decision, reply), so 2,000 calls/s from fleet automation need
most of a core on one thread, the thread that also drives the plan jobs, and callers queue behind it
(docs/service.md, "Dispatch under load"). Fronts spread the calls over processes, each with its own
thread and interpreter lock.

How (`hashpivot serve --dispatch-fronts N`):
- The main server listens only on a Unix socket in a directory only its user may enter. N fronts bind
  the public address with SO_REUSEPORT (gRPC's default on Linux), so the kernel spreads incoming
  connections over them; a connection stays with the front that accepted it.
- A front answers Dispatch itself with the main server's handler and per-plan tables
  (services/dispatcher.py), reading the plans from the database read-only (store.PlanReader).
- Every other call (PlannerService, SweepService, health, reflection) is forwarded as it came, bytes in
  and bytes out, with the caller's metadata and remaining deadline, to the main server, which
  authenticates and runs it as if called directly; its status, message, details (google.rpc.Status)
  and trailing metadata come back unchanged, and a call the caller cancels is cancelled upstream.
- A front checks tokens, roles and TLS as the main server does (the same tokens and certificate), so
  a call without a valid token stops at the front.
- A plan deleted (DeletePlan, retention) stops being dispatched by a front within RECHECK_S: the
  front follows the database's data_version and drops the tables of plans no longer stored.
- The main server starts the fronts once it serves, starts a new one when one dies, and stops them
  (they drain) before itself; a front dies with the main server (PR_SET_PDEATHSIG).
- Metrics: front k (1..N) serves its own /metrics on --metrics-port + k: the calls it answered and
  the calls it forwarded (which the main server's /metrics counts again, as it ran them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from protos.hashpivot.v1 import planner_service_pb2, sweep_service_pb2
from services import metrics
from services.auth import Authenticator, AuthInterceptor, Caller, Role
from services.dispatcher import PlanDispatcher
from services.logs import configure_logging
from services.metrics import MetricsInterceptor
from services.serving import MESSAGE_OPTIONS, ServerConfigError, TlsFiles, freeze_heap
from services.store import PlanReader
from services.supervisor import die_with_parent

log = logging.getLogger(__name__)

MAX_FRONTS = 16
RECHECK_S = 1.0  # how soon a front stops dispatching a deleted plan
START_TIMEOUT_S = 120.0  # a front imports numpy, grpc and the planning core: seconds on a loaded machine
STOP_MARGIN_S = 5.0  # after the grace period, before a front that has not stopped is killed
DISPATCH_METHOD = "/hashpivot.v1.PlannerService/Dispatch"
_FORWARDED_MODULES = (planner_service_pb2, sweep_service_pb2, health_pb2, reflection_pb2)
# metadata gRPC sets for each hop itself; the rest (authorization, x-request-id, ...) is the caller's
_HOP_METADATA = frozenset({"user-agent", "content-type", "te", "grpc-accept-encoding", "grpc-encoding"})


@dataclass
class FrontConfig:
    host: str
    port: int  # 0: any free port (the first front's; the others bind the one it got)
    db_path: str
    upstream: str  # the main server's private address, unix:/...
    tokens: dict[str, list[str]] | None  # sha256 hex -> [caller, role, tenant]; None: insecure
    tls: list[str | None] | None = None  # [cert, key, client CA]
    metrics_port: int | None = None
    grace_s: float = 10.0
    log_format: str = "text"
    parent_pid: int = 0  # the main server: the front ends when it does

    def authenticator(self) -> Authenticator:
        if self.tokens is None:
            return Authenticator(None)
        callers = {digest: Caller(name, Role(role), tenant) for digest, (name, role, tenant) in self.tokens.items()}
        return Authenticator(callers)

    def credentials(self) -> grpc.ServerCredentials | None:
        if self.tls is None:
            return None
        cert, key, client_ca = self.tls
        return TlsFiles(Path(cert), Path(key), Path(client_ca) if client_ca else None).credentials()


def front_config(
    host: str, port: int, db_path, upstream: str, tokens: dict[str, Caller] | None, tls: TlsFiles | None, **rest
) -> FrontConfig:
    """A FrontConfig from the main server's settings (tokens as hashes, never tokens)."""
    return FrontConfig(
        host=host,
        port=port,
        db_path=str(db_path),
        upstream=upstream,
        tokens=None if tokens is None else {d: [c.name, c.role.value, c.tenant] for d, c in tokens.items()},
        tls=None if tls is None else [str(tls.cert), str(tls.key), str(tls.client_ca) if tls.client_ca else None],
        **rest,
    )


# ---------------------------------------------------------------------------------------------
# forwarding: every method but Dispatch, unchanged, to the main server


def method_kinds() -> dict[str, tuple[bool, bool]]:
    """Full method name -> (client streaming, server streaming) of every service the server has."""
    kinds = {}
    for module in _FORWARDED_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                kinds[f"/{service.full_name}/{method.name}"] = (method.client_streaming, method.server_streaming)
    return kinds


class Forwarder(grpc.GenericRpcHandler):
    """Serves every known method except `skip` by calling the same method on `channel`, as bytes."""

    def __init__(self, channel: grpc.aio.Channel, skip: frozenset[str] = frozenset()):
        self._handlers = {
            method: _forwarding_handler(channel, method, *kind)
            for method, kind in method_kinds().items()
            if method not in skip
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)


# (client streaming, server streaming) -> the channel's multi-callable and the server's handler of that kind
_KINDS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _forwarding_handler(channel: grpc.aio.Channel, method: str, client_streaming: bool, server_streaming: bool):
    """A handler of raw bytes (no (de)serializers on either side) that relays one call upstream; the request
    is a message or, for client streaming, the iterator of them, handed on as it is."""
    callable_name, make_handler = _KINDS[(client_streaming, server_streaming)]
    upstream = getattr(channel, callable_name)(method)
    if server_streaming:

        async def stream(request, context):
            async for response in _relay_stream(upstream(request, **_call_options(context)), context):
                yield response

        return make_handler(stream)

    async def unary(request, context):
        return await _relay_unary(upstream(request, **_call_options(context)), context)

    return make_handler(unary)


def _call_options(context: grpc.aio.ServicerContext) -> dict:
    metadata = tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if key not in _HOP_METADATA and not key.startswith(":")
    )
    return {"metadata": metadata, "timeout": context.time_remaining()}


async def _relay_unary(call, context: grpc.aio.ServicerContext):
    try:
        response = await call
    except grpc.aio.AioRpcError as exc:
        await _abort_as(context, exc)
    finally:
        call.cancel()  # a no-op once the call ended; cancels it when our caller went away
    context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
    return response


async def _relay_stream(call, context: grpc.aio.ServicerContext):
    try:
        async for response in call:
            yield response
    except grpc.aio.AioRpcError as exc:
        await _abort_as(context, exc)
    finally:
        call.cancel()
    context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))


async def _abort_as(context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError) -> None:
    """End our call with the upstream call's status, message and trailing metadata (its rich details)."""
    trailing = tuple((k, v) for k, v in error.trailing_metadata() or () if k not in _HOP_METADATA)
    await context.abort(error.code(), error.details() or "", trailing)


# ---------------------------------------------------------------------------------------------
# one front process


def _dispatch_handler(dispatcher: PlanDispatcher) -> grpc.GenericRpcHandler:
    service, method = DISPATCH_METHOD.strip("/").split("/")
    handler = grpc.unary_unary_rpc_method_handler(
        dispatcher.Dispatch,
        request_deserializer=planner_service_pb2.DispatchRequest.FromString,
        response_serializer=planner_service_pb2.DispatchResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(service, {method: handler})


async def serve_front(config: FrontConfig, on_bound: Callable[[int], None]) -> None:
    """Serve until SIGTERM or SIGINT, then drain for the grace period; `on_bound(port)` once serving."""
    reader = PlanReader(config.db_path)
    dispatcher = PlanDispatcher(reader.get_plan)
    channel = grpc.aio.insecure_channel(config.upstream, options=MESSAGE_OPTIONS)
    server = grpc.aio.server(
        interceptors=[MetricsInterceptor(), AuthInterceptor(config.authenticator())], options=MESSAGE_OPTIONS
    )
    server.add_generic_rpc_handlers((_dispatch_handler(dispatcher), Forwarder(channel, frozenset({DISPATCH_METHOD}))))
    address = f"{config.host}:{config.port}"
    credentials = config.credentials()
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if not port:
        raise OSError(f"cannot bind {address}")
    if config.metrics_port is not None:
        metrics.serve_metrics(config.metrics_port)
    await server.start()
    recheck = asyncio.create_task(_follow_deletions(PlanReader(config.db_path), dispatcher))
    freeze_heap()
    on_bound(port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    recheck.cancel()
    await server.stop(config.grace_s)
    await channel.close()
    reader.close()


async def _follow_deletions(reader: PlanReader, dispatcher: PlanDispatcher) -> None:
    """Its own connection, read off the event loop: a read that waits on the main server's writes (a
    checkpoint, a busy lock: up to the busy timeout) must not hold up the Dispatch calls meanwhile."""
    seen = await asyncio.to_thread(reader.data_version)
    while True:
        await asyncio.sleep(RECHECK_S)
        version = await asyncio.to_thread(reader.data_version)
        if version != seen:
            seen = version
            stored = await asyncio.to_thread(reader.existing, dispatcher.cached_ids())
            dispatcher.keep_only(stored)


def main() -> int:
    config = FrontConfig(**json.loads(sys.stdin.read()))
    # Here, not as the spawn's preexec_fn (a fork of the threaded server upsets gRPC). The signal comes when
    # the thread that spawned us ends: the server's executor threads, which live until the server stops.
    die_with_parent()
    if os.getppid() != config.parent_pid:  # the server ended before the line above took effect
        return 1
    configure_logging(config.log_format)

    def announce(port: int) -> None:
        print(f"port {port}", flush=True)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nobody reads the pipe now: stray output to the log
        log.info("Dispatch front serving on %s:%d, forwarding the rest to %s", config.host, port, config.upstream)

    asyncio.run(serve_front(config, announce))
    return 0


# ---------------------------------------------------------------------------------------------
# the main server's side: start, watch and stop its fronts


class Fronts:
    """The main server's front processes (`count` of them, on one public port)."""

    def __init__(self, config: FrontConfig, count: int):
        self._config = config
        self._procs: list[subprocess.Popen] = []
        self._count = count

    def start(self) -> int:
        """Start every front; returns the public port they share."""
        first, port = self._spawn(0, self._config.port)
        self._config.port = port
        self._procs = [first] + [self._spawn(k, port)[0] for k in range(1, self._count)]
        return port

    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    def revive(self) -> None:
        """Start a new front in place of each one that died."""
        for k, proc in enumerate(self._procs):
            if proc.poll() is not None:
                log.error("Dispatch front %d exited (code %s): starting another", k + 1, proc.returncode)
                with contextlib.suppress(ServerConfigError):  # logged; tried again at the next check
                    self._procs[k] = self._spawn(k, self._config.port)[0]

    def stop(self, grace_s: float) -> None:
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(grace_s + STOP_MARGIN_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _spawn(self, index: int, port: int) -> tuple[subprocess.Popen, int]:
        metrics_port = None if self._config.metrics_port is None else self._config.metrics_port + index + 1
        config = dataclasses.replace(self._config, port=port, metrics_port=metrics_port, parent_pid=os.getpid())
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.front"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        proc.stdin.write(json.dumps(dataclasses.asdict(config)))
        proc.stdin.close()
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
        line = proc.stdout.readline() if ready else ""
        proc.stdout.close()
        if not line.startswith("port "):
            proc.kill()
            raise ServerConfigError(
                f"Dispatch front {index + 1} did not start on {config.host}:{port} (its error is logged above)"
            )
        return proc, int(line.split()[1])


if __name__ == "__main__":
    sys.exit(main())
