"""The virtual clock and its event loop: time jumps when idle, never while a thread runs.

The loops are driven by hand (``loop.run_until_complete(main())``), not through
pytest-asyncio, so these tests pin the loop's own behaviour.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import freezegun
import pytest
import time_machine

import taskbed
from taskbed_harness._clock import (
    DEFAULT_START,
    DeadlockError,
    FreezegunConflictError,
    VirtualClock,
    VirtualEventLoop,
    new_virtual_loop,
)

T = TypeVar("T")

START = 1767225600.0  # 2026-01-01T00:00:00Z


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def loop(clock: VirtualClock) -> Iterator[VirtualEventLoop]:
    loop = new_virtual_loop(clock)
    yield loop
    if not loop.is_closed():
        loop.run_until_complete(loop.shutdown_default_executor())
        assert not asyncio.all_tasks(loop)
        loop.close()


def run(loop: VirtualEventLoop, main: Callable[[], Awaitable[T]]) -> T:
    async def wrapper() -> T:
        return await main()

    return loop.run_until_complete(wrapper())


# ---------------------------------------------------------------- the clock itself


def test_clock_implements_the_taskbed_clock_port(clock: VirtualClock) -> None:
    assert isinstance(clock, taskbed.Clock)
    assert clock.now() == START
    assert clock.now_ns() == 1767225600 * 10**9
    assert clock.monotonic() == 0.0
    assert clock.now_datetime() == DEFAULT_START == datetime(2026, 1, 1, tzinfo=UTC)
    assert clock.autojump is True


def test_clock_start_is_configurable() -> None:
    assert VirtualClock(start=1_000_000_000.5).now() == 1_000_000_000.5
    assert VirtualClock(start=datetime(2020, 2, 29, 12, tzinfo=UTC)).now() == 1582977600.0
    with pytest.raises(ValueError, match=r"aware datetime"):
        VirtualClock(start=datetime(2020, 1, 1))


def test_autojump_disabled_is_scoped(clock: VirtualClock) -> None:
    with clock.autojump_disabled():
        assert clock.autojump is False
        with clock.autojump_disabled():
            assert clock.autojump is False
        assert clock.autojump is False
    assert clock.autojump is True
    clock.autojump = False
    with clock.autojump_disabled():
        pass
    assert clock.autojump is False


def test_the_loop_reads_the_clock(loop: VirtualEventLoop, clock: VirtualClock) -> None:
    assert loop.clock is clock
    assert isinstance(loop, asyncio.SelectorEventLoop)
    assert loop.time() == 0.0
    fresh = new_virtual_loop()
    assert isinstance(fresh.clock, VirtualClock)
    assert fresh.clock is not clock
    fresh.close()


# ---------------------------------------------------------------- autojump


def test_an_hour_of_sleep_takes_well_under_a_second(
    loop: VirtualEventLoop, clock: VirtualClock
) -> None:
    run(loop, lambda: asyncio.sleep(0))  # warm up: time-machine patches on the first run

    async def an_hour_in_one_go() -> None:
        await asyncio.sleep(3600)

    async def an_hour_minute_by_minute() -> None:
        for _ in range(60):
            await asyncio.sleep(60)

    wall = time.perf_counter()
    run(loop, an_hour_in_one_go)
    run(loop, an_hour_minute_by_minute)
    elapsed = time.perf_counter() - wall
    assert elapsed < 0.5, f"two virtual hours took {elapsed:.3f} s of wall time"
    assert loop.time() == 7200.0
    assert clock.now() == START + 7200


def test_an_hour_second_by_second_stays_fast(loop: VirtualEventLoop) -> None:
    async def main() -> None:
        for _ in range(3600):
            await asyncio.sleep(1)

    wall = time.perf_counter()
    run(loop, main)
    elapsed = time.perf_counter() - wall
    assert loop.time() == 3600.0
    assert elapsed < 2.0, f"3600 jumps took {elapsed:.3f} s of wall time"


def _deadline_order(seed: int) -> list[tuple[int, float]]:
    rng = random.Random(seed)
    durations = [rng.uniform(0, 3600) for _ in range(1000)]
    loop = new_virtual_loop()
    finished: list[tuple[int, float]] = []

    async def sleeper(i: int) -> None:
        await asyncio.sleep(durations[i])
        finished.append((i, loop.time()))

    async def main() -> None:
        await asyncio.gather(*(sleeper(i) for i in range(1000)))

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    expected = sorted(range(1000), key=durations.__getitem__)
    assert [i for i, _ in finished] == expected
    for i, at in finished:
        assert abs(at - durations[i]) <= 1e-9  # each wakes at its own deadline, to the ns
    return finished


def test_a_thousand_sleepers_wake_in_deadline_order_identically_each_run() -> None:
    assert _deadline_order(2026) == _deadline_order(2026)


def test_a_timeout_around_a_shorter_sleep_does_not_fire_early(loop: VirtualEventLoop) -> None:
    async def main() -> list[float]:
        seen = []
        async with asyncio.timeout(9):
            await asyncio.sleep(1)
        seen.append(loop.time())
        await asyncio.wait_for(asyncio.sleep(1), timeout=9)
        seen.append(loop.time())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                await asyncio.sleep(9)
        seen.append(loop.time())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(9), timeout=1)
        seen.append(loop.time())
        return seen

    assert run(loop, main) == [1.0, 2.0, 3.0, 4.0]


def test_a_tenth_of_a_second_ten_times_is_exactly_one_second(
    loop: VirtualEventLoop, clock: VirtualClock
) -> None:
    async def main() -> None:
        for _ in range(10):
            await asyncio.sleep(0.1)
        assert loop.time() == 1.0
        with clock.autojump_disabled():
            for _ in range(10):
                await clock.advance(0.1)
        assert loop.time() == 2.0
        assert clock.monotonic_ns() == 2 * 10**9
        assert clock.now() == START + 2.0

    run(loop, main)


def test_callbacks_scheduled_by_callbacks_settle_before_time_moves(
    loop: VirtualEventLoop,
) -> None:
    async def main() -> list[tuple[str, float]]:
        seen: list[tuple[str, float]] = []

        def chain(n: int) -> None:
            seen.append((f"soon {n}", loop.time()))
            if n < 50:
                loop.call_soon(chain, n + 1)

        loop.call_later(5, lambda: seen.append(("later", loop.time())))
        loop.call_soon(chain, 0)
        await asyncio.sleep(10)
        return seen

    seen = run(loop, main)
    assert seen[:51] == [(f"soon {n}", 0.0) for n in range(51)]
    assert seen[51:] == [("later", 5.0)]


# ---------------------------------------------------------------- threads, processes, I/O


def test_no_jump_while_an_executor_thread_runs(loop: VirtualEventLoop) -> None:
    async def main() -> tuple[float, float, float]:
        timer = asyncio.create_task(asyncio.sleep(10))
        await loop.run_in_executor(None, time.sleep, 0.05)
        after_thread = loop.time()
        # a timeout around a thread that outlives it in real time, not in virtual time
        await asyncio.wait_for(asyncio.to_thread(time.sleep, 0.05), timeout=0.001)
        after_to_thread = loop.time()
        await timer
        return after_thread, after_to_thread, loop.time()

    assert run(loop, main) == (0.0, 0.0, 10.0)


def test_no_jump_while_a_custom_executor_thread_runs(loop: VirtualEventLoop) -> None:
    finished = threading.Event()

    def work() -> str:
        time.sleep(0.05)
        finished.set()
        return "done"

    async def main() -> tuple[str, list[bool], float]:
        seen: list[bool] = []
        loop.call_later(1, lambda: seen.append(finished.is_set()))
        with ThreadPoolExecutor(1) as pool:
            result = await loop.run_in_executor(pool, work)
        await asyncio.sleep(2)
        return result, seen, loop.time()

    assert run(loop, main) == ("done", [True], 2.0)


def test_no_jump_while_the_thread_of_a_cancelled_call_still_runs(
    loop: VirtualEventLoop,
) -> None:
    finished = threading.Event()

    def work() -> None:
        time.sleep(0.05)
        finished.set()

    async def main() -> list[bool]:
        seen: list[bool] = []
        call = asyncio.ensure_future(loop.run_in_executor(None, work))
        await asyncio.sleep(0)
        call.cancel()  # the asyncio future is done; the thread is not
        loop.call_later(5, lambda: seen.append(finished.is_set()))
        await asyncio.sleep(6)
        return seen

    assert run(loop, main) == [True]


def test_no_jump_while_a_subprocess_runs(loop: VirtualEventLoop) -> None:
    async def main() -> tuple[int, bytes, float]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(0.1); print('out')",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(0.01):  # virtual: the process's real run does not count
            out, _ = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out, loop.time()

    assert run(loop, main) == (0, b"out\n", 0.0)


def test_real_socket_and_pipe_io_is_delivered(loop: VirtualEventLoop) -> None:
    a, b = socket.socketpair()
    read_fd, write_fd = os.pipe()

    def write_later(sock: socket.socket, data: bytes) -> None:
        time.sleep(0.02)
        sock.sendall(data)

    async def main() -> list[bytes]:
        got: list[bytes] = []
        reader, writer = await asyncio.open_connection(sock=a)
        b.sendall(b"ready\n")  # already there: the select(0) poll finds it
        got.append(await reader.readline())
        # written by a tracked thread while a long timeout is pending: no jump meanwhile
        sending = loop.run_in_executor(None, write_later, b, b"later\n")
        got.append(await asyncio.wait_for(reader.readline(), timeout=30))
        await sending
        # written by a thread the loop cannot see, nothing else pending: the grace catches it
        threading.Thread(target=write_later, args=(b, b"untracked\n")).start()
        got.append(await reader.readline())

        pipe_reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(pipe_reader), os.fdopen(read_fd, "rb")
        )
        os.write(write_fd, b"through a pipe\n")
        got.append(await pipe_reader.readline())
        transport.close()
        writer.close()
        await writer.wait_closed()
        return got

    try:
        got = run(loop, main)
    finally:
        b.close()
        os.close(write_fd)
    assert got == [b"ready\n", b"later\n", b"untracked\n", b"through a pipe\n"]
    assert loop.time() == 0.0


def test_external_work_holds_time_still(loop: VirtualEventLoop) -> None:
    async def main() -> tuple[list[str], float]:
        woken = asyncio.Event()
        threading.Timer(0.03, loop.call_soon_threadsafe, args=(woken.set,)).start()
        with loop.external_work():
            await asyncio.wait_for(woken.wait(), timeout=1)
        return ["woken"], loop.time()

    assert run(loop, main) == (["woken"], 0.0)


# ---------------------------------------------------------------- advance and idle


def test_advance_with_autojump_off_runs_each_timer_at_its_deadline(
    loop: VirtualEventLoop, clock: VirtualClock
) -> None:
    async def main() -> None:
        fired: list[tuple[str, float]] = []
        with clock.autojump_disabled():

            def fire(at: float) -> None:
                fired.append((f"t{at}", loop.time()))

            for at in (2.5, 1.0, 5.0):
                loop.call_later(at, fire, at)
            sleeper = asyncio.create_task(asyncio.sleep(3))
            await asyncio.sleep(0)
            await clock.advance(2.5)
            assert fired == [("t1.0", 1.0), ("t2.5", 2.5)]
            assert loop.time() == 2.5
            assert not sleeper.done()
            await clock.advance(0.5)
            assert sleeper.done()
            assert loop.time() == 3.0
            await clock.advance(0)
            assert loop.time() == 3.0
            await clock.advance(10)
            assert fired[-1] == ("t5.0", 5.0)
            assert loop.time() == 13.0
            assert clock.now() == START + 13

    run(loop, main)


def test_advance_with_autojump_on_moves_exactly_that_far(
    loop: VirtualEventLoop, clock: VirtualClock
) -> None:
    async def main() -> None:
        later = asyncio.create_task(asyncio.sleep(100))
        await clock.advance(42)
        assert loop.time() == 42.0
        assert not later.done()
        later.cancel()

    run(loop, main)


def test_negative_advance_is_refused(loop: VirtualEventLoop, clock: VirtualClock) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match=r"^time can't go backwards$"):
            await clock.advance(-1)
        with pytest.raises(ValueError, match=r"^time can't go backwards$"):
            await clock.advance(-0.001)
        with pytest.raises(ValueError, match=r"finite"):
            await clock.advance(float("nan"))
        with pytest.raises(TypeError, match=r"number of seconds"):
            await clock.advance("1")  # type: ignore[arg-type]

    run(loop, main)
    assert loop.time() == 0.0


def test_advance_needs_the_loop_of_its_clock(clock: VirtualClock) -> None:
    plain = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match=r"virtual event loop of this clock"):
            plain.run_until_complete(clock.advance(1))
    finally:
        plain.close()


def test_run_until_idle_settles_without_moving_time(
    loop: VirtualEventLoop, clock: VirtualClock
) -> None:
    async def main() -> tuple[list[int], float, bool]:
        done: list[int] = []

        async def hop(n: int) -> None:
            for _ in range(n):
                await asyncio.sleep(0)
            done.append(n)

        for n in (3, 1, 2):
            asyncio.create_task(hop(n))  # noqa: RUF006 - the loop holds them until done
        later = asyncio.create_task(asyncio.sleep(60))
        await clock.run_until_idle()
        result = (done, loop.time(), later.done())
        later.cancel()
        return result

    assert run(loop, main) == ([1, 2, 3], 0.0, False)


# ---------------------------------------------------------------- deadlocks


def test_a_deadlock_fails_the_test_naming_the_pending_task(loop: VirtualEventLoop) -> None:
    cleaned_up: list[str] = []

    async def wait_for_nothing() -> None:
        try:
            await loop.create_future()  # never set
        finally:
            cleaned_up.append("wait_for_nothing")

    wall = time.perf_counter()
    with pytest.raises(DeadlockError) as caught:
        loop.run_until_complete(wait_for_nothing())
    elapsed = time.perf_counter() - wall

    assert isinstance(caught.value, RuntimeError)
    assert elapsed < 0.5, f"the deadlock took {elapsed:.3f} s to report"
    message = str(caught.value)
    assert "nothing can wake it" in message
    assert "wait_for_nothing()" in message
    assert "test_clock.py" in message
    assert "Pending timers: none" in message
    assert cleaned_up == ["wait_for_nothing"]  # unwound: its finally ran
    assert not asyncio.all_tasks(loop)
    loop.close()


def test_a_deadlock_names_every_task_in_the_chain(loop: VirtualEventLoop) -> None:
    async def worker(event: asyncio.Event) -> None:
        await event.wait()

    async def main() -> None:
        event = asyncio.Event()
        task = asyncio.create_task(worker(event), name="the-worker")
        await task

    with pytest.raises(DeadlockError) as caught:
        loop.run_until_complete(main())
    message = str(caught.value)
    assert "Pending tasks (2)" in message
    assert re.search(
        r"'the-worker' \S*worker\(\) at \S*test_clock.py:\d+ -> Event.wait\(\)", message
    )
    assert re.search(
        r"main\(\) at \S*test_clock.py:\d+, waiting for <Task pending name='the-worker'", message
    )
    assert not asyncio.all_tasks(loop)  # cancelling main cancelled the task it awaited


def test_a_deadlock_with_autojump_off_lists_the_stuck_timers(
    loop: VirtualEventLoop, clock: VirtualClock
) -> None:
    async def main() -> None:
        with clock.autojump_disabled():
            await asyncio.sleep(5)

    with pytest.raises(DeadlockError, match=r"autojump is disabled") as caught:
        loop.run_until_complete(main())
    assert "Pending timers (1)" in str(caught.value)
    assert "in 5 s" in str(caught.value)
    assert loop.time() == 0.0
    assert clock.autojump is True  # the context manager was unwound too


def test_a_cleanup_that_fails_while_unwinding_is_noted_on_the_deadlock(
    loop: VirtualEventLoop,
) -> None:
    async def main() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise LookupError("cleanup failed")

    with pytest.raises(DeadlockError) as caught:
        loop.run_until_complete(main())
    assert caught.value.__notes__ == [
        "While unwinding, the main task raised LookupError('cleanup failed')."
    ]


def test_after_a_deadlock_the_loop_runs_again(loop: VirtualEventLoop) -> None:
    with pytest.raises(DeadlockError):
        loop.run_until_complete(asyncio.Event().wait())
    assert run(loop, lambda: asyncio.sleep(1)) is None
    assert loop.time() == 1.0


def test_run_forever_without_a_main_future_raises_the_deadlock(
    loop: VirtualEventLoop,
) -> None:
    with pytest.raises(DeadlockError, match=r"nothing can wake it"):
        loop.run_forever()


def test_ordinary_errors_and_cancellation_pass_through(loop: VirtualEventLoop) -> None:
    async def fails() -> None:
        await asyncio.sleep(1)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        loop.run_until_complete(fails())

    async def cancelled() -> None:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        await asyncio.sleep(1)

    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(cancelled())
    assert run(loop, lambda: asyncio.sleep(0, result="ok")) == "ok"


# ---------------------------------------------------------------- the wall clock


def test_the_wall_clock_follows_virtual_time_inside_the_loop(
    loop: VirtualEventLoop, clock: VirtualClock
) -> None:
    async def main() -> None:
        assert time.time() == clock.now() == START
        assert time.time_ns() == clock.now_ns()
        assert datetime.now(UTC) == datetime(2026, 1, 1, tzinfo=UTC)
        assert date.today() == datetime.fromtimestamp(START).date()  # local time, on purpose
        await asyncio.sleep(90.5)
        assert time.time() == clock.now() == START + 90.5
        assert datetime.now(UTC) == datetime(2026, 1, 1, 0, 1, 30, 500000, tzinfo=UTC)
        in_thread = await asyncio.to_thread(time.time)
        assert in_thread == START + 90.5
        await asyncio.sleep(86400)
        assert datetime.now(UTC) == datetime(2026, 1, 2, 0, 1, 30, 500000, tzinfo=UTC)
        before = time.time_ns()
        await clock.advance(1e-9)  # to the nanosecond
        assert time.time_ns() == before + 1 == clock.now_ns()

    real_before = time.time()
    run(loop, main)
    assert not time_machine.escape_hatch.is_travelling()
    assert 0 <= time.time() - real_before < 60  # the real clock again


def test_wall_clock_context_manager_outside_the_loop(clock: VirtualClock) -> None:
    later = VirtualClock(start=1767225600.1)
    with later.wall_clock():
        assert time.time_ns() == later.now_ns() == 1767225600_100000000
        assert time.time() == later.now() == 1767225600.1
    with clock.wall_clock(), clock.wall_clock():
        assert time.time() == START
    assert not time_machine.escape_hatch.is_travelling()


def test_freezegun_without_real_asyncio_is_refused_with_the_fix(
    loop: VirtualEventLoop,
) -> None:
    ran: list[str] = []

    async def main() -> None:
        ran.append("body")

    with freezegun.freeze_time("2024-01-01"):
        with pytest.raises(FreezegunConflictError, match=r"real_asyncio=True") as caught:
            loop.run_until_complete(main())
        assert "drop freezegun" in str(caught.value)
    assert ran == []  # the test body never ran under the conflict


def test_freezegun_started_inside_the_loop_is_refused(loop: VirtualEventLoop) -> None:
    async def main() -> None:
        with freezegun.freeze_time("2024-01-01"):
            await asyncio.sleep(1)

    with pytest.raises(FreezegunConflictError, match=r"real_asyncio=True"):
        loop.run_until_complete(main())
    assert not asyncio.all_tasks(loop)


def test_freezegun_with_real_asyncio_keeps_the_wall_clock(
    loop: VirtualEventLoop, clock: VirtualClock
) -> None:
    async def main() -> tuple[float, datetime]:
        await asyncio.sleep(60)
        return loop.time(), datetime.now(UTC)

    with freezegun.freeze_time("2024-01-01", real_asyncio=True):
        assert run(loop, main) == (60.0, datetime(2024, 1, 1, tzinfo=UTC))
        with (
            pytest.raises(FreezegunConflictError, match=r"freezegun is active"),
            clock.wall_clock(),
        ):
            pass
    assert clock.now() == START + 60


# ---------------------------------------------------------------- the reference runtime


def test_the_reference_runtime_runs_an_hour_long_job_in_virtual_time(
    loop: VirtualEventLoop, clock: VirtualClock
) -> None:
    session = {"user": {"id": 7, "organization_id": 10}, "session_key": "s1"}

    async def main() -> tuple[dict[str, Any], list[tuple[float, dict[str, Any]]]]:
        async with taskbed.Runtime(clock=clock) as rt:
            conn = rt.connect(user_id=7, organization_id=10)
            async with rt.request(session=session, module="mod", request_id="r1") as sdk:

                async def hourly() -> str:
                    for minute in range(1, 61):
                        await asyncio.sleep(60)
                        await sdk.tasks.update_progress(task_id, minute / 60)
                    return "done"

                task_id = await sdk.tasks.run_background(hourly(), "Hourly")
            row = await rt.wait(task_id)
        return row, conn.received

    wall = time.perf_counter()
    row, received = run(loop, main)
    elapsed = time.perf_counter() - wall

    assert elapsed < 1.0, f"an hour-long job took {elapsed:.3f} s of wall time"
    assert row["status"] == "completed"
    assert row["result"] == "done"
    assert row["createdAt"] == "2026-01-01T00:00:00.000+00:00"
    assert row["updatedAt"] == "2026-01-01T01:00:00.000+00:00"
    progress = [m["backgroundTaskProgress"] for _, m in received if "backgroundTaskProgress" in m]
    assert len(progress) == 60
    for minute, body in enumerate(progress, 1):
        expected = datetime.fromtimestamp(START + 60 * minute, UTC)
        assert body["updatedAt"] == expected.isoformat(timespec="milliseconds")
        assert body["updatedAtLabel"] == expected.strftime("%Y-%m-%d %H:%M:%S UTC")
    times = [at for at, m in received if "backgroundTaskProgress" in m]
    assert times == [START + 60 * minute for minute in range(1, 61)]
    assert clock.now() == START + 3600


def test_timers_due_at_the_same_instant_fire_in_the_order_they_were_made() -> None:
    loop = new_virtual_loop()
    order: list[int] = []

    async def main() -> None:
        for n in range(200):
            loop.call_at(loop.time() + 5 + (n % 3), order.append, n)
        await asyncio.sleep(10)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    expected = sorted(range(200), key=lambda n: (n % 3, n))
    assert order == expected
