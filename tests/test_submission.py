"""BG-1..BG-10: run_background, what it accepts, how a task ends, what a refusal leaves."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import re
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from conftest import Request, kinds, make_session, settle
from taskbed import Lease, MemoryStore, ModuleSDK, Runtime, TaskRecord


async def job() -> str:
    """A module-level job, so BG-4's message can show ``job`` by its plain name."""
    return "done"


# ---------------------------------------------------------------- BG-1, BG-5


@pytest.mark.rule("BG-1")
@pytest.mark.asyncio
async def test_returns_the_new_id_before_the_work_finishes(
    rt: Runtime, request_as: Request
) -> None:
    gate = asyncio.Event()
    finished = False

    async def slow() -> str:
        nonlocal finished
        await gate.wait()
        finished = True
        return "ok"

    conn = rt.connect(7, 10)
    async with request_as(module="reports") as sdk:
        # a time limit, so that a run_background that waits for the work fails, not hangs
        task_id = await asyncio.wait_for(sdk.tasks.run_background(slow(), "Slow job"), 2)
        assert str(uuid.UUID(task_id, version=4)) == task_id
        await settle()
        assert not finished, "run_background must not wait for the work"
        (row,) = sdk.tasks.list_user_tasks(7, 10)
        assert row["taskId"] == row["id"] == task_id
        assert row["status"] == "running"
        assert conn.messages == [
            {"backgroundTaskStarted": {"taskId": task_id, "label": "Slow job", "module": "reports"}}
        ]
        gate.set()
        done = await rt.wait(task_id, timeout=2)
    assert finished
    assert done["status"] == "completed"


@pytest.mark.rule("BG-5")
@pytest.mark.asyncio
async def test_pending_then_running_then_completed_with_progress_and_result(
    rt: Runtime, request_as: Request
) -> None:
    seen_inside: list[tuple[str, float]] = []
    rows = [1, 2, 3]
    shared_result: dict[str, Any] = {"rows": rows, "pair": (4, 5), "name": "r"}
    conn = rt.connect(7, 10)

    async with request_as() as sdk:

        async def work() -> dict[str, Any]:
            (me,) = sdk.tasks.get_tasks_by_key("report.1", 10)
            seen_inside.append((me["status"], me["progress"]))
            await sdk.tasks.update_progress(me["id"], 0.4)
            return shared_result

        task_id = await sdk.tasks.run_background(work(), task_key="report.1")
        (row,) = sdk.tasks.list_user_tasks(7, 10)
        assert (row["status"], row["progress"], row["result"]) == ("pending", 0.0, None)

        done = await rt.wait(task_id, timeout=2)
        rows.append(99)  # the stored result is a copy, not the live object

        assert seen_inside == [("running", 0.0)]
        assert done["status"] == "completed"
        assert done["progress"] == 1.0
        assert done["error"] is None
        expected = {"rows": [1, 2, 3], "pair": [4, 5], "name": "r"}  # JSON-safe: tuple -> list
        assert done["result"] == expected
        assert sdk.tasks.list_user_tasks(7, 10) == [done]
    completed = conn.messages[-1]["backgroundTaskCompleted"]
    assert completed["taskId"] == task_id
    assert completed["result"] == expected
    assert kinds(conn.messages) == [
        "backgroundTaskStarted",
        "backgroundTaskProgress",
        "backgroundTaskCompleted",
    ]


@pytest.mark.rule("BG-5")
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "bad_result",
    [object(), {"when": {1, 2}}, float("nan"), b"bytes"],
    ids=["object", "set-inside", "nan", "bytes"],
)
async def test_a_result_json_cannot_hold_fails_the_task_clearly(
    rt: Runtime, request_as: Request, bad_result: object
) -> None:
    async def work() -> object:
        return bad_result

    conn = rt.connect(7, 10)
    async with request_as() as sdk:
        task_id = await sdk.tasks.run_background(work())
        done = await rt.wait(task_id, timeout=2)
        assert done["status"] == "failed"
        assert done["result"] is None
        assert "JSON-serialisable" in done["error"]
        assert "result" in done["error"]
        assert sdk.tasks.list_user_tasks(7, 10) == [done]
    assert conn.messages[-1]["backgroundTaskError"]["error"] == done["error"]


# ---------------------------------------------------------------- BG-2, BG-3, BG-4


