"""Testing ``preview_manifest``: media.view, run_blocking, and the state update it returns."""

import pytest

from taskbed import MediaNotFoundError

from manifest_preview import preview_manifest

pytestmark = pytest.mark.asyncio


async def test_the_preview_is_a_state_update_of_the_page(taskbed):
    taskbed.add_media("uploads/7/manifest.json", b'{"name": "demo", "files": ["a", "b"]}')

    response = await taskbed.call_action(
        preview_manifest, {"storage_ref": " uploads/7/manifest.json "}
    )

    assert response == {
        "effects": [
            {
                "type": "ui_messages",
                "messages": [
                    {
                        "stateUpdate": {
                            "scope": "page",
                            "values": {"/manifest_preview": {"name": "demo", "files": ["a", "b"]}},
                        }
                    }
                ],
            }
        ]
    }
    await taskbed.emitted.expect("ui_messages")
    assert taskbed.emitted.ui_messages[0]["stateUpdate"]["scope"] == "page"


async def test_it_is_called_by_its_registered_name_too(taskbed):
    taskbed.add_media("m.json", b"[]")

    response = await taskbed.call_action("preview_manifest", {"storage_ref": "m.json"})

    assert response["effects"][0]["messages"][0]["stateUpdate"]["values"] == {
        "/manifest_preview": []
    }


async def test_an_unknown_upload_is_a_clear_error(taskbed):
    with pytest.raises(MediaNotFoundError, match=r"no media is stored at 'uploads/gone\.json'"):
        await taskbed.call_action(preview_manifest, {"storage_ref": "uploads/gone.json"})
