"""MemoryStore: the TaskStore port in a process's memory (the default store, and the harness's)."""

from __future__ import annotations

import dataclasses
import itertools
import operator
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Collection
from typing import Any

from ._lifecycle import ACTIVE, TERMINAL, TaskEvent, transition
from ._model import Message, Owner, TaskRecord, scope
from ._ports import Lease

_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(TaskRecord)))
#: The types ``_clone`` copies; checked inline to spare a call for str, float and None.
_CONTAINERS = (dict, list)


def _clone(value: Any) -> Any:
    """A copy of a JSON value's dicts and lists (what SQLite's JSON round trip gives)."""
    if type(value) is dict:
        return {k: _clone(v) for k, v in value.items()}
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


class MemoryStore:
    """Task rows in a dict. Atomic because no method awaits and a lock covers each one.

    The lock makes it safe to share one MemoryStore between runtimes running in several
    threads of one process; within one event loop the lock is never contended.
    """

    shared = False

    def __init__(self) -> None:
        self._rows: dict[str, TaskRecord] = {}
        self._order: dict[str, int] = {}
        self._seq = itertools.count()
        # (organization scope, task_key) -> id of the active task holding the key
        self._active_keys: dict[tuple[str, str], str] = {}
        self._outbox: defaultdict[tuple[str, str], deque[Message]] = defaultdict(deque)
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ rows

    def insert_or_get_active(self, record: TaskRecord) -> tuple[TaskRecord, bool]:
        with self._lock:
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

    def update(self, task_id: str, changes: dict[str, object]) -> None:
        with self._lock:
            row = self._rows.get(task_id)
            if row is None or row.status in TERMINAL:
                return
            for name, value in changes.items():
                # Only dicts and lists need a copy; most changes are str and float.
                setattr(row, name, _clone(value) if type(value) in _CONTAINERS else value)
            if row.status in TERMINAL and row.task_key is not None:
                self._active_keys.pop((scope(row.organization_id), row.task_key), None)

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

    def heartbeat(self, lease: Lease) -> None:
        with self._lock:
            self._leases[lease.runtime_id] = lease

    def leases(self) -> list[Lease]:
        with self._lock:
            return list(self._leases.values())

    def interrupt_orphans(self, dead: Collection[str], now: float, error: str) -> list[TaskRecord]:
        with self._lock:
            for runtime_id in dead:
                self._leases.pop(runtime_id, None)
            orphans = [
                row
                for row in self._rows.values()
                if row.status in ACTIVE and row.runner_id not in self._leases
            ]
            for row in orphans:
                row.status = transition(row.id, row.status, TaskEvent.INTERRUPT)
                row.error, row.updated_at = error, now
                if row.task_key is not None:
                    self._active_keys.pop((scope(row.organization_id), row.task_key), None)
            return [_copy(row) for row in orphans]

    def release(self, runtime_id: str) -> None:
        with self._lock:
            self._leases.pop(runtime_id, None)

    def close(self) -> None:
        """Nothing to release; the rows stay readable."""
