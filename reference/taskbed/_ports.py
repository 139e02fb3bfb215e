"""The ports: the four small interfaces the task manager is written against.

The reference runtime fills them with real adapters (wall clock, SQLite, a connection
registry, OS processes); the harness fills them with fakes (virtual time, memory, a capturing
channel, recorded processes). The rules live above the ports, in the task manager and the
facade, so both kinds of adapter obey the same rules. Keep these interfaces small: a fake that
needs a shortcut is a sign that a port grew too big.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
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
    """A runtime's claim that it is alive and runs the tasks whose ``runner_id`` it holds."""

    runtime_id: str
    expires_at: float
    host: str
    pid: int


@runtime_checkable
class TaskStore(Protocol):
    """Persisted task rows, the offline message queue and runtime leases.

    Every method is synchronous and atomic: there is no ``await`` between a check and the write
    that depends on it, and a store shared between processes uses a transaction. Queries return
    rows newest first. A terminal row never changes status again, whatever ``update`` is given.
    """

    #: True when other processes may open the same store (a SQLite file): then leases are
    #: refreshed by a heartbeat and recovery looks for runtimes that are gone.
    shared: bool

    def insert_or_get_active(self, record: TaskRecord) -> tuple[TaskRecord, bool]:
        """Insert *record*, unless its ``task_key`` is held by an active task of its organization.

        Returns ``(record, True)`` when inserted, ``(holder, False)`` with the active task that
        holds the key otherwise. The check and the insert are one atomic step (DEDUP).
        """
        ...

    def get(self, task_id: str) -> TaskRecord | None: ...

    def update(self, task_id: str, changes: dict[str, object]) -> None:
        """Apply *changes* (snake_case field names) unless the row is terminal."""
        ...

    def find_by_key(self, task_key: str, organization_id: object) -> list[TaskRecord]: ...

    def find_by_key_prefix(self, prefix: str, organization_id: object) -> list[TaskRecord]: ...

    def find_by_user(self, user_id: object, organization_id: object) -> list[TaskRecord]: ...

    def enqueue(self, owner: Owner, message: Message) -> None:
        """Keep a message for an owner who is offline, after those already kept."""
        ...

    def drain(self, owner: Owner) -> list[Message]:
        """Remove and return an owner's kept messages, oldest first."""
        ...

    def heartbeat(self, lease: Lease) -> None:
        """Create or refresh a runtime's lease."""
        ...

    def leases(self) -> list[Lease]: ...

    def interrupt_orphans(self, dead: Collection[str], now: float, error: str) -> list[TaskRecord]:
        """Drop the *dead* leases and interrupt every active task whose runner has no lease.

        One atomic step, so a runtime that registers its lease and then inserts a task can never
        have that task taken for an orphan. Returns the rows it interrupted.
        """
        ...

    def release(self, runtime_id: str) -> None:
        """Drop a runtime's lease (it stopped cleanly)."""
        ...

    def close(self) -> None: ...


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
    ) -> Listening:
        """Call ``deliver(owner, message, durable)`` for each message other hosts send,
        and ``command(owner, name, body)`` for each client command they forward."""
        ...


@runtime_checkable
class ClientChannel(Protocol):
    """How lifecycle messages reach the connected client of a task's owner."""

    def publish(self, owner: Owner, message: Message, *, durable: bool) -> None:
        """Deliver to every connection of *owner*; keep it for later if *durable* and offline."""
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
