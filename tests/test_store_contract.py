"""The TaskStore contract, checked once over every store the reference ships.

Every test here takes the module's ``store`` fixture, parametrised over MemoryStore,
SQLiteStore(":memory:") and SQLiteStore(file), and talks to the port directly with
``TaskRecord`` rows (no runtime, no manager). A few tests at the end pin what only the SQLite
store has: the write-behind buffer and the query plans. The last part is a model-equivalence
check: random operation sequences give the same answers on MemoryStore and SQLiteStore.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskbed import (
    ACTIVE,
    TERMINAL,
    Lease,
    LeaseLostError,
    MemoryStore,
    Owner,
    PostgresStore,
    SQLiteStore,
    StoreWriteError,
    TaskRecord,
    TaskStatus,
    TaskStore,
)

with warnings.catch_warnings():
    # hypothesis imports libcst to print a patch when a test fails; under filterwarnings=error
    # libcst's import-time DeprecationWarning (mypy_extensions.TypedDict) would turn a readable
    # failure into a pytest INTERNALERROR. Import it now, with that warning silenced.
    warnings.simplefilter("ignore", DeprecationWarning)
    with contextlib.suppress(ImportError):
        import hypothesis.extra._patching  # noqa: F401

STORES = ["memory", "sqlite-memory", "sqlite-file", "postgres"]
ACTIVE_STATUSES = sorted(s.value for s in ACTIVE)
TERMINAL_STATUSES = sorted(s.value for s in TERMINAL)


class FakeClock:
    """The store's clock, moved by hand (lease expiry is judged on it)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


def open_store(
    kind: str,
    tmp_path: Path,
    clock: FakeClock | None = None,
    request: pytest.FixtureRequest | None = None,
) -> TaskStore:
    if kind == "postgres":
        assert request is not None
        return PostgresStore(request.getfixturevalue("postgres_dsn"), clock=clock)
    if kind == "memory":
        return MemoryStore(clock=clock)
    if kind == "sqlite-memory":
        return SQLiteStore(":memory:", clock=clock)
    return SQLiteStore(tmp_path / "tasks.db", clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=STORES)
def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[TaskStore]:
    opened = open_store(request.param, tmp_path, clock, request)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "tasks.db", busy_timeout=0.05, retry_for=0.5)
    yield opened
    opened.close()


_ids = iter(range(10**9))


def rec(
    task_id: str | None = None,
    *,
    key: str | None = None,
    org: Any = 10,
    user: Any = 7,
    status: str = "pending",
    created: float = 1000.0,
    runner: str | None = "rt-A",
    label: str = "Job",
) -> TaskRecord:
    """A task row with sensible defaults; every call gets a fresh id unless one is given."""
    return TaskRecord(
        id=task_id if task_id is not None else f"t{next(_ids)}",
        user_id=user,
        organization_id=org,
        module="mod",
        label=label,
        task_key=key,
        status=status,
        progress=0.0,
        checkpoint={},
        result=None,
        error=None,
        created_at=created,
        updated_at=created,
        runner_id=runner,
    )


_leases: weakref.WeakKeyDictionary[TaskStore, dict[str, Lease]] = weakref.WeakKeyDictionary()


async def claim(store: TaskStore, runner: str | None) -> Lease:
    """The lease a test runtime *runner* holds on *store* (acquired on first use, no expiry)."""
    held = _leases.setdefault(store, {})
    name = runner or "rt-A"
    if name not in held:
        held[name] = await store.acquire(name, math.inf)
    return held[name]


async def insert_or_get(store: TaskStore, record: TaskRecord) -> tuple[TaskRecord, bool]:
    """``insert_or_get_active`` under the lease of the record's runner."""
    return await store.insert_or_get_active(record, await claim(store, record.runner_id))


async def insert(store: TaskStore, record: TaskRecord) -> TaskRecord:
    """Insert a row that must not be deduplicated."""
    stored, created = await insert_or_get(store, record)
    assert created, f"{record.id} was unexpectedly deduplicated against {stored.id}"
    return stored


async def update(store: TaskStore, task_id: str, changes: dict[str, object]) -> bool:
    """``update`` under the lease of the runner that claimed the row (any lease if unknown)."""
    row = store.get(task_id)
    lease = await claim(store, None if row is None else row.runner_id)
    return await store.update(task_id, changes, lease)


def ids(rows: list[TaskRecord]) -> list[str]:
    return [r.id for r in rows]


# ------------------------------------------------------------------ insert_or_get_active


@pytest.mark.asyncio
async def test_shared_flag(store: TaskStore, request: pytest.FixtureRequest) -> None:
    """Only a file store and a database server can be opened by other processes."""
    assert store.shared is (request.node.callspec.params["store"] in {"sqlite-file", "postgres"})
    assert isinstance(store, TaskStore)


@pytest.mark.asyncio
async def test_insert_returns_the_record_and_stores_it_unchanged(store: TaskStore) -> None:
    record = rec(key="k")
    record.checkpoint = {"done": [1, 2], "name": "é🚀"}
    record.result = {"nested": {"x": 1.5}}
    record.progress = 0.25
    stored, created = await insert_or_get(store, record)
    assert created
    assert stored == record
    assert store.get(record.id) == record


@pytest.mark.asyncio
async def test_same_key_same_org_returns_the_active_holder(store: TaskStore) -> None:
    holder = await insert(store, rec(key="sync", user=7))
    again, created = await insert_or_get(store, rec(key="sync", user=8))
    assert not created
    assert again == holder
    assert ids(store.find_by_key("sync", 10)) == [holder.id]


