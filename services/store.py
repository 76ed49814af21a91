"""Plan jobs and stored plans in SQLite (the runner that works the queue is services/runner.py).

Persistence (stdlib sqlite3, WAL): a job is written before SubmitPlanJob answers, and a finished
job's plan is written in the same transaction as its final state, so a restart loses no submitted
job and no finished result. Jobs found RUNNING at start-up (the server died under them) are queued
again with a back-off and re-run from the start: a run is deterministic (seeded scenarios), so a
re-run gives the plan the first run would have. A job that was running through `max_crashes`
server deaths is taken to be what kills the server (a poison job) and ends FAILED instead.

Ownership: every job and plan carries its owner (the caller's tenant, services/auth.py); queries
take `owner`, None meaning an admin who sees everything. request_id is unique per owner only.

Faults: opening checks the file (integrity, writability) and raises StoreError naming the path;
a failed write raises StoreWriteError and marks the store unwritable until `probe_write` succeeds,
which the server's health follows.
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

import grpc
import platformdirs

from optimizer.fleet import Fleet, parse_fleet
from optimizer.plan_result import PlanResult
from optimizer.robustness import RobustnessSettings
from services.errors import ServiceError, StoreError, StoreWriteError
from solvers.diagnose import Commitments
from solvers.runs import ProgressSnapshot

log = logging.getLogger(__name__)

DB_ENV = "HASHPIVOT_DB"
SCHEMA_VERSION = 4  # 2: jobs.robustness_json; 3: owners, crash count, back-off, plans.fleet_name; 4: scenario sets


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
    owner: str = ""
    crashes: int = 0  # server deaths while it ran
    scenario_set_id: str = ""  # plan on this uploaded scenario set instead of drawing scenarios

    def fleet(self) -> Fleet:
        return parse_fleet(json.loads(self.fleet_json))


@dataclass(frozen=True)
class PlanSummary:
    plan_id: str
    job_id: str
    created_at: float
    fleet_name: str
    owner: str


@dataclass(frozen=True)
class ScenarioSetInfo:
    """What an uploaded scenario set holds (the bytes are stored beside it)."""

    scenario_set_id: str
    owner: str
    name: str
    created_at: float
    size_bytes: int
    scenarios: int
    steps: int
    step_hours: float
    markets: tuple[str, ...]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        object.__setattr__(self, "markets", tuple(self.markets))  # JSON gives a list back


@dataclass(frozen=True)
class PlanRecord:
    plan_id: str
    job_id: str
    created_at: float
    fleet_json: str
    plan: PlanResult
    owner: str = ""

    def fleet(self) -> Fleet:
        return parse_fleet(json.loads(self.fleet_json))

    @property
    def created(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.created_at, tz=dt.UTC)


_JOBS_TABLE = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    request_id TEXT,
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
    robustness_json TEXT,
    owner TEXT NOT NULL DEFAULT '',
    crashes INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    scenario_set_id TEXT
);
"""
_SCHEMA = (
    _JOBS_TABLE
    + """
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs (owner, request_id) WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS plans (
    plan_id TEXT PRIMARY KEY,
    job_id TEXT,
    created_at REAL NOT NULL,
    fleet_json TEXT NOT NULL,
    plan_json TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    fleet_name TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS plans_by_owner ON plans (owner, created_at);
CREATE TABLE IF NOT EXISTS scenario_sets (
    scenario_set_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    info_json TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS scenario_sets_by_owner ON scenario_sets (owner, created_at);
"""
)
# Columns of a version 1/2 jobs table, copied when the table is rebuilt (its request_id was globally UNIQUE).
_V2_JOB_COLUMNS = (
    "job_id, request_id, state, fleet_name, fleet_json, commitments_json, created_at, started_at, ended_at,"
    " attempts, cancel_requested, progress_json, error_json, plan_id, robustness_json"
)
POISON_MESSAGE = (
    "the server stopped abnormally {crashes} times while this job ran (out of memory or a crash); "
    "it is not run again. Retry with fewer scenarios, groups or robustness work"
)


def fleet_json(fleet: Fleet) -> str:
    return fleet.model_dump_json()


