"""SQLiteStore: the TaskStore port in a SQLite file (or ``":memory:"``), safe across processes.

Dedup is the database's job: a partial unique index over ``(org_scope, task_key)`` of active
rows, and ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` inside a ``BEGIN IMMEDIATE``
transaction, so two processes submitting one key at once get one row.

Writes that are not inserts (status transitions, progress, messages queued for an offline
owner) are buffered and written in one transaction at the end of the current event-loop
iteration, or earlier by the next insert or read. A run of 10,000 short tasks thus costs about
one commit per task instead of three, while the insert that decides dedup is committed before
``run_background`` returns.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable
from typing import Any

from ._lifecycle import ACTIVE, TaskEvent, TaskStatus, sources
from ._model import Message, Owner, TaskRecord, scope
from ._ports import Lease


def _status_list(statuses: Iterable[TaskStatus]) -> str:
    return ", ".join(f"'{s.value}'" for s in sorted(statuses))


_ACTIVE_SQL = _status_list(ACTIVE)
_INTERRUPTIBLE_SQL = _status_list(sources(TaskEvent.INTERRUPT))
_TERMINAL_VALUES = frozenset(s.value for s in TaskStatus if s not in ACTIVE)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tasks (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    user_scope  TEXT NOT NULL,
    org_scope   TEXT NOT NULL,
    module      TEXT NOT NULL,
    label       TEXT NOT NULL,
    task_key    TEXT,
    status      TEXT NOT NULL,
    progress    REAL NOT NULL,
    checkpoint  TEXT NOT NULL,
    result      TEXT NOT NULL,
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    runner_id   TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_active_key
    ON tasks (org_scope, task_key)
    WHERE task_key IS NOT NULL AND status IN ({_ACTIVE_SQL});
CREATE INDEX IF NOT EXISTS tasks_by_key ON tasks (org_scope, task_key, created_at);
CREATE INDEX IF NOT EXISTS tasks_by_user ON tasks (user_scope, org_scope, created_at);
CREATE INDEX IF NOT EXISTS tasks_active_runner
    ON tasks (runner_id) WHERE status IN ({_ACTIVE_SQL});
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY,
    user_scope  TEXT NOT NULL,
    org_scope   TEXT NOT NULL,
    message     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_owner ON outbox (user_scope, org_scope, seq);
CREATE TABLE IF NOT EXISTS leases (
    runtime_id  TEXT PRIMARY KEY,
    expires_at  REAL NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL
);
"""

_COLUMNS = (
    "id, user_scope, org_scope, module, label, task_key, status, progress, checkpoint, "
    "result, error, created_at, updated_at, runner_id"
)
_ORDER = "ORDER BY created_at DESC, seq DESC"
# Built once: the statements of every submission and every Runtime.wait.
_INSERT = (
    f"INSERT INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' * 14)}) "
    "ON CONFLICT DO NOTHING RETURNING id"
)
_SELECT_BY_ID = f"SELECT {_COLUMNS} FROM tasks WHERE id = ?"
_JSON_FIELDS = frozenset({"checkpoint", "result"})
_FIELDS = frozenset(
    {"label", "status", "progress", "checkpoint", "result", "error", "updated_at", "runner_id"}
)


def _dump(value: object) -> str:
    """``json.dumps``, skipping the encoder for what a new task holds (None, {})."""
    if value is None:
        return "null"
    if type(value) is dict and not value:
        return "{}"
    return json.dumps(value)


def _load(text: str) -> Any:
    """``json.loads``, skipping the decoder for what most rows hold (null, {}, small ints)."""
    if text == "null":
        return None
    if text == "{}":
        return {}
    if text.isascii() and text.isdigit():
        return int(text)
    return json.loads(text)


def _row(values: tuple[Any, ...]) -> TaskRecord:
    (tid, user, org, module, label, key, status, progress, checkpoint, result, error,
     created, updated, runner) = values  # fmt: skip
    return TaskRecord(
        id=tid,
        user_id=_load(user),
        organization_id=_load(org),
        module=module,
        label=label,
        task_key=key,
        status=status,
        progress=progress,
        checkpoint=_load(checkpoint),
        result=_load(result),
        error=error,
        created_at=created,
        updated_at=updated,
        runner_id=runner,
    )


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with *prefix*.

    ``task_key >= prefix AND task_key < bound`` selects exactly the keys with that prefix
    (SQLite compares TEXT as UTF-8 bytes, which orders like code points), uses the index,
    and treats ``_`` and ``%`` as the literal characters they are. ``None``: no upper bound.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be encoded; skip past them
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


