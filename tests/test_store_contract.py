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
import sqlite3
import threading
import warnings
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
    MemoryStore,
    Owner,
    PostgresStore,
    SQLiteStore,
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


def open_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> TaskStore:
    if kind == "postgres":
        return PostgresStore(request.getfixturevalue("postgres_dsn"))
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite-memory":
        return SQLiteStore(":memory:")
    return SQLiteStore(tmp_path / "tasks.db")


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    opened = open_store(request.param, tmp_path, request)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "tasks.db")
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


def insert(store: TaskStore, record: TaskRecord) -> TaskRecord:
    """Insert a row that must not be deduplicated."""
    stored, created = store.insert_or_get_active(record)
    assert created, f"{record.id} was unexpectedly deduplicated against {stored.id}"
    return stored


def ids(rows: list[TaskRecord]) -> list[str]:
    return [r.id for r in rows]


# ------------------------------------------------------------------ insert_or_get_active


def test_shared_flag(store: TaskStore, request: pytest.FixtureRequest) -> None:
    """Only a file store and a database server can be opened by other processes."""
    assert store.shared is (request.node.callspec.params["store"] in {"sqlite-file", "postgres"})
    assert isinstance(store, TaskStore)


def test_insert_returns_the_record_and_stores_it_unchanged(store: TaskStore) -> None:
    record = rec(key="k")
    record.checkpoint = {"done": [1, 2], "name": "é🚀"}
    record.result = {"nested": {"x": 1.5}}
    record.progress = 0.25
    stored, created = store.insert_or_get_active(record)
    assert created
    assert stored == record
    assert store.get(record.id) == record


def test_same_key_same_org_returns_the_active_holder(store: TaskStore) -> None:
    holder = insert(store, rec(key="sync", user=7))
    again, created = store.insert_or_get_active(rec(key="sync", user=8))
    assert not created
    assert again == holder
    assert ids(store.find_by_key("sync", 10)) == [holder.id]


@pytest.mark.parametrize("status", ACTIVE_STATUSES)
def test_every_active_status_holds_the_key(store: TaskStore, status: str) -> None:
    holder = insert(store, rec(key="k"))
    store.update(holder.id, {"status": status})
    duplicate = rec(key="k")
    found, created = store.insert_or_get_active(duplicate)
    assert (found.id, found.status, created) == (holder.id, status, False)
    assert store.get(duplicate.id) is None


@pytest.mark.parametrize(
    ("org_a", "org_b"),
    [(10, 11), (10, "10"), (None, 10), (None, "null"), (None, ""), ("a", "A")],
)
def test_key_scope_is_the_exact_organization(store: TaskStore, org_a: Any, org_b: Any) -> None:
    a = insert(store, rec(key="k", org=org_a))
    b = insert(store, rec(key="k", org=org_b))
    assert ids(store.find_by_key("k", org_a)) == [a.id]
    assert ids(store.find_by_key("k", org_b)) == [b.id]


def test_none_organization_matches_none(store: TaskStore) -> None:
    holder = insert(store, rec(key="k", org=None))
    found, created = store.insert_or_get_active(rec(key="k", org=None))
    assert (found.id, created) == (holder.id, False)


@pytest.mark.parametrize(("key_a", "key_b"), [("k", "K"), ("k", "k "), ("10", "1"), ("é", "e")])
def test_keys_match_exactly(store: TaskStore, key_a: str, key_b: str) -> None:
    insert(store, rec(key=key_a))
    insert(store, rec(key=key_b))


def test_rows_without_a_key_never_dedup(store: TaskStore) -> None:
    first = insert(store, rec(key=None))
    second = insert(store, rec(key=None))
    assert set(ids(store.find_by_user(7, 10))) == {first.id, second.id}