@pytest.mark.rule("BG-2")
@pytest.mark.asyncio
async def test_registered_name_gets_the_kwargs(rt: Runtime, request_as: Request) -> None:
    calls: list[dict[str, Any]] = []

    async def add(a: int, b: int) -> int:
        calls.append({"a": a, "b": b})
        return a + b

    rt.register_task("math.add", add)
    async with request_as() as sdk:
        task_id = await sdk.tasks.run_background("math.add", "Adding", a=2, b=40)
        done = await rt.wait(task_id, timeout=2)
    assert calls == [{"a": 2, "b": 40}]
    assert (done["status"], done["result"], done["label"]) == ("completed", 42, "Adding")


@pytest.mark.rule("BG-2")
@pytest.mark.rule("BG-9")
@pytest.mark.asyncio
async def test_kwargs_with_a_coroutine_are_refused(rt: Runtime, request_as: Request) -> None:
    coro = job()
    conn = rt.connect(7, 10)
    async with request_as() as sdk:
        with pytest.raises(ValueError, match=r"keyword arguments \['x'\].*run_background\(job\("):
            await sdk.tasks.run_background(coro, x=1)
        assert sdk.tasks.list_user_tasks(7, 10) == []
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    assert conn.messages == []


@pytest.mark.rule("BG-3")
@pytest.mark.asyncio
async def test_unknown_registered_name_is_named(rt: Runtime, request_as: Request) -> None:
    rt.register_task("reports.build", job)
    conn = rt.connect(7, 10)
    async with request_as() as sdk:
        with pytest.raises(ValueError, match=r"'reports\.biuld'") as info:
            await sdk.tasks.run_background("reports.biuld", x=1)
        assert "reports.build" in str(info.value), "the known names help find the typo"
        assert sdk.tasks.list_user_tasks(7, 10) == []
    assert conn.messages == []


@pytest.mark.rule("BG-4")
@pytest.mark.asyncio
async def test_a_function_instead_of_a_coroutine_shows_the_correct_call(
    rt: Runtime, request_as: Request
) -> None:
    async with request_as() as sdk:
        with pytest.raises(
            ValueError,
            match=re.escape("run_background(job())") + r".*" + re.escape("run_background(job)"),
        ):
            await sdk.tasks.run_background(job)  # type: ignore[arg-type]
        assert sdk.tasks.list_user_tasks(7, 10) == []


@pytest.mark.rule("BG-4")
@pytest.mark.asyncio
async def test_a_local_function_is_shown_as_written_at_the_call(
    rt: Runtime, request_as: Request
) -> None:
    async def refresh() -> None:
        return None

    async with request_as() as sdk:
        with pytest.raises(ValueError) as info:
            await sdk.tasks.run_background(refresh)  # type: ignore[arg-type]
    message = str(info.value)
    assert "run_background(refresh())" in message
    assert "run_background(refresh)" in message
    assert "<locals>" not in message, "the hint must be a call the author can paste"


@pytest.mark.rule("BG-4")
@pytest.mark.asyncio
@pytest.mark.parametrize("target", [42, None, ["job"], b"job"], ids=repr)
async def test_anything_else_is_refused_with_an_example(
    rt: Runtime, request_as: Request, target: object
) -> None:
    async with request_as() as sdk:
        with pytest.raises(ValueError, match=re.escape("run_background(job())")):
            await sdk.tasks.run_background(target)  # type: ignore[arg-type]
        assert sdk.tasks.list_user_tasks(7, 10) == []


# ---------------------------------------------------------------- BG-6


@pytest.mark.rule("BG-6")
@pytest.mark.asyncio
async def test_a_failing_task_ends_failed_quietly_and_the_runtime_carries_on(
    rt: Runtime, request_as: Request, caplog: pytest.LogCaptureFixture
) -> None:
    class QuotaError(Exception):
        pass

    async def boom() -> None:
        await asyncio.sleep(0)
        raise QuotaError("quota exceeded for org 10")

    async def fine() -> str:
        return "still here"

    conn = rt.connect(7, 10)
    caplog.set_level(logging.DEBUG, logger="asyncio")
    async with request_as() as sdk:
        failed_id = await sdk.tasks.run_background(boom(), "Boom", task_key="k")
        failed = await rt.wait(failed_id, timeout=2)
        assert failed["status"] == "failed"
        assert failed["error"] == "quota exceeded for org 10"
        assert failed["result"] is None
        error = conn.messages[-1]["backgroundTaskError"]
        assert (error["taskId"], error["label"], error["error"]) == (
            failed_id,
            "Boom",
            "quota exceeded for org 10",
        )

        # unharmed: the same key and the runtime take new work
        ok_id = await sdk.tasks.run_background(fine(), task_key="k")
        assert ok_id != failed_id
        assert (await rt.wait(ok_id, timeout=2))["result"] == "still here"
    gc.collect()  # "Task exception was never retrieved" is logged when a task is collected
    await settle()
    noise = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.WARNING]
    assert noise == []


