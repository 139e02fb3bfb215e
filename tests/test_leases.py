"""Leases and durable writes (LEASE): real processes, signals, files and disk faults.

Split brain: a runtime process is stopped with SIGSTOP past its lease while another runtime
takes its tasks over, then continued with SIGCONT. Skew: a peer process whose wall clock is
60 s ahead. Identity: a SIGKILLed runtime and a live one in another PID namespace. Disk
faults: a runtime process whose file size limit (RLIMIT_FSIZE) makes SQLite's writes fail
with EFBIG, and a fault-injecting store at the port boundary for the precise cases. Lock:
another process holds the file's write lock while the runtime works.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import make_session
from taskbed import (
    Lease,
    MemoryStore,
    Runtime,
    SQLiteStore,
    StoreWriteError,
    TaskRecord,
    TaskStore,
)

SESSION = make_session(7, 10)
PYTHON = sys.executable


def sdk_of(rt: Runtime) -> Any:
    return rt.sdk(session=SESSION, module="mod")


def row_of(store: TaskStore, task_id: str) -> TaskRecord:
    row = store.get(task_id)
    assert row is not None, f"no row {task_id}"
    return row


@contextlib.asynccontextmanager
async def started(path: Path, **kwargs: Any) -> AsyncIterator[Runtime]:
    store = SQLiteStore(path)
    rt = Runtime(store, **kwargs)
    try:
        await rt.start()
        yield rt
    finally:
        await rt.stop()
        store.close()


class Child:
    """A child Python process that reports JSON lines on stdout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def read(self, timeout: float = 15.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if readable else ""
        if not line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
            pytest.fail(f"the child said nothing within {timeout} s; stderr:\n{err}")
        report: dict[str, Any] = json.loads(line)
        return report


@contextlib.contextmanager
def child(script: str, *args: str, prefix: tuple[str, ...] = ()) -> Iterator[Child]:
    with subprocess.Popen(
        [*prefix, PYTHON, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            yield Child(proc)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------- split brain: SIGSTOP


STOPPED_WORKER = """
    import asyncio, json, sys
    from taskbed import Runtime, SQLiteStore

    async def main(path):
        store = SQLiteStore(path)
        rt = Runtime(store, lease_seconds=1.0)
        await rt.start()
        conn = rt.connect(7, 10)
        sdk = rt.sdk(session={"user": {"id": 7, "organization_id": 10}}, module="mod")
        own = asyncio.get_running_loop().create_future()
        cancelled = asyncio.Event()

        async def job():
            task_id = await own
            try:
                for step in range(1, 100_000):
                    await sdk.tasks.update_progress(task_id, step / 100_000)
                    await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "done"

        task_id = await sdk.tasks.run_background(job(), "Import", task_key="import")
        own.set_result(task_id)
        while store.get(task_id).progress < 0.00005:
            await asyncio.sleep(0.01)
        print(json.dumps({"task": task_id, "runtime": rt.manager.runtime_id}), flush=True)

        while not rt.lease_lost:  # stopped here, and continued: until it finds out
            await asyncio.sleep(0.01)
        await asyncio.wait_for(cancelled.wait(), 5)
        heard = len(conn.messages)
        await asyncio.sleep(1.0)  # anything more would show up now
        job_after = asyncio.sleep(0)
        try:
            await sdk.tasks.run_background(job_after, "After", task_key="after")
            refused = None
        except Exception as exc:
            refused = type(exc).__name__
        print(json.dumps({
            "kinds": [next(iter(m)) for m in conn.messages],
            "progress": [m["backgroundTaskProgress"]["progress"] for m in conn.messages
                         if "backgroundTaskProgress" in m],
            "after_loss": len(conn.messages) - heard,
            "refused": refused,
        }), flush=True)
        await rt.stop()
        store.close()

    asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.rule("LEASE-2")
@pytest.mark.rule("LEASE-3")
@pytest.mark.rule("LEASE-4")
@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_runtime_stopped_past_its_lease_never_contradicts_the_store(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    with child(STOPPED_WORKER, str(path)) as worker:
        ready = worker.read()
        old_task, old_runtime = ready["task"], ready["runtime"]
        os.kill(worker.proc.pid, signal.SIGSTOP)
        time.sleep(1.5)  # past its 1 s lease
        async with started(path, lease_seconds=1.0) as rt:
            taken = row_of(rt.store, old_task)
            assert taken.status == "interrupted"  # recovery at start
            gate = asyncio.Event()
            tasks = sdk_of(rt).tasks
            new_task = await tasks.run_background(gate.wait(), "Import", task_key="import")
            assert new_task != old_task

            os.kill(worker.proc.pid, signal.SIGCONT)
            report = worker.read()

            # It never sent an outcome, and no progress beyond what the store holds.
            assert "backgroundTaskCompleted" not in report["kinds"]
            assert "backgroundTaskError" not in report["kinds"]
            assert max(report["progress"]) <= taken.progress
            assert report["after_loss"] == 0
            assert report["refused"] == "LeaseLostError"
            # Its row is as recovery left it; its lease was not re-created; the key is the
            # new task's alone.
            assert row_of(rt.store, old_task) == taken
            assert old_runtime not in {lease.runtime_id for lease in rt.store.leases()}
            active = [r for r in rt.store.find_by_key("import", 10) if r.status != "interrupted"]
            assert [r.id for r in active] == [new_task]
            assert rt.store.find_by_key("after", 10) == []
            gate.set()
            assert (await rt.wait(new_task, timeout=5))["status"] == "completed"
        assert worker.proc.wait(timeout=10) == 0


# ---------------------------------------------------------------- skew and identity


SKEWED_PEER = """
    import asyncio, json, sys, time
    import time_machine
    from taskbed import Runtime, SQLiteStore

    async def main(path):
        store = SQLiteStore(path)
        async with Runtime(store, lease_seconds=0.5) as rt:  # recovery at start and each 1/6 s
            await asyncio.sleep(2.0)
        store.close()
        print(json.dumps({"wall": time.time()}), flush=True)

    with time_machine.travel(time.time() + 60, tick=True):  # this process's clock: 60 s ahead
        asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.rule("LEASE-5")
@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_peer_whose_clock_is_a_minute_ahead_takes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    gate = asyncio.Event()
    async with started(path, lease_seconds=1.0) as rt:
        task = await sdk_of(rt).tasks.run_background(gate.wait(), "Long import")
        with child(SKEWED_PEER, str(path)) as peer:
            report = await asyncio.get_running_loop().run_in_executor(None, peer.read)
            assert report["wall"] > time.time() + 50  # its clock was ahead
        assert row_of(rt.store, task).status == "running"
        gate.set()
        assert (await rt.wait(task, timeout=5))["status"] == "completed"


HOLDING_PEER = """
    import asyncio, json, os, sys
    from taskbed import Runtime, SQLiteStore

    async def main(path, lease_seconds):
        store = SQLiteStore(path)
        rt = Runtime(store, lease_seconds=float(lease_seconds))
        await rt.start()
        sdk = rt.sdk(session={"user": {"id": 7, "organization_id": 10}}, module="mod")
        task_id = await sdk.tasks.run_background(asyncio.Event().wait(), "Held", task_key="k")
        while store.get(task_id).status != "running":
            await asyncio.sleep(0.005)
        print(json.dumps({"task": task_id, "pid": os.getpid()}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.rule("LEASE-6")
@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_killed_runtime_keeps_its_tasks_until_its_lease_runs_out(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with child(HOLDING_PEER, str(path), "2.0") as peer:
        task = peer.read()["task"]
        peer.proc.kill()
        peer.proc.wait(timeout=5)
    killed_at = time.monotonic()
    async with started(path, lease_seconds=2.0) as rt:
        assert rt.manager is not None
        # Its process is gone, plain to see on this host; its lease is not: that decides.
        assert row_of(rt.store, task).status == "running"
        await asyncio.sleep(max(0.0, killed_at + 3.0 - time.monotonic()))
        # Its lease ran out: the heartbeat's recovery took the task.
        assert row_of(rt.store, task).status == "interrupted"
        assert await rt.manager.recover() == []


@pytest.mark.rule("LEASE-6")
@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_live_runtime_in_another_pid_namespace_is_alive(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    # unshare: the peer runs in a PID namespace of its own, with this host's name; its process
    # id means nothing here.
    # --kill-child: the peer is its namespace's init; killing unshare must take it along.
    unshared = ("unshare", "--pid", "--fork", "--kill-child")
    with child(HOLDING_PEER, str(path), "1.0", prefix=unshared) as peer:
        ready = peer.read()
        assert ready["pid"] != peer.proc.pid
        async with started(path, lease_seconds=1.0) as rt:
            await asyncio.sleep(2.5)  # several heartbeats and recoveries of both
            assert rt.manager is not None
            assert await rt.manager.recover() == []
            assert row_of(rt.store, ready["task"]).status == "running"
            duplicate = asyncio.sleep(0)
            assert await sdk_of(rt).tasks.run_background(duplicate, task_key="k") == ready["task"]


# ---------------------------------------------------------------- disk faults: EFBIG


FULL_DISK = """
    import asyncio, json, os, resource, signal, sys
    from taskbed import Runtime, SQLiteStore, StoreWriteError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG

    async def main(path):
        store = SQLiteStore(path, retry_for=0.5)
        rt = Runtime(store, lease_seconds=1.5)
        await rt.start()
        sdk = rt.sdk(session={"user": {"id": 7, "organization_id": 10}}, module="mod")
        report = {}
        own = asyncio.get_running_loop().create_future()
        gate = asyncio.Event()
        big = "x" * 3_000_000

        async def job():
            task_id = await own
            try:
                await sdk.tasks.update_progress(task_id, 0.5, checkpoint={"blob": big})
                report["progress"] = "stored"
            except StoreWriteError as exc:
                report["progress"] = "StoreWriteError: " + str(exc)
            await gate.wait()
            return {"size": len(big), "blob": big}

        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # 1 MiB per file
        task_id = await sdk.tasks.run_background(job(), "Export")
        own.set_result(task_id)
        while "progress" not in report:
            await asyncio.sleep(0.01)
        report["progress_stored"] = store.get(task_id).progress
        gate.set()
        try:
            row = await asyncio.wait_for(rt.wait(task_id), 30)
            report["wait"] = row["status"]
        except StoreWriteError:
            report["wait"] = "StoreWriteError"
        except TimeoutError:
            report["wait"] = "hung"
        report["status_during"] = store.get(task_id).status

        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the fault clears
        for _ in range(300):
            if store.get(task_id).status == "completed":
                break
            await asyncio.sleep(0.05)
        row = await asyncio.wait_for(rt.wait(task_id), 30)
        report["after"] = [row["status"], row["result"]["size"]]
        conn = rt.connect(7, 10)  # offline all along: the outcome was kept for the owner
        report["kept"] = [next(iter(m)) for m in conn.messages]
        await rt.stop()
        store.close()
        report["task"] = task_id
        print(json.dumps(report), flush=True)

    asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.rule("LEASE-7")
@pytest.mark.rule("LEASE-8")
@pytest.mark.slow
def test_a_full_disk_loses_nothing_and_never_hangs(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with child(FULL_DISK, str(path)) as worker:
        report = worker.read(timeout=90)
    assert report["progress"].startswith("StoreWriteError: could not write to the task store")
    assert report["progress_stored"] == 0.0
    assert report["wait"] == "StoreWriteError"  # it raised; it did not hang
    assert report["status_during"] == "running"  # what the store held
    assert report["after"] == ["completed", 3_000_000]
    assert report["kept"] == ["backgroundTaskCompleted"]
    reopened = SQLiteStore(path)
    try:
        row = row_of(reopened, report["task"])
        assert (row.status, row.result["size"]) == ("completed", 3_000_000)
    finally:
        reopened.close()


# ---------------------------------------------------------------- disk faults: the port


class FaultyStore(MemoryStore):
    """A MemoryStore whose writes fail while ``broken`` (a fault at the port boundary)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.failed = 0

    def _fail(self) -> None:
        if self.broken:
            self.failed += 1
            raise StoreWriteError("could not write to the task store: disk I/O error")

    async def update(
        self, task_id: str, changes: dict[str, object], lease: Lease, **kw: Any
    ) -> bool:
        self._fail()
        return await super().update(task_id, changes, lease, **kw)

    async def release(self, lease: Lease) -> None:
        self._fail()
        await super().release(lease)


@pytest.mark.rule("LEASE-7")
@pytest.mark.asyncio
async def test_progress_that_cannot_be_stored_raises_and_sends_nothing() -> None:
    store = FaultyStore()
    async with Runtime(store) as rt:
        conn = rt.connect(7, 10)
        gate = asyncio.Event()
        task = await sdk_of(rt).tasks.run_background(gate.wait(), "Job")
        await asyncio.sleep(0.01)
        store.broken = True
        with pytest.raises(StoreWriteError, match="disk I/O error"):
            await sdk_of(rt).tasks.update_progress(task, 0.5, checkpoint={"page": 2}, label="L")
        store.broken = False
        row = row_of(store, task)
        assert (row.progress, row.checkpoint, row.label) == (0.0, {}, "Job")
        assert [next(iter(m)) for m in conn.messages] == ["backgroundTaskStarted"]
        await sdk_of(rt).tasks.update_progress(task, 0.5)  # the fault cleared: it works
        assert row_of(store, task).progress == 0.5
        gate.set()


@pytest.mark.rule("LEASE-7")
@pytest.mark.rule("LEASE-8")
@pytest.mark.asyncio
async def test_an_end_that_cannot_be_stored_is_retried_and_sent_once_stored() -> None:
    store = FaultyStore()
    async with Runtime(store, lease_seconds=0.3) as rt:
        conn = rt.connect(7, 10)
        gate = asyncio.Event()
        task = await sdk_of(rt).tasks.run_background(gate.wait(), "Job")
        await asyncio.sleep(0.01)
        store.broken = True
        gate.set()
        began = time.monotonic()
        with pytest.raises(StoreWriteError, match=r"ended 'completed', but the store could not"):
            await rt.wait(task, timeout=5)
        assert time.monotonic() - began < 1.0  # at once: never a hang
        assert row_of(store, task).status == "running"  # the store's word
        await asyncio.sleep(0.5)
        assert store.failed >= 2  # retried meanwhile
        assert "backgroundTaskCompleted" not in [next(iter(m)) for m in conn.messages]

        store.broken = False
        row = await _until_stored(rt, task)
        assert row["status"] == "completed"
        kinds = [next(iter(m)) for m in conn.messages]
        assert kinds.count("backgroundTaskCompleted") == 1


async def _until_stored(rt: Runtime, task: str) -> dict[str, Any]:
    for _ in range(200):
        with contextlib.suppress(StoreWriteError):
            return await rt.wait(task, timeout=5)
        await asyncio.sleep(0.02)
    raise AssertionError("the task's end was never stored")


@pytest.mark.rule("LEASE-8")
@pytest.mark.asyncio
async def test_a_runtime_stopping_with_unstored_ends_leaves_its_lease_to_run_out(
    tmp_path: Path,
) -> None:
    store = FaultyStore()
    rt = Runtime(store)
    await rt.start()
    gate = asyncio.Event()
    task = await sdk_of(rt).tasks.run_background(gate.wait(), "Job")
    await asyncio.sleep(0.01)
    store.broken = True
    gate.set()
    await asyncio.sleep(0.01)
    await rt.stop()
    # The store still says running, under a lease that is still there: a later recovery
    # (once the lease ran out) ends it interrupted, so the store never contradicts itself.
    assert row_of(store, task).status == "running"
    assert len(store.leases()) == 1
    assert math.isinf(store.leases()[0].expires_at)  # a private store: no one else to recover


# ---------------------------------------------------------------- the lock held elsewhere


LOCK_HOLDER = """
    import json, sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    print(json.dumps({"locked": True}), flush=True)
    time.sleep(float(sys.argv[2]))
    db.execute("ROLLBACK")
    print(json.dumps({"released": True}), flush=True)
"""


@pytest.mark.rule("LEASE-9")
@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_lock_held_by_another_process_never_blocks_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with started(path) as rt:
        gate = asyncio.Event()
        running = await sdk_of(rt).tasks.run_background(gate.wait(), "Running")
        await asyncio.sleep(0.05)
        worst = 0.0

        async def ticker() -> None:
            nonlocal worst
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                worst = max(worst, now - last)
                last = now

        ticking = asyncio.ensure_future(ticker())
        with child(LOCK_HOLDER, str(path), "1.5") as holder:
            await asyncio.get_running_loop().run_in_executor(None, holder.read)
            began = time.perf_counter()
            gate.set()  # its completion must wait for the lock: in the writer thread
            submitted = await sdk_of(rt).tasks.run_background(asyncio.sleep(0, "ok"), "New")
            waited = time.perf_counter() - began
            await asyncio.get_running_loop().run_in_executor(None, holder.read)
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
        assert waited > 0.5  # the insert did wait for the lock...
        assert worst < 0.25, f"...but the loop stood still for {worst:.3f} s"
        assert (await rt.wait(running, timeout=5))["status"] == "completed"
        assert (await rt.wait(submitted, timeout=5))["result"] == "ok"
        with contextlib.closing(sqlite3.connect(path)) as db:
            statuses = {r[0] for r in db.execute("SELECT status FROM tasks")}
        assert statuses == {"completed"}


@pytest.mark.rule("LEASE-8")
@pytest.mark.asyncio
async def test_a_submission_cancelled_while_its_insert_waits_leaves_no_active_row(
    tmp_path: Path,
) -> None:
    # The insert goes on in the writer thread after its caller gave up: the row it makes
    # must not be left pending with nobody to run it (it is ended right after, in order).
    path = tmp_path / "t.db"
    async with started(path) as rt:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            job = asyncio.sleep(0)
            submitting = asyncio.ensure_future(
                sdk_of(rt).tasks.run_background(job, "Given up", task_key="k")
            )
            await asyncio.sleep(0.2)  # the insert waits for the lock in the writer thread
            submitting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await submitting
            other.execute("ROLLBACK")
        finally:
            other.close()
        await asyncio.sleep(0.3)
        assert {row.status for row in rt.store.find_by_key("k", 10)} <= {"interrupted"}
        fresh = await sdk_of(rt).tasks.run_background(asyncio.sleep(0, "ok"), task_key="k")
        assert (await rt.wait(fresh, timeout=5))["result"] == "ok"