@pytest.mark.parametrize("status", TERMINAL_STATUSES)
def test_terminal_rows_never_block_a_key(store: TaskStore, status: str) -> None:
    old = insert(store, rec(key="k", created=1.0))
    store.update(old.id, {"status": status, "updated_at": 2.0})
    new = insert(store, rec(key="k", created=3.0))
    assert ids(store.find_by_key("k", 10)) == [new.id, old.id]
    # and the new active row holds the key again
    found, created = store.insert_or_get_active(rec(key="k", created=4.0))
    assert (found.id, created) == (new.id, False)


@pytest.mark.parametrize("status", TERMINAL_STATUSES)
def test_a_row_inserted_terminal_neither_holds_nor_is_blocked(
    store: TaskStore, status: str
) -> None:
    """Dedup is among active rows only: a terminal row (history) never competes for a key."""
    insert(store, rec(key="k", status=status))
    active = insert(store, rec(key="k"))
    history = insert(store, rec(key="k", status=status))
    assert store.get(history.id) == history
    found, created = store.insert_or_get_active(rec(key="k"))
    assert (found.id, created) == (active.id, False)


# ------------------------------------------------------------------ update


def test_update_applies_changes(store: TaskStore) -> None:
    row = insert(store, rec(key="k"))
    changes: dict[str, object] = {
        "status": "running",
        "progress": 0.5,
        "checkpoint": {"page": 3, "items": ["a", "ü"]},
        "label": "Syncing 🚀",
        "updated_at": 1234.5,
        "runner_id": "rt-B",
    }
    store.update(row.id, changes)
    got = store.get(row.id)
    assert got is not None
    for name, value in changes.items():
        assert getattr(got, name) == value
    assert (got.created_at, got.task_key, got.user_id) == (1000.0, "k", 7)


@pytest.mark.parametrize("status", TERMINAL_STATUSES)
def test_terminal_rows_never_change_again(store: TaskStore, status: str) -> None:
    row = insert(store, rec(key="k"))
    store.update(row.id, {"status": status, "result": {"n": 1}, "error": "e", "updated_at": 5.0})
    before = store.get(row.id)
    assert before is not None
    assert before.status == status
    for target in [*ACTIVE_STATUSES, *TERMINAL_STATUSES]:
        store.update(row.id, {"status": target, "progress": 0.9, "label": "x", "updated_at": 9.0})
    store.update(row.id, {"result": {"n": 2}, "error": None})
    assert store.get(row.id) == before


def test_update_of_an_unknown_id_does_nothing(store: TaskStore) -> None:
    store.update("no-such-id", {"status": "completed"})
    assert store.get("no-such-id") is None


def test_rows_are_copies(store: TaskStore) -> None:
    """Mutating a row (or a dict) given to or got from a store never changes the stored row."""
    row = rec(key="k")
    row.checkpoint, row.result = {"page": [1]}, {"n": [1]}
    insert(store, row)
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
    store.update(row.id, changes)
    changes["progress"] = 0.9
    checkpoint: dict[str, object] = {"page": [5]}
    store.update(row.id, {"checkpoint": checkpoint})
    checkpoint["page"] = "mutated"
    fresh = store.get(row.id)
    assert fresh is not None
    assert (fresh.status, fresh.label, fresh.progress) == ("pending", "Job", 0.5)
    assert (fresh.checkpoint, fresh.result) == ({"page": [5]}, {"n": [1]})
    found_again, created = store.insert_or_get_active(rec(key="k"))
    assert (found_again.id, created) == (row.id, False)


# ------------------------------------------------------------------ queries


def test_get_unknown_is_none(store: TaskStore) -> None:
    assert store.get("missing") is None


def test_find_by_key_newest_first_any_user_any_status(store: TaskStore) -> None:
    a = insert(store, rec(key="k", created=1.0, user=1))
    store.update(a.id, {"status": "completed"})
    b = insert(store, rec(key="k", created=3.0, user=2, status="failed"))
    c = insert(store, rec(key="k", created=2.0, user="x", status="interrupted"))
    d = insert(store, rec(key="k", created=0.5, user=None))  # active holder, oldest
    insert(store, rec(key="k2", created=9.0))
    insert(store, rec(key="k", created=9.0, org=11))
    assert ids(store.find_by_key("k", 10)) == [b.id, c.id, a.id, d.id]
    assert store.find_by_key("nope", 10) == []


