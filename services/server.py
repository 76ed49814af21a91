"""`hashpivot serve`: the gRPC server (grpc.aio) with authentication, health checking, reflection and a job queue.

- Identity: bearer tokens and roles (services/auth.py) checked by an interceptor on every call;
  optional TLS (--tls-cert/--tls-key) and mTLS (--client-ca). Binds 127.0.0.1 unless told otherwise.
  Without tokens the server refuses to start unless --insecure (then every caller is an anonymous
  admin, and a warning says so).
- Standard gRPC health checking (grpc.health.v1.Health) for "" and "hashpivot.v1.PlannerService",
  and server reflection, so grpcurl, grpc_health_probe and load balancers work unchanged. Health is
  NOT_SERVING while the store cannot write.
- Storage: the database is opened and checked before Ray starts (services/store.py); a retention
  sweep runs at start-up and hourly.
- SIGTERM / SIGINT: health turns NOT_SERVING, new calls are refused, in-flight calls get a grace
  period to finish, running jobs stop and go back to the queue (a server started on the same
  database runs them again).
- Ray: joins the cluster at --ray-address / $RAY_ADDRESS, else starts an embedded local Ray bound
  to loopback, its workers at a lower CPU priority than the server (solvers/ray_pool.py), so that
  a running plan does not starve Dispatch calls; an already initialised Ray (tests, notebooks) is reused.
- GC: once started, the heap is frozen out of Python's collector (freeze_heap), so a full collection
  no longer stalls every call in flight for ~0.1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import ray
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.hashpivot.v1 import planner_service_pb2_grpc, sweep_service_pb2_grpc
from services import metrics
from services.admission import Limits
from services.auth import Authenticator, AuthInterceptor, Caller
from services.errors import StoreWriteError
from services.front import Fronts, front_config
from services.metrics import MetricsInterceptor
from services.runner import JobRunner
from services.servicer import SERVICE_NAME, PlannerServicer
from services.serving import MESSAGE_OPTIONS, ServerConfigError, TlsFiles, freeze_heap
from services.store import JobStore, default_db_path
from services.sweep_servicer import SERVICE_NAME as SWEEP_SERVICE_NAME
from services.sweep_servicer import SweepServicer
from solvers.ray_pool import ensure_ray
from solvers.runs import new_relay, ping

log = logging.getLogger(__name__)

PORT_ENV = "HASHPIVOT_PORT"
DEFAULT_PORT = 50051
DEFAULT_GRACE_S = 10.0
DEFAULT_HOST = "127.0.0.1"  # reachable from this machine only; a network bind is a deliberate --host
HEALTH_POLL_S = 2.0  # how often an unwritable store is probed (and health updated)
RETENTION_EVERY_S = 3600.0
RAY_PROBE_EVERY_S = 10.0
RAY_PROBE_TIMEOUT_S = 10.0
RAY_PROBE_FAILURES = 3  # consecutive failed probes before Ray counts as lost (a busy machine is slow, not dead)
RAY_LOST_EXIT_CODE = 75  # EX_TEMPFAIL: the supervisor (services/supervisor.py) starts a new server and Ray
RUN_THREADS = 32  # runs wait on Ray in threads: enough that Optimize calls do not queue behind jobs


def default_port() -> int:
    return int(os.environ.get(PORT_ENV, DEFAULT_PORT))


@dataclass
class Retention:
    max_age_days: float | None = None
    max_plans: int | None = None
    max_jobs: int | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.max_age_days, self.max_plans, self.max_jobs))


@dataclass
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = field(default_factory=default_port)  # 0: any free port
    db_path: Path = field(default_factory=default_db_path)
    ray_address: str | None = None
    max_concurrent_jobs: int = 1
    grace_s: float = DEFAULT_GRACE_S
    tokens: dict[str, Caller] | None = None  # sha256 hex -> caller; None with insecure
    insecure: bool = False  # no authentication, plain TCP: for a laptop, never a network
    tls: TlsFiles | None = None
    limits: Limits = field(default_factory=Limits)
    retention: Retention = field(default_factory=Retention)
    metrics_port: int | None = None
    dispatch_fronts: int = 0  # > 0: Dispatch served by this many processes on the port (services/front.py)
    log_format: str = "text"  # the fronts' logs, as the server's
    max_crashes: int = 3
    crash_backoff_s: float = 5.0
    exit_on_ray_loss: bool = True  # False (tests in one process): health NOT_SERVING and a log line only

    def authenticator(self) -> Authenticator:
        if self.insecure:
            log.warning(
                "INSECURE: no authentication%s; every caller is an anonymous admin",
                "" if self.tls else " and no TLS",
            )
            return Authenticator(None)
        if not self.tokens:
            raise ServerConfigError(
                "no tokens: give --tokens-file or $HASHPIVOT_TOKENS_FILE / $HASHPIVOT_TOKENS "
                "(hashpivot token makes one), or --insecure for an unauthenticated local server"
            )
        if self.tls is None and not _is_loopback(self.host):
            log.warning("binding %s without TLS: bearer tokens cross the network in clear text", self.host)
        return Authenticator(self.tokens)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


class PlannerServer:
    """The server and everything it owns: store, job runner, progress relay, health."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.port: int | None = None

    async def start(self) -> int:
        """Bind, start serving and working the job queue; returns the bound port."""
        config = self.config
        authenticator = config.authenticator()
        credentials = config.tls.credentials() if config.tls else None
        self.store = JobStore(config.db_path)  # checked before Ray starts: a bad file fails fast, naming its path
        self._sweep()
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=RUN_THREADS, thread_name_prefix="hashpivot-run")
        )
        await asyncio.to_thread(lambda: ensure_ray(config.ray_address, yield_to_serving=True))
        self.relay = new_relay()
        self.runner = JobRunner(
            self.store,
            config.max_concurrent_jobs,
            self.relay,
            limits=config.limits,
            max_crashes=config.max_crashes,
            crash_backoff_s=config.crash_backoff_s,
        )
        self.servicer = PlannerServicer(self.store, self.runner, self.relay, config.limits)
        self.runner.on_plan = self.servicer.dispatcher.remember
        self.server = grpc.aio.server(
            interceptors=[MetricsInterceptor(), AuthInterceptor(authenticator)],  # metrics count refusals too
            options=MESSAGE_OPTIONS,
        )
        planner_service_pb2_grpc.add_PlannerServiceServicer_to_server(self.servicer, self.server)
        sweep_service_pb2_grpc.add_SweepServiceServicer_to_server(SweepServicer(), self.server)  # issue 11
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        services = (SERVICE_NAME, SWEEP_SERVICE_NAME, health_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(services, self.server)
        self._bind(credentials)
        if config.metrics_port is not None:
            metrics.serve_metrics(config.metrics_port)
        await self.server.start()
        if self.fronts is not None:
            self.port = await asyncio.to_thread(self.fronts.start)
        await self.runner.start()
        await self._set_health(True)
        self._maintenance = asyncio.create_task(self._maintain())
        freeze_heap()
        log.info(
            "serving on %s:%d (%s%s, database %s)",
            config.host,
            self.port,
            "TLS" if credentials else "plain TCP",
            f", through {config.dispatch_fronts} Dispatch front processes" if self.fronts else "",
            config.db_path,
        )
        return self.port

    def _bind(self, credentials: grpc.ServerCredentials | None) -> None:
        """The public address; with fronts, a private Unix socket only the fronts call (services/front.py)."""
        config = self.config
        self.fronts = None
        if config.dispatch_fronts:
            self._private_dir = tempfile.mkdtemp(prefix="hashpivot-")  # mode 0700: this user only
            upstream = self.private_address = f"unix:{self._private_dir}/server.sock"
            if not self.server.add_insecure_port(upstream):
                raise OSError(f"cannot bind {upstream}")
            tokens = None if config.insecure else config.tokens
            rest = {"metrics_port": config.metrics_port, "grace_s": config.grace_s, "log_format": config.log_format}
            settings = front_config(config.host, config.port, config.db_path, upstream, tokens, config.tls, **rest)
            self.fronts = Fronts(settings, config.dispatch_fronts)
            return
        address = f"{config.host}:{config.port}"
        if credentials is not None:
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot bind {address}")

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        metrics.STORE_WRITABLE.set(1 if serving else 0)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def _maintain(self) -> None:
        """Follow the store's writability with health, store outcomes that waited, sweep retention hourly,
        and leave (for the supervisor to restart) when Ray is lost."""
        serving, since_sweep, since_probe, ray_failures = True, 0.0, 0.0, 0
        while True:
            await asyncio.sleep(HEALTH_POLL_S)
            since_sweep += HEALTH_POLL_S
            since_probe += HEALTH_POLL_S
            if self.fronts is not None:
                await asyncio.to_thread(self.fronts.revive)
            if since_probe >= RAY_PROBE_EVERY_S:
                since_probe = 0.0
                ray_failures = 0 if await asyncio.to_thread(self._ray_answers) else ray_failures + 1
                if ray_failures >= RAY_PROBE_FAILURES:
                    await self._ray_lost()
            writable = self.store.writable or self.store.probe_write()
            if writable and self.runner.flush_pending():
                writable = False
            metrics.STORE_WRITE_ERRORS.inc(self.store.write_errors - getattr(self, "_errors_seen", 0))
            self._errors_seen = self.store.write_errors
            if writable != serving:
                log.warning("store %s: health %s", self.config.db_path, "SERVING" if writable else "NOT_SERVING")
                await self._set_health(writable)
                serving = writable
            if since_sweep >= RETENTION_EVERY_S:
                since_sweep = 0.0
                self._sweep()

    def _ray_answers(self) -> bool:
        try:
            ray.get(ping.remote(), timeout=RAY_PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure to reach Ray counts
            log.warning("Ray did not answer a probe: %s", type(exc).__name__)
            return False
        return True

    async def _ray_lost(self) -> None:
        """Ray cannot be reached: say so, stop answering, and exit for a fresh server and Ray.
        Running jobs stay RUNNING in the store; the next server re-queues them (counting a crash)."""
        log.error("Ray is lost (%d probes failed): exiting for the supervisor to restart", RAY_PROBE_FAILURES)
        await self._set_health(False)
        if self.config.exit_on_ray_loss:
            logging.shutdown()
            os._exit(RAY_LOST_EXIT_CODE)  # not sys.exit: threads blocked in Ray calls would keep the process alive

    def _sweep(self) -> None:
        retention = self.config.retention
        if not retention.active:
            return
        age_s = None if retention.max_age_days is None else retention.max_age_days * 86400
        with contextlib.suppress(StoreWriteError):  # health reports it; the next sweep retries
            plans, jobs = self.store.sweep(age_s, retention.max_plans, retention.max_jobs)
            if plans or jobs:
                log.info("retention: deleted %d plan(s) and %d finished job(s)", plans, jobs)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight ones finish, re-queue running jobs."""
        grace_s = self.config.grace_s if grace_s is None else grace_s
        self._maintenance.cancel()
        await self.health.enter_graceful_shutdown()
        jobs_stopped = asyncio.create_task(self.runner.shutdown(grace_s))
        if self.fronts is not None:  # first: the calls they forward in their grace period need this server
            await asyncio.to_thread(self.fronts.stop, grace_s)
            shutil.rmtree(self._private_dir, ignore_errors=True)
        await self.server.stop(grace_s)
        await jobs_stopped
        self.store.close()
        with contextlib.suppress(Exception):  # Ray may already be down at interpreter exit
            ray.kill(self.relay)


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    server = PlannerServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight calls (grace %.0f s), re-queueing running jobs", config.grace_s)
    await server.stop()
    log.info("stopped")
