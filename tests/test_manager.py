"""Manager (MGR) and recovery (REC): no task manager, crashed runtimes, live runtimes.

The recovery tests use real processes: a child Python process runs a runtime over a SQLite
file, holds a task, and is killed with SIGKILL (or kept alive) while the test process starts
another runtime over the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import select
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import make_session
from taskbed import Connection, MemoryStore, Runtime, SQLiteStore, TaskRecord, TaskStore, ui
from taskbed_harness import HarnessRuntime

# ---------------------------------------------------------------- helpers

SESSION = make_session(7, 10)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


def sdk_of(rt: Runtime) -> Any:
    return rt.sdk(session=SESSION, module="mod")


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


def row_of(store: TaskStore, task_id: str) -> TaskRecord:
    row = store.get(task_id)
    assert row is not None, f"no row {task_id}"
    return row


@contextlib.asynccontextmanager
async def started(
    path: Path, *, store_clock: FakeClock | None = None, **kwargs: Any
) -> AsyncIterator[Runtime]:
    """A runtime over the SQLite file at *path*; stopped and its store closed afterwards.

    *store_clock*: the store's clock (lease expiry), by default the database's own.
    """
    store = SQLiteStore(path, clock=store_clock)
    rt = Runtime(store, **kwargs)
    try:
        await rt.start()
        yield rt
    finally:
        await rt.stop()
        store.close()


async def parked(rt: Runtime, gate: asyncio.Event, *, key: str | None = "k") -> str:
    """Submit a task that waits on *gate*; return once it is running."""
    tid: str = await sdk_of(rt).tasks.run_background(gate.wait(), "Parked", task_key=key)
    await until(lambda: row_of(rt.store, tid).status == "running")
    return tid


CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from taskbed import Runtime, SQLiteStore

    async def die_right_after_completing():
        await asyncio.sleep(0.01)  # the "running" status is written by now
        # SIGKILL as the very next thing the loop does once this returns: after the task
        # is completed and its message queued, before anything buffered is written.
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGKILL)
        return {"n": 1}

    async def main(path, mode, lease_seconds):
        store = SQLiteStore(path)
        rt = Runtime(store, lease_seconds=float(lease_seconds))
        await rt.start()
        sdk = rt.sdk(
            session={"user": {"id": 7, "organization_id": 10}, "session_key": "s1"},
            module="mod",
        )
        if mode == "hold":
            tid = await sdk.tasks.run_background(
                asyncio.Event().wait(), "Forever", task_key="k"
            )
            while store.get(tid).status != "running":
                await asyncio.sleep(0.005)
        else:
            tid = await sdk.tasks.run_background(die_right_after_completing(), "Quick")
        print("ready", tid, rt.manager.runtime_id, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
    """
)


#: The lease of a child runtime: short, so that a killed child is gone after a short wait.
LEASE = 1.0


def outlive_lease(seconds: float = LEASE) -> None:
    """Wait (for real) until a lease of *seconds* taken before the call has run out."""
    time.sleep(seconds * 1.2)


class Child:
    def __init__(self, proc: subprocess.Popen[str], task_id: str, runtime_id: str) -> None:
        self.proc = proc
        self.task_id = task_id
        self.runtime_id = runtime_id

    def kill(self) -> None:
        """SIGKILL, and reap: an unreaped zombie still answers kill(pid, 0)."""
        self.proc.kill()
        self.proc.wait(timeout=5)


@contextlib.contextmanager
def child_runtime(
    path: Path, mode: str = "hold", ready_timeout: float = 15.0, lease_seconds: float = LEASE
) -> Iterator[Child]:
    """A child process with a runtime on the SQLite file *path*.

    ``hold``: its task "Forever" holds key "k" and runs until the child is killed.
    ``die``: its task "Quick" completes, and the child SIGKILLs itself at once.
    """
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode, str(lease_seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            readable, _, _ = select.select([proc.stdout], [], [], ready_timeout)
            line = proc.stdout.readline() if readable else ""
            if not line.startswith("ready "):
                proc.kill()
                _, err = proc.communicate(timeout=5)
                pytest.fail(f"child runtime not ready (stdout {line!r}); stderr:\n{err}")
            _, task_id, runtime_id = line.split()
            yield Child(proc, task_id, runtime_id)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)


