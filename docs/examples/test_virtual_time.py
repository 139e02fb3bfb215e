"""Virtual time: jumps, exact advances, the wall clock, threads, and freezegun.

The module code comes first; in your project you would import it instead.
"""

import asyncio
import time
from datetime import UTC, date, datetime

import pytest
from freezegun import freeze_time

# ---------------------------------------------------------------- the module code


async def start_reminder(sdk, minutes):
    """A module action: remind the user after some minutes (as a progress message)."""

    async def remind():
        await asyncio.sleep(minutes * 60)
        await sdk.tasks.emit_progress(task_id, label=f"Reminder, {datetime.now(UTC):%H:%M}")
        return "reminded"

    task_id = await sdk.tasks.run_background(remind(), "Reminder")
    return task_id


def checksum(data):
    """Blocking work that takes real time; the module runs it with run_blocking."""
    time.sleep(0.05)
    return sum(data) % 256


# ---------------------------------------------------------------- the tests

pytestmark = pytest.mark.asyncio


async def test_time_jumps_to_the_next_timer(taskbed, taskbed_client):
    async with taskbed.request() as sdk:
        task_id = await start_reminder(sdk, 90)

    await taskbed_client.expect("backgroundTaskStarted", taskId=task_id)
    await taskbed_client.expect("backgroundTaskProgress", label="Reminder, 01:30")
    assert taskbed.clock.monotonic() == 90 * 60


async def test_advance_moves_time_exactly(taskbed, taskbed_clock, taskbed_client):
    with taskbed_clock.autojump_disabled():  # now only advance() moves time
        async with taskbed.request() as sdk:
            task_id = await start_reminder(sdk, 10)

        await taskbed_clock.advance(599.9)
        assert taskbed.row(task_id)["status"] == "running"
        await taskbed_clock.advance(0.1)  # 600.0 exactly: integer nanoseconds inside
        assert taskbed.row(task_id)["status"] == "completed"
    assert taskbed_client.kinds[-2:] == ["backgroundTaskProgress", "backgroundTaskCompleted"]


@pytest.mark.taskbed(autojump=False)  # the same, for the whole test
async def test_run_until_idle_runs_what_is_ready(taskbed, taskbed_clock):
    async with taskbed.request() as sdk:
        task_id = await start_reminder(sdk, 10)

    await taskbed_clock.run_until_idle()  # the job starts and sleeps; time stands still
    assert taskbed.row(task_id)["status"] == "running"
    assert taskbed_clock.monotonic() == 0


async def test_the_wall_clock_follows_virtual_time(taskbed):
    assert datetime.now(UTC) == datetime(2026, 1, 1, tzinfo=UTC)
    assert time.time() == taskbed.clock.now()

    await asyncio.sleep(31 * 24 * 3600)

    assert date.today() == date(2026, 2, 1)


async def test_time_stands_still_while_a_thread_runs(taskbed):
    async with taskbed.request() as sdk:
        # A thread is real: while it runs, no timer may fire, not even this timeout.
        async with asyncio.timeout(0.01):
            result = await sdk.tasks.run_blocking(checksum, [1, 2, 3])

    assert result == 6
    assert taskbed.clock.monotonic() == 0


@freeze_time("2030-06-01 12:00:00", real_asyncio=True)
async def test_freezegun_with_real_asyncio(taskbed):
    await asyncio.sleep(3600)  # the loop's virtual time moves
    assert taskbed.clock.monotonic() == 3600
    assert datetime.now() == datetime(2030, 6, 1, 12, 0)  # freezegun's wall clock does not
