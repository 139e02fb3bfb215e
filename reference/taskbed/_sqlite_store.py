"""SQLiteStore: the TaskStore port in a SQLite file (or ``":memory:"``), safe across processes.

Dedup is the database's job: a partial unique index over ``(org_scope, task_key)`` of active
rows, and ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` inside a ``BEGIN IMMEDIATE``
transaction, so two processes submitting one key at once get one row.

Writes never run on the event loop. Each write is queued for one writer thread, which takes
everything queued so far and writes it in one transaction (group commit: a run of tasks costs
about one commit per loop iteration, not one per write) while the loop goes on. Waiting for
the write lock another process holds (``busy_timeout``) happens in that thread. A transaction
that fails (a disk I/O error, a full disk, the lock) is rolled back and retried, with every
write it carried, until each write's retry window (``retry_for``) closes; then the caller of
that write gets :class:`~taskbed.StoreWriteError` and the write is not made. Messages kept for
an offline owner have no caller: they stay queued until they are written.

Reads use a second connection: in WAL mode they never wait for a writer.

Fencing (specs/leases.md): leases live in ``runtime_leases`` with a token from ``fencing``, a
counter that only grows; every task write carries ``runner_id = ? AND runner_token = ?`` and
the lease's existence in its ``WHERE``. Lease expiry uses the database's clock
(``julianday('now')``), or the ``clock`` given to the store; never a runtime's clock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from ._memory_store import lease_lost
from ._model import Message, Owner, TaskRecord, scope
from ._ports import Clock, Lease
from ._sql_common import ACTIVE_SQL as _ACTIVE_SQL
from ._sql_common import COLUMNS as _COLUMNS
from ._sql_common import INTERRUPTIBLE_SQL as _INTERRUPTIBLE_SQL
from ._sql_common import ORDER as _ORDER
from ._sql_common import GroupCommitStore, Write, answer, check_fields, dump, kept_messages
from ._sql_common import task_record as _row

log = logging.getLogger("taskbed")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tasks (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    user_scope   TEXT NOT NULL,
    org_scope    TEXT NOT NULL,
    module       TEXT NOT NULL,
    label        TEXT NOT NULL,
    task_key     TEXT,
    status       TEXT NOT NULL,
    progress     REAL NOT NULL,
    checkpoint   TEXT NOT NULL,
    result       TEXT NOT NULL,
    error        TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    runner_id    TEXT,
    runner_token INTEGER
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
CREATE TABLE IF NOT EXISTS fencing (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    token       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runtime_leases (
    runtime_id  TEXT PRIMARY KEY,
    token       INTEGER NOT NULL,
    expires_at  REAL NOT NULL
);
"""

# Built once: the statements of every submission and every Runtime.wait.
_INSERT = (
    f"INSERT INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' * 15)}) "
    "ON CONFLICT DO NOTHING RETURNING id"
)
_SELECT_BY_ID = f"SELECT {_COLUMNS} FROM tasks WHERE id = ?"
_HOLDS = "SELECT 1 FROM runtime_leases WHERE runtime_id = ? AND token = ?"
#: The fence every task write carries: the row's claim and the lease behind it.
_FENCE = (
    f"status IN ({_ACTIVE_SQL}) AND runner_id = ? AND runner_token = ? AND EXISTS "
    "(SELECT 1 FROM runtime_leases WHERE runtime_id = ? AND token = ?)"
)
_DB_NOW = "SELECT (julianday('now') - 2440587.5) * 86400.0"
_JSON_FIELDS = frozenset({"checkpoint", "result"})
#: SQLite errors that a retry may cure (I/O error, full disk, busy or locked database).
_FATAL = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
#: Commits between two WAL checkpoints (SQLite's automatic one comes every 1,000 pages).
_CHECKPOINT_EVERY = 500


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


