"""Testing a module that runs git, without running git.

``test_changelog_from_the_cassette`` replays the cassette committed next to this file
(``cassettes/test_recorded_git/test_changelog_from_the_cassette.json``), recorded once with
``pytest --taskbed-record=once``. The other tests write their expectations by hand.
The module code comes first; in your project you would import it instead.
"""

import subprocess

import pytest

from taskbed_harness import ANY, ANY_REST

# ---------------------------------------------------------------- the module code

REPO = "/srv/acme/website"


async def changelog(sdk):
    """The changes since the last tag of the website repository."""
    tag = await sdk.tasks.run_subprocess(
        ["git", "describe", "--tags", "--abbrev=0"], cwd=REPO, check=True
    )
    since = tag.stdout.strip()
    log = await sdk.tasks.run_subprocess(
        ["git", "log", "--format=%s", f"{since}..HEAD"], cwd=REPO, check=True
    )
    return {"since": since, "changes": log.stdout.splitlines()}


async def start_changelog(sdk):
    """A module action: build the changelog in the background."""
    return await sdk.tasks.run_background(changelog(sdk), "Changelog", task_key="changelog")


async def fetch(sdk):
    """Fetch from the remote, giving up after a minute."""
    try:
        await sdk.tasks.run_subprocess(["git", "fetch", "--quiet"], cwd=REPO, timeout=60)
    except subprocess.TimeoutExpired:
        return "timed out"
    return "fetched"


# ---------------------------------------------------------------- the tests

pytestmark = pytest.mark.asyncio


async def test_changelog_from_the_cassette(taskbed):
    async with taskbed.request() as sdk:
        task_id = await start_changelog(sdk)

    row = await taskbed.wait(task_id)

    assert row["status"] == "completed", row["error"]
    assert row["result"] == {
        "since": "v1.2.0",
        "changes": ["Fix the footer on mobile", "Add the pricing page"],
    }
    assert [call.argv[:2] for call in taskbed.processes.calls] == [
        ["git", "describe"],
        ["git", "log"],
    ]


async def test_changelog_with_registered_commands(taskbed):
    taskbed.processes.register(["git", "describe", ANY_REST], stdout="v2.0.0\n")
    taskbed.processes.register(["git", "log", ANY, "v2.0.0..HEAD"], stdout="")

    async with taskbed.request() as sdk:
        result = await changelog(sdk)

    assert result == {"since": "v2.0.0", "changes": []}


async def test_a_failing_command(taskbed):
    taskbed.processes.register(
        ["git", "describe", ANY_REST],
        returncode=128,
        stderr="fatal: No names found, cannot describe anything.\n",
    )
    async with taskbed.request() as sdk:
        task_id = await start_changelog(sdk)

    row = await taskbed.wait(task_id)

    assert row["status"] == "failed"
    assert "returned non-zero exit status 128" in row["error"]


async def test_a_slow_fetch_times_out_after_exactly_a_minute(taskbed):
    taskbed.processes.register(["git", "fetch", "--quiet"], duration=300)  # 5 minutes
    start = taskbed.clock.monotonic()

    async with taskbed.request() as sdk:
        assert await fetch(sdk) == "timed out"

    assert taskbed.clock.monotonic() - start == 60


async def test_a_quick_fetch(taskbed):
    taskbed.processes.register(["git", "fetch", "--quiet"], duration=2.5, cwd=REPO)
    taskbed.processes.register(["git", "gc", ANY_REST], optional=True)  # may stay unused

    async with taskbed.request() as sdk:
        assert await fetch(sdk) == "fetched"
