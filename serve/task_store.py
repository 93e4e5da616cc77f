"""The durable store of DashScope-style file-transcription tasks: SQLite for one host, PostgreSQL for replicas on many.

Every method is one short statement, atomic on its own, so replicas on one database coordinate through it alone:
`claim` moves PENDING tasks to RUNNING under the caller's name with a lease, `renew` extends the leases of what the
caller still runs, and `requeue_expired` hands the tasks of a replica that stopped renewing (it died) back to
PENDING. `finish` only lands while the caller still owns the task, so a task is never finished twice. The statements
live once, in `SqlTaskStore`; `TaskStore` (SQLite, here) and `PostgresTaskStore` (task_store_postgres.py) only
connect and name their few dialect differences. `open_task_store` picks one from `--task-db`.

The event loop calls the store through `run`, on the store's own small thread pools (one for writes, one for reads):
never on asyncio's default executor, which aiohttp needs for DNS and for spooling large uploads to disk, and which a
database that stopped answering would otherwise fill.
"""

import asyncio
import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from qasr.serve.errors import Unavailable

# DashScope's TaskStatus values; SUSPENDED and UNKNOWN never occur here
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED"
STATUSES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELED)
FINAL_STATUSES = (SUCCEEDED, FAILED, CANCELED)
T = TypeVar("T")


class TaskStoreUnavailable(Unavailable):
    """The database did not answer: the call failed, the client should retry."""


# SQLite's; PostgreSQL reads it too, with DOUBLE PRECISION for REAL (its REAL has 24 bits: seconds, not ms)
SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    submit_time REAL NOT NULL,
    scheduled_time REAL,
    end_time REAL,
    owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    code TEXT,
    message TEXT,
    audio_seconds REAL NOT NULL DEFAULT 0,
    results TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, submit_time);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
COLUMNS = ("task_id", "status", "request", "submit_time", "scheduled_time", "end_time", "owner", "lease_until",
           "attempts", "code", "message", "audio_seconds", "results")


@dataclass(slots=True)
class TaskRequest:
    model: str
    file_urls: list[str]
    multi_file: bool  # Paraformer's input.file_urls: answered with one output.results entry per file
    channels: list[int] = field(default_factory=lambda: [0])
    language: str | None = None  # resolved name, e.g. "English"; None: the model detects it
    enable_words: bool = False  # each sentence's words, timed by the forced aligner
    key_hash: str | None = None  # the submitting API key's keyed hash (auth.KeyRing); None: submitted without keys


@dataclass(slots=True)
class Task:
    task_id: str
    request: TaskRequest
    status: str = PENDING
    submit_time: float = field(default_factory=time.time)  # wall-clock seconds since the epoch
    scheduled_time: float | None = None
    end_time: float | None = None
    owner: str | None = None  # the worker running it
    lease_until: float | None = None  # by the database's clock: the owner must renew before it, or it runs again
    attempts: int = 0  # claims that did not end in a final status (the owner died) count toward max_attempts
    code: str | None = None
    message: str | None = None
    audio_seconds: float = 0.0  # billed: every transcribed channel of every file
    results: list[dict] = field(default_factory=list)  # per file: file_url, status, code/message or document


