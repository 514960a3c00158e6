"""Jobs that every uvicorn worker sees: the ``JobStore`` protocol and its SQLite implementation.

The worker that runs a job writes its progress events, its heartbeat and its end to the store;
any worker answers status, event-stream, cancel and download requests from what the store holds.
``SqliteJobStore`` is enough on one host; a store on a queue or a database server can replace it
by implementing the same few methods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock

from nerfcache import ProgressEvent

__all__ = ["FINISHED", "Job", "JobStore", "SqliteJobStore"]

FINISHED = frozenset({"done", "failed", "cancelled"})
"""A job's status is ``running`` until it becomes one of these, once."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One video being made, as the store holds it."""

    id: str
    character: str
    model: str
    status: str
    error: str | None
    progress: ProgressEvent | None
    """The latest progress event."""
    cancel_requested: bool
    heartbeat: float
    """``time.time()`` of the running worker's last sign of life."""

    @property
    def finished(self) -> bool:
        """Whether the job has ended (done, failed or cancelled)."""
        return self.status in FINISHED

    def view(self) -> dict[str, Any]:
        """The job as the API shows it."""
        return {
            "id": self.id,
            "character": self.character,
            "model": self.model,
            "status": self.status,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "progress": dataclasses.asdict(self.progress) if self.progress else None,
        }


class JobStore(Protocol):
    """What the app needs from wherever its jobs live.

    Every call is short (a statement or two, no fsync), so the app makes them from its event
    loop; a store whose calls may wait longer should hand them to a thread.
    """

    def create(self, job_id: str, character: str, model: str) -> Job:
        """Record a new running job."""

    def get(self, job_id: str) -> Job | None:
        """The job, or None if there is no such job."""

    def add_event(self, job_id: str, event: ProgressEvent) -> None:
        """Append a progress event (only the worker running the job calls this)."""

    def events(self, job_id: str, after: int = 0) -> list[tuple[int, ProgressEvent]]:
        """The job's events numbered above ``after``, oldest first, with their numbers."""

    def beat(self, job_id: str) -> bool:
        """Note that the running worker is alive; return whether a cancel was requested."""

    def request_cancel(self, job_id: str) -> Job | None:
        """Ask the worker running the job to cancel it (a finished job is left as it is)."""

    def finish(self, job_id: str, status: str, error: str | None = None) -> bool:
        """End a running job with ``status``; False if it had already ended."""


class SqliteJobStore:
    """Jobs in one SQLite file, shared by the processes of one host.

    WAL mode lets readers (status polls, event streams) run beside the one writer of the moment,
    and every write is a single short statement. A connection per call: cheap (no network), and
    never shared between threads or across a fork.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Workers start together; switching to WAL needs the database to themselves, so the
        # first one sets it up while the others wait.
        with FileLock(path.with_name(path.name + ".lock")), self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: each statement commits on its own, holding the lock briefly.
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            # Per connection: commit without an fsync each time; a power cut may lose the last
            # events, never corrupt the file.
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    def create(self, job_id: str, character: str, model: str) -> Job:
        """Record a new running job."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, character, model, status, heartbeat) VALUES (?, ?, ?, ?, ?)",
                (job_id, character, model, "running", time.time()),
            )
        job = self.get(job_id)
        assert job is not None  # noqa: S101 - just inserted
        return job

    def get(self, job_id: str) -> Job | None:
        """The job, or None if there is no such job."""
        with self._connect() as db:
            row = db.execute(
                "SELECT id, character, model, status, error, cancel_requested, heartbeat,"
                " (SELECT event FROM events WHERE job_id = jobs.id ORDER BY seq DESC LIMIT 1)"
                " FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
        if row is None:
            return None
        id_, character, model, status, error, cancel, heartbeat, last = row
        return Job(
            id=id_,
            character=character,
            model=model,
            status=status,
            error=error,
            progress=_event(last) if last else None,
            cancel_requested=bool(cancel),
            heartbeat=heartbeat,
        )

    def add_event(self, job_id: str, event: ProgressEvent) -> None:
        """Append a progress event."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO events (job_id, event) VALUES (?, ?)",
                (job_id, json.dumps(dataclasses.asdict(event))),
            )

    def events(self, job_id: str, after: int = 0) -> list[tuple[int, ProgressEvent]]:
        """The job's events numbered above ``after``, oldest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT seq, event FROM events WHERE job_id = ? AND seq > ? ORDER BY seq",
                (job_id, after),
            ).fetchall()
        return [(seq, _event(text)) for seq, text in rows]

    def beat(self, job_id: str) -> bool:
        """Note that the running worker is alive; return whether a cancel was requested."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET heartbeat = ? WHERE id = ?", (time.time(), job_id))
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
            return bool(row.fetchone()[0])

    def request_cancel(self, job_id: str) -> Job | None:
        """Ask the worker running the job to cancel it."""
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
                (job_id,),
            )
        return self.get(job_id)

    def finish(self, job_id: str, status: str, error: str | None = None) -> bool:
        """End a running job; False if it had already ended."""
        if status not in FINISHED:
            raise ValueError(f"not a final status: {status!r}")
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE jobs SET status = ?, error = ? WHERE id = ? AND status = 'running'",
                (status, error, job_id),
            )
            return cursor.rowcount == 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    character TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
"""


def _event(text: str) -> ProgressEvent:
    return ProgressEvent(**json.loads(text))
