"""Progress (PROG): update_progress stores and pushes, emit_progress only pushes.

Every test runs over both stores, with a fake clock so that timestamps are exact. A task is
parked on an event while the test drives its progress from outside through the facade.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio

from conftest import make_session
from taskbed import Connection, ModuleSDK, Runtime, TaskRecord, TaskStore

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


class FakeClock:
    """A Clock whose time only moves when the test sets it."""

    def __init__(self, now: float = T0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


class Bed:
    """A started runtime, its clock, the owner's SDK and connection, and one parked task."""

    def __init__(self, rt: Runtime, clock: FakeClock) -> None:
        self.rt = rt
        self.clock = clock
        self.sdk: ModuleSDK = rt.sdk(session=make_session(7, 10), module="mod")
        self.conn: Connection = rt.connect(7, 10)
        self.gate = asyncio.Event()
        self.task_id = ""

    async def park(self, label: str = "Job") -> str:
        self.task_id = await self.sdk.tasks.run_background(self.gate.wait(), label)
        for _ in range(100):
            await asyncio.sleep(0)
            if self.row().status == "running":
                break
        assert self.row().status == "running"
        self.conn.messages.clear()
        return self.task_id

    def row(self, task_id: str | None = None) -> TaskRecord:
        found = self.rt.store.get(task_id or self.task_id)
        assert found is not None
        return found

    def progress_messages(self) -> list[dict[str, Any]]:
        return [m["backgroundTaskProgress"] for m in self.conn.messages]


@pytest_asyncio.fixture
async def bed(store: TaskStore) -> AsyncIterator[Bed]:
    clock = FakeClock()
    async with Runtime(store=store, clock=clock) as rt:
        b = Bed(rt, clock)
        yield b
        b.gate.set()
    store.close()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _label(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---------------------------------------------------------------- PROG-1


@pytest.mark.rule("PROG-1")
@pytest.mark.asyncio
async def test_update_progress_clamps_stores_replaces_and_pushes(bed: Bed) -> None:
    tid = await bed.park("Job")
    created = bed.row().created_at

    bed.clock.t = T0 + 5.25
    await bed.sdk.tasks.update_progress(tid, 1.7, checkpoint={"done": 3}, label="Step 1")
    row = bed.row()
    assert row.progress == 1.0
    assert row.checkpoint == {"done": 3}
    assert row.label == "Step 1"
    assert row.updated_at == T0 + 5.25
    assert row.created_at == created
    assert row.status == "running"
    assert bed.conn.messages == [
        {
            "backgroundTaskProgress": {
                "taskId": tid,
                "progress": 1.0,
                "label": "Step 1",
                "checkpoint": True,
                "updatedAt": "2026-01-01T00:00:05.250+00:00",
                "updatedAtLabel": "2026-01-01 00:00:05 UTC",
            }
        }
    ]

    # Without checkpoint and label, both are kept; the clamp works downwards too.
    bed.clock.t = T0 + 61.5
    bed.conn.messages.clear()
    await bed.sdk.tasks.update_progress(tid, -0.2)
    row = bed.row()
    assert row.progress == 0.0
    assert row.checkpoint == {"done": 3}
    assert row.label == "Step 1"
    assert row.updated_at == T0 + 61.5
    assert bed.conn.messages == [
        {
            "backgroundTaskProgress": {
                "taskId": tid,
                "progress": 0.0,
                "label": "Step 1",
                "checkpoint": False,
                "updatedAt": _iso(T0 + 61.5),
                "updatedAtLabel": _label(T0 + 61.5),
            }
        }
    ]

    # A new checkpoint replaces the old one (no merge); the serialized row agrees.
    bed.clock.t = T0 + 70.0
    await bed.sdk.tasks.update_progress(tid, 0.5, checkpoint={"page": 2})
    [serialized] = bed.sdk.tasks.list_user_tasks(7, 10)
    assert serialized["progress"] == 0.5
    assert serialized["checkpoint"] == {"page": 2}
    assert serialized["label"] == "Step 1"
    assert serialized["updatedAt"] == _iso(T0 + 70.0)
    assert serialized["updatedAtLabel"] == _label(T0 + 70.0)


@pytest.mark.rule("PROG-1")
@pytest.mark.parametrize(
    ("given", "stored"),
    [(1.7, 1.0), (-0.2, 0.0), (0.25, 0.25), (1, 1.0), (0, 0.0), (-5, 0.0), (1e300, 1.0)],
)
@pytest.mark.asyncio
async def test_progress_is_clamped_into_unit_interval(
    bed: Bed, given: float, stored: float
) -> None:
    tid = await bed.park()
    await bed.sdk.tasks.update_progress(tid, given)
    assert bed.row().progress == stored
    assert isinstance(bed.row().progress, float)
    [message] = bed.progress_messages()
    assert message["progress"] == stored


@pytest.mark.rule("PROG-1")
@pytest.mark.asyncio
async def test_progress_message_has_exactly_the_documented_fields(bed: Bed) -> None:
    tid = await bed.park()
    await bed.sdk.tasks.update_progress(tid, 0.3)
    [message] = bed.conn.messages
    assert list(message) == ["backgroundTaskProgress"]
    body = message["backgroundTaskProgress"]
    assert set(body) == {"taskId", "progress", "label", "checkpoint", "updatedAt", "updatedAtLabel"}
    assert body["checkpoint"] is False


@pytest.mark.rule("PROG-1")
@pytest.mark.asyncio
async def test_progress_reaches_only_the_owner(bed: Bed) -> None:
    other_user = bed.rt.connect(8, 10)
    other_org = bed.rt.connect(7, 11)
    tid = await bed.park()
    await bed.sdk.tasks.update_progress(tid, 0.3)
    assert len(bed.progress_messages()) == 1
    assert other_user.messages == []
    assert other_org.messages == []


# ---------------------------------------------------------------- PROG-2


@pytest.mark.rule("PROG-2")
@pytest.mark.rule("PROG-7")
@pytest.mark.parametrize(
    "bad", [math.nan, math.inf, -math.inf, "0.5", True, False, None, [0.5]], ids=repr
)
@pytest.mark.asyncio
async def test_non_finite_or_non_numeric_progress_raises_and_keeps_the_stored_value(
    bed: Bed, bad: Any
) -> None:
    tid = await bed.park()
    bed.clock.t = T0 + 1
    await bed.sdk.tasks.update_progress(tid, 0.4, checkpoint={"a": 1}, label="Before")
    before = bed.row()
    bed.conn.messages.clear()

    bed.clock.t = T0 + 2
    with pytest.raises(ValueError, match="progress"):
        await bed.sdk.tasks.update_progress(tid, bad, checkpoint={"b": 2}, label="After")

    after = bed.row()
    assert after.progress == 0.4
    assert after.checkpoint == {"a": 1}
    assert after.label == "Before"
    assert after.updated_at == before.updated_at == T0 + 1
    assert bed.conn.messages == []


@pytest.mark.rule("PROG-7")
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "0.5", True], ids=repr)
@pytest.mark.asyncio
async def test_emit_progress_rejects_non_finite_progress(bed: Bed, bad: Any) -> None:
    tid = await bed.park()
    with pytest.raises(ValueError, match="progress"):
        await bed.sdk.tasks.emit_progress(tid, bad)
    assert bed.conn.messages == []
    assert bed.row().progress == 0.0