def test_ties_in_created_at_are_newest_inserted_first(store: TaskStore) -> None:
    rows = [insert(store, rec(key="k", created=5.0, status="completed")) for _ in range(6)]
    later = insert(store, rec(key="k", created=6.0))
    earlier = insert(store, rec(key="k", created=4.0, status="failed"))
    expected = [later.id, *reversed(ids(rows)), earlier.id]
    assert ids(store.find_by_key("k", 10)) == expected
    assert ids(store.find_by_key_prefix("k", 10)) == expected
    assert ids(store.find_by_user(7, 10)) == expected


def test_find_by_key_org_is_exact(store: TaskStore) -> None:
    none = insert(store, rec(key="k", org=None))
    ten = insert(store, rec(key="k", org=10))
    text = insert(store, rec(key="k", org="10"))
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
def test_prefix_is_literal(store: TaskStore, prefix: str, expected: set[str]) -> None:
    for key in KEYS:
        insert(store, rec(key=key))
        insert(store, rec(key=key, org=11))  # another organization: never returned
    insert(store, rec(key=None))  # no key: never matches, not even the empty prefix
    found = store.find_by_key_prefix(prefix, 10)
    assert sorted(r.task_key or "" for r in found) == sorted(expected)
    assert all(r.organization_id == 10 for r in found)


def test_prefix_org_is_exact_and_newest_first(store: TaskStore) -> None:
    a = insert(store, rec(key="job.1", org=None, created=1.0))
    b = insert(store, rec(key="job.2", org=None, created=2.0, status="completed"))
    insert(store, rec(key="job.3", org=10, created=3.0))
    assert ids(store.find_by_key_prefix("job.", None)) == [b.id, a.id]
    assert store.find_by_key_prefix("job.", "null") == []


def test_find_by_user_exact_and_newest_first(store: TaskStore) -> None:
    a = insert(store, rec(user=7, org=10, created=1.0))
    b = insert(store, rec(user=7, org=10, created=2.0, key="k", status="completed"))
    c = insert(store, rec(user=7, org=None, created=3.0))
    d = insert(store, rec(user="7", org=10, created=4.0))
    insert(store, rec(user=8, org=10, created=5.0))
    assert ids(store.find_by_user(7, 10)) == [b.id, a.id]
    assert ids(store.find_by_user(7, None)) == [c.id]
    assert ids(store.find_by_user("7", 10)) == [d.id]
    assert store.find_by_user(7, "10") == []
    assert store.find_by_user(9, 10) == []


# ------------------------------------------------------------------ offline queue


def test_enqueue_and_drain_keep_order_per_owner(store: TaskStore) -> None:
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


def test_drain_after_more_enqueues(store: TaskStore) -> None:
    owner = Owner(7, 10)
    store.enqueue(owner, {"a": 1})
    assert store.drain(owner) == [{"a": 1}]
    store.enqueue(owner, {"b": 2})
    store.enqueue(owner, {"c": "é🚀"})
    assert store.drain(owner) == [{"b": 2}, {"c": "é🚀"}]


# ------------------------------------------------------------------ leases and recovery


def test_heartbeat_creates_and_refreshes_a_lease(store: TaskStore) -> None:
    assert store.leases() == []
    store.heartbeat(Lease("A", 100.0, "host-1", 11))
    store.heartbeat(Lease("B", math.inf, "host-2", 22))
    store.heartbeat(Lease("A", 200.0, "host-1", 11))
    assert sorted(store.leases()) == [
        Lease("A", 200.0, "host-1", 11),
        Lease("B", math.inf, "host-2", 22),
    ]


def test_release_drops_only_that_lease(store: TaskStore) -> None:
    store.heartbeat(Lease("A", 100.0, "h", 1))
    store.heartbeat(Lease("B", 100.0, "h", 2))
    store.release("A")
    store.release("never-registered")
    assert [lease.runtime_id for lease in store.leases()] == ["B"]


