"""The task lifecycle: every status change of every task goes through this file.

Two rules shape it:

* Everything that affects a status transition lives here, as data. The reference task
  manager, the stores and the harness's fakes never compare statuses with ad-hoc ``if``\\s;
  they ask :func:`transition` (or read :data:`ACTIVE` / :data:`TERMINAL`).
* The same rules apply to every implementation. The conformance suite judges other runtimes
  by the behaviour this table produces.

Theory of operation
-------------------
A task is created ``pending``. The first time its work runs it becomes ``running``. A running
task may stop to ask its owner something (``waiting_confirmation``) and goes back to
``running`` when the answer arrives, or when the work stops waiting without one (a
``wait_for`` timeout around the question). It ends ``completed`` (its work returned), ``failed``
(its work raised) or ``interrupted`` (it was cancelled, its runtime stopped, or its runtime
died and recovery found it). A terminal task never changes status again: the table has no
row for terminal states, so any event on them is an error.

Prior art: python-hyper/h11 ``_state.py`` keeps its connection state machine as plain dicts in
one file and raises one error type naming event, role and state.
"""

from __future__ import annotations

import enum
from typing import Final, cast

from ._errors import LifecycleError


class TaskStatus(enum.StrEnum):
    """A task's status, as stored and as serialized (the values are the wire strings)."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING_CONFIRMATION = "waiting_confirmation"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class TaskEvent(enum.StrEnum):
    """Something that happens to a task and may change its status."""

    START = "start"  # the runtime begins running the task's work
    COMPLETE = "complete"  # the work returned
    FAIL = "fail"  # the work raised
    INTERRUPT = "interrupt"  # cancelled, runtime stopped, or recovered after a crash
    ASK = "ask"  # the work asks its owner for confirmation
    ANSWER = "answer"  # the owner answered the confirmation
    WITHDRAW = "withdraw"  # the work stopped waiting for an answer (timeout, cancellation)


P, R, W = TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.WAITING_CONFIRMATION

#: The whole lifecycle. A status missing from the outer dict is terminal; an event missing
#: from a status's row is not allowed in that status.
TRANSITIONS: Final[dict[TaskStatus, dict[TaskEvent, TaskStatus]]] = {
    P: {
        TaskEvent.START: R,
        TaskEvent.INTERRUPT: TaskStatus.INTERRUPTED,
        TaskEvent.FAIL: TaskStatus.FAILED,
    },
    R: {
        TaskEvent.COMPLETE: TaskStatus.COMPLETED,
        TaskEvent.FAIL: TaskStatus.FAILED,
        TaskEvent.INTERRUPT: TaskStatus.INTERRUPTED,
        TaskEvent.ASK: W,
    },
    W: {
        TaskEvent.ANSWER: R,
        TaskEvent.WITHDRAW: R,
        TaskEvent.FAIL: TaskStatus.FAILED,
        TaskEvent.INTERRUPT: TaskStatus.INTERRUPTED,
    },
}

#: The same table, looked up by a plain str status (a StrEnum hashes and compares as its
#: value): :func:`transition` then skips building the enum.
_BY_VALUE = cast("dict[str, dict[TaskEvent, TaskStatus]]", TRANSITIONS)
_NO_ROW: Final[dict[TaskEvent, TaskStatus]] = {}

#: Statuses that hold a ``task_key`` (dedup) and that recovery interrupts.
ACTIVE: Final[frozenset[TaskStatus]] = frozenset(TRANSITIONS)
#: Statuses that never change again.
TERMINAL: Final[frozenset[TaskStatus]] = frozenset(TaskStatus) - ACTIVE


def transition(task_id: str, status: str, event: TaskEvent) -> TaskStatus:
    """Return the status that *event* moves a task in *status* to.

    Raises:
        LifecycleError: the table has no such transition (for example any event on a
            terminal task). The message names the task, the state and the event.
    """
    if type(status) is str:  # the common case, two per task (benchmarks/bench_submit.py)
        found = _BY_VALUE.get(status, _NO_ROW).get(event)
        if found is not None:
            return found
    state = TaskStatus(status)
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        allowed = ", ".join(TRANSITIONS.get(state, {})) or "none, the task is terminal"
        raise LifecycleError(
            f"task {task_id}: event {event.value!r} is not allowed in state {state.value!r} "
            f"(allowed there: {allowed})"
        ) from None


def is_active(status: str) -> bool:
    """True for ``pending``, ``running`` and ``waiting_confirmation``."""
    return status in ACTIVE


def sources(event: TaskEvent) -> frozenset[TaskStatus]:
    """The statuses in which *event* is allowed (for stores that change many rows in one step)."""
    return frozenset(state for state, row in TRANSITIONS.items() if event in row)
