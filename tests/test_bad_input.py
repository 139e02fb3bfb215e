"""BG-12/13/14, PROG-6, BLOCK-6, CMD-11: misuse that used to get through, each refused clearly.

Every case here was once accepted (issue 13): a coroutine submitted twice, JSON that merges
keys, progress too big for a float, an async function given to run_blocking, task keys the
stores disagreed on, an empty env name. Each test runs over both stores and both managers
(the ``rt`` fixture) and pins the message's pointer to its rule.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import pytest

from conftest import Request, settle
from taskbed import (
    AsyncFunctionError,
    CoroutineReusedError,
    InvalidEnvironmentError,
    InvalidProgressError,
    NotSerializableError,
    Runtime,
    SQLiteStore,
    TaskKeyRefusedError,
)
from taskbed._tasks import MAX_TASK_KEY_BYTES


async def waits(gate: asyncio.Event) -> str:
    await gate.wait()
    return "first"


def rows(rt: Runtime) -> list[dict[str, Any]]:
    return rt.sdk(
        session={"user": {"id": 7, "organization_id": 10}}, module="mod"
    ).tasks.list_user_tasks(7, 10)


# ---------------------------------------------------------------- BG-12


@pytest.mark.rule("BG-12")
@pytest.mark.asyncio
@pytest.mark.parametrize("task_key", ["k", None])
async def test_a_coroutine_submitted_twice_is_refused_and_the_first_task_runs_on(
    rt: Runtime, request_as: Request, task_key: str | None
) -> None:
    gate = asyncio.Event()
    coro = waits(gate)
    async with request_as() as sdk:
        first = await sdk.tasks.run_background(coro, task_key=task_key)
        with pytest.raises(CoroutineReusedError, match=r"already submitted") as early:
            await sdk.tasks.run_background(coro, task_key=task_key)
        await settle()
        assert inspect.getcoroutinestate(coro) == inspect.CORO_SUSPENDED
        with pytest.raises(CoroutineReusedError, match=r"already started") as late:
            await sdk.tasks.run_background(coro, task_key=task_key)
        for refused in (early, late):
            message = str(refused.value)
            assert "run_background(waits(...))" in message  # the correct call
            assert message.endswith("(see specs/submission.md, rule BG-12)")
            assert isinstance(refused.value, ValueError)
        assert [row["id"] for row in sdk.tasks.list_user_tasks(7, 10)] == [first]
        gate.set()
        done = await rt.wait(first, timeout=5)
    assert (done["status"], done["result"]) == ("completed", "first")
    assert len(rows(rt)) == 1


@pytest.mark.rule("BG-12")
@pytest.mark.asyncio
async def test_a_finished_or_closed_coroutine_is_refused(request_as: Request) -> None:
    async def quick() -> int:
        return 1

    done = quick()
    assert await done == 1
    closed = quick()
    closed.close()
    async with request_as() as sdk:
        for coro in (done, closed):
            with pytest.raises(CoroutineReusedError, match=r"already finished or been closed"):
                await sdk.tasks.run_background(coro)
        assert sdk.tasks.list_user_tasks(7, 10) == []


@pytest.mark.rule("BG-12")
@pytest.mark.asyncio
async def test_a_fresh_coroutine_of_the_same_function_is_accepted(request_as: Request) -> None:
    gate = asyncio.Event()
    gate.set()
    async with request_as() as sdk:
        ids = [await sdk.tasks.run_background(waits(gate)) for _ in range(3)]
        assert len(set(ids)) == 3


# ---------------------------------------------------------------- BG-13


@pytest.mark.rule("BG-13")
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "result",
    [
        {1: "a", "1": "b"},
        {"nested": [{True: 1, "true": 2}]},
        {None: 0, "null": 1},
        {1.5: "x", "1.5": "y"},
    ],
    ids=["int", "bool-nested", "none", "float"],
)
async def test_a_result_whose_keys_merge_fails_the_task(
    rt: Runtime, request_as: Request, result: dict[Any, Any]
) -> None:
    async def work() -> dict[Any, Any]:
        return result

    async with request_as() as sdk:
        done = await rt.wait(await sdk.tasks.run_background(work()), timeout=5)
    assert (done["status"], done["result"]) == ("failed", None)
    assert "one value would be lost" in done["error"]
    assert done["error"].endswith("(see specs/submission.md, rule BG-13)")


@pytest.mark.rule("BG-13")
@pytest.mark.asyncio
async def test_a_checkpoint_whose_keys_merge_is_refused_and_nothing_stored(
    rt: Runtime, request_as: Request
) -> None:
    async with request_as() as sdk:
        task_id = await sdk.tasks.run_background(asyncio.Event().wait())
        await sdk.tasks.update_progress(task_id, 0.5, checkpoint={"page": 1})
        with pytest.raises(NotSerializableError, match=r'JSON key "1"') as refused:
            await sdk.tasks.update_progress(task_id, 0.9, checkpoint={1: "a", "1": "b"})
        assert str(refused.value).endswith("(see specs/submission.md, rule BG-13)")
        (row,) = sdk.tasks.list_user_tasks(7, 10)
        assert (row["progress"], row["checkpoint"]) == (0.5, {"page": 1})


@pytest.mark.rule("BG-13")
@pytest.mark.asyncio
async def test_json_too_deep_for_the_encoder_is_the_rules_error(
    rt: Runtime, request_as: Request
) -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]

    async def work() -> list[Any]:
        return deep

    async with request_as() as sdk:
        done = await rt.wait(await sdk.tasks.run_background(work()), timeout=5)
        assert done["status"] == "failed"
        assert "nested too deeply" in done["error"]
        task_id = await sdk.tasks.run_background(asyncio.Event().wait())
        with pytest.raises(NotSerializableError, match="nested too deeply"):
            await sdk.tasks.update_progress(task_id, 0.5, checkpoint={"d": deep})


@pytest.mark.rule("BG-13")
@pytest.mark.asyncio
async def test_keys_that_do_not_merge_read_back_as_json_gives_them(
    rt: Runtime, request_as: Request
) -> None:
    async def work() -> dict[Any, Any]:
        return {1: "one", False: "no", None: "nothing", "s": (1, 2)}

    async with request_as() as sdk:
        done = await rt.wait(await sdk.tasks.run_background(work()), timeout=5)
    assert done["result"] == {"1": "one", "false": "no", "null": "nothing", "s": [1, 2]}


# ---------------------------------------------------------------- BG-14


@pytest.mark.rule("BG-14")
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("key", "match"),
    [
        (
            "k" * (MAX_TASK_KEY_BYTES + 1),
            r"^task_key is 1025 bytes in UTF-8, over the limit of 1024",
        ),
        ("é" * 513, r"^task_key is 1026 bytes"),
        ("x" * 10_000_000, r"^task_key is 10000000 bytes"),
        ("report-\ud800", r"^task_key holds a lone surrogate '\\ud800' at index 7"),
        ("\udfff", r"lone surrogate"),
    ],
    ids=["1025", "two-byte-chars", "10MB", "high-surrogate", "low-surrogate"],
)
async def test_a_key_no_store_should_keep_is_refused_by_the_facade(
    rt: Runtime, request_as: Request, key: str, match: str
) -> None:
    async def work() -> None:
        return None

    coro = work()
    async with request_as() as sdk:
        with pytest.raises(TaskKeyRefusedError, match=match) as refused:
            await sdk.tasks.run_background(coro, task_key=key)
        assert isinstance(refused.value, ValueError)
        assert str(refused.value).endswith("(see specs/submission.md, rule BG-14)")
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
        assert sdk.tasks.list_user_tasks(7, 10) == []
        # queries with such a key answer [] on every store, never raise
        assert sdk.tasks.get_tasks_by_key(key, 10) == []
        assert sdk.tasks.get_tasks_by_key_prefix(key, 10) == []


@pytest.mark.rule("BG-14")
@pytest.mark.asyncio
async def test_the_longest_key_and_any_real_text_are_kept_exactly(
    rt: Runtime, request_as: Request
) -> None:
    keys = ["é" * 511 + "ok", "k" * MAX_TASK_KEY_BYTES, "emoji-😀-\u0000-nul", "a_%b"]
    async with request_as() as sdk:
        for key in keys:
            task_id = await sdk.tasks.run_background(asyncio.Event().wait(), task_key=key)
            assert [r["id"] for r in sdk.tasks.get_tasks_by_key(key, 10)] == [task_id]
            assert sdk.tasks.get_tasks_by_key(key, 10)[0]["taskKey"] == key


@pytest.mark.rule("BG-14")
@pytest.mark.asyncio
async def test_a_sqlite_file_does_not_grow_with_refused_keys(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    async with Runtime(store=SQLiteStore(path)) as rt:
        sdk = rt.sdk(session={"user": {"id": 7, "organization_id": 10}}, module="mod")
        before = os.path.getsize(path)
        for _ in range(5):
            with pytest.raises(ValueError):
                await sdk.tasks.run_background(asyncio.sleep(0), task_key="x" * 10_000_000)
        assert os.path.getsize(path) == before


# ---------------------------------------------------------------- PROG-6


@pytest.mark.rule("PROG-6")
@pytest.mark.asyncio
@pytest.mark.parametrize("huge", [10**400, -(10**400), 10**5000], ids=["1e400", "-1e400", "1e5000"])
async def test_progress_no_float_can_hold_is_the_rules_error(
    rt: Runtime, request_as: Request, huge: int
) -> None:
    conn = rt.connect(7, 10)
    async with request_as() as sdk:
        task_id = await sdk.tasks.run_background(asyncio.Event().wait())
        await sdk.tasks.update_progress(task_id, 0.25)
        await settle()
        heard = len(conn.messages)
        with pytest.raises(InvalidProgressError, match=r"^progress must be a number") as refused:
            await sdk.tasks.update_progress(task_id, huge, checkpoint={"x": 1})
        assert not isinstance(refused.value, OverflowError)
        assert str(refused.value).endswith("(see specs/progress.md, rule PROG-6)")
        assert "digits" in str(refused.value)
        with pytest.raises(InvalidProgressError):
            await sdk.tasks.emit_progress(task_id, huge)
        (row,) = sdk.tasks.list_user_tasks(7, 10)
        assert (row["progress"], row["checkpoint"]) == (0.25, {})
        await settle()
        assert conn.messages[heard:] == []
        await sdk.tasks.update_progress(task_id, 10**300)  # a float holds it: clamped
        assert sdk.tasks.list_user_tasks(7, 10)[0]["progress"] == 1.0


# ---------------------------------------------------------------- BLOCK-6


async def fetch(n: int) -> int:
    return n


class AsyncHandler:
    async def __call__(self, n: int) -> int:
        return n


@pytest.mark.rule("BLOCK-6")
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("func", "match"),
    [
        (fetch, r"^run_blocking fetch is an async function.*await fetch\(x\) and not "
         r"run_blocking\(fetch, x\)"),
        (functools.partial(fetch, 1), r"^run_blocking fetch is an async function"),
        (AsyncHandler(), r"^run_blocking AsyncHandler is an async function"),
    ],
    ids=["coroutine-function", "partial", "async-call"],
)  # fmt: skip
async def test_run_blocking_refuses_async_functions_before_running_them(
    request_as: Request, func: Any, match: str
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with request_as() as sdk:
            with pytest.raises(AsyncFunctionError, match=match) as refused:
                await sdk.tasks.run_blocking(func, 1)
        gc.collect()
    assert isinstance(refused.value, TypeError)
    assert str(refused.value).endswith("(see specs/blocking.md, rule BLOCK-6)")
    assert not [w for w in caught if "never awaited" in str(w.message)]


@pytest.mark.rule("BLOCK-6")
@pytest.mark.asyncio
async def test_run_blocking_refuses_awaitables_and_returned_coroutines(
    request_as: Request,
) -> None:
    loop = asyncio.get_running_loop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with request_as() as sdk:
            with pytest.raises(AsyncFunctionError, match=r"got an awaitable \(Future\)"):
                await sdk.tasks.run_blocking(loop.create_future())
            with pytest.raises(AsyncFunctionError, match=r"<lambda> returned a coroutine"):
                await sdk.tasks.run_blocking(lambda: fetch(2))
            assert await sdk.tasks.run_blocking(sorted, [2, 1]) == [1, 2]
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


# ---------------------------------------------------------------- CMD-11


@pytest.mark.rule("CMD-11")
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"": "x"}, r"^env name '' is empty"),
        ({"A=B": "x"}, r"^env name 'A=B' holds '='"),
        ({"=": ""}, r"holds '='"),
        ({"A\0B": "x"}, r"holds a NUL byte"),
        ({"OK": "x\0y"}, r"^env value of OK holds a NUL byte"),
    ],
    ids=["empty", "equals", "only-equals", "nul-name", "nul-value"],
)
async def test_env_entries_no_environment_holds_are_refused(
    request_as: Request, tmp_path: Path, env: dict[str, str], match: str
) -> None:
    marker = tmp_path / "started"
    async with request_as() as sdk:
        with pytest.raises(InvalidEnvironmentError, match=match) as refused:
            await sdk.tasks.run_subprocess(["touch", str(marker)], env=env)
    assert isinstance(refused.value, ValueError)
    assert "env={'NAME': 'value'}" in str(refused.value) or "replace" in str(refused.value)
    assert str(refused.value).endswith("(see specs/commands.md, rule CMD-11)")
    assert not marker.exists()
