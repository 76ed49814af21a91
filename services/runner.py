"""The runner that works the plan-job queue on the server's event loop (the store is services/store.py).

It claims queued jobs up to `max_concurrent_jobs`, runs each in a worker thread (solvers/runs.py),
relays progress to watchers, and stops runs on cancel or shutdown. All database access happens on
the event-loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from optimizer.fleet import Fleet
from optimizer.robustness import RobustnessSettings
from services.errors import ServiceError, failed_precondition, not_found, to_service_error
from services.store import JobRecord, JobState, JobStore, new_id
from solvers.diagnose import Commitments
from solvers.runs import STOP_CANCELLED, STOP_SHUTDOWN, ProgressSnapshot, RunControl, RunStopped, run_plan

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 1.0  # progress is persisted at most this often (state changes always)
WATCH_QUEUE_SIZE = 16  # per watcher; a slow watcher skips intermediate events, never the last


@dataclass
class _ActiveJob:
    control: RunControl
    task: asyncio.Task | None = None
    last_write: float = 0.0


@dataclass
class JobRunner:
    """Works the queue on the running event loop. `on_plan` hears every plan a job stores."""

    store: JobStore
    max_concurrent_jobs: int = 1
    relay: Any = None  # solvers.runs.ProgressRelay handle, for MIP progress
    on_plan: Any = None  # callable(plan_id, fleet, plan)
    _active: dict[str, _ActiveJob] = field(default_factory=dict)
    _watchers: dict[str, set[asyncio.Queue]] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _closing: bool = False
    _dispatcher: asyncio.Task | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        requeued = self.store.requeue_unfinished()
        if requeued:
            log.info("re-queued %d job(s) left unfinished by the previous server", requeued)
        self._dispatcher = asyncio.create_task(self._dispatch_loop())

    async def shutdown(self, grace_s: float) -> None:
        """Stop claiming jobs; running ones stop and go back to the queue for the next server."""
        self._closing = True
        self._wake.set()
        for active in self._active.values():
            active.control.stop(STOP_SHUTDOWN)
        tasks = [a.task for a in self._active.values() if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for job_id in list(self._watchers):  # watch streams end now rather than at the grace deadline
            self._publish_view(job_id)
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher

    # queries

    def view(self, job_id: str, snapshot: ProgressSnapshot | None = None) -> JobRecord | None:
        """The job, with live progress while it runs (`snapshot`, else the run's latest)."""
        job = self.store.get_job(job_id)
        active = self._active.get(job_id)
        if job is not None and active is not None and job.state is JobState.RUNNING:
            job = dataclasses.replace(job, progress=snapshot or active.control.snapshot)
        return job

    async def submit(
        self,
        fleet: Fleet,
        commitments: Commitments,
        request_id: str = "",
        robustness: RobustnessSettings | None = None,
    ) -> JobRecord:
        job, created = self.store.create_job(fleet, commitments, request_id, robustness)
        if created:
            self._wake.set()
        return job

    async def cancel(self, job_id: str, wait_s: float) -> JobRecord:
        """Cancel a queued job at once, or stop a running one and wait (up to wait_s) until it has stopped."""
        job = self.store.get_job(job_id)
        if job is None:
            raise not_found("job", job_id)
        if job.state is JobState.CANCELLED:
            return job
        if job.state.final:
            raise failed_precondition(
                f"job {job_id} already {job.state.value}; only a queued or running job can be cancelled"
            )
        if self.store.cancel_queued(job_id):
            self._publish_view(job_id)
            return self.view(job_id)
        active = self._active.get(job_id)
        self.store.request_cancel(job_id)
        if active is not None:
            active.control.stop(STOP_CANCELLED)
            if active.task is not None:
                await asyncio.wait([active.task], timeout=wait_s)
        return self.view(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        """The job now, then at every change, until its final state."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=WATCH_QUEUE_SIZE)
        self._watchers.setdefault(job_id, set()).add(queue)
        try:
            job = self.view(job_id)
            if job is None:
                raise not_found("job", job_id)
            yield job
            while not job.state.final:
                if self._closing and job_id not in self._active:
                    raise ServiceError(
                        grpc.StatusCode.UNAVAILABLE,
                        "server shutting down; the job is queued and resumes when a server starts on its database",
                    )
                job = await queue.get()
                yield job
        finally:
            self._watchers[job_id].discard(queue)
            if not self._watchers[job_id]:
                del self._watchers[job_id]

    # internals

    async def _dispatch_loop(self) -> None:
        while not self._closing:
            while len(self._active) < self.max_concurrent_jobs and not self._closing:
                job = self.store.claim_next()
                if job is None:
                    break
                self._launch(job)
            await self._wake.wait()
            self._wake.clear()

    def _launch(self, job: JobRecord) -> None:
        loop = self._loop

        def on_progress(snapshot: ProgressSnapshot) -> None:  # called from the run's thread
            loop.call_soon_threadsafe(self._on_progress, job.job_id, snapshot)

        active = _ActiveJob(RunControl(on_progress=on_progress))
        self._active[job.job_id] = active
        active.task = asyncio.create_task(self._run(job, active))
        self._publish_view(job.job_id)

    async def _run(self, job: JobRecord, active: _ActiveJob) -> None:
        control = active.control
        try:
            fleet = job.fleet()
            plan = await asyncio.to_thread(run_plan, fleet, job.commitments, control, self.relay, job.robustness)
            plan_id = new_id("plan")
            self.store.finish_job(job.job_id, JobState.SUCCEEDED, control.snapshot, plan=(plan_id, fleet, plan))
            if self.on_plan is not None:
                self.on_plan(plan_id, fleet, plan)
        except RunStopped as stop:
            if stop.reason == STOP_SHUTDOWN:
                self.store.requeue(job.job_id)
            else:
                self.store.finish_job(job.job_id, JobState.CANCELLED, control.snapshot)
        except Exception as exc:  # a job ends FAILED with the status a unary call would have returned
            error = to_service_error(exc)
            if error.code is grpc.StatusCode.INTERNAL:
                log.exception("job %s failed", job.job_id)
            self.store.finish_job(job.job_id, JobState.FAILED, control.snapshot, error=error)
        finally:
            del self._active[job.job_id]
            self._publish_view(job.job_id)
            self._wake.set()

    def _on_progress(self, job_id: str, snapshot: ProgressSnapshot) -> None:
        active = self._active.get(job_id)
        if active is None:
            return
        now = time.monotonic()
        if now - active.last_write >= PROGRESS_WRITE_INTERVAL_S:
            self.store.set_progress(job_id, snapshot)
            active.last_write = now
        # Publish this snapshot, not the run's latest: the run thread may already be a stage further,
        # and a watcher must see each stage's last figures (e.g. all scenarios done).
        self._publish_view(job_id, snapshot)

    def _publish_view(self, job_id: str, snapshot: ProgressSnapshot | None = None) -> None:
        queues = self._watchers.get(job_id)
        if not queues:
            return
        job = self.view(job_id, snapshot)
        for queue in queues:
            if queue.full():  # drop the oldest intermediate event, keep the newest
                queue.get_nowait()
            queue.put_nowait(job)
