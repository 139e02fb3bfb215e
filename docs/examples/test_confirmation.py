"""Testing a job that asks its owner before it acts.

The module code comes first; in your project you would import it instead.
"""

import asyncio

import pytest

from taskbed import ui

# ---------------------------------------------------------------- the module code


async def start_publish(sdk, draft_id):
    """A module action: publish a draft in the background once the user confirms."""

    async def publish():
        question = (
            sdk.ui.Builder()
            .add(sdk.ui.Text("q", f"Publish draft {draft_id}?"))
            .add(sdk.ui.Button("yes", "Publish"))
            .add(sdk.ui.Button("no", "Not now"))
        )
        answer = await sdk.tasks.request_confirmation(task_id, question)
        if answer != "yes":
            return {"published": False}
        await asyncio.sleep(5)  # the upload
        return {"published": True, "draft": draft_id}

    task_id = await sdk.tasks.run_background(publish(), f"Publish {draft_id}")
    return task_id


# ---------------------------------------------------------------- the tests

pytestmark = pytest.mark.asyncio


async def test_the_owner_confirms_in_the_client(taskbed, taskbed_client):
    async with taskbed.request() as sdk:
        task_id = await start_publish(sdk, "d-1")

    await taskbed_client.expect("backgroundTaskStarted", taskId=task_id)
    question = await taskbed_client.expect(
        "backgroundTaskConfirmation", taskId=task_id, surfaceId=f"task_confirm_{task_id}"
    )
    (text,) = ui.components_of(question, "Text")
    assert text["component"]["Text"]["text"] == {"literalString": "Publish draft d-1?"}
    assert taskbed.row(task_id)["status"] == "waiting_confirmation"

    await taskbed_client.respond(task_id, "yes")

    await taskbed_client.expect(
        "backgroundTaskCompleted", taskId=task_id, result={"published": True, "draft": "d-1"}
    )
    await taskbed_client.expect_nothing(within=60)


async def test_the_manager_answers_without_a_client(taskbed):
    async with taskbed.request() as sdk:
        task_id = await start_publish(sdk, "d-2")
    await asyncio.sleep(0)  # let the job start and ask

    await taskbed.manager.answer(task_id, "no")

    row = await taskbed.wait(task_id)
    assert (row["status"], row["result"]) == ("completed", {"published": False})


async def test_cancel_while_waiting_interrupts_the_job(taskbed, taskbed_client):
    async with taskbed.request() as sdk:
        task_id = await start_publish(sdk, "d-3")
    await taskbed_client.expect("backgroundTaskStarted", taskId=task_id)
    await taskbed_client.expect("backgroundTaskConfirmation", taskId=task_id)

    await taskbed_client.cancel(task_id)

    row = await taskbed.wait(task_id)
    assert row["status"] == "interrupted"
    await taskbed_client.expect("backgroundTaskError", taskId=task_id, error=row["error"])


async def test_an_offline_owner_gets_the_question_on_reconnect(taskbed, taskbed_client):
    taskbed_client.disconnect()
    async with taskbed.request() as sdk:
        task_id = await start_publish(sdk, "d-4")
    await asyncio.sleep(3600)  # an hour passes; nobody is there to answer

    taskbed_client.reconnect()

    # The question was kept for the owner; "started" was not (it is not durable).
    await taskbed_client.expect("backgroundTaskConfirmation", taskId=task_id)
    await taskbed_client.respond(task_id, "yes")
    await taskbed_client.expect("backgroundTaskCompleted", taskId=task_id)


async def test_only_the_owner_can_answer(taskbed, taskbed_client):
    async with taskbed.request() as sdk:
        task_id = await start_publish(sdk, "d-5")
    await taskbed_client.expect("backgroundTaskStarted", taskId=task_id)
    await taskbed_client.expect("backgroundTaskConfirmation", taskId=task_id)

    stranger = taskbed.client(user=8)
    await stranger.respond(task_id, "yes")  # ignored: user 8 does not own the task

    await asyncio.sleep(60)
    assert taskbed.row(task_id)["status"] == "waiting_confirmation"
    assert stranger.messages == []  # and user 8 was told nothing about the task
