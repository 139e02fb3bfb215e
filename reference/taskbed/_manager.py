"""The task manager: submission, dedup, the run of a task, progress, confirmation, recovery.

It is written once, against the ports (Clock, TaskStore, ClientChannel); the reference
runtime and the harness give it different adapters. Every status change goes through
:meth:`TaskManager._change`, which asks the lifecycle table first.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import math
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ._channel import Connection
from ._context import RequestContext, set_request
from ._errors import UnknownTaskError, see
from ._lifecycle import ACTIVE, TERMINAL, TaskEvent, TaskStatus, transition
from ._model import (
    Message,
    Owner,
    TaskRecord,
    confirmation_message,
    json_copy,
    outcome_message,
    progress_message,
    scope,
    started_message,
)
from ._ports import ClientChannel, Clock, Lease, TaskStore

log = logging.getLogger("taskbed")

HOST = socket.gethostname()

#: The ``error`` of tasks that recovery found orphaned.
RESTARTED_ERROR = (
    "interrupted: the runtime that ran this task stopped unexpectedly (crash or restart); "
    "the task was recovered when a runtime started again"
)
CANCELLED_ERROR = "interrupted: cancelled"
STOPPED_ERROR = "interrupted: the runtime stopped"

#: Result types that JSON stores exactly as they are: no check, no round trip needed.
_JSON_AS_IS: frozenset[type] = frozenset({type(None), bool, str})
#: A status as the plain str rows hold (``TaskStatus.value`` is a slower enum property).
_PLAIN: dict[TaskStatus, str] = {status: status.value for status in TaskStatus}


class Work:
    """What a task runs, and how to drop it unrun (a duplicate or a failed submission)."""

    __slots__ = ("_discard", "_start")

    def __init__(self, start: Callable[[], Awaitable[Any]], discard: Callable[[], None]) -> None:
        self._start = start
        self._discard = discard

    def start(self) -> Awaitable[Any]:
        return self._start()

    def discard(self) -> None:
        self._discard()


class CoroutineWork(Work):
    """The work of ``run_background(job())``: that coroutine object.

    One object per task where ``Work(start=lambda: coro, discard=coro.close)`` takes five
    (the closure, its cell and tuple, a bound method). They live as long as the task does,
    and with thousands of tasks waiting the garbage collector's full passes walk them all
    (benchmarks/bench_submit.py).
    """

    __slots__ = ("_coroutine",)

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        # Work's callables are not needed: start() and discard() use the coroutine.
        self._coroutine = coroutine

    def start(self) -> Awaitable[Any]:
        return self._coroutine

    def discard(self) -> None:
        self._coroutine.close()


@dataclasses.dataclass(slots=True)
class _Local:
    record: TaskRecord
    task: asyncio.Task[None] | None = None
    interrupt_error: str = CANCELLED_ERROR
    confirmation: tuple[asyncio.Future[Any], list[dict[str, Any]]] | None = None
    #: Set for a task this runtime runs: who ends it, and what it must close, should it be
    #: cancelled before its first step (see ``never_started``).
    manager: TaskManager | None = None
    work: Work | None = None

    def never_started(self, _task: object) -> None:
        """The task's done callback; ``_run`` removes it once the task's first step runs.

        A bound method rather than a closure: fewer objects per waiting task, and every
        object alive per task makes the garbage collector's full passes longer.
        """
        if self.manager is not None and self.work is not None:
            self.manager._never_started(self, self.work)


#: The first hex digit of byte 8 with the RFC 4122 variant bits (10xx) set.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_task_id() -> str:
    """A random version-4 UUID as text: what ``str(uuid.uuid4())`` gives, at 35% of its cost.

    The version and variant bits are set in the hex text (digit 12 becomes ``4``, digit 16
    one of ``89ab``), which skips a bytearray and two byte operations.
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


#: A task id no task has (ids are UUIDs).
_NO_TASK_ID = "taskbed: no such task"  # not a UUID; no NUL (PostgreSQL text refuses it)
#: The row a client command is compared with when no task has its id (OWN-6): its owner is
#: nobody's, and it is compared all the same, so a refusal costs what it costs for a task of
#: someone else.
_NO_TASK = TaskRecord(
    _NO_TASK_ID, _NO_TASK_ID, _NO_TASK_ID, "", "", None, "", 0.0, {}, None, None, 0.0, 0.0
)


