import pytest
from my_module import export_report


@pytest.mark.asyncio
async def test_export_runs_once_per_report(taskbed, taskbed_client):
    async with taskbed.request() as sdk:
        first = await export_report(sdk, 42)
        second = await export_report(sdk, 42)  # a double click: the same task
    assert second == first
    row = await taskbed.wait(first)  # 30 s of virtual time, no real waiting
    assert row["status"] == "completed"
    assert row["result"] == {"report": 42, "rows": 120}
    await taskbed_client.expect("backgroundTaskStarted", taskId=first, label="Export")
    await taskbed_client.expect("backgroundTaskProgress", taskId=first, progress=0.5)
    await taskbed_client.expect("backgroundTaskCompleted", taskId=first)