class SQLiteStore(GroupCommitStore):
    """Task rows in SQLite. ``SQLiteStore("tasks.db")`` or ``SQLiteStore(":memory:")``.

    A file store is *shared*: several runtimes, in several processes, may open it at once;
    dedup holds across them and recovery finds the tasks of runtimes that are gone.
    Durability: WAL with ``synchronous=NORMAL``, so a committed row survives the process
    being killed (not necessarily a power cut).

    Args:
        path: the database file, or ``":memory:"``.
        busy_timeout: how long the writer thread waits for a lock another process holds,
            per attempt.
        retry_for: how long a failing write is retried before its caller gets
            ``StoreWriteError`` (seconds).
        clock: the store's clock for lease expiry; by default the database's own
            (``julianday('now')``). The conformance adapter passes its virtual clock.
    """

    #: The DDL run when the store opens (idempotent statements separated by ``;``). A seam: a
    #: subclass may add indexes, or (in the conformance suite's one-bug variants) drop one.
    schema: str = _SCHEMA
    kind: ClassVar[str] = "SQLiteStore"
    _pause: ClassVar[tuple[float, float]] = (0.005, 0.25)
    _row = staticmethod(_row)
    _select_by_id: ClassVar[str] = _SELECT_BY_ID

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        busy_timeout: float = 10.0,
        retry_for: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(retry_for=retry_for)
        self.path = os.fspath(path)
        self.shared = self.path != ":memory:" and not self.path.startswith("file::memory:")
        self.clock = clock
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
        )
        # One connection per database in memory (each ":memory:" connection is its own
        # database): reads and the writer then take turns on it.
        self._read_lock = threading.Lock()
        self._busy_ms = int(busy_timeout * 1000)
        self._timeout_set = self._busy_ms
        self._writer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="taskbed-sqlite-writer"
        )
        self._open_schema(busy_timeout)
        self._reader = (
            sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
            )
            if self.shared
            else self._db
        )

    def _open_schema(self, busy_timeout: float) -> None:
        """Switch to WAL and create the schema, while other processes may do the same.

        SQLite answers "database is locked" at once, without the busy handler, when two
        connections change the journal mode of a new file together; so retry for as long as
        the busy timeout allows. The schema is created in one write transaction; a file
        made by an older taskbed gets the ``runner_token`` column.
        """
        deadline = time.monotonic() + busy_timeout
        delay = 0.001
        while True:
            try:
                if self.shared:
                    self._db.execute("PRAGMA journal_mode=WAL")
                    # A checkpoint syncs the file: the writer thread runs it, never the loop.
                    self._db.execute("PRAGMA wal_autocheckpoint=0")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in self.schema.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    columns = {r[1] for r in self._db.execute("PRAGMA table_info(tasks)")}
                    if "runner_token" not in columns:  # pragma: no cover - an old file
                        self._db.execute("ALTER TABLE tasks ADD COLUMN runner_token INTEGER")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    # ------------------------------------------------------------ the writer
    #
    # Every write is queued. At the end of the loop iteration the queue is written in one
    # transaction on the loop thread, with a busy timeout of 0: a write that would have to
    # wait (another process holds the lock) or that fails (I/O error, full disk) never
    # waits there. Such a batch goes to the writer thread, which waits, retries and answers
    # each write; while it works, every new write goes to it too, so writes stay in order.

    def _flush_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """End of a loop iteration: write the queue now, or hand it to the writer thread."""
        with self._lock:
            self._scheduled = False
            if self._thread_busy:
                return  # the thread takes the queue as it goes: writes stay in order
            batch = self._take()
        if not batch:
            return
        failure = self._commit(batch, wait=False)
        with self._lock:
            if failure is None:
                self._committed(batch)
            else:  # the writer thread waits for the lock, or retries
                self._in_flight = []
                self._queue = batch + self._queue
                self._thread_busy = True
        if failure is None:
            for w in batch:
                answer(w)
            if self._queue:  # deletes of messages drained while they were written
                self._schedule(loop)
            if self.shared and self._commits % _CHECKPOINT_EVERY == 0:
                with self._lock:
                    self._thread_busy = True  # writes queue up for the thread meanwhile
                loop.run_in_executor(self._writer, self._checkpoint)
        else:
            # run_in_executor, not a bare submit: the harness's virtual loop sees the thread
            # working and holds virtual time still meanwhile.
            loop.run_in_executor(self._writer, self._work)

    def _checkpoint(self) -> None:
        """The writer thread: copy the WAL into the database file (what SQLite's automatic
        checkpoint would do at a commit on the loop, with an fsync), then write what queued up."""
        try:
            with self._read_lock if not self.shared else contextlib.nullcontext():
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # another connection is checkpointing, or a fault
            log.debug("taskbed: WAL checkpoint of %s skipped: %s", self.path, exc)
        finally:
            self._work()

    def _commit(self, batch: list[Write], *, wait: bool) -> sqlite3.Error | None:
        """Run *batch* in one transaction; the error that made it fail, or None.

        *wait*: wait for a lock held elsewhere (the writer thread) or not (the loop).
        """
        with self._read_lock if not self.shared else contextlib.nullcontext():
            try:
                if self._fault is not None:
                    raise self._fault
                timeout = self._busy_ms if wait else 0
                if timeout != self._timeout_set:
                    self._db.execute(f"PRAGMA busy_timeout = {timeout}")
                    self._timeout_set = timeout
                self._db.execute("BEGIN IMMEDIATE")
                for w in batch:
                    try:
                        w.result, w.error = w.run(self._db), None
                    except _FATAL as exc:  # this write is wrong, not the store: answer it
                        w.error = exc
                    except Exception as exc:  # LeaseLostError and the like: answer it too
                        if isinstance(exc, sqlite3.Error):
                            raise
                        w.error = exc
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                # no transaction may be left to roll back (it failed to begin)
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.ProgrammingError):  # closed: nothing will cure it
                    for w in batch:
                        w.error, w.done = self._closed_error(), True
                return exc
        return None

    @property
    def _name(self) -> str:
        return f"the task store {self.path!r}"

    def _now(self, db: sqlite3.Connection) -> float:
        """The store's clock (the database's, unless one was given)."""
        if self.clock is not None:
            return self.clock.now()
        return float(db.execute(_DB_NOW).fetchone()[0])

    # ------------------------------------------------------------ leases and recovery

    async def acquire(self, runtime_id: str, ttl: float) -> Lease:
        def run(db: sqlite3.Connection) -> Lease:
            (token,) = db.execute(
                "INSERT INTO fencing (id, token) VALUES (1, 1) "
                "ON CONFLICT (id) DO UPDATE SET token = token + 1 RETURNING token"
            ).fetchone()
            lease = Lease(runtime_id, token, self._now(db) + ttl)
            db.execute(
                "INSERT INTO runtime_leases (runtime_id, token, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (runtime_id) DO UPDATE SET token = excluded.token, "
                "expires_at = excluded.expires_at",
                lease,
            )
            return lease

        lease: Lease = await self._write(run)
        return lease

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        def run(db: sqlite3.Connection) -> Lease | None:
            renewed = lease._replace(expires_at=self._now(db) + ttl)
            changed = db.execute(
                "UPDATE runtime_leases SET expires_at = ? WHERE runtime_id = ? AND token = ?",
                (renewed.expires_at, lease.runtime_id, lease.token),
            ).rowcount
            return renewed if changed else None

        renewed: Lease | None = await self._write(run)
        return renewed

    async def release(self, lease: Lease) -> None:
        await self._write(
            lambda db: db.execute(
                "DELETE FROM runtime_leases WHERE runtime_id = ? AND token = ?",
                (lease.runtime_id, lease.token),
            )
        )

    def leases(self) -> list[Lease]:
        return [
            Lease(*r)
            for r in self._read("SELECT runtime_id, token, expires_at FROM runtime_leases", ())
        ]

    async def interrupt_orphans(self, now: float, error: str) -> list[TaskRecord]:
        def run(db: sqlite3.Connection) -> list[TaskRecord]:
            db.execute("DELETE FROM runtime_leases WHERE expires_at < ?", (self._now(db),))
            rows = db.execute(
                f"UPDATE tasks SET status = 'interrupted', error = ?, updated_at = ? "
                f"WHERE status IN ({_INTERRUPTIBLE_SQL}) AND NOT EXISTS (SELECT 1 FROM "
                "runtime_leases l WHERE l.runtime_id = tasks.runner_id "
                f"AND l.token = tasks.runner_token) RETURNING {_COLUMNS}",
                (error, now),
            ).fetchall()
            return [_row(r) for r in rows]

        orphans: list[TaskRecord] = await self._write(run)
        return orphans

    # ------------------------------------------------------------ rows

    async def insert_or_get_active(
        self, record: TaskRecord, lease: Lease
    ) -> tuple[TaskRecord, bool]:
        record.runner_id, record.runner_token = lease.runtime_id, lease.token
        row = (
            record.id, scope(record.user_id), scope(record.organization_id), record.module,
            record.label, record.task_key, record.status, record.progress,
            dump(record.checkpoint), dump(record.result), record.error,
            record.created_at, record.updated_at, lease.runtime_id, lease.token,
        )  # fmt: skip

        def run(db: sqlite3.Connection) -> tuple[TaskRecord, bool]:
            if db.execute(_HOLDS, (lease.runtime_id, lease.token)).fetchone() is None:
                raise lease_lost(lease)
            if db.execute(_INSERT, row).fetchone() is not None:
                return record, True
            holder = db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE org_scope = ? AND task_key = ? "
                f"AND task_key IS NOT NULL AND status IN ({_ACTIVE_SQL})",
                (row[2], record.task_key),
            ).fetchone()
            if holder is None:  # pragma: no cover - the conflict was on the id itself
                raise sqlite3.IntegrityError(f"task id {record.id} already exists")
            return _row(holder), False

        found: tuple[TaskRecord, bool] = await self._write(run)
        return found

    async def update(
        self,
        task_id: str,
        changes: dict[str, object],
        lease: Lease,
        *,
        keep: tuple[Owner, Message] | None = None,
    ) -> bool:
        check_fields(changes)
        fence = (task_id, *lease[:2], *lease[:2])
        if changes:
            names = tuple(changes)
            values = [dump(changes[n]) if n in _JSON_FIELDS else changes[n] for n in names]
            assignments = ", ".join(f"{n} = ?" for n in names)
            sql = f"UPDATE tasks SET {assignments} WHERE id = ? AND {_FENCE}"
            params = (*values, *fence)
        else:  # changes nothing (and "SET  WHERE" is invalid); still fenced
            sql, params = f"SELECT 1 FROM tasks WHERE id = ? AND {_FENCE}", fence
        kept = None
        if keep is not None:
            owner, message = keep
            kept = (scope(owner.user_id), scope(owner.organization_id), json.dumps(message))

        def run(db: sqlite3.Connection) -> bool:
            cursor = db.execute(sql, params)
            matched = (cursor.rowcount if changes else len(cursor.fetchall())) == 1
            if matched and kept is not None:
                db.execute(
                    "INSERT INTO outbox (user_scope, org_scope, message) VALUES (?, ?, ?)", kept
                )
            return matched

        changed: bool = await self._write(run)
        return changed

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
        return [str(r[-1]) for r in self._read("EXPLAIN QUERY PLAN " + sql, params)]

    # ------------------------------------------------------------ offline queue

    def enqueue(self, owner: Owner, message: Message) -> None:
        slot = (scope(owner.user_id), scope(owner.organization_id))
        text = json.dumps(message)
        write = Write(lambda db: None, time.monotonic() + self.retry_for, slot, text)

        def run(db: sqlite3.Connection) -> None:
            (write.seq,) = db.execute(
                "INSERT INTO outbox (user_scope, org_scope, message) VALUES (?, ?, ?) "
                "RETURNING seq",
                (*slot, text),
            ).fetchone()

        write.run = run
        self._kept(write)

    def drain(self, owner: Owner) -> list[Message]:
        """The owner's kept messages: those written, then those the writer still holds.

        Never waits for a lock: when the write lock is free at once, the written messages
        are deleted as they are read; otherwise they are read and deleted by a later write
        (and not handed out twice meanwhile). A message still queued is taken out of the
        queue; one in a transaction under way is marked, so that its row is deleted once
        written.
        """
        slot = (scope(owner.user_id), scope(owner.organization_id))
        with self._lock:
            unwritten = [w for w in self._queue if w.slot == slot and not w.delivered]
            unwritten += [w for w in self._in_flight if w.slot == slot and not w.delivered]
            unwritten.sort(key=lambda w: w.order)
            skip = {w.seq for w in unwritten if w.seq is not None} | self._skip
            rows = None
            if not self._thread_busy and not self._in_flight:
                rows = self._delete_now(slot)
            deferred = rows is None
            if rows is None:
                rows = self._read(
                    "SELECT seq, message FROM outbox WHERE user_scope = ? AND org_scope = ? "
                    "ORDER BY seq",
                    slot,
                )
            rows = sorted(row for row in rows if row[0] not in skip)
            for w in unwritten:
                w.delivered = True
            self._queue = [w for w in self._queue if not w.delivered]
            if deferred and rows:
                self._skip.update(seq for seq, _ in rows)
        if deferred and rows:
            self._kept(self._delete_kept([seq for seq, _ in rows]))
        return kept_messages(rows, unwritten)

    def _delete_now(self, slot: tuple[str, str]) -> list[tuple[int, str]] | None:
        """Delete and return an owner's written messages, if the lock is free at once."""
        if self._fault is not None:
            return None
        with self._read_lock if not self.shared else contextlib.nullcontext():
            try:
                if self._timeout_set != 0:
                    self._db.execute("PRAGMA busy_timeout = 0")
                    self._timeout_set = 0
                self._db.execute("BEGIN IMMEDIATE")
                rows = self._db.execute(
                    "DELETE FROM outbox WHERE user_scope = ? AND org_scope = ? "
                    "RETURNING seq, message",
                    slot,
                ).fetchall()
                self._db.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                return None
        return [(seq, text) for seq, text in rows]

    def _deleting(self, seqs: list[int]) -> Callable[[sqlite3.Connection], Any]:
        return lambda db: db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """Write what is queued (waiting for it) and close the connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.flush()
        self._writer.shutdown(wait=True)
        left = self._left_unwritten()
        if left:
            log.error("taskbed: %d writes to %s were never made (the store failed)", len(left),
                      self.path)  # fmt: skip
        self._db.close()
        if self._reader is not self._db:
            self._reader.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"
