"""DEDUP-1..DEDUP-6 at the SDK level, over every store (the ``rt`` fixture of conftest)."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from conftest import make_session
from taskbed import Connection, MemoryStore, ModuleSDK, Runtime, SQLiteStore, TaskStore, ui

RequestAs = Callable[..., AbstractAsyncContextManager[ModuleSDK]]


async def hold(release: asyncio.Event, value: Any = "done") -> Any:
    """A job that stays active until *release* is set."""
    await release.wait()
    return value


async def fail(release: asyncio.Event) -> None:
    await release.wait()
    raise RuntimeError("boom")


async def settle(predicate: Callable[[], bool], rounds: int = 2000) -> None:
    """Let the loop run until *predicate* holds (a bounded number of iterations)."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def started(conn: Connection) -> list[str]:
    return [
        m["backgroundTaskStarted"]["taskId"] for m in conn.messages if "backgroundTaskStarted" in m
    ]


def closed(coro: Coroutine[Any, Any, Any]) -> bool:
    return inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


def status(sdk: ModuleSDK, task_id: str, key: str = "k", org: Any = 10) -> str | None:
    for row in sdk.tasks.get_tasks_by_key(key, org):
        if row["id"] == task_id:
            return str(row["status"])
    return None


# ------------------------------------------------------------------ DEDUP-1


@pytest.mark.rule("DEDUP-1")
@pytest.mark.asyncio
async def test_duplicate_returns_the_active_task(rt: Runtime, request_as: RequestAs) -> None:
    conn = rt.connect(7, 10)
    release = asyncio.Event()
    async with request_as(user=7, org=10) as sdk:
        first = await sdk.tasks.run_background(hold(release), "First", task_key="k")
        duplicate = hold(release, "never")
        second = await sdk.tasks.run_background(duplicate, "Second", task_key="k")
    assert second == first
    assert closed(duplicate)
    assert [row["id"] for row in sdk.tasks.get_tasks_by_key("k", 10)] == [first]
    assert [row["id"] for row in sdk.tasks.list_user_tasks(7, 10)] == [first]
    assert started(conn) == [first]
    release.set()
    row = await rt.wait(first, timeout=5)
    assert (row["status"], row["result"], row["label"]) == ("completed", "done", "First")
    assert started(conn) == [first]


@pytest.mark.rule("DEDUP-1")
@pytest.mark.asyncio
async def test_another_user_of_the_organization_gets_the_same_task(
    rt: Runtime, request_as: RequestAs
) -> None:
    owner, other = rt.connect(7, 10), rt.connect(8, 10)
    release = asyncio.Event()
    async with request_as(user=7, org=10) as sdk:
        first = await sdk.tasks.run_background(hold(release), task_key="k")
    async with request_as(user=8, org=10, request_id="r2") as sdk8:
        duplicate = hold(release)
        second = await sdk8.tasks.run_background(duplicate, task_key="k")
    assert second == first
    assert closed(duplicate)
    assert sdk8.tasks.list_user_tasks(8, 10) == []
    assert started(owner) == [first]
    assert other.messages == []
    release.set()
    await rt.wait(first, timeout=5)


@pytest.mark.rule("DEDUP-1")
@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_registered_function_is_not_called_for_a_duplicate(
    rt: Runtime, request_as: RequestAs, kind: str
) -> None:
    calls: list[dict[str, Any]] = []

    async def async_job(**kwargs: Any) -> None:
        calls.append(kwargs)

    def sync_job(**kwargs: Any) -> None:
        calls.append(kwargs)

    rt.register_task("job", async_job if kind == "async" else sync_job)
    conn = rt.connect(7, 10)
    release = asyncio.Event()
    async with request_as() as sdk:
        first = await sdk.tasks.run_background(hold(release), task_key="k")
        second = await sdk.tasks.run_background("job", task_key="k", n=1)
    assert second == first
    release.set()
    await rt.wait(first, timeout=5)
    for _ in range(20):  # give a wrongly started job every chance to run
        await asyncio.sleep(0)
    assert calls == []
    assert started(conn) == [first]
    # once the key is free, the same call runs the function
    async with request_as() as sdk:
        third = await sdk.tasks.run_background("job", task_key="k", n=3)
    await rt.wait(third, timeout=5)
    assert calls == [{"n": 3}]


