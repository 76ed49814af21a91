"""Plan jobs and stored plans in SQLite (the runner that works the queue is services/runner.py).

Persistence (stdlib sqlite3, WAL): a job is written before SubmitPlanJob answers, and a finished
job's plan is written in the same transaction as its final state, so a restart loses no submitted
job and no finished result. Jobs found QUEUED or RUNNING at start-up (the server stopped under
them) are queued again and re-run from the start: a run is deterministic (seeded scenarios), so a
re-run gives the plan the first run would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import json
import logging
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from optimizer.fleet import Fleet, parse_fleet
from optimizer.plan_result import PlanResult
from optimizer.robustness import RobustnessSettings
from services.errors import ServiceError
from solvers.diagnose import Commitments
from solvers.runs import ProgressSnapshot

log = logging.getLogger(__name__)

DB_ENV = "HASHPIVOT_DB"
SCHEMA_VERSION = 2  # 2: jobs.robustness_json


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def default_db_path() -> Path:
    """$HASHPIVOT_DB, else hashpivot.sqlite in the user's data directory."""
    configured = os.environ.get(DB_ENV)
    if configured:
        return Path(configured)
    return Path(platformdirs.user_data_dir("hashpivot")) / "hashpivot.sqlite"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    request_id: str
    state: JobState
    fleet_name: str
    fleet_json: str
    commitments: Commitments
    created_at: float
    started_at: float | None
    ended_at: float | None
    attempts: int
    cancel_requested: bool
    progress: ProgressSnapshot
    error: ServiceError | None
    plan_id: str
    robustness: RobustnessSettings | None = None  # assess the plan's robustness after planning

    def fleet(self) -> Fleet:
        return parse_fleet(json.loads(self.fleet_json))


@dataclass(frozen=True)
class PlanRecord:
    plan_id: str
    job_id: str
    created_at: float
    fleet_json: str
    plan: PlanResult

    def fleet(self) -> Fleet:
        return parse_fleet(json.loads(self.fleet_json))

    @property
    def created(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.created_at, tz=dt.UTC)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    request_id TEXT UNIQUE,
    state TEXT NOT NULL,
    fleet_name TEXT NOT NULL,
    fleet_json TEXT NOT NULL,
    commitments_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress_json TEXT,
    error_json TEXT,
    plan_id TEXT,
    robustness_json TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at);
