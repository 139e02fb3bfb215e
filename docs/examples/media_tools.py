"""Subprocesses of a module, from the platform's page "Execution methods" (run_subprocess): a
probe for ``ffmpeg`` and a listing of a tar bundle in a working directory. The
``run_subprocess`` calls and the lines after them are the page's, unchanged.
"""

from democrai.sdk.decorators import action

WORKSPACE = "/srv/acme/bundles"


@action("media.probe_ffmpeg")
async def probe_ffmpeg(ctx: dict, session: dict, module_sdk):
    result = await module_sdk.tasks.run_subprocess(
        ["ffmpeg", "-version"],
        check=True,
        text=True,
    )
    version_line = (result.stdout or "").splitlines()[0]
    return module_sdk.effects.respond(
        module_sdk.effects.notify("toast", {"level": "info", "message": version_line})
    )


@action("media.list_bundle")
async def list_bundle(ctx: dict, session: dict, module_sdk):
    workspace_dir = str(ctx.get("workspace_dir") or WORKSPACE)
    result = await module_sdk.tasks.run_subprocess(
        ["tar", "-tf", "bundle.tar"],
        cwd=workspace_dir,
        check=True,
        text=True,
    )
    entries = [line for line in (result.stdout or "").splitlines() if line]
    return module_sdk.effects.respond(
        module_sdk.effects.ui_messages(
            [module_sdk.ui.Builder.build_state_update_payload({"/bundle": entries}, scope="page")]
        )
    )
