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
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ._channel import Connection
from ._context import RequestContext, set_request
from ._errors import LeaseLostError, StoreWriteError, UnknownTaskError, see
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

#: The ``error`` of tasks that recovery found orphaned.
RESTARTED_ERROR = (
    "interrupted: the runtime that ran this task stopped unexpectedly (crash or restart); "
    "the task was recovered when a runtime started again"
)
CANCELLED_ERROR = "interrupted: cancelled"
STOPPED_ERROR = "interrupted: the runtime stopped"
LOST_ERROR = "interrupted: the runtime lost its lease on the store"

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


#: Coroutine objects accepted by ``run_background`` that have not started yet: a second
#: submission of one of them is refused (BG-12) instead of closing it under the task that owns
#: it. A plain set: ``CoroutineWork`` adds its coroutine and takes it out when it starts or is
#: discarded, and every manager starts or discards the work it was given, holding it until
#: then anyway. (A WeakSet cost a weak reference per waiting task, and one more to look up.)
ACCEPTED: set[Coroutine[Any, Any, Any]] = set()


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
        ACCEPTED.add(coroutine)

    def start(self) -> Awaitable[Any]:
        ACCEPTED.discard(self._coroutine)
        return self._coroutine

    def discard(self) -> None:
        ACCEPTED.discard(self._coroutine)
        self._coroutine.close()


@dataclasses.dataclass(slots=True, eq=False)
class _Local:
    record: TaskRecord
    task: asyncio.Task[None] | None = None
    interrupt_error: str = CANCELLED_ERROR
    confirmation: tuple[asyncio.Future[Any], list[dict[str, Any]]] | None = None
    #: Set for a task this runtime runs: who ends it, and what it must close, should it be
    #: cancelled before its first step (see ``__call__``).
    manager: TaskManager | None = None
    work: Work | None = None

    def __call__(self, _task: object) -> None:
        """The task's done callback; ``_run`` removes it once the task's first step runs.

        The ``_Local`` itself is the callback, not a closure or a bound method: no object
        more per waiting task, and every object alive per task makes the garbage collector's
        full passes longer (benchmarks/bench_submit.py). Identity equality (``eq=False``)
        makes ``remove_done_callback(local)`` find exactly this one.
        """
        if self.manager is not None and self.work is not None:
            self.manager._never_started(self, self.work)


#: The first hex digit of byte 8 with the RFC 4122 variant bits (10xx) set.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


#: Random bytes from ``os.urandom``, as 32 hex digits a task id, not handed out yet: one
#: system call per 128 ids instead of one per id. ``list.pop`` is atomic, so two threads never
#: take the same digits; a forked child starts with none (it must not repeat its parent's).
_random_hex: list[str] = []
_ID_BATCH = 128
os.register_at_fork(after_in_child=_random_hex.clear)


def new_task_id() -> str:
    """A random version-4 UUID as text: what ``str(uuid.uuid4())`` gives, far cheaper.

    The same 122 random bits from ``os.urandom``, taken in batches. The version and variant
    bits are set in the hex text (digit 12 becomes ``4``, digit 16 one of ``89ab``), which
    skips a bytearray and two byte operations.
    """
    try:
        h = _random_hex.pop()
    except IndexError:
        block = os.urandom(16 * _ID_BATCH).hex()
        _random_hex.extend([block[i : i + 32] for i in range(0, len(block), 32)])
        h = _random_hex.pop()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


