"""The harness as a module author uses it: the ``taskbed`` fixtures on a virtual loop."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from time import perf_counter as real_perf_counter  # bound now: stays real in tests
from typing import Any

import pytest

from taskbed_harness import ClientView, Harness, InjectedFailure

pytestmark = pytest.mark.asyncio


async def test_an_hour_of_virtual_time_takes_well_under_a_second(
    taskbed: Harness, taskbed_client: ClientView
) -> None:
    start = taskbed.clock.now()

    async with taskbed.request() as sdk:

        async def hourly_job() -> str:
            for minute in range(1, 61):
                await asyncio.sleep(60)
                await sdk.tasks.update_progress(task_id, minute / 60)
            return "done"

        wall = real_perf_counter()  # time.perf_counter() would read virtual time here
        task_id = await sdk.tasks.run_background(hourly_job(), "Hourly")
        row = await taskbed.wait(task_id)
        elapsed = real_perf_counter() - wall

    assert row["status"] == "completed"
    assert elapsed < 1.0, f"an hour of virtual time took {elapsed:.2f} s of wall time"
    assert taskbed.clock.now() == start + 3600
    progress = taskbed_client.bodies("backgroundTaskProgress")
    assert len(progress) == 60
    # every timestamp is exact: minute n is reported at start + 60 n
    for minute, body in enumerate(progress, 1):
        expected = datetime.fromtimestamp(start + 60 * minute, UTC)
        assert body["updatedAt"] == expected.isoformat(timespec="milliseconds")
    assert [t for t, _ in taskbed_client.timeline[1:-1]] == [start + 60 * m for m in range(1, 61)]


async def test_wall_clock_follows_the_virtual_clock(taskbed: Harness) -> None:
    before = time.time()
    await asyncio.sleep(86400)
    assert time.time() - before == pytest.approx(86400, abs=1)
    assert datetime.now(UTC).timestamp() == pytest.approx(taskbed.clock.now(), abs=1e-3)


@pytest.mark.taskbed(hold=True)
async def test_hold_and_release_one_at_a_time(taskbed: Harness) -> None:
    ran: list[int] = []

    async def job(n: int) -> int:
        ran.append(n)
        return n

    async with taskbed.request() as sdk:
        ids = [await sdk.tasks.run_background(job(n), f"job {n}") for n in range(3)]
    await asyncio.sleep(1)
    assert ran == []
    assert [taskbed.row(i)["status"] for i in ids] == ["pending"] * 3
    assert taskbed.manager.held == ids

    assert taskbed.manager.release() == ids[0]
    await taskbed.wait(ids[0])
    assert ran == [0]
    assert taskbed.manager.release(ids[2]) == ids[2]
    await taskbed.wait(ids[2])
    assert ran == [0, 2]
    assert taskbed.manager.held == [ids[1]]
    assert [s.task_id for s in taskbed.manager.submissions] == ids


async def test_answer_a_confirmation_and_read_the_conversation(
    taskbed: Harness, taskbed_client: ClientView
) -> None:
    async with taskbed.request() as sdk:

        async def publish() -> Any:
            answer = await sdk.tasks.request_confirmation(
                task_id,
                sdk.ui.Builder().add(sdk.ui.Text("q", "Publish?")).add(sdk.ui.Button("yes", "Yes")),
            )
            return {"answer": answer}

        task_id = await sdk.tasks.run_background(publish(), "Publish")

    await taskbed_client.expect("backgroundTaskStarted", taskId=task_id, label="Publish")
    confirm = await taskbed_client.expect(
        "backgroundTaskConfirmation", taskId=task_id, surfaceId=f"task_confirm_{task_id}"
    )
    assert confirm["components"][0] == {
        "id": "q",
        "component": {"Text": {"text": {"literalString": "Publish?"}}},
        "children": {"explicitList": []},
    }
    await taskbed_client.respond(task_id, "yes")
    await taskbed_client.expect("backgroundTaskCompleted", taskId=task_id, result={"answer": "yes"})
    await taskbed_client.expect_nothing(within=60)


async def test_expect_shows_expected_and_actual(
    taskbed: Harness, taskbed_client: ClientView
) -> None:
    async with taskbed.request() as sdk:

        async def job() -> int:
            return 1

        task_id = await sdk.tasks.run_background(job(), "Job")
    await taskbed_client.expect("backgroundTaskStarted")
    with pytest.raises(AssertionError) as caught:
        await taskbed_client.expect("backgroundTaskCompleted", taskId=task_id, result=2)
    text = str(caught.value)
    assert "expected backgroundTaskCompleted" in text
    assert "result: expected 2, got 1" in text
    assert "messages received by user 7" in text


@pytest.mark.taskbed(hold=True)
async def test_cancel_and_injected_failures(taskbed: Harness, taskbed_client: ClientView) -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async with taskbed.request() as sdk:
        a = await sdk.tasks.run_background(forever(), "A")
        b = await sdk.tasks.run_background(forever(), "B")
        taskbed.manager.fail_next(RuntimeError("disk full"))
        c = await sdk.tasks.run_background(forever(), "C")
    taskbed.manager.release(a)
    await asyncio.sleep(0)
    await taskbed.manager.cancel(a)
    taskbed.manager.fail(b)
    taskbed.manager.release(c)
    rows = [await taskbed.wait(i) for i in (a, b, c)]
    assert [r["status"] for r in rows] == ["interrupted", "failed", "failed"]
    assert rows[1]["error"] == str(InjectedFailure("injected failure"))
    assert rows[2]["error"] == "disk full"
    errors = taskbed_client.bodies("backgroundTaskError")
    assert [e["taskId"] for e in errors] == [a, b, c]


async def test_registered_commands_replay_without_a_process(taskbed: Harness) -> None:
    taskbed.processes.register(["git", "status"], stdout="clean\n", duration=2.5)
    before = taskbed.clock.now()
    async with taskbed.request() as sdk:
        result = await sdk.tasks.run_subprocess(["git", "status"])
    assert (result.returncode, result.stdout) == (0, "clean\n")
    assert taskbed.clock.now() - before == pytest.approx(2.5)


async def test_each_test_gets_a_fresh_harness_part_one(taskbed: Harness) -> None:
    _fresh_state_check(taskbed)
    async with taskbed.request() as sdk:
        await sdk.tasks.run_background(asyncio.sleep(10**6), "left running", task_key="leak")
    await asyncio.sleep(1000)


async def test_each_test_gets_a_fresh_harness_part_two(taskbed: Harness) -> None:
    _fresh_state_check(taskbed)


def _fresh_state_check(taskbed: Harness) -> None:
    # the virtual clock starts at its epoch, and no task from another test is visible
    assert taskbed.clock.now() == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    sdk = taskbed.sdk()
    assert sdk.tasks.get_tasks_by_key("leak", organization_id=10) == []
    assert sdk.tasks.list_user_tasks(7, organization_id=10) == []


async def test_fail_next_waits_for_a_new_task_past_a_duplicate(taskbed: Harness) -> None:
    gate = asyncio.Event()

    async def job() -> str:
        await gate.wait()
        return "ok"

    async with taskbed.request() as sdk:
        holder = await sdk.tasks.run_background(job(), task_key="k")
        taskbed.manager.fail_next(RuntimeError("boom"))
        duplicate = await sdk.tasks.run_background(job(), task_key="k")
        fresh = await sdk.tasks.run_background(job(), task_key="other")
    gate.set()
    assert duplicate == holder
    assert (await taskbed.wait(holder))["status"] == "completed"
    assert (await taskbed.wait(fresh))["error"] == "boom"
    assert [s.deduplicated for s in taskbed.manager.submissions] == [False, True, False]
