"""MemoryStore: the TaskStore port in a process's memory (the default store, and the harness's)."""

from __future__ import annotations

import dataclasses
import itertools
import operator
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from ._errors import LeaseLostError, see
from ._lifecycle import ACTIVE, TERMINAL, TaskEvent, transition
from ._model import Message, Owner, TaskRecord, scope
from ._ports import Clock, Lease

_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(TaskRecord)))
#: The types ``_clone`` copies; checked inline to spare a call for str, float and None.
_CONTAINERS = (dict, list)


def _clone(value: Any) -> Any:
    """A copy of a JSON value's dicts and lists (what SQLite's JSON round trip gives)."""
    if type(value) is dict:
        return {k: _clone(v) for k, v in value.items()} if value else {}
    if type(value) is list:
        return [_clone(v) for v in value]
    return value


def _copy(row: TaskRecord) -> TaskRecord:
    """A copy, like ``dataclasses.replace(row)`` at a fifth of the cost.

    The checkpoint and result are copied too, so a caller that mutates a row it got (or gave)
    never changes the stored one: the memory store isolates rows as the SQLite store does.
    """
    copied = TaskRecord(*_fields(row))
    copied.checkpoint = _clone(copied.checkpoint)
    if type(copied.result) in _CONTAINERS:  # most results are None or a str
        copied.result = _clone(copied.result)
    return copied


class _Monotonic:
    """The memory store's own clock: ``time.monotonic()``, which no wall-clock change moves."""

    def now(self) -> float:
        return time.monotonic()


def lease_lost(lease: Lease) -> LeaseLostError:
    """The error of a write under a lease the store no longer holds (every store raises it)."""
    return LeaseLostError(
        f"runtime {lease.runtime_id} lost its lease (token {lease.token}) on the task store: "
        "it was not renewed in time and another runtime recovered its tasks; this runtime "
        "writes nothing more, start a new Runtime " + see("leases", "LEASE-4")
    )


