"""BG-11: the lifecycle table, and a terminal task that never changes again.

Three layers: the table itself is pinned (a change to it is a deliberate change to this file);
``transition()`` is checked against it over random event sequences; and a real runtime is
driven through random sequences of progress, questions, answers, withdrawals, cancels and
outcomes, with every status change the store sees checked against the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Request, settle
from taskbed import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    Connection,
    LifecycleError,
    MemoryStore,
    ModuleSDK,
    Runtime,
    TaskEvent,
    TaskRecord,
    TaskStatus,
    transition,
    ui,
)

PENDING, RUNNING, WAITING = "pending", "running", "waiting_confirmation"
COMPLETED, FAILED, INTERRUPTED = "completed", "failed", "interrupted"

#: The lifecycle as DESIGN §3 states it, written out by hand: the reference's table must
#: be exactly this (status -> event -> next status; terminal statuses have no row).
EXPECTED_TABLE = {
    PENDING: {"start": RUNNING, "interrupt": INTERRUPTED, "fail": FAILED},
    RUNNING: {
        "complete": COMPLETED,
        "fail": FAILED,
        "interrupt": INTERRUPTED,
        "ask": WAITING,
    },
    WAITING: {"answer": RUNNING, "withdraw": RUNNING, "fail": FAILED, "interrupt": INTERRUPTED},
}

ALLOWED_CHANGES = {(s, t) for s, row in EXPECTED_TABLE.items() for t in row.values()}


# ---------------------------------------------------------------- the table


@pytest.mark.rule("BG-11")
def test_transition_table_is_exactly_the_specified_lifecycle() -> None:
    table = {
        state.value: {event.value: target.value for event, target in row.items()}
        for state, row in TRANSITIONS.items()
    }
    assert table == EXPECTED_TABLE
    assert {s.value for s in ACTIVE} == {PENDING, RUNNING, WAITING}
    assert {s.value for s in TERMINAL} == {COMPLETED, FAILED, INTERRUPTED}
    assert set(TaskStatus) == ACTIVE | TERMINAL
    assert not ACTIVE & TERMINAL
    assert not set(TRANSITIONS) & TERMINAL, "a terminal status must have no transitions"


@pytest.mark.rule("BG-11")
@pytest.mark.parametrize("status", [COMPLETED, FAILED, INTERRUPTED])
@pytest.mark.parametrize("event", list(TaskEvent))
def test_terminal_status_refuses_every_event(status: str, event: TaskEvent) -> None:
    with pytest.raises(LifecycleError) as info:
        transition("task-42", status, event)
    message = str(info.value)
    assert "task-42" in message
    assert repr(status) in message
    assert repr(event.value) in message
    assert "terminal" in message
    assert isinstance(info.value, RuntimeError)


@pytest.mark.rule("BG-11")
def test_a_refused_event_names_task_state_event_and_what_is_allowed() -> None:
    with pytest.raises(
        LifecycleError,
        match=re.escape("task t-1: event 'complete' is not allowed in state 'pending'"),
    ) as info:
        transition("t-1", "pending", TaskEvent.COMPLETE)
    for allowed in ("start", "interrupt", "fail"):
        assert allowed in str(info.value)


@pytest.mark.rule("BG-11")
@settings(max_examples=100, deadline=None)
@given(
    start=st.sampled_from(list(TaskStatus)),
    events=st.lists(st.sampled_from(list(TaskEvent)), max_size=12),
)
def test_random_event_sequences_follow_the_table(
    start: TaskStatus, events: list[TaskEvent]
) -> None:
    status = start.value
    for event in events:
        expected = EXPECTED_TABLE.get(status, {}).get(event.value)
        if expected is None:
            with pytest.raises(LifecycleError):
                transition("t", status, event)
            continue  # a refused event leaves the status as it was
        new = transition("t", status, event)
        assert isinstance(new, TaskStatus)
        assert new.value == expected
        assert (status, new.value) in ALLOWED_CHANGES
        status = new.value
    if status in (COMPLETED, FAILED, INTERRUPTED):
        for event in TaskEvent:
            with pytest.raises(LifecycleError):
                transition("t", status, event)


# ---------------------------------------------------------------- a terminal row is frozen


async def _finish(sdk: ModuleSDK, outcome: str, conn: Connection) -> str:
    """Submit a task and end it by *outcome* (complete, fail, or a client cancel)."""
    gate = asyncio.Event()

    async def job() -> dict[str, int]:
        await gate.wait()
        if outcome == "fail":
            raise RuntimeError("boom")
        return {"n": 1}

    task_id = await sdk.tasks.run_background(job(), "frozen")
    await settle()
    if outcome == "cancel":
        await conn.send({"backgroundTaskCancel": {"taskId": task_id}})
    else:
        gate.set()
    return task_id


@pytest.mark.rule("BG-11")
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("outcome", "status"),
    [("complete", COMPLETED), ("fail", FAILED), ("cancel", INTERRUPTED)],
)
async def test_terminal_row_never_changes_whatever_arrives_afterwards(
    rt: Runtime, request_as: Request, outcome: str, status: str
) -> None:
    conn = rt.connect(7, 10)
    async with request_as() as sdk:
        task_id = await _finish(sdk, outcome, conn)
        final = await rt.wait(task_id, timeout=2)
        assert final["status"] == status
        seen = len(conn.messages)

        # Everything that could touch a task, after it ended:
        await sdk.tasks.update_progress(task_id, 0.25, checkpoint={"late": True}, label="late")
        await sdk.tasks.emit_progress(task_id, 0.5, label="late")
        await conn.send({"backgroundTaskResponse": {"taskId": task_id, "response": "yes"}})
        await conn.send({"backgroundTaskCancel": {"taskId": task_id}})
        with pytest.raises(LifecycleError, match=f"state '{status}'"):
            await sdk.tasks.request_confirmation(task_id, ui.Builder().add(ui.Text("q", "late?")))
        await settle()

        assert sdk.tasks.list_user_tasks(7, 10) == [final]
        assert await rt.wait(task_id, timeout=2) == final
        assert conn.messages[seen:] == [], "a terminal task pushes nothing more"
        # a refused question leaves no bookkeeping behind in the manager
        assert rt.manager is not None
        assert task_id not in rt.manager._local

        await conn.send({"backgroundTaskGet": {"taskId": task_id}})
        (snapshot,) = conn.messages[seen:]
        kind = "backgroundTaskCompleted" if status == COMPLETED else "backgroundTaskError"
        assert list(snapshot) == [kind]
        assert snapshot[kind]["taskId"] == task_id
        assert sdk.tasks.list_user_tasks(7, 10) == [final]


@pytest.mark.rule("BG-11")
@pytest.mark.asyncio
async def test_withdrawn_question_returns_to_running_and_the_task_can_complete(
    rt: Runtime, request_as: Request
) -> None:
    """A ``wait_for`` timeout around request_confirmation must not wedge the task.

    Before the WITHDRAW transition, the task stayed ``waiting_confirmation`` forever, its
    completion was refused by the table inside the runner ("Task exception was never
    retrieved") and its key stayed blocked.
    """
    statuses: list[str] = []
    conn = rt.connect(7, 10)
    async with request_as() as sdk:
        ids: list[str] = []

        async def job() -> str:
            await settle()
            question = sdk.tasks.request_confirmation(ids[0], ui.Builder().add(ui.Text("q", "ok?")))
            try:
                return str(await asyncio.wait_for(question, timeout=0.01))
            except TimeoutError:
                statuses.append(sdk.tasks.list_user_tasks(7, 10)[0]["status"])
                return "no answer"

        ids.append(await sdk.tasks.run_background(job(), task_key="ask.1"))
        row = await rt.wait(ids[0], timeout=2)
    assert statuses == [RUNNING]
    assert row["status"] == COMPLETED
    assert row["result"] == "no answer"
    kinds = [next(iter(m)) for m in conn.messages]
    assert kinds == [
        "backgroundTaskStarted",
        "backgroundTaskConfirmation",
        "backgroundTaskCompleted",
    ]
    # the late answer is ignored: nothing is waiting any more
    await conn.send({"backgroundTaskResponse": {"taskId": ids[0], "response": "yes"}})
    async with request_as() as sdk:
        assert sdk.tasks.list_user_tasks(7, 10) == [row]
        assert sdk.tasks.get_tasks_by_key("ask.1", 10)[0]["status"] == COMPLETED


# ---------------------------------------------------------------- a runtime, driven at random


class RecordingStore(MemoryStore):
    """A MemoryStore that records every status change a row goes through."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[str, str]] = []

    def insert_or_get_active(self, record: TaskRecord) -> tuple[TaskRecord, bool]:
        stored, created = super().insert_or_get_active(record)
        if created:
            self.changes.append(("<new>", record.status))
        return stored, created

    def update(self, task_id: str, changes: dict[str, object]) -> None:
        before = self.get(task_id)
        super().update(task_id, changes)
        after = self.get(task_id)
        if before is not None and after is not None and before.status != after.status:
            self.changes.append((before.status, after.status))
        if before is not None and before.status in TERMINAL:
            assert after == before, f"terminal row changed: {before} -> {after}"


JOB_OPS = ("progress", "ask", "complete", "fail")
CLIENT_OPS = ("answer", "withdraw", "cancel", "get", "late_progress")


class Driven:
    """One task whose work does what the test tells it, and a model of its status."""

    def __init__(self, sdk: ModuleSDK) -> None:
        self.sdk = sdk
        self.ops: asyncio.Queue[str] = asyncio.Queue()
        self.withdraw = asyncio.Event()
        self.task_id = ""
        self.status = PENDING  # the model
        self.asking = False

    async def work(self) -> str:
        while True:
            op = await self.ops.get()
            if op == "progress":
                await self.sdk.tasks.update_progress(self.task_id, 0.5, checkpoint={"at": 1})
            elif op == "ask":
                await self._ask()
            elif op == "fail":
                raise ValueError("asked to fail")
            else:
                return "done"

    async def _ask(self) -> None:
        question = asyncio.ensure_future(
            self.sdk.tasks.request_confirmation(self.task_id, [ui.Text("q", "go?")])
        )
        withdrawn = asyncio.ensure_future(self.withdraw.wait())
        try:
            await asyncio.wait({question, withdrawn}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            withdrawn.cancel()
            question.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await question
            self.withdraw.clear()


async def _drive(ops: list[str]) -> None:
    store = RecordingStore()
    async with Runtime(store=store) as rt:
        conn = rt.connect(7, 10)
        async with rt.request(
            session={"user": {"id": 7, "organization_id": 10}}, module="m", request_id="r"
        ) as sdk:
            driven = Driven(sdk)
            driven.task_id = await sdk.tasks.run_background(driven.work())
            assert sdk.tasks.list_user_tasks(7, 10)[0]["status"] == PENDING
            await settle()
            driven.status = RUNNING
            frozen: dict[str, Any] | None = None
            late_gets = 0  # a get on a terminal task is answered with its outcome again
            for op in ops:
                if op in JOB_OPS:
                    if driven.status == RUNNING and not driven.asking:
                        driven.ops.put_nowait(op)
                    else:
                        continue  # the work is busy or gone: nothing to tell it
                elif op == "answer":
                    await conn.send(
                        {"backgroundTaskResponse": {"taskId": driven.task_id, "response": 1}}
                    )
                elif op == "withdraw":
                    if driven.asking:  # a stale event would withdraw the next question
                        driven.withdraw.set()
                elif op == "cancel":
                    await conn.send({"backgroundTaskCancel": {"taskId": driven.task_id}})
                elif op == "get":
                    await conn.send({"backgroundTaskGet": {"taskId": driven.task_id}})
                else:
                    await sdk.tasks.update_progress(driven.task_id, 0.9, label="from outside")
                await settle()
                _model_step(driven, op)
                (row,) = sdk.tasks.list_user_tasks(7, 10)
                assert row["status"] == driven.status, (ops, op)
                if op == "get":
                    _check_snapshot(conn.messages[-1], driven.status)
                    late_gets += driven.status in (COMPLETED, FAILED, INTERRUPTED)
                if driven.status in (COMPLETED, FAILED, INTERRUPTED):
                    if frozen is None:
                        frozen = row
                    assert row == frozen, "a terminal row changed"
            if driven.status not in (COMPLETED, FAILED, INTERRUPTED):
                await conn.send({"backgroundTaskCancel": {"taskId": driven.task_id}})
                driven.status = INTERRUPTED
            final = await rt.wait(driven.task_id, timeout=2)
            assert final["status"] == driven.status
    assert store.changes[0] == ("<new>", PENDING)
    for change in store.changes[1:]:
        assert change in ALLOWED_CHANGES, (change, store.changes)
    pushed = [next(iter(m)) for m in conn.messages]
    assert pushed[0] == "backgroundTaskStarted"
    outcomes = [k for k in pushed if k in ("backgroundTaskCompleted", "backgroundTaskError")]
    assert len(outcomes) == 1 + late_gets, "exactly one outcome is pushed per task"


def _model_step(driven: Driven, op: str) -> None:
    status = driven.status
    if status in (COMPLETED, FAILED, INTERRUPTED):
        return
    if op == "cancel":
        driven.status, driven.asking = INTERRUPTED, False
    elif status == RUNNING and not driven.asking:
        if op == "ask":
            driven.status, driven.asking = WAITING, True
        elif op == "complete":
            driven.status = COMPLETED
        elif op == "fail":
            driven.status = FAILED
    elif status == WAITING and op in ("answer", "withdraw"):
        driven.status, driven.asking = RUNNING, False


def _check_snapshot(message: dict[str, Any], status: str) -> None:
    expected = {
        RUNNING: "backgroundTaskProgress",
        WAITING: "backgroundTaskConfirmation",
        COMPLETED: "backgroundTaskCompleted",
        FAILED: "backgroundTaskError",
        INTERRUPTED: "backgroundTaskError",
    }[status]
    assert list(message) == [expected]


@pytest.mark.rule("BG-11")
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=st.lists(st.sampled_from(JOB_OPS + CLIENT_OPS), max_size=10))
def test_random_runs_change_status_only_along_the_table(ops: list[str]) -> None:
    asyncio.run(_drive(ops))  # a fresh loop and runtime per example