@pytest.mark.rule("DEDUP-1")
@pytest.mark.asyncio
@pytest.mark.parametrize("state", ["pending", "running", "waiting_confirmation"])
async def test_every_active_state_holds_the_key(
    rt: Runtime, request_as: RequestAs, state: str
) -> None:
    release = asyncio.Event()
    own_id: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    async with request_as() as sdk:

        async def job() -> Any:
            task_id = await own_id
            if state == "waiting_confirmation":
                return await sdk.tasks.request_confirmation(
                    task_id, ui.Builder().add(ui.Text("q", "Go on?")).add(ui.Button("yes", "Yes"))
                )
            await release.wait()
            return None

        first = await sdk.tasks.run_background(job(), task_key="k")
        own_id.set_result(first)
        if state != "pending":
            await settle(lambda: status(sdk, first) == state)
        assert status(sdk, first) == state
        duplicate = hold(release)
        assert await sdk.tasks.run_background(duplicate, task_key="k") == first
    assert closed(duplicate)
    assert len(sdk.tasks.get_tasks_by_key("k", 10)) == 1
    conn = rt.connect(7, 10)
    if state == "waiting_confirmation":
        await conn.send({"backgroundTaskResponse": {"taskId": first, "response": "Yes"}})
    release.set()
    assert (await rt.wait(first, timeout=5))["status"] == "completed"


# ------------------------------------------------------------------ DEDUP-2


@pytest.mark.rule("DEDUP-2")
@pytest.mark.asyncio
@pytest.mark.parametrize("outcome", ["completed", "failed", "interrupted"])
async def test_a_terminal_task_frees_its_key(
    rt: Runtime, request_as: RequestAs, outcome: str
) -> None:
    conn = rt.connect(7, 10)
    release = asyncio.Event()
    async with request_as() as sdk:
        job = fail(release) if outcome == "failed" else hold(release)
        first = await sdk.tasks.run_background(job, task_key="k")
    await settle(lambda: status(sdk, first) == "running")
    if outcome == "interrupted":
        await conn.send({"backgroundTaskCancel": {"taskId": first}})
    else:
        release.set()
    assert (await rt.wait(first, timeout=5))["status"] == outcome

    again = asyncio.Event()
    async with request_as() as sdk:
        second = await sdk.tasks.run_background(hold(again), task_key="k")
        assert second != first
        duplicate = hold(again)
        assert await sdk.tasks.run_background(duplicate, task_key="k") == second
    assert closed(duplicate)
    rows = sdk.tasks.get_tasks_by_key("k", 10)
    assert [(r["id"], r["status"]) for r in rows] == [(second, "pending"), (first, outcome)]
    assert started(conn) == [first, second]
    again.set()
    await rt.wait(second, timeout=5)


@pytest.mark.rule("DEDUP-2")
@pytest.mark.asyncio
async def test_a_task_interrupted_by_its_runtime_stopping_frees_its_key(
    rt: Runtime, request_as: RequestAs
) -> None:
    other = Runtime(store=rt.store)
    await other.start()
    try:
        async with other.request(session=make_session(), module="mod", request_id="x") as sdk:
            first = await sdk.tasks.run_background(hold(asyncio.Event()), task_key="k")
        await settle(lambda: status(sdk, first) == "running")
    finally:
        await other.stop()
    release = asyncio.Event()
    async with request_as() as sdk:
        assert status(sdk, first) == "interrupted"
        second = await sdk.tasks.run_background(hold(release), task_key="k")
    assert second != first
    release.set()
    await rt.wait(second, timeout=5)


@pytest.mark.rule("DEDUP-2")
@pytest.mark.asyncio
async def test_a_key_is_reusable_many_times_in_a_row(rt: Runtime, request_as: RequestAs) -> None:
    done: list[str] = []
    async with request_as() as sdk:
        for n in range(5):
            task_id = await sdk.tasks.run_background(hold(asyncio.Event(), n), task_key="k")
            assert task_id not in done
            rt_wait = asyncio.ensure_future(rt.wait(task_id, timeout=5))
            conn = rt.connect(7, 10)
            await conn.send({"backgroundTaskCancel": {"taskId": task_id}})
            conn.close()
            assert (await rt_wait)["status"] == "interrupted"
            done.append(task_id)
    assert [r["id"] for r in sdk.tasks.get_tasks_by_key("k", 10)] == done[::-1]