# ---------------------------------------------------------------- PROG-3


@pytest.mark.rule("PROG-3")
@pytest.mark.parametrize(
    "checkpoint",
    [
        {"seen": {1, 2}},
        {"when": datetime(2026, 1, 1, tzinfo=UTC)},
        {"deep": [{"x": {3}}]},
        {"ratio": math.nan},
        [("done", 3)],
        ["done", 3],
        "done=3",
        ("done", 3),
    ],
    ids=["set", "datetime", "nested-set", "nan", "list-of-pairs", "list", "str", "tuple"],
)
@pytest.mark.asyncio
async def test_checkpoint_that_is_not_a_json_dict_is_rejected_and_nothing_stored(
    bed: Bed, checkpoint: Any
) -> None:
    tid = await bed.park("Job")
    bed.clock.t = T0 + 1
    await bed.sdk.tasks.update_progress(tid, 0.2, checkpoint={"ok": True})
    before = bed.row()
    bed.conn.messages.clear()

    bed.clock.t = T0 + 2
    with pytest.raises(TypeError):
        await bed.sdk.tasks.update_progress(tid, 0.9, checkpoint=checkpoint, label="New")

    after = bed.row()
    assert after.checkpoint == {"ok": True}
    assert after.progress == 0.2
    assert after.label == "Job"
    assert after.updated_at == before.updated_at == T0 + 1
    assert bed.conn.messages == []


@pytest.mark.rule("PROG-3")
@pytest.mark.asyncio
async def test_stored_checkpoint_is_a_copy_of_what_was_given(bed: Bed) -> None:
    tid = await bed.park()
    checkpoint: dict[str, Any] = {"items": [1, 2]}
    await bed.sdk.tasks.update_progress(tid, 0.5, checkpoint=checkpoint)
    checkpoint["items"].append(3)  # the caller keeps mutating its own dict
    assert bed.row().checkpoint == {"items": [1, 2]}
    [serialized] = bed.sdk.tasks.list_user_tasks(7, 10)
    assert serialized["checkpoint"] == {"items": [1, 2]}


# ---------------------------------------------------------------- PROG-4


