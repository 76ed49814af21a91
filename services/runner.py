"""The runner that works the plan-job queue on the server's event loop (the store is services/store.py).

It claims queued jobs up to `max_concurrent_jobs`, runs each in a worker thread (solvers/runs.py),
relays progress to watchers, and stops runs on cancel or shutdown. All database access happens on
the event-loop thread.

Ownership: every query takes the caller's `owner` filter (None: an admin); a job of another owner
is NOT_FOUND. A write that fails when a job ends does not leave the job RUNNING: its outcome waits
in memory (and shows in views) until `flush_pending` stores it once the store writes again.
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
from services import logs, metrics, scenario_sets
from services.admission import Limits
from services.errors import (
    QuotaViolation,
    ServiceError,
    StoreWriteError,
    failed_precondition,
    not_found,
    resource_exhausted,
    to_service_error,
)
from services.store import JobRecord, JobState, JobStore, new_id
from solvers.diagnose import Commitments
from solvers.runs import (
    RAY_LOST_ERRORS,
    STOP_CANCELLED,
    STOP_SHUTDOWN,
    ProgressSnapshot,
    RunControl,
    RunStopped,
    run_plan,
)

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 1.0  # progress is persisted at most this often (state changes always)
WATCH_QUEUE_SIZE = 16  # per watcher; a slow watcher skips intermediate events, never the last
STORE_RETRY_S = 2.0  # the queue loop's pause after a failed claim (store not writable)


@dataclass(frozen=True)
class _Outcome:
    """How a job ended, kept while the store cannot write it."""

    state: JobState
    progress: ProgressSnapshot
    plan: tuple[str, Fleet, Any] | None = None
    error: ServiceError | None = None


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
    limits: Limits = field(default_factory=Limits)
    max_crashes: int = 3  # server deaths a job may run through before it ends FAILED (a poison job)
    crash_backoff_s: float = 5.0  # before the first re-run after a death; doubles per death
    _active: dict[str, _ActiveJob] = field(default_factory=dict)
    _pending: dict[str, _Outcome] = field(default_factory=dict)
    _watchers: dict[str, set[asyncio.Queue]] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _closing: bool = False
    _dispatcher: asyncio.Task | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        requeued, failed = self.store.requeue_unfinished(self.max_crashes, self.crash_backoff_s)
        if requeued:
            log.info("re-queued %d job(s) a previous server died under (with back-off)", requeued)
        if failed:
            log.error("%d job(s) ended FAILED: the server died under each of them %d times", failed, self.max_crashes)
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

    def view(self, job_id: str, snapshot: ProgressSnapshot | None = None, owner: str | None = None) -> JobRecord | None:
        """The job if `owner` may see it, with live progress while it runs (`snapshot`, else the run's
        latest), or with its outcome while that waits for the store."""
        job = self.store.get_job(job_id, owner)
        return None if job is None else self.live(job, snapshot)

    def live(self, job: JobRecord, snapshot: ProgressSnapshot | None = None) -> JobRecord:
        """A stored job as it is now: live progress while it runs, its outcome while that waits for the store."""
        active, pending = self._active.get(job.job_id), self._pending.get(job.job_id)
        if active is not None and job.state is JobState.RUNNING:
            return dataclasses.replace(job, progress=snapshot or active.control.snapshot)
        if pending is not None:
            return dataclasses.replace(job, state=pending.state, progress=pending.progress, error=pending.error)
        return job

    async def submit(
        self,
        fleet: Fleet,
        commitments: Commitments,
        request_id: str = "",
        robustness: RobustnessSettings | None = None,
        owner: str = "",
        scenario_set_id: str = "",
    ) -> JobRecord:
        """Queue a job for `owner`; RESOURCE_EXHAUSTED past the owner's quota of unfinished jobs."""
        quota = self.limits.max_queued_jobs_per_caller
        unfinished = self.store.count_queued(owner)
        if unfinished >= quota:
            violation = QuotaViolation(
                "max_queued_jobs_per_caller", f"{unfinished} jobs queued or running, limit {quota}"
            )
            raise resource_exhausted(
                f"max_queued_jobs_per_caller: {unfinished} unfinished jobs, limit {quota}; "
                "wait for some to end or cancel them",
                [violation],
            )
        job, created = self.store.create_job(fleet, commitments, request_id, robustness, owner, scenario_set_id)
        if created:
            metrics.QUEUE_DEPTH.set(self.store.queue_depth())
            self._wake.set()
        return job

    async def delete(self, job_id: str, owner: str | None) -> None:
        job = self.view(job_id, owner=owner)
        if job is None:
            raise not_found("job", job_id)
        if not job.state.final or job_id in self._pending:
            raise failed_precondition(f"job {job_id} is {job.state.value}; cancel it before deleting it")
        self.store.delete_job(job_id)

    async def cancel(self, job_id: str, wait_s: float, owner: str | None = None) -> JobRecord:
        """Cancel a queued job at once, or stop a running one and wait (up to wait_s) until it has stopped."""
        job = self.view(job_id, owner=owner)
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

    async def watch(self, job_id: str, owner: str | None = None) -> AsyncIterator[JobRecord]:
        """The job now, then at every change, until its final state."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=WATCH_QUEUE_SIZE)
        self._watchers.setdefault(job_id, set()).add(queue)
        try:
            job = self.view(job_id, owner=owner)
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

    def flush_pending(self) -> int:
        """Store the outcomes that waited for a writable store; -> how many are still waiting."""
        for job_id, outcome in list(self._pending.items()):
            try:
                self.store.finish_job(job_id, outcome.state, outcome.progress, plan=outcome.plan, error=outcome.error)
            except StoreWriteError:
                break
            del self._pending[job_id]
            self._publish_view(job_id)
        return len(self._pending)

    async def _dispatch_loop(self) -> None:
        while not self._closing:
            timeout = self._claim_jobs()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    def _claim_jobs(self) -> float | None:
        """Launch due jobs up to the limit; -> seconds until the loop should look again (None: when woken)."""
        while len(self._active) < self.max_concurrent_jobs and not self._closing:
            try:
                job = self.store.claim_next()
            except StoreWriteError:
                return STORE_RETRY_S
            if job is None:
                break
            self._launch(job)
        metrics.QUEUE_DEPTH.set(self.store.queue_depth())
        return self.store.next_due_s()

    def _launch(self, job: JobRecord) -> None:
        loop = self._loop

        def on_progress(snapshot: ProgressSnapshot) -> None:  # called from the run's thread
            loop.call_soon_threadsafe(self._on_progress, job.job_id, snapshot)

        active = _ActiveJob(RunControl(on_progress=on_progress))
        self._active[job.job_id] = active
        active.task = asyncio.create_task(self._run(job, active))
        self._publish_view(job.job_id)

    async def _run(self, job: JobRecord, active: _ActiveJob) -> None:
        logs.bind(job_id=job.job_id, owner=job.owner)
        control = active.control
        started = time.monotonic()
        metrics.JOBS_RUNNING.inc()
        outcome: _Outcome | None = None
        try:
            fleet = job.fleet()
            provided = None
            if job.scenario_set_id:  # read when the job runs (access was checked at submission; an admin may use
                # another tenant's set): a set deleted meanwhile fails the job NOT_FOUND
                provided = scenario_sets.load(self.store, job.scenario_set_id, None, fleet, "scenario_set_id")
            plan = await asyncio.to_thread(
                run_plan, fleet, job.commitments, control, self.relay, job.robustness, provided
            )
            outcome = _Outcome(JobState.SUCCEEDED, control.snapshot, plan=(new_id("plan"), fleet, plan))
            metrics.SOLVE_SECONDS.observe(plan.solver.wall_s)
        except RAY_LOST_ERRORS as exc:  # the cluster failed, not the job: run it again (capped like a crash)
            log.error("job %s lost its Ray worker or node (%s): re-queued", job.job_id, type(exc).__name__)
            with contextlib.suppress(StoreWriteError):  # left RUNNING: the next server re-queues it
                self.store.requeue_crashed(job.job_id, self.max_crashes, self.crash_backoff_s)
        except RunStopped as stop:
            if stop.reason == STOP_SHUTDOWN:
                with contextlib.suppress(StoreWriteError):  # left RUNNING: the next server re-queues it
                    self.store.requeue(job.job_id)
            else:
                outcome = _Outcome(JobState.CANCELLED, control.snapshot)
        except Exception as exc:  # a job ends FAILED with the status a unary call would have returned
            error = to_service_error(exc)  # INTERNAL ones are logged with their error id
            outcome = _Outcome(JobState.FAILED, control.snapshot, error=error)
        finally:
            metrics.JOBS_RUNNING.dec()
            if outcome is not None:
                metrics.JOB_SECONDS.labels(outcome.state.value).observe(time.monotonic() - started)
                self._finish(job.job_id, outcome)
            del self._active[job.job_id]
            self._publish_view(job.job_id)
            self._wake.set()

    def _finish(self, job_id: str, outcome: _Outcome) -> None:
        """Store the outcome, or keep it for flush_pending when the store cannot write."""
        try:
            self.store.finish_job(job_id, outcome.state, outcome.progress, plan=outcome.plan, error=outcome.error)
        except StoreWriteError:
            log.error("job %s ended %s but the store cannot write; kept until it can", job_id, outcome.state.value)
            self._pending[job_id] = outcome
            return
        if outcome.plan is not None and self.on_plan is not None:
            plan_id, fleet, plan = outcome.plan
            self.on_plan(plan_id, fleet, plan, self.store.get_job(job_id).owner)

    def _on_progress(self, job_id: str, snapshot: ProgressSnapshot) -> None:
        active = self._active.get(job_id)
        if active is None:
            return
        now = time.monotonic()
        if now - active.last_write >= PROGRESS_WRITE_INTERVAL_S:
            with contextlib.suppress(StoreWriteError):  # progress is best effort; the outcome is not
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
