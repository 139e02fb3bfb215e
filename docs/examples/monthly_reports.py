"""A reusable runtime task submitted by its registered name, from the platform's page
"Execution methods" (run_background). The ``run_background`` call is the page's, unchanged.
"""

import asyncio

from democrai.sdk.decorators import action


async def generate_monthly(month: str, include_refunds: bool = False) -> dict:
    """The task registered as ``reports.generate_monthly`` (kwargs come from the submission)."""
    await asyncio.sleep(120)  # query and render the report
    return {"month": month, "refunds": include_refunds, "file": f"revenue-{month}.pdf"}


@action("reports.start_monthly")
async def start_monthly_report(ctx: dict, session: dict, module_sdk):
    task_id = await module_sdk.tasks.run_background(
        "reports.generate_monthly",
        label="Generate monthly revenue report",
        task_key="reports.monthly.2026-04",
        month="2026-04",
        include_refunds=True,
    )
    return module_sdk.effects.respond(
        module_sdk.effects.ui_messages(
            module_sdk.ui.Builder()
            .add(module_sdk.ui.BackgroundTask("monthly_report", task_id=task_id))
            .build_surface_update_payload()
        )
    )
