"""OSProcessRunner waits on the event loop: pipes and a pidfd as loop readers, no thread.

Real processes. What these pin down, each failing on a plausible slip of the loop-native
runner (issue 13, point 8): no worker thread while commands end on their own; no file
descriptor left behind on any path (success, a missing program, a timeout, a cancel); a
timeout in real time even on a loop that keeps virtual time; and a loop on virtual time told
that a process runs, so it neither moves time nor calls it a deadlock meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from taskbed import OSProcessRunner
from taskbed_harness import VirtualClock, new_virtual_loop

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc fds")


def _run(runner: OSProcessRunner, argv: list[str], **kwargs: Any) -> Awaitable[Any]:
    options: dict[str, Any] = {"cwd": None, "env": {}, "timeout": None, "capture_output": True}
    return runner.run(argv, **(options | kwargs))


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _on_real_loop(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(main())  # type: ignore[arg-type]


def test_commands_that_end_on_their_own_start_no_thread() -> None:
    runner = OSProcessRunner()

    async def main() -> list[int]:
        return [(await _run(runner, ["sh", "-c", "echo $0", str(n)])).returncode for n in range(20)]

    try:
        assert _on_real_loop(main) == [0] * 20
        assert runner._executor._threads == set()  # the claim under test
    finally:
        runner.close()


def test_no_file_descriptor_is_left_behind_on_any_path() -> None:
    runner = OSProcessRunner()

    async def every_path() -> None:
        assert (await _run(runner, ["echo", "hi"])).stdout == b"hi\n"
        assert (await _run(runner, ["true"], capture_output=False)).stdout is None
        with pytest.raises(FileNotFoundError):
            await _run(runner, ["/nonexistent/program"])
        with pytest.raises(subprocess.TimeoutExpired):
            await _run(runner, ["sleep", "5"], timeout=0.05)
        task = asyncio.ensure_future(_run(runner, ["sleep", "5"]))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def main() -> None:
        await every_path()  # the first pass opens what stays open (the loop's, the pool's)
        before = _fds()
        for _ in range(3):
            await every_path()
        assert _fds() - before == set()

    try:
        _on_real_loop(main)
    finally:
        runner.close()


def test_a_timeout_is_real_time_on_a_loop_that_keeps_virtual_time() -> None:
    runner = OSProcessRunner()
    loop = new_virtual_loop(VirtualClock(virtual_monotonic=False))
    started = time.monotonic()
    try:
        with pytest.raises(subprocess.TimeoutExpired) as caught:
            loop.run_until_complete(_run(runner, ["sh", "-c", "echo so far; exec sleep 5"],
                                         timeout=0.3))  # fmt: skip
        assert 0.3 <= time.monotonic() - started < 3.0
        assert caught.value.output == b"so far\n"
    finally:
        loop.close()
        runner.close()


def test_a_loop_on_virtual_time_holds_still_while_a_process_runs() -> None:
    """Without being told, the loop would jump to the sleeper's timer (5 s) at once, or
    report a deadlock when no timer is pending."""
    runner = OSProcessRunner()
    loop = new_virtual_loop(VirtualClock(virtual_monotonic=False))

    async def main() -> tuple[float, float]:
        sleeper = asyncio.ensure_future(asyncio.sleep(5))
        result = await _run(runner, ["sleep", "0.3"])
        at_exit = loop.time()
        assert result.returncode == 0
        alone = loop.time()
        await _run(runner, ["sleep", "0.3"])  # and with no timer at all: not a deadlock
        await sleeper
        return at_exit, alone

    try:
        at_exit, alone = loop.run_until_complete(main())
        assert at_exit < 1.0, f"virtual time moved to {at_exit} while the process ran"
        assert alone == at_exit
    finally:
        loop.close()
        runner.close()


def test_a_second_cancel_while_ending_still_kills_and_reaps() -> None:
    runner = OSProcessRunner()
    marker = f"{time.monotonic_ns() % 10**6}.5"  # a unique duration names our sleeps

    def ours() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(pid)
            except OSError:
                pass
        return found

    async def main() -> None:
        task = asyncio.ensure_future(_run(runner, ["sh", "-c", f"sleep {marker} & sleep {marker}"]))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.sleep(0)  # the runner is ending the command in a worker thread now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ours() == []

    try:
        _on_real_loop(main)
    finally:
        runner.close()
