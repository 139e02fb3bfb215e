"""A module to watch in the browser: ``taskbed serve docs/examples/live_export.py``.

Its action ``start_export`` starts an export in the background: the job reports progress step
by step, asks its owner before it publishes, and returns a summary. The action returns at
once with the task's id and a ``BackgroundTask`` card, as a platform action does. The file is
written against the platform's SDK (``from democrai.sdk.decorators import action``); where the
platform is not installed, taskbed's stand-in answers that import.
"""

import asyncio

from democrai.sdk.decorators import action


@action("start_export")
async def start_export(ctx, session, module_sdk):
    """Export ``ctx["rows"]`` rows in ``ctx["steps"]`` steps, then ask before publishing."""
    steps = int(ctx.get("steps", 5))
    delay = float(ctx.get("delay", 0.4))
    rows = int(ctx.get("rows", 1200))
    task_ref = {"task_id": ""}  # the job learns its own id once it is submitted

    async def export():
        task_id = task_ref["task_id"]
        for step in range(1, steps + 1):
            await asyncio.sleep(delay)
            await module_sdk.tasks.update_progress(
                task_id, step / steps, checkpoint={"step": step}, label=f"Export: step {step}"
            )
        question = (
            module_sdk.ui.Builder()
            .add(module_sdk.ui.Text("question", f"Publish {rows} rows?"))
            .add(module_sdk.ui.Button("publish", "Publish"))
            .add(module_sdk.ui.Button("discard", "Discard"))
        )
        answer = await module_sdk.tasks.request_confirmation(task_id, question)  # a button's id
        return {"rows": rows, "published": answer == "publish"}

    task_id = await module_sdk.tasks.run_background(
        export(), "Export", task_key=ctx.get("task_key")
    )
    task_ref["task_id"] = task_id
    return {"taskId": task_id, "card": module_sdk.ui.BackgroundTask("export", task_id=task_id)}


@action("fail_fast")
async def fail_fast(ctx, session, module_sdk):
    """A job that fails: its card turns red with the error."""

    async def broken():
        await asyncio.sleep(float(ctx.get("delay", 0.2)))
        raise RuntimeError(ctx.get("message", "the export server said no"))

    return {"taskId": await module_sdk.tasks.run_background(broken(), "Doomed job")}