def test_interrupt_orphans(store: TaskStore) -> None:
    store.heartbeat(Lease("A", 100.0, "h", 1))
    store.heartbeat(Lease("B", 100.0, "h", 2))
    alive = insert(store, rec(key="ka", runner="A"))
    dead_pending = insert(store, rec(key="kb", runner="B"))
    dead_running = insert(store, rec(runner="B"))
    store.update(dead_running.id, {"status": "running"})
    dead_waiting = insert(store, rec(runner="B"))
    store.update(dead_waiting.id, {"status": "running"})
    store.update(dead_waiting.id, {"status": "waiting_confirmation"})
    dead_done = insert(store, rec(runner="B"))
    store.update(dead_done.id, {"status": "completed", "result": 1})
    no_lease = insert(store, rec(runner="C"))
    no_runner = insert(store, rec(runner=None))

    orphans = store.interrupt_orphans(["B", "unknown"], 50.0, "restarted")

    expected = {dead_pending.id, dead_running.id, dead_waiting.id, no_lease.id, no_runner.id}
    assert {r.id for r in orphans} == expected
    for row in orphans:
        assert (row.status, row.error, row.updated_at) == ("interrupted", "restarted", 50.0)
        assert store.get(row.id) == row
    assert [lease.runtime_id for lease in store.leases()] == ["A"]
    assert store.get(alive.id) == alive
    done = store.get(dead_done.id)
    assert done is not None
    assert (done.status, done.error, done.result) == ("completed", None, 1)
    # the interrupted holder frees its key; the live runtime's key stays held
    insert(store, rec(key="kb", runner="A"))
    assert store.insert_or_get_active(rec(key="ka", runner="A"))[1] is False
    # nothing is left to interrupt
    assert store.interrupt_orphans([], 60.0, "again") == []


def test_interrupted_rows_never_change_again(store: TaskStore) -> None:
    row = insert(store, rec(runner="gone"))
    [orphan] = store.interrupt_orphans([], 5.0, "restarted")
    store.update(row.id, {"status": "completed", "error": None})
    assert store.get(row.id) == orphan


# ------------------------------------------------------------------ SQLite only: write-behind


def raw_status(path: str, task_id: str) -> str | None:
    """The status as another connection (another process) sees it in the file."""
    with sqlite3.connect(path) as db:
        found = db.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return None if found is None else str(found[0])