#: A task id no task has (ids are UUIDs); plain text, as some stores refuse a NUL.
_NO_TASK_ID = "taskbed:no-such-task"
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
        #: This runtime's claim on the store; every write of a task's state carries it.
        self.lease: Lease | None = None
        #: True once the store said the lease is gone (LEASE-4): this runtime is fenced off.
        self.lost = False
        #: Task ends the store could not record yet: retried until it can (LEASE-8).
        self._unstored: dict[str, tuple[TaskRecord, dict[str, object], StoreWriteError]] = {}
        self._retrier: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        #: The ends of tasks cancelled before their first step, by task id, while they are
        #: stored and published: ``wait`` waits for them, as it waits for a task's own end.
        self._ending: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------ life of the manager

    @property
    def _ttl(self) -> float:
        return self.lease_seconds if self.store.shared else math.inf

    async def start(self) -> None:
        """Take a lease, recover the tasks of runtimes that are gone, keep the lease fresh."""
        self.lease = await self.store.acquire(self.runtime_id, self._ttl)
        await self.recover()
        if self.store.shared:
            self._heartbeat = asyncio.get_running_loop().create_task(self._keep_lease())

    async def _keep_lease(self, first: float | None = None) -> None:
        """The heartbeat: renew the lease every third of ``lease_seconds``, then recover.

        *first*: the delay before the first renewal (a resumed process's overdue timer: 0).
        """
        delay = self.lease_seconds / 3 if first is None else first
        while True:
            await asyncio.sleep(delay)
            delay = self.lease_seconds / 3
            try:
                renewed = await self.store.renew(self._claim(), self._ttl)
            except StoreWriteError as exc:
                # The store failed (a disk fault, a lock held too long). The lease may still
                # be valid: try again next period; the store says when it is lost.
                log.warning(
                    "taskbed: runtime %s could not renew its lease: %s", self.runtime_id, exc
                )
                continue
            except Exception:
                log.exception("taskbed: could not renew the lease of runtime %s", self.runtime_id)
                continue
            if renewed is None:
                self._lose()
                return
            self.lease = renewed
            try:
                await self.recover()
                await self._store_unstored()
            except StoreWriteError as exc:
                log.warning("taskbed: recovery could not write; tried again next period: %s", exc)
            except Exception:
                log.exception("taskbed: recovery failed; it is tried again next period")

    def _claim(self) -> Lease:
        """The lease this runtime writes under; raises once it is lost (LEASE-4)."""
        lease = self.lease
        if lease is None or self.lost:
            raise LeaseLostError(
                f"runtime {self.runtime_id} lost its lease on the task store (it was not "
                f"renewed within lease_seconds={self.lease_seconds:g}) and another runtime "
                "recovered its tasks; it writes nothing more: start a new Runtime "
                + see("leases", "LEASE-4")
            )
        return lease

    def _lose(self) -> None:
        """The store says the lease is gone: stop every task, write and publish nothing more.

        The tasks are cancelled, so each stops at its next ``await`` (prior art: Temporal
        cancels an activity whose heartbeat the server rejects). Their last writes are fenced
        off by the store. The runtime reports itself: an error in the log, ``lost`` set, and
        ``LeaseLostError`` from every later submission.
        """
        if self.lost:
            return
        self.lost = True
        log.error(
            "taskbed: runtime %s lost its lease on the task store (paused, blocked or cut off "
            "for longer than lease_seconds=%g); another runtime recovered its tasks. It cancels "
            "the %d tasks it ran and writes nothing more; start a new Runtime.",
            self.runtime_id, self.lease_seconds, len(self._local),
        )  # fmt: skip
        for local in list(self._local.values()):
            local.interrupt_error = LOST_ERROR
            if local.task is not None and not local.task.done():
                local.task.cancel()
            if local.confirmation is not None:
                local.confirmation[0].cancel()
        self._unstored.clear()  # the store holds what recovery wrote: nothing to retry
        if self._heartbeat is not None and self._heartbeat is not asyncio.current_task():
            self._heartbeat.cancel()

    async def recover(self) -> list[TaskRecord]:
        """Interrupt the active tasks of runtimes that are gone (REC).

        A runtime is gone when its lease expired on the store's clock (LEASE-5); tasks of
        live runtimes are never touched.
        """
        orphans = await self.store.interrupt_orphans(self.clock.now(), RESTARTED_ERROR)
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
        while self._background:
            # Taken out of the set, not left for its discard callback: on Python 3.12 a
            # gather of tasks that are all done returns without yielding, so that callback
            # would never run and this loop would spin. What they spawn comes next round.
            batch = list(self._background)
            self._background.difference_update(batch)
            await asyncio.gather(*batch, return_exceptions=True)
        if self._unstored:
            with contextlib.suppress(Exception):
                await self._store_unstored()
        if self._retrier is not None:
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier
        if self.lost or self.lease is None:
            return
        if self._unstored:
            # The store does not hold these tasks' ends. Keep the lease: it runs out, and
            # recovery then interrupts them, so the store's rows end what they say.
            log.error(
                "taskbed: runtime %s stops with %d task outcomes the store could not record; "
                "they end interrupted once its lease runs out",
                self.runtime_id, len(self._unstored),
            )  # fmt: skip
            return
        try:
            await self.store.release(self.lease)
        except StoreWriteError:
            log.exception("taskbed: could not release the lease; it runs out by itself")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run *coro* in the background; ``stop()`` waits for it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ------------------------------------------------------------ submission

    async def submit(
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

        Atomic: the store decides dedup in one step, and there is no ``await`` between its
        answer and the task being scheduled.

        Raises:
            LeaseLostError: this runtime lost its lease; it creates nothing more.
            StoreWriteError: the store could not be written; nothing was created.
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
            lease = self._claim()
            try:
                stored, created = await self.store.insert_or_get_active(record, lease)
            except asyncio.CancelledError:
                # The store may still make the insert: end that task, after it (a caller's
                # writes are made in order), so that no row is left pending with nobody to run it.
                self._spawn(self._abandon(record, lease))
                raise
            except LeaseLostError:
                self._lose()
                raise
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
            local.task.add_done_callback(local, context=context)
        except BaseException:
            work.discard()
            raise
        self._decoy = record.id
        if self.channel.wants(owner, durable=False):  # no connection: no message to build
            self.channel.publish(owner, started_message(record), durable=False)
        return record.id

    async def _abandon(self, record: TaskRecord, lease: Lease) -> None:
        now = self.clock.now()
        changes = {"status": "interrupted", "error": CANCELLED_ERROR, "updated_at": now}
        with contextlib.suppress(Exception):
            await self.store.update(record.id, changes, lease)

    async def _run(self, local: _Local, work: Work) -> None:
        record = local.record
        started = False
        if local.task is not None:
            # This first step ran, so the done callback has nothing to do: removing it saves
            # scheduling a no-op callback when the task ends (~5 us a task, bench_submit.py).
            local.task.remove_done_callback(local)
        try:
            held = self._admit(record)
            if held is not None:
                await held
            if not await self._change(record, TaskEvent.START):
                return  # fenced off: recovery took the task (LEASE-3); _lose cancels the rest
            started = True
            result = await work.start()
            if type(result) not in _JSON_AS_IS:  # None, bool, str survive the round trip as is
                result = json_copy(result, "the task's result", "BG-5")
        except asyncio.CancelledError:
            await self._finish(record, TaskEvent.INTERRUPT, error=local.interrupt_error)
        except Exception as exc:  # noqa: BLE001 - the task failed; the runtime carries on (BG-6)
            await self._finish(record, TaskEvent.FAIL, error=str(exc) or type(exc).__name__)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: record, then let it go
            await self._finish(record, TaskEvent.FAIL, error=str(exc) or type(exc).__name__)
            raise
        else:
            await self._finish(record, TaskEvent.COMPLETE, result=result, progress=1.0)
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
            task_id = local.record.id
            self._local.pop(task_id, None)
            ended = self._finish(local.record, TaskEvent.INTERRUPT, error=local.interrupt_error)
            # wait() returns once the end is published, not once the store holds it: a
            # store's reader may see the row before this write's answer reaches the loop.
            ending = self._ending[task_id] = self._spawn(ended)
            ending.add_done_callback(lambda _: self._ending.pop(task_id, None))

    # ------------------------------------------------------------ status changes

    async def _change(self, record: TaskRecord, event: TaskEvent, **fields: Any) -> bool:
        """The one place a task's status changes: the table first, then memory, then store.

        Returns whether the store made the change. False: the write matched nothing, so the
        task was taken from this runtime (LEASE-3) and nothing about it may be published.

        Raises:
            StoreWriteError: the store could not be written (the change is not stored).
        """
        return await self._write(record, self._apply(record, event, fields))

    def _apply(
        self, record: TaskRecord, event: TaskEvent, fields: dict[str, Any]
    ) -> dict[str, object]:
        """Move the in-memory record by *event*; the changes the store must make."""
        status = transition(record.id, record.status, event)
        record.status = _PLAIN[status]
        record.updated_at = now = self.clock.now()
        changes: dict[str, object] = {"status": record.status, "updated_at": now}
        if fields:
            for name, value in fields.items():
                setattr(record, name, value)
            changes.update(fields)
        return changes

    async def _write(
        self, record: TaskRecord, changes: dict[str, object], *, keep: bool = False
    ) -> bool:
        """A fenced write of a task's row; a write that matched nothing loses the lease.

        *keep*: the write ends the task; its outcome is published once the store holds it,
        and for an owner who is offline it is kept in the same transaction.
        """
        if self.lost:
            return False
        if not keep:  # most writes: no message, so no owner to build
            if await self.store.update(record.id, changes, self._claim()):
                return True
            if record.id in self._local and record.runner_id == self.runtime_id:
                self._lose()  # our own active task, taken: only recovery does that
            return False
        owner = record.owner
        message = outcome_message(record)
        kept = None if self._online(owner) else (owner, message)
        if not await self.store.update(record.id, changes, self._claim(), keep=kept):
            if record.id in self._local and record.runner_id == self.runtime_id:
                self._lose()  # our own active task, taken: only recovery does that
            return False
        if kept is None:
            self.channel.publish(owner, message, durable=True)
        elif self._online(owner):  # connected while it was written: deliver it now
            self.channel.deliver_kept(owner)
        return True

    def _online(self, owner: Owner) -> bool:
        return self.channel.wants(owner, durable=False)

    async def _finish(self, record: TaskRecord, event: TaskEvent, **fields: Any) -> None:
        """End a task: store its end; its outcome is published only if the store holds it."""
        changes = self._apply(record, event, fields)
        try:
            await self._write(record, changes, keep=True)
        except StoreWriteError as exc:
            self._keep_unstored(record, changes, exc)

    # ------------------------------------------------------------ the durable write path

    def _keep_unstored(
        self, record: TaskRecord, changes: dict[str, object], exc: StoreWriteError
    ) -> None:
        """Keep a task end the store refused, and retry it until it is stored (LEASE-8)."""
        log.error("taskbed: task %s ended %s but %s", record.id, record.status, exc)
        self._unstored[record.id] = (record, changes, exc)
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.get_running_loop().create_task(self._retry_unstored())

    async def _retry_unstored(self) -> None:
        delay = 0.1
        while self._unstored and not self.lost:
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(self.lease_seconds / 3, 0.1))
            await self._store_unstored()

    async def _store_unstored(self) -> None:
        """Try to store each kept task end once; publish the outcome of those stored."""
        for task_id, (record, changes, _) in list(self._unstored.items()):
            try:
                stored = await self._write(record, changes, keep=True)
            except StoreWriteError as exc:
                self._unstored[task_id] = (record, changes, exc)
                continue
            except LeaseLostError:
                return
            self._unstored.pop(task_id, None)
            if stored:
                log.info("taskbed: task %s: its end is stored now", task_id)

    def _record(self, task_id: object) -> TaskRecord | None:
        if not isinstance(task_id, str):
            return None
        local = self._local.get(task_id)
        if local is not None:
            return local.record
        return self.store.get(task_id)

    # ------------------------------------------------------------ progress

    async def update_progress(
        self, task_id: str, progress: float, checkpoint: dict[str, Any] | None, label: str | None
    ) -> None:
        """Store a task's progress, then push it; nothing is pushed unless it was stored.

        Raises:
            StoreWriteError: the store could not be written (LEASE-7); nothing changed.
        """
        record = self._record(task_id)
        if record is None or record.status in TERMINAL:
            return
        now = self.clock.now()
        changes: dict[str, object] = {"progress": progress, "updated_at": now}
        if checkpoint is not None:
            changes["checkpoint"] = checkpoint
        if label is not None:
            changes["label"] = label
        if not await self._write(record, changes):
            return  # fenced off (LEASE-3), or the task ended meanwhile
        record.progress, record.updated_at = progress, now
        if checkpoint is not None:
            record.checkpoint = checkpoint
        if label is not None:
            record.label = label
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
        if record is None or record.status in TERMINAL or self.lost:
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
        # First: a refused ASK leaves no _Local behind.
        if not await self._change(record, TaskEvent.ASK):
            if self.lost:
                self._claim()  # raises LeaseLostError
            raise UnknownTaskError(
                f"task {task_id!r} is not run by this runtime (its row is terminal or claimed "
                "by another runtime); only the runtime that runs a task may ask its owner "
                + see("confirmation", "CONF-3")
            )
        local = self._local.get(task_id) or self._local.setdefault(task_id, _Local(record))
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        local.confirmation = (waiter, components)
        self.channel.publish(record.owner, confirmation_message(record, components), durable=True)
        try:
            return await waiter
        finally:
            local.confirmation = None
            if record.status == TaskStatus.WAITING_CONFIRMATION and not self.lost:
                # No answer came (a wait_for timeout, a cancellation): the question is
                # withdrawn, so the task is running again and may complete (BG-11).
                await self._change(record, TaskEvent.WITHDRAW)
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
        if not isinstance(task_id, str) or "\0" in task_id:
            task_id = _NO_TASK_ID  # no task has it (nor can a store look it up); same lookups
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
            if not waiter.done() and record.status == TaskStatus.WAITING_CONFIRMATION:
                answered = await self._change(record, TaskEvent.ANSWER)
                if answered and not waiter.done():
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
        ending = self._ending.get(task_id)  # cancelled before its first step: its end
        if ending is not None:
            await asyncio.wait([ending])
        while True:
            record = self.store.get(task_id)
            if record is None:
                raise UnknownTaskError(f"no task with id {task_id!r}")
            if record.status not in ACTIVE:
                return record
            unstored = self._unstored.get(task_id)
            if unstored is not None:  # LEASE-7: never wait for a write that cannot be made
                ended, _, exc = unstored
                raise StoreWriteError(
                    f"task {task_id} ended {ended.status!r}, but the store could not record "
                    f"it ({exc}); the runtime keeps retrying and sends the outcome once it is "
                    "stored " + see("leases", "LEASE-8")
                )
            # A task of another runtime on a shared store: poll, backing off to max_poll so a
            # long wait costs few reads (and little work on a virtual clock).
            await asyncio.sleep(poll)
            poll = min(poll * 2, max_poll)
