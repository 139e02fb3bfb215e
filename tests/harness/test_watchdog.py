"""The real-time watchdog: a stuck thread or process, or a job that spins, fails the test within
a bounded real time, naming what is stuck and where; the stuck work is let go; Ctrl-C ends it.

Issue 12, point 3: a task awaiting ``run_blocking(threading.Event().wait)`` froze the virtual
clock with no output and pytest stayed hung after Ctrl-C; a job polling forever spun at 100 %
CPU with no bound. Every test here bounds its own real time (subprocess timeouts, the
watchdog), so none of them relies on CI's time limit to catch a hang.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskbed_harness import (
    Harness,
    HarnessOptions,
    VirtualEventLoop,
    WatchdogError,
    new_virtual_loop,
)
from taskbed_harness._watchdog import DaemonThreadPool, _reset_interrupted, interrupted

pytest_plugins = ["pytester"]


@pytest.fixture
def loop() -> Iterator[VirtualEventLoop]:
    loop = new_virtual_loop(watchdog=0.5)
    yield loop
    started = time.monotonic()
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()
    assert time.monotonic() - started < 5  # the stuck thread was let go: no wait for it


def test_a_stuck_worker_thread_fails_the_run_naming_the_thread_and_its_stack(
    loop: VirtualEventLoop,
) -> None:
    never = threading.Event()

    async def main() -> None:
        await loop.run_in_executor(None, never.wait)

    started = time.monotonic()
    with pytest.raises(WatchdogError) as info:
        loop.run_until_complete(main())
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "took more than 0.5 s of real time" in message
    assert "virtual time cannot advance: it waits for work outside the loop" in message
    assert "- worker thread 'asyncio_0' running Event.wait() for " in message
    assert "in wait\n" in message  # its stack, innermost last
    assert "waiter.acquire()" in message
    assert re.search(r"'Task-\d+' test_a_stuck_worker_thread", message)  # where main waits
    assert "@pytest.mark.taskbed(watchdog=SECONDS) or --taskbed-watchdog=SECONDS" in message
    # let go: the thread is a daemon (the interpreter will not wait for it at exit)
    [worker] = [t for t in threading.enumerate() if t.name == "asyncio_0"]
    assert worker.daemon
    never.set()


def test_a_stuck_process_is_named_and_killed(loop: VirtualEventLoop) -> None:
    async def main() -> None:
        proc = await asyncio.create_subprocess_exec("sleep", "3600")
        procs.append(proc)
        await proc.wait()

    procs: list[asyncio.subprocess.Process] = []
    with pytest.raises(WatchdogError, match=r"- subprocess pid \d+: \['sleep', '3600'\]"):
        loop.run_until_complete(main())
    # killed: its pid is gone (reaped by asyncio's child watcher) within a moment, and the
    # loop hears of it (else its Popen, still "running", warns when collected, anywhere later)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (_alive(procs[0].pid) or procs[0].returncode is None):
        loop.run_until_complete(asyncio.sleep(0))
        time.sleep(0.01)
    assert not _alive(procs[0].pid)
    assert procs[0].returncode == -signal.SIGKILL


def test_a_job_that_polls_forever_is_stopped_and_says_where(loop: VirtualEventLoop) -> None:
    async def poll() -> None:
        while True:  # the condition it waits for never comes
            await asyncio.sleep(1)

    async def main() -> None:
        await asyncio.create_task(poll(), name="poller")

    started = time.monotonic()
    with pytest.raises(WatchdogError) as info:
        loop.run_until_complete(main())
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "without finishing, while virtual time ran" in message
    assert "a job that polls forever" in message
    assert "'poller' test_a_job_that_polls_forever_is_stopped_and_says_where.<locals>.poll()" in (
        message
    )


def test_work_that_finishes_in_time_is_not_touched() -> None:
    loop = new_virtual_loop(watchdog=5)
    try:

        async def main() -> float:
            await loop.run_in_executor(None, time.sleep, 0.05)
            await asyncio.sleep(3600)
            return loop.time()

        assert loop.run_until_complete(main()) == 3600
        off = new_virtual_loop(watchdog=0)
        assert off.watchdog is None  # 0 turns it off
        off.close()
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def test_run_blocking_under_the_harness_is_let_go_too() -> None:
    never = threading.Event()
    loop = new_virtual_loop()

    async def main() -> None:
        async with Harness() as tb:
            loop.watchdog = 0.5
            async with tb.request() as sdk:
                task_id = await sdk.tasks.run_background(
                    sdk.tasks.run_blocking(never.wait), "Waits forever"
                )
            await tb.wait(task_id)

    try:
        with pytest.raises(WatchdogError, match=r"worker thread 'taskbed-worker_0' running "):
            loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    [worker] = [t for t in threading.enumerate() if t.name == "taskbed-worker_0"]
    assert worker.daemon
    never.set()


def test_the_pool_waits_for_its_threads_unless_let_go_or_interrupted() -> None:
    pool = DaemonThreadPool(thread_name_prefix="t")
    gate = threading.Event()
    done = pool.submit(gate.wait, 0.2)
    pool.shutdown(wait=True)  # waits for the running call
    assert done.result() is False
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        pool.submit(abs, -1)
    stuck = DaemonThreadPool(thread_name_prefix="s")
    stuck.submit(gate.wait)
    deadline = time.monotonic() + 2
    while not [t for t in threading.enumerate() if t.name == "s_0"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        interrupted()
        started = time.monotonic()
        stuck.shutdown(wait=True)  # after Ctrl-C: no waiting
        assert time.monotonic() - started < 1
    finally:
        _reset_interrupted()
        gate.set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------------------ as a user runs it


STUCK_TEST = """
import threading
from pathlib import Path
import pytest