# ------------------------------------------------------------------ DEDUP-3


@pytest.mark.rule("DEDUP-3")
@pytest.mark.asyncio
@pytest.mark.parametrize(("org_a", "org_b"), [(10, 11), (None, 10), (10, None), (10, "10")])
async def test_the_same_key_in_another_organization_is_another_task(
    rt: Runtime, request_as: RequestAs, org_a: Any, org_b: Any
) -> None:
    release = asyncio.Event()
    async with request_as(user=7, org=org_a) as sdk_a:
        a = await sdk_a.tasks.run_background(hold(release), task_key="k")
    async with request_as(user=7, org=org_b, request_id="r2") as sdk_b:
        b = await sdk_b.tasks.run_background(hold(release), task_key="k")
        # and within each organization the key is still held
        duplicate = hold(release)
        assert await sdk_b.tasks.run_background(duplicate, task_key="k") == b
    assert a != b
    assert closed(duplicate)
    assert [r["id"] for r in sdk_a.tasks.get_tasks_by_key("k", org_a)] == [a]
    assert [r["id"] for r in sdk_b.tasks.get_tasks_by_key("k", org_b)] == [b]
    release.set()
    await rt.wait(a, timeout=5)
    await rt.wait(b, timeout=5)


@pytest.mark.rule("DEDUP-3")
@pytest.mark.asyncio
async def test_no_organization_matches_no_organization(rt: Runtime, request_as: RequestAs) -> None:
    release = asyncio.Event()
    async with request_as(user=7, org=None) as sdk7:
        a = await sdk7.tasks.run_background(hold(release), task_key="k")
    async with request_as(user=8, org=None, request_id="r2") as sdk8:
        duplicate = hold(release)
        b = await sdk8.tasks.run_background(duplicate, task_key="k")
    assert b == a
    assert closed(duplicate)
    assert [r["id"] for r in sdk8.tasks.get_tasks_by_key("k", None)] == [a]
    assert sdk8.tasks.get_tasks_by_key("k", 10) == []
    release.set()
    await rt.wait(a, timeout=5)


@pytest.mark.rule("DEDUP-3")
@pytest.mark.asyncio
async def test_the_organization_can_come_from_the_session_top_level(rt: Runtime) -> None:
    """A session may carry the organization next to the user; the scope is the same."""
    release = asyncio.Event()
    inner = make_session(7, 10)
    outer = {"user": {"id": 8}, "organization_id": 10}
    async with rt.request(session=inner, module="mod", request_id="r1") as sdk:
        a = await sdk.tasks.run_background(hold(release), task_key="k")
    async with rt.request(session=outer, module="mod", request_id="r2") as sdk:
        duplicate = hold(release)
        assert await sdk.tasks.run_background(duplicate, task_key="k") == a
    assert closed(duplicate)
    release.set()
    await rt.wait(a, timeout=5)


@pytest.mark.rule("DEDUP-3")
@pytest.mark.asyncio
async def test_keys_match_exactly(rt: Runtime, request_as: RequestAs) -> None:
    release = asyncio.Event()
    async with request_as() as sdk:
        ids = [
            await sdk.tasks.run_background(hold(release), task_key=key)
            for key in ["k", "K", "k ", "k_", "k%", "ké"]
        ]
    assert len(set(ids)) == 6
    release.set()
    for task_id in ids:
        await rt.wait(task_id, timeout=5)


# ------------------------------------------------------------------ DEDUP-4


@pytest.mark.rule("DEDUP-4")
@pytest.mark.asyncio
async def test_an_empty_key_means_no_key(rt: Runtime, request_as: RequestAs) -> None:
    conn = rt.connect(7, 10)
    release = asyncio.Event()
    async with request_as() as sdk:
        a = await sdk.tasks.run_background(hold(release), task_key="")
        b = await sdk.tasks.run_background(hold(release), task_key="")
        c = await sdk.tasks.run_background(hold(release))
        d = await sdk.tasks.run_background(hold(release), task_key=None)
    assert len({a, b, c, d}) == 4
    assert started(conn) == [a, b, c, d]
    rows = sdk.tasks.list_user_tasks(7, 10)
    assert {r["id"] for r in rows} == {a, b, c, d}
    assert all(r["taskKey"] is None for r in rows)
    assert sdk.tasks.get_tasks_by_key("", 10) == []
    release.set()
    for task_id in (a, b, c, d):
        await rt.wait(task_id, timeout=5)