@pytest.mark.asyncio
@pytest.mark.parametrize("status", ACTIVE_STATUSES)
async def test_every_active_status_holds_the_key(store: TaskStore, status: str) -> None:
    holder = await insert(store, rec(key="k"))
    await update(store, holder.id, {"status": status})
    duplicate = rec(key="k")
    found, created = await insert_or_get(store, duplicate)
    assert (found.id, found.status, created) == (holder.id, status, False)
    assert store.get(duplicate.id) is None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("org_a", "org_b"),
    [(10, 11), (10, "10"), (None, 10), (None, "null"), (None, ""), ("a", "A")],
)
async def test_key_scope_is_the_exact_organization(
    store: TaskStore, org_a: Any, org_b: Any
) -> None:
    a = await insert(store, rec(key="k", org=org_a))
    b = await insert(store, rec(key="k", org=org_b))
    assert ids(store.find_by_key("k", org_a)) == [a.id]
    assert ids(store.find_by_key("k", org_b)) == [b.id]


@pytest.mark.asyncio
async def test_none_organization_matches_none(store: TaskStore) -> None:
    holder = await insert(store, rec(key="k", org=None))
    found, created = await insert_or_get(store, rec(key="k", org=None))
    assert (found.id, created) == (holder.id, False)


@pytest.mark.asyncio
@pytest.mark.parametrize(("key_a", "key_b"), [("k", "K"), ("k", "k "), ("10", "1"), ("é", "e")])
async def test_keys_match_exactly(store: TaskStore, key_a: str, key_b: str) -> None:
    await insert(store, rec(key=key_a))
    await insert(store, rec(key=key_b))


@pytest.mark.asyncio
async def test_rows_without_a_key_never_dedup(store: TaskStore) -> None:
    first = await insert(store, rec(key=None))
    second = await insert(store, rec(key=None))
    assert set(ids(store.find_by_user(7, 10))) == {first.id, second.id}


@pytest.mark.asyncio
@pytest.mark.parametrize("status", TERMINAL_STATUSES)
async def test_terminal_rows_never_block_a_key(store: TaskStore, status: str) -> None:
    old = await insert(store, rec(key="k", created=1.0))
    await update(store, old.id, {"status": status, "updated_at": 2.0})
    new = await insert(store, rec(key="k", created=3.0))
    assert ids(store.find_by_key("k", 10)) == [new.id, old.id]
    # and the new active row holds the key again
    found, created = await insert_or_get(store, rec(key="k", created=4.0))
    assert (found.id, created) == (new.id, False)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", TERMINAL_STATUSES)
async def test_a_row_inserted_terminal_neither_holds_nor_is_blocked(
    store: TaskStore, status: str
) -> None:
    """Dedup is among active rows only: a terminal row (history) never competes for a key."""
    await insert(store, rec(key="k", status=status))
    active = await insert(store, rec(key="k"))
    history = await insert(store, rec(key="k", status=status))
    assert store.get(history.id) == history
    found, created = await insert_or_get(store, rec(key="k"))
    assert (found.id, created) == (active.id, False)


# ------------------------------------------------------------------ update


@pytest.mark.asyncio
async def test_update_applies_changes(store: TaskStore) -> None:
    row = await insert(store, rec(key="k"))
    changes: dict[str, object] = {
        "status": "running",
        "progress": 0.5,
        "checkpoint": {"page": 3, "items": ["a", "ü"]},
        "label": "Syncing 🚀",
        "updated_at": 1234.5,
    }
    await update(store, row.id, changes)
    got = store.get(row.id)
    assert got is not None
    for name, value in changes.items():
        assert getattr(got, name) == value
    assert (got.created_at, got.task_key, got.user_id) == (1000.0, "k", 7)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", TERMINAL_STATUSES)
async def test_terminal_rows_never_change_again(store: TaskStore, status: str) -> None:
    row = await insert(store, rec(key="k"))
    await update(
        store, row.id, {"status": status, "result": {"n": 1}, "error": "e", "updated_at": 5.0}
    )
    before = store.get(row.id)
    assert before is not None
    assert before.status == status
    for target in [*ACTIVE_STATUSES, *TERMINAL_STATUSES]:
        await update(
            store, row.id, {"status": target, "progress": 0.9, "label": "x", "updated_at": 9.0}
        )
    await update(store, row.id, {"result": {"n": 2}, "error": None})
    assert store.get(row.id) == before


@pytest.mark.asyncio
async def test_update_of_an_unknown_id_does_nothing(store: TaskStore) -> None:
    await update(store, "no-such-id", {"status": "completed"})
    assert store.get("no-such-id") is None


@pytest.mark.asyncio
async def test_rows_are_copies(store: TaskStore) -> None:
    """Mutating a row (or a dict) given to or got from a store never changes the stored row."""
    row = rec(key="k")
    row.checkpoint, row.result = {"page": [1]}, {"n": [1]}
    await insert(store, row)
    row.label = "changed by the caller"
    row.checkpoint["page"].append(2)
    got = store.get(row.id)
    assert got is not None
    got.status = "completed"
    got.checkpoint["page"].append(3)
    got.result["n"].append(3)
    [found] = store.find_by_key("k", 10)
    found.checkpoint["x"] = 1
    before = store.get(row.id)
    assert before is not None
    assert (before.status, before.label) == ("pending", "Job")
    assert (before.checkpoint, before.result) == ({"page": [1]}, {"n": [1]})
    changes: dict[str, object] = {"progress": 0.5}
    await update(store, row.id, changes)
    changes["progress"] = 0.9
    checkpoint: dict[str, object] = {"page": [5]}
    await update(store, row.id, {"checkpoint": checkpoint})
    checkpoint["page"] = "mutated"
    fresh = store.get(row.id)
    assert fresh is not None
    assert (fresh.status, fresh.label, fresh.progress) == ("pending", "Job", 0.5)
    assert (fresh.checkpoint, fresh.result) == ({"page": [5]}, {"n": [1]})
    found_again, created = await insert_or_get(store, rec(key="k"))
    assert (found_again.id, created) == (row.id, False)