# ---------------------------------------------------------------- MGR-1


async def _job() -> str:
    return "done"


def _assert_closed(coro: Any) -> None:
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del coro
        gc.collect()


async def _assert_not_initialized(rt: Runtime) -> None:
    sdk = sdk_of(rt)
    for kwargs in ({}, {"task_key": "k"}, {"label": "L"}):
        coro = _job()
        with pytest.raises(RuntimeError, match="TaskManager not initialized"):
            await sdk.tasks.run_background(coro, **kwargs)
        _assert_closed(coro)
    rt.register_task("named", _job)
    with pytest.raises(RuntimeError, match="TaskManager not initialized"):
        await sdk.tasks.run_background("named")
    builder = ui.Builder().add(ui.Text("q", "Go?")).add(ui.Button("yes", "Yes"))
    with pytest.raises(RuntimeError, match="TaskManager not initialized"):
        await asyncio.wait_for(sdk.tasks.request_confirmation("any-id", builder), 1)


@pytest.mark.rule("MGR-1")
@pytest.mark.asyncio
async def test_before_start_submission_and_confirmation_raise(store: TaskStore) -> None:
    rt = Runtime(store)
    conn = rt.connect(7, 10)
    async with rt.request(session=SESSION, module="mod", request_id="r1"):
        await _assert_not_initialized(rt)
    assert conn.messages == []
    assert store.find_by_user(7, 10) == []
    store.close()


async def _stopped_after_one_task(store: TaskStore) -> tuple[Runtime, Connection, str]:
    """A runtime that ran one keyed task to completion and was stopped; its owner connected."""
    rt = Runtime(store)
    conn = rt.connect(7, 10)
    await rt.start()
    tid = await sdk_of(rt).tasks.run_background(_job(), task_key="k")
    await rt.wait(tid, timeout=2)
    await rt.stop()
    conn.messages.clear()
    return rt, conn, tid


@pytest.mark.rule("MGR-1")
@pytest.mark.asyncio
async def test_after_stop_submission_and_confirmation_raise(store: TaskStore) -> None:
    rt, conn, tid = await _stopped_after_one_task(store)

    await _assert_not_initialized(rt)

    assert conn.messages == []
    assert [r.id for r in store.find_by_user(7, 10)] == [tid]
    store.close()


@pytest.mark.rule("MGR-1")
@pytest.mark.asyncio
async def test_manager_error_is_a_runtime_error_with_the_exact_phrase(store: TaskStore) -> None:
    rt = Runtime(store)
    coro = _job()
    with pytest.raises(RuntimeError) as info:
        await sdk_of(rt).tasks.run_background(coro)
    assert "TaskManager not initialized" in str(info.value)
    _assert_closed(coro)
    store.close()


# ---------------------------------------------------------------- MGR-2


async def _assert_no_ops(rt: Runtime, task_id: str) -> None:
    sdk = sdk_of(rt)
    assert await sdk.tasks.update_progress(task_id, 0.9, checkpoint={"x": 1}, label="L") is None
    assert await sdk.tasks.emit_progress(task_id, 0.9, label="L") is None
    assert await sdk.tasks.emit_progress(task_id) is None
    assert sdk.tasks.get_tasks_by_key("k", 10) == []
    assert sdk.tasks.get_tasks_by_key_prefix("", 10) == []
    assert sdk.tasks.get_tasks_by_key_prefix("k", 10) == []
    assert sdk.tasks.list_user_tasks(7, 10) == []


