"""The system module's catalog materialization, from the platform's page "Execution methods"
(run_background): validate the catalog entry, create the registry row in status
``materializing``, submit the background coroutine with a stable ``task_key``, and return a
``BackgroundTask`` card and a success toast at once. The ``run_background`` call and the
``task_ref`` holder are the page's, unchanged; the rest is what the page describes.

The module's database is a dict here (``REGISTRY``), as the page does not show it.
"""

import asyncio

from democrai.sdk.decorators import action

CATALOG = {
    "llama-3-8b": {"label": "Llama 3 8B", "files": 4},
    "whisper-small": {"label": "Whisper small", "files": 2},
}
REGISTRY: dict[int, dict] = {}  # the available_model_registry table


def create_registry_row(catalog_id: str) -> dict:
    row = {"id": max(REGISTRY, default=0) + 1, "catalog_id": catalog_id, "status": "materializing"}
    REGISTRY[row["id"]] = row
    return row


async def create_catalog_inventory_background(module_sdk, *, task_ref, row_id, catalog_id):
    """Download the entry's files, asking first when the model is already available."""
    entry = CATALOG[catalog_id]
    row = REGISTRY[row_id]
    if any(r["catalog_id"] == catalog_id and r["status"] == "available" for r in REGISTRY.values()):
        question = (
            module_sdk.ui.Builder()
            .add(module_sdk.ui.Text("t", "Replace?"))
            .add(module_sdk.ui.Button("replace", "Replace", action="system.model.catalog.replace"))
            .add(module_sdk.ui.Button("keep", "Keep", action="system.model.catalog.keep"))
        )
        answer = await module_sdk.tasks.request_confirmation(task_ref["task_id"], question)
        if answer != "replace":
            row["status"] = "cancelled"
            return {"row_id": row_id, "status": "cancelled"}
    files = entry["files"]
    for done in range(1, files + 1):
        await asyncio.sleep(30)  # one file of the model
        await module_sdk.tasks.update_progress(
            task_ref["task_id"], done / files, checkpoint={"files_done": done}
        )
    row["status"] = "available"
    return {"row_id": row_id, "status": "available"}


@action("system.model.catalog.download")
async def download_catalog_model(ctx: dict, session: dict, module_sdk):
    catalog_id = str(ctx.get("catalog_id") or "").strip()
    entry = CATALOG.get(catalog_id)
    if entry is None:
        return module_sdk.effects.respond(
            module_sdk.effects.notify(
                "toast",
                {"level": "error", "message": module_sdk.i18n.t("system.model.catalog.unknown")},
            )
        )
    row = create_registry_row(catalog_id)

    task_ref = {"task_id": ""}
    task_id = await module_sdk.tasks.run_background(
        create_catalog_inventory_background(
            module_sdk,
            task_ref=task_ref,
            row_id=int(row.get("id") or 0),
            catalog_id=catalog_id,
        ),
        label=f"{module_sdk.i18n.t('system.model.catalog.action.download')}: {str(entry.get('label') or '')}",  # noqa: E501, RUF010 - the page's line
        task_key=f"system.model.catalog.materialize.{catalog_id}",
    )
    task_ref["task_id"] = task_id

    card = module_sdk.ui.BackgroundTask(
        f"catalog_task_{catalog_id}", task_id=task_id, on_completed="system.model.catalog.refresh"
    )
    return module_sdk.effects.respond(
        module_sdk.effects.ui_messages(
            module_sdk.ui.Builder().add(card).build_surface_update_payload("model_catalog")
        ),
        module_sdk.effects.notify(
            "toast",
            {
                "level": "success",
                "message": module_sdk.i18n.t(
                    "system.model.catalog.download.started", {"label": entry["label"]}
                ),
            },
        ),
    )