# ------------------------------------------------------------------ queries


@pytest.mark.asyncio
async def test_get_unknown_is_none(store: TaskStore) -> None:
    assert store.get("missing") is None


@pytest.mark.asyncio
async def test_find_by_key_newest_first_any_user_any_status(store: TaskStore) -> None:
    a = await insert(store, rec(key="k", created=1.0, user=1))
    await update(store, a.id, {"status": "completed"})
    b = await insert(store, rec(key="k", created=3.0, user=2, status="failed"))
    c = await insert(store, rec(key="k", created=2.0, user="x", status="interrupted"))
    d = await insert(store, rec(key="k", created=0.5, user=None))  # active holder, oldest
    await insert(store, rec(key="k2", created=9.0))
    await insert(store, rec(key="k", created=9.0, org=11))
    assert ids(store.find_by_key("k", 10)) == [b.id, c.id, a.id, d.id]
    assert store.find_by_key("nope", 10) == []


@pytest.mark.asyncio
async def test_ties_in_created_at_are_newest_inserted_first(store: TaskStore) -> None:
    rows = [await insert(store, rec(key="k", created=5.0, status="completed")) for _ in range(6)]
    later = await insert(store, rec(key="k", created=6.0))
    earlier = await insert(store, rec(key="k", created=4.0, status="failed"))
    expected = [later.id, *reversed(ids(rows)), earlier.id]
    assert ids(store.find_by_key("k", 10)) == expected
    assert ids(store.find_by_key_prefix("k", 10)) == expected
    assert ids(store.find_by_user(7, 10)) == expected


@pytest.mark.asyncio
async def test_find_by_key_org_is_exact(store: TaskStore) -> None:
    none = await insert(store, rec(key="k", org=None))
    ten = await insert(store, rec(key="k", org=10))
    text = await insert(store, rec(key="k", org="10"))
    assert ids(store.find_by_key("k", None)) == [none.id]
    assert ids(store.find_by_key("k", 10)) == [ten.id]
    assert ids(store.find_by_key("k", "10")) == [text.id]
    assert store.find_by_key("k", 11) == []


KEYS = [
    "a",
    "a_b",
    "a%b",
    "axb",
    "a_",
    "a%",
    "ab",
    "b",
    "A_b",
    "a\\b",
    "café/1",
    "cafe/1",
    "日本/1",
    "🚀",
    "🚀🚀/x",
    "a\U0010ffffz",
    "a\U0010fffe",
    "\ud7ff-x",
    "\ue000",
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("a_", {"a_b", "a_"}),
        ("a%", {"a%b", "a%"}),
        ("a_b", {"a_b"}),
        ("a%b", {"a%b"}),
        ("a\\", {"a\\b"}),
        ("a", {"a", "a_b", "a%b", "axb", "a_", "a%", "ab", "a\\b", "a\U0010ffffz", "a\U0010fffe"}),
        ("caf", {"café/1", "cafe/1"}),
        ("café", {"café/1"}),
        ("日本", {"日本/1"}),
        ("🚀", {"🚀", "🚀🚀/x"}),
        ("🚀🚀", {"🚀🚀/x"}),
        ("a\U0010ffff", {"a\U0010ffffz"}),
        ("\ud7ff", {"\ud7ff-x"}),
        ("zzz", set()),
        ("", set(KEYS)),
    ],
)
async def test_prefix_is_literal(store: TaskStore, prefix: str, expected: set[str]) -> None:
    for key in KEYS:
        await insert(store, rec(key=key))
        await insert(store, rec(key=key, org=11))  # another organization: never returned
    await insert(store, rec(key=None))  # no key: never matches, not even the empty prefix
    found = store.find_by_key_prefix(prefix, 10)
    assert sorted(r.task_key or "" for r in found) == sorted(expected)
    assert all(r.organization_id == 10 for r in found)


@pytest.mark.asyncio
async def test_prefix_org_is_exact_and_newest_first(store: TaskStore) -> None:
    a = await insert(store, rec(key="job.1", org=None, created=1.0))
    b = await insert(store, rec(key="job.2", org=None, created=2.0, status="completed"))
    await insert(store, rec(key="job.3", org=10, created=3.0))
    assert ids(store.find_by_key_prefix("job.", None)) == [b.id, a.id]
    assert store.find_by_key_prefix("job.", "null") == []


@pytest.mark.asyncio
async def test_find_by_user_exact_and_newest_first(store: TaskStore) -> None:
    a = await insert(store, rec(user=7, org=10, created=1.0))
    b = await insert(store, rec(user=7, org=10, created=2.0, key="k", status="completed"))
    c = await insert(store, rec(user=7, org=None, created=3.0))
    d = await insert(store, rec(user="7", org=10, created=4.0))
    await insert(store, rec(user=8, org=10, created=5.0))
    assert ids(store.find_by_user(7, 10)) == [b.id, a.id]
    assert ids(store.find_by_user(7, None)) == [c.id]
    assert ids(store.find_by_user("7", 10)) == [d.id]
    assert store.find_by_user(7, "10") == []
    assert store.find_by_user(9, 10) == []


# ------------------------------------------------------------------ offline queue