@pytest.mark.rule("MGR-2")
@pytest.mark.asyncio
async def test_without_a_manager_progress_is_a_no_op_and_queries_are_empty(
    tmp_path: Path,
) -> None:
    # Runtime A runs a task on the file; runtime B over the same file is never started.
    path = tmp_path / "t.db"
    gate = asyncio.Event()
    async with started(path) as a:
        tid = await parked(a, gate)
        before = row_of(a.store, tid)
        owner_on_b = None
        b_store = SQLiteStore(path)
        try:
            b = Runtime(b_store)
            owner_on_b = b.connect(7, 10)
            await _assert_no_ops(b, tid)
            assert b_store.find_by_key("k", 10) != []  # the rows are there; B just has no manager
        finally:
            b_store.close()
        assert row_of(a.store, tid) == before
        assert owner_on_b.messages == []
        gate.set()


@pytest.mark.rule("MGR-2")
@pytest.mark.asyncio
async def test_after_stop_progress_is_a_no_op_and_queries_are_empty(store: TaskStore) -> None:
    rt, conn, tid = await _stopped_after_one_task(store)
    before = store.get(tid)

    await _assert_no_ops(rt, tid)
    await _assert_no_ops(rt, "no-such-task")

    assert store.get(tid) == before
    assert conn.messages == []
    store.close()


# ---------------------------------------------------------------- REC-1


@pytest.mark.rule("REC-1")
@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_killed_runtimes_task_is_interrupted_at_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with child_runtime(path) as child:
        probe = SQLiteStore(path)
        try:
            assert row_of(probe, child.task_id).status == "running"
        finally:
            probe.close()
        child.kill()
    outlive_lease()  # liveness is the lease alone (LEASE-5)

    async with started(path) as rt:
        old = row_of(rt.store, child.task_id)
        assert old.status == "interrupted"
        assert old.error is not None
        assert "restart" in old.error
        assert child.runtime_id not in {lease.runtime_id for lease in rt.store.leases()}

        gate = asyncio.Event()
        new_id = await sdk_of(rt).tasks.run_background(gate.wait(), task_key="k")
        assert new_id != child.task_id
        rows = sdk_of(rt).tasks.get_tasks_by_key("k", 10)
        assert [r["taskId"] for r in rows] == [new_id, child.task_id]
        assert rows[1]["status"] == "interrupted"
        assert rows[1]["error"] == old.error
        assert child.task_id in [r["taskId"] for r in sdk_of(rt).tasks.list_user_tasks(7, 10)]
        gate.set()
        assert (await rt.wait(new_id, timeout=2))["status"] == "completed"


