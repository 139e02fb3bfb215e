"""PostgresStore with several runtimes ("hosts") on one real PostgreSQL database.

The port-level contract runs in tests/test_store_contract.py; these tests are what only a
multi-host store has: messages that travel between runtimes through LISTEN/NOTIFY, the
offline queue shared by every host, dedup across hosts and processes, and recovery.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import kinds, make_session
from taskbed import Connection, Owner, PostgresStore, Runtime, ui
from taskbed._postgres_store import Listener

pytestmark = pytest.mark.asyncio

Hosts = Callable[[int], AbstractAsyncContextManager[list[Runtime]]]


@pytest.fixture
def hosts(postgres_dsn: str) -> Hosts:
    """``async with hosts(2) as (a, b):`` two started runtimes, each with its own store."""

    @asynccontextmanager
    async def open_hosts(n: int) -> AsyncIterator[list[Runtime]]:
        runtimes = [Runtime(store=PostgresStore(postgres_dsn)) for _ in range(n)]
        try:
            for runtime in runtimes:
                await runtime.start()
            yield runtimes
        finally:
            for runtime in runtimes:
                await runtime.stop()
                runtime.store.close()

    return open_hosts


async def connect(host: Runtime, *heard_by: Runtime, user: Any = 7, org: Any = 10) -> Connection:
    """A connection on *host*, once the runtimes *heard_by* know the owner is connected there.

    Until a runtime has heard (a notification, a few milliseconds), the started and progress
    messages it sends skip that owner; the durable ones never do.
    """
    conn = host.connect(user, org)
    async with asyncio.timeout(10):
        while not all(
            isinstance(h.store, PostgresStore) and h.store.connected_elsewhere(conn.owner)
            for h in heard_by
        ):
            await asyncio.sleep(0.005)
    return conn


async def receive(conn: Connection, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next *count* messages of *conn*, or a timeout naming what did arrive."""
    got: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < count:
                got.append(await conn.receive())
    except TimeoutError:
        raise AssertionError(f"got {kinds(got)} of {count} messages within {timeout}s") from None
    return got


async def quiet(conn: Connection, seconds: float = 0.3) -> list[dict[str, Any]]:
    """What else arrives within *seconds* (nothing, in a test that expects no duplicate)."""
    before = len(conn.messages)
    await asyncio.sleep(seconds)
    return conn.messages[before:]


async def test_an_owner_on_host_b_hears_every_message_of_a_task_on_host_a(hosts: Hosts) -> None:
    async with hosts(2) as (a, b):
        conn = await connect(b, a)
        release = asyncio.Event()

        async def job() -> str:
            await release.wait()
            return "done"

        async with a.request(session=make_session(), module="mod") as sdk:
            task_id = await sdk.tasks.run_background(job(), label="Sync")
            [started] = await receive(conn, 1)
            await sdk.tasks.update_progress(task_id, 0.5, checkpoint={"page": 2})
            [progress] = await receive(conn, 1)
            release.set()
        await a.wait(task_id)
        [completed] = await receive(conn, 1)
        assert started == {"backgroundTaskStarted": {"taskId": task_id, "label": "Sync",
                                                     "module": "mod"}}  # fmt: skip
        assert progress["backgroundTaskProgress"]["progress"] == 0.5
        assert progress["backgroundTaskProgress"]["checkpoint"] is True
        assert completed["backgroundTaskCompleted"]["result"] == "done"
        assert await quiet(conn) == []  # once: no duplicate from any host


async def test_messages_reach_only_the_owner_on_other_hosts(hosts: Hosts) -> None:
    async with hosts(2) as (a, b):
        owner = await connect(b, a)
        others = [b.connect(8, 10), b.connect(7, None), b.connect("7", 10), a.connect(8, 10)]
        async with a.request(session=make_session(), module="mod") as sdk:
            task_id = await sdk.tasks.run_background(asyncio.sleep(0, "x"))
        await a.wait(task_id)
        got = await receive(owner, 2)
        assert kinds(got) == ["backgroundTaskStarted", "backgroundTaskCompleted"]
        await quiet(owner)
        assert [conn.messages for conn in others] == [[], [], [], []]


