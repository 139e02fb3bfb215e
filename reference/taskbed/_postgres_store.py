"""PostgresStore: the TaskStore port in PostgreSQL, for runtimes on several hosts.

Needs psycopg 3 (``pip install 'taskbed[postgres]'``); the rest of ``taskbed`` never imports
it, so the reference stays standard-library only.

Theory of operation
-------------------
* **Dedup** is the database's job, as in SQLite: a partial unique index over
  ``(org_scope, task_key)`` of active rows and ``INSERT ... ON CONFLICT DO NOTHING RETURNING``.
  Under READ COMMITTED a second insert of a held key waits for the first transaction, then
  does nothing; the holder is read by the next statement, which sees it committed.
* **Fencing** (specs/leases.md): leases live in ``taskbed_leases`` with a token from the
  sequence ``taskbed_fencing``, which only grows. Every task write carries the row's claim
  ``(runner_id, runner_token)`` and the lease's existence in its ``WHERE``. Lease expiry is
  judged on the server's clock (``clock_timestamp()``), or on the ``clock`` given to the
  store; never on a runtime's.
* **The write path.** Writes never run on the event loop. Each write is queued; at the end of
  the loop iteration one writer thread takes everything queued and makes it in one
  transaction, pipelined: every write is a single statement, so a batch costs about one round
  trip to the server however many writes it carries (group commit). A transaction that fails
  (the server restarts, the network drops, a serialization failure) is rolled back and
  retried, with every write it carried, on a new connection if need be, until each write's
  retry window (``retry_for``) closes; then its caller gets :class:`~taskbed.StoreWriteError`
  and the write is not made. Messages kept for an offline owner have no caller: they stay
  queued until they are written. Reads use a second connection (MVCC: they never wait).
* **Messages across hosts.** A message and the state change it reports leave in one
  transaction: it is ``pg_notify``'d to the hosts where its owner has a connection
  (PostgreSQL delivers notifications on commit, in commit order), or kept in
  ``taskbed_outbox`` when the owner is connected nowhere else; a kept message is announced
  too, so that a host where the owner connected meanwhile drains it. Which owners are
  connected where is ``taskbed_presence``: one row per owner per store (host) with a
  connection of that owner. A row counts while the database session that wrote it is alive
  (``pg_stat_activity``), so a host that dies stops counting as soon as PostgreSQL sees its
  connection close; no pid or hostname is trusted.
* **Keys** are stored as UTF-8 ``bytea``: bytes compare in code-point order (prefix queries
  are a byte range that uses the index) and may hold NUL, which PostgreSQL's ``text`` cannot.
  Labels and errors are stored as JSON text for the same reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ._errors import StoreWriteError
from ._memory_store import lease_lost
from ._model import Message, Owner, TaskRecord, scope
from ._ports import Clock, Lease
from ._sql_common import ACTIVE_SQL as _ACTIVE_SQL
from ._sql_common import COLUMNS as _COLUMNS
from ._sql_common import INTERRUPTIBLE_SQL as _INTERRUPTIBLE_SQL
from ._sql_common import ORDER as _ORDER
from ._sql_common import GroupCommitStore, Write, check_fields, kept_messages, task_record
from ._sql_common import dump as _dump
from ._sql_common import load as _load

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("taskbed")

#: A notification's payload must stay under PostgreSQL's 8000 bytes; a bigger message is
#: stored in ``taskbed_bulletins`` and the notification carries its id.
NOTIFY_LIMIT = 7900


# One advisory lock serialises schema creation between processes opening a new database
# (concurrent CREATE TABLE IF NOT EXISTS can fail on the catalog's unique index).
_SCHEMA_LOCK = 0x7461736B626564  # "taskbed"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS taskbed_tasks (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    user_scope   TEXT NOT NULL,
    org_scope    TEXT NOT NULL,
    module       TEXT NOT NULL,
    label        TEXT NOT NULL,
    task_key     BYTEA,
    status       TEXT NOT NULL,
    progress     DOUBLE PRECISION NOT NULL,
    checkpoint   TEXT NOT NULL,
    result       TEXT NOT NULL,
    error        TEXT,
    created_at   DOUBLE PRECISION NOT NULL,
    updated_at   DOUBLE PRECISION NOT NULL,
    runner_id    TEXT,
    runner_token BIGINT
);
CREATE UNIQUE INDEX IF NOT EXISTS taskbed_tasks_active_key
    ON taskbed_tasks (org_scope, task_key)
    WHERE task_key IS NOT NULL AND status IN ({_ACTIVE_SQL});
CREATE INDEX IF NOT EXISTS taskbed_tasks_by_key
    ON taskbed_tasks (org_scope, task_key, created_at);
CREATE INDEX IF NOT EXISTS taskbed_tasks_by_user
    ON taskbed_tasks (user_scope, org_scope, created_at);
CREATE INDEX IF NOT EXISTS taskbed_tasks_active_runner
    ON taskbed_tasks (runner_id, runner_token) WHERE status IN ({_ACTIVE_SQL});
CREATE TABLE IF NOT EXISTS taskbed_outbox (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_scope  TEXT NOT NULL,
    org_scope   TEXT NOT NULL,
    message     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS taskbed_outbox_by_owner
    ON taskbed_outbox (user_scope, org_scope, seq);
CREATE SEQUENCE IF NOT EXISTS taskbed_fencing;
CREATE TABLE IF NOT EXISTS taskbed_leases (
    runtime_id  TEXT PRIMARY KEY,
    token       BIGINT NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS taskbed_presence (
    node        TEXT NOT NULL,
    user_scope  TEXT NOT NULL,
    org_scope   TEXT NOT NULL,
    backend     INTEGER NOT NULL,
    since       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_scope, org_scope, node)
);
CREATE TABLE IF NOT EXISTS taskbed_bulletins (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload     TEXT NOT NULL,
    posted_at   TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""

_SELECT_BY_ID = f"SELECT {_COLUMNS} FROM taskbed_tasks WHERE id = %s"
_HOLDER = (
    f"SELECT {_COLUMNS} FROM taskbed_tasks WHERE org_scope = %s AND task_key = %s "
    f"AND status IN ({_ACTIVE_SQL})"
)
#: One statement: the insert, only while the lease is held. No row back: the key is held, or
#: the lease is lost (the follow-up look-up tells which).
_INSERT = (
    f"INSERT INTO taskbed_tasks ({_COLUMNS}) "
    f"SELECT {', '.join(['%s'] * 15)} WHERE EXISTS (SELECT 1 FROM taskbed_leases "
    "WHERE runtime_id = %s AND token = %s) ON CONFLICT DO NOTHING RETURNING id"
)
_HOLDS = "SELECT 1 FROM taskbed_leases WHERE runtime_id = %s AND token = %s"
#: The fence every task write carries: the row's claim and the lease behind it. The claim's
#: columns are compared as expressions (``runner_id || ''``, ``runner_token + 0``) so that no
#: index can serve them and the row is found by its id: with the bare columns, the generic
#: plan of the prepared statement scanned ``taskbed_tasks_active_runner`` instead, every
#: active (and not yet vacuumed) entry of the runtime, on each write. Measured with 1,000
#: active tasks: a fenced UPDATE took 2-3x a plain one, growing with their number; now the same.
_FENCE = (
    f"status IN ({_ACTIVE_SQL}) AND runner_id || '' = %(rid)s AND runner_token + 0 = %(tok)s "
    "AND EXISTS (SELECT 1 FROM taskbed_leases WHERE runtime_id = %(rid)s AND token = %(tok)s)"
)
_DB_NOW = "extract(epoch FROM clock_timestamp())::float8"
#: Columns stored as JSON text: values that may hold anything, labels and errors (NUL).
_JSON_FIELDS = frozenset({"checkpoint", "result", "label", "error"})
#: Which presence rows still count: the backend that wrote them is the same one, alive.
_LIVE = (
    "EXISTS (SELECT 1 FROM pg_stat_activity a "
    "WHERE a.pid = p.backend AND a.backend_start = p.since)"
)
#: Where a message goes, decided in the writing transaction. ``g`` (defined before) yields a
#: row when the message is to be sent at all (the update matched; always for a broadcast).
#: ``el``: the owner is connected on another host; then notify, else keep it if asked to.
_ROUTE = f"""
, el AS (SELECT array(SELECT DISTINCT p.node FROM taskbed_presence p
                      WHERE p.user_scope = %(u)s AND p.org_scope = %(o)s AND p.node <> %(me)s
                      AND {_LIVE}) AS nodes
         FROM g LIMIT 1)
