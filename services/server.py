"""`hashpivot serve`: the gRPC server (grpc.aio) with health checking, reflection and a job queue.

- Standard gRPC health checking (grpc.health.v1.Health) for "" and "hashpivot.v1.PlannerService",
  and server reflection, so grpcurl, grpc_health_probe and load balancers work unchanged.
- SIGTERM / SIGINT: health turns NOT_SERVING, new calls are refused, in-flight calls get a grace
  period to finish, running jobs stop and go back to the queue (a server started on the same
  database runs them again).
- Ray: joins the cluster at --ray-address / $RAY_ADDRESS, else starts an embedded local Ray; an
  already initialised Ray (tests, notebooks) is reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import ray
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.hashpivot.v1 import planner_service_pb2_grpc
from services.runner import JobRunner
from services.servicer import SERVICE_NAME, PlannerServicer
from services.store import JobStore, default_db_path
from solvers.ray_pool import ensure_ray
from solvers.runs import new_relay

log = logging.getLogger(__name__)

PORT_ENV = "HASHPIVOT_PORT"
DEFAULT_PORT = 50051
DEFAULT_GRACE_S = 10.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # plans of large fleets list every rack id
RUN_THREADS = 32  # runs wait on Ray in threads: enough that Optimize calls do not queue behind jobs


def default_port() -> int:
    return int(os.environ.get(PORT_ENV, DEFAULT_PORT))


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = field(default_factory=default_port)  # 0: any free port
    db_path: Path = field(default_factory=default_db_path)
    ray_address: str | None = None
    max_concurrent_jobs: int = 1
    grace_s: float = DEFAULT_GRACE_S


class PlannerServer:
    """The server and everything it owns: store, job runner, progress relay, health."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.port: int | None = None

    async def start(self) -> int:
        """Bind, start serving and working the job queue; returns the bound port."""
        config = self.config
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=RUN_THREADS, thread_name_prefix="hashpivot-run")
        )
        await asyncio.to_thread(ensure_ray, config.ray_address)
        self.store = JobStore(config.db_path)
        self.relay = new_relay()
        self.runner = JobRunner(self.store, config.max_concurrent_jobs, self.relay)
        self.servicer = PlannerServicer(self.store, self.runner, self.relay)
        self.runner.on_plan = self.servicer.remember_plan
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        planner_service_pb2_grpc.add_PlannerServiceServicer_to_server(self.servicer, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection((SERVICE_NAME, health_name, reflection.SERVICE_NAME), self.server)
        self.port = self.server.add_insecure_port(f"{config.host}:{config.port}")
        if not self.port:
            raise OSError(f"cannot bind {config.host}:{config.port}")
        await self.server.start()
        await self.runner.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving on %s:%d (database %s)", config.host, self.port, config.db_path)
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight ones finish, re-queue running jobs."""
        grace_s = self.config.grace_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        jobs_stopped = asyncio.create_task(self.runner.shutdown(grace_s))
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