class SqlTaskStore:
    """The task store's statements, written once for both databases. Lease times come from the database's clock
    (`NOW`), so replicas on hosts whose clocks disagree still agree on which leases ran out; the times shown to
    clients (submit, scheduled, end) are the replica's wall clock. Subclasses connect and implement `_send`, which
    takes `?` placeholders; statements must hold no literal `?` or `%`, as psycopg would read them as placeholders."""

    NOW = ""  # SQL for the database's clock in seconds since the epoch
    LOCK_CLAIMED = ""  # appended to claim's inner SELECT: PostgreSQL's row locks; SQLite's writes are serial anyway
    REQUEST_FIELD = ""  # SQL for a field of the JSON `request` column, `{}` its name
    OUTAGES: tuple[type[Exception], ...] = ()  # what the driver raises when the database cannot be reached

    def __init__(self, max_attempts: int = 3):
        self.max_attempts = max_attempts
        self.problem: str | None = None  # why the last statement did not reach the database
        # writes go through one connection under a lock anyway: more threads would only queue on it
        self.writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qasr-store-write")
        self.reads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="qasr-store-read")

    async def run(self, call: Callable[..., T], *args: object, read: bool = False) -> T:
        """`call(*args)` (a method of this store, or anything that reads it with read=True) off the event loop. A
        database that cannot be reached is a TaskStoreUnavailable."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.reads if read else self.writes, call, *args)
        except self.OUTAGES as error:
            raise TaskStoreUnavailable(f"The task store cannot be reached ({self.problem or error})") from error

    @property
    def up(self) -> bool:
        """Whether the last statement reached the database (the worker runs some every second or so)."""
        return self.problem is None

    def close(self) -> None:
        """Waits for the calls in flight, then closes the connections; blocking: not on the event loop."""
        self.writes.shutdown(wait=True, cancel_futures=True)
        self.reads.shutdown(wait=True, cancel_futures=True)
        self._disconnect()

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _execute(self, sql: str, args: tuple | list) -> list[tuple]:
        """Runs one statement in its own transaction (safe from any thread) and returns its rows."""
        return self._reaching(self._send, sql, args)

    def _query(self, sql: str, args: tuple | list) -> list[tuple]:
        """A read-only `_execute`, which a store may run on a connection of its own."""
        return self._reaching(self._send_read, sql, args)

    def _reaching(self, send: Callable[[str, tuple | list], list[tuple]], sql: str, args: tuple | list) -> list[tuple]:
        try:
            rows = send(sql, args)
        except self.OUTAGES as error:
            self.problem = f"{type(error).__name__}: {error}".strip().rstrip(":")
            raise
        self.problem = None
        return rows

    def _send(self, sql: str, args: tuple | list) -> list[tuple]:
        raise NotImplementedError

    def _send_read(self, sql: str, args: tuple | list) -> list[tuple]:
        return self._send(sql, args)

    def add(self, task: Task) -> None:
        self._execute(f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                      _row(task))

    def add_once(self, task: Task) -> Task:
        """Adds `task` unless a task of its id is stored already; returns the stored one (a retried submit's)."""
        self._execute(f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
                      "ON CONFLICT (task_id) DO NOTHING", _row(task))
        stored = self.get(task.task_id)
        assert stored is not None, "a task stored a moment ago cannot have expired"
        return stored

    def get(self, task_id: str) -> Task | None:
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM tasks WHERE task_id = ?", (task_id,))
        return _task(rows[0]) if rows else None

    def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Task]:
        """Up to `limit` of the oldest PENDING tasks become RUNNING under `owner`; one statement, so two
        replicas never claim the same task."""
        if limit <= 0:
            return []
        rows = self._execute(
            f"UPDATE tasks SET status = ?, owner = ?, lease_until = {self.NOW} + ?, attempts = attempts + 1, "
            "scheduled_time = COALESCE(scheduled_time, ?) WHERE task_id IN "
            f"(SELECT task_id FROM tasks WHERE status = ? ORDER BY submit_time LIMIT ?{self.LOCK_CLAIMED}) "
            f"RETURNING {', '.join(COLUMNS)}",
            (RUNNING, owner, lease_seconds, time.time(), PENDING, limit))
        return sorted((_task(row) for row in rows), key=lambda task: task.submit_time)

    def renew(self, owner: str, task_ids: list[str], lease_seconds: float) -> set[str]:
        """Extends the leases of the given tasks the owner still holds; returns those (the rest it lost)."""
        owned = set()
        for start in range(0, len(task_ids), 500):  # SQLite caps the number of bound parameters
            chunk = task_ids[start:start + 500]
            rows = self._execute(f"UPDATE tasks SET lease_until = {self.NOW} + ? WHERE owner = ? AND status = ? AND "
                                 f"task_id IN ({', '.join('?' * len(chunk))}) RETURNING task_id",
                                 (lease_seconds, owner, RUNNING, *chunk))
            owned.update(row[0] for row in rows)
        return owned

    def finish(self, task: Task) -> bool:
        """Writes the task's final status and results if its owner still holds it; False if it lost the task."""
        rows = self._execute(
            "UPDATE tasks SET status = ?, end_time = ?, code = ?, message = ?, audio_seconds = ?, results = ?, "
            "lease_until = NULL WHERE task_id = ? AND owner = ? AND status = ? RETURNING task_id",
            (task.status, task.end_time or time.time(), task.code, task.message, task.audio_seconds,
             json.dumps(task.results, ensure_ascii=False), task.task_id, task.owner, RUNNING))
        return bool(rows)

    def release(self, owner: str, task_ids: list[str]) -> None:
        """The owner stops (a graceful shutdown): its tasks go back to PENDING, and the attempt does not count."""
        for task_id in task_ids:
            self._execute("UPDATE tasks SET status = ?, owner = NULL, lease_until = NULL, attempts = attempts - 1 "
                          "WHERE task_id = ? AND owner = ? AND status = ?", (PENDING, task_id, owner, RUNNING))

    def interrupt(self, owner: str, task_id: str) -> Task | None:
        """The owner's engine died while running the task, maybe of its audio: the attempt counts, as when a
        replica dies, so the task goes back to PENDING, or FAILS after max_attempts claims. Returns it if it
        failed."""
        failed = self._execute(
            "UPDATE tasks SET status = ?, end_time = ?, code = 'InternalError', "
            "message = 'The engine running the task stopped ' || attempts || ' times; giving up.', "
            f"lease_until = NULL WHERE task_id = ? AND owner = ? AND status = ? AND attempts >= ? "
            f"RETURNING {', '.join(COLUMNS)}", (FAILED, time.time(), task_id, owner, RUNNING, self.max_attempts))
        self._execute("UPDATE tasks SET status = ?, owner = NULL, lease_until = NULL WHERE task_id = ? AND owner = ? "
                      "AND status = ?", (PENDING, task_id, owner, RUNNING))
        return _task(failed[0]) if failed else None

    def release_owner(self, owner: str) -> int:
        """`release` of every task RUNNING under `owner`, also those it claimed but never learnt of (a claim
        interrupted by the shutdown may still have committed). Returns how many."""
        return len(self._execute("UPDATE tasks SET status = ?, owner = NULL, lease_until = NULL, "
                                 "attempts = attempts - 1 WHERE owner = ? AND status = ? RETURNING task_id",
                                 (PENDING, owner, RUNNING)))

    def requeue_expired(self) -> tuple[list[Task], int]:
        """RUNNING tasks whose lease ran out (the owner died) go back to PENDING, or FAIL after max_attempts
        claims, so that audio which kills the server cannot kill every replica in turn. Returns the failed, and
        how many went back to PENDING."""
        failed = self._execute(
            "UPDATE tasks SET status = ?, end_time = ?, code = 'InternalError', "
            "message = 'The task was interrupted ' || attempts || ' times (the server running it stopped); "
            f"giving up.', lease_until = NULL WHERE status = ? AND lease_until < {self.NOW} AND attempts >= ? "
            f"RETURNING {', '.join(COLUMNS)}", (FAILED, time.time(), RUNNING, self.max_attempts))
        requeued = self._execute(f"UPDATE tasks SET status = ?, owner = NULL, lease_until = NULL WHERE status = ? "
                                 f"AND lease_until < {self.NOW} RETURNING task_id", (PENDING, RUNNING))
        return [_task(row) for row in failed], len(requeued)

    def cancel(self, task_id: str) -> Task | None:
        """PENDING -> CANCELED; None if the task is not PENDING (or does not exist)."""
        rows = self._execute(f"UPDATE tasks SET status = ?, end_time = ? WHERE task_id = ? AND status = ? "
                             f"RETURNING {', '.join(COLUMNS)}", (CANCELED, time.time(), task_id, PENDING))
        return _task(rows[0]) if rows else None

    def purge(self, finished_before: float) -> int:
        """Deletes finished tasks (and so their results) that ended before the given time."""
        rows = self._execute("DELETE FROM tasks WHERE end_time < ? AND status IN (?, ?, ?) RETURNING task_id",
                             (finished_before, *FINAL_STATUSES))
        return len(rows)

    def page(self, status: str | None = None, model: str | None = None, offset: int = 0,
             limit: int = 10, key_hash: str | None = None) -> tuple[list[Task], int]:
        """The newest tasks first, and how many match in all (of one API key's, with `key_hash`)."""
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if model is not None:
            where.append(f"{self.REQUEST_FIELD.format('model')} = ?")
            args.append(model)
        if key_hash is not None:
            where.append(f"{self.REQUEST_FIELD.format('key_hash')} = ?")
            args.append(key_hash)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = self._query(f"SELECT COUNT(*) FROM tasks{clause}", args)[0][0]
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM tasks{clause} ORDER BY submit_time DESC "
                             "LIMIT ? OFFSET ?", (*args, limit, offset))
        return [_task(row) for row in rows], total

    def secret(self, name: str) -> bytes:
        """A random secret every replica sharing this store shares: made by whichever asks first."""
        self._execute("INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                      (name, secrets.token_hex(32)))
        return bytes.fromhex(self._query("SELECT value FROM secrets WHERE name = ?", (name,))[0][0])

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        counts.update(self._query("SELECT status, COUNT(*) FROM tasks GROUP BY status", ()))
        return counts


class TaskStore(SqlTaskStore):
    """Tasks in one SQLite file (WAL, fully synced: an accepted task survives a crash); safe from any thread, and
    shared safely by the server processes of one host (SQLite's locks do not hold over network file systems). Reads
    have a connection of their own: in WAL mode they never wait for a writer, here not for ours either."""

    NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # millisecond resolution
    REQUEST_FIELD = "json_extract(request, '$.{}')"
    OUTAGES = (sqlite3.OperationalError,)  # locked past the busy timeout, the disk gone
    # another process's write makes ours wait this long at most, then fail (the worker retries on its next round):
    # well under a lease, so a stuck writer cannot make a renew late
    BUSY_TIMEOUT_S = 5.0

    def __init__(self, path: str | Path, max_attempts: int = 3):
        super().__init__(max_attempts)
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = self._connect(path)
        with self.lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        # ":memory:" is a new database on every connection
        self.read_lock, self.reader = ((self.lock, self.db) if str(path) == ":memory:" else
                                       (threading.Lock(), self._connect(path)))

    def _connect(self, path: str | Path) -> sqlite3.Connection:
        # autocommit: each statement is its own transaction
        return sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=self.BUSY_TIMEOUT_S)

    def _disconnect(self) -> None:
        with self.lock, self.read_lock if self.read_lock is not self.lock else contextlib.nullcontext():
            self.db.close()
            self.reader.close()

    def _send(self, sql: str, args: tuple | list) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def _send_read(self, sql: str, args: tuple | list) -> list[tuple]:
        with self.read_lock:
            return self.reader.execute(sql, args).fetchall()


def open_task_store(url: str | Path, max_attempts: int = 3) -> SqlTaskStore:
    """`postgresql://...` or `postgres://...` (a libpq URL): PostgreSQL, for replicas on several hosts; anything
    else is the path of a SQLite file (":memory:": this process only)."""
    if str(url).startswith(("postgresql://", "postgres://")):
        from qasr.serve.task_store_postgres import PostgresTaskStore  # psycopg is the optional `postgres` extra

        return PostgresTaskStore(str(url), max_attempts)
    return TaskStore(url, max_attempts)


def _row(task: Task) -> tuple:
    values = asdict(task)
    values["request"] = json.dumps(values["request"], ensure_ascii=False)
    values["results"] = json.dumps(values["results"], ensure_ascii=False)
    return tuple(values[name] for name in COLUMNS)


def _task(row: tuple) -> Task:
    values = dict(zip(COLUMNS, row))
    values["request"] = TaskRequest(**json.loads(values["request"]))
    values["results"] = json.loads(values["results"])
    return Task(**values)