@pytest.mark.asyncio
async def test_enqueue_and_drain_keep_order_per_owner(store: TaskStore) -> None:
    owners = [Owner(7, 10), Owner(7, None), Owner("7", 10), Owner(8, 10)]
    for n in range(5):
        for owner in owners:
            store.enqueue(owner, {"msg": {"n": n, "for": [owner.user_id, owner.organization_id]}})
    for owner in owners:
        expected = [
            {"msg": {"n": n, "for": [owner.user_id, owner.organization_id]}} for n in range(5)
        ]
        assert store.drain(owner) == expected
        assert store.drain(owner) == []
    assert store.drain(Owner(99, 99)) == []


@pytest.mark.asyncio
async def test_drain_after_more_enqueues(store: TaskStore) -> None:
    owner = Owner(7, 10)
    store.enqueue(owner, {"a": 1})
    assert store.drain(owner) == [{"a": 1}]
    store.enqueue(owner, {"b": 2})
    store.enqueue(owner, {"c": "é🚀"})
    assert store.drain(owner) == [{"b": 2}, {"c": "é🚀"}]


# ------------------------------------------------------------------ leases and fencing


@pytest.mark.rule("LEASE-1")
@pytest.mark.asyncio
async def test_acquire_gives_a_fresh_growing_token(store: TaskStore, clock: FakeClock) -> None:
    assert store.leases() == []
    a = await store.acquire("A", 30.0)
    b = await store.acquire("B", math.inf)
    a2 = await store.acquire("A", 30.0)  # the same runtime id again: a new claim
    assert a.token < b.token < a2.token
    assert (a.runtime_id, a.expires_at) == ("A", clock.t + 30.0)
    assert sorted(store.leases()) == sorted([a2, b])


@pytest.mark.asyncio
async def test_renew_extends_on_the_store_clock(store: TaskStore, clock: FakeClock) -> None:
    lease = await store.acquire("A", 30.0)
    clock.t += 20
    renewed = await store.renew(lease, 30.0)
    assert renewed == lease._replace(expires_at=clock.t + 30.0)
    assert store.leases() == [renewed]


@pytest.mark.rule("LEASE-4")
@pytest.mark.asyncio
async def test_a_lease_recovery_removed_is_never_renewed(
    store: TaskStore, clock: FakeClock
) -> None:
    lease = await store.acquire("A", 30.0)
    row = await store.insert_or_get_active(rec(runner="A"), lease)
    clock.t += 31
    [orphan] = await store.interrupt_orphans(5.0, "gone")
    assert orphan.id == row[0].id
    assert await store.renew(lease, 30.0) is None  # LEASE-4: never re-created
    assert store.leases() == []


@pytest.mark.asyncio
async def test_an_expired_lease_not_yet_swept_may_still_be_renewed(
    store: TaskStore, clock: FakeClock
) -> None:
    # Nobody took its tasks, so nothing contradicts them: the claim goes on.
    lease = await store.acquire("A", 30.0)
    clock.t += 31
    assert await store.renew(lease, 30.0) is not None


@pytest.mark.asyncio
async def test_release_drops_only_that_lease(store: TaskStore) -> None:
    a = await store.acquire("A", 100.0)
    b = await store.acquire("B", 100.0)
    await store.release(a)
    await store.release(a)  # already gone: nothing
    await store.release(b._replace(token=b.token + 100))  # another claim: not this one
    assert store.leases() == [b]


@pytest.mark.rule("LEASE-2")
@pytest.mark.asyncio
async def test_writes_are_conditional_on_the_claim(store: TaskStore) -> None:
    a = await store.acquire("A", math.inf)
    b = await store.acquire("B", math.inf)
    row, _ = await store.insert_or_get_active(rec(), a)
    assert (row.runner_id, row.runner_token) == ("A", a.token)
    assert store.get(row.id) == row
    assert await store.update(row.id, {"status": "running"}, b) is False  # another runtime
    stale = a._replace(token=a.token - 1)
    assert await store.update(row.id, {"status": "running"}, stale) is False  # older claim
    assert store.get(row.id) == row
    assert await store.update(row.id, {"status": "running"}, a) is True
    got = store.get(row.id)
    assert got is not None
    assert got.status == "running"


@pytest.mark.rule("LEASE-2")
@pytest.mark.asyncio
async def test_a_lost_lease_writes_nothing(store: TaskStore, clock: FakeClock) -> None:
    lease = await store.acquire("A", 30.0)
    row, _ = await store.insert_or_get_active(rec(key="k"), lease)
    clock.t += 31
    await store.interrupt_orphans(5.0, "gone")
    before = store.get(row.id)
    assert await store.update(row.id, {"progress": 0.5}, lease) is False
    assert store.get(row.id) == before
    with pytest.raises(LeaseLostError, match="lost its lease"):
        await store.insert_or_get_active(rec(key="other"), lease)
    assert store.find_by_key("other", 10) == []


@pytest.mark.rule("LEASE-2")
@pytest.mark.asyncio
async def test_a_reacquired_runtime_id_does_not_revive_old_claims(
    store: TaskStore, clock: FakeClock
) -> None:
    old = await store.acquire("A", 30.0)
    row, _ = await store.insert_or_get_active(rec(), old)
    clock.t += 31
    new = await store.acquire("A", 30.0)  # same id, new token: the old rows are orphans
    assert [r.id for r in await store.interrupt_orphans(5.0, "gone")] == [row.id]
    assert await store.update(row.id, {"status": "running"}, new) is False


