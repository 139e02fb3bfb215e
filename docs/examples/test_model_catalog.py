"""Testing the catalog materialization action, its background task and what the user sees.

``model_catalog.py`` imports ``action`` from the platform, as module code does; with the
platform installed that is the platform's decorator, without it the harness's stand-in.
"""

import pytest

from taskbed import ui

from model_catalog import REGISTRY, download_catalog_model

TEXTS = {
    "en": {
        "system.model.catalog.action.download": "Download catalog model",
        "system.model.catalog.download.started": "Downloading {label}",
    },
    "it": {"system.model.catalog.action.download": "Scarica modello"},
}

pytestmark = [pytest.mark.asyncio, pytest.mark.taskbed(module="system", translations=TEXTS)]


@pytest.fixture(autouse=True)
def empty_registry():
    REGISTRY.clear()


async def test_the_action_returns_the_card_and_a_toast_at_once(taskbed, taskbed_client):
    response = await taskbed.call_action(download_catalog_model, {"catalog_id": "llama-3-8b"})

    (card,) = ui.components_of(response, "BackgroundTask")
    task_id = card["component"]["BackgroundTask"]["task_id"]
    assert taskbed.row(task_id)["taskKey"] == "system.model.catalog.materialize.llama-3-8b"
    assert taskbed.row(task_id)["status"] in ("pending", "running")  # it goes on after the action
    assert REGISTRY[1]["status"] == "materializing"
    await taskbed.emitted.expect("ui_messages")
    await taskbed.emitted.expect("notify", channel="toast")
    assert taskbed.emitted.toasts == [{"level": "success", "message": "Downloading Llama 3 8B"}]

    started = await taskbed_client.expect("backgroundTaskStarted", taskId=task_id)
    assert started["label"] == "Download catalog model: Llama 3 8B"
    for done in (1, 2, 3, 4):  # one file every 30 s of virtual time
        progress = await taskbed_client.expect("backgroundTaskProgress", taskId=task_id)
        assert progress["progress"] == done / 4
    await taskbed_client.expect("backgroundTaskCompleted", taskId=task_id)
    assert REGISTRY[1]["status"] == "available"
    assert taskbed.row(task_id)["checkpoint"] == {"files_done": 4}


async def test_the_label_is_in_the_users_language(taskbed):
    italian = {**taskbed.session(), "user_language": "it"}
    await taskbed.call_action(
        download_catalog_model, {"catalog_id": "whisper-small"}, session=italian
    )

    (submission,) = taskbed.manager.submissions
    assert submission.label == "Scarica modello: Whisper small"


async def test_a_second_click_gets_the_running_task(taskbed):
    first = await taskbed.call_action(download_catalog_model, {"catalog_id": "llama-3-8b"})
    again = await taskbed.call_action(download_catalog_model, {"catalog_id": "llama-3-8b"})

    ids = [ui.components_of(r, "BackgroundTask")[0]["component"]["BackgroundTask"]["task_id"]
           for r in (first, again)]  # fmt: skip
    assert ids[0] == ids[1]
    assert [s.deduplicated for s in taskbed.manager.submissions] == [False, True]


async def test_an_available_model_asks_before_it_is_replaced(taskbed, taskbed_client):
    REGISTRY[9] = {"id": 9, "catalog_id": "whisper-small", "status": "available"}
    response = await taskbed.call_action(download_catalog_model, {"catalog_id": "whisper-small"})
    task_id = ui.components_of(response, "BackgroundTask")[0]["component"]["BackgroundTask"][
        "task_id"
    ]

    await taskbed_client.expect("backgroundTaskStarted", taskId=task_id)
    question = await taskbed_client.expect("backgroundTaskConfirmation", taskId=task_id)
    (text,) = ui.components_of(question, "Text")
    assert text == ui.Text("t", "Replace?").to_dict()
    assert [b["id"] for b in ui.components_of(question, "Button")] == ["replace", "keep"]
    assert taskbed.row(task_id)["status"] == "waiting_confirmation"

    await taskbed_client.respond(task_id, "keep")

    done = await taskbed_client.expect("backgroundTaskCompleted", taskId=task_id)
    assert done["result"] == {"row_id": 10, "status": "cancelled"}


async def test_an_unknown_entry_is_a_toast_and_no_task(taskbed):
    response = await taskbed.call_action(download_catalog_model, {"catalog_id": "nope"})

    assert taskbed.manager.submissions == []
    assert response["effects"][0]["payload"] == {
        "level": "error",
        "message": "system.model.catalog.unknown",  # no text in the catalog: the key itself
    }
