"""Testing a background job that runs for an hour, in well under a second.

The module code comes first; in your project you would import it instead.
"""

import asyncio

import pytest

# ---------------------------------------------------------------- the module code


async def start_sync(sdk, source):
    """A module action: sync one source in the background, at most once at a time."""

    async def sync():
        for step in range(1, 4):
            await asyncio.sleep(20 * 60)  # the source allows one page every 20 minutes
            await sdk.tasks.update_progress(task_id, step / 3, checkpoint={"pages": step})
        return {"source": source, "pages": 3}

    task_id = await sdk.tasks.run_background(sync(), f"Sync {source}", task_key=f"sync.{source}")
    return task_id


# ---------------------------------------------------------------- the tests


@pytest.mark.asyncio
async def test_sync_runs_for_an_hour_of_virtual_time(taskbed, taskbed_client):
    start = taskbed.clock.now()
    async with taskbed.request() as sdk:
        task_id = await start_sync(sdk, "crm")

    row = await taskbed.wait(task_id)

    assert row["status"] == "completed"
    assert row["result"] == {"source": "crm", "pages": 3}
    assert row["checkpoint"] == {"pages": 3}
    assert taskbed.clock.now() - start == 3600


@pytest.mark.asyncio
async def test_the_client_sees_the_job_progress(taskbed, taskbed_client):
    start = taskbed.clock.now()
    async with taskbed.request() as sdk:
        task_id = await start_sync(sdk, "crm")

    await taskbed_client.expect("backgroundTaskStarted", taskId=task_id, label="Sync crm")
    for pages in (1, 2, 3):
        await taskbed_client.expect(
            "backgroundTaskProgress", taskId=task_id, progress=pages / 3, checkpoint=True
        )
    await taskbed_client.expect(
        "backgroundTaskCompleted", taskId=task_id, result={"source": "crm", "pages": 3}
    )
    await taskbed_client.expect_nothing(within=24 * 3600)

    # Each message arrived at its exact virtual time: every 20 minutes.
    arrived = [t - start for t, message in taskbed_client.timeline]
    assert arrived == [0, 1200, 2400, 3600, 3600]


@pytest.mark.asyncio
async def test_a_second_start_returns_the_running_sync(taskbed):
    async with taskbed.request() as sdk:
        first = await start_sync(sdk, "crm")
        await asyncio.sleep(60)  # the first sync is running now
        second = await start_sync(sdk, "crm")
        other = await start_sync(sdk, "billing")

    assert second == first
    assert other != first
    assert [s.deduplicated for s in taskbed.manager.submissions] == [False, True, False]
    rows = taskbed.sdk().tasks.get_tasks_by_key("sync.crm", organization_id=10)
    assert [r["id"] for r in rows] == [first]
