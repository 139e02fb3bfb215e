"""Testing a task submitted by its registered name, with its kwargs."""

import pytest

from taskbed import ui

from monthly_reports import generate_monthly, start_monthly_report

pytestmark = pytest.mark.asyncio


@pytest.fixture
def reports(taskbed):
    """The runtime's task registry knows the task, as the platform's does."""
    taskbed.runtime.register_task("reports.generate_monthly", generate_monthly)
    return taskbed


async def test_the_registered_task_gets_the_kwargs(reports, taskbed_client):
    response = await reports.call_action(start_monthly_report, module="reports")

    (card,) = ui.components_of(response, "BackgroundTask")
    task_id = card["component"]["BackgroundTask"]["task_id"]
    await taskbed_client.expect(
        "backgroundTaskStarted", taskId=task_id, label="Generate monthly revenue report"
    )
    row = await reports.wait(task_id)
    assert row["result"] == {"month": "2026-04", "refunds": True, "file": "revenue-2026-04.pdf"}
    assert row["taskKey"] == "reports.monthly.2026-04"
    assert reports.clock.monotonic() == 120  # two minutes of virtual time, at once


async def test_without_registration_the_name_is_unknown(taskbed):
    with pytest.raises(ValueError, match=r"no task registered under the name 'reports\.generate"):
        await taskbed.call_action(start_monthly_report)