@pytest.mark.rule("LEASE-5")
@pytest.mark.asyncio
async def test_interrupt_orphans(store: TaskStore, clock: FakeClock) -> None:
    a = await store.acquire("A", 100.0)
    b = await store.acquire("B", 10.0)
    alive = await store.insert_or_get_active(rec(key="ka"), a)
    dead_pending, _ = await store.insert_or_get_active(rec(key="kb"), b)
    dead_running, _ = await store.insert_or_get_active(rec(), b)
    await store.update(dead_running.id, {"status": "running"}, b)
    dead_waiting, _ = await store.insert_or_get_active(rec(), b)
    await store.update(dead_waiting.id, {"status": "waiting_confirmation"}, b)
    dead_done, _ = await store.insert_or_get_active(rec(), b)
    await store.update(dead_done.id, {"status": "completed", "result": 1}, b)

    assert await store.interrupt_orphans(50.0, "restarted") == []  # B's lease is valid
    clock.t += 11  # the store's clock passes B's lease, not A's
    orphans = await store.interrupt_orphans(50.0, "restarted")

    assert {r.id for r in orphans} == {dead_pending.id, dead_running.id, dead_waiting.id}
    for row in orphans:
        assert (row.status, row.error, row.updated_at) == ("interrupted", "restarted", 50.0)
        assert store.get(row.id) == row
    assert [lease.runtime_id for lease in store.leases()] == ["A"]
    assert store.get(alive[0].id) == alive[0]
    done = store.get(dead_done.id)
    assert done is not None
    assert (done.status, done.error, done.result) == ("completed", None, 1)
    # the interrupted holder frees its key; the live runtime's key stays held
    assert (await store.insert_or_get_active(rec(key="kb"), a))[1] is True
    assert (await store.insert_or_get_active(rec(key="ka"), a))[1] is False
    assert await store.interrupt_orphans(60.0, "again") == []


@pytest.mark.asyncio
async def test_interrupted_rows_never_change_again(store: TaskStore, clock: FakeClock) -> None:
    lease = await store.acquire("gone", 1.0)
    row, _ = await store.insert_or_get_active(rec(), lease)
    clock.t += 2
    [orphan] = await store.interrupt_orphans(5.0, "restarted")
    later = await store.acquire("gone", 1.0)
    for claim_ in (lease, later):
        assert await store.update(row.id, {"status": "completed", "error": None}, claim_) is False
    assert store.get(row.id) == orphan


@pytest.mark.rule("LEASE-3")
@pytest.mark.asyncio
async def test_update_keeps_its_message_only_if_it_matched(store: TaskStore) -> None:
    a = await store.acquire("A", math.inf)
    b = await store.acquire("B", math.inf)
    row, _ = await store.insert_or_get_active(rec(), a)
    owner = Owner(7, 10)
    assert not await store.update(row.id, {"status": "completed"}, b, keep=(owner, {"no": 1}))
    assert await store.update(row.id, {"status": "completed"}, a, keep=(owner, {"yes": 1}))
    assert not await store.update(row.id, {"status": "failed"}, a, keep=(owner, {"no": 2}))
    assert store.drain(owner) == [{"yes": 1}]


@pytest.mark.asyncio
async def test_writes_of_one_store_are_made_in_call_order(store: TaskStore) -> None:
    lease = await store.acquire("A", math.inf)
    row, _ = await store.insert_or_get_active(rec(), lease)
    steps = [
        store.update(row.id, {"progress": n / 10, "label": f"step {n}"}, lease) for n in range(10)
    ]
    finish = store.update(row.id, {"status": "completed"}, lease)
    late = store.update(row.id, {"label": "too late"}, lease)
    assert await asyncio.gather(*steps, finish, late) == [True] * 11 + [False]
    got = store.get(row.id)
    assert got is not None
    assert (got.status, got.label, got.progress) == ("completed", "step 9", 0.9)


@pytest.mark.asyncio
async def test_concurrent_inserts_of_one_key_make_one_row(store: TaskStore) -> None:
    lease = await store.acquire("A", math.inf)
    found = await asyncio.gather(
        *(store.insert_or_get_active(rec(key="same"), lease) for _ in range(20))
    )
    assert [created for _, created in found].count(True) == 1
    assert len({row.id for row, _ in found}) == 1
    assert len(store.find_by_key("same", 10)) == 1


# ------------------------------------------------------------------ SQLite only: the write path


def raw_status(path: str, task_id: str) -> str | None:
    """The status as another connection (another process) sees it in the file."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        found = db.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return None if found is None else str(found[0])


@contextlib.contextmanager
def write_lock_held(path: str) -> Iterator[sqlite3.Connection]:
    """Another connection (as another process would) holds the file's write lock."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
        other.execute("ROLLBACK")
    finally:
        other.close()