, nt AS (SELECT pg_notify(%(ch)s, left(%(payload)s, -1) || ', "t": ' || to_json(nodes)::text
                          || '}}')
         FROM el WHERE cardinality(nodes) > 0)
, kp AS (INSERT INTO taskbed_outbox (user_scope, org_scope, message)
         SELECT %(u)s, %(o)s, %(m)s FROM el WHERE cardinality(nodes) = 0 AND %(keep)s
         RETURNING seq)
, kn AS (SELECT pg_notify(%(ch)s, %(kept)s) FROM kp)
SELECT (SELECT count(*) FROM g), (SELECT max(seq) FROM kp),
       (SELECT count(*) FROM nt) + (SELECT count(*) FROM kn)
"""
#: The ``nt`` of a message too large for a notification: it goes to ``taskbed_bulletins``.
_BULLETIN_NT = """
, bl AS (INSERT INTO taskbed_bulletins (payload) SELECT %(full)s FROM el
         WHERE cardinality(nodes) > 0 RETURNING id)
, nt AS (SELECT pg_notify(%(ch)s, json_build_object('n', %(me)s::text, 'b', bl.id,
                                                    't', el.nodes)::text)
         FROM bl, el)
"""
#: Errors that a retry may cure: the connection broke, the server is restarting, a
#: serialization failure or deadlock (class 08, 57P, 40).
_TRANSIENT_STATES = ("08", "57", "40", "53")

Deliver = Callable[[Owner, Message, bool], None]
Command = Callable[[Owner, str, dict[str, Any]], None]
Kept = Callable[[Owner], None]


def _key(task_key: str | None) -> bytes | None:
    return None if task_key is None else task_key.encode("utf-8")


def _key_text(stored: bytes | memoryview) -> str:
    return bytes(stored).decode("utf-8")


#: A row of ``_COLUMNS`` as a TaskRecord: labels and errors are JSON text, keys UTF-8 bytes.
_row = functools.partial(task_record, text=_load, key=_key_text)


def _prefix_bound(prefix: bytes) -> bytes | None:
    """The smallest byte string above every string that starts with *prefix* (None: none).

    UTF-8 never contains the byte 0xFF, so the last byte of a non-empty prefix can always be
    incremented.
    """
    if not prefix:
        return None
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _import_psycopg() -> Any:
    try:
        import psycopg  # noqa: PLC0415 - optional dependency, imported on first use
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "PostgresStore needs psycopg 3: pip install 'taskbed[postgres]' "
            "(see docs/guides/postgres.md)"
        ) from exc
    return psycopg


def _transient(exc: BaseException) -> bool:
    """Is *exc* a failure of the store (retry) rather than of the write (answer it)?"""
    pg = _import_psycopg()
    if isinstance(exc, pg.OperationalError | pg.InterfaceError):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, pg.Error) and state.startswith(_TRANSIENT_STATES)


class PostgresStore(GroupCommitStore):
    """Task rows in PostgreSQL. ``PostgresStore("host=/run/postgresql dbname=tasks")``.

    Several runtimes, on several hosts, may use one database: dedup holds across them,
    recovery finds the tasks of runtimes that are gone, and a lifecycle message reaches the
    owner's connection on whichever runtime it is (the runtime starts a listener for that).
    Use one ``PostgresStore`` per runtime. The tables are created in the connection's schema
    (``options=-csearch_path=...`` in the DSN picks another), all named ``taskbed_*``.

    Args:
        dsn: a libpq connection string or URI.
        retry_for: how long a failing write is retried before its caller gets
            ``StoreWriteError`` (seconds).
        clock: the store's clock for lease expiry; by default the server's
            (``clock_timestamp()``). The conformance adapter passes its virtual clock.
    """

    shared = True
    kind: ClassVar[str] = "PostgresStore"
    _name = "the PostgreSQL task store"
    _pause: ClassVar[tuple[float, float]] = (0.01, 0.5)
    #: Every write goes through the writer thread: it waits a little for the next batch.
    _linger: ClassVar[float] = 0.005
    _row = staticmethod(_row)
    _select_by_id: ClassVar[str] = _SELECT_BY_ID
    # A write's ``run(cursor)`` sends its statement (pipelined: it does not wait for the
    # answer) and returns ``finish()``, which reads the answer once the batch's statements
    # are all sent.

    def __init__(self, dsn: str, *, retry_for: float = 10.0, clock: Clock | None = None) -> None:
        super().__init__(retry_for=retry_for)
        self.dsn = dsn
        self.clock = clock
        #: This store's name in the presence table and in the notifications it sends.
        self.node = uuid.uuid4().hex
        self._read_lock = threading.RLock()  # the reader connection
        #: The lease this store's runtime holds: messages it sends to other hosts go only
        #: while the store still holds it (a fenced-off runtime is heard no more, LEASE-3).
        self._claim: Lease | None = None
        #: Which owners have connections on other hosts: (user scope, org scope) -> nodes.
        #: Kept by the listener from the presence notifications, reloaded at each heartbeat.
        self._elsewhere: dict[tuple[str, str], set[str]] = {}
        self._listening = False
        self._db: psycopg.Connection[tuple[Any, ...]] | None = None  # the writer's
        self._reader = self._connect()
        try:
            with self._read_lock, self._reader.transaction():
                # DDL only when the schema is missing: even CREATE ... IF NOT EXISTS takes
                # table locks that can deadlock with other hosts already writing. The schema
                # is made in one transaction, so its last table stands for all of it.
                made = self._reader.execute(
                    "SELECT to_regclass('taskbed_bulletins') IS NOT NULL"
                ).fetchone()
                if not (made and made[0]):
                    self._reader.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self._reader.execute(statement)
                schema = self._reader.execute("SELECT current_schema()").fetchone()
            self.channel_name = f"taskbed:{schema[0] if schema else 'public'}"
        except BaseException:
            self._reader.close()
            raise
        self._writer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="taskbed-postgres-writer"
        )

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        pg = _import_psycopg()
        conn: psycopg.Connection[tuple[Any, ...]] = pg.connect(self.dsn, autocommit=True)
        return conn

    def __repr__(self) -> str:
        return f"<PostgresStore node={self.node[:8]} {'closed' if self._closed else 'open'}>"

    # ------------------------------------------------------------ the writer

    def _flush_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """End of a loop iteration: hand what is queued to the writer thread."""
        with self._lock:
            self._scheduled = False
            if self._thread_busy:  # it takes the queue as it goes: writes stay in order
                self._wake.notify()  # and a lingering one takes it now
                return
            if not self._queue or self._closed:
                return
            self._thread_busy = True
        # run_in_executor, not a bare submit: the harness's virtual loop sees the thread
        # working and holds virtual time still meanwhile.
        loop.run_in_executor(self._writer, self._work)

    def _commit(  # noqa: PLR0912 - see below
        self, batch: list[Write], *, wait: bool
    ) -> BaseException | None:
        """Make *batch* in one pipelined transaction; the error that made it fail, or None.

        A write whose own statement is wrong (a constraint, a bad value) is answered with its
        error, and the batch is made again without it. Only the writer thread commits, so
        *wait* (for a lock held elsewhere) is always true here.
        """
        pg = _import_psycopg()
        if self._fault is not None:
            return self._fault
        while True:
            try:
                if self._db is None or self._db.closed:
                    self._db = self._connect()
                db = self._db
                finishes: list[tuple[Write, Callable[[], Any]]] = []
                cursors: list[psycopg.Cursor[tuple[Any, ...]]] = []
                try:
                    todo = [w for w in batch if not w.done]
                    if len(todo) == 1:  # one statement is its own transaction: one round trip
                        cursors.append(cur := db.cursor())
                        finishes.append((todo[0], todo[0].run(cur)))
                    else:
                        self._send_batch(db, todo, cursors, finishes)
                    # Committed. Each write reads its answer; a dedup look-up may ask one
                    # more question, a read.
                    for w, finish in finishes:
                        try:
                            w.result, w.error = finish(), None
                        except pg.Error as late:  # the batch is made; only this answer is not
                            w.error = StoreWriteError(
                                f"the task store failed while answering a write: {late}"
                            )
                        except Exception as refusal:  # noqa: BLE001 - LeaseLostError, ...
                            w.error = refusal
                finally:
                    for cur in cursors:
                        cur.close()
                return None
            except pg.Error as error:
                exc: BaseException = error
                if self._db is not None and not self._db.broken:
                    with contextlib.suppress(pg.Error):  # the failed transaction, if open
                        self._db.execute("ROLLBACK")
                if self._db is not None and self._db.broken:
                    with contextlib.suppress(Exception):
                        self._db.close()
                    self._db = None
                if _transient(exc):
                    return exc
                culprit = self._culprit(batch, exc)
                if culprit is None:
                    return exc
                culprit.error, culprit.done = exc, True
                batch = [w for w in batch if w is not culprit]
                if not batch:
                    return None
            except Exception as exc:  # noqa: BLE001  # pragma: no cover - a bug: do not loop
                return exc

    @staticmethod
    def _send_batch(
        db: psycopg.Connection[tuple[Any, ...]],
        todo: list[Write],
        cursors: list[psycopg.Cursor[tuple[Any, ...]]],
        finishes: list[tuple[Write, Callable[[], Any]]],
    ) -> None:
        """BEGIN, every write's one statement and COMMIT, pipelined: they go out together and
        their answers come back together, one round trip for the batch (psycopg's
        ``transaction()`` would wait for answers in between). Leaving the pipeline waits for
        every answer and raises the first error."""
        with db.pipeline():
            db.execute("BEGIN")
            for w in todo:
                cursors.append(cur := db.cursor())  # its answer stays on its cursor
                finishes.append((w, w.run(cur)))
            db.execute("COMMIT")

    def _culprit(self, batch: list[Write], exc: BaseException) -> Write | None:
        """The write whose statement failed with *exc* (tried alone, each in turn)."""
        pg = _import_psycopg()
        for w in batch:
            if w.done:
                continue
            try:
                if self._db is None or self._db.closed:
                    self._db = self._connect()
                with self._db.transaction(force_rollback=True), self._db.cursor() as cur:
                    w.run(cur)()
            except pg.Error as err:
                if _transient(err):
                    return None
                return w
            except Exception:  # noqa: BLE001, S112 - a refusal (a lost lease) is no culprit
                continue
        return None

    def _now_sql(self) -> tuple[str, tuple[object, ...]]:
        """The store's clock as SQL: the server's, unless a clock was given."""
        if self.clock is not None:
            return "%s::float8", (self.clock.now(),)
        return _DB_NOW, ()

    # ------------------------------------------------------------ leases and recovery

    async def acquire(self, runtime_id: str, ttl: float) -> Lease:
        now_sql, now_params = self._now_sql()

        def run(cur: psycopg.Cursor[tuple[Any, ...]]) -> Callable[[], Lease]:
            cur.execute(
                "INSERT INTO taskbed_leases (runtime_id, token, expires_at) "
                f"VALUES (%s, nextval('taskbed_fencing'), {now_sql} + %s) "
                "ON CONFLICT (runtime_id) DO UPDATE SET token = excluded.token, "
                "expires_at = excluded.expires_at RETURNING token, expires_at",
                (runtime_id, *now_params, ttl),
            )

            def finish() -> Lease:
                found = cur.fetchone()
                assert found is not None
                return Lease(runtime_id, int(found[0]), float(found[1]))

            return finish

        lease: Lease = await self._write(run)
        self._claim = lease
        return lease

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        now_sql, now_params = self._now_sql()

        def run(cur: psycopg.Cursor[tuple[Any, ...]]) -> Callable[[], Lease | None]:
            cur.execute(
                f"UPDATE taskbed_leases SET expires_at = {now_sql} + %s "
                "WHERE runtime_id = %s AND token = %s RETURNING expires_at",
                (*now_params, ttl, lease.runtime_id, lease.token),
            )

            def finish() -> Lease | None:
                found = cur.fetchone()
                return None if found is None else lease._replace(expires_at=float(found[0]))

            return finish

        renewed: Lease | None = await self._write(run)
        if renewed is not None and self._claim is not None and renewed[:2] == self._claim[:2]:
            self._claim = renewed
        if renewed is not None:
            self._housekeeping()
        return renewed

    def _housekeeping(self) -> None:
        """At each heartbeat: forget old bulletins and dead hosts' presence; reload who is
        connected elsewhere (a host that died announced nothing)."""
        with contextlib.suppress(Exception), self._read_lock:
            self._reader.execute(
                "DELETE FROM taskbed_bulletins WHERE posted_at < now() - interval '10 minutes'"
            )
            self._reader.execute(f"DELETE FROM taskbed_presence p WHERE NOT {_LIVE}")
            if self._listening:
                self._load_presence()

    async def release(self, lease: Lease) -> None:
        def run(cur: psycopg.Cursor[tuple[Any, ...]]) -> Callable[[], None]:
            cur.execute(
                "DELETE FROM taskbed_leases WHERE runtime_id = %s AND token = %s",
                (lease.runtime_id, lease.token),
            )
            return lambda: None

        await self._write(run)
        if self._claim is not None and self._claim[:2] == lease[:2]:
            self._claim = None  # stopped cleanly: nothing left to fence

    def leases(self) -> list[Lease]:
        rows = self._read("SELECT runtime_id, token, expires_at FROM taskbed_leases", ())
        return [Lease(r[0], int(r[1]), float(r[2])) for r in rows]

    async def interrupt_orphans(self, now: float, error: str) -> list[TaskRecord]:
        now_sql, now_params = self._now_sql()

        def run(cur: psycopg.Cursor[tuple[Any, ...]]) -> Callable[[], list[TaskRecord]]:
            cur.execute(
                f"WITH gone AS (DELETE FROM taskbed_leases WHERE expires_at < {now_sql} "
                "RETURNING runtime_id, token) "
                "UPDATE taskbed_tasks t SET status = 'interrupted', error = %s, updated_at = %s "
                f"WHERE status IN ({_INTERRUPTIBLE_SQL}) AND NOT EXISTS (SELECT 1 FROM "
                "taskbed_leases l WHERE l.runtime_id = t.runner_id AND l.token = t.runner_token "
                "AND (l.runtime_id, l.token) NOT IN (SELECT runtime_id, token FROM gone)) "
                f"RETURNING {_COLUMNS}",
                (*now_params, _dump(error), now),
            )
            return lambda: [_row(r) for r in cur.fetchall()]

        orphans: list[TaskRecord] = await self._write(run)
        return orphans

    # ------------------------------------------------------------ rows

    async def insert_or_get_active(
        self, record: TaskRecord, lease: Lease
    ) -> tuple[TaskRecord, bool]:
        record.runner_id, record.runner_token = lease.runtime_id, lease.token
        key = _key(record.task_key)
        org = scope(record.organization_id)
        row = (
            record.id, scope(record.user_id), org, record.module, _dump(record.label), key,
            record.status, record.progress, _dump(record.checkpoint), _dump(record.result),
            None if record.error is None else _dump(record.error), record.created_at,
            record.updated_at, lease.runtime_id, lease.token, lease.runtime_id, lease.token,
        )  # fmt: skip

        def run(cur: psycopg.Cursor[tuple[Any, ...]]) -> Callable[[], tuple[TaskRecord, bool]]:
            cur.execute(_INSERT, row)

            def finish() -> tuple[TaskRecord, bool]:
                if cur.fetchone() is not None:
                    return record, True
                # Not inserted: the lease is gone, or an active task holds the key (read in a
                # new statement, which sees a holder another transaction just committed).
                if cur.execute(_HOLDS, lease[:2]).fetchone() is None:
                    raise lease_lost(lease)
                holder = cur.execute(_HOLDER, (org, key)).fetchone()
                if holder is not None:
                    return _row(holder), False
                if cur.execute(_SELECT_BY_ID, (record.id,)).fetchone() is not None:
                    raise ValueError(f"task id {record.id} already exists")
                # The holder ended between the insert and the look-up: insert again.
                cur.execute(_INSERT, row)
                return finish()

            return finish

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
        params: dict[str, object] = {"id": task_id, "rid": lease.runtime_id, "tok": lease.token}
        if changes:
            assignments = []
            for n, (name, value) in enumerate(changes.items()):
                params[f"v{n}"] = _dump(value) if name in _JSON_FIELDS else value
                assignments.append(f"{name} = %(v{n})s")
            gate = (
                f"UPDATE taskbed_tasks SET {', '.join(assignments)} "
                f"WHERE id = %(id)s AND {_FENCE} RETURNING 1"
            )
        else:  # changes nothing; still fenced
            gate = f"SELECT 1 FROM taskbed_tasks WHERE id = %(id)s AND {_FENCE}"
        if keep is None:
            sql = gate
        else:
            owner, message = keep
            sql = f"WITH g AS ({gate}) {_ROUTE}"
            params.update(self._route_params(owner, message, keep=True))
            if params["payload"] is None:
                sql = self._bulletin_sql(sql)

        def run(cur: psycopg.Cursor[tuple[Any, ...]]) -> Callable[[], bool]:
            cur.execute(sql, params)

            def finish() -> bool:
                if keep is None:
                    return cur.fetchone() is not None
                found = cur.fetchone()
                return found is not None and int(found[0]) == 1

            return finish

        changed: bool = await self._write(run)
        return changed

    def _route_params(self, owner: Owner, message: Message, *, keep: bool) -> dict[str, object]:
        user, org = scope(owner.user_id), scope(owner.organization_id)
        text = json.dumps(message)
        payload = json.dumps({"n": self.node, "u": user, "o": org, "d": keep, "m": text})
        return {
            "u": user,
            "o": org,
            "m": text,
            "me": self.node,
            "ch": self.channel_name,
            "payload": payload if len(payload.encode()) <= NOTIFY_LIMIT else None,
            "full": payload,
            "keep": keep,
            "kept": json.dumps({"n": self.node, "u": user, "o": org, "k": True}),
        }

    def find_by_key(self, task_key: str, organization_id: object) -> list[TaskRecord]:
        return self._query(
            f"SELECT {_COLUMNS} FROM taskbed_tasks WHERE org_scope = %s AND task_key = %s "
            + _ORDER,
            (scope(organization_id), _key(task_key)),
        )

    def find_by_key_prefix(self, prefix: str, organization_id: object) -> list[TaskRecord]:
        low = prefix.encode("utf-8")
        upper = _prefix_bound(low)
        bound, params = ("", ()) if upper is None else (" AND task_key < %s", (upper,))
        return self._query(
            f"SELECT {_COLUMNS} FROM taskbed_tasks WHERE org_scope = %s AND task_key >= %s"
            f"{bound} {_ORDER}",
            (scope(organization_id), low, *params),
        )

    def find_by_user(self, user_id: object, organization_id: object) -> list[TaskRecord]:
        return self._query(
            f"SELECT {_COLUMNS} FROM taskbed_tasks WHERE user_scope = %s AND org_scope = %s "
            + _ORDER,
            (scope(user_id), scope(organization_id)),
        )

    # ------------------------------------------------------------ offline queue

    def enqueue(self, owner: Owner, message: Message) -> None:
        slot = (scope(owner.user_id), scope(owner.organization_id))
        text = json.dumps(message)
        kept = json.dumps({"n": self.node, "u": slot[0], "o": slot[1], "k": True})
        write = Write(lambda cur: lambda: None, time.monotonic() + self.retry_for, slot, text)

        def run(cur: psycopg.Cursor[tuple[Any, ...]]) -> Callable[[], None]:
            cur.execute(
                "WITH kp AS (INSERT INTO taskbed_outbox (user_scope, org_scope, message) "
                "VALUES (%s, %s, %s) RETURNING seq) "
                "SELECT seq, pg_notify(%s, %s) FROM kp",
                (*slot, text, self.channel_name, kept),
            )

            def finish() -> None:
                found = cur.fetchone()
                write.seq = None if found is None else int(found[0])

            return finish

        write.run = run
        self._kept(write)

    def drain(self, owner: Owner) -> list[Message]:
        """The owner's kept messages: those written, then those still queued. Never waits
        for the writer; a message in a transaction under way has its row deleted once written.
        """
        slot = (scope(owner.user_id), scope(owner.organization_id))
        unwritten = self._take_unwritten(slot)
        try:
            with self._read_lock:
                rows = self._drain_rows(slot)
        except Exception:
            log.exception("taskbed: could not read the kept messages of %s", owner)
            rows = []
        return kept_messages(rows, unwritten)

    def _take_unwritten(self, slot: tuple[str, str]) -> list[Write]:
        with self._lock:
            unwritten = [
                w
                for w in [*self._queue, *self._in_flight]
                if w.slot == slot and not w.delivered and not w.done
            ]
            unwritten.sort(key=lambda w: w.order)
            for w in unwritten:
                w.delivered = True
            self._queue = [w for w in self._queue if not w.delivered]
        return unwritten

    def _drain_rows(self, slot: tuple[str, str]) -> list[tuple[int, str]]:
        rows = self._reader.execute(
            "DELETE FROM taskbed_outbox WHERE user_scope = %s AND org_scope = %s "
            "RETURNING seq, message",
            slot,
        ).fetchall()
        with self._lock:  # rows handed out while they were written are not again
            skip = self._skip | {
                w.seq for w in self._in_flight if w.delivered and w.seq is not None
            }
            # Handed out while committing, their row numbers not yet read back: known by text.
            unread = Counter(
                w.message
                for w in self._in_flight
                if w.delivered and w.seq is None and w.slot == slot and w.message is not None
            )
        kept = []
        for seq, text in sorted((int(seq), str(text)) for seq, text in rows):
            if seq in skip:
                continue
            if unread[text] > 0:
                unread[text] -= 1
                continue
            kept.append((seq, text))
        return kept

    def _deleting(self, seqs: list[int]) -> Callable[[psycopg.Cursor[tuple[Any, ...]]], Any]:
        def run(cur: psycopg.Cursor[tuple[Any, ...]]) -> Callable[[], None]:
            cur.execute("DELETE FROM taskbed_outbox WHERE seq = ANY(%s)", (seqs,))
            return lambda: None

        return run

    # ------------------------------------------------------------ messages across hosts

    def broadcast(self, owner: Owner, message: Message, *, durable: bool, delivered: bool) -> None:
        """Send *message* to the owner's connections on other hosts, with the next write.

        Args:
            durable: keep it when the owner is connected nowhere (unless *delivered*).
            delivered: a connection of this host received it already.
        """
        params = self._route_params(owner, message, keep=durable and not delivered)
        claim = self._claim
        if claim is None:
            sql = f"WITH g AS (SELECT 1) {_ROUTE}"
        else:
            params.update(crid=claim.runtime_id, ctok=claim.token)
            sql = (
                "WITH g AS (SELECT 1 FROM taskbed_leases WHERE runtime_id = %(crid)s "
                f"AND token = %(ctok)s) {_ROUTE}"
            )
        if params["payload"] is None:
            sql = self._bulletin_sql(sql)

        slot = (str(params["u"]), str(params["o"])) if params["keep"] else None
        text = str(params["m"]) if params["keep"] else None
        write = Write(lambda cur: lambda: None, time.monotonic() + self.retry_for, slot, text)

        def run(cur: psycopg.Cursor[tuple[Any, ...]]) -> Callable[[], None]:
            cur.execute(sql, params)

            def finish() -> None:
                found = cur.fetchone()
                write.seq = None if found is None or found[1] is None else int(found[1])

            return finish

        write.run = run
        self._kept(write)

    def _bulletin_sql(self, sql: str) -> str:
        """*sql* with a notification too large for ``pg_notify``: the message goes to
        ``taskbed_bulletins`` and the notification carries its id."""
        start = sql.index(", nt AS (")
        end = sql.index(", kp AS (")
        return sql[:start] + _BULLETIN_NT + sql[end:]

    def forward(self, owner: Owner, command: str, body: dict[str, Any]) -> None:
        """Send a client command of *owner* to the other hosts, with the next write.

        The host that runs the task acts on it (a cancel, a confirmation's answer); the others
        have no such task and ignore it.
        """
        payload = json.dumps(
            {
                "n": self.node,
                "u": scope(owner.user_id),
                "o": scope(owner.organization_id),
                "c": command,
                "m": json.dumps(body),
            }
        )
        if len(payload.encode()) > NOTIFY_LIMIT:
            log.warning("taskbed: a client command too large for another host was dropped")
            return

        def run(cur: psycopg.Cursor[tuple[Any, ...]]) -> Callable[[], None]:
            cur.execute("SELECT pg_notify(%s, %s)", (self.channel_name, payload))
            return lambda: None

        self._kept(Write(run, time.monotonic() + self.retry_for))

    def join(self, owner: Owner) -> list[Message]:
        """The owner has a connection here now: note it, and return what was kept for them."""
        user, org = scope(owner.user_id), scope(owner.organization_id)
        unwritten = self._take_unwritten((user, org))
        try:
            with self._read_lock, self._reader.transaction():
                self._reader.execute(
                    "INSERT INTO taskbed_presence (node, user_scope, org_scope, backend, since) "
                    "SELECT %s, %s, %s, pid, backend_start FROM pg_stat_activity "
                    "WHERE pid = pg_backend_pid() "
                    "ON CONFLICT (user_scope, org_scope, node) DO NOTHING",
                    (self.node, user, org),
                )
                self._announce(user, org, present=True)
                rows = self._drain_rows((user, org))
        except Exception:
            log.exception("taskbed: could not note the connection of %s", owner)
            rows = []
        return kept_messages(rows, unwritten)

    def leave(self, owner: Owner) -> None:
        """The owner's last connection here closed."""
        user, org = scope(owner.user_id), scope(owner.organization_id)
        if self._closed:
            return
        try:
            with self._read_lock, self._reader.transaction():
                self._reader.execute(
                    "DELETE FROM taskbed_presence "
                    "WHERE node = %s AND user_scope = %s AND org_scope = %s",
                    (self.node, user, org),
                )
                self._announce(user, org, present=False)
        except Exception:
            log.exception("taskbed: could not note that %s left", owner)

    def _announce(self, user: str, org: str, *, present: bool) -> None:
        """Tell the other hosts that an owner's connections here came or went (same tx)."""
        payload = json.dumps({"n": self.node, "u": user, "o": org, "p": present})
        self._reader.execute("SELECT pg_notify(%s, %s)", (self.channel_name, payload))

    def connected_elsewhere(self, owner: Owner) -> bool:
        """Has the owner a connection on another host, as far as this host has heard?

        For the messages that are not kept (started, progress): a message for an owner
        connected nowhere is not even built. The durable ones do not depend on it: where they
        go is decided in the transaction that writes them.
        """
        return bool(self._elsewhere) and bool(
            self._elsewhere.get((scope(owner.user_id), scope(owner.organization_id)))
        )

    def _heard_presence(self, node: str, user: str, org: str, *, present: bool) -> None:
        nodes = self._elsewhere.setdefault((user, org), set())
        if present:
            nodes.add(node)
        else:
            nodes.discard(node)
            if not nodes:
                del self._elsewhere[user, org]

    def _load_presence(self) -> None:
        """Reload who is connected elsewhere."""
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT node, user_scope, org_scope FROM taskbed_presence p "
                f"WHERE node <> %s AND {_LIVE}",
                (self.node,),
            ).fetchall()
        elsewhere: dict[tuple[str, str], set[str]] = {}
        for node, user, org in rows:
            elsewhere.setdefault((user, org), set()).add(node)
        self._elsewhere = elsewhere

    async def listen(
        self, deliver: Deliver, command: Command | None = None, kept: Kept | None = None
    ) -> Listener:
        """Start delivering the messages other hosts send to owners connected here.

        *deliver(owner, message, durable)* is called on the event loop, in the order the
        other hosts committed them; *command(owner, name, body)* for the client commands
        other hosts forward; *kept(owner)* when a message was kept for an owner (who may
        have connected here meanwhile). Returns the listener; ``await listener.stop()``
        ends it.
        """
        listener = Listener(self, await self._listening_connection(), deliver, command, kept)
        # After LISTEN: a change from now on is heard, one from before is loaded.
        self._listening = True
        self._load_presence()
        listener.start()
        return listener

    async def _listening_connection(self) -> psycopg.AsyncConnection[Any]:
        pg = _import_psycopg()
        conn: psycopg.AsyncConnection[Any] = await pg.AsyncConnection.connect(
            self.dsn, autocommit=True
        )
        try:
            await conn.execute(pg.sql.SQL("LISTEN {}").format(pg.sql.Identifier(self.channel_name)))
        except BaseException:
            await conn.close()
            raise
        return conn

    def _fetch_bulletin(self, bulletin: int) -> str | None:
        found = self._read("SELECT payload FROM taskbed_bulletins WHERE id = %s", (bulletin,))
        return str(found[0][0]) if found else None

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """Write what is queued (waiting for it), forget this host's connections, close."""
        with self._lock:
            if self._closed:
                return
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
            left = self._left_unwritten()
            self._writer.shutdown(wait=True)
            if left:
                log.error("taskbed: %d writes to PostgreSQL were never made", len(left))
            with contextlib.suppress(Exception), self._read_lock:
                self._reader.execute("DELETE FROM taskbed_presence WHERE node = %s", (self.node,))
            self._reader.close()
            if self._db is not None:
                self._db.close()


