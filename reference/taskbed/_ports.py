"""The ports: the four small interfaces the task manager is written against.

The reference runtime fills them with real adapters (wall clock, SQLite, a connection
registry, OS processes); the harness fills them with fakes (virtual time, memory, a capturing
channel, recorded processes). The rules live above the ports, in the task manager and the
facade, so both kinds of adapter obey the same rules. Keep these interfaces small: a fake that
needs a shortcut is a sign that a port grew too big.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ._model import Message, Owner, TaskRecord


@runtime_checkable
class Clock(Protocol):
    """Where every timestamp comes from (seconds since the epoch, as a float)."""

    def now(self) -> float: ...


class WallClock:
    """The real clock: ``time.time()``. The harness's virtual clock replaces it."""

    def now(self) -> float:
        return time.time()


class Lease(NamedTuple):
    """A runtime's claim on the store: it is alive and runs the tasks it claimed with *token*.

    Attributes:
        runtime_id: the runtime instance (a random id; one per task manager).
        token: the fencing token, greater than every token the store issued before. The
            tasks a runtime creates carry it (``TaskRecord.runner_token``), and every write
            of their state is conditional on it.
        expires_at: when the lease runs out, on the *store's* clock (never a runtime's).
    """

    runtime_id: str
    token: int
    expires_at: float


@runtime_checkable
class TaskStore(Protocol):
    """Persisted task rows, the offline message queue and fenced runtime leases.

    Reads are synchronous and never wait for a write lock. Writes are coroutines: a store
    may hand them to a writer thread (SQLite, with group commit) or a server (PostgreSQL),
    and never blocks the event loop on them. Every write is atomic: there is no ``await``
    between a check and the write that depends on it inside the store (a store shared
    between processes uses a transaction). Queries return rows newest first.

    Fencing (specs/leases.md): a runtime first calls ``acquire`` for a lease, which carries a
    fencing token that only grows. ``insert_or_get_active`` and ``update`` take that lease and are
    conditional on it: they change nothing when the lease is no longer held by the store,
    or when the row was claimed under another (runtime, token). A lease is only ever
    refreshed by ``renew``, which never re-creates one that recovery removed. Liveness is the
    lease alone, on the store's clock; no process id or host name decides.

    Durability: a transaction that fails (I/O error, full disk, a lock held elsewhere) loses
    none of the writes it carried; the store keeps and retries them. A write that cannot be
    made within the store's retry window raises :class:`~taskbed.StoreWriteError` to its
    caller, and then it is not made. ``enqueue`` has no caller to raise to: its message is
    kept and retried until it is written or the store is closed.
    """

    #: True when other processes may open the same store (a SQLite file): then leases are
    #: refreshed by a heartbeat and recovery looks for runtimes that are gone.
    shared: bool

    # ------------------------------------------------------------ leases and recovery

    async def acquire(self, runtime_id: str, ttl: float) -> Lease:
        """A new lease for *runtime_id*, with a fresh token, expiring *ttl* seconds from now."""
        ...

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend *lease* to *ttl* seconds from now, or return None when it is lost.

        Lost: recovery removed it (it had expired and another runtime swept it). A lost
        lease is never re-created; its holder must stop (LEASE-4).
        """
        ...

    async def release(self, lease: Lease) -> None:
        """Drop *lease* (its runtime stopped cleanly); nothing if it is already gone."""
        ...

    def leases(self) -> list[Lease]: ...

    async def interrupt_orphans(self, now: float, error: str) -> list[TaskRecord]:
        """Drop the leases expired on the store's clock, and interrupt the orphans.

        An orphan is an active task whose ``(runner_id, runner_token)`` holds no lease. One
        atomic step; returns the rows it interrupted, with *error* and ``updated_at = now``
        (*now* is only a timestamp, from the caller's clock: expiry uses the store's).
        """
        ...

    # ------------------------------------------------------------ rows

    async def insert_or_get_active(
        self, record: TaskRecord, lease: Lease
    ) -> tuple[TaskRecord, bool]:
        """Insert *record*, claimed by *lease*, unless its key is held by an active task.

        The stored row's ``runner_id``/``runner_token`` are the lease's. Returns
        ``(record, True)`` when inserted, ``(holder, False)`` with the active task that holds
        the key otherwise. The check and the insert are one atomic step (DEDUP).

        Raises:
            LeaseLostError: *lease* is no longer held; nothing was inserted.
            StoreWriteError: the store could not be written within its retry window.
        """
        ...

    def get(self, task_id: str) -> TaskRecord | None: ...

    async def update(
        self,
        task_id: str,
        changes: dict[str, object],
        lease: Lease,
        *,
        keep: tuple[Owner, Message] | None = None,
    ) -> bool:
        """Apply *changes* (snake_case fields) to an active row claimed by *lease*.

        Returns True when the row changed; False when the write matched nothing: the row
        is unknown or terminal, was claimed under another lease, or *lease* is no longer
        held. A terminal row never changes again. *keep* is a message for an offline owner,
        kept (as ``enqueue`` keeps it) in the same transaction, only if the row changed: a
        crash can never keep a "completed" whose row is not completed, nor lose it.
        Writes of one store object are made in the order they were called.

        Raises:
            StoreWriteError: the store could not be written within its retry window.
        """
        ...

    def find_by_key(self, task_key: str, organization_id: object) -> list[TaskRecord]: ...

    def find_by_key_prefix(self, prefix: str, organization_id: object) -> list[TaskRecord]: ...

    def find_by_user(self, user_id: object, organization_id: object) -> list[TaskRecord]: ...

    # ------------------------------------------------------------ offline queue

    def enqueue(self, owner: Owner, message: Message) -> None:
        """Keep a message for an owner who is offline, after those already kept."""
        ...

    def drain(self, owner: Owner) -> list[Message]:
        """Remove and return an owner's kept messages, oldest first (without waiting)."""
        ...

    def close(self) -> None:
        """Write what is kept (waiting for it, off any event loop) and release resources."""
        ...