class MemoryStore:
    """Task rows in a dict. Atomic because no method awaits and a lock covers each one.

    The lock makes it safe to share one MemoryStore between runtimes running in several
    threads of one process; within one event loop the lock is never contended. Writes are
    coroutines (the port's shape) that complete without suspending.

    Args:
        clock: the store's clock, for leases (``time.monotonic`` by default).
    """

    shared = False

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else _Monotonic()
        self._tokens = itertools.count(1)
        self._rows: dict[str, TaskRecord] = {}
        self._order: dict[str, int] = {}
        self._seq = itertools.count()
        # (organization scope, task_key) -> id of the active task holding the key
        self._active_keys: dict[tuple[str, str], str] = {}
        self._outbox: defaultdict[tuple[str, str], deque[Message]] = defaultdict(deque)
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ rows

    def _holds(self, lease: Lease) -> bool:
        held = self._leases.get(lease.runtime_id)
        return held is not None and held.token == lease.token

    async def insert_or_get_active(
        self, record: TaskRecord, lease: Lease
    ) -> tuple[TaskRecord, bool]:
        with self._lock:
            if not self._holds(lease):
                raise lease_lost(lease)
            record.runner_id, record.runner_token = lease.runtime_id, lease.token
            # Only active rows compete for a key (as SQLite's partial unique index): a row
            # inserted terminal (history) is never blocked and never holds the key.
            if record.task_key is not None and record.status in ACTIVE:
                slot = (scope(record.organization_id), record.task_key)
                holder = self._active_keys.get(slot)
                if holder is not None:
                    return _copy(self._rows[holder]), False
                self._active_keys[slot] = record.id
            self._rows[record.id] = _copy(record)
            self._order[record.id] = next(self._seq)
            return record, True

    def get(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            row = self._rows.get(task_id)
            return None if row is None else _copy(row)

    async def update(
        self,
        task_id: str,
        changes: dict[str, object],
        lease: Lease,
        *,
        keep: tuple[Owner, Message] | None = None,
    ) -> bool:
        with self._lock:
            row = self._rows.get(task_id)
            if (
                row is None
                or row.status in TERMINAL
                or row.runner_id != lease.runtime_id
                or row.runner_token != lease.token
                or not self._holds(lease)
            ):
                return False
            for name, value in changes.items():
                # Only dicts and lists need a copy; most changes are str and float.
                setattr(row, name, _clone(value) if type(value) in _CONTAINERS else value)
            if row.status in TERMINAL and row.task_key is not None:
                self._active_keys.pop((scope(row.organization_id), row.task_key), None)
            if keep is not None:
                owner, message = keep
                self._outbox[scope(owner.user_id), scope(owner.organization_id)].append(message)
            return True

    def _select(self, keep: Callable[[TaskRecord], bool]) -> list[TaskRecord]:
        with self._lock:
            found = [row for row in self._rows.values() if keep(row)]
            found.sort(key=lambda r: (r.created_at, self._order[r.id]), reverse=True)
            return [_copy(row) for row in found]

    def find_by_key(self, task_key: str, organization_id: object) -> list[TaskRecord]:
        org = scope(organization_id)
        return self._select(lambda r: r.task_key == task_key and scope(r.organization_id) == org)

    def find_by_key_prefix(self, prefix: str, organization_id: object) -> list[TaskRecord]:
        org = scope(organization_id)
        return self._select(
            lambda r: (
                r.task_key is not None
                and r.task_key.startswith(prefix)
                and scope(r.organization_id) == org
            )
        )

    def find_by_user(self, user_id: object, organization_id: object) -> list[TaskRecord]:
        user, org = scope(user_id), scope(organization_id)
        return self._select(lambda r: scope(r.user_id) == user and scope(r.organization_id) == org)

    # ------------------------------------------------------------ offline queue

    def enqueue(self, owner: Owner, message: Message) -> None:
        with self._lock:
            self._outbox[scope(owner.user_id), scope(owner.organization_id)].append(message)

    def drain(self, owner: Owner) -> list[Message]:
        with self._lock:
            kept = self._outbox.pop((scope(owner.user_id), scope(owner.organization_id)), None)
            return list(kept or ())

    # ------------------------------------------------------------ leases and recovery

    async def acquire(self, runtime_id: str, ttl: float) -> Lease:
        with self._lock:
            lease = Lease(runtime_id, next(self._tokens), self.clock.now() + ttl)
            self._leases[runtime_id] = lease
            return lease

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        with self._lock:
            if not self._holds(lease):
                return None  # never re-created: recovery took it (LEASE-4)
            renewed = lease._replace(expires_at=self.clock.now() + ttl)
            self._leases[lease.runtime_id] = renewed
            return renewed

    def leases(self) -> list[Lease]:
        with self._lock:
            return list(self._leases.values())

    async def interrupt_orphans(self, now: float, error: str) -> list[TaskRecord]:
        with self._lock:
            store_now = self.clock.now()
            for lease in list(self._leases.values()):
                if lease.expires_at < store_now:
                    del self._leases[lease.runtime_id]
            orphans = [
                row
                for row in self._rows.values()
                if row.status in ACTIVE and not self._claimed(row)
            ]
            for row in orphans:
                row.status = transition(row.id, row.status, TaskEvent.INTERRUPT)
                row.error, row.updated_at = error, now
                if row.task_key is not None:
                    self._active_keys.pop((scope(row.organization_id), row.task_key), None)
            return [_copy(row) for row in orphans]

    def _claimed(self, row: TaskRecord) -> bool:
        held = self._leases.get(row.runner_id) if row.runner_id is not None else None
        return held is not None and held.token == row.runner_token

    async def release(self, lease: Lease) -> None:
        with self._lock:
            if self._holds(lease):
                del self._leases[lease.runtime_id]

    def close(self) -> None:
        """Nothing to release; the rows stay readable."""