async def test_an_owner_on_both_hosts_gets_each_message_once_on_each(hosts: Hosts) -> None:
    async with hosts(3) as (a, b, c):
        here, there = a.connect(7, 10), await connect(b, a)
        async with a.request(session=make_session(), module="mod") as sdk:
            ids = [await sdk.tasks.run_background(asyncio.sleep(0, n)) for n in range(5)]
        for task_id in ids:
            await a.wait(task_id)
        await receive(there, 10)
        await asyncio.sleep(0.3)
        for conn in (here, there):
            for task_id in ids:  # each message once, in order, on each connection
                mine = [m for m in conn.messages if task_of(m) == task_id]
                assert kinds(mine) == ["backgroundTaskStarted", "backgroundTaskCompleted"], conn
            done = [task_of(m) for m in conn.messages if "backgroundTaskCompleted" in m]
            assert done == ids  # in order
        assert c.channel.is_online(c.connect(9, 9).owner)


async def test_a_task_on_b_in_order_for_many_tasks(hosts: Hosts) -> None:
    async with hosts(2) as (a, b):
        conn = await connect(a, b)

        async def job(n: int) -> int:
            for step in range(3):
                await asyncio.sleep(0)
                await sdk.tasks.update_progress(ids[n], (step + 1) / 4)
            return n

        ids: list[str] = []
        async with b.request(session=make_session(), module="mod") as sdk:
            for n in range(10):  # each task reads its id from ids as it starts
                ids.append(await sdk.tasks.run_background(job(n)))  # noqa: PERF401
        for task_id in ids:
            await b.wait(task_id)
        got = await receive(conn, 50)
        for task_id in ids:
            mine = [m for m in got if next(iter(m.values()))["taskId"] == task_id]
            assert kinds(mine) == ["backgroundTaskStarted"] + ["backgroundTaskProgress"] * 3 + [
                "backgroundTaskCompleted"
            ]
            steps = [m["backgroundTaskProgress"]["progress"] for m in mine[1:4]]
            assert steps == [0.25, 0.5, 0.75]


async def test_dedup_across_hosts(hosts: Hosts) -> None:
    async with hosts(2) as (a, b):
        release = asyncio.Event()

        async def job() -> str:
            await release.wait()
            return "once"

        async with a.request(session=make_session(user=1), module="mod") as sdk_a:
            first = await sdk_a.tasks.run_background(job(), task_key="sync:10")
        duplicate = job()
        async with b.request(session=make_session(user=2), module="mod") as sdk_b:
            second = await sdk_b.tasks.run_background(duplicate, task_key="sync:10")
            rows = sdk_b.tasks.get_tasks_by_key("sync:10", organization_id=10)
        assert second == first
        assert [r["taskId"] for r in rows] == [first]
        assert duplicate.cr_frame is None  # closed, never run
        release.set()
        assert (await b.wait(first))["result"] == "once"
        async with b.request(session=make_session(user=2), module="mod") as sdk_b:
            third = await sdk_b.tasks.run_background(asyncio.sleep(0), task_key="sync:10")
        assert third != first  # a terminal task no longer holds the key
        await b.wait(third)


async def test_offline_owner_gets_the_outcome_on_another_host(hosts: Hosts) -> None:
    async with hosts(2) as (a, b):
        async with a.request(session=make_session(), module="mod") as sdk:
            ok = await sdk.tasks.run_background(asyncio.sleep(0, {"n": 1}))
            await a.wait(ok)
            failing = await sdk.tasks.run_background(_fail())
            await a.wait(failing)
        await asyncio.sleep(0)  # the buffered outcome is written at the end of the iteration
        conn = b.connect(7, 10)
        assert kinds(conn.messages) == ["backgroundTaskCompleted", "backgroundTaskError"]
        assert conn.messages[1]["backgroundTaskError"]["error"] == "boom"
        assert a.connect(7, 10).messages == []  # drained once, for every host