CREATE TABLE IF NOT EXISTS plans (
    plan_id TEXT PRIMARY KEY,
    job_id TEXT,
    created_at REAL NOT NULL,
    fleet_json TEXT NOT NULL,
    plan_json TEXT NOT NULL
);
"""


def fleet_json(fleet: Fleet) -> str:
    return fleet.model_dump_json()


def plan_json(plan: PlanResult) -> str:
    # Python's json keeps inf (a MIP gap without a bound), which pydantic's JSON mode would turn into null.
    return json.dumps(plan.model_dump(mode="python"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__}")


class JobStore:
    """SQLite tables `jobs` and `plans`; one connection, used from one thread at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.execute("PRAGMA busy_timeout=5000")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: database schema {version} is newer than this server ({SCHEMA_VERSION})")
        self._db.executescript(_SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "robustness_json" not in columns:  # a version 1 database: its jobs asked for no robustness
            self._db.execute("ALTER TABLE jobs ADD COLUMN robustness_json TEXT")
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # jobs

    def create_job(
        self,
        fleet: Fleet,
        commitments: Commitments,
        request_id: str = "",
        robustness: RobustnessSettings | None = None,
    ) -> tuple[JobRecord, bool]:
        """Insert a queued job; with a request_id seen before, return that job instead. -> (job, created)."""
        if request_id:
            existing = self._db.execute("SELECT * FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
            if existing is not None:
                return _job(existing), False
        job_id = new_id("job")
        self._db.execute(
            "INSERT INTO jobs (job_id, request_id, state, fleet_name, fleet_json, commitments_json, created_at,"
            " robustness_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                request_id or None,
                JobState.QUEUED.value,
                fleet.name,
                fleet_json(fleet),
                json.dumps(dataclasses.asdict(commitments)),
                time.time(),
                None if robustness is None else robustness.model_dump_json(),
            ),
        )
        return self.get_job(job_id), True

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def list_jobs(self, state: JobState | None, limit: int, offset: int) -> list[JobRecord]:
        where, args = ("WHERE state = ?", [state.value]) if state else ("", [])
        rows = self._db.execute(
            f"SELECT * FROM jobs {where} ORDER BY created_at DESC, job_id DESC LIMIT ? OFFSET ?", (*args, limit, offset)
        ).fetchall()
        return [_job(r) for r in rows]

    def requeue_unfinished(self) -> int:
        """At start-up: jobs a previous server left running go back to the queue."""
        cursor = self._db.execute(
            "UPDATE jobs SET state = ?, progress_json = NULL WHERE state = ?",
            (JobState.QUEUED.value, JobState.RUNNING.value),
        )
        return cursor.rowcount

    def requeue(self, job_id: str) -> None:
        self._db.execute(
            "UPDATE jobs SET state = ?, progress_json = NULL WHERE job_id = ? AND state = ?",
            (JobState.QUEUED.value, job_id, JobState.RUNNING.value),
        )

    def claim_next(self) -> JobRecord | None:
        """Mark the oldest queued job running and return it."""
        with self._transaction():
            row = self._db.execute(
                "SELECT job_id FROM jobs WHERE state = ? ORDER BY created_at, job_id LIMIT 1", (JobState.QUEUED.value,)
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE jobs SET state = ?, started_at = ?, attempts = attempts + 1, progress_json = NULL"
                " WHERE job_id = ?",
                (JobState.RUNNING.value, time.time(), row["job_id"]),
            )
        return self.get_job(row["job_id"])

    def cancel_queued(self, job_id: str) -> bool:
        cursor = self._db.execute(
            "UPDATE jobs SET state = ?, cancel_requested = 1, ended_at = ? WHERE job_id = ? AND state = ?",
            (JobState.CANCELLED.value, time.time(), job_id, JobState.QUEUED.value),
        )
        return cursor.rowcount == 1

    def request_cancel(self, job_id: str) -> None:
        self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE job_id = ?", (job_id,))

    def set_progress(self, job_id: str, progress: ProgressSnapshot) -> None:
        self._db.execute("UPDATE jobs SET progress_json = ? WHERE job_id = ?", (json.dumps(progress.as_dict()), job_id))

    def finish_job(
        self,
        job_id: str,
        state: JobState,
        progress: ProgressSnapshot,
        plan: tuple[str, Fleet, PlanResult] | None = None,
        error: ServiceError | None = None,
    ) -> None:
        """Final state, and the plan with it, in one transaction."""
        with self._transaction():
            plan_id = None
            if plan is not None:
                plan_id, fleet, result = plan
                self._insert_plan(plan_id, fleet, result, job_id)
            self._db.execute(
                "UPDATE jobs SET state = ?, ended_at = ?, progress_json = ?, error_json = ?, plan_id = ?"
                " WHERE job_id = ?",
                (
                    state.value,
                    time.time(),
                    json.dumps(progress.as_dict()),
                    None if error is None else json.dumps(error.as_dict()),
                    plan_id,
                    job_id,
                ),
            )

    # plans

    def save_plan(self, fleet: Fleet, plan: PlanResult, job_id: str = "", created_at: float | None = None) -> str:
        plan_id = new_id("plan")
        self._insert_plan(plan_id, fleet, plan, job_id, created_at)
        return plan_id

    def _insert_plan(
        self, plan_id: str, fleet: Fleet, plan: PlanResult, job_id: str, created_at: float | None = None
    ) -> None:
        self._db.execute(
            "INSERT INTO plans (plan_id, job_id, created_at, fleet_json, plan_json) VALUES (?, ?, ?, ?, ?)",
            (plan_id, job_id or None, created_at or time.time(), fleet_json(fleet), plan_json(plan)),
        )

    def get_plan(self, plan_id: str) -> PlanRecord | None:
        row = self._db.execute("SELECT * FROM plans WHERE plan_id = ?", (plan_id,)).fetchone()
        if row is None:
            return None
        return PlanRecord(
            plan_id=row["plan_id"],
            job_id=row["job_id"] or "",
            created_at=row["created_at"],
            fleet_json=row["fleet_json"],
            plan=PlanResult.model_validate(json.loads(row["plan_json"])),
        )


def _job(row: sqlite3.Row) -> JobRecord:
    commitments = json.loads(row["commitments_json"])
    progress = json.loads(row["progress_json"]) if row["progress_json"] else {}
    return JobRecord(
        job_id=row["job_id"],
        request_id=row["request_id"] or "",
        state=JobState(row["state"]),
        fleet_name=row["fleet_name"],
        fleet_json=row["fleet_json"],
        commitments=Commitments(tuple(commitments["accept_offers"]), tuple(commitments["convert_sites"])),
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        attempts=row["attempts"],
        cancel_requested=bool(row["cancel_requested"]),
        progress=ProgressSnapshot(**progress),
        error=None if row["error_json"] is None else ServiceError.from_dict(json.loads(row["error_json"])),
        plan_id=row["plan_id"] or "",
        robustness=(
            None if row["robustness_json"] is None else RobustnessSettings.model_validate_json(row["robustness_json"])
        ),
    )
