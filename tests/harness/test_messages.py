"""Errors of the harness as a user reads them (issue 12, point 7).

A failed task's error shows as the task raised it, not as one JSON-escaped line; a
``taskbed.wait(..., timeout=...)`` that runs out says where the task stands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from taskbed_harness import Harness, HarnessOptions, new_virtual_loop


def with_harness(body: Callable[[Harness], Awaitable[Any]], **options: Any) -> Any:
    async def main() -> Any:
        async with Harness(HarnessOptions(**options)) as tb:
            return await body(tb)

    loop = new_virtual_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def test_a_failed_tasks_error_is_shown_as_raised() -> None:
    async def body(tb: Harness) -> None:
        client = tb.client()

        async def job() -> None:
            raise ValueError('can\'t read été.csv:\nline 3: bad "quote"')

        async with tb.request() as sdk:
            task_id = await sdk.tasks.run_background(job(), "Import")
        await tb.wait(task_id)
        await client.expect("backgroundTaskStarted")
        with pytest.raises(AssertionError) as info:
            await client.expect("backgroundTaskCompleted")
        message = str(info.value)
        assert "     got backgroundTaskError {" in message
        assert "été.csv" in message.split("\n")[1]  # not \\u00e9t\\u00e9
        assert (
            '  the task failed with:\n    can\'t read été.csv:\n    line 3: bad "quote"\n'
        ) in message

    with_harness(body)


def test_a_wait_timeout_says_where_the_task_stands() -> None:
    async def body(tb: Harness) -> None:
        async with tb.request() as sdk:
            task_id = await sdk.tasks.run_background(asyncio.sleep(60), "Sync")
        with pytest.raises(TimeoutError) as info:
            await tb.wait(task_id, timeout=5)
        assert str(info.value) == (
            f"taskbed.wait({task_id!r}, timeout=5): the task did not end within 5 s of "
            "virtual time; it is still 'running' (label 'Sync', progress 0.0). Wait longer, "
            "or look at what the task awaits (see docs/guides/troubleshooting.md#wait-timeout)"
        )
        held = await _held_task(tb)
        with pytest.raises(TimeoutError, match=r"held by the fake task manager: call "):
            await tb.wait(held, timeout=1)
        tb.manager.release_all()

    with_harness(body)


async def _held_task(tb: Harness) -> str:
    tb.manager.hold()
    async with tb.request() as sdk:
        return await sdk.tasks.run_background(asyncio.sleep(1), "Held")