async def _fail() -> None:
    raise RuntimeError("boom")


async def test_the_owner_leaving_host_b_makes_messages_wait_for_them(hosts: Hosts) -> None:
    async with hosts(2) as (a, b):
        conn = await connect(b, a)
        release = asyncio.Event()

        async def job() -> str:
            await release.wait()
            return "later"

        async with a.request(session=make_session(), module="mod") as sdk:
            task_id = await sdk.tasks.run_background(job())
        await receive(conn, 1)
        conn.close()
        release.set()
        await a.wait(task_id)
        await asyncio.sleep(0.2)
        again = b.connect(7, 10)
        assert kinds(again.messages) == ["backgroundTaskCompleted"]


async def test_a_message_too_big_for_a_notification_still_arrives(hosts: Hosts) -> None:
    async with hosts(2) as (a, b):
        conn = await connect(b, a)
        big = {"rows": ["x" * 100] * 200, "text": "é🚀" * 2000}
        async with a.request(session=make_session(), module="mod") as sdk:
            task_id = await sdk.tasks.run_background(asyncio.sleep(0, big))
        await a.wait(task_id)
        _, completed = await receive(conn, 2)
        assert completed["backgroundTaskCompleted"]["result"] == big


async def test_presence_of_a_host_whose_database_connection_died_does_not_count(
    hosts: Hosts, postgres_dsn: str, request: pytest.FixtureRequest
) -> None:
    """A host that dies is connected nowhere as soon as PostgreSQL sees its backend go."""
    async with hosts(1) as (a,):
        ghost = PostgresStore(postgres_dsn)
        request.addfinalizer(ghost.close)
        ghost.join(Owner(7, 10))
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(backend) FROM taskbed_presence WHERE node = %s",
                (ghost.node,),
            )
        async with a.request(session=make_session(), module="mod") as sdk:
            task_id = await sdk.tasks.run_background(asyncio.sleep(0, "kept"))
        await a.wait(task_id)
        await asyncio.sleep(0)
        assert kinds(a.connect(7, 10).messages) == ["backgroundTaskCompleted"]
        ghost.close()  # its connection is gone: closing says so in the log, and finishes


async def test_recovery_interrupts_the_tasks_of_a_host_whose_lease_expired(
    postgres_dsn: str,
) -> None:
    gone = Runtime(store=PostgresStore(postgres_dsn), lease_seconds=0.3)
    await gone.start()
    async with gone.request(session=make_session(), module="mod") as sdk:
        task_id = await sdk.tasks.run_background(asyncio.sleep(3600), task_key="k")
    await asyncio.sleep(0)
    # The host freezes: its heartbeat stops, its lease runs out.
    assert gone.manager is not None
    assert gone.manager._heartbeat is not None
    gone.manager._heartbeat.cancel()
    await asyncio.sleep(0.5)
    survivor = Runtime(store=PostgresStore(postgres_dsn))
    try:
        await survivor.start()
        conn = survivor.connect(7, 10)
        row = await survivor.wait(task_id, timeout=5)
        assert row["status"] == "interrupted"
        assert "restart" in row["error"]
        assert kinds(conn.messages) == ["backgroundTaskError"]
        async with survivor.request(session=make_session(), module="mod") as sdk:
            fresh = await sdk.tasks.run_background(asyncio.sleep(0), task_key="k")
        assert fresh != task_id
        await survivor.wait(fresh)
    finally:
        await survivor.stop()
        survivor.store.close()
        await gone.stop()
        gone.store.close()