@pytest.mark.asyncio
async def test_stuck(taskbed):
    async with taskbed.request() as sdk:
        task_id = await sdk.tasks.run_background(
            sdk.tasks.run_blocking(threading.Event().wait), "Stuck job"
        )
    Path("started").write_text("yes")
    await taskbed.wait(task_id)
"""


def _project(pytester: pytest.Pytester, source: str) -> None:
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    pytester.makepyfile(test_module=source)


@pytest.mark.parametrize(
    "how", [("--taskbed-watchdog=1",), ("-o", "markers=x")], ids=["option", "marker"]
)
def test_pytest_ends_a_stuck_test_with_the_stuck_threads_name_and_stack(
    pytester: pytest.Pytester, how: tuple[str, ...]
) -> None:
    source = STUCK_TEST
    if how[0] != "--taskbed-watchdog=1":
        source = source.replace(
            "@pytest.mark.asyncio\n", "@pytest.mark.asyncio\n@pytest.mark.taskbed(watchdog=1)\n"
        )
        how = ()
    _project(pytester, source)
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *how, timeout=120)
    assert time.monotonic() - started < 60
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*WatchdogError: taskbed watchdog: this run of the event loop took more than 1 s*",
            "*- worker thread 'taskbed-worker_0' running Event.wait() for *",
            "*threading.py*in wait*",
            "*waiter.acquire()*",
            "*Tasks.run_blocking()*",
        ]
    )


@pytest.mark.slow
def test_ctrl_c_ends_a_stuck_run(pytester: pytest.Pytester) -> None:
    _project(pytester, STUCK_TEST)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--taskbed-watchdog=600"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not Path(pytester.path, "started").exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the test never started"
            time.sleep(0.05)
        time.sleep(0.3)  # in the stuck wait now
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)  # one Ctrl-C is enough
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "KeyboardInterrupt" in out, out
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out


def test_the_watchdog_option_takes_seconds() -> None:
    assert HarnessOptions(watchdog=0).watchdog == 0
    with pytest.raises(ValueError, match=r"^watchdog takes a number of real seconds"):
        HarnessOptions(watchdog=-1)
    with pytest.raises(ValueError, match=r"e\.g\. @pytest\.mark\.taskbed\(watchdog=120\)$"):
        HarnessOptions(watchdog="60")  # type: ignore[arg-type]
