"""QUERY-1..QUERY-6: get_tasks_by_key, get_tasks_by_key_prefix, list_user_tasks and row shape."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from conftest import make_session
from taskbed import MemoryStore, ModuleSDK, Runtime, SQLiteStore, TaskRecord, TaskStore

RequestAs = Callable[..., AbstractAsyncContextManager[ModuleSDK]]


async def hold(release: asyncio.Event, value: Any = None) -> Any:
    await release.wait()
    return value


async def boom() -> None:
    raise RuntimeError("boom")


async def settle(predicate: Callable[[], bool], rounds: int = 2000) -> None:
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def finished(rt: Runtime, sdk: ModuleSDK, key: str | None, outcome: str) -> str:
    """Submit a task and bring it to *outcome* (completed, failed or interrupted)."""
    if outcome == "completed":
        task_id = await sdk.tasks.run_background(asyncio.sleep(0, "ok"), task_key=key)
    elif outcome == "failed":
        task_id = await sdk.tasks.run_background(boom(), task_key=key)
    else:
        task_id = await sdk.tasks.run_background(hold(asyncio.Event()), task_key=key)
        owner = sdk.session["user"]
        conn = rt.connect(owner["id"], owner["organization_id"])
        await conn.send({"backgroundTaskCancel": {"taskId": task_id}})
        conn.close()
    assert (await rt.wait(task_id, timeout=5))["status"] == outcome
    return task_id


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


# ------------------------------------------------------------------ QUERY-1


@pytest.mark.rule("QUERY-1")
@pytest.mark.asyncio
async def test_by_key_ignores_user_and_status_newest_first(
    rt: Runtime, request_as: RequestAs
) -> None:
    release = asyncio.Event()
    async with request_as(user=7) as sdk7, request_as(user=8, request_id="r2") as sdk8:
        done = await finished(rt, sdk7, "k", "completed")
        failed = await finished(rt, sdk8, "k", "failed")
        cancelled = await finished(rt, sdk7, "k", "interrupted")
        active = await sdk8.tasks.run_background(hold(release), task_key="k")
        await sdk7.tasks.run_background(hold(release), task_key="k2")  # another key
        await sdk7.tasks.run_background(hold(release), task_key="K")  # keys are exact
    async with request_as(user=7, org=11, request_id="r3") as sdk11:
        await sdk11.tasks.run_background(hold(release), task_key="k")  # another organization
    async with request_as(user=9, request_id="r4") as sdk9:  # someone with no task at all
        rows = sdk9.tasks.get_tasks_by_key("k", 10)
    assert ids(rows) == [active, cancelled, failed, done]
    # the held task is active: pending, or running once the loop started it (SQLite writes
    # are awaited, so later submissions let it start)
    assert rows[0]["status"] in {"pending", "running"}
    assert [(r["userId"], r["status"]) for r in rows] == [
        (8, rows[0]["status"]),
        (7, "interrupted"),
        (8, "failed"),
        (7, "completed"),
    ]
    assert all(r["taskKey"] == "k" and r["organizationId"] == 10 for r in rows)
    release.set()


@pytest.mark.rule("QUERY-1")
@pytest.mark.asyncio
@pytest.mark.parametrize("key", [None, "", 10, b"k", ["k"]], ids=repr)
async def test_no_key_or_a_non_str_key_matches_nothing(
    rt: Runtime, request_as: RequestAs, key: Any
) -> None:
    """Keyless tasks are not "the tasks with key None", and 10 is not "10" (nor b"k" "k")."""
    async with request_as() as sdk:
        await finished(rt, sdk, None, "completed")
        await finished(rt, sdk, "", "completed")
        await finished(rt, sdk, "10", "completed")
        await finished(rt, sdk, "k", "completed")
        assert sdk.tasks.get_tasks_by_key(key, 10) == []
        assert len(sdk.tasks.list_user_tasks(7, 10)) == 4


# ------------------------------------------------------------------ QUERY-2

KEYS = ["a_b", "a%b", "axb", "a_c", "ab", "a", "b_a", "A_b", "é/1", "🚀/1", "🚀/2", "a\\b"]


@pytest_asyncio.fixture
async def keyed(
    rt: Runtime, request_as: RequestAs
) -> AsyncIterator[tuple[ModuleSDK, dict[str, str]]]:
    """One active task per key of KEYS (in that order), one keyless task, one in org 11."""
    release = asyncio.Event()
    async with request_as() as sdk:
        by_key = {key: await sdk.tasks.run_background(hold(release), task_key=key) for key in KEYS}
        await sdk.tasks.run_background(hold(release))
    async with request_as(org=11, request_id="r2") as other:
        await other.tasks.run_background(hold(release), task_key="a_b")
    yield sdk, by_key
    release.set()


@pytest.mark.rule("QUERY-2")
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("a_", ["a_c", "a_b"]),
        ("a%", ["a%b"]),
        ("a_b", ["a_b"]),
        ("a_c", ["a_c"]),
        ("a%b", ["a%b"]),
        ("a\\", ["a\\b"]),
        ("%", []),
        ("_", []),
        ("a", ["a\\b", "a", "ab", "a_c", "axb", "a%b", "a_b"]),
        ("A", ["A_b"]),
        ("é", ["é/1"]),
        ("e", []),
        ("🚀", ["🚀/2", "🚀/1"]),
        ("🚀/1", ["🚀/1"]),
        ("zzz", []),
        ("", KEYS[::-1]),
    ],
)
async def test_prefix_is_literal_and_newest_first(
    keyed: tuple[ModuleSDK, dict[str, str]], prefix: str, expected: list[str]
) -> None:
    sdk, by_key = keyed
    rows = sdk.tasks.get_tasks_by_key_prefix(prefix, 10)
    assert [r["taskKey"] for r in rows] == expected
    assert ids(rows) == [by_key[k] for k in expected]


@pytest.mark.rule("QUERY-2")
@pytest.mark.asyncio
async def test_prefix_includes_every_user_and_status(rt: Runtime, request_as: RequestAs) -> None:
    async with request_as(user=7) as sdk7, request_as(user=8, request_id="r2") as sdk8:
        a = await finished(rt, sdk7, "sync.1", "completed")
        b = await finished(rt, sdk8, "sync.2", "failed")
        c = await finished(rt, sdk8, "sync.1", "interrupted")
        await finished(rt, sdk8, "sync", "completed")  # shorter than the prefix
        await finished(rt, sdk8, "synC.1", "completed")
        assert ids(sdk7.tasks.get_tasks_by_key_prefix("sync.", 10)) == [c, b, a]


# ------------------------------------------------------------------ QUERY-3


@pytest.mark.rule("QUERY-3")
@pytest.mark.asyncio
async def test_list_user_tasks(rt: Runtime, request_as: RequestAs) -> None:
    release = asyncio.Event()
    async with request_as(user=7) as sdk:
        mine = [
            await finished(rt, sdk, None, "completed"),
            await finished(rt, sdk, "k", "failed"),
            await finished(rt, sdk, "", "interrupted"),
            await sdk.tasks.run_background(hold(release), task_key="k"),
            await sdk.tasks.run_background(hold(release)),
        ]
    async with request_as(user=8, request_id="r2") as sdk8:
        await sdk8.tasks.run_background(hold(release), task_key="other")
    async with request_as(user=7, org=None, request_id="r3") as no_org:
        alone = await no_org.tasks.run_background(hold(release))
    rows = sdk8.tasks.list_user_tasks(7, 10)
    assert ids(rows) == mine[::-1]
    assert {rows[0]["status"], rows[1]["status"]} <= {"pending", "running"}  # active, held
    assert [r["status"] for r in rows] == [
        rows[0]["status"],
        rows[1]["status"],
        "interrupted",
        "failed",
        "completed",
    ]
    assert all((r["userId"], r["organizationId"]) == (7, 10) for r in rows)
    assert ids(sdk.tasks.list_user_tasks(7, None)) == [alone]
    assert sdk.tasks.list_user_tasks(99, 10) == []
    release.set()


# ------------------------------------------------------------------ QUERY-4


@pytest.mark.rule("QUERY-4")
@pytest.mark.asyncio
async def test_organization_is_exact_and_not_taken_from_the_session(
    rt: Runtime, request_as: RequestAs
) -> None:
    release = asyncio.Event()
    async with request_as(user=7, org=10) as sdk:
        in_ten = await sdk.tasks.run_background(hold(release), task_key="job.k")
        # with organization_id left out (None) the session's organization 10 is NOT used
        assert sdk.tasks.get_tasks_by_key("job.k") == []
        assert sdk.tasks.get_tasks_by_key_prefix("job.") == []
        assert sdk.tasks.list_user_tasks(7) == []
        assert sdk.tasks.get_tasks_by_key("job.k", None) == []
        assert sdk.tasks.get_tasks_by_key("job.k", "10") == []
        assert sdk.tasks.get_tasks_by_key("job.k", 11) == []
        assert ids(sdk.tasks.get_tasks_by_key("job.k", 10)) == [in_ten]
    async with request_as(user=7, org=None, request_id="r2") as no_org:
        in_none = await no_org.tasks.run_background(hold(release), task_key="job.k")
    async with request_as(user=7, org=10, request_id="r3") as sdk:
        assert ids(sdk.tasks.get_tasks_by_key("job.k")) == [in_none]
        assert ids(sdk.tasks.get_tasks_by_key_prefix("job.")) == [in_none]
        assert ids(sdk.tasks.list_user_tasks(7)) == [in_none]
        assert ids(sdk.tasks.get_tasks_by_key("job.k", 10)) == [in_ten]
        assert ids(sdk.tasks.list_user_tasks(7, 10)) == [in_ten]
    async with request_as(user=7, org="10", request_id="r4") as text_org:
        in_text = await text_org.tasks.run_background(hold(release), task_key="job.k")
        assert ids(text_org.tasks.get_tasks_by_key("job.k", "10")) == [in_text]
        assert ids(text_org.tasks.list_user_tasks(7, "10")) == [in_text]
    release.set()


# ------------------------------------------------------------------ QUERY-5


def queries(sdk: ModuleSDK) -> list[list[dict[str, Any]]]:
    return [
        sdk.tasks.get_tasks_by_key("k", 10),
        sdk.tasks.get_tasks_by_key_prefix("k", 10),
        sdk.tasks.get_tasks_by_key_prefix("", 10),
        sdk.tasks.list_user_tasks(7, 10),
    ]


@pytest.mark.rule("QUERY-5")
@pytest.mark.asyncio
async def test_queries_return_empty_when_the_runtime_is_stopped(
    rt: Runtime, request_as: RequestAs
) -> None:
    async with request_as() as sdk:
        await finished(rt, sdk, "k", "completed")
        assert all(len(found) == 1 for found in queries(sdk))
        await rt.stop()
        assert queries(sdk) == [[], [], [], []]


@pytest.mark.rule("QUERY-5")
@pytest.mark.asyncio
async def test_queries_return_empty_before_the_runtime_starts(store: TaskStore) -> None:
    rt = Runtime(store=store)
    sdk = rt.sdk(session=make_session(), module="mod")
    assert queries(sdk) == [[], [], [], []]
    async with rt:
        task_id = await sdk.tasks.run_background(asyncio.sleep(0), task_key="k")
        await rt.wait(task_id, timeout=5)
        assert ids(sdk.tasks.get_tasks_by_key("k", 10)) == [task_id]
    store.close()


class FailingFinds:
    """Mixin: every find_* raises, as a broken or locked database would."""

    error: type[Exception] = RuntimeError

    def find_by_key(self, task_key: str, organization_id: object) -> list[TaskRecord]:
        raise self.error("the store is broken")

    def find_by_key_prefix(self, prefix: str, organization_id: object) -> list[TaskRecord]:
        raise self.error("the store is broken")

    def find_by_user(self, user_id: object, organization_id: object) -> list[TaskRecord]:
        raise self.error("the store is broken")


class FailingMemoryStore(FailingFinds, MemoryStore):
    pass


class FailingSQLiteStore(FailingFinds, SQLiteStore):
    error = sqlite3.OperationalError


@pytest.mark.rule("QUERY-5")
@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_queries_return_empty_when_the_store_fails(tmp_path: Path, kind: str) -> None:
    store: TaskStore = (
        FailingMemoryStore() if kind == "memory" else FailingSQLiteStore(tmp_path / "t.db")
    )
    async with (
        Runtime(store=store) as rt,
        rt.request(session=make_session(), module="mod", request_id="r1") as sdk,
    ):
        task_id = await sdk.tasks.run_background(asyncio.sleep(0, "ok"), task_key="k")
        assert queries(sdk) == [[], [], [], []]
        # the runtime is unharmed: the task still runs to completion
        assert (await rt.wait(task_id, timeout=5))["result"] == "ok"
    store.close()


# ------------------------------------------------------------------ QUERY-6

ROW_KEYS = {
    "id",
    "taskId",
    "userId",
    "organizationId",
    "taskKey",
    "module",
    "label",
    "status",
    "progress",
    "checkpoint",
    "result",
    "error",
    "createdAt",
    "updatedAt",
    "createdAtLabel",
    "updatedAtLabel",
}
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")


class StepClock:
    """A clock that says what the test sets."""

    def __init__(self, now: float) -> None:
        self.value = now

    def now(self) -> float:
        return self.value


def moment(text: str) -> datetime:
    assert ISO.match(text), text
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.utcoffset() is not None
    assert parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    return parsed


CREATED = datetime(2026, 11, 28, 18, 35, 53, 250000, tzinfo=UTC)
UPDATED = datetime(2026, 11, 28, 18, 36, 4, 500000, tzinfo=UTC)


@pytest.mark.rule("QUERY-6")
@pytest.mark.asyncio
async def test_serialized_row_shape(store: TaskStore, runtime_class: type[Runtime]) -> None:
    clock = StepClock(CREATED.timestamp())
    release = asyncio.Event()
    async with (
        runtime_class(store=store, clock=clock) as rt,
        rt.request(session=make_session(7, 10), module="reports", request_id="r") as sdk,
    ):
        task_id = await sdk.tasks.run_background(
            hold(release, {"rows": [1, 2], "name": "é"}), "Build report", task_key="rep.1"
        )
        await settle(lambda: sdk.tasks.get_tasks_by_key("rep.1", 10)[0]["status"] == "running")
        clock.value = UPDATED.timestamp()
        release.set()
        await rt.wait(task_id, timeout=5)
        rows = [
            *sdk.tasks.get_tasks_by_key("rep.1", 10),
            *sdk.tasks.get_tasks_by_key_prefix("rep.", 10),
            *sdk.tasks.list_user_tasks(7, 10),
        ]
    store.close()
    assert len(rows) == 3
    assert rows[0] == rows[1] == rows[2]
    row = rows[0]
    assert set(row) == ROW_KEYS
    assert row["id"] == row["taskId"] == task_id
    assert {k: row[k] for k in ROW_KEYS - {"createdAt", "updatedAt", "id", "taskId"}} == {
        "userId": 7,
        "organizationId": 10,
        "taskKey": "rep.1",
        "module": "reports",
        "label": "Build report",
        "status": "completed",
        "progress": 1.0,
        "checkpoint": {},
        "result": {"rows": [1, 2], "name": "é"},
        "error": None,
        "createdAtLabel": "2026-11-28 18:35:53 UTC",
        "updatedAtLabel": "2026-11-28 18:36:04 UTC",
    }
    assert moment(row["createdAt"]) == CREATED
    assert moment(row["updatedAt"]) == UPDATED
    assert json.loads(json.dumps(row, allow_nan=False)) == row


@pytest.mark.rule("QUERY-6")
@pytest.mark.asyncio
async def test_serialized_rows_of_every_state(rt: Runtime, request_as: RequestAs) -> None:
    release = asyncio.Event()
    async with request_as(org=None) as sdk:
        await finished(rt, sdk, "s", "completed")
        await finished(rt, sdk, "s", "failed")
        await finished(rt, sdk, "s", "interrupted")
        await sdk.tasks.run_background(hold(release), task_key="s")
        rows = sdk.tasks.get_tasks_by_key("s", None)
    assert [r["status"] for r in rows] == ["pending", "interrupted", "failed", "completed"]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["id"] == row["taskId"]
        assert row["organizationId"] is None
        assert row["label"] == "Background Task"
        assert moment(row["createdAt"]) <= moment(row["updatedAt"])
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC", row["createdAtLabel"])
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC", row["updatedAtLabel"])
        json.dumps(row, allow_nan=False)
    pending, interrupted, failed, completed = rows
    assert (failed["error"], failed["result"]) == ("boom", None)
    assert interrupted["error"]
    assert interrupted["error"].startswith("interrupted")
    assert (completed["error"], completed["result"], completed["progress"]) == (None, "ok", 1.0)
    assert (pending["error"], pending["result"], pending["progress"]) == (None, None, 0.0)
    release.set()


@pytest.mark.rule("QUERY-6")
@pytest.mark.asyncio
async def test_mutating_a_returned_row_changes_nothing_stored(
    rt: Runtime, request_as: RequestAs
) -> None:
    release = asyncio.Event()
    async with request_as() as sdk:
        task_id = await sdk.tasks.run_background(hold(release), task_key="k")
        await sdk.tasks.update_progress(task_id, 0.5, checkpoint={"pages": [1, 2]})
        await settle(lambda: sdk.tasks.get_tasks_by_key("k", 10)[0]["status"] == "running")
        for find in (
            lambda: sdk.tasks.get_tasks_by_key("k", 10),
            lambda: sdk.tasks.get_tasks_by_key_prefix("k", 10),
            lambda: sdk.tasks.list_user_tasks(7, 10),
        ):
            [row] = find()
            row["checkpoint"]["pages"].append(3)
            row["checkpoint"]["extra"] = True
        [row] = sdk.tasks.get_tasks_by_key("k", 10)
        assert row["checkpoint"] == {"pages": [1, 2]}
        release.set()
        await rt.wait(task_id, timeout=5)
