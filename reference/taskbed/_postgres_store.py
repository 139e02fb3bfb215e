"""PostgresStore: the TaskStore port in PostgreSQL, for runtimes on several hosts.

Needs psycopg 3 (``pip install 'taskbed[postgres]'``); the rest of ``taskbed`` never imports
it, so the reference stays standard-library only.

Theory of operation
-------------------
* **Dedup** is the database's job, as in SQLite: a partial unique index over
  ``(org_scope, task_key)`` of active rows and ``INSERT ... ON CONFLICT DO NOTHING RETURNING``.
  Under READ COMMITTED a second insert of a held key waits for the first transaction, then
  does nothing; the holder is read in a fresh snapshot by the next statement.
* **Write-behind**, as in SQLite: status changes, progress and messages are buffered and
  written in one transaction at the end of the event-loop iteration (or before the next
  insert or read), so one completed task costs one commit.
* **Messages across hosts.** The state change and the message that reports it leave in the
  same transaction: the message is ``pg_notify``'d there (PostgreSQL delivers notifications
  only on commit, in commit order), or put in the offline queue when the owner is connected
  nowhere. Which owners are connected where is a table, ``taskbed_presence``: one row per
  owner per store (host) that has a connection of that owner. A row counts while the
  database backend that wrote it is alive (``pg_stat_activity``), so a host that dies stops
  counting as soon as PostgreSQL sees its connection close; no pid or hostname is trusted.
  A message for an owner and the owner's arrival take the same advisory lock, so a message
  is either queued before the owner drains the queue, or notified to a host that listens.
* **Keys** are stored as UTF-8 ``bytea``: bytes compare in code-point order (prefix queries
  are a byte range that uses the index) and may hold NUL, which PostgreSQL's ``text`` cannot.
  Labels and errors are stored as JSON text for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from ._lifecycle import ACTIVE, TaskEvent, TaskStatus, sources
from ._model import Message, Owner, TaskRecord, scope
from ._ports import Lease

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("taskbed")

#: A notification's payload must stay under PostgreSQL's 8000 bytes; a bigger message is
#: stored in ``taskbed_bulletins`` and the notification carries its id.
NOTIFY_LIMIT = 7900


def _status_list(statuses: Iterable[TaskStatus]) -> str:
    return ", ".join(f"'{s.value}'" for s in sorted(statuses))


_ACTIVE_SQL = _status_list(ACTIVE)
_INTERRUPTIBLE_SQL = _status_list(sources(TaskEvent.INTERRUPT))
_TERMINAL_VALUES = frozenset(s.value for s in TaskStatus if s not in ACTIVE)

# One advisory lock serialises schema creation between processes opening a new database
# (concurrent CREATE TABLE IF NOT EXISTS can fail on the catalog's unique index).
_SCHEMA_LOCK = 0x7461736B626564  # "taskbed"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS taskbed_tasks (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    user_scope  TEXT NOT NULL,
    org_scope   TEXT NOT NULL,
    module      TEXT NOT NULL,
    label       TEXT NOT NULL,
    task_key    BYTEA,
    status      TEXT NOT NULL,
    progress    DOUBLE PRECISION NOT NULL,
    checkpoint  TEXT NOT NULL,
    result      TEXT NOT NULL,
    error       TEXT,
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL,
    runner_id   TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS taskbed_tasks_active_key
    ON taskbed_tasks (org_scope, task_key)
    WHERE task_key IS NOT NULL AND status IN ({_ACTIVE_SQL});
CREATE INDEX IF NOT EXISTS taskbed_tasks_by_key
    ON taskbed_tasks (org_scope, task_key, created_at);
CREATE INDEX IF NOT EXISTS taskbed_tasks_by_user
    ON taskbed_tasks (user_scope, org_scope, created_at);
CREATE INDEX IF NOT EXISTS taskbed_tasks_active_runner
    ON taskbed_tasks (runner_id) WHERE status IN ({_ACTIVE_SQL});
CREATE TABLE IF NOT EXISTS taskbed_outbox (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_scope  TEXT NOT NULL,
    org_scope   TEXT NOT NULL,
    message     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS taskbed_outbox_by_owner
    ON taskbed_outbox (user_scope, org_scope, seq);
CREATE TABLE IF NOT EXISTS taskbed_leases (
    runtime_id  TEXT PRIMARY KEY,
    expires_at  DOUBLE PRECISION NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL
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

_COLUMNS = (
    "id, user_scope, org_scope, module, label, task_key, status, progress, checkpoint, "
    "result, error, created_at, updated_at, runner_id"
)
_ORDER = "ORDER BY created_at DESC, seq DESC"
_INSERT = (
    f"INSERT INTO taskbed_tasks ({_COLUMNS}) VALUES ({', '.join(['%s'] * 14)}) "
    "ON CONFLICT DO NOTHING RETURNING id"
)
_HOLDER = (
    f"SELECT {_COLUMNS} FROM taskbed_tasks WHERE org_scope = %s AND task_key = %s "
    f"AND status IN ({_ACTIVE_SQL})"
)
_SELECT_BY_ID = f"SELECT {_COLUMNS} FROM taskbed_tasks WHERE id = %s"
#: Columns stored as JSON text: values that may hold anything, labels and errors (NUL).
_JSON_FIELDS = frozenset({"checkpoint", "result", "label", "error"})
_FIELDS = frozenset(
    {"label", "status", "progress", "checkpoint", "result", "error", "updated_at", "runner_id"}
)
#: Which presence rows still count: the backend that wrote them is the same one, alive.
_LIVE = (
    "EXISTS (SELECT 1 FROM pg_stat_activity a "
    "WHERE a.pid = p.backend AND a.backend_start = p.since)"
)

Deliver = Callable[[Owner, Message, bool], None]
Command = Callable[[Owner, str, dict[str, Any]], None]


def _dump(value: object) -> str:
    if value is None:
        return "null"
    if type(value) is dict and not value:
        return "{}"
    return json.dumps(value)


def _load(text: str) -> Any:
    if text == "null":
        return None
    if text == "{}":
        return {}
    return json.loads(text)


def _key(task_key: str | None) -> bytes | None:
    return None if task_key is None else task_key.encode("utf-8")


def _row(values: tuple[Any, ...]) -> TaskRecord:
    (tid, user, org, module, label, key, status, progress, checkpoint, result, error,
     created, updated, runner) = values  # fmt: skip
    return TaskRecord(
        id=tid,
        user_id=_load(user),
        organization_id=_load(org),
        module=module,
        label=_load(label),
        task_key=None if key is None else bytes(key).decode("utf-8"),
        status=status,
        progress=progress,
        checkpoint=_load(checkpoint),
        result=_load(result),
        error=None if error is None else _load(error),
        created_at=created,
        updated_at=updated,
        runner_id=runner,
    )


def _owner_lock(user_scope: str, org_scope: str) -> int:
    """The advisory-lock key of an owner (a signed 64-bit int, the same on every host)."""
    digest = hashlib.blake2b(f"{user_scope}\n{org_scope}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


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


class PostgresStore:
    """Task rows in PostgreSQL. ``PostgresStore("host=/run/postgresql dbname=tasks")``.

    Several runtimes, on several hosts, may use one database: dedup holds across them,
    recovery finds the tasks of runtimes that are gone, and a lifecycle message reaches the
    owner's connection on whichever runtime it is (the runtime starts a listener for that).
    Use one ``PostgresStore`` per runtime. The tables are created in the connection's schema
    (``options=-csearch_path=...`` in the DSN picks another), all named ``taskbed_*``.

    Args:
        dsn: a libpq connection string or URI.
    """

    shared = True

    def __init__(self, dsn: str) -> None:
        pg = _import_psycopg()
        self.dsn = dsn
        #: This store's name in the presence table and in the notifications it sends.
        self.node = uuid.uuid4().hex
        self._db: psycopg.Connection[tuple[Any, ...]] = pg.connect(
            dsn, autocommit=True, prepare_threshold=0
        )
        self._lock = threading.RLock()
        self._pending: dict[str, dict[str, object]] = {}
        self._outbox: list[tuple[str, str, str]] = []
        #: Messages to send with the next write: (user scope, org scope, JSON, durable,
        #: delivered here already).
        self._notes: list[tuple[str, str, str, bool, bool]] = []
        #: Client commands for the other hosts, sent with the next write (JSON payloads).
        self._commands: list[str] = []
        #: Which owners have connections on other hosts: (user scope, org scope) -> nodes.
        #: Kept by the listener from the presence notifications, reloaded at each heartbeat.
        self._elsewhere: dict[tuple[str, str], set[str]] = {}
        self._listening = False
        self._flush_scheduled = False
        self._closed = False
        try:
            with self._lock, self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                schema = self._db.execute("SELECT current_schema()").fetchone()
            self.channel_name = f"taskbed:{schema[0] if schema else 'public'}"
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"<PostgresStore node={self.node[:8]} {'closed' if self._closed else 'open'}>"

    # ------------------------------------------------------------ write-behind buffer

    def _apply_pending(self) -> None:
        """Write buffered updates and messages; the caller holds the lock and a transaction."""
        pending, self._pending = self._pending, {}
        outbox, self._outbox = self._outbox, []
        notes, self._notes = self._notes, []
        by_columns: dict[tuple[str, ...], list[tuple[object, ...]]] = {}
        for task_id, changes in pending.items():
            if not changes:
                continue
            names = tuple(changes)
            values = [_dump(changes[n]) if n in _JSON_FIELDS else changes[n] for n in names]
            by_columns.setdefault(names, []).append((*values, task_id))
        with self._db.cursor() as cur:
            for names, rows in by_columns.items():
                assignments = ", ".join(f"{n} = %s" for n in names)
                cur.executemany(
                    f"UPDATE taskbed_tasks SET {assignments} "
                    f"WHERE id = %s AND status IN ({_ACTIVE_SQL})",
                    rows,
                )
            if notes:
                outbox.extend(self._route(cur, notes))
            if self._commands:
                commands, self._commands = self._commands, []
                cur.executemany(
                    "SELECT pg_notify(%s, %s)", [(self.channel_name, c) for c in commands]
                )
            if outbox:
                cur.executemany(
                    "INSERT INTO taskbed_outbox (user_scope, org_scope, message) "
                    "VALUES (%s, %s, %s)",
                    outbox,
                )

    def _route(
        self, cur: psycopg.Cursor[tuple[Any, ...]], notes: list[tuple[str, str, str, bool, bool]]
    ) -> list[tuple[str, str, str]]:
        """Notify the messages whose owner is connected elsewhere; return those to queue.

        A durable message for an owner connected nowhere (not here, not on another live
        host) is queued. The owners of durable messages are locked first, in one order on
        every host, so an owner's arrival (``join``) cannot slip between the look-up and the
        queueing.
        """
        owners = sorted({(n[0], n[1]) for n in notes})
        durable = sorted({_owner_lock(n[0], n[1]) for n in notes if n[3]})
        if durable:
            cur.execute(
                "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k ORDER BY k",
                (durable,),
            )
        cur.execute(
            "SELECT DISTINCT p.user_scope, p.org_scope FROM taskbed_presence p "
            "JOIN unnest(%s::text[], %s::text[]) AS o(u, g) "
            f"ON p.user_scope = o.u AND p.org_scope = o.g WHERE p.node <> %s AND {_LIVE}",
            ([u for u, _ in owners], [g for _, g in owners], self.node),
        )
        elsewhere = {(u, g) for u, g in cur.fetchall()}
        queue: list[tuple[str, str, str]] = []
        payloads: list[tuple[str, str]] = []
        for user, org, message, is_durable, delivered in notes:
            if (user, org) in elsewhere:
                payload = json.dumps(
                    {"n": self.node, "u": user, "o": org, "d": is_durable, "m": message}
                )
                if len(payload) > NOTIFY_LIMIT:  # len(str) <= bytes: a cheap first test
                    payload = self._bulletin(cur, payload)
                payloads.append((self.channel_name, payload))
            elif is_durable and not delivered:
                queue.append((user, org, message))
        if payloads:
            cur.executemany("SELECT pg_notify(%s, %s)", payloads)
        return queue

    def _bulletin(self, cur: psycopg.Cursor[tuple[Any, ...]], payload: str) -> str:
        if len(payload.encode()) <= NOTIFY_LIMIT:
            return payload
        cur.execute("INSERT INTO taskbed_bulletins (payload) VALUES (%s) RETURNING id", (payload,))
        found = cur.fetchone()
        assert found is not None
        return json.dumps({"n": self.node, "b": found[0]})

    def flush(self) -> None:
        """Write every buffered update and message now, in one transaction."""
        with self._lock:
            self._flush_scheduled = False
            if not self._buffered() or self._closed:
                return
            # Pipelined: BEGIN, the updates and COMMIT go out without waiting for each
            # answer (only the presence look-up of _route waits for one).
            with self._db.pipeline(), self._db.transaction():
                self._apply_pending()

    def _buffered(self) -> bool:
        return bool(self._pending or self._outbox or self._notes or self._commands)

    def _schedule_flush(self) -> None:
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

    # ------------------------------------------------------------ rows

    def insert_or_get_active(self, record: TaskRecord) -> tuple[TaskRecord, bool]:
        key = _key(record.task_key)
        org = scope(record.organization_id)
        row = (
            record.id, scope(record.user_id), org, record.module, _dump(record.label), key,
            record.status, record.progress, _dump(record.checkpoint), _dump(record.result),
            None if record.error is None else _dump(record.error), record.created_at,
            record.updated_at, record.runner_id,
        )  # fmt: skip
        with self._lock:
            if self._pending or self._outbox:
                # Read-your-writes: a buffered completion of the key's holder goes in first.
                # Buffered messages with no state change to ride with (a started message)
                # may wait for the end of the iteration.
                self.flush()
            # One statement, one round trip, its own transaction. Under READ COMMITTED each
            # statement sees what was committed before it began, so the look-up that follows
            # a conflict finds the holder (or finds it ended, and the insert is tried again).
            for _ in range(100):
                if self._db.execute(_INSERT, row).fetchone() is not None:
                    return record, True
                holder = self._db.execute(_HOLDER, (org, key)).fetchone()
                if holder is not None:
                    return _row(holder), False
                if self._db.execute(_SELECT_BY_ID, (record.id,)).fetchone() is not None:
                    raise ValueError(f"task id {record.id} already exists")
            raise RuntimeError(f"could not insert task {record.id}: its key kept changing hands")

    def get(self, task_id: str) -> TaskRecord | None:
        found = self._query(_SELECT_BY_ID, (task_id,))
        return found[0] if found else None

    def update(self, task_id: str, changes: dict[str, object]) -> None:
        if not _FIELDS.issuperset(changes):
            raise ValueError(f"cannot update task fields {sorted(set(changes) - _FIELDS)}")
        with self._lock:
            merged = self._pending.setdefault(task_id, {})
            if merged.get("status") in _TERMINAL_VALUES:
                return  # already terminal in the buffer: a terminal row never changes
            merged.update(changes)
            self._schedule_flush()

    def _query(self, sql: str, params: tuple[object, ...]) -> list[TaskRecord]:
        with self._lock:
            if self._buffered():
                self.flush()
            return [_row(values) for values in self._db.execute(sql, params).fetchall()]

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
        with self._lock:
            self._outbox.append(
                (scope(owner.user_id), scope(owner.organization_id), json.dumps(message))
            )
            self._schedule_flush()

    def drain(self, owner: Owner) -> list[Message]:
        with self._lock, self._db.transaction():
            self._apply_pending()
            return self._drain(scope(owner.user_id), scope(owner.organization_id))

    def _drain(self, user: str, org: str) -> list[Message]:
        kept = self._db.execute(
            "DELETE FROM taskbed_outbox WHERE user_scope = %s AND org_scope = %s "
            "RETURNING seq, message",
            (user, org),
        ).fetchall()
        return [json.loads(message) for _, message in sorted(kept)]

    # ------------------------------------------------------------ messages across hosts

    def broadcast(self, owner: Owner, message: Message, *, durable: bool, delivered: bool) -> None:
        """Send *message* to the owner's connections on other hosts, with the next write.

        Args:
            durable: queue it when the owner is connected nowhere (unless *delivered*).
            delivered: a connection of this host received it already.
        """
        with self._lock:
            self._notes.append(
                (
                    scope(owner.user_id),
                    scope(owner.organization_id),
                    json.dumps(message),
                    durable,
                    delivered,
                )
            )
            self._schedule_flush()

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
        with self._lock:
            self._commands.append(payload)
            self._schedule_flush()

    def join(self, owner: Owner) -> list[Message]:
        """The owner has a connection here now: note it, and return what was kept for them."""
        user, org = scope(owner.user_id), scope(owner.organization_id)
        with self._lock, self._db.transaction():
            self._apply_pending()
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_owner_lock(user, org),))
            self._db.execute(
                "INSERT INTO taskbed_presence (node, user_scope, org_scope, backend, since) "
                "SELECT %s, %s, %s, pid, backend_start FROM pg_stat_activity "
                "WHERE pid = pg_backend_pid() "
                "ON CONFLICT (user_scope, org_scope, node) DO NOTHING",
                (self.node, user, org),
            )
            self._announce(user, org, present=True)
            return self._drain(user, org)

    def _announce(self, user: str, org: str, *, present: bool) -> None:
        """Tell the other hosts that an owner's connections here came or went (same tx)."""
        payload = json.dumps({"n": self.node, "u": user, "o": org, "p": present})
        self._db.execute("SELECT pg_notify(%s, %s)", (self.channel_name, payload))

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
        """Reload who is connected elsewhere (the caller holds the lock)."""
        rows = self._db.execute(
            f"SELECT node, user_scope, org_scope FROM taskbed_presence p "
            f"WHERE node <> %s AND {_LIVE}",
            (self.node,),
        ).fetchall()
        elsewhere: dict[tuple[str, str], set[str]] = {}
        for node, user, org in rows:
            elsewhere.setdefault((user, org), set()).add(node)
        self._elsewhere = elsewhere

    def leave(self, owner: Owner) -> None:
        """The owner's last connection here closed."""
        user, org = scope(owner.user_id), scope(owner.organization_id)
        with self._lock:
            if self._closed:
                return
            with self._db.transaction():
                self._apply_pending()
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_owner_lock(user, org),))
                self._db.execute(
                    "DELETE FROM taskbed_presence "
                    "WHERE node = %s AND user_scope = %s AND org_scope = %s",
                    (self.node, user, org),
                )
                self._announce(user, org, present=False)

    async def listen(self, deliver: Deliver, command: Command | None = None) -> Listener:
        """Start delivering the messages other hosts send to owners connected here.

        *deliver(owner, message, durable)* is called on the event loop, in the order the
        other hosts committed them; *command(owner, name, body)* for the client commands
        other hosts forward. Returns the listener; ``await listener.stop()`` ends it.
        """
        listener = Listener(self, await self._listening_connection(), deliver, command)
        with self._lock:  # after LISTEN: a change from now on is heard, one before is loaded
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
        with self._lock:
            found = self._db.execute(
                "SELECT payload FROM taskbed_bulletins WHERE id = %s", (bulletin,)
            ).fetchone()
        return None if found is None else str(found[0])

    # ------------------------------------------------------------ leases and recovery

    def heartbeat(self, lease: Lease) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO taskbed_leases (runtime_id, expires_at, host, pid) "
                "VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (runtime_id) DO UPDATE SET expires_at = excluded.expires_at",
                tuple(lease),
            )
            # Housekeeping: bulletins every listener has had ample time to read, and
            # presence rows of hosts whose connection is gone.
            self._db.execute(
                "DELETE FROM taskbed_bulletins WHERE posted_at < now() - interval '10 minutes'"
            )
            self._db.execute(f"DELETE FROM taskbed_presence p WHERE NOT {_LIVE}")
            if self._listening:  # a host that died announced nothing: forget it now
                self._load_presence()

    def leases(self) -> list[Lease]:
        with self._lock:
            rows = self._db.execute(
                "SELECT runtime_id, expires_at, host, pid FROM taskbed_leases"
            ).fetchall()
        return [Lease(*r) for r in rows]

    def interrupt_orphans(self, dead: Collection[str], now: float, error: str) -> list[TaskRecord]:
        with self._lock, self._db.transaction():
            self._apply_pending()
            if dead:
                self._db.execute(
                    "DELETE FROM taskbed_leases WHERE runtime_id = ANY(%s)", (list(dead),)
                )
            rows = self._db.execute(
                f"UPDATE taskbed_tasks SET status = 'interrupted', error = %s, updated_at = %s "
                f"WHERE status IN ({_INTERRUPTIBLE_SQL}) AND (runner_id IS NULL OR "
                "runner_id NOT IN (SELECT runtime_id FROM taskbed_leases)) "
                f"RETURNING {_COLUMNS}",
                (_dump(error), now),
            ).fetchall()
        return [_row(r) for r in rows]

    def release(self, runtime_id: str) -> None:
        with self._lock:
            self.flush()
            self._db.execute("DELETE FROM taskbed_leases WHERE runtime_id = %s", (runtime_id,))

    def close(self) -> None:
        """Write what is buffered, forget this host's connections, close the connection."""
        with self._lock:
            if self._closed:
                return
            try:
                self.flush()
                self._db.execute("DELETE FROM taskbed_presence WHERE node = %s", (self.node,))
            finally:
                self._closed = True
                self._db.close()


class Listener:
    """Receives the notifications of other hosts and hands them to ``deliver``."""

    def __init__(
        self,
        store: PostgresStore,
        conn: psycopg.AsyncConnection[Any],
        deliver: Deliver,
        command: Command | None,
    ) -> None:
        self._store = store
        self._conn = conn
        self._deliver = deliver
        self._command = command
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
                with self._store._lock:  # what changed while nobody listened
                    self._store._load_presence()
            except Exception:
                log.warning("taskbed: could not listen to other hosts yet", exc_info=True)

    @property
    def backend_pid(self) -> int:
        """The database backend of the listening connection (tests terminate it)."""
        return int(self._conn.info.backend_pid)

    def _handle(self, payload: str) -> None:
        body = json.loads(payload)
        if body.get("n") == self._store.node:
            return  # our own message: delivered here when it was published
        if "p" in body:
            self._store._heard_presence(body["n"], body["u"], body["o"], present=body["p"])
            return
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
        self._deliver(owner, json.loads(body["m"]), bool(body["d"]))

    async def stop(self) -> None:
        """Stop listening and close the listening connection."""
        self._store._listening = False
        self._store._elsewhere = {}
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._conn.close()