class Listener:
    """Receives the notifications of other hosts and hands them to the channel."""

    def __init__(
        self,
        store: PostgresStore,
        conn: psycopg.AsyncConnection[Any],
        deliver: Deliver,
        command: Command | None,
        kept: Kept | None,
    ) -> None:
        self._store = store
        self._conn = conn
        self._deliver = deliver
        self._command = command
        self._kept = kept
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                async for note in self._conn.notifies():
                    delay = 0.05
                    try:
                        self._handle(note.payload)
                    except Exception:
                        log.exception("taskbed: could not deliver a message from another host")
            except Exception:  # the connection broke (server restart, network): listen again
                log.warning(
                    "taskbed: the connection listening to other hosts broke; reconnecting",
                    exc_info=True,
                )
            with contextlib.suppress(Exception):
                await self._conn.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                self._conn = await self._store._listening_connection()
                self._store._load_presence()  # what changed while nobody listened
            except Exception:
                log.warning("taskbed: could not listen to other hosts yet", exc_info=True)

    @property
    def backend_pid(self) -> int:
        """The database backend of the listening connection (tests terminate it)."""
        return int(self._conn.info.backend_pid)

    def _handle(self, payload: str) -> None:
        body = json.loads(payload)
        if "k" in body:  # a message was kept for this owner, by any host (this one too)
            if self._kept is not None:
                self._kept(Owner(json.loads(body["u"]), json.loads(body["o"])))
            return
        if body.get("n") == self._store.node:
            return  # our own message: delivered here when it was published
        if "p" in body:
            self._store._heard_presence(body["n"], body["u"], body["o"], present=body["p"])
            return
        targets = body.get("t", ())
        if "b" in body:
            fetched = self._store._fetch_bulletin(int(body["b"]))
            if fetched is None:
                log.warning("taskbed: a large message from another host expired unread")
                return
            body = json.loads(fetched)
        owner = Owner(json.loads(body["u"]), json.loads(body["o"]))
        if "c" in body:
            if self._command is not None:
                self._command(owner, str(body["c"]), json.loads(body["m"]))
            return
        # Durable for this host only if it was one the message was sent to: the owner was
        # connected here when it was routed (and may have left since: then it is kept).
        durable = bool(body["d"]) and self._store.node in targets
        self._deliver(owner, json.loads(body["m"]), durable)

    async def stop(self) -> None:
        """Stop listening and close the listening connection."""
        self._store._listening = False
        self._store._elsewhere = {}
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._conn.close()
