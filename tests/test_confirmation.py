"""Confirmation (CONF): a task asks its owner, waits for the owner's answer, and goes on.

The job under test learns its own id from a future (run_background returns the id only after
the coroutine exists), asks ``Go?`` with a Yes button, records the answer, and then waits on
an event before it returns, so the test can look at the row between answer and completion.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from taskbed import Connection, ModuleSDK, Runtime, ui

CONFIRM_KEYS = {"taskId", "label", "surfaceId", "components", "updatedAt", "updatedAtLabel"}
COMPONENTS = [
    {"id": "q", "component": {"Text": {"text": {"literalString": "Go?"}}},
     "children": {"explicitList": []}},
    {
        "id": "yes",
        "component": {
            "Button": {
                "label": {"literalString": "Yes"},
                "variant": "default",
                "mode": "solid",
                "btnsize": "normal",
                "shape": "default",
                "capabilities": ["enabled.set", "visible.set"],
            }
        },
        "children": {"explicitList": []},
    },
]  # fmt: skip

RequestAs = Callable[..., AbstractAsyncContextManager[ModuleSDK]]


class Asker:
    """One confirming job: what it was answered, what it raised, and its release."""

    def __init__(self) -> None:
        self.answers: list[Any] = []
        self.raised: list[BaseException] = []
        self.finish = asyncio.Event()
        self.task_id = ""

    async def start(self, sdk: ModuleSDK, label: str = "Deploy") -> str:
        loop = asyncio.get_running_loop()
        own_id: asyncio.Future[str] = loop.create_future()

        async def job() -> dict[str, Any]:
            task_id = await own_id
            builder = sdk.ui.Builder().add(sdk.ui.Text("q", "Go?")).add(sdk.ui.Button("yes", "Yes"))
            try:
                answer = await sdk.tasks.request_confirmation(task_id, builder)
            except BaseException as exc:
                self.raised.append(exc)
                raise
            self.answers.append(answer)
            await self.finish.wait()
            return {"answer": answer}

        self.task_id = await sdk.tasks.run_background(job(), label)
        own_id.set_result(self.task_id)
        return self.task_id


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Let the loop run until *predicate* holds (real time; the steps are loop iterations)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


def status(rt: Runtime, task_id: str) -> str:
    row = rt.store.get(task_id)
    assert row is not None
    return row.status


def confirmations(conn: Connection) -> list[dict[str, Any]]:
    return [
        m["backgroundTaskConfirmation"] for m in conn.messages if "backgroundTaskConfirmation" in m
    ]


async def waiting_task(rt: Runtime, request_as: RequestAs, conn: Connection) -> tuple[Asker, str]:
    asker = Asker()
    async with request_as(user=7, org=10) as sdk:
        tid = await asker.start(sdk)
    await until(lambda: bool(confirmations(conn)))
    return asker, tid


# ---------------------------------------------------------------- CONF-1


@pytest.mark.rule("CONF-1")
@pytest.mark.asyncio
async def test_request_confirmation_waits_and_pushes_the_surface(
    rt: Runtime, request_as: RequestAs
) -> None:
    owner = rt.connect(7, 10)
    asker, tid = await waiting_task(rt, request_as, owner)

    assert status(rt, tid) == "waiting_confirmation"
    async with request_as(user=7, org=10) as sdk:
        [row] = sdk.tasks.list_user_tasks(7, 10)
    assert row["status"] == "waiting_confirmation"
    assert row["taskId"] == tid

    [started, confirmation] = owner.messages
    assert list(started) == ["backgroundTaskStarted"]
    assert list(confirmation) == ["backgroundTaskConfirmation"]
    body = confirmation["backgroundTaskConfirmation"]
    assert set(body) == CONFIRM_KEYS
    assert body["taskId"] == tid
    assert body["label"] == "Deploy"
    assert body["surfaceId"] == f"task_confirm_{tid}"
    assert body["components"] == COMPONENTS
    builder = ui.Builder().add(ui.Text("q", "Go?")).add(ui.Button("yes", "Yes"))
    assert body["components"] == builder.build()
    assert body["updatedAt"] == row["updatedAt"]
    assert body["updatedAtLabel"] == row["updatedAtLabel"]

    # It stays waiting while nobody answers.
    await asyncio.sleep(0.02)
    assert status(rt, tid) == "waiting_confirmation"
    assert asker.answers == []
    asker.finish.set()


@pytest.mark.rule("CONF-1")
@pytest.mark.asyncio
async def test_confirmation_reaches_only_the_owner(rt: Runtime, request_as: RequestAs) -> None:
    owner = rt.connect(7, 10)
    other_user = rt.connect(8, 10)
    other_org = rt.connect(7, 11)
    asker, _ = await waiting_task(rt, request_as, owner)
    assert len(confirmations(owner)) == 1
    assert other_user.messages == []
    assert other_org.messages == []
    asker.finish.set()


# ---------------------------------------------------------------- CONF-2


@pytest.mark.rule("CONF-2")
@pytest.mark.asyncio
async def test_owner_answer_resumes_the_task_with_the_response(
    rt: Runtime, request_as: RequestAs
) -> None:
    owner = rt.connect(7, 10)
    asker, tid = await waiting_task(rt, request_as, owner)

    await owner.send({"backgroundTaskResponse": {"taskId": tid, "response": {"ok": 1}}})
    assert status(rt, tid) == "running"
    await until(lambda: bool(asker.answers))
    assert asker.answers == [{"ok": 1}]
    assert status(rt, tid) == "running"  # parked on `finish`, after the answer

    asker.finish.set()
    row = await rt.wait(tid, timeout=2)
    assert row["status"] == "completed"
    assert row["result"] == {"answer": {"ok": 1}}
    assert row["progress"] == 1.0
    assert list(owner.messages[-1]) == ["backgroundTaskCompleted"]
    assert asker.raised == []


@pytest.mark.rule("CONF-2")
@pytest.mark.asyncio
async def test_a_second_answer_is_ignored(rt: Runtime, request_as: RequestAs) -> None:
    owner = rt.connect(7, 10)
    asker, tid = await waiting_task(rt, request_as, owner)
    await owner.send({"backgroundTaskResponse": {"taskId": tid, "response": "first"}})
    await owner.send({"backgroundTaskResponse": {"taskId": tid, "response": "second"}})
    await until(lambda: bool(asker.answers))
    assert asker.answers == ["first"]
    assert status(rt, tid) == "running"
    asker.finish.set()
    assert (await rt.wait(tid, timeout=2))["result"] == {"answer": "first"}


@pytest.mark.rule("CONF-2")
@pytest.mark.asyncio
async def test_an_answer_when_nothing_asks_changes_nothing(
    rt: Runtime, request_as: RequestAs
) -> None:
    owner = rt.connect(7, 10)
    gate = asyncio.Event()
    async with request_as(user=7, org=10) as sdk:
        tid = await sdk.tasks.run_background(gate.wait())
    await until(lambda: status(rt, tid) == "running")
    await owner.send({"backgroundTaskResponse": {"taskId": tid, "response": {"ok": 1}}})
    assert status(rt, tid) == "running"
    gate.set()
    assert (await rt.wait(tid, timeout=2))["status"] == "completed"


# ---------------------------------------------------------------- CONF-3


@pytest.mark.rule("CONF-3")
@pytest.mark.parametrize("unknown", ["no-such-task", "00000000-0000-4000-8000-000000000000"])
@pytest.mark.asyncio
async def test_request_confirmation_for_an_unknown_id_raises_value_error(
    rt: Runtime, request_as: RequestAs, unknown: str
) -> None:
    owner = rt.connect(7, 10)
    async with request_as(user=7, org=10) as sdk:
        builder = sdk.ui.Builder().add(sdk.ui.Text("q", "Go?")).add(sdk.ui.Button("yes", "Yes"))
        with pytest.raises(ValueError, match=unknown):
            await asyncio.wait_for(sdk.tasks.request_confirmation(unknown, builder), 1)
        assert sdk.tasks.list_user_tasks(7, 10) == []
    assert owner.messages == []
    assert rt.store.get(unknown) is None


# ---------------------------------------------------------------- CONF-4


@pytest.mark.rule("CONF-4")
@pytest.mark.parametrize(
    ("user", "org"),
    [(8, 10), (7, 11), (7, None), ("7", 10)],
    ids=["other-user", "same-user-other-org", "same-user-no-org", "user-id-as-str"],
)
@pytest.mark.asyncio
async def test_only_the_owner_can_answer(
    rt: Runtime, request_as: RequestAs, user: Any, org: Any
) -> None:
    owner = rt.connect(7, 10)
    stranger = rt.connect(user, org)
    asker, tid = await waiting_task(rt, request_as, owner)
    seen = list(owner.messages)

    await stranger.send({"backgroundTaskResponse": {"taskId": tid, "response": {"ok": 1}}})
    await stranger.send({"backgroundTaskGet": {"taskId": tid}})
    await asyncio.sleep(0.01)

    assert status(rt, tid) == "waiting_confirmation"
    assert asker.answers == []
    assert stranger.messages == []
    assert owner.messages == seen

    # The owner can still answer afterwards.
    await owner.send({"backgroundTaskResponse": {"taskId": tid, "response": {"ok": 2}}})
    asker.finish.set()
    row = await rt.wait(tid, timeout=2)
    assert row["status"] == "completed"
    assert row["result"] == {"answer": {"ok": 2}}


@pytest.mark.rule("CONF-4")
@pytest.mark.asyncio
async def test_a_strangers_cancel_does_not_end_the_wait(rt: Runtime, request_as: RequestAs) -> None:
    owner = rt.connect(7, 10)
    stranger = rt.connect(8, 10)
    asker, tid = await waiting_task(rt, request_as, owner)
    await stranger.send({"backgroundTaskCancel": {"taskId": tid}})
    await asyncio.sleep(0.01)
    assert status(rt, tid) == "waiting_confirmation"
    assert asker.raised == []
    assert stranger.messages == []
    asker.finish.set()


# ---------------------------------------------------------------- CONF-5


@pytest.mark.rule("CONF-5")
@pytest.mark.asyncio
async def test_owner_cancel_while_waiting_interrupts(rt: Runtime, request_as: RequestAs) -> None:
    owner = rt.connect(7, 10)
    asker, tid = await waiting_task(rt, request_as, owner)

    await owner.send({"backgroundTaskCancel": {"taskId": tid}})
    row = await rt.wait(tid, timeout=2)

    assert row["status"] == "interrupted"
    assert row["error"]
    assert asker.answers == []
    assert [type(e) for e in asker.raised] == [asyncio.CancelledError]
    last = owner.messages[-1]
    assert list(last) == ["backgroundTaskError"]
    assert last["backgroundTaskError"]["taskId"] == tid
    assert last["backgroundTaskError"]["error"] == row["error"]

    # A late answer to the interrupted task changes nothing.
    await owner.send({"backgroundTaskResponse": {"taskId": tid, "response": {"ok": 1}}})
    assert status(rt, tid) == "interrupted"
    assert asker.answers == []


# ---------------------------------------------------------------- backgroundTaskGet


@pytest.mark.rule("CONF-1")
@pytest.mark.asyncio
async def test_get_while_waiting_answers_the_asking_connection_with_the_confirmation(
    rt: Runtime, request_as: RequestAs
) -> None:
    asking = rt.connect(7, 10)
    other_tab = rt.connect(7, 10)
    asker, tid = await waiting_task(rt, request_as, asking)
    [original] = [m for m in asking.messages if "backgroundTaskConfirmation" in m]
    other_before = list(other_tab.messages)
    asking_before = list(asking.messages)

    await asking.send({"backgroundTaskGet": {"taskId": tid}})

    assert asking.messages == [*asking_before, original]
    assert other_tab.messages == other_before
    assert status(rt, tid) == "waiting_confirmation"

    # After the answer, a Get no longer shows the confirmation surface.
    await asking.send({"backgroundTaskResponse": {"taskId": tid, "response": True}})
    await asking.send({"backgroundTaskGet": {"taskId": tid}})
    assert "backgroundTaskConfirmation" not in asking.messages[-1]
    asker.finish.set()
    await rt.wait(tid, timeout=2)


@pytest.mark.rule("CONF-2")
@pytest.mark.asyncio
async def test_any_connection_of_the_owner_may_answer(rt: Runtime, request_as: RequestAs) -> None:
    first_tab = rt.connect(7, 10)
    second_tab = rt.connect(7, 10)
    asker, tid = await waiting_task(rt, request_as, first_tab)
    assert len(confirmations(second_tab)) == 1
    await second_tab.send({"backgroundTaskResponse": {"taskId": tid, "response": "from tab 2"}})
    asker.finish.set()
    assert (await rt.wait(tid, timeout=2))["result"] == {"answer": "from tab 2"}


@pytest.mark.rule("CONF-2")
@pytest.mark.asyncio
async def test_an_offline_owner_gets_the_question_on_reconnect_and_can_answer(
    rt: Runtime, request_as: RequestAs
) -> None:
    asker = Asker()
    async with request_as(user=7, org=10) as sdk:
        tid = await asker.start(sdk)
    await until(lambda: status(rt, tid) == "waiting_confirmation")

    owner = rt.connect(7, 10)
    [queued] = owner.messages
    assert queued["backgroundTaskConfirmation"]["surfaceId"] == f"task_confirm_{tid}"
    assert queued["backgroundTaskConfirmation"]["components"] == COMPONENTS

    await owner.send({"backgroundTaskResponse": {"taskId": tid, "response": {"ok": 1}}})
    asker.finish.set()
    row = await rt.wait(tid, timeout=2)
    assert (row["status"], row["result"]) == ("completed", {"answer": {"ok": 1}})


@pytest.mark.rule("CONF-5")
@pytest.mark.asyncio
async def test_stopping_the_runtime_while_waiting_interrupts(
    rt: Runtime, request_as: RequestAs
) -> None:
    owner = rt.connect(7, 10)
    asker, tid = await waiting_task(rt, request_as, owner)
    await rt.stop()
    row = rt.store.get(tid)
    assert row is not None
    assert row.status == "interrupted"
    assert [type(e) for e in asker.raised] == [asyncio.CancelledError]
    assert list(owner.messages[-1]) == ["backgroundTaskError"]


# ---------------------------------------------------------------- CONF-6


@pytest.mark.rule("CONF-6")
@pytest.mark.asyncio
async def test_an_answer_after_a_timed_out_question_does_not_answer_the_next(
    rt: Runtime, request_as: RequestAs
) -> None:
    conn = rt.connect(7, 10)
    timed_out, go_on = asyncio.Event(), asyncio.Event()
    own_id: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    async with request_as() as sdk:

        async def job() -> Any:
            task_id = await own_id
            question = ui.Builder().add(ui.Text("q", "First?"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sdk.tasks.request_confirmation(task_id, question), 0.05)
            timed_out.set()
            await go_on.wait()
            second = ui.Builder().add(ui.Text("q", "2?"))
            return await sdk.tasks.request_confirmation(task_id, second)

        task_id = await sdk.tasks.run_background(job(), "Twice")
        own_id.set_result(task_id)
    await timed_out.wait()
    await conn.send({"backgroundTaskResponse": {"taskId": task_id, "response": "late"}})
    go_on.set()
    await until(lambda: len(confirmations(conn)) == 2)
    await asyncio.sleep(0.05)
    assert status(rt, task_id) == "waiting_confirmation"
    await conn.send({"backgroundTaskResponse": {"taskId": task_id, "response": "fresh"}})
    done = await rt.wait(task_id, timeout=2)
    assert (done["status"], done["result"]) == ("completed", "fresh")