def same_owner(a: Owner, b: Owner) -> bool:
    return scope(a.user_id) == scope(b.user_id) and scope(a.organization_id) == scope(
        b.organization_id
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TaskManager:
    """Runs tasks for one runtime instance over a store that may be shared with others."""

    def __init__(
        self,
        *,
        store: TaskStore,
        clock: Clock,
        channel: ClientChannel,
        lease_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.channel = channel
        self.runtime_id = uuid.uuid4().hex
        self.lease_seconds = lease_seconds
        self._local: dict[str, _Local] = {}
        #: The id of a task the store holds, for the second lookup of a client command that
        #: names no task (see ``handle_client_message``).
        self._decoy = _NO_TASK_ID
        self._heartbeat: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ life of the manager

    def _lease(self) -> Lease:
        ttl = self.lease_seconds if self.store.shared else math.inf
        return Lease(self.runtime_id, self.clock.now() + ttl, HOST, os.getpid())

    async def start(self) -> None:
        """Take a lease, recover the tasks of runtimes that are gone, keep the lease fresh."""
        self.store.heartbeat(self._lease())
        self.recover()
        if self.store.shared:
            self._heartbeat = asyncio.get_running_loop().create_task(self._keep_lease())

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                self.store.heartbeat(self._lease())
                self.recover()
            except Exception:
                log.exception("taskbed: could not refresh the runtime lease")

    def recover(self) -> list[TaskRecord]:
        """Interrupt the active tasks of runtimes that are gone (REC).

        A runtime is gone when its lease expired, or when it ran on this host and its process
        no longer exists. Tasks of live runtimes are never touched.
        """
        now = self.clock.now()
        dead = [
            lease.runtime_id
            for lease in self.store.leases()
            if lease.runtime_id != self.runtime_id
            and (lease.expires_at < now or (lease.host == HOST and not _pid_alive(lease.pid)))
        ]
        orphans = self.store.interrupt_orphans(dead, now, RESTARTED_ERROR)
        for row in orphans:
            self.channel.publish(row.owner, outcome_message(row), durable=True)
        return orphans

    async def stop(self) -> None:
        """Interrupt the tasks this runtime runs, wait for them, and give up the lease."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        running = []
        for local in list(self._local.values()):
            if local.task is not None and not local.task.done():
                local.interrupt_error = STOPPED_ERROR
                local.task.cancel()
                running.append(local.task)
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        self.store.release(self.runtime_id)

    # ------------------------------------------------------------ submission

    def submit(
        self,
        work: Work,
        *,
        owner: Owner,
        module: str,
        label: str,
        task_key: str | None,
        request: RequestContext | None,
        session_key: str | None,
    ) -> str:
        """Create the task (or find the active one holding *task_key*) and schedule its run.

        Atomic: no ``await`` between the dedup decision and the task being scheduled.
        """
        now = self.clock.now()
        # Positional, in TaskRecord's field order: half the cost of 14 keywords.
        record = TaskRecord(
            new_task_id(),  # id
            owner.user_id,
            owner.organization_id,
            module,
            label,
            task_key,
            _PLAIN[TaskStatus.PENDING],  # status
            0.0,  # progress
            {},  # checkpoint
            None,  # result
            None,  # error
            now,  # created_at
            now,  # updated_at
            self.runtime_id,  # runner_id
        )
        try:
            stored, created = self.store.insert_or_get_active(record)
            if not created:
                work.discard()
                return stored.id
            if request is None:  # CTX: a synthetic context carries the submitter's identity
                request = RequestContext(
                    f"task:{record.id}", owner.user_id, owner.organization_id, module, session_key
                )
            context = contextvars.copy_context()
            context.run(set_request, request)
            local = _Local(record, manager=self, work=work)
            self._local[record.id] = local
            local.task = asyncio.get_running_loop().create_task(
                self._run(local, work), context=context
            )
            # In the task's context: else the callback gets a copy of the caller's.
            local.task.add_done_callback(local.never_started, context=context)
        except BaseException:
            work.discard()
            raise
        self._decoy = record.id
        if self.channel.wants(owner, durable=False):  # no connection: no message to build
            self.channel.publish(owner, started_message(record), durable=False)
        return record.id

    async def _run(self, local: _Local, work: Work) -> None:
        record = local.record
        started = False
        if local.task is not None:
            # This first step ran, so the done callback has nothing to do: removing it saves
            # scheduling a no-op callback when the task ends (~5 us a task, bench_submit.py).
            local.task.remove_done_callback(local.never_started)
        try:
            held = self._admit(record)
            if held is not None:
                await held
            self._change(record, TaskEvent.START)
            started = True
            result = await work.start()
            if type(result) not in _JSON_AS_IS:  # None, bool, str survive the round trip as is
                result = json_copy(result, "the task's result", "BG-5")
        except asyncio.CancelledError:
            self._finish(record, TaskEvent.INTERRUPT, error=local.interrupt_error)
        except Exception as exc:  # noqa: BLE001 - the task failed; the runtime carries on (BG-6)
            self._finish(record, TaskEvent.FAIL, error=str(exc) or type(exc).__name__)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: record, then let it go
            self._finish(record, TaskEvent.FAIL, error=str(exc) or type(exc).__name__)
            raise
        else:
            self._finish(record, TaskEvent.COMPLETE, result=result, progress=1.0)
        finally:
            if not started:  # held, failed or cancelled before its work began
                work.discard()
            self._local.pop(record.id, None)

    def _admit(self, record: TaskRecord) -> Awaitable[None] | None:
        """Test seam: an awaitable to hold the task until it completes (or raises, failing
        the task), or None to start at once. The reference returns None: a plain call, not a
        coroutine to create and await for every task. The harness holds submissions here.
        """
        return None

    def _never_started(self, local: _Local, work: Work) -> None:
        """A task cancelled before its first step never enters ``_run``'s body: end it here."""
        if local.record.status == TaskStatus.PENDING:
            work.discard()
            self._finish(local.record, TaskEvent.INTERRUPT, error=local.interrupt_error)
            self._local.pop(local.record.id, None)

    # ------------------------------------------------------------ status changes

    def _change(self, record: TaskRecord, event: TaskEvent, **fields: Any) -> None:
        """The one place a task's status changes: the table first, then memory, then store."""
        status = transition(record.id, record.status, event)
        record.status = _PLAIN[status]
        record.updated_at = now = self.clock.now()
        changes: dict[str, object] = {"status": record.status, "updated_at": now}
        if fields:
            for name, value in fields.items():
                setattr(record, name, value)
            changes.update(fields)
        try:
            self.store.update(record.id, changes)
        except Exception:
            log.exception("taskbed: could not store %s of task %s", event.value, record.id)

    def _finish(self, record: TaskRecord, event: TaskEvent, **fields: Any) -> None:
        self._change(record, event, **fields)
        self.channel.publish(record.owner, outcome_message(record), durable=True)

    def _record(self, task_id: object) -> TaskRecord | None:
        if not isinstance(task_id, str):
            return None
        local = self._local.get(task_id)
        if local is not None:
            return local.record
        return self.store.get(task_id)

    # ------------------------------------------------------------ progress

    def update_progress(
        self, task_id: str, progress: float, checkpoint: dict[str, Any] | None, label: str | None
    ) -> None:
        record = self._record(task_id)
        if record is None or record.status in TERMINAL:
            return
        record.progress = progress
        record.updated_at = self.clock.now()
        changes: dict[str, object] = {"progress": progress, "updated_at": record.updated_at}
        if checkpoint is not None:
            record.checkpoint = changes["checkpoint"] = checkpoint
        if label is not None:
            record.label = changes["label"] = label
        self.store.update(record.id, changes)
        owner = record.owner
        if not self.channel.wants(owner, durable=False):  # no connection: no message to build
            return
        message = progress_message(
            record,
            progress,
            record.label,
            checkpoint=checkpoint is not None,
            at=record.updated_at,
        )
        self.channel.publish(owner, message, durable=False)

    def emit_progress(
        self, task_id: str, progress: float | None, label: str | None, *, checkpoint: bool
    ) -> None:
        record = self._record(task_id)
        if record is None or record.status in TERMINAL:
            return
        owner = record.owner
        if not self.channel.wants(owner, durable=False):  # no connection: no message to build
            return
        message = progress_message(
            record,
            record.progress if progress is None else progress,
            record.label if label is None else label,
            checkpoint=checkpoint,
            at=self.clock.now(),
        )
        self.channel.publish(owner, message, durable=False)

    # ------------------------------------------------------------ confirmation

    async def request_confirmation(self, task_id: str, components: list[dict[str, Any]]) -> Any:
        record = self._record(task_id)
        if record is None:
            raise UnknownTaskError(
                f"no task with id {task_id!r}; pass the id run_background returned "
                + see("confirmation", "CONF-3")
            )
        self._change(record, TaskEvent.ASK)  # first: a refused ASK leaves no _Local behind
        local = self._local.get(task_id) or self._local.setdefault(task_id, _Local(record))
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        local.confirmation = (waiter, components)
        self.channel.publish(record.owner, confirmation_message(record, components), durable=True)
        try:
            return await waiter
        finally:
            local.confirmation = None
            if record.status == TaskStatus.WAITING_CONFIRMATION:
                # No answer came (a wait_for timeout, a cancellation): the question is
                # withdrawn, so the task is running again and may complete (BG-11).
                self._change(record, TaskEvent.WITHDRAW)
            if local.task is None:  # a task of another runtime: we only held its confirmation
                self._local.pop(task_id, None)

    # ------------------------------------------------------------ client commands

    async def handle_client_message(
        self, conn: Connection, command: str, body: dict[str, Any]
    ) -> None:
        """Act on a client command, if it comes from the task's owner; else ignore it (OWN).

        Whether the task exists, runs here, ended, or runs elsewhere, the decision takes one
        path (OWN-6), so the time a refusal takes does not tell a foreign client whether the
        id names a task: the local map and the store are both consulted, then the store once
        more, for an id that misses when the first lookup hit and for one that hits (a task
        seen before) when it missed. Every command costs one hit and one miss; the owner is
        compared with the row's or, for no row, with one nobody has.
        """
        task_id = body["taskId"]
        if not isinstance(task_id, str):
            task_id = _NO_TASK_ID  # no task has it; the same lookups follow
        local = self._local.get(task_id)
        stored = self.store.get(task_id)  # even when local has it: the same work either way
        self.store.get(_NO_TASK_ID if stored is not None else self._decoy)
        if stored is not None:
            self._decoy = task_id
        record = local.record if local is not None else stored
        if not same_owner((record or _NO_TASK).owner, conn.owner) or record is None:
            return
        if command == "backgroundTaskGet":
            conn.deliver(self._snapshot(record, local))
        elif command == "backgroundTaskCancel":
            if local is not None and local.task is not None and not local.task.done():
                local.interrupt_error = CANCELLED_ERROR
                local.task.cancel()
            if local is not None and local.confirmation is not None:
                local.confirmation[0].cancel()
        elif command == "backgroundTaskResponse":
            if local is None or local.confirmation is None:
                return  # nothing is waiting for an answer
            waiter, _ = local.confirmation
            if not waiter.done():
                self._change(record, TaskEvent.ANSWER)
                waiter.set_result(body.get("response"))

    @staticmethod
    def _snapshot(record: TaskRecord, local: _Local | None) -> Message:
        if record.status == TaskStatus.WAITING_CONFIRMATION and local and local.confirmation:
            return confirmation_message(record, local.confirmation[1])
        return outcome_message(record)

    # ------------------------------------------------------------ waiting

    async def wait(self, task_id: str, poll: float = 0.01, max_poll: float = 1.0) -> TaskRecord:
        local = self._local.get(task_id)
        if local is not None and local.task is not None:
            await asyncio.wait([local.task])
        while True:
            record = self.store.get(task_id)
            if record is None:
                raise UnknownTaskError(f"no task with id {task_id!r}")
            if record.status not in ACTIVE:
                return record
            # A task of another runtime on a shared store: poll, backing off to max_poll so a
            # long wait costs few reads (and little work on a virtual clock).
            await asyncio.sleep(poll)
            poll = min(poll * 2, max_poll)
