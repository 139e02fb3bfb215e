"""A module's action: export a report in the background, once per report."""

import asyncio


async def export_report(sdk, report_id):
    async def job():
        await asyncio.sleep(30)  # slow work: virtual time in tests
        await sdk.tasks.update_progress(task_id, 0.5, label="half way")
        return {"report": report_id, "rows": 120}

    key = f"export.{report_id}"
    task_id = await sdk.tasks.run_background(job(), label="Export", task_key=key)
    return task_id
