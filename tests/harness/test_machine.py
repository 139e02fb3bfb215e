"""Stateful checks of dedup and the lifecycle on the fake task manager's virtual loop.

Each example gets a fresh ``Harness`` on its own virtual loop (``TaskbedMachine``); rules
submit, release, fail, cancel and finish tasks in random orders, and the invariants compare
what the runtime says with a simple model of the rules.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from rules import RULES
from taskbed import ACTIVE, TERMINAL
from taskbed_harness.strategies import TaskbedMachine, organization_ids, task_keys

assert {"DEDUP-1", "DEDUP-2", "DEDUP-3", "BG-11"} <= set(RULES)


class DedupAndLifecycle(TaskbedMachine):
    """Model: at most one active task per (organization, key); terminal rows never change."""

    def __init__(self) -> None:
        super().__init__()
        self.finish: dict[str, asyncio.Event] = {}
        self.ids: list[str] = []
        self.terminal_seen: dict[str, dict[str, Any]] = {}

    def _row(self, task_id: str) -> dict[str, Any]:
        return self.tb.row(task_id)

    @rule(key=task_keys(), org=organization_ids())
    def submit(self, key: str | None, org: Any) -> None:
        gate = asyncio.Event()

        async def job() -> str:
            await gate.wait()
            return "ok"

        sdk = self.tb.sdk(organization=org)
        holders = [
            r["id"]
            for r in (sdk.tasks.get_tasks_by_key(key, organization_id=org) if key else [])
            if r["status"] in ACTIVE
        ]
        task_id = self.run(sdk.tasks.run_background(job(), "job", task_key=key))
        if holders:  # DEDUP-1: an active holder's id comes back, nothing new is created
            assert task_id == holders[0]
            assert task_id in self.ids
        else:  # DEDUP-2/3: no active holder in this organization, so a new task
            assert task_id not in self.ids
            self.ids.append(task_id)
            self.finish[task_id] = gate

    @precondition(lambda self: bool(self.tb.manager.held))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(self.tb.manager.held))
        self.tb.manager.release(task_id)
        self.run(asyncio.sleep(0.001))

    @precondition(lambda self: bool(self.tb.manager.held))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        self.tb.manager.fail(data.draw(st.sampled_from(self.tb.manager.held)))
        self.run(asyncio.sleep(0.001))

    @precondition(lambda self: bool(self.ids))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.run(self.tb.manager.cancel(data.draw(st.sampled_from(self.ids))))
        self.run(asyncio.sleep(0.001))

    @precondition(lambda self: bool(self.ids))
    @rule(data=st.data())
    def finish_one(self, data: st.DataObject) -> None:
        self.finish[data.draw(st.sampled_from(self.ids))].set()
        self.run(asyncio.sleep(0.001))

    @invariant()
    def one_active_task_per_key_and_organization(self) -> None:
        active: dict[tuple[str, str], str] = {}
        for task_id in self.ids:
            row = self._row(task_id)
            if row["taskKey"] and row["status"] in ACTIVE:
                slot = (repr(row["organizationId"]), row["taskKey"])
                assert slot not in active, f"two active tasks hold {slot}"
                active[slot] = task_id

    @invariant()
    def terminal_rows_never_change(self) -> None:
        for task_id in self.ids:
            row = self._row(task_id)
            if task_id in self.terminal_seen:
                assert row == self.terminal_seen[task_id]
            elif row["status"] in TERMINAL:
                self.terminal_seen[task_id] = row


TestDedupAndLifecycle = DedupAndLifecycle.TestCase
TestDedupAndLifecycle.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