READS: dict[str, Callable[[SQLiteStore, str], object]] = {
    "get": lambda s, tid: s.get(tid),
    "find_by_key": lambda s, tid: s.find_by_key("k", 10),
    "find_by_key_prefix": lambda s, tid: s.find_by_key_prefix("", 10),
    "find_by_user": lambda s, tid: s.find_by_user(7, 10),
    "insert": lambda s, tid: s.insert_or_get_active(rec(key="other")),
    "interrupt_orphans": lambda s, tid: s.interrupt_orphans([], 1.0, "x"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("read", sorted(READS))
async def test_sqlite_reads_and_inserts_flush_buffered_updates(
    sqlite_file: SQLiteStore, read: str
) -> None:
    sqlite_file.heartbeat(Lease("rt-A", math.inf, "h", 1))
    row = insert(sqlite_file, rec(key="k"))
    sqlite_file.update(row.id, {"status": "running", "updated_at": 2.0})
    # inside a running loop the update is buffered: another connection does not see it yet
    assert raw_status(sqlite_file.path, row.id) == "pending"
    READS[read](sqlite_file, row.id)
    assert raw_status(sqlite_file.path, row.id) == "running"
    got = sqlite_file.get(row.id)
    assert got is not None
    assert (got.status, got.updated_at) == ("running", 2.0)


@pytest.mark.asyncio
async def test_sqlite_buffered_completion_frees_the_key_for_the_next_insert(
    sqlite_file: SQLiteStore,
) -> None:
    row = insert(sqlite_file, rec(key="k"))
    sqlite_file.update(row.id, {"status": "running"})
    sqlite_file.update(row.id, {"status": "completed", "result": {"ok": True}})
    new = insert(sqlite_file, rec(key="k"))  # read-your-writes: the buffer went in first
    assert ids(sqlite_file.find_by_key("k", 10)) == [new.id, row.id]


@pytest.mark.asyncio
async def test_sqlite_buffer_is_written_at_the_end_of_the_loop_iteration(
    sqlite_file: SQLiteStore,
) -> None:
    row = insert(sqlite_file, rec())
    sqlite_file.update(row.id, {"status": "running"})
    sqlite_file.update(row.id, {"progress": 0.5})
    assert raw_status(sqlite_file.path, row.id) == "pending"
    await asyncio.sleep(0)
    assert raw_status(sqlite_file.path, row.id) == "running"


@pytest.mark.asyncio
async def test_sqlite_buffer_keeps_a_terminal_status_terminal(sqlite_file: SQLiteStore) -> None:
    row = insert(sqlite_file, rec())
    sqlite_file.update(row.id, {"status": "running"})
    sqlite_file.update(row.id, {"status": "failed", "error": "boom"})
    sqlite_file.update(row.id, {"status": "running", "error": None, "progress": 0.7})
    got = sqlite_file.get(row.id)
    assert got is not None
    assert (got.status, got.error, got.progress) == ("failed", "boom", 0.0)


@pytest.mark.asyncio
async def test_sqlite_close_writes_the_buffer(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    row = insert(store, rec())
    store.update(row.id, {"status": "running"})
    store.close()
    assert raw_status(str(tmp_path / "t.db"), row.id) == "running"


def test_sqlite_update_outside_a_loop_is_written_at_once(sqlite_file: SQLiteStore) -> None:
    row = insert(sqlite_file, rec())
    sqlite_file.update(row.id, {"status": "running"})
    assert raw_status(sqlite_file.path, row.id) == "running"


def test_sqlite_rejects_unknown_update_fields(sqlite_file: SQLiteStore) -> None:
    row = insert(sqlite_file, rec(key="k"))
    with pytest.raises(ValueError, match="task_key"):
        sqlite_file.update(row.id, {"task_key": "other"})


def test_sqlite_rows_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    first = SQLiteStore(path)
    row = insert(first, rec(key="k"))
    first.enqueue(Owner(7, 10), {"kept": 1})
    first.close()
    second = SQLiteStore(path)
    try:
        assert second.get(row.id) == row
        assert second.insert_or_get_active(rec(key="k"))[0].id == row.id
        assert second.drain(Owner(7, 10)) == [{"kept": 1}]
    finally:
        second.close()


# ------------------------------------------------------------------ SQLite only: query plans


def traced_sql(store: SQLiteStore, call: Callable[[], object]) -> list[str]:
    """The SQL statements (values expanded inline) that *call* runs on the store's connection."""
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    try:
        call()
    finally:
        store._db.set_trace_callback(None)
    return [s for s in seen if s.lstrip().upper().startswith("SELECT")]


QUERIES: dict[str, tuple[Callable[[SQLiteStore], object], str]] = {
    "find_by_key": (lambda s: s.find_by_key("a_b", 10), "tasks_by_key"),
    "find_by_key_prefix": (lambda s: s.find_by_key_prefix("a_%", None), "tasks_by_key"),
    "find_by_key_prefix-emoji": (lambda s: s.find_by_key_prefix("🚀", "10"), "tasks_by_key"),
    "find_by_key_prefix-empty": (lambda s: s.find_by_key_prefix("", 10), "tasks_by_key"),
    "find_by_user": (lambda s: s.find_by_user(7, 10), "tasks_by_user"),
    "get": (lambda s: s.get("t1"), "sqlite_autoindex_tasks"),
}


@pytest.mark.parametrize("query", sorted(QUERIES))
@pytest.mark.parametrize("path", [":memory:", "file"])
def test_sqlite_queries_use_an_index(query: str, path: str, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db" if path == "file" else ":memory:")
    try:
        for n in range(50):
            row = rec(key=f"a_b{n % 7}", org=n % 3, user=n % 5, created=n, status="completed")
            insert(store, row)
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
RUNNERS = st.sampled_from(["A", "B", "C", None])
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
        "runner_id": RUNNERS,
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
    st.tuples(st.just("update"), INDEXES, CHANGES),
    st.tuples(st.just("update"), INDEXES, CHANGES),
    st.tuples(st.just("get"), INDEXES),
    st.tuples(st.just("find_by_key"), TASK_KEYS.filter(lambda k: k is not None), ORGS),
    st.tuples(st.just("find_by_key_prefix"), PREFIXES, ORGS),
    st.tuples(st.just("find_by_user"), USERS, ORGS),
    st.tuples(st.just("heartbeat"), st.sampled_from(["A", "B"])),
    st.tuples(st.just("release"), st.sampled_from(["A", "B"])),
    st.tuples(st.just("interrupt_orphans"), st.lists(st.sampled_from(["A", "B", "Z"]), max_size=2)),
    st.tuples(st.just("enqueue"), USERS, ORGS, JSONS),
    st.tuples(st.just("drain"), USERS, ORGS),
    st.tuples(st.just("yield")),
)


def earlier(known: list[TaskRecord], index: int) -> TaskRecord | None:
    return known[index % len(known)] if known and index < 30 else None


def apply(store: TaskStore, op: tuple[Any, ...], known: list[TaskRecord]) -> object:
    """Run one operation; return what a caller can observe of it (comparable across stores)."""
    name, *args = op
    if name == "insert":
        user, org, key, status, created, runner, like = args
        model = None if like is None else earlier(known, like)
        if model is not None:
            key, org = model.task_key, model.organization_id
        record = rec(
            f"id{len(known)}", user=user, org=org, key=key, status=status, created=created,
            runner=runner,
        )  # fmt: skip
        return store.insert_or_get_active(record)
    if name in {"update", "get"}:
        target = earlier(known, args[0])
        task_id = "unknown-id" if target is None else target.id
        if name == "get":
            return store.get(task_id)
        store.update(task_id, dict(args[1]))
        return None
    if name in {"find_by_key", "find_by_key_prefix", "find_by_user"}:
        return getattr(store, name)(*args)
    if name == "heartbeat":
        store.heartbeat(Lease(args[0], math.inf, "host", 1))
        return None
    if name == "release":
        store.release(args[0])
        return None
    if name == "interrupt_orphans":
        return sorted(store.interrupt_orphans(args[0], 9.0, "gone"), key=lambda r: r.id)
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


async def run_both(ops: list[tuple[Any, ...]], stores: list[TaskStore]) -> None:
    """Apply *ops* to every store in lockstep, in one loop so that SQLite buffers updates."""
    known: list[TaskRecord] = []
    for op in ops:
        if op[0] == "yield":
            await asyncio.sleep(0)  # lets SQLite's end-of-iteration flush run
            continue
        answers = [apply(store, op, known) for store in stores]
        for other in answers[1:]:
            assert other == answers[0], f"stores disagree on {op!r}"
        if op[0] == "insert":
            stored, _ = cast(tuple[TaskRecord, bool], answers[0])
            known.append(stored)
    finals = [observe(store) for store in stores]
    for other in finals[1:]:
        assert other == finals[0]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(ops=st.lists(OPS, min_size=5, max_size=40))
def test_memory_and_sqlite_stores_agree(ops: list[tuple[Any, ...]]) -> None:
    """Model equivalence: any sequence of operations gives the same answers on both stores."""
    stores: list[TaskStore] = [MemoryStore(), SQLiteStore(":memory:")]
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run_both(ops, stores))
    finally:
        loop.close()
        for store in stores:
            store.close()


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
    stores: list[TaskStore] = [MemoryStore(), PostgresStore(postgres_dsn)]
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run_both(ops, stores))
    finally:
        loop.close()
        for store in stores:
            store.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(
                "TRUNCATE taskbed_tasks, taskbed_outbox, taskbed_leases, taskbed_presence"
            )
