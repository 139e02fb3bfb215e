"""What the two SQL stores share: the row's columns and their JSON, and the write queue.

``SQLiteStore`` and ``PostgresStore`` store the same row in the same columns and make every
write the same way; only the dialect differs. This module holds the part that is the same,
once; each store's module keeps its SQL, its connections and how it runs one transaction.

Theory of operation of the write queue (:class:`GroupCommitStore`)
----------------------------------------------------------------
Writes never run on the event loop's terms. A write is queued (:meth:`_write`, with a
caller who waits for it; :meth:`_kept`, with none: a message kept for an offline owner).
At the end of the loop iteration the store's ``_flush_on_loop`` decides where the queue is
written (SQLite: on the loop, never waiting for a lock, else in the writer thread;
PostgreSQL: always in the writer thread). The writer thread (:meth:`_work`) takes
everything queued and makes it in one transaction (group commit, ``_commit``, the
dialect's part); a failed transaction puts its writes back at the head of the queue and is
retried with a growing pause until each write's retry window closes, then its caller gets
:class:`~taskbed.StoreWriteError` and the change is not made. A kept message has no caller:
it stays queued until it is written, or until its owner drains it.

Prior art: riverqueue/river's ``riverdriver``, one interface and one driver per database,
the same test suite run against each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from ._errors import StoreWriteError, see
from ._lifecycle import ACTIVE, TaskEvent, TaskStatus, sources
from ._model import Message, TaskRecord

log = logging.getLogger("taskbed")

# ------------------------------------------------------------ the row


def status_list(statuses: Iterable[TaskStatus]) -> str:
    """``'pending', 'running'``: statuses as SQL literals, for ``status IN (...)``."""
    return ", ".join(f"'{s.value}'" for s in sorted(statuses))


ACTIVE_SQL = status_list(ACTIVE)
INTERRUPTIBLE_SQL = status_list(sources(TaskEvent.INTERRUPT))

#: The task columns every read selects, in the order :func:`task_record` takes them.
COLUMNS = (
    "id, user_scope, org_scope, module, label, task_key, status, progress, checkpoint, "
    "result, error, created_at, updated_at, runner_id, runner_token"
)
#: Newest first; ``seq`` breaks ties between rows created in the same clock tick.
ORDER = "ORDER BY created_at DESC, seq DESC"
#: The fields ``update`` may change.
FIELDS = frozenset({"label", "status", "progress", "checkpoint", "result", "error", "updated_at"})


def dump(value: object) -> str:
    """``json.dumps``, skipping the encoder for what a new task holds (None, {})."""
    if value is None:
        return "null"
    if type(value) is dict and not value:
        return "{}"
    return json.dumps(value)


def load(text: str) -> Any:
    """``json.loads``, skipping the decoder for what most rows hold (null, {}, small ints)."""
    if text == "null":
        return None
    if text == "{}":
        return {}
    if text.isascii() and text.isdigit():
        return int(text)
    return json.loads(text)


def _as_stored(value: Any) -> Any:
    return value


def task_record(
    values: tuple[Any, ...],
    text: Callable[[Any], Any] = _as_stored,
    key: Callable[[Any], Any] = _as_stored,
) -> TaskRecord:
    """The :class:`TaskRecord` of one row of :data:`COLUMNS`.

    Both stores keep the scopes, the checkpoint and the result as JSON text; *text* decodes
    the label and the error, *key* the task key, as the dialect stores them.
    """
    (tid, user, org, module, label, task_key, status, progress, checkpoint, result, error,
     created, updated, runner, token) = values  # fmt: skip
    return TaskRecord(
        id=tid,
        user_id=load(user),
        organization_id=load(org),
        module=module,
        label=text(label),
        task_key=None if task_key is None else key(task_key),
        status=status,
        progress=progress,
        checkpoint=load(checkpoint),
        result=load(result),
        error=None if error is None else text(error),
        created_at=created,
        updated_at=updated,
        runner_id=runner,
        runner_token=token,
    )


def check_fields(changes: dict[str, object]) -> None:
    """Raise ValueError when *changes* names a field ``update`` may not change."""
    if not FIELDS.issuperset(changes):  # no set to build in the usual case
        raise ValueError(f"cannot update task fields {sorted(set(changes) - FIELDS)}")


# ------------------------------------------------------------ the write queue

_orders = itertools.count()


@dataclasses.dataclass(eq=False, slots=True)
class Write:
    """One write waiting for the writer: what it does, and what came of it.

    ``run`` takes the store's connection (SQLite) or cursor (PostgreSQL); what it returns is
    the dialect's business (PostgreSQL: a ``finish()`` that reads the pipelined answer).
    """

    run: Callable[[Any], Any]
    deadline: float
    #: A message kept for an offline owner: no caller waits; kept until written (or drained).
    slot: tuple[str, str] | None = None
    message: str | None = None
    #: The caller's future (None for a kept message): answered once the write is decided.
    waiter: asyncio.Future[None] | None = None
    seq: int | None = None  # the outbox row, once written
    delivered: bool = False  # drained before or while it was written
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    attempts: int = 0
    #: The outbox rows this write deletes (drained meanwhile: not to be handed out again).
    deletes: tuple[int, ...] = ()
    #: Queue order: messages drained from the queue come out in the order they were kept.
    order: int = dataclasses.field(default_factory=_orders.__next__)

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def answer(write: Write) -> None:
    """On the caller's loop: wake the caller of a decided write."""
    if write.waiter is not None and not write.waiter.done():
        write.waiter.set_result(None)


