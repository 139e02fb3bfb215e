"""The fake task manager: the reference task manager plus controls for tests.

It is a subclass with extra powers, not a second implementation (prior art: temporalio's
time-skipping ``WorkflowEnvironment``): every rule still runs through the reference
``TaskManager`` and the lifecycle table, so a module author's test exercises the real rules.
The powers: hold submissions and release them one at a time, list submissions, make a task
fail, answer a confirmation and cancel a task as its owner would.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Awaitable
from typing import Any

from taskbed import Connection, ConnectionRegistry, Owner, Runtime, TaskManager, TaskRecord, Work

from ._watchdog import DaemonThreadPool


@dataclasses.dataclass(frozen=True, slots=True)
class Submission:
    """One ``run_background`` call as the fake manager saw it."""

    task_id: str
    label: str
    task_key: str | None
    module: str
    owner: Owner
    #: True when the call returned an active task's id (dedup) instead of creating one.
    deduplicated: bool


class InjectedFailure(Exception):
    """The default exception of ``fail_next()`` / ``fail()``."""


class FakeTaskManager(TaskManager):
    """``TaskManager`` with test controls. ``Harness`` and the pytest fixtures install it.

    Methods:
        hold(on=True): from now on, new tasks stay ``pending`` until released.
        release(task_id=None) -> str: let one held task start (the oldest, or *task_id*).
        release_all() -> list[str]: let every held task start.
        held: ids of the tasks waiting to be released, oldest first.
        submissions: every ``run_background`` call, in order (see ``Submission``).
        fail_next(exc=None): the next new task fails with *exc* instead of running its work.
        fail(task_id, exc=None): a held task fails with *exc* when released (released now).
        answer(task_id, response): answer a confirmation as the task's owner.
        cancel(task_id): cancel a task as its owner.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.holding = False
        self.submissions: list[Submission] = []
        self._submitted: set[str] = set()  # ids of the tasks submissions created
        self._gates: dict[str, asyncio.Event] = {}
        self._next_failures: deque[BaseException] = deque()
        self._failures: dict[str, BaseException] = {}

    # ------------------------------------------------------------ submission

    def submit(self, work: Work, **kwargs: Any) -> str:
        failure = self._next_failures.popleft() if self._next_failures else None
        if failure is not None:
            work = _failing(work, failure)
        task_id = super().submit(work, **kwargs)
        deduplicated = task_id in self._submitted or task_id not in self._local
        if deduplicated and failure is not None:
            self._next_failures.appendleft(failure)  # meant for the next *new* task
        owner: Owner = kwargs["owner"]
        self.submissions.append(
            Submission(
                task_id=task_id,
                label=kwargs["label"],
                task_key=kwargs["task_key"],
                module=kwargs["module"],
                owner=owner,
                deduplicated=deduplicated,
            )
        )
        if not deduplicated:
            self._submitted.add(task_id)
            if self.holding:
                self._gates[task_id] = asyncio.Event()
        return task_id

    def _admit(self, record: TaskRecord) -> Awaitable[None] | None:
        # The seam is a plain call: a task that is neither held nor set to fail starts at once.
        if record.id in self._gates or record.id in self._failures:
            return self._held(record)
        return None

    async def _held(self, record: TaskRecord) -> None:
        gate = self._gates.get(record.id)
        if gate is not None:
            try:
                await gate.wait()
            finally:
                self._gates.pop(record.id, None)
        failure = self._failures.pop(record.id, None)
        if failure is not None:
            raise failure

    # ------------------------------------------------------------ controls

    def hold(self, on: bool = True) -> None:
        """Hold new submissions (``pending``) until released; ``hold(False)`` stops holding."""
        self.holding = on

    @property
    def held(self) -> list[str]:
        return [tid for tid, gate in self._gates.items() if not gate.is_set()]

    def release(self, task_id: str | None = None) -> str:
        """Let one held task start: the oldest, or *task_id*. Returns its id."""
        held = self.held
        if not held:
            raise LookupError(
                "no task is held: call taskbed.manager.hold() before submitting, "
                "or use @pytest.mark.taskbed(hold=True)"
            )
        if task_id is None:
            task_id = held[0]
        elif task_id not in held:
            raise LookupError(f"task {task_id!r} is not held; held tasks: {held}")
        self._gates[task_id].set()
        return task_id

    def release_all(self) -> list[str]:
        released = self.held
        for task_id in released:
            self._gates[task_id].set()
        return released

    def fail_next(self, exc: BaseException | None = None) -> None:
        """The next new task fails with *exc* (an ``InjectedFailure`` by default)."""
        self._next_failures.append(exc if exc is not None else InjectedFailure("injected failure"))

    def fail(self, task_id: str, exc: BaseException | None = None) -> None:
        """A held task fails with *exc* instead of running its work; it is released now."""
        if task_id not in self.held:
            raise LookupError(
                f"task {task_id!r} is not held; only a held task can be made to fail "
                "(hold() first, or fail_next() before submitting)"
            )
        self._failures[task_id] = exc if exc is not None else InjectedFailure("injected failure")
        self.release(task_id)

    async def answer(self, task_id: str, response: Any) -> None:
        """Answer the task's confirmation as its owner (the same path a client takes)."""
        await self._as_owner(task_id, "backgroundTaskResponse", {"response": response})

    async def cancel(self, task_id: str) -> None:
        """Cancel the task as its owner (the same path a client takes)."""
        await self._as_owner(task_id, "backgroundTaskCancel", {})

    async def _as_owner(self, task_id: str, command: str, extra: dict[str, Any]) -> None:
        record = self._record(task_id)
        if record is None:
            raise LookupError(f"no task with id {task_id!r}")
        if not isinstance(self.channel, ConnectionRegistry):  # pragma: no cover - wiring error
            raise TypeError("the fake task manager needs the reference ConnectionRegistry")
        # A connection that is not registered: it carries the owner, and receives nothing.
        conn = Connection(self.channel, record.owner)
        await self.handle_client_message(conn, command, {"taskId": task_id, **extra})


def _failing(work: Work, exc: BaseException) -> Work:
    async def fail() -> Any:
        work.discard()
        raise exc

    return Work(start=fail, discard=work.discard)


class HarnessRuntime(Runtime):
    """The reference ``Runtime`` with the fake task manager installed.

    Its ``run_blocking`` threads come from a ``DaemonThreadPool``: one that never returns is
    let go by the watchdog instead of keeping the test process alive at exit.
    """

    manager_class = FakeTaskManager

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool.executor_class = DaemonThreadPool

    @property
    def fake(self) -> FakeTaskManager:
        """The running fake task manager (raises if the runtime is not started)."""
        manager = self.manager
        if manager is None:
            raise RuntimeError("the harness runtime is not started")
        assert isinstance(manager, FakeTaskManager)
        return manager