@pytest.mark.rule("PROG-4")
@pytest.mark.parametrize("unknown", ["no-such-task", "", "00000000-0000-4000-8000-000000000000"])
@pytest.mark.asyncio
async def test_unknown_task_id_is_a_silent_no_op(bed: Bed, unknown: str) -> None:
    tid = await bed.park()
    before = bed.row()

    assert await bed.sdk.tasks.update_progress(unknown, 0.5, checkpoint={"a": 1}) is None
    assert await bed.sdk.tasks.emit_progress(unknown, 0.5, label="x") is None

    assert bed.conn.messages == []
    assert bed.rt.store.get(unknown) is None
    assert [r["taskId"] for r in bed.sdk.tasks.list_user_tasks(7, 10)] == [tid]
    assert bed.row() == before


@pytest.mark.asyncio
async def test_progress_on_a_terminal_task_changes_nothing(bed: Bed) -> None:
    tid = await bed.park()
    bed.gate.set()
    await bed.rt.wait(tid, timeout=2)
    done = bed.row()
    bed.conn.messages.clear()
    bed.clock.t = T0 + 10

    await bed.sdk.tasks.update_progress(tid, 0.1, checkpoint={"late": 1}, label="Late")
    await bed.sdk.tasks.emit_progress(tid, 0.1)

    assert bed.row() == done
    assert done.status == "completed"
    assert done.progress == 1.0
    assert bed.conn.messages == []


# ---------------------------------------------------------------- PROG-5


@pytest.mark.rule("PROG-5")
@pytest.mark.asyncio
async def test_emit_progress_pushes_without_storing(bed: Bed) -> None:
    tid = await bed.park("Job")
    bed.clock.t = T0 + 1
    await bed.sdk.tasks.update_progress(tid, 0.3, checkpoint={"n": 1}, label="Stored")
    before = bed.row()
    bed.conn.messages.clear()

    bed.clock.t = T0 + 2.5
    await bed.sdk.tasks.emit_progress(tid, 0.8, label="Peek", checkpoint={"n": 2})

    assert bed.conn.messages == [
        {
            "backgroundTaskProgress": {
                "taskId": tid,
                "progress": 0.8,
                "label": "Peek",
                "checkpoint": True,
                "updatedAt": _iso(T0 + 2.5),
                "updatedAtLabel": _label(T0 + 2.5),
            }
        }
    ]
    after = bed.row()
    assert after == before
    assert after.progress == 0.3
    assert after.label == "Stored"
    assert after.checkpoint == {"n": 1}
    assert after.updated_at == T0 + 1
    [serialized] = bed.sdk.tasks.list_user_tasks(7, 10)
    assert (serialized["progress"], serialized["label"]) == (0.3, "Stored")


@pytest.mark.rule("PROG-5")
@pytest.mark.asyncio
async def test_emit_progress_none_means_the_current_stored_values(bed: Bed) -> None:
    tid = await bed.park("Job")
    await bed.sdk.tasks.update_progress(tid, 0.3, label="Stored")
    # An emitted value must not become "current" for the next emit.
    await bed.sdk.tasks.emit_progress(tid, 0.9, label="Emitted")
    bed.conn.messages.clear()

    await bed.sdk.tasks.emit_progress(tid)
    await bed.sdk.tasks.emit_progress(tid, progress=0.6)
    await bed.sdk.tasks.emit_progress(tid, label="Only label")

    sent = [(m["progress"], m["label"], m["checkpoint"]) for m in bed.progress_messages()]
    assert sent == [(0.3, "Stored", False), (0.6, "Stored", False), (0.3, "Only label", False)]
    assert bed.row().progress == 0.3
    assert bed.row().label == "Stored"


@pytest.mark.rule("PROG-5")
@pytest.mark.asyncio
async def test_emit_progress_clamps_like_update_progress(bed: Bed) -> None:
    tid = await bed.park()
    await bed.sdk.tasks.emit_progress(tid, 1.7)
    await bed.sdk.tasks.emit_progress(tid, -0.2)
    assert [m["progress"] for m in bed.progress_messages()] == [1.0, 0.0]
    assert bed.row().progress == 0.0  # the stored value of a fresh task, untouched


@pytest.mark.parametrize("label", [123, b"bytes", ["a"]], ids=repr)
@pytest.mark.asyncio
async def test_a_label_that_is_not_a_string_is_rejected_by_both_calls(bed: Bed, label: Any) -> None:
    tid = await bed.park("Job")
    before = bed.row()
    with pytest.raises(TypeError, match="label"):
        await bed.sdk.tasks.update_progress(tid, 0.5, label=label)
    with pytest.raises(TypeError, match="label"):
        await bed.sdk.tasks.emit_progress(tid, 0.5, label=label)
    assert bed.row() == before
    assert bed.conn.messages == []