class Listening(Protocol):
    """A running subscription to other hosts' messages (see :class:`Broadcaster`)."""

    async def stop(self) -> None: ...


@runtime_checkable
class Broadcaster(Protocol):
    """What a store adds when the owners' connections may be on other hosts (PostgreSQL).

    The client channel then hands every message to the store as well: the store sends it to
    the hosts where the owner is connected, and decides, in the transaction that writes the
    state change, whether a durable message must be kept because the owner is connected
    nowhere. A store without these methods (memory, SQLite) serves one host's connections.
    """

    def broadcast(self, owner: Owner, message: Message, *, durable: bool, delivered: bool) -> None:
        """Send *message* to the owner's connections elsewhere, with the next write.

        *delivered*: a connection on this host has it already (else a durable message for
        an owner connected nowhere is kept for them).
        """
        ...

    def forward(self, owner: Owner, command: str, body: dict[str, Any]) -> None:
        """Send a client command to the other hosts (the one running the task acts on it)."""
        ...

    def connected_elsewhere(self, owner: Owner) -> bool:
        """Has *owner* a connection on another host (as far as this host has heard)?"""
        ...

    def join(self, owner: Owner) -> list[Message]:
        """The owner's first connection on this host opened: note it, drain what was kept."""
        ...

    def leave(self, owner: Owner) -> None:
        """The owner's last connection on this host closed."""
        ...

    async def listen(
        self,
        deliver: Callable[[Owner, Message, bool], None],
        command: Callable[[Owner, str, dict[str, Any]], None] | None = None,
        kept: Callable[[Owner], None] | None = None,
    ) -> Listening:
        """Call ``deliver(owner, message, durable)`` for each message other hosts send,
        ``command(owner, name, body)`` for each client command they forward, and
        ``kept(owner)`` when any host kept a message for *owner* (who may be here now)."""
        ...


@runtime_checkable
class ClientChannel(Protocol):
    """How lifecycle messages reach the connected client of a task's owner."""

    def publish(self, owner: Owner, message: Message, *, durable: bool) -> None:
        """Deliver to every connection of *owner*; keep it for later if *durable* and offline."""
        ...

    def deliver_kept(self, owner: Owner) -> None:
        """Deliver what the store keeps for *owner* to its open connections, now.

        For a message kept with a task's end (``TaskStore.update(..., keep=...)``) for an
        owner who connected while that end was being written.
        """
        ...

    def wants(self, owner: Owner, *, durable: bool) -> bool:
        """Would ``publish(owner, ..., durable=durable)`` deliver or keep anything?

        The task manager asks before it builds a message that is not durable (started,
        progress), so a task whose owner has no connection costs no message. Must agree
        with ``publish``: True whenever ``publish`` would deliver to a connection.
        """
        ...


class ProcessResult(NamedTuple):
    """What a finished process gave back (bytes; the facade decodes when ``text=True``)."""

    returncode: int
    stdout: bytes | None
    stderr: bytes | None


@runtime_checkable
class ProcessRunner(Protocol):
    """Runs one validated argv, never through a shell."""

    async def run(
        self,
        argv: list[str],
        *,
        cwd: str | None,
        env: dict[str, str],
        timeout: float | None,
        capture_output: bool,
    ) -> ProcessResult:
        """Run *argv* to completion.

        Raises:
            subprocess.TimeoutExpired: after *timeout* seconds, once the whole process group
                is killed and reaped (with the output captured so far).
            OSError: the program could not be started (as ``subprocess.run`` raises it).
        """
        ...