class LoopLag:
    """The longest time the loop went without running a 1 ms ticker (a blocked loop shows)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last)
            last = now

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.mark.asyncio
async def test_sqlite_a_write_is_visible_to_other_connections_once_awaited(
    sqlite_file: SQLiteStore,
) -> None:
    row = await insert(sqlite_file, rec(key="k"))
    assert raw_status(sqlite_file.path, row.id) == "pending"
    assert await update(sqlite_file, row.id, {"status": "running", "updated_at": 2.0})
    assert raw_status(sqlite_file.path, row.id) == "running"


@pytest.mark.asyncio
async def test_sqlite_concurrent_writes_share_a_commit(sqlite_file: SQLiteStore) -> None:
    lease = await claim(sqlite_file, "rt-A")
    rows = [await insert(sqlite_file, rec()) for _ in range(50)]
    statements: list[str] = []
    sqlite_file._db.set_trace_callback(statements.append)
    try:
        done = await asyncio.gather(
            *(sqlite_file.update(r.id, {"status": "running"}, lease) for r in rows)
        )
    finally:
        sqlite_file._db.set_trace_callback(None)
    assert done == [True] * 50
    assert statements.count("COMMIT") == 1  # group commit: one transaction for all 50


@pytest.mark.rule("LEASE-9")
@pytest.mark.asyncio
@pytest.mark.slow
async def test_sqlite_a_held_write_lock_never_blocks_the_loop(sqlite_file: SQLiteStore) -> None:
    row = await insert(sqlite_file, rec())
    lease = await claim(sqlite_file, "rt-A")
    async with LoopLag() as lag:
        with write_lock_held(sqlite_file.path):
            write = asyncio.ensure_future(sqlite_file.update(row.id, {"status": "running"}, lease))
            await asyncio.sleep(0.3)
            assert not write.done()  # waiting for the lock, in the writer thread
            assert sqlite_file.get(row.id) is not None  # reads go on meanwhile
        assert await write is True
    assert lag.worst < 0.1, f"the loop stood still for {lag.worst:.3f} s"
    assert raw_status(sqlite_file.path, row.id) == "running"


@pytest.mark.rule("LEASE-7")
@pytest.mark.asyncio
@pytest.mark.slow
async def test_sqlite_a_write_that_cannot_be_made_raises_and_the_store_recovers(
    sqlite_file: SQLiteStore,
) -> None:
    row = await insert(sqlite_file, rec())
    lease = await claim(sqlite_file, "rt-A")
    with write_lock_held(sqlite_file.path):
        began = time.monotonic()
        with pytest.raises(StoreWriteError, match=r"could not write to the task store .*locked"):
            await sqlite_file.update(row.id, {"status": "running"}, lease)
        assert time.monotonic() - began < sqlite_file.retry_for + 1.0
        assert raw_status(sqlite_file.path, row.id) == "pending"  # not made
    assert await sqlite_file.update(row.id, {"status": "running"}, lease) is True


@pytest.mark.rule("LEASE-8")
@pytest.mark.asyncio
@pytest.mark.slow
async def test_sqlite_kept_messages_survive_a_failing_transaction(
    sqlite_file: SQLiteStore,
) -> None:
    owner = Owner(7, 10)
    with write_lock_held(sqlite_file.path):
        sqlite_file.enqueue(owner, {"n": 1})
        sqlite_file.enqueue(owner, {"n": 2})
        await asyncio.sleep(0.2)  # the writer thread retries meanwhile
    await asyncio.sleep(0.3)
    reopened = SQLiteStore(sqlite_file.path)
    try:
        assert reopened.drain(owner) == [{"n": 1}, {"n": 2}]  # written, in order
    finally:
        reopened.close()


@pytest.mark.rule("LEASE-9")
@pytest.mark.asyncio
async def test_sqlite_drain_never_waits_and_never_hands_out_twice(
    sqlite_file: SQLiteStore,
) -> None:
    owner = Owner(7, 10)
    sqlite_file.enqueue(owner, {"n": 1})
    await asyncio.sleep(0.01)
    async with LoopLag() as lag:
        with write_lock_held(sqlite_file.path):
            sqlite_file.enqueue(owner, {"n": 2})  # queued: the writer cannot write it yet
            assert sqlite_file.drain(owner) == [{"n": 1}, {"n": 2}]
            assert sqlite_file.drain(owner) == []
        await asyncio.sleep(0.3)  # the deferred delete is written
    assert lag.worst < 0.1
    assert sqlite_file.drain(owner) == []
    reopened = SQLiteStore(sqlite_file.path)
    try:
        assert reopened.drain(owner) == []
    finally:
        reopened.close()


@pytest.mark.asyncio
async def test_sqlite_close_writes_what_is_queued(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    store.enqueue(Owner(7, 10), {"kept": 1})
    store.close()
    reopened = SQLiteStore(tmp_path / "t.db")
    try:
        assert reopened.drain(Owner(7, 10)) == [{"kept": 1}]
    finally:
        reopened.close()


@pytest.mark.asyncio
async def test_sqlite_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    lease = await store.acquire("A", math.inf)
    store.close()
    with pytest.raises(StoreWriteError, match="is closed"):
        await store.update("t", {"progress": 0.5}, lease)


@pytest.mark.asyncio
async def test_sqlite_rejects_unknown_update_fields(sqlite_file: SQLiteStore) -> None:
    row = await insert(sqlite_file, rec(key="k"))
    with pytest.raises(ValueError, match="task_key"):
        await update(sqlite_file, row.id, {"task_key": "other"})


@pytest.mark.asyncio
async def test_sqlite_rows_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    first = SQLiteStore(path)
    row = await insert(first, rec(key="k"))
    first.enqueue(Owner(7, 10), {"kept": 1})
    first.close()
    second = SQLiteStore(path)
    try:
        assert second.get(row.id) == row
        lease = await second.acquire("rt-B", math.inf)
        assert (await second.insert_or_get_active(rec(key="k"), lease))[0].id == row.id
        assert second.drain(Owner(7, 10)) == [{"kept": 1}]
    finally:
        second.close()


# ------------------------------------------------------------------ SQLite only: query plans


def traced_sql(store: SQLiteStore, call: Callable[[], object]) -> list[str]:
    """The SQL statements (values expanded inline) that *call* runs on the store's connection."""
    seen: list[str] = []
    store._reader.set_trace_callback(seen.append)
    try:
        call()
    finally:
        store._reader.set_trace_callback(None)
    return [s for s in seen if s.lstrip().upper().startswith("SELECT")]