def answer_all(writes: list[Write]) -> None:
    """On the callers' loop: wake the callers of a batch's decided writes."""
    for w in writes:
        if w.waiter is not None and not w.waiter.done():
            w.waiter.set_result(None)


def _answer_from_thread(decided: list[Write]) -> None:
    """The writer thread: hand the decided writes back to their loops, one wake-up per loop
    (each ``call_soon_threadsafe`` writes to the loop's self-pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Write]] = {}
    for w in decided:
        if w.waiter is not None:
            by_loop.setdefault(w.waiter.get_loop(), []).append(w)
    for loop, writes in by_loop.items():
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
            loop.call_soon_threadsafe(answer_all, writes)


def kept_messages(rows: Iterable[tuple[int, str]], unwritten: Iterable[Write]) -> list[Message]:
    """What ``drain`` hands out: the written messages, then those not written yet."""
    return [json.loads(text) for _, text in rows] + [
        json.loads(w.message) for w in unwritten if w.message is not None
    ]


class GroupCommitStore:
    """The write queue, group commit and retries of a SQL store; the dialect does the rest.

    A subclass provides ``_flush_on_loop(loop)`` (the end of a loop iteration with writes
    queued), ``_commit(batch, wait=...)`` (one transaction; the error that made it fail, or
    None), ``_deleting(seqs)`` (a write's ``run`` that deletes outbox rows), ``_row``
    (a row of :data:`COLUMNS` as a TaskRecord), ``_select_by_id``, ``_reader`` and ``_writer``.
    """

    #: The class a caller should open anew once this one is closed (in error messages).
    kind: ClassVar[str]
    #: The writer thread's first pause after a failed transaction, and its longest.
    _pause: ClassVar[tuple[float, float]]
    #: How long the writer thread waits for more writes once the queue is empty, before it
    #: returns (0: at once). A loop that writes again meanwhile wakes it through ``_wake``
    #: instead of handing it a new job, which costs two thread hand-offs per batch.
    _linger: ClassVar[float] = 0.0
    _row: Callable[[tuple[Any, ...]], TaskRecord]
    #: The select of one task row by id, in the dialect's placeholders.
    _select_by_id: ClassVar[str]
    _reader: Any  # the connection that reads
    _read_lock: threading.Lock | threading.RLock
    _writer: concurrent.futures.ThreadPoolExecutor

    def __init__(self, *, retry_for: float) -> None:
        self.retry_for = retry_for
        self._lock = threading.Lock()  # the queue and the writes' states
        #: Wakes a lingering writer thread when writes were queued (see ``_linger``).
        self._wake = threading.Condition(self._lock)
        self._flushing = 0  # flush() calls waiting: the writer thread does not linger
        self._queue: list[Write] = []
        self._in_flight: list[Write] = []  # the writes of the transaction under way
        self._scheduled = False  # a flush at the end of this loop iteration is due
        self._thread_busy = False  # the writer thread has the queue (a fault, a lock)
        self._closed = False
        self._commits = 0
        self._fault: BaseException | None = None  # inject_fault (a test seam)
        #: Outbox rows already handed out (drained while being written), their delete queued.
        self._skip: set[int] = set()

    @property
    def _name(self) -> str:
        """The store as error messages name it."""
        raise NotImplementedError

    def _flush_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        raise NotImplementedError

    def _commit(self, batch: list[Write], *, wait: bool) -> BaseException | None:
        raise NotImplementedError

    def _deleting(self, seqs: list[int]) -> Callable[[Any], Any]:
        raise NotImplementedError

    # ------------------------------------------------------------ queueing

    async def _write(self, run: Callable[[Any], Any]) -> Any:
        """Queue a write and wait until it is decided (made, refused, or failed for good)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        write = Write(run, time.monotonic() + self.retry_for, waiter=waiter)
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._queue.append(write)
        self._schedule(loop)
        # A cancelled caller cancels only its wait: the write stays queued and is made.
        await waiter
        return write.outcome()

    def _kept(self, write: Write) -> None:
        """Queue a write that no caller waits for (a kept message, a notification)."""
        with self._lock:
            if self._closed:
                log.error("taskbed: %r is closed; a message is lost", self)
                return
            self._queue.append(write)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
        else:
            self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        loop.call_soon(self._flush_on_loop, loop)

    def _delete_kept(self, seqs: list[int]) -> Write:
        """A write that deletes outbox rows handed out meanwhile (no caller waits for it)."""
        return Write(
            self._deleting(seqs), time.monotonic() + self.retry_for, ("", ""), deletes=tuple(seqs)
        )

    # ------------------------------------------------------------ the writer thread

    def _take(self) -> list[Write]:
        """The writes to make now, moved from the queue to the transaction under way (the
        caller holds the lock)."""
        batch = [w for w in self._queue if not w.done and not w.delivered]
        self._queue, self._in_flight = [], batch
        return batch

    def _committed(self, batch: list[Write]) -> None:
        """Mark a committed batch done; the caller holds the lock."""
        self._in_flight = []
        for w in batch:
            w.done = True
        self._commits += 1
        undo = [w.seq for w in batch if w.delivered and w.seq is not None]
        if undo:  # drained while written: never hand out again, delete
            self._skip.update(undo)
            self._queue.insert(0, self._delete_kept(undo))
        for w in batch:
            if w.deletes:
                self._skip.difference_update(w.deletes)

    def _work(self) -> None:
        """The writer thread: write what is queued, in transactions, until the queue is empty.

        A failed transaction puts its writes back at the head of the queue and is retried
        with a growing pause; a write whose window closed is answered with the error (a
        kept message is not: it waits for the next round). Never raises.
        """
        first, most = self._pause
        delay = first
        while True:
            now = time.monotonic()
            with self._lock:
                self._thread_busy = True
                if not self._queue and self._linger and not (self._closed or self._flushing):
                    self._wake.wait(self._linger)
                batch = self._take()
                if not batch or all(
                    w.waiter is None and w.attempts and w.deadline < now for w in batch
                ):
                    # kept messages past their window: the next round
                    self._queue, self._in_flight = batch, []
                    self._thread_busy = False
                    return
            failure = self._commit(batch, wait=True)
            with self._lock:
                if failure is None:
                    self._committed(batch)
                    decided, delay = batch, first
                else:
                    decided = self._failed(batch, failure)
            if decided:
                _answer_from_thread(decided)
            if failure is not None:
                time.sleep(delay)
                delay = min(delay * 2, most)

    def _failed(self, batch: list[Write], failure: BaseException) -> list[Write]:
        """Requeue a failed batch; the writes decided now (their window closed). Lock held."""
        self._in_flight = []
        decided, retry = [], []
        for w in batch:
            w.attempts += 1
            w.seq = None
            if w.delivered:
                continue  # drained while its transaction failed: nothing to keep
            if w.waiter is not None and (w.done or w.deadline < time.monotonic()):
                if not w.done:
                    w.error = StoreWriteError(
                        f"could not write to {self._name} for {self.retry_for:g} s "
                        f"({w.attempts} attempts): {failure}; the change was not made "
                        + see("leases", "LEASE-7")
                    )
                    w.done = True
                decided.append(w)
            else:
                retry.append(w)
        self._queue = retry + self._queue
        return decided

    def inject_fault(self, error: BaseException | None) -> None:
        """Test seam: make every transaction fail with *error* until ``inject_fault(None)``.

        What a full disk or a failing device does: the writes are kept and retried as for a
        real fault. Reads still work.
        """
        self._fault = error

    def _closed_error(self) -> StoreWriteError:
        return StoreWriteError(
            f"{self._name} is closed; open a new {self.kind} " + see("leases", "LEASE-7")
        )

    def flush(self) -> None:
        """Write everything queued now, waiting for it (blocks: not for a running loop)."""
        with self._lock:
            if self._closed and not self._queue:
                return
            self._flushing += 1
            self._wake.notify()  # a lingering writer thread: take the queue, then return
        try:
            self._writer.submit(self._work).result()
        finally:
            with self._lock:
                self._flushing -= 1

    def _left_unwritten(self) -> list[Write]:
        """At close: the writes that were never made (the store kept failing)."""
        with self._lock:
            return [w for w in self._queue if not w.done and not w.delivered]

    # ------------------------------------------------------------ reads

    def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            rows: list[tuple[Any, ...]] = self._reader.execute(sql, params).fetchall()
            return rows

    def _query(self, sql: str, params: tuple[object, ...]) -> list[TaskRecord]:
        row = self._row
        return [row(values) for values in self._read(sql, params)]

    def get(self, task_id: str) -> TaskRecord | None:
        found = self._query(self._select_by_id, (task_id,))
        return found[0] if found else None
