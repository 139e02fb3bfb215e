"""``time.monotonic()`` / ``perf_counter()`` and their ``_ns`` forms follow virtual time.

Issue 12, point 5: ``time.monotonic()`` stayed real under the virtual clock, so a 0.5 s
deadline loop around ``asyncio.sleep(0.1)`` ran for 15 virtual hours.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskbed_harness import Harness, HarnessOptions, VirtualClock, new_virtual_loop
from taskbed_harness._watchdog import real_monotonic

pytest_plugins = ["pytester"]

Run = Callable[..., Any]
ORIGINAL = (time.monotonic, time.monotonic_ns, time.perf_counter, time.perf_counter_ns)


@pytest.fixture
def run() -> Iterator[Run]:
    loops = []

    def run_on(main: object, clock: VirtualClock | None = None) -> object:
        loop = new_virtual_loop(clock or VirtualClock(virtual_monotonic=True))
        loops.append(loop)
        return loop.run_until_complete(main)

    yield run_on
    for loop in loops:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    assert (time.monotonic, time.monotonic_ns, time.perf_counter, time.perf_counter_ns) == (
        ORIGINAL
    )


def test_a_deadline_loop_ends_at_its_virtual_deadline(run: Run) -> None:
    async def main() -> tuple[int, float]:
        polls = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            polls += 1
        return polls, asyncio.get_running_loop().time()

    assert run(main()) == (5, 0.5)


def test_every_form_reads_the_loops_time_exactly(run: Run) -> None:
    async def main() -> list[float | int]:
        def read() -> tuple[float, float, int, int]:
            seconds = time.monotonic(), time.perf_counter()
            return (*seconds, time.monotonic_ns(), time.perf_counter_ns())

        before = read()
        await asyncio.sleep(90)
        after = read()
        assert time.monotonic() == asyncio.get_running_loop().time()
        return [b - a for a, b in zip(before, after, strict=True)]

    assert run(main()) == [90.0, 90.0, 90 * 10**9, 90 * 10**9]


def test_threads_the_standard_library_and_taskbed_read_real_time(run: Run) -> None:
    async def main() -> tuple[float, float, float]:
        await asyncio.sleep(3600)
        loop = asyncio.get_running_loop()
        in_thread = await loop.run_in_executor(None, time.monotonic)
        scope = {"__name__": "asyncio.anything", "time": time}
        exec("seen = time.monotonic()", scope)  # code of a standard-library module
        return in_thread, scope["seen"], time.monotonic()

    in_thread, stdlib, user = run(main())
    assert user == 3600.0
    assert abs(in_thread - real_monotonic()) < 60
    assert abs(stdlib - real_monotonic()) < 60


def test_the_opt_out_keeps_them_real(run: Run) -> None:
    async def main() -> float:
        await asyncio.sleep(3600)
        return time.monotonic()

    seen = run(main(), VirtualClock(virtual_monotonic=False))
    assert abs(seen - real_monotonic()) < 60

    async def with_option() -> float:
        async with Harness(HarnessOptions(virtual_monotonic=False)):
            await asyncio.sleep(3600)
            return time.monotonic()

    assert abs(run(with_option()) - real_monotonic()) < 60


def test_a_clock_made_by_hand_keeps_real_clocks(run: Run) -> None:
    async def main() -> float:
        await asyncio.sleep(3600)
        return time.monotonic()

    assert abs(run(main(), VirtualClock()) - real_monotonic()) < 60


def test_in_taskbed_tests_they_are_virtual_unless_the_marker_says_no(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    pytester.makepyfile(
        test_module="""
import asyncio
import time
import pytest

pytest_plugins = ["pytester"]

async def test_virtual(taskbed):
    before = time.perf_counter_ns()
    await asyncio.sleep(90)
    assert time.perf_counter_ns() - before == 90 * 10**9

@pytest.mark.taskbed(virtual_monotonic=False)
async def test_real(taskbed):
    before = time.monotonic()
    await asyncio.sleep(90)
    assert time.monotonic() - before < 60
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=2)