class SQLiteStore:
    """Task rows in SQLite. ``SQLiteStore("tasks.db")`` or ``SQLiteStore(":memory:")``.

    A file store is *shared*: several runtimes, in several processes, may open it at once;
    dedup holds across them and recovery finds the tasks of runtimes that are gone.
    Durability: WAL with ``synchronous=NORMAL``, so a committed row survives the process
    being killed (not necessarily a power cut).
    """

    #: The DDL run when the store opens (idempotent statements separated by ``;``). A seam: a
    #: subclass may add indexes, or (in the conformance suite's one-bug variants) drop one.
    schema: str = _SCHEMA

    def __init__(self, path: str | os.PathLike[str] = ":memory:", *, busy_timeout: float = 10.0):
        self.path = os.fspath(path)
        self.shared = self.path != ":memory:" and not self.path.startswith("file::memory:")
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
        )
        self._lock = threading.RLock()
        self._pending: dict[str, dict[str, object]] = {}
        self._outbox: list[tuple[str, str, str]] = []  # queued messages, not yet written
        self._flush_scheduled = False
        self._closed = False
        with self._lock:
            self._open_schema(busy_timeout)

    def _open_schema(self, busy_timeout: float) -> None:
        """Switch to WAL and create the schema, while other processes may do the same.

        SQLite answers "database is locked" at once, without the busy handler, when two
        connections change the journal mode of a new file together; so retry for as long as
        the busy timeout allows. The schema is created in one write transaction.
        """
        deadline = time.monotonic() + busy_timeout
        delay = 0.001
        while True:
            try:
                if self.shared:
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                with self._transaction():
                    for statement in self.schema.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    # ------------------------------------------------------------ write-behind buffer

    def _apply_pending(self) -> None:
        """Write buffered updates and messages; the caller holds the lock and a transaction.

        Updates that set the same columns go in one ``executemany`` (a run of tasks mostly
        sets status, updated_at, result and progress), the queued messages in another.
        """
        pending, self._pending = self._pending, {}
        outbox, self._outbox = self._outbox, []
        by_columns: dict[tuple[str, ...], list[tuple[object, ...]]] = {}
        for task_id, changes in pending.items():
            if not changes:  # update(task_id, {}) changes nothing (and "SET  WHERE" is invalid)
                continue
            names = tuple(changes)
            values = [_dump(changes[n]) if n in _JSON_FIELDS else changes[n] for n in names]
            by_columns.setdefault(names, []).append((*values, task_id))
        for names, rows in by_columns.items():
            assignments = ", ".join(f"{n} = ?" for n in names)
            self._db.executemany(
                f"UPDATE tasks SET {assignments} WHERE id = ? AND status IN ({_ACTIVE_SQL})", rows
            )
        if outbox:
            self._db.executemany(
                "INSERT INTO outbox (user_scope, org_scope, message) VALUES (?, ?, ?)", outbox
            )

    def flush(self) -> None:
        """Write every buffered update now, in one transaction."""
        with self._lock:
            self._flush_scheduled = False
            if not (self._pending or self._outbox) or self._closed:
                return
            with self._transaction():
                self._apply_pending()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    # ------------------------------------------------------------ rows

    def insert_or_get_active(self, record: TaskRecord) -> tuple[TaskRecord, bool]:
        row = (
            record.id, scope(record.user_id), scope(record.organization_id), record.module,
            record.label, record.task_key, record.status, record.progress,
            _dump(record.checkpoint), _dump(record.result), record.error,
            record.created_at, record.updated_at, record.runner_id,
        )  # fmt: skip
        with self._lock, self._transaction():
            if self._pending or self._outbox:  # the buffer rides along in this transaction
                self._apply_pending()
            inserted = self._db.execute(_INSERT, row).fetchone()
            if inserted is not None:
                return record, True
            holder = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE org_scope = ? AND task_key = ? "
                f"AND task_key IS NOT NULL AND status IN ({_ACTIVE_SQL})",
                (row[2], record.task_key),
            ).fetchone()
            if holder is None:  # pragma: no cover - the conflict was on the id itself
                raise sqlite3.IntegrityError(f"task id {record.id} already exists")
            return _row(holder), False

    def get(self, task_id: str) -> TaskRecord | None:
        found = self._query(_SELECT_BY_ID, (task_id,))
        return found[0] if found else None

    def update(self, task_id: str, changes: dict[str, object]) -> None:
        if not _FIELDS.issuperset(changes):  # no set to build in the usual case
            raise ValueError(f"cannot update task fields {sorted(set(changes) - _FIELDS)}")
        with self._lock:
            merged = self._pending.setdefault(task_id, {})
            if merged.get("status") in _TERMINAL_VALUES:
                return  # already terminal in the buffer: a terminal row never changes
            merged.update(changes)
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Flush at the end of this event-loop iteration, or now outside a running loop."""
        with self._lock:
            if self._flush_scheduled:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is None:
                self.flush()
            else:
                self._flush_scheduled = True
                loop.call_soon(self.flush)

    def _query(self, sql: str, params: tuple[object, ...]) -> list[TaskRecord]:
        with self._lock:
            if self._pending or self._outbox:
                self.flush()
            return [_row(values) for values in self._db.execute(sql, params)]

    def find_by_key(self, task_key: str, organization_id: object) -> list[TaskRecord]:
        return self._query(
            f"SELECT {_COLUMNS} FROM tasks WHERE org_scope = ? AND task_key = ? {_ORDER}",
            (scope(organization_id), task_key),
        )

    def find_by_key_prefix(self, prefix: str, organization_id: object) -> list[TaskRecord]:
        upper = prefix_upper_bound(prefix)
        bound, params = ("", ()) if upper is None else (" AND task_key < ?", (upper,))
        return self._query(
            f"SELECT {_COLUMNS} FROM tasks WHERE org_scope = ? AND task_key >= ?{bound} " + _ORDER,
            (scope(organization_id), prefix, *params),
        )

    def find_by_user(self, user_id: object, organization_id: object) -> list[TaskRecord]:
        return self._query(
            f"SELECT {_COLUMNS} FROM tasks WHERE user_scope = ? AND org_scope = ? {_ORDER}",
            (scope(user_id), scope(organization_id)),
        )

    def explain(self, sql: str, params: tuple[object, ...] = ()) -> list[str]:
        """The query plan SQLite would use (benchmarks show that queries use the indexes)."""
        with self._lock:
            return [str(r[-1]) for r in self._db.execute("EXPLAIN QUERY PLAN " + sql, params)]

    # ------------------------------------------------------------ offline queue

    def enqueue(self, owner: Owner, message: Message) -> None:
        # Buffered with the row updates and written in the same transaction: a queued
        # "completed" is never committed while the row it reports is still "running" (a crash
        # then would contradict it), and a run of tasks costs no commit per message.
        with self._lock:
            self._outbox.append(
                (scope(owner.user_id), scope(owner.organization_id), json.dumps(message))
            )
            self._schedule_flush()

    def drain(self, owner: Owner) -> list[Message]:
        with self._lock, self._transaction():
            self._apply_pending()  # messages still in the buffer come out too, in order
            kept = self._db.execute(
                "DELETE FROM outbox WHERE user_scope = ? AND org_scope = ? RETURNING seq, message",
                (scope(owner.user_id), scope(owner.organization_id)),
            ).fetchall()
        return [json.loads(message) for _, message in sorted(kept)]

    # ------------------------------------------------------------ leases and recovery

    def heartbeat(self, lease: Lease) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO leases (runtime_id, expires_at, host, pid) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (runtime_id) DO UPDATE SET expires_at = excluded.expires_at",
                lease,
            )

    def leases(self) -> list[Lease]:
        with self._lock:
            return [Lease(*r) for r in self._db.execute("SELECT * FROM leases")]

    def interrupt_orphans(self, dead: Collection[str], now: float, error: str) -> list[TaskRecord]:
        with self._lock, self._transaction():
            self._apply_pending()
            self._db.executemany("DELETE FROM leases WHERE runtime_id = ?", [(d,) for d in dead])
            rows = self._db.execute(
                f"UPDATE tasks SET status = 'interrupted', error = ?, updated_at = ? "
                f"WHERE status IN ({_INTERRUPTIBLE_SQL}) AND (runner_id IS NULL OR "
                "runner_id NOT IN (SELECT runtime_id FROM leases)) "
                f"RETURNING {_COLUMNS}",
                (error, now),
            ).fetchall()
        return [_row(r) for r in rows]

    def release(self, runtime_id: str) -> None:
        with self._lock:
            # What the runtime buffered (its tasks' last statuses and messages) is written
            # before its lease goes: after that, recovery may treat its tasks as orphans.
            self.flush()
            self._db.execute("DELETE FROM leases WHERE runtime_id = ?", (runtime_id,))

    def close(self) -> None:
        """Write what is buffered and close the connection."""
        with self._lock:
            if self._closed:
                return
            self.flush()
            self._closed = True
            self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): takes the write lock first."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