SUBMITTER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from taskbed import PostgresStore, Runtime

    async def main(dsn, start, stop):
        store = PostgresStore(dsn)
        async with Runtime(store=store) as rt:
            session = {"user": {"id": 7, "organization_id": 10}}
            async with rt.request(session=session, module="mod") as sdk:
                print("ready", flush=True)
                while not os.path.exists(start):
                    await asyncio.sleep(0.005)
                ids = [
                    await sdk.tasks.run_background(asyncio.sleep(3600), task_key="one")
                    for _ in range(50)
                ]
            print(json.dumps(ids), flush=True)
            while not os.path.exists(stop):  # alive until every process has submitted
                await asyncio.sleep(0.01)
        store.close()

    asyncio.run(main(*sys.argv[1:]))
    """
)


@pytest.mark.slow
async def test_eight_processes_fifty_same_key_submits_make_one_task(
    postgres_dsn: str, tmp_path: Path
) -> None:
    start, stop = tmp_path / "go", tmp_path / "stop"
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    argv = [sys.executable, "-c", SUBMITTER, postgres_dsn, str(start), str(stop)]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(8)
    ]
    try:
        for p in procs:  # every runtime started: the submissions then overlap
            assert p.stdout is not None
            assert (await asyncio.to_thread(p.stdout.readline)).strip() == "ready"
        start.touch()
        answers = [json.loads(await asyncio.to_thread(p.stdout.readline)) for p in procs]  # type: ignore[union-attr]
        stop.touch()
        outputs = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.communicate()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    ids = {task_id for answer in answers for task_id in answer}
    assert len(ids) == 1
    with psycopg.connect(postgres_dsn) as check:
        [(count,)] = check.execute("SELECT count(*) FROM taskbed_tasks").fetchall()
    assert count == 1


async def test_an_owner_on_host_b_cancels_a_task_running_on_host_a(hosts: Hosts) -> None:
    async with hosts(2) as (a, b):
        conn = await connect(b, a)
        async with a.request(session=make_session(), module="mod") as sdk:
            task_id = await sdk.tasks.run_background(asyncio.sleep(3600))
        await receive(conn, 1)
        await conn.send({"backgroundTaskCancel": {"taskId": task_id}})
        row = await a.wait(task_id, timeout=10)
        assert (row["status"], row["error"]) == ("interrupted", "interrupted: cancelled")
        [error] = await receive(conn, 1)
        assert error["backgroundTaskError"]["taskId"] == task_id


async def test_an_owner_on_host_b_answers_a_confirmation_on_host_a(hosts: Hosts) -> None:
    async with hosts(2) as (a, b):
        conn = await connect(b, a)
        stranger = await connect(b, a, user=8)

        async def job() -> Any:
            return await sdk.tasks.request_confirmation(
                ids[0], ui.Builder().add(ui.Text("q", "Publish?")).add(ui.Button("yes", "Yes"))
            )

        ids: list[str] = []
        async with a.request(session=make_session(), module="mod") as sdk:
            ids.append(await sdk.tasks.run_background(job()))
            _, asked = await receive(conn, 2)
            assert asked["backgroundTaskConfirmation"]["taskId"] == ids[0]
            answer = {"backgroundTaskResponse": {"taskId": ids[0], "response": {"ok": 1}}}
            await stranger.send(answer)  # not the owner: ignored on every host
            await asyncio.sleep(0.3)
            assert a.store.get(ids[0]).status == "waiting_confirmation"  # type: ignore[union-attr]
            await conn.send(answer)
            row = await a.wait(ids[0], timeout=10)
        assert (row["status"], row["result"]) == ("completed", {"ok": 1})
        [completed] = await receive(conn, 1)
        assert completed["backgroundTaskCompleted"]["result"] == {"ok": 1}


HOST = textwrap.dedent(
    """
    import asyncio, json, sys
    from taskbed import PostgresStore, Runtime

    async def main(dsn, name, count, lease):
        store = PostgresStore(dsn)
        async with Runtime(store=store, lease_seconds=float(lease)) as rt:
            session = {"user": {"id": 7, "organization_id": 10}}
            async with rt.request(session=session, module="mod") as sdk:
                async def job(n):
                    for step in (1, 2, 3):
                        await asyncio.sleep(0.01)
                        await sdk.tasks.update_progress(ids[n], step / 4, label=f"{name}{n}")
                    if name == "crash":
                        await asyncio.sleep(3600)
                    return f"{name}{n}"
                ids = []
                for n in range(int(count)):
                    ids.append(await sdk.tasks.run_background(job(n), f"{name}{n}"))
            print(json.dumps(ids), flush=True)
            for task_id in ids:
                await rt.wait(task_id)
        store.close()

    asyncio.run(main(*sys.argv[1:]))
    """
)


def spawn_host(dsn: str, name: str, count: int, lease: float = 30.0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOST, dsn, name, str(count), str(lease)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


def task_of(message: dict[str, Any]) -> str:
    return str(next(iter(message.values()))["taskId"])


@pytest.mark.slow
async def test_three_runtime_processes_behave_like_one_to_their_user(postgres_dsn: str) -> None:
    """Tasks run in two other processes; the owner, connected to a third, hears all, once."""
    store = PostgresStore(postgres_dsn)
    try:
        async with Runtime(store=store) as here:
            conn = here.connect(7, 10)
            procs = [spawn_host(postgres_dsn, name, 5) for name in ("a", "b")]
            try:
                outputs = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.communicate()
            for p, (_, err) in zip(procs, outputs, strict=True):
                assert p.returncode == 0, err
            ids = [task_id for out, _ in outputs for task_id in json.loads(out)]
            got = await receive(conn, 5 * len(ids))
            assert await quiet(conn, 1.0) == []
            for task_id in ids:
                mine = [m for m in got if task_of(m) == task_id]
                assert kinds(mine) == [
                    "backgroundTaskStarted",
                    *["backgroundTaskProgress"] * 3,
                    "backgroundTaskCompleted",
                ]
                steps = [m["backgroundTaskProgress"]["progress"] for m in mine[1:4]]
                assert steps == [0.25, 0.5, 0.75]
            rows = store.find_by_user(7, 10)
            assert sorted(r.id for r in rows) == sorted(ids)
            assert {r.status for r in rows} == {"completed"}
    finally:
        store.close()


@pytest.mark.slow
async def test_a_killed_host_is_recovered_by_a_live_one_and_its_owner_told(
    postgres_dsn: str,
) -> None:
    store = PostgresStore(postgres_dsn)
    try:
        async with Runtime(store=store, lease_seconds=0.6) as survivor:
            conn = survivor.connect(7, 10)
            victim = spawn_host(postgres_dsn, "crash", 2, lease=0.6)
            try:
                assert victim.stdout is not None
                line = await asyncio.to_thread(victim.stdout.readline)
                ids = json.loads(line)
                got = await receive(conn, 2 * 4)  # started and three progress, for each
                assert {task_of(m) for m in got} == set(ids)
            finally:
                victim.send_signal(signal.SIGKILL)
                await asyncio.to_thread(victim.communicate)  # reaped, its pipes closed
            for task_id in ids:
                row = await survivor.wait(task_id, timeout=10)
                assert row["status"] == "interrupted"
                assert "stopped unexpectedly" in row["error"]
            errors = await receive(conn, 2)
            assert kinds(errors) == ["backgroundTaskError"] * 2
            assert {task_of(m) for m in errors} == set(ids)
            assert await quiet(conn) == []
    finally:
        store.close()


async def test_the_listener_reconnects_when_its_connection_breaks(
    hosts: Hosts, postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with hosts(2) as (a, b):
        conn = await connect(b, a)
        listener = b.channel._listening
        assert isinstance(listener, Listener)
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (listener.backend_pid,))
        async with asyncio.timeout(10):
            while "reconnecting" not in caplog.text:
                await asyncio.sleep(0.01)
            while listener._conn.closed:
                await asyncio.sleep(0.01)
        async with a.request(session=make_session(), module="mod") as sdk:
            task_id = await sdk.tasks.run_background(asyncio.sleep(0, "after"))
        await a.wait(task_id)
        assert kinds(await receive(conn, 2)) == ["backgroundTaskStarted", "backgroundTaskCompleted"]


PAUSED = textwrap.dedent(
    """
    import asyncio, json, sys
    from taskbed import PostgresStore, Runtime

    async def main(dsn):
        store = PostgresStore(dsn)
        rt = Runtime(store=store, lease_seconds=0.6)
        await rt.start()
        sdk = rt.sdk(session={"user": {"id": 7, "organization_id": 10}}, module="mod")

        async def job():
            await asyncio.sleep(1.5)  # SIGSTOP arrives meanwhile
            return "late"

        task_id = await sdk.tasks.run_background(job(), "Paused", task_key="paused")
        print(json.dumps(task_id), flush=True)
        await asyncio.sleep(3)  # after SIGCONT: the heartbeat finds the lease gone
        print(json.dumps({"lost": rt.lease_lost}), flush=True)
        await rt.stop()
        store.close()

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.slow
async def test_a_host_paused_past_its_lease_is_fenced_and_its_late_end_never_heard(
    postgres_dsn: str,
) -> None:
    store = PostgresStore(postgres_dsn)
    try:
        async with Runtime(store=store, lease_seconds=0.6) as survivor:
            conn = survivor.connect(7, 10)
            paused = subprocess.Popen(
                [sys.executable, "-c", PAUSED, postgres_dsn],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                assert paused.stdout is not None
                task_id = json.loads(await asyncio.to_thread(paused.stdout.readline))
                paused.send_signal(signal.SIGSTOP)
                row = await survivor.wait(task_id, timeout=20)  # recovered meanwhile
                assert row["status"] == "interrupted"
                paused.send_signal(signal.SIGCONT)
                report = json.loads(await asyncio.to_thread(paused.stdout.readline))
                assert report == {"lost": True}  # it found out, and says so
            finally:
                paused.send_signal(signal.SIGCONT)
                _, err = await asyncio.to_thread(paused.communicate, timeout=60)
            assert paused.returncode == 0, err
            await asyncio.sleep(1.0)
            mine = [m for m in conn.messages if task_of(m) == task_id]
            # The recovery's error, once and last; nothing of the paused host's after it (its
            # started message, if it was still unsent at SIGSTOP, is fenced off too).
            assert kinds(mine) in (
                ["backgroundTaskStarted", "backgroundTaskError"],
                ["backgroundTaskError"],
            )
            after = store.get(task_id)
            assert after is not None
            assert (after.status, after.result) == ("interrupted", None)  # the late end: fenced
            async with survivor.request(session=make_session(), module="mod") as sdk:
                fresh = await sdk.tasks.run_background(asyncio.sleep(0), task_key="paused")
            assert fresh != task_id
            await survivor.wait(fresh)
    finally:
        store.close()


@pytest.mark.parametrize("plan_cache_mode", ["force_generic_plan", "force_custom_plan"])
async def test_a_fenced_write_finds_its_row_by_id(postgres_dsn: str, plan_cache_mode: str) -> None:
    """Every task write is fenced on the row's claim; its plan must still find the row by its
    id. Once psycopg prepares the statement, the server may use a generic plan, which (with
    the claim's bare columns) scanned ``taskbed_tasks_active_runner``: every active entry of
    the runtime, on every write."""
    from taskbed._postgres_store import _FENCE  # noqa: PLC0415 - the statement under test

    PostgresStore(postgres_dsn).close()  # the schema
    fence = _FENCE.replace("%(rid)s", "$2").replace("%(tok)s", "$3")
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(f"SET plan_cache_mode = {plan_cache_mode}")
        db.execute(
            "PREPARE write_task (text, text, bigint) AS UPDATE taskbed_tasks "
            f"SET updated_at = 0 WHERE id = $1 AND {fence}"
        )
        plan = "\n".join(str(r[0]) for r in db.execute("EXPLAIN EXECUTE write_task ('t', 'r', 1)"))
    assert "taskbed_tasks_id_key" in plan, plan
    assert "taskbed_tasks_active_runner" not in plan, plan
