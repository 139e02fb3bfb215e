"""The pytest plugin, tested the way users run it: a tiny test file under pytester."""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytester"]

HEADER = """
import asyncio
import pytest
"""


def run(
    pytester: pytest.Pytester, source: str, *args: str, mode: str = "strict"
) -> pytest.RunResult:
    pytester.makeini(
        f"""
        [pytest]
        asyncio_mode = {mode}
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    pytester.makepyfile(test_module=HEADER + source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)


def test_fixtures_work_with_no_conftest_in_strict_mode(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_job(taskbed, taskbed_client):
    async with taskbed.request() as sdk:
        async def job():
            await asyncio.sleep(3600)
            return 42
        task_id = await sdk.tasks.run_background(job(), "Job")
    row = await taskbed.wait(task_id)
    assert row["status"] == "completed" and row["result"] == 42
    await taskbed_client.expect("backgroundTaskStarted", taskId=task_id)
    await taskbed_client.expect("backgroundTaskCompleted", result=42)
""",
    )
    result.assert_outcomes(passed=1)


def test_auto_mode_needs_no_marker(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
async def test_clock(taskbed_clock):
    before = taskbed_clock.now()
    await asyncio.sleep(90)
    assert taskbed_clock.now() - before == 90
""",
        mode="auto",
    )
    result.assert_outcomes(passed=1)


def test_other_async_tests_keep_a_plain_loop(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import time
from taskbed_harness import VirtualEventLoop

@pytest.mark.asyncio
async def test_plain():
    assert not isinstance(asyncio.get_running_loop(), VirtualEventLoop)

@pytest.mark.asyncio
async def test_virtual(taskbed):
    assert isinstance(asyncio.get_running_loop(), VirtualEventLoop)
""",
    )
    result.assert_outcomes(passed=2)


def test_no_state_leaks_between_tests(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
from datetime import UTC, datetime

@pytest.mark.asyncio
@pytest.mark.parametrize("n", range(3))
async def test_fresh(taskbed, n):
    assert taskbed.clock.now() == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    sdk = taskbed.sdk()
    assert sdk.tasks.get_tasks_by_key("k", organization_id=10) == []
    async with taskbed.request() as sdk:
        await sdk.tasks.run_background(asyncio.sleep(10), "leaves a row", task_key="k")
    await asyncio.sleep(5000)
""",
    )
    result.assert_outcomes(passed=3)


def test_marker_options_closest_wins_and_typos_fail(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
pytestmark = pytest.mark.taskbed(user=1, organization=2)

@pytest.mark.asyncio
@pytest.mark.taskbed(user=3)
async def test_closest(taskbed):
    assert (taskbed.options.user, taskbed.options.organization) == (3, 2)

@pytest.mark.asyncio
@pytest.mark.taskbed(hodl=True)
async def test_typo(taskbed):
    pass

@pytest.mark.asyncio
@pytest.mark.taskbed(True)
async def test_positional(taskbed):
    pass
""",
    )
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*unknown taskbed option(s)*hodl*valid options*",
            "*@pytest.mark.taskbed takes keyword options only*",
        ]
    )


def test_record_mode_typo_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, "def test_x(): pass\n", "--taskbed-record=onse")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--taskbed-record='onse' is not a record mode; use one of none, once, new, all*"]
    )


def test_unused_registered_command_fails_at_teardown(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_unused(taskbed):
    taskbed.processes.register(["git", "fetch"])

@pytest.mark.asyncio
async def test_optional(taskbed):
    taskbed.processes.register(["git", "fetch"], optional=True)

@pytest.mark.asyncio
@pytest.mark.taskbed(assert_all_used=False)
async def test_opted_out(taskbed):
    taskbed.processes.register(["git", "fetch"])
""",
    )
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_unused*", "*git*fetch*", "*optional*"])


def test_record_once_then_replay_offline(pytester: pytest.Pytester) -> None:
    source = """
import os

@pytest.mark.asyncio
async def test_echo(taskbed):
    async with taskbed.request() as sdk:
        done = await sdk.tasks.run_subprocess(["sh", "-c", "echo recorded-$((6*7))"])
    assert done.stdout == "recorded-42\\n"
"""
    first = run(pytester, source, "--taskbed-record=once")
    first.assert_outcomes(passed=1)
    cassette = pytester.path / "cassettes" / "test_module" / "test_echo.json"
    data = json.loads(cassette.read_text())
    assert data["version"] == 1
    assert data["interactions"][0]["argv"] == ["sh", "-c", "echo recorded-$((6*7))"]

    # Replay: no process may start now. Break `sh` on PATH to prove it.
    pytester.makepyfile(conftest="import os\nos.environ['PATH'] = '/nonexistent'\n")
    again = run(pytester, source)
    again.assert_outcomes(passed=1)


def test_a_miss_names_the_closest_recording_and_the_rerecord_command(
    pytester: pytest.Pytester,
) -> None:
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_miss(taskbed):
    taskbed.processes.register(["git", "status", "--short"], optional=True)
    async with taskbed.request() as sdk:
        await sdk.tasks.run_subprocess(["git", "status", "--long"])
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*UnmatchedCommandError*", "*--long*", "*--short*"])


def test_malformed_cassette_explains_the_fix(pytester: pytest.Pytester) -> None:
    cassette = pytester.path / "cassettes" / "test_module" / "test_bad.json"
    cassette.parent.mkdir(parents=True)
    cassette.write_text("{not json")
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_bad(taskbed):
    pass
""",
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*CassetteError*test_bad.json*--taskbed-record=once*"])


def test_a_deadlock_fails_the_test_instead_of_hanging(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_stuck(taskbed):
    await asyncio.Event().wait()
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*DeadlockError*", "*test_stuck*"])


def test_plugin_loads_hermetically(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        """
    )
    pytester.makepyfile(
        test_module=HEADER
        + """
@pytest.mark.asyncio
async def test_ok(taskbed):
    await asyncio.sleep(1)
"""
    )
    result = pytester.runpytest_subprocess(
        "-p", "asyncio", "-p", "taskbed_harness._plugin", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)


def test_the_marker_sets_where_the_virtual_clock_starts(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
from datetime import UTC, datetime

@pytest.mark.asyncio
@pytest.mark.taskbed(start=datetime(2030, 6, 1, 12, tzinfo=UTC))
async def test_start(taskbed):
    assert taskbed.clock.now() == datetime(2030, 6, 1, 12, tzinfo=UTC).timestamp()
    assert datetime.now(UTC).year == 2030
""",
    )
    result.assert_outcomes(passed=1)