# ------------------------------------------------------------------ DEDUP-5


BAD_KEYS = [10, 0, 1.5, b"k", b"", True, ["k"], ("k",), {"k": 1}]


@pytest.mark.rule("DEDUP-5")
@pytest.mark.asyncio
@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
async def test_a_non_str_key_raises_before_anything_is_created(
    rt: Runtime, request_as: RequestAs, key: Any
) -> None:
    conn = rt.connect(7, 10)
    async with request_as() as sdk:
        coro = hold(asyncio.Event())
        with pytest.raises(TypeError, match="task_key") as raised:
            await sdk.tasks.run_background(coro, task_key=key)
    assert isinstance(raised.value, ValueError)
    assert closed(coro)
    assert sdk.tasks.list_user_tasks(7, 10) == []
    assert conn.messages == []


@pytest.mark.rule("DEDUP-5")
@pytest.mark.asyncio
async def test_a_non_str_key_never_matches_a_str_holder(rt: Runtime, request_as: RequestAs) -> None:
    calls: list[int] = []
    rt.register_task("job", lambda: calls.append(1))
    release = asyncio.Event()
    async with request_as() as sdk:
        holder = await sdk.tasks.run_background(hold(release), task_key="10")
        with pytest.raises(ValueError, match="task_key"):
            await sdk.tasks.run_background("job", task_key=10)  # type: ignore[arg-type]
    assert [r["id"] for r in sdk.tasks.list_user_tasks(7, 10)] == [holder]
    release.set()
    await rt.wait(holder, timeout=5)
    assert calls == []


# ------------------------------------------------------------------ DEDUP-6


@pytest.mark.rule("DEDUP-6")
@pytest.mark.asyncio
async def test_concurrent_coroutine_submissions_create_one_task(
    rt: Runtime, request_as: RequestAs
) -> None:
    conn = rt.connect(7, 10)
    release = asyncio.Event()
    coros = [hold(release, n) for n in range(50)]
    async with request_as() as sdk:
        ids = await asyncio.gather(
            *(sdk.tasks.run_background(c, f"job {n}", task_key="k") for n, c in enumerate(coros))
        )
    assert len(set(ids)) == 1
    [row] = sdk.tasks.get_tasks_by_key("k", 10)
    assert row["id"] == ids[0]
    assert started(conn) == [ids[0]]
    assert sum(not closed(c) for c in coros) == 1  # the winner's coroutine is the one running
    release.set()
    final = await rt.wait(ids[0], timeout=5)
    assert final["result"] == int(final["label"].removeprefix("job "))
    assert all(closed(c) for c in coros)


@pytest.mark.rule("DEDUP-6")
@pytest.mark.parametrize("shared", ["sqlite-file", "memory-store-object"])
def test_concurrent_submissions_from_threads_create_one_task(tmp_path: Path, shared: str) -> None:
    """Several threads, each with its own event loop and Runtime, over one store."""
    threads = 6
    path = tmp_path / "tasks.db"
    memory = MemoryStore()
    start, submitted = threading.Barrier(threads), threading.Barrier(threads)
    release = threading.Event()

    async def held() -> str:
        while not release.is_set():
            await asyncio.sleep(0.005)
        return threading.current_thread().name

    async def submit(n: int) -> tuple[str, str, str]:
        store: TaskStore = SQLiteStore(path) if shared == "sqlite-file" else memory
        async with Runtime(store=store) as rt:
            async with rt.request(session=make_session(n), module="mod", request_id=f"r{n}") as sdk:
                await asyncio.to_thread(start.wait, 10)
                task_id = await sdk.tasks.run_background(held(), task_key="k")
            await asyncio.to_thread(submitted.wait, 10)  # the holder stays active until all did
            release.set()
            row = await rt.wait(task_id, timeout=10)
        if shared == "sqlite-file":
            store.close()
        return task_id, row["status"], row["result"]

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda n: asyncio.run(submit(n)), range(threads)))

    assert len({task_id for task_id, _, _ in results}) == 1
    assert {(s, r) for _, s, r in results} == {("completed", results[0][2])}
    check: TaskStore = SQLiteStore(path) if shared == "sqlite-file" else memory
    try:
        [row] = check.find_by_key("k", 10)
    finally:
        check.close()
    assert row.id == results[0][0]