# ---------------------------------------------------------------- BG-7, BG-8


@pytest.mark.rule("BG-7")
@pytest.mark.rule("BG-8")
@pytest.mark.asyncio
async def test_client_cancel_interrupts_a_running_task(rt: Runtime, request_as: Request) -> None:
    started = asyncio.Event()
    cleaned_up = False

    async def long_job() -> None:
        nonlocal cleaned_up
        started.set()
        try:
            await asyncio.Event().wait()  # never set: only a cancel ends this
        finally:
            cleaned_up = True

    conn = rt.connect(7, 10)
    async with request_as() as sdk:
        task_id = await sdk.tasks.run_background(long_job(), "Long", task_key="long")
        await started.wait()
        await conn.send({"backgroundTaskCancel": {"taskId": task_id}})
        done = await rt.wait(task_id, timeout=2)
        assert cleaned_up, "the work saw the cancellation"
        assert done["status"] == "interrupted"
        assert "cancel" in done["error"]
        # the key is free again
        again = await sdk.tasks.run_background(job(), task_key="long")
        assert again != task_id
        await rt.wait(again, timeout=2)
    assert kinds(conn.messages) == [
        "backgroundTaskStarted",
        "backgroundTaskError",
        "backgroundTaskStarted",
        "backgroundTaskCompleted",
    ]
    error = conn.messages[1]["backgroundTaskError"]
    assert error["taskId"] == task_id
    assert error["label"] == "Long"
    assert error["error"] == done["error"]


@pytest.mark.rule("BG-7")
@pytest.mark.rule("BG-8")
@pytest.mark.asyncio
async def test_cancel_before_the_first_step_interrupts_and_closes_the_coroutine(
    rt: Runtime, request_as: Request
) -> None:
    ran = False

    async def never() -> None:
        nonlocal ran
        ran = True

    coro = never()
    conn = rt.connect(7, 10)
    async with request_as() as sdk:
        task_id = await sdk.tasks.run_background(coro)
        await conn.send({"backgroundTaskCancel": {"taskId": task_id}})  # before any await
        done = await rt.wait(task_id, timeout=2)
    assert not ran
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    assert done["status"] == "interrupted"
    assert kinds(conn.messages) == ["backgroundTaskStarted", "backgroundTaskError"]
    assert conn.messages[1]["backgroundTaskError"]["taskId"] == task_id


# ---------------------------------------------------------------- BG-9


def _bad_submissions() -> list[Any]:
    """(id, how to call run_background, expected error) — each must leave nothing behind."""

    async def unregistered(sdk: ModuleSDK, coro: Coroutine[Any, Any, Any]) -> None:
        coro.close()
        await sdk.tasks.run_background("no.such.task")

    async def function(sdk: ModuleSDK, coro: Coroutine[Any, Any, Any]) -> None:
        coro.close()
        await sdk.tasks.run_background(job)  # type: ignore[arg-type]

    async def kwargs(sdk: ModuleSDK, coro: Coroutine[Any, Any, Any]) -> None:
        await sdk.tasks.run_background(coro, n=1)

    async def int_key(sdk: ModuleSDK, coro: Coroutine[Any, Any, Any]) -> None:
        await sdk.tasks.run_background(coro, task_key=5)  # type: ignore[arg-type]

    async def bad_label(sdk: ModuleSDK, coro: Coroutine[Any, Any, Any]) -> None:
        await sdk.tasks.run_background(coro, label=["not", "a", "label"])  # type: ignore[arg-type]

    return [
        pytest.param(unregistered, ValueError, id="unknown-name"),
        pytest.param(function, ValueError, id="function"),
        pytest.param(kwargs, ValueError, id="kwargs-with-coroutine"),
        pytest.param(int_key, TypeError, id="int-task-key"),
        pytest.param(bad_label, ValueError, id="label-not-str"),
    ]