@pytest.mark.rule("REC-1")
@pytest.mark.asyncio
async def test_an_expired_lease_is_dead(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    ghost = await _ghost_task(path, runtime_id="ghost", ttl=-1)

    async with started(path) as rt:
        row = row_of(rt.store, ghost)
        assert row.status == "interrupted"
        assert row.error is not None
        assert "restart" in row.error
        assert "ghost" not in {lease.runtime_id for lease in rt.store.leases()}
        again = await sdk_of(rt).tasks.run_background(_job(), task_key="g")
        assert again != ghost


@pytest.mark.rule("REC-1")
@pytest.mark.asyncio
async def test_a_lease_that_expires_while_running_is_recovered_by_the_heartbeat(
    tmp_path: Path,
) -> None:
    # The store's clock (here a fake one both stores share) passes A's lease; B's recovery,
    # which runs at start and with each heartbeat, finds A's lease expired.
    path = tmp_path / "t.db"
    clock = FakeClock(time.time())
    gate = asyncio.Event()
    a_store = SQLiteStore(path, clock=clock)
    a = Runtime(a_store, lease_seconds=30)
    await a.start()
    try:
        tid = await parked(a, gate)
        b_store = SQLiteStore(path, clock=clock)
        async with Runtime(b_store, lease_seconds=30) as b:
            assert row_of(b.store, tid).status == "running"  # A's lease is still valid
            clock.t += 31
            assert b.manager is not None
            recovered = await b.manager.recover()
            assert [r.id for r in recovered] == [tid]
            assert row_of(b.store, tid).status == "interrupted"
        b_store.close()
    finally:
        gate.set()
        await a.stop()
        a_store.close()


async def _ghost_task(path: Path, *, runtime_id: str, ttl: float) -> str:
    """A running task row claimed under a lease of *ttl* seconds (negative: expired)."""
    store = SQLiteStore(path)
    try:
        lease = await store.acquire(runtime_id, ttl)
        now = time.time()
        record = TaskRecord(
            id=str(uuid.uuid4()), user_id=7, organization_id=10, module="mod", label="Ghost",
            task_key="g", status="running", progress=0.5, checkpoint={"at": 1}, result=None,
            error=None, created_at=now, updated_at=now,
        )  # fmt: skip
        _, created = await store.insert_or_get_active(record, lease)
        assert created
        return record.id
    finally:
        store.close()


# ---------------------------------------------------------------- REC-2


@pytest.mark.rule("REC-2")
@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_live_child_runtimes_task_is_never_touched(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with child_runtime(path) as child:
        async with started(path) as rt:
            conn = rt.connect(7, 10)
            row = row_of(rt.store, child.task_id)
            assert row.status == "running"
            assert child.runtime_id in {lease.runtime_id for lease in rt.store.leases()}

            coro = asyncio.sleep(0)
            same = await sdk_of(rt).tasks.run_background(coro, task_key="k")
            assert same == child.task_id
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
            assert conn.messages == []
            assert len(sdk_of(rt).tasks.get_tasks_by_key("k", 10)) == 1

            assert rt.manager is not None
            assert await rt.manager.recover() == []  # what each heartbeat runs
            assert row_of(rt.store, child.task_id).status == "running"

            child.kill()  # now it is gone: once its lease ran out, recovery takes its task
            assert await rt.manager.recover() == []
            await asyncio.sleep(LEASE * 1.2)
            assert [r.id for r in await rt.manager.recover()] == [child.task_id]
            assert row_of(rt.store, child.task_id).status == "interrupted"

        assert child.proc.returncode is not None


@pytest.mark.rule("REC-2")
@pytest.mark.slow
@pytest.mark.asyncio
async def test_stopping_a_second_runtime_leaves_the_live_childs_task_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    with child_runtime(path) as child:
        async with started(path):
            pass
        probe = SQLiteStore(path)
        try:
            assert row_of(probe, child.task_id).status == "running"
            assert child.runtime_id in {lease.runtime_id for lease in probe.leases()}
        finally:
            probe.close()
        assert child.proc.poll() is None


@pytest.mark.rule("REC-2")
@pytest.mark.asyncio
async def test_two_runtimes_in_one_process_share_a_file(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    gate = asyncio.Event()
    async with started(path) as a:
        tid = await parked(a, gate)
        async with started(path) as b:
            b_conn = b.connect(7, 10)
            assert row_of(b.store, tid).status == "running"
            coro = asyncio.sleep(0)
            assert await sdk_of(b).tasks.run_background(coro, task_key="k") == tid
            assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
            assert b_conn.messages == []
            assert b.manager is not None
            assert await b.manager.recover() == []
        # B stopped: A's task is untouched and still finishes on A.
        assert row_of(a.store, tid).status == "running"
        gate.set()
        row = await a.wait(tid, timeout=2)
        assert row["status"] == "completed"


@pytest.mark.rule("REC-2")
@pytest.mark.asyncio
async def test_an_unexpired_lease_is_alive(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    ghost = await _ghost_task(path, runtime_id="remote", ttl=3600)
    async with started(path) as rt:
        row = row_of(rt.store, ghost)
        assert row.status == "running"
        assert row.error is None
        assert await sdk_of(rt).tasks.run_background(_job(), task_key="g") == ghost
        assert rt.manager is not None
        assert await rt.manager.recover() == []


# ---------------------------------------------------------------- REC-3


async def _fails() -> None:
    raise RuntimeError("boom")


@pytest.mark.rule("REC-3")
@pytest.mark.asyncio
async def test_queued_messages_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with started(path) as first:
        sdk = sdk_of(first)
        done = await sdk.tasks.run_background(_job(), "Done")
        await first.wait(done, timeout=2)
        failed = await sdk.tasks.run_background(_fails(), "Fails")
        await first.wait(failed, timeout=2)
        await sdk.tasks.update_progress(done, 0.5)  # never queued (and the task is terminal)

    async with started(path) as second:
        stranger = second.connect(8, 10)
        owner = second.connect(7, 10)
        assert [list(m) for m in owner.messages] == [
            ["backgroundTaskCompleted"],
            ["backgroundTaskError"],
        ]
        completed = owner.messages[0]["backgroundTaskCompleted"]
        error = owner.messages[1]["backgroundTaskError"]
        assert (completed["taskId"], completed["label"], completed["result"]) == (
            done,
            "Done",
            "done",
        )
        assert (error["taskId"], error["label"], error["error"]) == (failed, "Fails", "boom")
        assert stranger.messages == []
        assert second.connect(7, 10).messages == []  # delivered once

    async with started(path) as third:
        assert third.connect(7, 10).messages == []


@pytest.mark.rule("REC-3")
@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_crashed_runtimes_task_is_reported_to_the_owner_on_reconnect(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    with child_runtime(path) as child:
        child.kill()
        probe = SQLiteStore(path)
        try:
            [lease] = [x for x in probe.leases() if x.runtime_id == child.runtime_id]
        finally:
            probe.close()
    outlive_lease()

    async with started(path) as rt:
        assert row_of(rt.store, child.task_id).status == "interrupted"
        assert lease.runtime_id not in {x.runtime_id for x in rt.store.leases()}
        owner = rt.connect(7, 10)
        [message] = owner.messages
        body = message["backgroundTaskError"]
        assert body["taskId"] == child.task_id
        assert body["label"] == "Forever"
        assert "restart" in body["error"]
        assert rt.connect(7, 10).messages == []


@pytest.mark.rule("REC-3")
@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_completion_queued_just_before_a_crash_is_not_contradicted(
    tmp_path: Path,
) -> None:
    # The owner is offline, so the completion is queued; the runtime dies right after, before
    # what it buffered is written. The store may keep the completion (row completed, message
    # queued) or lose both (row recovered as interrupted): what it must never do is keep the
    # queued "completed" and then also report the recovered task as interrupted.
    path = tmp_path / "t.db"
    with child_runtime(path, mode="die") as child:
        assert child.proc.wait(timeout=5) == -signal.SIGKILL
    outlive_lease()
    async with started(path) as rt:
        row = row_of(rt.store, child.task_id)
        owner = rt.connect(7, 10)
        kinds = [next(iter(m)) for m in owner.messages]
        assert [m[k]["taskId"] for m, k in zip(owner.messages, kinds, strict=True)] == [
            child.task_id
        ]
        if row.status == "completed":
            assert kinds == ["backgroundTaskCompleted"]
            assert row.result == {"n": 1}
            assert owner.messages[0]["backgroundTaskCompleted"]["result"] == {"n": 1}
        else:
            assert row.status == "interrupted"
            assert kinds == ["backgroundTaskError"]
            assert row.error is not None
            assert "restart" in row.error


@pytest.mark.rule("REC-3")
@pytest.mark.asyncio
async def test_a_connected_owner_gets_the_recovery_message_at_once(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    ghost = await _ghost_task(path, runtime_id="ghost", ttl=-1)
    store = SQLiteStore(path)
    rt = Runtime(store)
    owner = rt.connect(7, 10)
    try:
        await rt.start()
        [message] = owner.messages
        assert message["backgroundTaskError"]["taskId"] == ghost
    finally:
        await rt.stop()
        store.close()


# ---------------------------------------------------------------- MGR-3, MGR-4


@pytest.mark.rule("MGR-3")
@pytest.mark.rule("MGR-4")
@pytest.mark.parametrize("runtime_class", [Runtime, HarnessRuntime], ids=["reference", "fake"])
@pytest.mark.asyncio
async def test_stop_interrupts_running_tasks_tells_their_owner_and_waits_for_them(
    tmp_path: Path, runtime_class: type[Runtime]
) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    rt = runtime_class(store)
    await rt.start()
    conn = rt.connect(7, 10)
    started, seen = asyncio.Event(), []

    async def long_job() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            await asyncio.sleep(0)  # cleanup that takes a step of its own
            seen.append("cleaned up")

    tid = await sdk_of(rt).tasks.run_background(long_job(), "Long")
    await started.wait()
    await rt.stop()
    assert seen == ["cancelled", "cleaned up"]  # MGR-4: ended before stop() returned
    errors = [m["backgroundTaskError"] for m in conn.messages if "backgroundTaskError" in m]
    assert [(e["taskId"], e["label"]) for e in errors] == [(tid, "Long")]  # MGR-3
    assert "stopped" in errors[0]["error"]
    assert row_of(store, tid).status == "interrupted"
    store.close()


# ---------------------------------------------------------------- REC-4


@pytest.mark.rule("REC-4")
@pytest.mark.asyncio
async def test_a_peer_started_beside_a_runtime_never_takes_its_tasks(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    clock = FakeClock(1000.0)
    gate = asyncio.Event()
    async with started(path, clock=clock, store_clock=clock, lease_seconds=3.0) as a:
        mine = await parked(a, gate)
        async with started(path, clock=clock, store_clock=clock, lease_seconds=3.0) as b:
            theirs = await parked(b, gate, key="theirs")
            for _ in range(5):  # many lease periods; both sides refresh and sweep
                clock.t += 2.0
                for rt in (a, b):
                    assert rt.manager is not None
                    assert rt.manager.lease is not None
                    renewed = await rt.store.renew(rt.manager.lease, 3.0)
                    assert renewed is not None
                    rt.manager.lease = renewed
                assert a.manager is not None
                assert b.manager is not None
                assert await a.manager.recover() == []
                assert await b.manager.recover() == []
            assert (row_of(a.store, mine).status, row_of(a.store, theirs).status) == (
                "running", "running",
            )  # fmt: skip
            gate.set()
            assert (await b.wait(theirs, timeout=2))["status"] == "completed"
        assert (await a.wait(mine, timeout=2))["status"] == "completed"


class _LateAnswerStore(MemoryStore):
    """Answers each write a few loop iterations after making it, as the SQL stores do (their
    answer reaches the loop through a callback, and their reader sees the row meanwhile)."""

    async def update(self, *args: Any, **kwargs: Any) -> bool:
        changed = await super().update(*args, **kwargs)
        for _ in range(3):
            await asyncio.sleep(0)
        return changed


@pytest.mark.rule("BG-11")
@pytest.mark.asyncio
async def test_wait_returns_once_the_end_of_a_task_cancelled_unstarted_is_published() -> None:
    """A task cancelled before its first step is ended by a task of its own; ``rt.wait``
    waits for that end to be published, not only for the store to hold it (BG-11 once
    failed on PostgreSQL under load: the outcome arrived after ``rt.wait`` returned)."""
    async with Runtime(store=_LateAnswerStore()) as rt:
        conn = rt.connect(7, 10)
        sdk = rt.sdk(session=make_session(), module="mod")
        task_id = await sdk.tasks.run_background(asyncio.sleep(10))
        await conn.send({"backgroundTaskCancel": {"taskId": task_id}})  # before its first step
        done = await rt.wait(task_id)
        assert done["status"] == "interrupted"
        assert [next(iter(m)) for m in conn.messages] == [
            "backgroundTaskStarted",
            "backgroundTaskError",
        ]
