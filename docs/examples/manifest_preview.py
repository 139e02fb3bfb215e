"""A module action from the platform's page "Execution methods" (run_blocking): parse an
uploaded manifest in a worker thread and show a preview. The code below the imports is the
page's, unchanged."""

import json

from democrai.sdk.decorators import action


def load_manifest(payload: bytes) -> dict:
    return json.loads(payload.decode("utf-8"))


@action("preview_manifest")
async def preview_manifest(ctx: dict, session: dict, module_sdk):
    storage_ref = str(ctx.get("storage_ref") or "").strip()
    payload = module_sdk.media.view(storage_ref)
    manifest = await module_sdk.tasks.run_blocking(load_manifest, payload)
    return module_sdk.effects.respond(
        module_sdk.effects.ui_messages(
            [
                module_sdk.ui.Builder.build_state_update_payload(
                    {"/manifest_preview": manifest},
                    scope="page",
                )
            ]
        )
    )
