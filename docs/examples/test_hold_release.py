"""Holding submissions, releasing them one by one, and making tasks fail on purpose.

The module code comes first; in your project you would import it instead.
"""

import asyncio

import pytest

from taskbed_harness import InjectedFailure

# ---------------------------------------------------------------- the module code

EXPORTED = []


async def export_rows(sdk, table):
    """A module action: export one table in the background, once at a time per table."""

    async def export():
        await asyncio.sleep(30)
        EXPORTED.append(table)
        return {"table": table}

    return await sdk.tasks.run_background(export(), f"Export {table}", task_key=f"export.{table}")


def status_of(sdk, task_id):
    """What the module shows in its task list (a query, as the module would make it)."""
    (row,) = [r for r in sdk.tasks.list_user_tasks(7, organization_id=10) if r["id"] == task_id]
    return row["status"]


# ---------------------------------------------------------------- the tests

pytestmark = pytest.mark.asyncio


@pytest.fixture(autouse=True)
def _no_exports_yet():
    EXPORTED.clear()


@pytest.mark.taskbed(hold=True)
async def test_held_tasks_stay_pending_until_released(taskbed):
    async with taskbed.request() as sdk:
        users = await export_rows(sdk, "users")
        orders = await export_rows(sdk, "orders")
        await asyncio.sleep(3600)
        assert status_of(sdk, users) == status_of(sdk, orders) == "pending"
        assert taskbed.manager.held == [users, orders]

        assert taskbed.manager.release(orders) == orders  # this one first
        await taskbed.wait(orders)
        assert EXPORTED == ["orders"]
        assert status_of(sdk, users) == "pending"

        taskbed.manager.release()  # the oldest held task
        await taskbed.wait(users)
    assert EXPORTED == ["orders", "users"]


@pytest.mark.taskbed(hold=True)
async def test_a_pending_export_still_holds_its_key(taskbed):
    async with taskbed.request() as sdk:
        first = await export_rows(sdk, "users")
        again = await export_rows(sdk, "users")

    assert again == first
    assert [s.deduplicated for s in taskbed.manager.submissions] == [False, True]
    assert taskbed.manager.release_all() == [first]
    await taskbed.wait(first)


@pytest.mark.taskbed(hold=True)
async def test_a_held_task_made_to_fail(taskbed, taskbed_client):
    async with taskbed.request() as sdk:
        task_id = await export_rows(sdk, "users")

    taskbed.manager.fail(task_id, OSError("disk full"))  # fails instead of running

    row = await taskbed.wait(task_id)
    assert (row["status"], row["error"]) == ("failed", "disk full")
    assert EXPORTED == []
    await taskbed_client.expect("backgroundTaskStarted", taskId=task_id)
    await taskbed_client.expect("backgroundTaskError", taskId=task_id, error="disk full")


async def test_the_next_task_fails(taskbed):
    taskbed.manager.fail_next()  # InjectedFailure("injected failure") by default
    async with taskbed.request() as sdk:
        failing = await export_rows(sdk, "users")
        working = await export_rows(sdk, "orders")

    assert (await taskbed.wait(failing))["error"] == str(InjectedFailure("injected failure"))
    assert (await taskbed.wait(working))["status"] == "completed"
    assert EXPORTED == ["orders"]


async def test_cancel_a_running_export(taskbed):
    async with taskbed.request() as sdk:
        task_id = await export_rows(sdk, "users")
        await asyncio.sleep(10)  # running, 20 s to go
        await taskbed.manager.cancel(task_id)

    row = await taskbed.wait(task_id)
    assert row["status"] == "interrupted"
    assert EXPORTED == []