QUERIES: dict[str, tuple[Callable[[SQLiteStore], object], str]] = {
    "find_by_key": (lambda s: s.find_by_key("a_b", 10), "tasks_by_key"),
    "find_by_key_prefix": (lambda s: s.find_by_key_prefix("a_%", None), "tasks_by_key"),
    "find_by_key_prefix-emoji": (lambda s: s.find_by_key_prefix("🚀", "10"), "tasks_by_key"),
    "find_by_key_prefix-empty": (lambda s: s.find_by_key_prefix("", 10), "tasks_by_key"),
    "find_by_user": (lambda s: s.find_by_user(7, 10), "tasks_by_user"),
    "get": (lambda s: s.get("t1"), "sqlite_autoindex_tasks"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("query", sorted(QUERIES))
@pytest.mark.parametrize("path", [":memory:", "file"])
async def test_sqlite_queries_use_an_index(query: str, path: str, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db" if path == "file" else ":memory:")
    try:
        for n in range(50):
            row = rec(key=f"a_b{n % 7}", org=n % 3, user=n % 5, created=n, status="completed")
            await insert(store, row)
        call, index = QUERIES[query]
        [sql] = traced_sql(store, lambda: call(store))
        plan = store.explain(sql)
        assert any(line.startswith("SEARCH tasks USING") and index in line for line in plan), plan
        assert not any(line.startswith("SCAN tasks") for line in plan), plan
    finally:
        store.close()


# ------------------------------------------------------------------ model equivalence

USERS = st.sampled_from([7, 7, "7", None])
ORGS = st.sampled_from([10, 10, None, "10"])
SAMPLE_KEYS = ["a", "a_b", "a%b", "axb", "ab", "a_", "", "é", "🚀x", "\U0010ffff"]
# the characters that matter to prefix matching: LIKE wildcards, the escape character, NUL,
# multi-byte UTF-8, the last code point and both sides of the surrogate gap
KEY_TEXT = st.text(alphabet=st.sampled_from("ab_%\\\x00é日🚀\U0010ffff\ud7ff\ue000"), max_size=4)
TASK_KEYS = st.none() | st.sampled_from(SAMPLE_KEYS) | KEY_TEXT
PREFIXES = st.sampled_from(["", "a", "a_", "a%", "🚀", "é", "\U0010ffff"]) | KEY_TEXT
STATUSES = st.sampled_from([s.value for s in TaskStatus])
SCALARS = st.sampled_from([None, True, 0, -1, 2**53 + 1, 0.5, -0.0, 1e300, "", "é🚀", "a\x00b"])
JSONS = SCALARS | st.lists(SCALARS, max_size=2) | st.dictionaries(st.sampled_from("ab"), SCALARS)
RUNNERS = st.sampled_from(["A", "B", "C"])
INDEXES = st.integers(0, 30)  # which earlier insert an operation refers to (30: none)
CHANGES = st.fixed_dictionaries(
    {},
    optional={
        "status": STATUSES,
        "progress": st.sampled_from([0.0, 0.5, 1.0, 1]),
        "checkpoint": st.dictionaries(st.sampled_from(["a", "b", "ü"]), JSONS, max_size=2),
        "result": JSONS,
        "error": st.sampled_from([None, "", "boom"]),
        "label": st.sampled_from(["", "Job", "Zählen 🚀"]),
        "updated_at": st.sampled_from([1.0, 2.0, 3.0]),
    },
)
# ("insert", user, org, key, status, created_at, runner, like): with *like*, the key and
# organization of an earlier insert, so that dedup is exercised often
INSERTS = st.tuples(
    st.just("insert"), USERS, ORGS, TASK_KEYS, STATUSES, st.sampled_from([1.0, 2.0, 3.0]),
    RUNNERS, st.none() | INDEXES,
)  # fmt: skip
OPS = st.one_of(
    INSERTS,
    INSERTS,
    INSERTS,
    INSERTS,
    st.tuples(st.just("update"), INDEXES, CHANGES, RUNNERS),
    st.tuples(st.just("update"), INDEXES, CHANGES, RUNNERS),
    st.tuples(st.just("get"), INDEXES),
    st.tuples(st.just("find_by_key"), TASK_KEYS.filter(lambda k: k is not None), ORGS),
    st.tuples(st.just("find_by_key_prefix"), PREFIXES, ORGS),
    st.tuples(st.just("find_by_user"), USERS, ORGS),
    st.tuples(st.just("acquire"), RUNNERS, st.sampled_from([5.0, 50.0, math.inf])),
    st.tuples(st.just("renew"), RUNNERS, st.sampled_from([5.0, 50.0])),
    st.tuples(st.just("release"), RUNNERS),
    st.tuples(st.just("advance"), st.sampled_from([1.0, 10.0, 60.0])),
    st.tuples(st.just("interrupt_orphans")),
    st.tuples(st.just("enqueue"), USERS, ORGS, JSONS),
    st.tuples(st.just("drain"), USERS, ORGS),
    st.tuples(st.just("concurrently"), st.lists(INSERTS, min_size=2, max_size=4)),
)


def earlier(known: list[TaskRecord], index: int) -> TaskRecord | None:
    return known[index % len(known)] if known and index < 30 else None


class Model:
    """One store under test with the leases its runtimes hold (the same story for each)."""

    def __init__(self, store: TaskStore, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.leases: dict[str, Lease] = {}

    def lease(self, runner: str) -> Lease:
        # A runner that never acquired writes under a lease no store issued (token 0).
        return self.leases.get(runner, Lease(runner, 0, 0.0))


async def apply(model: Model, op: tuple[Any, ...], known: list[TaskRecord], tag: str) -> object:
    """Run one operation; return what a caller can observe of it (comparable across stores).

    Tokens differ between stores' histories only if the stores disagree, so leases are
    compared without them where a store's own numbering shows.
    """
    store = model.store
    name, *args = op
    if name == "insert":
        user, org, key, status, created, runner, like = args
        target = None if like is None else earlier(known, like)
        if target is not None:
            key, org = target.task_key, target.organization_id
        record = rec(f"id{tag}", user=user, org=org, key=key, status=status, created=created)
        try:
            return await store.insert_or_get_active(record, model.lease(runner))
        except LeaseLostError:
            return "lost"
    if name == "concurrently":
        return await asyncio.gather(
            *(apply(model, sub, known, f"{tag}.{n}") for n, sub in enumerate(args[0]))
        )
    if name in {"update", "get"}:
        target = earlier(known, args[0])
        task_id = "unknown-id" if target is None else target.id
        if name == "get":
            return store.get(task_id)
        return await store.update(task_id, dict(args[1]), model.lease(args[2]))
    if name in {"find_by_key", "find_by_key_prefix", "find_by_user"}:
        return getattr(store, name)(*args)
    if name == "acquire":
        model.leases[args[0]] = await store.acquire(args[0], args[1])
        return model.leases[args[0]].expires_at
    if name == "renew":
        renewed = await store.renew(model.lease(args[0]), args[1])
        if renewed is not None:
            model.leases[args[0]] = renewed
        return None if renewed is None else renewed.expires_at
    if name == "release":
        await store.release(model.lease(args[0]))
        return None
    if name == "advance":
        model.clock.t += args[0]
        return None
    if name == "interrupt_orphans":
        return sorted(await store.interrupt_orphans(9.0, "gone"), key=lambda r: r.id)
    if name == "enqueue":
        store.enqueue(Owner(args[0], args[1]), {"m": args[2]})
        return None
    if name == "drain":
        return store.drain(Owner(*args))
    raise AssertionError(name)


def observe(store: TaskStore) -> object:
    """Everything the query methods can say about a store's final state."""
    orgs, users = (None, 10, "10"), (7, "7", None)
    return {
        "keyed": [store.find_by_key_prefix("", org) for org in orgs],
        "by_user": [store.find_by_user(user, org) for user in users for org in orgs],
        "leases": sorted(store.leases()),
        "queued": [store.drain(Owner(user, org)) for user in users for org in orgs],
    }


async def run_both(ops: list[tuple[Any, ...]], models: list[Model]) -> None:
    """Apply *ops* to every store in lockstep; every answer must agree."""
    known: list[TaskRecord] = []
    for n, op in enumerate(ops):
        answers = [await apply(model, op, known, str(n)) for model in models]
        for other in answers[1:]:
            assert other == answers[0], f"stores disagree on {op!r}"
        found = answers[0] if op[0] == "concurrently" else [answers[0]]
        if op[0] in {"insert", "concurrently"}:
            inserted = [answer for answer in cast(list[object], found) if answer != "lost"]
            known += [row for row, _ in cast(list[tuple[TaskRecord, bool]], inserted)]
    finals = [observe(model.store) for model in models]
    for other in finals[1:]:
        assert other == finals[0]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(ops=st.lists(OPS, min_size=5, max_size=40))
def test_memory_and_sqlite_stores_agree(ops: list[tuple[Any, ...]]) -> None:
    """Model equivalence: any sequence of operations gives the same answers on both stores."""
    clocks = [FakeClock(), FakeClock()]
    models = [
        Model(MemoryStore(clock=clocks[0]), clocks[0]),
        Model(SQLiteStore(":memory:", clock=clocks[1]), clocks[1]),
    ]
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run_both(ops, models))
    finally:
        loop.close()
        for model in models:
            model.store.close()


def test_sqlite_file_opened_by_many_connections_at_once(tmp_path: Path) -> None:
    # A new file: the journal-mode switch of concurrent openers answers "locked" at once,
    # without the busy handler; every opener must still succeed.
    for attempt in range(10):
        path = tmp_path / f"fresh-{attempt}.db"
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def open_store(
            path: Path = path,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            try:
                SQLiteStore(path).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(OPS, min_size=5, max_size=40))
def test_memory_and_postgres_stores_agree(ops: list[tuple[Any, ...]], postgres_dsn: str) -> None:
    """The same model equivalence against PostgreSQL (one schema, emptied per example)."""
    clocks = [FakeClock(), FakeClock()]
    models = [
        Model(MemoryStore(clock=clocks[0]), clocks[0]),
        Model(PostgresStore(postgres_dsn, clock=clocks[1]), clocks[1]),
    ]
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run_both(ops, models))
    finally:
        loop.close()
        for model in models:
            model.store.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(
                "TRUNCATE taskbed_tasks, taskbed_outbox, taskbed_leases, taskbed_presence;"
                "ALTER SEQUENCE taskbed_fencing RESTART"
            )


@pytest.mark.rule("LEASE-9")
@pytest.mark.asyncio
async def test_sqlite_checkpoints_in_the_writer_thread(tmp_path: Path) -> None:
    """SQLite's automatic checkpoint (an fsync at a commit) is off on the loop's connection;
    the writer thread checkpoints instead, so the WAL does not grow without bound."""
    store = SQLiteStore(tmp_path / "t.db")
    try:
        lease = await claim(store, "rt-A")
        row = await insert(store, rec())
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for n in range(1500):  # one commit each
            assert await store.update(row.id, {"progress": n / 1500, "label": "x" * 500}, lease)
        await asyncio.sleep(0.2)  # the last checkpoint's thread finishes
        wal = os.path.getsize(f"{store.path}-wal")
        assert wal < 4_000_000, f"the WAL grew to {wal} bytes: no checkpoint ran"
    finally:
        store.close()
