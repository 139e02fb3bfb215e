"""Blocking (BLOCK): ``run_blocking`` runs sync code in a worker thread, context and all."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import gc
import inspect
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from conftest import make_session
from taskbed import ModuleSDK, Runtime, current_request

RequestAs = Callable[..., AbstractAsyncContextManager[ModuleSDK]]

flavour: contextvars.ContextVar[str] = contextvars.ContextVar("flavour", default="default")
only_inside: contextvars.ContextVar[str] = contextvars.ContextVar("only_inside", default="unset")


class Boom(Exception):
    pass


# ---------------------------------------------------------------- BLOCK-1


@pytest.mark.rule("BLOCK-1")
@pytest.mark.asyncio
async def test_runs_in_a_worker_thread_and_returns_its_value(request_as: RequestAs) -> None:
    loop_thread = threading.get_ident()

    def work(a: int, b: int, *, scale: int) -> tuple[int, int]:
        return (a + b) * scale, threading.get_ident()

    async with request_as() as sdk:
        value, ident = await sdk.tasks.run_blocking(work, 2, 3, scale=10)
    assert value == 50
    assert ident != loop_thread
    assert ident != threading.main_thread().ident


@pytest.mark.rule("BLOCK-1")
@pytest.mark.asyncio
async def test_returns_the_very_object(request_as: RequestAs) -> None:
    marker = object()
    async with request_as() as sdk:
        assert await sdk.tasks.run_blocking(lambda: marker) is marker
        assert await sdk.tasks.run_blocking(lambda: None) is None


# ---------------------------------------------------------------- BLOCK-2


@pytest.mark.rule("BLOCK-2")
@pytest.mark.asyncio
async def test_reraises_the_same_exception_object(request_as: RequestAs) -> None:
    raised = Boom("disk on fire")

    def fail() -> None:
        raise raised

    async with request_as() as sdk:
        with pytest.raises(Boom) as excinfo:
            await sdk.tasks.run_blocking(fail)
    assert excinfo.value is raised
    assert str(excinfo.value) == "disk on fire"
    assert type(excinfo.value) is Boom


@pytest.mark.rule("BLOCK-2")
@pytest.mark.asyncio
async def test_builtin_exceptions_are_not_wrapped(request_as: RequestAs) -> None:
    async with request_as() as sdk:
        with pytest.raises(ZeroDivisionError):
            await sdk.tasks.run_blocking(lambda: 1 / 0)
        with pytest.raises(KeyError) as excinfo:
            await sdk.tasks.run_blocking({}.__getitem__, "missing")
        assert excinfo.value.args == ("missing",)
        # the runtime is unharmed: the next call works
        assert await sdk.tasks.run_blocking(int, "5") == 5


# ---------------------------------------------------------------- BLOCK-3


@pytest.mark.rule("BLOCK-3")
@pytest.mark.asyncio
async def test_the_loop_keeps_serving_while_func_sleeps(request_as: RequestAs) -> None:
    ticks = 0
    finished = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not finished.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    async with request_as() as sdk:
        before = ticks
        slept = await sdk.tasks.run_blocking(time.sleep, 0.2)
        during = ticks - before
    finished.set()
    await ticking
    assert slept is None
    # ~20 when free; a blocked loop cannot tick at all (kept low: a loaded machine is slow)
    assert during >= 3, f"the loop ticked only {during} times in 0.2 s: it was blocked"


@pytest.mark.rule("BLOCK-3")
@pytest.mark.asyncio
async def test_func_can_wait_for_a_coroutine_on_the_loop(request_as: RequestAs) -> None:
    """func only returns once a coroutine on the loop answers it: load cannot fake this."""
    started, answer = threading.Event(), threading.Event()

    def wait_for_the_loop() -> bool:
        started.set()
        return answer.wait(timeout=3)

    async def answer_when_started() -> None:
        while not started.is_set():
            await asyncio.sleep(0.01)
        answer.set()

    answering = asyncio.create_task(answer_when_started())
    async with request_as() as sdk:
        answered = await sdk.tasks.run_blocking(wait_for_the_loop)
    await answering
    assert answered, "the loop never ran the answering coroutine while func waited"


@pytest.mark.rule("BLOCK-3")
@pytest.mark.asyncio
async def test_two_blocking_calls_overlap(request_as: RequestAs) -> None:
    barrier = threading.Barrier(2, timeout=2)

    def meet() -> int:
        return barrier.wait()  # only returns when both calls run at the same time

    async with request_as() as sdk:
        got = await asyncio.gather(sdk.tasks.run_blocking(meet), sdk.tasks.run_blocking(meet))
    assert sorted(got) == [0, 1]


# ---------------------------------------------------------------- BLOCK-4


@pytest.mark.rule("BLOCK-4")
@pytest.mark.asyncio
@pytest.mark.parametrize("func", [42, "len", None, b"x", [len]], ids=repr)
async def test_non_callable_raises_type_error(request_as: RequestAs, func: Any) -> None:
    async with request_as() as sdk:
        with pytest.raises(TypeError, match=r"run_blocking expected a callable"):
            await sdk.tasks.run_blocking(func)


@pytest.mark.rule("BLOCK-4")
@pytest.mark.asyncio
async def test_a_coroutine_is_refused_and_closed(request_as: RequestAs) -> None:
    ran = False

    async def job() -> None:
        nonlocal ran
        ran = True

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coro = job()
        async with request_as() as sdk:
            with pytest.raises(TypeError, match=r"run_blocking\(func, arg\)"):
                await sdk.tasks.run_blocking(coro)  # type: ignore[arg-type]
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
        del coro
        gc.collect()
    assert not ran
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


# ---------------------------------------------------------------- BLOCK-5


@pytest.mark.rule("BLOCK-5")
@pytest.mark.asyncio
async def test_caller_context_is_visible_inside(request_as: RequestAs) -> None:
    token = flavour.set("caller")
    try:
        async with request_as(request_id="r-block") as sdk:
            seen = await sdk.tasks.run_blocking(lambda: (flavour.get(), current_request()))
    finally:
        flavour.reset(token)
    assert seen[0] == "caller"
    assert seen[1] is not None
    assert seen[1].request_id == "r-block"


@pytest.mark.rule("BLOCK-5")
@pytest.mark.asyncio
async def test_changes_inside_leak_neither_out_nor_into_a_later_call() -> None:
    def set_inside() -> tuple[int, str]:
        seen = flavour.get()
        flavour.set("inside")
        only_inside.set("inside")
        return threading.get_ident(), seen

    def read() -> tuple[int, str, str]:
        return threading.get_ident(), flavour.get(), only_inside.get()

    async with Runtime(max_workers=1) as runtime:
        sdk = runtime.sdk(session=make_session(), module="mod")
        token = flavour.set("caller")
        try:
            first_thread, seen = await sdk.tasks.run_blocking(set_inside)
            assert seen == "caller"
            assert flavour.get() == "caller"  # not leaked out
            assert only_inside.get() == "unset"
            later_thread, later_flavour, later_inside = await sdk.tasks.run_blocking(read)
        finally:
            flavour.reset(token)
        # with the caller's value gone, the pool thread still holds nothing of the first call
        bare_thread, bare_flavour, bare_inside = await sdk.tasks.run_blocking(read)
    assert first_thread == later_thread == bare_thread  # one pool thread served every call
    assert (later_flavour, later_inside) == ("caller", "unset")
    assert (bare_flavour, bare_inside) == ("default", "unset")


@pytest.mark.rule("BLOCK-5")
@pytest.mark.asyncio
async def test_concurrent_callers_each_see_their_own_values() -> None:
    gate = threading.Barrier(2, timeout=2)

    def read_after_meeting() -> str:
        gate.wait()
        return flavour.get()

    async with Runtime(max_workers=2) as runtime:
        sdk = runtime.sdk(session=make_session(), module="mod")

        async def call_as(value: str) -> str:
            flavour.set(value)  # each asyncio task runs in its own context copy
            return await sdk.tasks.run_blocking(read_after_meeting)

        got = await asyncio.gather(call_as("a"), call_as("b"))
    assert got == ["a", "b"]
    assert flavour.get() == "default"


@pytest.mark.rule("BLOCK-5")
@pytest.mark.asyncio
async def test_request_context_seen_inside_is_a_plain_record(request_as: RequestAs) -> None:
    async with request_as(user=3, org=4, module="m2", request_id="r5", key="k6") as sdk:
        seen = await sdk.tasks.run_blocking(current_request)
    assert seen is not None
    assert dataclasses.asdict(seen) == {
        "request_id": "r5",
        "user_id": 3,
        "organization_id": 4,
        "module": "m2",
        "session_key": "k6",
    }