def plan_json(plan: PlanResult) -> str:
    # Python's json keeps any non-finite float exactly (the store is read only by PlanResult.model_validate_json);
    # unknown figures (a bound the solver never proved) are None in the domain already.
    return json.dumps(plan.model_dump(mode="python"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__}")


def _plan_record(db: sqlite3.Connection, plan_id: str, owner: str | None) -> PlanRecord | None:
    where, args = _visible(owner)
    row = db.execute(f"SELECT * FROM plans WHERE plan_id = ? AND {where}", (plan_id, *args)).fetchone()
    if row is None:
        return None
    return PlanRecord(
        plan_id=row["plan_id"],
        job_id=row["job_id"] or "",
        created_at=row["created_at"],
        fleet_json=row["fleet_json"],
        plan=PlanResult.model_validate(json.loads(row["plan_json"])),
        owner=row["owner"],
    )


class PlanReader:
    """Stored plans, read only: what a Dispatch front (services/front.py) needs of the database.

    The main server owns the file (checks, migrations, writes); a reader only opens it read-only
    after the server has, and notices others' commits by `data_version` (SQLite bumps it for a
    connection when another connection commits), which is how a front learns of deleted plans."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("SELECT 1 FROM plans LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path} cannot be read: {exc}") from None

    def get_plan(self, plan_id: str, owner: str | None = None) -> PlanRecord | None:
        return _plan_record(self._db, plan_id, owner)

    def data_version(self) -> int:
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def existing(self, plan_ids: list[str]) -> set[str]:
        """Those of `plan_ids` still stored."""
        found: set[str] = set()
        for start in range(0, len(plan_ids), 500):  # below SQLite's limit of bound parameters
            batch = plan_ids[start : start + 500]
            marks = ",".join("?" * len(batch))
            found |= {r[0] for r in self._db.execute(f"SELECT plan_id FROM plans WHERE plan_id IN ({marks})", batch)}
        return found

    def close(self) -> None:
        self._db.close()


def _visible(owner: str | None, alias: str = "") -> tuple[str, list]:
    """SQL condition for rows the owner may see (None: an admin, everything)."""
    if owner is None:
        return "1", []
    return f"{alias}owner = ?", [owner]


class JobStore:
    """SQLite tables `jobs` and `plans`; one connection, used from one thread at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.writable = True
        self.write_errors = 0  # failed writes since start (a metric)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._open()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"database {self.path} cannot be used: {exc}") from None

    def _open(self) -> None:
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=5000")
        check = self._db.execute("PRAGMA quick_check").fetchone()[0]  # reads every page: catches a zeroed file
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed ({check})")
        if self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
            raise sqlite3.DatabaseError("cannot switch to WAL (is the directory writable?)")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"database schema {version} is newer than this server ({SCHEMA_VERSION})")
        with self._transaction():  # also proves the file is writable before the server starts
            self._migrate(version)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _migrate(self, version: int) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "jobs" in tables and version < 3:
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "robustness_json" not in columns:  # a version 1 database: its jobs asked for no robustness
                self._db.execute("ALTER TABLE jobs ADD COLUMN robustness_json TEXT")
            # Rebuilt, not altered: SQLite cannot drop the old table-wide UNIQUE(request_id).
            self._db.execute("ALTER TABLE jobs RENAME TO jobs_v2")
            self._db.execute("DROP INDEX IF EXISTS jobs_by_state")
            self._db.execute(_JOBS_TABLE)
            self._db.execute(f"INSERT INTO jobs ({_V2_JOB_COLUMNS}) SELECT {_V2_JOB_COLUMNS} FROM jobs_v2")
            self._db.execute("DROP TABLE jobs_v2")
        job_columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "jobs" in tables and "scenario_set_id" not in job_columns:  # before version 4 (a rebuilt table has it)
            self._db.execute("ALTER TABLE jobs ADD COLUMN scenario_set_id TEXT")
        if "plans" in tables and version < 3:
            self._db.execute("ALTER TABLE plans ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
            self._db.execute("ALTER TABLE plans ADD COLUMN fleet_name TEXT NOT NULL DEFAULT ''")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # a failed write may already have rolled back
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _write(self):
        """One write transaction; a failure marks the store unwritable and raises StoreWriteError."""
        try:
            with self._transaction():
                yield
        except sqlite3.Error as exc:
            self.writable = False
            self.write_errors += 1
            log.error("database %s: write failed: %s", self.path, exc)
            raise StoreWriteError(f"the job store cannot write ({exc})") from exc

    def probe_write(self) -> bool:
        """Try a harmless write that needs a fresh page (a table created and dropped): rewriting a row in place
        would succeed on a full disk, since it reuses the room its previous version freed."""
        try:
            with self._transaction():
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._db.execute("DROP TABLE IF EXISTS probe")
                self._db.execute("CREATE TABLE probe (x)")
                self._db.execute("INSERT INTO probe VALUES (zeroblob(2048))")
                self._db.execute("DROP TABLE probe")
        except sqlite3.Error:
            self.writable = False
            return False
        self.writable = True
        return True

    # jobs

    def create_job(
        self,
        fleet: Fleet,
        commitments: Commitments,
        request_id: str = "",
        robustness: RobustnessSettings | None = None,
        owner: str = "",
        scenario_set_id: str = "",
    ) -> tuple[JobRecord, bool]:
        """Insert a queued job; with a request_id this owner used before, return that job instead. -> (job, created)."""
        if request_id:
            existing = self._db.execute(
                "SELECT * FROM jobs WHERE owner = ? AND request_id = ?", (owner, request_id)
            ).fetchone()
            if existing is not None:
                return _job(existing), False
        job_id = new_id("job")
        with self._write():
            self._db.execute(
                "INSERT INTO jobs (job_id, request_id, state, fleet_name, fleet_json, commitments_json, created_at,"
                " robustness_json, owner, scenario_set_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    request_id or None,
                    JobState.QUEUED.value,
                    fleet.name,
                    fleet_json(fleet),
                    json.dumps(dataclasses.asdict(commitments)),
                    time.time(),
                    None if robustness is None else robustness.model_dump_json(),
                    owner,
                    scenario_set_id or None,
                ),
            )
        return self.get_job(job_id), True

    def get_job(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        """The job, if it exists and `owner` may see it (None: any owner)."""
        where, args = _visible(owner)
        row = self._db.execute(f"SELECT * FROM jobs WHERE job_id = ? AND {where}", (job_id, *args)).fetchone()
        return None if row is None else _job(row)

    def list_jobs(
        self, owner: str | None, state: JobState | None, limit: int, after: tuple[float, str] | None = None
    ) -> list[JobRecord]:
        """Newest first; `after` is the (created_at, job_id) of the last job of the previous page (keyset)."""
        where, args = _visible(owner)
        if state is not None:
            where, args = f"{where} AND state = ?", [*args, state.value]
        if after is not None:
            where, args = f"{where} AND (created_at, job_id) < (?, ?)", [*args, *after]
        rows = self._db.execute(
            f"SELECT * FROM jobs WHERE {where} ORDER BY created_at DESC, job_id DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [_job(r) for r in rows]

    def count_queued(self, owner: str) -> int:
        return self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE owner = ? AND state IN (?, ?)",
            (owner, JobState.QUEUED.value, JobState.RUNNING.value),
        ).fetchone()[0]

    def queue_depth(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (JobState.QUEUED.value,)).fetchone()[0]

    def requeue_unfinished(self, max_crashes: int = 3, backoff_s: float = 5.0) -> tuple[int, int]:
        """At start-up: jobs a previous server died under go back to the queue after a back-off
        (backoff_s, doubling per death), or end FAILED after `max_crashes` deaths. -> (re-queued, failed)."""
        now = time.time()
        error = ServiceError(grpc.StatusCode.ABORTED, POISON_MESSAGE.format(crashes=max_crashes))
        with self._write():
            failed = self._db.execute(
                "UPDATE jobs SET state = ?, ended_at = ?, crashes = crashes + 1, error_json = ?"
                " WHERE state = ? AND crashes + 1 >= ?",
                (JobState.FAILED.value, now, json.dumps(error.as_dict()), JobState.RUNNING.value, max_crashes),
            ).rowcount
            requeued = self._db.execute(
                "UPDATE jobs SET state = ?, progress_json = NULL, crashes = crashes + 1,"
                " not_before = ? * (1 << crashes) + ? WHERE state = ?",
                (JobState.QUEUED.value, backoff_s, now, JobState.RUNNING.value),
            ).rowcount
        return requeued, failed

    def requeue_crashed(self, job_id: str, max_crashes: int = 3, backoff_s: float = 5.0) -> JobState:
        """A run lost to Ray (its node or worker died): back to the queue after a back-off, or FAILED
        after max_crashes such losses, exactly as a server death counts. -> the job's new state."""
        error = ServiceError(grpc.StatusCode.ABORTED, POISON_MESSAGE.format(crashes=max_crashes))
        now = time.time()
        with self._write():
            self._db.execute(
                "UPDATE jobs SET state = ?, ended_at = ?, crashes = crashes + 1, error_json = ?"
                " WHERE job_id = ? AND state = ? AND crashes + 1 >= ?",
                (JobState.FAILED.value, now, json.dumps(error.as_dict()), job_id, JobState.RUNNING.value, max_crashes),
            )
            self._db.execute(
                "UPDATE jobs SET state = ?, progress_json = NULL, crashes = crashes + 1,"
                " not_before = ? * (1 << crashes) + ? WHERE job_id = ? AND state = ?",
                (JobState.QUEUED.value, backoff_s, now, job_id, JobState.RUNNING.value),
            )
        return self.get_job(job_id).state

    def requeue(self, job_id: str) -> None:
        """A graceful stop put the job back: no crash, no back-off."""
        with self._write():
            self._db.execute(
                "UPDATE jobs SET state = ?, progress_json = NULL WHERE job_id = ? AND state = ?",
                (JobState.QUEUED.value, job_id, JobState.RUNNING.value),
            )

    def next_due_s(self) -> float | None:
        """Seconds until the earliest backed-off queued job may run; None when none waits."""
        due = self._db.execute(
            "SELECT MIN(not_before) FROM jobs WHERE state = ? AND not_before > ?", (JobState.QUEUED.value, time.time())
        ).fetchone()[0]
        return None if due is None else max(0.0, due - time.time())

    def claim_next(self) -> JobRecord | None:
        """Mark the oldest queued job that is due running and return it."""
        with self._write():
            row = self._db.execute(
                "SELECT job_id FROM jobs WHERE state = ? AND not_before <= ? ORDER BY created_at, job_id LIMIT 1",
                (JobState.QUEUED.value, time.time()),
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
        with self._write():
            cursor = self._db.execute(
                "UPDATE jobs SET state = ?, cancel_requested = 1, ended_at = ? WHERE job_id = ? AND state = ?",
                (JobState.CANCELLED.value, time.time(), job_id, JobState.QUEUED.value),
            )
        return cursor.rowcount == 1

    def request_cancel(self, job_id: str) -> None:
        with self._write():
            self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE job_id = ?", (job_id,))

    def set_progress(self, job_id: str, progress: ProgressSnapshot) -> None:
        with self._write():
            self._db.execute(
                "UPDATE jobs SET progress_json = ? WHERE job_id = ?", (json.dumps(progress.as_dict()), job_id)
            )

    def finish_job(
        self,
        job_id: str,
        state: JobState,
        progress: ProgressSnapshot,
        plan: tuple[str, Fleet, PlanResult] | None = None,
        error: ServiceError | None = None,
    ) -> None:
        """Final state, and the plan with it, in one transaction."""
        with self._write():
            plan_id = None
            owner = self._db.execute("SELECT owner FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if plan is not None:
                plan_id, fleet, result = plan
                self._insert_plan(plan_id, fleet, result, job_id, owner=owner[0] if owner else "")
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

    def delete_job(self, job_id: str) -> bool:
        with self._write():
            return self._db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,)).rowcount == 1

    # plans

    def save_plan(
        self, fleet: Fleet, plan: PlanResult, job_id: str = "", created_at: float | None = None, owner: str = ""
    ) -> str:
        plan_id = new_id("plan")
        with self._write():
            self._insert_plan(plan_id, fleet, plan, job_id, created_at, owner)
        return plan_id

    def _insert_plan(
        self,
        plan_id: str,
        fleet: Fleet,
        plan: PlanResult,
        job_id: str,
        created_at: float | None = None,
        owner: str = "",
    ) -> None:
        self._db.execute(
            "INSERT INTO plans (plan_id, job_id, created_at, fleet_json, plan_json, owner, fleet_name)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (plan_id, job_id or None, created_at or time.time(), fleet_json(fleet), plan_json(plan), owner, fleet.name),
        )

    def get_plan(self, plan_id: str, owner: str | None = None) -> PlanRecord | None:
        """The plan, if it exists and `owner` may see it (None: any owner)."""
        return _plan_record(self._db, plan_id, owner)

    def list_plans(self, owner: str | None, limit: int, after: tuple[float, str] | None = None) -> list[PlanSummary]:
        """Newest first, keyset-paged as list_jobs; summaries only (no plan bodies)."""
        where, args = _visible(owner)
        if after is not None:
            where, args = f"{where} AND (created_at, plan_id) < (?, ?)", [*args, *after]
        rows = self._db.execute(
            "SELECT plan_id, job_id, created_at, fleet_name, owner FROM plans"
            f" WHERE {where} ORDER BY created_at DESC, plan_id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [
            PlanSummary(r["plan_id"], r["job_id"] or "", r["created_at"], r["fleet_name"], r["owner"]) for r in rows
        ]

    def delete_plan(self, plan_id: str) -> bool:
        with self._write():
            deleted = self._db.execute("DELETE FROM plans WHERE plan_id = ?", (plan_id,)).rowcount == 1
            self._db.execute("UPDATE jobs SET plan_id = NULL WHERE plan_id = ?", (plan_id,))
        return deleted

    # scenario sets (UploadScenarios): the NPZ bytes as uploaded, with what they hold

    def save_scenario_set(self, info: ScenarioSetInfo, data: bytes) -> None:
        with self._write():
            self._db.execute(
                "INSERT INTO scenario_sets (scenario_set_id, owner, name, created_at, info_json, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (info.scenario_set_id, info.owner, info.name, info.created_at, json.dumps(info.as_dict()), data),
            )

    def get_scenario_set(self, scenario_set_id: str, owner: str | None = None) -> tuple[ScenarioSetInfo, bytes] | None:
        """The set's description and bytes, if it exists and `owner` may see it (None: any owner)."""
        where, args = _visible(owner)
        row = self._db.execute(
            f"SELECT info_json, data FROM scenario_sets WHERE scenario_set_id = ? AND {where}", (scenario_set_id, *args)
        ).fetchone()
        if row is None:
            return None
        return ScenarioSetInfo(**json.loads(row["info_json"])), bytes(row["data"])

    def count_scenario_sets(self, owner: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM scenario_sets WHERE owner = ?", (owner,)).fetchone()[0]

    def delete_scenario_set(self, scenario_set_id: str) -> bool:
        with self._write():
            return (
                self._db.execute("DELETE FROM scenario_sets WHERE scenario_set_id = ?", (scenario_set_id,)).rowcount
                == 1
            )

    # retention

    def sweep(self, max_age_s: float | None, max_plans: int | None, max_jobs: int | None) -> tuple[int, int]:
        """Delete plans, finished jobs and scenario sets older than max_age_s, then all but the newest
        max_plans / max_jobs. Queued and running jobs are never deleted. -> (plans deleted, jobs deleted)."""
        final = (JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value)
        plans = jobs = 0
        with self._write():
            if max_age_s is not None:
                cutoff = time.time() - max_age_s
                plans += self._db.execute("DELETE FROM plans WHERE created_at < ?", (cutoff,)).rowcount
                jobs += self._db.execute(
                    "DELETE FROM jobs WHERE created_at < ? AND state IN (?, ?, ?)", (cutoff, *final)
                ).rowcount
                self._db.execute("DELETE FROM scenario_sets WHERE created_at < ?", (cutoff,))
            if max_plans is not None:
                plans += self._db.execute(
                    "DELETE FROM plans WHERE plan_id NOT IN"
                    " (SELECT plan_id FROM plans ORDER BY created_at DESC, plan_id DESC LIMIT ?)",
                    (max_plans,),
                ).rowcount
            if max_jobs is not None:
                jobs += self._db.execute(
                    "DELETE FROM jobs WHERE state IN (?, ?, ?) AND job_id NOT IN"
                    " (SELECT job_id FROM jobs ORDER BY created_at DESC, job_id DESC LIMIT ?)",
                    (*final, max_jobs),
                ).rowcount
            if plans:  # jobs must not point at a plan that is gone
                self._db.execute("UPDATE jobs SET plan_id = NULL WHERE plan_id NOT IN (SELECT plan_id FROM plans)")
        return plans, jobs


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
        owner=row["owner"],
        crashes=row["crashes"],
        scenario_set_id=row["scenario_set_id"] or "",
    )
