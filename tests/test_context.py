"""Context (CTX): a task runs in the request context of the call that submitted it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from conftest import make_session
from taskbed import ModuleSDK, Runtime, current_request

RequestAs = Callable[..., AbstractAsyncContextManager[ModuleSDK]]


def context_now() -> dict[str, Any] | None:
    ctx = current_request()
    return None if ctx is None else dataclasses.asdict(ctx)


def sandbox_of(output: str) -> dict[str, str]:
    """The MODULE_SDK_* variables in what `env -0` printed."""
    pairs = (item.split("=", 1) for item in output.split("\0") if item)
    return {k: v for k, v in pairs if k.startswith("MODULE_SDK_")}


# ---------------------------------------------------------------- CTX-1


@pytest.mark.rule("CTX-1")
@pytest.mark.asyncio
async def test_task_sees_the_submitting_request_after_it_ended(
    rt: Runtime, request_as: RequestAs
) -> None:
    release = asyncio.Event()
    seen: list[dict[str, Any] | None] = []

    async def job() -> dict[str, Any] | None:
        seen.append(context_now())  # at the start, inside the request
        await release.wait()
        return context_now()  # after the request ended

    async with request_as(user=7, org=10, module="mod", request_id="r-1", key="s1") as sdk:
        task_id = await sdk.tasks.run_background(job())
        await asyncio.sleep(0)
    assert current_request() is None  # the request is over
    release.set()
    row = await rt.wait(task_id, timeout=5)
    expected = {
        "request_id": "r-1",
        "user_id": 7,
        "organization_id": 10,
        "module": "mod",
        "session_key": "s1",
    }
    assert row["status"] == "completed", row["error"]
    assert row["result"] == expected
    assert seen == [expected]


@pytest.mark.rule("CTX-1")
@pytest.mark.asyncio
async def test_task_started_after_the_request_ended_still_sees_it(
    rt: Runtime, request_as: RequestAs
) -> None:
    async def job() -> dict[str, Any] | None:
        return context_now()

    async with request_as(user=8, org=None, module="mod", request_id="r-late", key=None) as sdk:
        task_id = await sdk.tasks.run_background(job())
    # the task has not taken its first step yet: the request block ended first
    pending = rt.store.get(task_id)
    assert pending is not None
    assert pending.status == "pending"
    row = await rt.wait(task_id, timeout=5)
    assert row["result"] == {
        "request_id": "r-late",
        "user_id": 8,
        "organization_id": None,
        "module": "mod",
        "session_key": None,
    }


@pytest.mark.rule("CTX-1")
@pytest.mark.asyncio
async def test_a_sync_registered_task_sees_the_request_in_its_thread(
    rt: Runtime, request_as: RequestAs
) -> None:
    def sync_job(pause: float) -> dict[str, Any] | None:
        time.sleep(pause)
        return context_now()

    rt.register_task("sync_job", sync_job)
    async with request_as(request_id="r-sync") as sdk:
        task_id = await sdk.tasks.run_background("sync_job", pause=0.01)
    row = await rt.wait(task_id, timeout=5)
    assert row["status"] == "completed", row["error"]
    assert row["result"]["request_id"] == "r-sync"
    assert row["result"]["user_id"] == 7


# ---------------------------------------------------------------- CTX-2


@pytest.mark.rule("CTX-2")
@pytest.mark.asyncio
async def test_concurrent_requests_tasks_each_see_their_own(
    rt: Runtime, request_as: RequestAs
) -> None:
    both_open = asyncio.Barrier(2)
    release = asyncio.Event()

    async def job() -> dict[str, Any] | None:
        await release.wait()
        return context_now()

    async def one_request(user: int, org: int, module: str, request_id: str, key: str) -> str:
        async with request_as(
            user=user, org=org, module=module, request_id=request_id, key=key
        ) as sdk:
            await both_open.wait()  # both requests are open at the same time
            task_id = await sdk.tasks.run_background(job())
            await both_open.wait()  # and both submitted before either ends
            return task_id

    first, second = await asyncio.gather(
        one_request(1, 100, "alpha", "req-a", "sa"),
        one_request(2, 200, "beta", "req-b", "sb"),
    )
    release.set()
    rows = [await rt.wait(first, timeout=5), await rt.wait(second, timeout=5)]
    assert [r["result"] for r in rows] == [
        {
            "request_id": "req-a",
            "user_id": 1,
            "organization_id": 100,
            "module": "alpha",
            "session_key": "sa",
        },
        {
            "request_id": "req-b",
            "user_id": 2,
            "organization_id": 200,
            "module": "beta",
            "session_key": "sb",
        },
    ]


@pytest.mark.rule("CTX-2")
@pytest.mark.asyncio
async def test_nested_request_does_not_change_an_earlier_task(
    rt: Runtime, request_as: RequestAs
) -> None:
    release = asyncio.Event()

    async def job() -> dict[str, Any] | None:
        await release.wait()
        return context_now()

    async with request_as(request_id="outer") as outer:
        first = await outer.tasks.run_background(job())
        async with request_as(user=9, request_id="inner") as inner:
            second = await inner.tasks.run_background(job())
        third = await outer.tasks.run_background(job())
    release.set()
    ids = [(await rt.wait(t, timeout=5))["result"]["request_id"] for t in (first, second, third)]
    assert ids == ["outer", "inner", "outer"]


# ---------------------------------------------------------------- CTX-3


@pytest.mark.rule("CTX-3")
@pytest.mark.asyncio
async def test_subprocess_from_a_task_carries_the_submitting_module(
    rt: Runtime, request_as: RequestAs, tmp_path: Path
) -> None:
    rules = [{"path": str(tmp_path)}, {"network": "api.example.com:443"}]
    rt.register_module("mod", access=rules)
    release = asyncio.Event()
    outputs: list[str] = []

    async with request_as(user=7, org=10, module="mod", request_id="r-3", key="s1") as sdk:

        async def job() -> None:
            await release.wait()
            done = await sdk.tasks.run_subprocess(["env", "-0"], check=True)
            outputs.append(done.stdout)

        task_id = await sdk.tasks.run_background(job())
    # another request of another module is active when the task runs its command
    async with request_as(user=99, org=99, module="other", request_id="r-other", key="x"):
        release.set()
        row = await rt.wait(task_id, timeout=5)
    assert row["status"] == "completed", row["error"]
    assert sandbox_of(outputs[0]) == {
        "MODULE_SDK_MODULE": "mod",
        "MODULE_SDK_SUBJECT_KIND": "module",
        "MODULE_SDK_ACCESS": json.dumps(rules),
        "MODULE_SDK_USER_ID": "7",
        "MODULE_SDK_ORGANIZATION_ID": "10",
        "MODULE_SDK_SESSION_KEY": "s1",
        "MODULE_SDK_REQUEST_ID": "r-3",
    }


@pytest.mark.rule("CTX-3")
@pytest.mark.asyncio
async def test_the_submitting_modules_sandbox_rules_apply_in_the_task(
    rt: Runtime, request_as: RequestAs, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    rt.register_module("mod", access=[{"path": str(allowed)}])

    async with request_as(module="mod") as sdk:

        async def job(cwd: Path) -> str:
            done = await sdk.tasks.run_subprocess(["pwd", "-P"], cwd=cwd, check=True)
            return str(done.stdout.strip())

        inside = await sdk.tasks.run_background(job(allowed))
        outside = await sdk.tasks.run_background(job(tmp_path))
    ok, refused = await rt.wait(inside, timeout=5), await rt.wait(outside, timeout=5)
    assert ok["status"] == "completed", ok["error"]
    assert ok["result"] == str(allowed.resolve())
    assert refused["status"] == "failed"
    assert "outside the paths module 'mod' may use" in refused["error"]


# ---------------------------------------------------------------- CTX-4


@pytest.mark.rule("CTX-4")
@pytest.mark.asyncio
async def test_no_request_gives_a_synthetic_context(rt: Runtime) -> None:
    sdk = rt.sdk(session=make_session(user=7, org=10, key="s1"), module="mod")

    async def job() -> dict[str, Any] | None:
        return context_now()

    assert current_request() is None
    task_id = await sdk.tasks.run_background(job())
    row = await rt.wait(task_id, timeout=5)
    assert row["status"] == "completed", row["error"]
    assert row["result"] == {
        "request_id": f"task:{task_id}",
        "user_id": 7,
        "organization_id": 10,
        "module": "mod",
        "session_key": "s1",
    }


@pytest.mark.rule("CTX-4")
@pytest.mark.asyncio
async def test_each_task_gets_its_own_synthetic_request_id(rt: Runtime) -> None:
    sdk = rt.sdk(session=make_session(user="u", org=None, key=None), module="solo")

    async def job() -> dict[str, Any] | None:
        return context_now()

    ids = [await sdk.tasks.run_background(job()) for _ in range(3)]
    rows = [await rt.wait(t, timeout=5) for t in ids]
    assert [r["result"]["request_id"] for r in rows] == [f"task:{t}" for t in ids]
    assert {(r["result"]["user_id"], r["result"]["organization_id"]) for r in rows} == {("u", None)}


@pytest.mark.rule("CTX-4")
@pytest.mark.asyncio
async def test_subprocess_of_a_synthetic_context_task_carries_its_request_id(
    rt: Runtime,
) -> None:
    sdk = rt.sdk(session=make_session(user=7, org=10, key="s1"), module="mod")

    async def job() -> dict[str, str]:
        done = await sdk.tasks.run_subprocess(["env", "-0"], check=True)
        return sandbox_of(done.stdout)

    task_id = await sdk.tasks.run_background(job())
    row = await rt.wait(task_id, timeout=5)
    assert row["status"] == "completed", row["error"]
    assert row["result"]["MODULE_SDK_REQUEST_ID"] == f"task:{task_id}"
    assert row["result"]["MODULE_SDK_USER_ID"] == "7"
    assert row["result"]["MODULE_SDK_ORGANIZATION_ID"] == "10"
    assert row["result"]["MODULE_SDK_SESSION_KEY"] == "s1"
    assert row["result"]["MODULE_SDK_MODULE"] == "mod"