CHILD = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from pathlib import Path
    from taskbed import Runtime, SQLiteStore

    db, sync = sys.argv[1], Path(sys.argv[2])

    async def held():
        while not (sync / "release").exists():
            await asyncio.sleep(0.005)
        return os.getpid()

    async def main():
        store = SQLiteStore(db)
        async with Runtime(store=store) as rt:
            session = {"user": {"id": os.getpid(), "organization_id": 10}}
            async with rt.request(session=session, module="mod", request_id="r") as sdk:
                (sync / f"ready-{os.getpid()}").touch()
                deadline = time.monotonic() + 20
                while not (sync / "go").exists() and time.monotonic() < deadline:
                    time.sleep(0.0005)  # spin: every process leaves the gate at once
                task_id = await sdk.tasks.run_background(held(), task_key="shared")
            print(task_id, flush=True)
            row = await rt.wait(task_id, timeout=20)
            print(row["status"], row["result"], flush=True)
        store.close()

    asyncio.run(main())
    """
)


@pytest.mark.rule("DEDUP-6")
@pytest.mark.slow
def test_concurrent_submissions_from_processes_create_one_task(tmp_path: Path) -> None:
    """Four OS processes share one SQLite file and submit one key at the same moment."""
    processes = 4
    db, sync = tmp_path / "tasks.db", tmp_path / "sync"
    sync.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db), str(sync)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(processes)
    ]
    try:
        deadline = time.monotonic() + 15
        while len(list(sync.glob("ready-*"))) < processes:
            assert time.monotonic() < deadline, "the child processes did not get ready"
            assert all(c.poll() is None for c in children), [c.communicate() for c in children]
            time.sleep(0.01)
        (sync / "go").touch()
        ids = []
        for child in children:
            assert child.stdout is not None
            ids.append(child.stdout.readline().strip())  # the holder is still active here
        (sync / "release").touch()
        outputs = [child.communicate(timeout=15) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    assert len(set(ids)) == 1, ids
    finals = {out.strip() for out, _ in outputs}
    assert len(finals) == 1, finals
    final_status, winner_pid = finals.pop().split()
    assert final_status == "completed"
    assert int(winner_pid) in {c.pid for c in children}
    store = SQLiteStore(db)
    try:
        [row] = store.find_by_key("shared", 10)
        assert (row.id, row.status, row.user_id) == (ids[0], "completed", int(winner_pid))
        assert len(store.find_by_key_prefix("", 10)) == 1
    finally:
        store.close()


# ---------------------------------------------------------------- DEDUP-7


@pytest.mark.rule("DEDUP-7")
@pytest.mark.asyncio
async def test_two_live_runtimes_on_one_file_share_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    release = asyncio.Event()
    async with Runtime(SQLiteStore(path)) as a, Runtime(SQLiteStore(path)) as b:
        sdk_a = a.sdk(session=make_session(7, 10), module="mod")
        sdk_b = b.sdk(session=make_session(8, 10), module="mod")
        held = await sdk_a.tasks.run_background(hold(release, "a"), task_key="import")
        duplicate = hold(release, "b")
        assert await sdk_b.tasks.run_background(duplicate, task_key="import") == held
        assert inspect.getcoroutinestate(duplicate) == inspect.CORO_CLOSED
        jobs = [hold(release, n) for n in range(6)]
        ids = await asyncio.gather(
            *(
                (sdk_a if n % 2 else sdk_b).tasks.run_background(job, task_key="race")
                for n, job in enumerate(jobs)
            )
        )
        assert len(set(ids)) == 1
        assert sum(inspect.getcoroutinestate(j) != inspect.CORO_CLOSED for j in jobs) == 1
        assert [r["id"] for r in sdk_b.tasks.get_tasks_by_key("race", 10)] == [ids[0]]
        release.set()
        assert (await a.wait(held, timeout=2))["result"] == "a"
    a.store.close()
    b.store.close()
