"""A forgotten ``await`` fails the test, and the message names the call and shows the fix.

Issue 12, point 2: ``taskbed_client.expect(...)`` without ``await`` gave a green test and a
RuntimeWarning; ``run_background(...)`` without ``await`` ended in a DeadlockError with no
hint, its warning pointing into ``ast.py``. The project's own pytest runs with ``-W error``;
a user's may not, so these runs leave warnings as warnings.
"""

from __future__ import annotations

import asyncio

import pytest

from taskbed_harness import Harness, NeverAwaitedError, new_virtual_loop

pytest_plugins = ["pytester"]


def run(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        """
    )
    pytester.makepyfile(test_module="import asyncio\nimport pytest\n" + source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)


def test_an_expect_never_awaited_fails_its_test(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_forgot(taskbed, taskbed_client):
    async with taskbed.request() as sdk:
        task_id = await sdk.tasks.run_background(asyncio.sleep(1), "Job")
    await taskbed.wait(task_id)
    taskbed_client.expect("backgroundTaskCompleted", result="never checked")

@pytest.mark.asyncio
async def test_nothing(taskbed_client):
    taskbed_client.expect_nothing(within=5)

@pytest.mark.asyncio
async def test_awaited(taskbed, taskbed_client):
    async with taskbed.request() as sdk:
        task_id = await sdk.tasks.run_background(asyncio.sleep(1), "Job")
    await taskbed_client.expect("backgroundTaskStarted", taskId=task_id)
    as_task = asyncio.create_task(taskbed_client.expect("backgroundTaskCompleted"))
    await asyncio.wait_for(taskbed_client.expect_nothing(0.5), timeout=1)
    await as_task
""",
    )
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*NeverAwaitedError: 1 check(s) of this test were never awaited*",
            "*test_module.py:9 in test_forgot: expect('backgroundTaskCompleted', "
            "result='never checked')",
            '*write: await taskbed_client.expect("backgroundTaskCompleted"*',
            "*troubleshooting.md#never-awaited*",
        ]
    )
    result.stdout.fnmatch_lines(["*test_module.py:13 in test_nothing: expect_nothing(5)*"])
    assert "was never awaited" not in result.stderr.str()  # closed, not left to warn


def test_an_sdk_call_without_await_names_the_call_and_the_fix(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_progress(taskbed):
    async with taskbed.request() as sdk:
        task_id = await sdk.tasks.run_background(asyncio.sleep(1), "Job")
        sdk.tasks.update_progress(task_id, 0.5)
    await taskbed.wait(task_id)

@pytest.mark.asyncio
async def test_submit(taskbed):
    async with taskbed.request() as sdk:
        task_id = sdk.tasks.run_background(asyncio.sleep(1), "Job")
    await taskbed.wait(task_id)
""",
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*NeverAwaitedError: 1 coroutine(s) were never awaited*",
            "*the SDK call Tasks.update_progress() at test_module.py:8 in test_progress",
            "*write: await sdk.tasks.update_progress(task_id, 0.5)",
        ]
    )
    # the wait on a coroutine says so at once, instead of a DeadlockError
    result.stdout.fnmatch_lines(
        [
            "*TypeError: taskbed.wait() got a coroutine object (Tasks.run_background), not a "
            "task id*task_id = await sdk.tasks.run_background(...)*",
        ]
    )
    assert "DeadlockError" not in result.stdout.str()
    assert "ast.py" not in result.stdout.str() + result.stderr.str()


def test_a_forgotten_await_is_noted_on_the_failure_it_caused(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_hangs(taskbed):
    async with taskbed.request() as sdk:
        sdk.tasks.run_background(asyncio.sleep(1), "Job")
    await asyncio.Event().wait()
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*DeadlockError*",
            "*the SDK call Tasks.run_background() at test_module.py:7 in test_hangs",
            '*write: await sdk.tasks.run_background(asyncio.sleep(1), "Job")',
        ]
    )
    # the job handed to the call that never ran is not a forgotten await of its own
    assert "1 coroutine(s) were never awaited" in result.stdout.str()
    assert "sleep() at" not in result.stdout.str()


def test_without_pytest_the_harness_check_reports_unawaited_expectations() -> None:
    async def main() -> None:
        async with Harness() as tb:
            client = tb.client()
            client.expect("backgroundTaskStarted")
            tb.emitted.expect("notify", channel="toast")
            with pytest.raises(NeverAwaitedError) as info:
                tb.check()
            assert "2 check(s) of this test were never awaited" in str(info.value)
            assert "expect('backgroundTaskStarted')" in str(info.value)
            assert "emitted.expect('notify', channel='toast')" in str(info.value)
            tb.check()  # reported once

    loop = new_virtual_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_row_rejects_a_coroutine_with_the_fix() -> None:
    async def main() -> None:
        async with Harness() as tb:
            coro = asyncio.sleep(0)
            with pytest.raises(TypeError, match=r"^taskbed.row\(\) got a coroutine object"):
                tb.row(coro)  # type: ignore[arg-type]

    loop = new_virtual_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