@pytest.mark.rule("BG-9")
@pytest.mark.asyncio
@pytest.mark.parametrize(("submit", "error"), _bad_submissions())
async def test_a_refused_submission_leaves_nothing_behind(
    rt: Runtime,
    request_as: Request,
    submit: Callable[[ModuleSDK, Coroutine[Any, Any, Any]], Coroutine[Any, Any, None]],
    error: type[Exception],
) -> None:
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    coro = work()
    conn = rt.connect(7, 10)
    async with request_as() as sdk:
        with pytest.raises(error):
            await submit(sdk, coro)
        await settle()
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
        assert not ran
        assert sdk.tasks.list_user_tasks(7, 10) == []
        assert conn.messages == []
        # and the runtime is fine
        task_id = await sdk.tasks.run_background(job())
        assert (await rt.wait(task_id, timeout=2))["status"] == "completed"
    gc.collect()


@pytest.mark.rule("BG-9")
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("session", "started", "error"),
    [
        (make_session(user=None), True, ValueError),
        ({"session_key": "s1"}, True, ValueError),
        (make_session(), False, RuntimeError),
    ],
    ids=["no-user-id", "no-user", "runtime-stopped"],
)
async def test_a_refused_submission_closes_the_coroutine_before_any_manager(
    session: dict[str, Any], started: bool, error: type[Exception]
) -> None:
    store = MemoryStore()
    runtime = Runtime(store=store)
    if started:
        await runtime.start()
    conn = runtime.connect(7, 10)
    coro = job()
    try:
        async with runtime.request(session=session, module="mod") as sdk:
            with pytest.raises(error):
                await sdk.tasks.run_background(coro, task_key="k")
    finally:
        await runtime.stop()
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    assert store.find_by_user(7, 10) == []
    assert store.find_by_key("k", 10) == []
    assert conn.messages == []


class FlakyStore(MemoryStore):
    """A MemoryStore whose insert fails while ``broken`` is set (a full disk, a lost lock)."""

    broken = True

    async def insert_or_get_active(
        self, record: TaskRecord, lease: Lease
    ) -> tuple[TaskRecord, bool]:
        if self.broken:
            raise OSError("disk I/O error")
        return await super().insert_or_get_active(record, lease)


@pytest.mark.rule("BG-9")
@pytest.mark.asyncio
async def test_a_store_failing_during_submit_leaves_nothing_and_the_runtime_recovers() -> None:
    store = FlakyStore()
    ran = False

    async def work() -> str:
        nonlocal ran
        ran = True
        return "ok"

    async with Runtime(store=store) as runtime:
        conn = runtime.connect(7, 10)
        async with runtime.request(session=make_session(), module="mod") as sdk:
            coro = work()
            with pytest.raises(OSError, match="disk I/O error"):
                await sdk.tasks.run_background(coro, task_key="k")
            await settle()
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
            assert not ran
            assert sdk.tasks.list_user_tasks(7, 10) == []
            assert conn.messages == []
            assert runtime.manager is not None
            assert runtime.manager._local == {}

            store.broken = False
            task_id = await sdk.tasks.run_background(work(), task_key="k")
            done = await runtime.wait(task_id, timeout=2)
    assert ran
    assert done["status"] == "completed"
    assert kinds(conn.messages) == ["backgroundTaskStarted", "backgroundTaskCompleted"]
    gc.collect()


# ---------------------------------------------------------------- BG-10


@pytest.mark.rule("BG-10")
@pytest.mark.asyncio
async def test_a_sync_registered_function_runs_in_a_worker_thread(
    rt: Runtime, request_as: Request
) -> None:
    loop_thread = threading.get_ident()
    release = threading.Event()
    seen: dict[str, Any] = {}

    def crunch(n: int) -> int:
        seen["thread"] = threading.get_ident()
        # Blocks its thread: if it ran on the loop, the loop could not set `release`.
        assert release.wait(timeout=2)
        return n * 2

    rt.register_task("crunch", crunch)
    async with request_as() as sdk:
        task_id = await sdk.tasks.run_background("crunch", n=21)
        for _ in range(500):  # the loop keeps running while the function blocks
            if "thread" in seen:
                break
            await asyncio.sleep(0.001)
        release.set()
        done = await rt.wait(task_id, timeout=5)
    assert seen["thread"] != loop_thread
    assert (done["status"], done["result"]) == ("completed", 42)
