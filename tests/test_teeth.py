"""The teeth of the conformance suite: deliberately broken implementations must be caught.

DESIGN §5: "deliberately broken implementations (each breaking one rule) must be caught by
exactly the rules they break." Each implementation here is the reference runtime with ONE
component swapped for a subclass that gets ONE behaviour wrong, plugged in through public
seams (``Runtime.tasks_class``, ``manager_class``, ``channel_class``, ``process_runner_class``
and the adapter's ``store_class``; nothing is monkeypatched). The whole
suite runs against each, and the set of failing rules must equal the expected set in
``BROKEN`` exactly: a rule missing from it means the suite lost a tooth; an extra rule means a
check is broader than its statement (or the breakage was not the one intended).

The implementations are importable adapters too (``taskbed conform --impl
test_teeth:DedupIgnoresOrganization``); ``tests/test_conform_cli.py`` uses them that way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import fnmatch
import functools
import inspect
import json
import logging
import math
import multiprocessing
import os
import shlex
import signal
import subprocess
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from _pytest.config import parse_warning_filter  # how pytest reads filterwarnings

from taskbed import (
    ACTIVE,
    ConnectionRegistry,
    InvalidSubmissionError,
    Lease,
    LeaseLostError,
    ManagerNotInitializedError,
    OSProcessRunner,
    Owner,
    ProcessResult,
    RequestContext,
    Runtime,
    SQLiteStore,
    StoreWriteError,
    TaskEvent,
    TaskManager,
    TaskRecord,
    Tasks,
    UnknownTaskNameError,
)
from taskbed._auth import TokenSigner
from taskbed._manager import Work, same_owner
from taskbed._model import clamp_progress, json_copy, outcome_message, scope
from taskbed._sqlite_store import _ACTIVE_SQL, _COLUMNS
from taskbed._tasks import _is_async
from taskbed.ws import SocketConnection, WebSocketChannel
from taskbed_harness._adapters import ReferenceImplementation
from taskbed_harness._conform import Outcome, Result, run_suite
from taskbed_harness._spec import load_rules
from taskbed_harness._ws_adapter import ReferenceWebSocketImplementation


@dataclasses.dataclass(frozen=True)
class Broken:
    """One deliberately broken implementation and the rules that must catch it."""

    id: str  # the test id
    impl: str  # the adapter class below (also its ``--impl test_teeth:<impl>`` name)
    fails: frozenset[str]  # exactly the rules its breakage fails

    @property
    def factory(self) -> type[ReferenceImplementation]:
        factory = globals()[self.impl]
        assert isinstance(factory, type), self.impl
        assert issubclass(factory, ReferenceImplementation), self.impl
        return factory


def _broken(test_id: str, impl: str, *fails: str) -> Broken:
    return Broken(test_id, impl, frozenset(fails))


# fmt: off
BROKEN = [
    # -- DEDUP
    _broken("dedup-ignores-organization", "DedupIgnoresOrganization", "DEDUP-3"),
    # A finished task keeps its key. QUERY-1 submits "sync" again after a task with that key
    # completed (and gets the old id back), REC-1 submits "import" again after recovery
    # interrupted its holder: each re-uses a key that a terminal task held.
    _broken("dedup-blocks-on-terminal-tasks", "DedupBlocksOnTerminal",
            "DEDUP-2", "QUERY-1", "REC-1"),
    # The duplicate gets the first task's id, but its own work runs as well. DEDUP-1 (the
    # duplicate coroutine is not closed, the registered function is called), DEDUP-6 (of
    # 25 racing submissions, more than one coroutine runs) and DEDUP-7 (the same across two
    # runtimes) all state "closed, not run".
    _broken("duplicate-starts-second-task", "DuplicateStartsSecondTask",
            "DEDUP-1", "DEDUP-6", "DEDUP-7"),
    # -- OWN
    _broken("messages-sent-to-another-user", "MessagesToOrganizationMates", "OWN-3"),
    # Answer, cancel and get from anyone act on the task. CONF-4 states the same for the
    # answer and the cancel of a confirmation; OWN-6's stranger gets an answer for a task that
    # exists and none for an unknown id, which tells existence outright.
    _broken("non-owner-command-obeyed", "NonOwnerCommandObeyed", "OWN-4", "CONF-4", "OWN-6"),
    # The owner's get about a task waiting for an answer returns a progress message, not the
    # question. (Added to OWN-4's check of the owner's own get, which saw ended tasks only.)
    _broken("get-snapshot-hides-open-question", "GetSnapshotHidesOpenQuestion", "OWN-4"),
    # The get shows the question without its components, so the client cannot draw it again.
    # (A surviving mutant of the mutation run, docs/guides/mutation.md.)
    _broken("get-snapshot-without-components", "GetSnapshotWithoutComponents", "OWN-4"),
    _broken("get-snapshot-without-label", "GetSnapshotWithoutLabel", "OWN-4"),  # the same
    # Durable messages for an offline owner are dropped. REC-3 states that they are kept
    # across a restart, so it needs them kept in the first place; LEASE-3 finds the
    # recovery's error kept for the owner of a task taken from a paused runtime.
    _broken("offline-messages-dropped", "OfflineMessagesDropped", "OWN-5", "REC-3", "LEASE-3"),
    # A stranger's command about a task running here is refused from the local map, about
    # any other id after a store lookup: the time tells whether the task exists.
    _broken("ownership-shortcut-by-existence", "OwnershipShortcut", "OWN-6"),  # SHOULD only
    # -- CTX
    # The task gets a synthetic context instead of the request's. CTX-1 (one request) and
    # CTX-2 (two concurrent ones) both compare the task's request id with the request's.
    _broken("context-not-carried-into-task", "ContextNotCarried", "CTX-1", "CTX-2"),
    # -- BLOCK
    # func runs on the loop's thread (in a copy of the context, so BLOCK-5 still holds): the
    # thread is the loop's (BLOCK-1) and the loop stalls while func runs (BLOCK-3).
    _broken("run-blocking-on-loop-thread", "RunBlockingOnLoopThread", "BLOCK-1", "BLOCK-3"),
    # An async function goes to the worker thread like any other: its coroutine comes back.
    _broken("run-blocking-takes-async-functions", "RunBlockingTakesAsync", "BLOCK-6"),
    # -- CMD
    # `sh -c " ".join(argv)`: the shell expands `$HOME` and runs `; touch` (CMD-4), a Python
    # program given with -c no longer parses and a missing program is exit code 127 instead
    # of FileNotFoundError (CMD-5), and the sh scripts of CMD-6, CMD-8 and CMD-12, which quote
    # their own arguments, are torn apart.
    _broken("command-run-through-shell", "CommandThroughShell",
            "CMD-4", "CMD-5", "CMD-6", "CMD-8", "CMD-12"),
    _broken("caller-env-overrides-sandbox", "CallerEnvOverridesSandbox", "CMD-7"),
    # (CMD-12's descendants that leave the group are not killed either.)
    _broken("timeout-kills-only-the-child", "TimeoutKillsOnlyTheChild", "CMD-6", "CMD-12"),
    # Only the process group is killed: a descendant that left it survives (the pipes are
    # still drained for a bounded time only, so the calls return).
    _broken("escaped-descendants-survive", "EscapedDescendantsSurvive", "CMD-12"),
    # Env names go unchecked: an empty one reaches the program, Popen refuses the others.
    _broken("env-names-unchecked", "EnvNamesUnchecked", "CMD-11"),
    # -- PROG
    _broken("progress-not-clamped", "ProgressNotClamped", "PROG-1"),
    _broken("huge-progress-overflows", "HugeProgressOverflows", "PROG-6"),
    # -- CONF
    _broken("confirmation-of-unknown-id-returns-none", "ConfirmUnknownIdReturnsNone", "CONF-3"),
    # -- QUERY
    # All three queries return the oldest first; each of QUERY-1/2/3 states "newest first".
    _broken("queries-not-sorted", "QueriesNotSorted", "QUERY-1", "QUERY-2", "QUERY-3"),
    # Sorted by updated_at. (Added to QUERY-2's check: an old task updated last stays last.)
    _broken("queries-sorted-by-update-time", "QueriesSortedByUpdateTime", "QUERY-2"),
    _broken("query-organization-from-session", "QueryOrganizationFromSession", "QUERY-4"),
    _broken("key-prefix-as-like-pattern", "KeyPrefixAsLikePattern", "QUERY-2"),
    # Two tasks created in the same instant come oldest first. (A surviving mutant of the
    # mutation run, docs/guides/mutation.md: the check of ties was added to QUERY-1.)
    _broken("same-instant-oldest-first", "SameInstantOldestFirst", "QUERY-1"),
    # -- MGR
    _broken("no-manager-progress-raises", "NoManagerProgressRaises", "MGR-2"),
    # -- REC
    # No recovery at all: orphans stay active (REC-1), and the error message of a recovered
    # task, which REC-3 expects in the offline queue, is never produced. The lease rules
    # whose peer must take a paused runtime's task (LEASE-2, 3, 4, 6) fail with it.
    _broken("recovery-skipped", "RecoverySkipped",
            "REC-1", "REC-3", "LEASE-2", "LEASE-3", "LEASE-4", "LEASE-6"),
    # -- BG
    # error = "task failed: <str(exc)>". REC-3 expects the queued error of a failed task to
    # be str(exc) as well.
    _broken("failed-error-not-str-exc", "FailedErrorNotStrExc", "BG-6", "REC-3"),
    # An interrupted task tells nobody: neither after a cancel (BG-8, a SHOULD rule) nor when
    # the runtime stops (MGR-3).
    _broken("interrupted-task-silent", "InterruptedTaskSilent", "BG-8", "MGR-3"),
    # -- the classes of miss of issue 10
    _broken("dedup-within-one-runtime", "DedupWithinOneRuntime", "DEDUP-7"),
    # A peer's recovery takes the tasks of live runtimes: REC-4, and with it the rules where a
    # peer runs beside a busy runtime (DEDUP-7: the key is freed; LEASE-5, LEASE-6).
    _broken("recovery-ignores-leases", "RecoveryIgnoresLeases",
            "REC-4", "DEDUP-7", "LEASE-5", "LEASE-6"),
    # Renewals change nothing: after 30 s every runtime's own lease runs out and recovery
    # (its own or a peer's) takes its tasks, so every rule whose task outlives a lease fails.
    _broken("lease-never-refreshed", "LeaseNeverRefreshed",
            "REC-4", "REC-2", "CONF-1", "LEASE-4", "LEASE-5"),
    # stop() drops the manager and leaves its tasks running: nobody interrupts them (MGR-3)
    # and stop() returns before they end (MGR-4).
    _broken("stop-abandons-tasks", "StopAbandonsTasks", "MGR-3", "MGR-4"),
    # stop() returns at once: the interrupted tasks' ends (MGR-4), and their errors, which are
    # sent once the end is stored, come after the check looked (MGR-3).
    _broken("stop-does-not-wait", "StopDoesNotWait", "MGR-4", "MGR-3"),
    # Messages go out only while the runtime serves (its channel's handler is set): the error
    # of a task that stop() interrupts is dropped.
    _broken("silent-while-not-serving", "SilentWhileNotServing", "MGR-3"),
    _broken("late-answer-kept-for-next-question", "LateAnswerKept", "CONF-6"),
    # A clamp without a finiteness check: nan and inf reach the row (PROG-2), and nothing is
    # refused (PROG-7).
    _broken("nan-progress-stored", "NanProgressStored", "PROG-2", "PROG-7"),
    _broken("nan-progress-ignored-quietly", "NanProgressIgnored", "PROG-7"),  # SHOULD only
    _broken("key-prefix-as-glob", "KeyPrefixAsGlob", "QUERY-2"),
    _broken("owner-compared-as-text", "OwnerComparedAsText", "OWN-4"),
    # A polite SIGTERM and nothing after it: a TERM-ignoring program outlives its timeout
    # (CMD-6), and so do the descendants that CMD-12 checks.
    _broken("timeout-sends-only-sigterm", "TimeoutOnlySigterm", "CMD-6", "CMD-12"),
    _broken("one-item-command-split", "OneItemCommandSplit", "CMD-4"),
    # -- one tooth per rule that can have one
    _broken("task-id-not-uuid4-text", "TaskIdHexOnly", "BG-1"),
    # Registered functions lose their keyword arguments: math.add(a=2, b=40) fails (BG-2),
    # and so does crunch(n=10) (BG-10).
    _broken("registered-kwargs-dropped", "RegisteredKwargsDropped", "BG-2", "BG-10"),
    _broken("unknown-name-not-named", "UnknownNameNotNamed", "BG-3"),
    _broken("wrong-target-without-the-fix", "WrongTargetWithoutTheFix", "BG-4"),
    # A completed task keeps the progress it last reported; QUERY-6 reads a completed row.
    _broken("completion-keeps-progress", "CompletionKeepsProgress", "BG-5", "QUERY-6"),
    # A cancel is ignored while the task is pending: BG-7 cancels before the first step, and
    # DEDUP-2 and BG-11 cancel tasks right after submitting them.
    _broken("pending-task-not-cancelled", "PendingNotCancelled", "BG-7", "DEDUP-2", "BG-11"),
    _broken("sync-registered-on-the-loop", "SyncRegisteredOnTheLoop", "BG-10"),
    # A key that is not a string is turned into one: DEDUP-5 and BG-9 both pass task_key=5.
    _broken("non-str-key-coerced", "NonStrKeyCoerced", "DEDUP-5", "BG-9"),
    _broken("manager-checked-before-user", "ManagerCheckedBeforeUser", "OWN-1"),
    _broken("blocking-exception-wrapped", "BlockingExceptionWrapped", "BLOCK-2"),
    # The refusal of what cannot run does not say why: BLOCK-4 (a non-callable) and BLOCK-6
    # (an awaitable) both state the message.
    _broken("blocking-refusal-unexplained", "BlockingRefusalUnexplained", "BLOCK-4"),
    _broken("blocking-without-context", "BlockingWithoutContext", "BLOCK-5"),
    _broken("tuple-command-accepted", "TupleCommandAccepted", "CMD-1"),
    _broken("blank-arguments-dropped", "BlankArgumentsDropped", "CMD-2"),
    _broken("number-arguments-converted", "NumberArgumentsConverted", "CMD-3"),
    # Access rules are kept but never enforced. (CTX-3 compares a task's commands with the
    # request's, which are equally unchecked: it holds.)
    _broken("cwd-never-checked", "CwdNeverChecked", "CMD-9"),
    _broken("access-variable-missing", "AccessVariableMissing", "CMD-10"),
    # (Its plain round trip also merges {1: "a", "1": "b"} into one key: BG-13.)
    _broken("checkpoint-with-default-str", "CheckpointDefaultStr", "PROG-3", "BG-13"),
    _broken("progress-of-unknown-id-raises", "ProgressOfUnknownIdRaises", "PROG-4"),
    _broken("emit-progress-stores", "EmitProgressStores", "PROG-5"),
    _broken("confirmation-surface-id-wrong", "ConfirmationSurfaceIdWrong", "CONF-1"),
    _broken("cancel-while-waiting-ignored", "CancelWhileWaitingIgnored", "CONF-5"),
    # Queries raise without a task manager: QUERY-5, and MGR-2 (queries are empty then).
    _broken("queries-raise-without-manager", "QueriesRaiseWithoutManager", "QUERY-5", "MGR-2"),
    # Rows carry taskId only (as the released platform's do): only the row-shape rule fails,
    # since every other check reads ids through the adapter's task_id hook.
    _broken("rows-without-id", "RowsWithoutId", "QUERY-6"),
    _broken("confirm-without-manager-returns-none", "ConfirmWithoutManagerReturnsNone", "MGR-1"),
    # The row does not go back to running after a question: CONF-2 after an answer, BG-11
    # after a question that timed out.
    _broken("answered-row-stays-waiting", "AnsweredRowStaysWaiting", "CONF-2", "BG-11"),
    _broken("synthetic-request-id-not-passed", "SyntheticRequestIdNotPassed", "CTX-4"),
    # (A surviving mutant of the mutation run, docs/guides/mutation.md.)
    _broken("synthetic-context-without-session-key", "SyntheticContextWithoutSessionKey",
            "CTX-4"),
    # userId "7": OWN-2 states the ids as they are; QUERY-1 compares them and QUERY-6 the row.
    _broken("row-owner-ids-as-text", "RowOwnerIdsAsText", "OWN-2", "QUERY-1", "QUERY-6"),
    # -- LEASE
    _broken("fencing-token-reused", "FencingTokenReused", "LEASE-1"),
    _broken("insert-ignores-the-lease", "InsertIgnoresTheLease", "LEASE-2"),
    _broken("unmatched-write-published", "UnmatchedWritePublished", "LEASE-3"),
    # The old heartbeat: a renewal re-creates a lease that recovery removed, so a runtime
    # with nothing to write never learns it lost its tasks (LEASE-4). LEASE-2's runtime
    # still finds out, from its task's first fenced write.
    _broken("lease-re-created", "LeaseReCreated", "LEASE-4"),
    _broken("expiry-on-the-runtime-clock", "ExpiryOnTheRuntimeClock", "LEASE-5"),
    _broken("missed-heartbeat-means-gone", "MissedHeartbeatMeansGone", "LEASE-6"),
    _broken("progress-store-error-swallowed", "ProgressStoreErrorSwallowed", "LEASE-7"),
    # A refused end is dropped, not retried: wait() polls a row that stays running forever
    # (LEASE-7), and the end never reaches the store or the owner (LEASE-8).
    _broken("unstored-end-dropped", "UnstoredEndDropped", "LEASE-7", "LEASE-8"),
    _broken("writes-block-the-loop", "WritesBlockTheLoop", "LEASE-9"),
    # A coroutine submitted again is taken like a new one: dedup closes it under its task.
    _broken("coroutine-reuse-accepted", "CoroutineReuseAccepted", "BG-12"),
    # A checkpoint goes through a plain JSON round trip: {1: "a", "1": "b"} keeps one value.
    _broken("checkpoint-keys-merged", "CheckpointKeysMerged", "BG-13"),
    _broken("task-keys-unchecked", "TaskKeysUnchecked", "BG-14"),  # a SHOULD rule only
    # -- WS (judged over the socket: the reference-ws adapter with one broken channel part)
    _broken("socket-origin-not-checked", "SocketOriginNotChecked", "WS-1"),
    _broken("socket-token-replayable", "SocketTokenReplayable", "WS-2"),
    # Each frame carries a top-level sequence number next to the message's one key. OWN-3
    # compares the owner's messages with the exact platform messages too.
    _broken("socket-frame-not-platform-shape", "SocketFrameNotPlatformShape", "WS-3", "OWN-3"),
    # The socket is closed on a bad frame instead of answering it.
    _broken("socket-closed-on-bad-frame", "SocketClosedOnBadFrame", "WS-4"),
]
# fmt: on

# Breakages that no rule catches through the adapter API (checked once, by hand; not in the
# table since no run of the suite can fail for them):
# - no recovery at start, only in the later sweeps: after restart(crash=True) the crashed
#   runtime's lease is still fresh and its process (ours) alive, so only the sweeps can act.
#
# Rules without a tooth of their own (docs/guides/conformance.md#the-suites-teeth says why):
# DEDUP-4 (the facade turns "" into no key before any public seam sees it), CTX-3 (a task's
# context is a copy of its submitter's: a variant that reads the module elsewhere fails
# CMD-10 or CTX-1 first). REC-2 has one now: a heartbeat that renews nothing loses a long
# task to recovery (lease-never-refreshed).
NO_TOOTH = {"DEDUP-4", "CTX-3"}

RULES = load_rules()
RULE_IDS = {rule.id for rule in RULES}


def failures(factory: Callable[[], Any]) -> dict[str, str]:
    """Run the whole suite against *factory*; each rule that failed, with its reason.

    The in-process adapters skip the socket rules (they have no ``websocket`` capability);
    the socket adapter has its one declared deviation. Nothing else may go unjudged.
    """
    results: list[Result] = run_suite(RULES, factory)
    assert len(results) == len(RULES)
    impl = factory()
    excused = {r.id for r in RULES if r.requires - impl.capabilities} | set(impl.deviations)
    odd = [
        (r.rule.id, r.outcome.value)
        for r in results
        if r.outcome in (Outcome.SKIPPED, Outcome.DEVIATION) and r.rule.id not in excused
    ]
    assert not odd, f"a broken implementation must be judged on every rule: {odd}"
    return {r.rule.id: r.reason for r in results if r.outcome is Outcome.FAIL}


def failing(factory: Callable[[], Any]) -> frozenset[str]:
    """The IDs of the rules that *factory* fails (see ``failures``)."""
    return frozenset(failures(factory))


def _judge_in_worker(broken_id: str) -> dict[str, str]:
    """In a worker process: ``failures`` of one broken implementation, named by its id."""
    return failures(next(b for b in BROKEN if b.id == broken_id).factory)


def _worker_setup(filters: list[str]) -> None:
    """A worker runs the rules under this run's ``filterwarnings`` (every warning an error,
    in this project), applied as pytest applies them; the runtime's log lines are not printed."""
    for line in filters:
        warnings.filterwarnings(*parse_warning_filter(line, escape=False))
    logging.getLogger().addHandler(logging.NullHandler())


TEETH_WORKERS = int(os.environ.get("TASKBED_TEETH_WORKERS", "4"))
"""How many broken implementations are judged at once. A suite spends most of its time
waiting (lease expiry, timeouts of real processes), so judging them side by side in worker
processes takes a fraction of the time; ``TASKBED_TEETH_WORKERS=1`` judges them here, one by one."""


@pytest.fixture(scope="module")
def verdicts(request: pytest.FixtureRequest) -> Iterator[Callable[[Broken], dict[str, str]]]:
    """The verdict of each broken implementation this run selected, judged side by side."""
    selected = {
        item.callspec.params["broken"].id
        for item in request.session.items
        if item.module is request.module
        and "broken" in getattr(getattr(item, "callspec", None), "params", {})
    }
    if any(item.name == "test_teeth_summary" for item in request.session.items):
        selected = {b.id for b in BROKEN}
    if TEETH_WORKERS <= 1:
        yield lambda broken: failures(broken.factory)
        return
    context = multiprocessing.get_context("spawn")  # not fork: this process has threads
    with concurrent.futures.ProcessPoolExecutor(
        TEETH_WORKERS,
        mp_context=context,
        initializer=_worker_setup,
        initargs=(request.config.getini("filterwarnings"),),
    ) as pool:
        pending = {b.id: pool.submit(_judge_in_worker, b.id) for b in BROKEN if b.id in selected}
        try:
            yield lambda broken: (
                pending[broken.id].result() if broken.id in pending else failures(broken.factory)
            )
        finally:
            for future in pending.values():
                future.cancel()


VERDICTS: dict[str, frozenset[str]] = {}  # Broken.id -> the rules that failed, as judged


# ---------------------------------------------------------------- how the parts are swapped


def runtime_with(**parts: type) -> type[Runtime]:
    """A Runtime subclass with the given parts, through its public seams: ``tasks_class``,
    ``manager_class``, ``channel_class``, ``process_runner_class``. (A broken store is the
    adapter's ``store_class``.)"""
    if "runner_class" in parts:  # the name of this seam before Runtime had it
        parts["process_runner_class"] = parts.pop("runner_class")
    unknown = set(parts) - {"tasks_class", "manager_class", "channel_class", "process_runner_class"}
    assert not unknown, unknown
    name = "".join(part.__name__.strip("_") for part in parts.values()) + "Runtime"
    return type(name, (Runtime,), dict(parts))


# ---------------------------------------------------------------- DEDUP


class _CrossOrganizationDedupStore(SQLiteStore):
    """Finds the active holder of a key in any organization, not just the submitter's."""

    async def insert_or_get_active(
        self, record: TaskRecord, lease: Lease
    ) -> tuple[TaskRecord, bool]:
        if record.task_key is not None:
            holders = self._query(
                f"SELECT {_COLUMNS} FROM tasks WHERE task_key = ? AND status IN ({_ACTIVE_SQL}) "
                "ORDER BY seq",
                (record.task_key,),
            )
            if holders:
                return holders[0], False
        return await super().insert_or_get_active(record, lease)


class DedupIgnoresOrganization(ReferenceImplementation):
    name = "broken: dedup ignores the organization"
    store_class = _CrossOrganizationDedupStore


class _TerminalHoldsKeyStore(SQLiteStore):
    """Any task with the key, whatever its status, holds it."""

    async def insert_or_get_active(
        self, record: TaskRecord, lease: Lease
    ) -> tuple[TaskRecord, bool]:
        if record.task_key is not None:
            holders = self.find_by_key(record.task_key, record.organization_id)
            if holders:
                return holders[0], False
        return await super().insert_or_get_active(record, lease)


class DedupBlocksOnTerminal(ReferenceImplementation):
    name = "broken: terminal tasks block their key"
    store_class = _TerminalHoldsKeyStore


class _RunsDuplicatesManager(TaskManager):
    """Returns the holder's id for a duplicate, and runs the duplicate's work anyway."""

    async def submit(self, work: Any, **kwargs: Any) -> str:
        submitting = True
        dropped: list[bool] = []

        def discard() -> None:  # while submitting, a discard means "a duplicate": not yet
            if submitting:
                dropped.append(True)
            else:
                work.discard()

        try:
            task_id = await super().submit(Work(work.start, discard), **kwargs)
        except BaseException:
            work.discard()
            raise
        finally:
            submitting = False
        if dropped:  # the store found a holder (the only discard of a submission that worked)

            async def stray() -> None:
                await work.start()

            strays = self.__dict__.setdefault("strays", [])
            strays.append((asyncio.ensure_future(stray()), work))
        return task_id

    async def stop(self) -> None:
        for stray, work in self.__dict__.get("strays", []):
            stray.cancel()
            with contextlib.suppress(BaseException):
                await stray
            work.discard()  # a stray cancelled before its first step never awaited its work
        await super().stop()


class DuplicateStartsSecondTask(ReferenceImplementation):
    name = "broken: a duplicate's work runs too"
    runtime_class = runtime_with(manager_class=_RunsDuplicatesManager)


# ---------------------------------------------------------------- OWN


class _OrganizationWideChannel(ConnectionRegistry):
    """Delivers every message to the owner and to the other users of their organization."""

    def publish(self, owner: Owner, message: dict[str, Any], *, durable: bool) -> None:
        super().publish(owner, message, durable=durable)
        user, org = self._slot(owner)
        for (other_user, other_org), conns in list(self._by_owner.items()):
            if other_org == org and other_user != user:
                for conn in list(conns):
                    conn.deliver(message)


class MessagesToOrganizationMates(ReferenceImplementation):
    name = "broken: messages reach the owner's organization mates"
    runtime_class = runtime_with(channel_class=_OrganizationWideChannel)


class _AsOwner:
    """A connection that claims the task owner's identity (and delivers to the real one)."""

    def __init__(self, conn: Any, owner: Owner) -> None:
        self._conn = conn
        self.owner = owner

    def deliver(self, message: dict[str, Any]) -> None:
        self._conn.deliver(message)


class _ObeysAnyoneManager(TaskManager):
    """Acts on a client command whoever sends it."""

    async def handle_client_message(self, conn: Any, command: str, body: dict[str, Any]) -> None:
        record = self._record(body["taskId"])
        if record is not None:
            conn = _AsOwner(conn, record.owner)
        await super().handle_client_message(conn, command, body)


class NonOwnerCommandObeyed(ReferenceImplementation):
    name = "broken: client commands from anyone are obeyed"
    runtime_class = runtime_with(manager_class=_ObeysAnyoneManager)


class _OutcomeOnlySnapshotManager(TaskManager):
    """Answers the owner's get with the outcome-or-progress message, even for a task that
    waits for an answer (the open question is not shown again)."""

    @staticmethod
    def _snapshot(record: TaskRecord, local: Any) -> dict[str, Any]:
        return outcome_message(record)


class GetSnapshotHidesOpenQuestion(ReferenceImplementation):
    name = "broken: get does not show the open question"
    runtime_class = runtime_with(manager_class=_OutcomeOnlySnapshotManager)


class _QuestionWithoutComponentsSnapshotManager(TaskManager):
    """Answers the owner's get about a waiting task with the question's message, but with
    no components in it."""

    @staticmethod
    def _snapshot(record: TaskRecord, local: Any) -> dict[str, Any]:
        message = TaskManager._snapshot(record, local)
        if "backgroundTaskConfirmation" in message:
            message["backgroundTaskConfirmation"] = {
                **message["backgroundTaskConfirmation"],
                "components": None,
            }
        return message


class GetSnapshotWithoutComponents(ReferenceImplementation):
    name = "broken: get shows the open question without its components"
    runtime_class = runtime_with(manager_class=_QuestionWithoutComponentsSnapshotManager)


class _ProgressWithoutLabelSnapshotManager(TaskManager):
    """Answers the owner's get about a running task with a progress message that has no
    label."""

    @staticmethod
    def _snapshot(record: TaskRecord, local: Any) -> dict[str, Any]:
        message = TaskManager._snapshot(record, local)
        if "backgroundTaskProgress" in message:
            message["backgroundTaskProgress"] = {**message["backgroundTaskProgress"], "label": None}
        return message


class GetSnapshotWithoutLabel(ReferenceImplementation):
    name = "broken: get about a running task leaves out its label"
    runtime_class = runtime_with(manager_class=_ProgressWithoutLabelSnapshotManager)


class _ShortcutOwnershipManager(TaskManager):
    """Refuses a stranger with the first lookup that finds the task (the local map for a
    task running here), and with a store lookup for an id that names none."""

    async def handle_client_message(self, conn: Any, command: str, body: dict[str, Any]) -> None:
        record = self._record(body["taskId"])
        if record is None or not same_owner(record.owner, conn.owner):
            return
        await super().handle_client_message(conn, command, body)


class OwnershipShortcut(ReferenceImplementation):
    name = "broken: a refusal's time tells whether the task exists"
    runtime_class = runtime_with(manager_class=_ShortcutOwnershipManager)


class _NoOfflineQueueChannel(ConnectionRegistry):
    """Treats every message as not worth keeping for an offline owner."""

    def publish(self, owner: Owner, message: dict[str, Any], *, durable: bool) -> None:
        super().publish(owner, message, durable=False)


class OfflineMessagesDropped(ReferenceImplementation):
    name = "broken: nothing is kept for an offline owner"
    runtime_class = runtime_with(channel_class=_NoOfflineQueueChannel)


# ---------------------------------------------------------------- CTX


class _ForgetsRequestManager(TaskManager):
    """Drops the submitting request: every task runs in a synthetic context."""

    async def submit(self, work: Any, *, request: RequestContext | None, **kwargs: Any) -> str:
        return await super().submit(work, request=None, **kwargs)


class ContextNotCarried(ReferenceImplementation):
    name = "broken: the request context is not carried into the task"
    runtime_class = runtime_with(manager_class=_ForgetsRequestManager)


# ---------------------------------------------------------------- BLOCK

T = TypeVar("T")


class _InlineBlockingTasks(Tasks):
    """run_blocking calls func on the event loop's thread (context copied, as the pool does)."""

    async def run_blocking(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if not callable(func) or _is_async(func):
            return await super().run_blocking(func, *args, **kwargs)  # the usual refusals
        value = contextvars.copy_context().run(func, *args, **kwargs)
        if inspect.iscoroutine(value):  # refused as the reference refuses it (BLOCK-6)
            value.close()
            raise TypeError("run_blocking: func returned a coroutine; await job(...) instead")
        return value


class RunBlockingOnLoopThread(ReferenceImplementation):
    name = "broken: run_blocking runs on the loop thread"
    runtime_class = runtime_with(tasks_class=_InlineBlockingTasks)


class _AsyncInThreadTasks(Tasks):
    """run_blocking hands any callable to the worker thread, async or not, and returns what
    comes back (a coroutine it closes first, so this test leaks no "never awaited" warning)."""

    async def run_blocking(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if not callable(func):
            return await super().run_blocking(func, *args, **kwargs)  # the usual refusal
        value = await self._runtime.pool.run(func, *args, **kwargs)
        if inspect.iscoroutine(value):
            value.close()
        return value


class RunBlockingTakesAsync(ReferenceImplementation):
    name = "broken: run_blocking takes async functions"
    runtime_class = runtime_with(tasks_class=_AsyncInThreadTasks)


# ---------------------------------------------------------------- CMD


class _ShellRunner(OSProcessRunner):
    """Runs the command as ``sh -c "<the arguments joined by spaces>"``."""

    async def run(self, argv: list[str], **kwargs: Any) -> ProcessResult:
        return await super().run(["/bin/sh", "-c", " ".join(argv)], **kwargs)


class CommandThroughShell(ReferenceImplementation):
    name = "broken: commands run through a shell"
    runtime_class = runtime_with(process_runner_class=_ShellRunner)


class _CallerEnvLastTasks(Tasks):
    """Merges the caller's env over the sandbox variables instead of under them."""

    def _environment(self, env: object) -> dict[str, str]:
        merged = super()._environment(env)  # checks env; sandbox variables applied last
        if isinstance(env, dict):
            merged.update(env)  # ... and then the caller's env wins after all
        return merged


class CallerEnvOverridesSandbox(ReferenceImplementation):
    name = "broken: the caller's env overrides the sandbox variables"
    runtime_class = runtime_with(tasks_class=_CallerEnvLastTasks)


class _ChildOnlyRunner(OSProcessRunner):
    """Starts the program in the runtime's process group; a timeout or a cancel kills only
    the program itself, not what it started."""

    async def run(
        self, argv: list[str], *, cwd: str | None, env: dict[str, str], timeout: float | None,
        capture_output: bool,
    ) -> ProcessResult:  # fmt: skip
        started: list[subprocess.Popen[bytes]] = []

        def call() -> ProcessResult:
            pipe = subprocess.PIPE if capture_output else None
            with subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe
            ) as proc:
                started.append(proc)
                try:
                    out, err = proc.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                    raise subprocess.TimeoutExpired(argv, timeout or 0.0, out, err) from None
                return ProcessResult(proc.returncode, out, err)

        waiting = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            return await asyncio.shield(waiting)
        except asyncio.CancelledError:
            for proc in started:
                proc.kill()
            with contextlib.suppress(BaseException):
                await waiting
            raise


class TimeoutKillsOnlyTheChild(ReferenceImplementation):
    name = "broken: a timeout kills the program but not its children"
    runtime_class = runtime_with(process_runner_class=_ChildOnlyRunner)


class _GroupOnlyRunner(OSProcessRunner):
    """Kills the process group and nothing else: no sweep for descendants that left it."""

    def _end_escapees(self, child: Any, root: int | None) -> None:
        child.swept = True


class EscapedDescendantsSurvive(ReferenceImplementation):
    name = "broken: descendants that left the process group survive"
    runtime_class = runtime_with(process_runner_class=_GroupOnlyRunner)


class _UncheckedEnvTasks(Tasks):
    """Env names and values go to the program as given."""

    @staticmethod
    def _check_env(env: dict[str, str]) -> None:
        return None


class EnvNamesUnchecked(ReferenceImplementation):
    name = "broken: env names are not checked"
    runtime_class = runtime_with(tasks_class=_UncheckedEnvTasks)


# ---------------------------------------------------------------- PROG


class _UnclampedProgressTasks(Tasks):
    """Stores progress as given (non-finite values are still refused)."""

    async def update_progress(
        self, task_id: str, progress: float, checkpoint: dict[str, Any] | None = None,
        label: str | None = None,
    ) -> None:  # fmt: skip
        clamp_progress(progress)  # only for its checks: the clamped value is thrown away
        if checkpoint is not None:
            if not isinstance(checkpoint, dict):
                raise TypeError("checkpoint must be a dict")
            checkpoint = json_copy(checkpoint, "checkpoint", "PROG-3")
        manager = self._manager
        if manager is not None:
            await manager.update_progress(task_id, float(progress), checkpoint, label)


class ProgressNotClamped(ReferenceImplementation):
    name = "broken: progress is not clamped"
    runtime_class = runtime_with(tasks_class=_UnclampedProgressTasks)


class _OverflowingProgressTasks(Tasks):
    """Progress is converted with float() first: 10**400 raises OverflowError."""

    async def update_progress(self, task_id: str, progress: float, *args: Any, **kw: Any) -> None:
        if isinstance(progress, int):
            float(progress)
        await super().update_progress(task_id, progress, *args, **kw)

    async def emit_progress(
        self, task_id: str, progress: Any = None, *args: Any, **kw: Any
    ) -> None:
        if isinstance(progress, int):
            float(progress)
        await super().emit_progress(task_id, progress, *args, **kw)


class HugeProgressOverflows(ReferenceImplementation):
    name = "broken: a huge int progress raises OverflowError"
    runtime_class = runtime_with(tasks_class=_OverflowingProgressTasks)


# ---------------------------------------------------------------- CONF


class _QuietUnknownConfirmationManager(TaskManager):
    """request_confirmation for an unknown id returns None instead of raising."""

    async def request_confirmation(self, task_id: str, components: list[dict[str, Any]]) -> Any:
        if self._record(task_id) is None:
            return None
        return await super().request_confirmation(task_id, components)


class ConfirmUnknownIdReturnsNone(ReferenceImplementation):
    name = "broken: confirming an unknown task returns None"
    runtime_class = runtime_with(manager_class=_QuietUnknownConfirmationManager)


# ---------------------------------------------------------------- QUERY


class _OldestFirstStore(SQLiteStore):
    """Every query returns the rows oldest first."""

    def find_by_key(self, task_key: str, organization_id: object) -> list[TaskRecord]:
        return super().find_by_key(task_key, organization_id)[::-1]

    def find_by_key_prefix(self, prefix: str, organization_id: object) -> list[TaskRecord]:
        return super().find_by_key_prefix(prefix, organization_id)[::-1]

    def find_by_user(self, user_id: object, organization_id: object) -> list[TaskRecord]:
        return super().find_by_user(user_id, organization_id)[::-1]


class QueriesNotSorted(ReferenceImplementation):
    name = "broken: queries return the oldest first"
    store_class = _OldestFirstStore


class _UpdatedFirstStore(SQLiteStore):
    """Every query returns the most recently updated first, not the most recently created."""

    @staticmethod
    def _by_update(rows: list[TaskRecord]) -> list[TaskRecord]:
        return sorted(rows, key=lambda row: row.updated_at, reverse=True)

    def find_by_key(self, task_key: str, organization_id: object) -> list[TaskRecord]:
        return self._by_update(super().find_by_key(task_key, organization_id))

    def find_by_key_prefix(self, prefix: str, organization_id: object) -> list[TaskRecord]:
        return self._by_update(super().find_by_key_prefix(prefix, organization_id))

    def find_by_user(self, user_id: object, organization_id: object) -> list[TaskRecord]:
        return self._by_update(super().find_by_user(user_id, organization_id))


class QueriesSortedByUpdateTime(ReferenceImplementation):
    name = "broken: queries sort by update time"
    store_class = _UpdatedFirstStore


class _SessionOrganizationTasks(Tasks):
    """A query without an organization looks in the caller's session's organization."""

    def _org(self, organization_id: Any) -> Any:
        if organization_id is None:
            return self._session.get("user", {}).get("organization_id")
        return organization_id

    def get_tasks_by_key(self, task_key: str, organization_id: Any = None) -> list[dict[str, Any]]:
        return super().get_tasks_by_key(task_key, self._org(organization_id))

    def get_tasks_by_key_prefix(
        self, prefix: str, organization_id: Any = None
    ) -> list[dict[str, Any]]:
        return super().get_tasks_by_key_prefix(prefix, self._org(organization_id))

    def list_user_tasks(self, user_id: Any, organization_id: Any = None) -> list[dict[str, Any]]:
        return super().list_user_tasks(user_id, self._org(organization_id))


class QueryOrganizationFromSession(ReferenceImplementation):
    name = "broken: queries default the organization from the session"
    runtime_class = runtime_with(tasks_class=_SessionOrganizationTasks)


class _LikePrefixStore(SQLiteStore):
    """Prefix lookup with ``LIKE prefix || '%'``: ``_`` and ``%`` are wildcards, case folds."""

    def find_by_key_prefix(self, prefix: str, organization_id: object) -> list[TaskRecord]:
        return self._query(
            f"SELECT {_COLUMNS} FROM tasks WHERE org_scope = ? AND task_key LIKE ? "
            "ORDER BY created_at DESC, seq DESC",
            (scope(organization_id), prefix + "%"),
        )


class KeyPrefixAsLikePattern(ReferenceImplementation):
    name = "broken: the key prefix is a LIKE pattern"
    store_class = _LikePrefixStore


# ---------------------------------------------------------------- MGR


class _LoudProgressTasks(Tasks):
    """Progress calls raise "TaskManager not initialized" when no manager runs."""

    async def update_progress(self, task_id: str, *args: Any, **kwargs: Any) -> None:
        self._require_manager()
        await super().update_progress(task_id, *args, **kwargs)

    async def emit_progress(self, task_id: str, *args: Any, **kwargs: Any) -> None:
        if self._manager is None:
            raise ManagerNotInitializedError
        await super().emit_progress(task_id, *args, **kwargs)


class NoManagerProgressRaises(ReferenceImplementation):
    name = "broken: progress without a task manager raises"
    runtime_class = runtime_with(tasks_class=_LoudProgressTasks)


# ---------------------------------------------------------------- REC


class _NoRecoveryManager(TaskManager):
    """Never recovers the tasks of runtimes that are gone."""

    async def recover(self) -> list[TaskRecord]:
        return []


class RecoverySkipped(ReferenceImplementation):
    name = "broken: recovery is skipped"
    runtime_class = runtime_with(manager_class=_NoRecoveryManager)


# ---------------------------------------------------------------- BG


class _DecoratedErrorManager(TaskManager):
    """A failed task's error is "task failed: <str(exc)>" instead of str(exc)."""

    async def _finish(self, record: TaskRecord, event: TaskEvent, **fields: Any) -> None:
        if event is TaskEvent.FAIL:
            fields["error"] = f"task failed: {fields.get('error')}"
        await super()._finish(record, event, **fields)


class FailedErrorNotStrExc(ReferenceImplementation):
    name = "broken: a failed task's error is not str(exc)"
    runtime_class = runtime_with(manager_class=_DecoratedErrorManager)


class _SilentInterruptManager(TaskManager):
    """An interrupted task ends without telling its owner."""

    async def _finish(self, record: TaskRecord, event: TaskEvent, **fields: Any) -> None:
        if event is TaskEvent.INTERRUPT:
            await self._change(record, event, **fields)
            return
        await super()._finish(record, event, **fields)


class InterruptedTaskSilent(ReferenceImplementation):
    name = "broken: an interrupted task tells nobody"
    runtime_class = runtime_with(manager_class=_SilentInterruptManager)


# ---------------------------------------------------------------- LEASE


class _ReusedTokenStore(SQLiteStore):
    """Every lease gets token 1: the claim of a later runtime looks no newer."""

    async def acquire(self, runtime_id: str, ttl: float) -> Lease:
        def run(db: Any) -> Lease:
            lease = Lease(runtime_id, 1, self._now(db) + ttl)
            db.execute("INSERT OR REPLACE INTO runtime_leases VALUES (?, ?, ?)", lease)
            return lease

        lease: Lease = await self._write(run)
        return lease


class FencingTokenReused(ReferenceImplementation):
    name = "broken: every lease has the same fencing token"
    store_class = _ReusedTokenStore


class _UnfencedInsertStore(SQLiteStore):
    """A task is created even under a lease the store no longer holds."""

    async def insert_or_get_active(
        self, record: TaskRecord, lease: Lease
    ) -> tuple[TaskRecord, bool]:
        try:
            return await super().insert_or_get_active(record, lease)
        except LeaseLostError:
            ghost = await self.acquire(f"{lease.runtime_id}-ghost", 0.0)
            return await super().insert_or_get_active(record, ghost)


class InsertIgnoresTheLease(ReferenceImplementation):
    name = "broken: a runtime that lost its lease still creates tasks"
    store_class = _UnfencedInsertStore


class _PublishesAnywayManager(TaskManager):
    """A task's outcome is sent even when the write of its end matched nothing."""

    async def _write(
        self, record: TaskRecord, changes: dict[str, object], *, keep: bool = False
    ) -> bool:
        stored = await super()._write(record, changes, keep=keep)
        if keep and not stored:
            self.channel.publish(record.owner, outcome_message(record), durable=True)
        return stored


class UnmatchedWritePublished(ReferenceImplementation):
    name = "broken: an outcome the store refused is sent anyway"
    runtime_class = runtime_with(manager_class=_PublishesAnywayManager)


class _UpsertingRenewStore(SQLiteStore):
    """A renewal re-creates a lease that recovery removed (the old heartbeat's upsert)."""

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        renewed = await super().renew(lease, ttl)
        if renewed is not None:
            return renewed

        def run(db: Any) -> Lease:
            again = lease._replace(expires_at=self._now(db) + ttl)
            db.execute("INSERT OR REPLACE INTO runtime_leases VALUES (?, ?, ?)", again)
            return again

        recreated: Lease = await self._write(run)
        return recreated


class LeaseReCreated(ReferenceImplementation):
    name = "broken: a lost lease is re-created by the heartbeat"
    store_class = _UpsertingRenewStore


class _RuntimeClockRuntime(Runtime):
    """Lease expiry is judged on each runtime's own clock instead of the store's."""

    def __init__(self, store: Any = None, **kwargs: Any) -> None:
        super().__init__(store, **kwargs)
        if isinstance(self.store, SQLiteStore):
            self.store.clock = self.clock


class ExpiryOnTheRuntimeClock(ReferenceImplementation):
    name = "broken: lease expiry is judged on the runtime's clock"
    runtime_class = _RuntimeClockRuntime


class _ImpatientRecoveryStore(SQLiteStore):
    """A runtime that missed a heartbeat or so (15 s of a 30 s lease) is taken for gone."""

    async def interrupt_orphans(self, now: float, error: str) -> list[TaskRecord]:
        await self._write(
            lambda db: db.execute(
                "DELETE FROM runtime_leases WHERE expires_at < ?", (self._now(db) + 15.0,)
            )
        )
        return await super().interrupt_orphans(now, error)


class MissedHeartbeatMeansGone(ReferenceImplementation):
    name = "broken: a missed heartbeat means the runtime is gone"
    store_class = _ImpatientRecoveryStore


class _QuietProgressManager(TaskManager):
    """update_progress swallows a store error (the update is silently lost)."""

    async def update_progress(self, task_id: str, *args: Any) -> None:
        with contextlib.suppress(StoreWriteError):
            await super().update_progress(task_id, *args)


class ProgressStoreErrorSwallowed(ReferenceImplementation):
    name = "broken: update_progress swallows a store error"
    runtime_class = runtime_with(manager_class=_QuietProgressManager)


class _DropsUnstoredManager(TaskManager):
    """A task end the store refused is dropped: no retry, nothing for wait() to report."""

    def _keep_unstored(
        self, record: TaskRecord, changes: dict[str, object], exc: StoreWriteError
    ) -> None:
        return None


class UnstoredEndDropped(ReferenceImplementation):
    name = "broken: a task end the store refused is dropped"
    runtime_class = runtime_with(manager_class=_DropsUnstoredManager)


class _BlockingStore(SQLiteStore):
    """Writes on the event loop's thread wait for the lock (for up to busy_timeout)."""

    def _commit(self, batch: Any, *, wait: bool) -> Any:
        return super()._commit(batch, wait=True)


class WritesBlockTheLoop(ReferenceImplementation):
    name = "broken: a store write waits for the lock on the event loop"
    store_class = _BlockingStore
class _ReusedCoroutineTasks(Tasks):
    """Takes any unfinished coroutine object, whether it was submitted or started before."""

    @staticmethod
    def _check_coroutine(coro: Any) -> None:
        return None


class CoroutineReuseAccepted(ReferenceImplementation):
    name = "broken: a coroutine submitted twice is accepted"
    runtime_class = runtime_with(tasks_class=_ReusedCoroutineTasks)


class _PlainRoundTripTasks(Tasks):
    """A checkpoint is copied through json.dumps/json.loads and nothing else."""

    async def update_progress(
        self, task_id: str, progress: float, checkpoint: dict[str, Any] | None = None,
        label: str | None = None,
    ) -> None:  # fmt: skip
        if isinstance(checkpoint, dict):
            with contextlib.suppress(TypeError, ValueError):
                checkpoint = json.loads(json.dumps(checkpoint, allow_nan=False))
        await super().update_progress(task_id, progress, checkpoint, label)


class CheckpointKeysMerged(ReferenceImplementation):
    name = "broken: a checkpoint's colliding keys are merged"
    runtime_class = runtime_with(tasks_class=_PlainRoundTripTasks)


class _UncheckedKeyTasks(Tasks):
    """Any string is a task key: each store takes what it can."""

    @staticmethod
    def _check_task_key(task_key: str) -> None:
        return None


class TaskKeysUnchecked(ReferenceImplementation):
    name = "broken: task keys are not checked"
    runtime_class = runtime_with(tasks_class=_UncheckedKeyTasks)


# ---------------------------------------------------------------- issue 10's classes of miss


class _InstanceDedupStore(SQLiteStore):
    """Dedup in this store object's memory: the file has no unique index over active keys,
    so another runtime on the same file (with its own store object) never sees the key."""

    schema = SQLiteStore.schema.replace("CREATE UNIQUE INDEX", "CREATE INDEX")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: dict[tuple[str, str], str] = {}
        self.deciding: asyncio.Lock | None = None  # check and insert, one at a time

    async def insert_or_get_active(
        self, record: TaskRecord, lease: Lease
    ) -> tuple[TaskRecord, bool]:
        if record.task_key is None:
            return await super().insert_or_get_active(record, lease)
        if self.deciding is None:
            self.deciding = asyncio.Lock()
        async with self.deciding:  # the writes await: without it, racing submits all insert
            slot = (json.dumps(record.organization_id), record.task_key)
            holder = self.get(self.held[slot]) if slot in self.held else None
            if holder is not None and holder.status in ACTIVE:
                return holder, False
            stored, created = await super().insert_or_get_active(record, lease)
            self.held[slot] = stored.id
            return stored, created


class DedupWithinOneRuntime(ReferenceImplementation):
    name = "broken: dedup holds within one runtime only"
    store_class = _InstanceDedupStore


class _ExpiredLeasesStore(SQLiteStore):
    """Recovery takes every other runtime's lease for expired: it takes over live tasks."""

    async def acquire(self, runtime_id: str, ttl: float) -> Lease:
        self.__dict__["mine"] = runtime_id  # each runtime opens a store of its own
        return await super().acquire(runtime_id, ttl)

    async def interrupt_orphans(self, now: float, error: str) -> list[TaskRecord]:
        mine = self.__dict__.get("mine")
        await self._write(
            lambda db: db.execute("DELETE FROM runtime_leases WHERE runtime_id != ?", (mine,))
        )
        return await super().interrupt_orphans(now, error)


class RecoveryIgnoresLeases(ReferenceImplementation):
    name = "broken: recovery ignores leases"
    store_class = _ExpiredLeasesStore


class _FirstLeaseOnlyStore(SQLiteStore):
    """Keeps a runtime's first lease and ignores every renewal: the heartbeat is lost."""

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        return lease  # "renewed", and nothing written


class LeaseNeverRefreshed(ReferenceImplementation):
    name = "broken: the lease is never refreshed"
    store_class = _FirstLeaseOnlyStore


class _AbandoningRuntime(Runtime):
    """stop() forgets the task manager: its tasks run on, interrupted by nobody."""

    async def stop(self) -> None:
        self.manager = None
        self.channel.handler = None
        self.pool.shutdown()


class StopAbandonsTasks(ReferenceImplementation):
    name = "broken: stop() abandons running tasks"
    runtime_class = _AbandoningRuntime


class _FireAndForgetStopRuntime(Runtime):
    """stop() starts stopping the task manager and returns without waiting for it."""

    async def stop(self) -> None:
        manager, self.manager = self.manager, None
        self.channel.handler = None
        if manager is not None:
            stopping = asyncio.ensure_future(manager.stop())
            stopping.add_done_callback(lambda done: done.exception())  # retrieved: no noise
        self.pool.shutdown()


class StopDoesNotWait(ReferenceImplementation):
    name = "broken: stop() does not wait for the interrupted tasks"
    runtime_class = _FireAndForgetStopRuntime


class _ServingOnlyChannel(ConnectionRegistry):
    """Publishes only while a task manager serves the channel (its handler is set)."""

    def publish(self, owner: Owner, message: dict[str, Any], *, durable: bool) -> None:
        if self.handler is not None:
            super().publish(owner, message, durable=durable)


class SilentWhileNotServing(ReferenceImplementation):
    name = "broken: no message while the runtime does not serve"
    runtime_class = runtime_with(channel_class=_ServingOnlyChannel)


class _EarlyAnswerManager(TaskManager):
    """Keeps an answer that arrives while no question waits, and gives it to the next one."""

    async def handle_client_message(self, conn: Any, command: str, body: dict[str, Any]) -> None:
        if command == "backgroundTaskResponse":
            record = self.store.get(body["taskId"])
            if record is not None and record.status == "running" and record.owner == conn.owner:
                self.__dict__.setdefault("early", {})[record.id] = body.get("response")
                return
        await super().handle_client_message(conn, command, body)

    async def request_confirmation(self, task_id: str, components: list[dict[str, Any]]) -> Any:
        early = self.__dict__.setdefault("early", {})
        if task_id in early:
            return early.pop(task_id)
        return await super().request_confirmation(task_id, components)


class LateAnswerKept(ReferenceImplementation):
    name = "broken: a late answer is kept for the next question"
    runtime_class = runtime_with(manager_class=_EarlyAnswerManager)


class _NaiveClampTasks(Tasks):
    """Clamps with min/max and no finiteness check: nan stays nan, inf becomes 1.0."""

    async def update_progress(
        self, task_id: str, progress: float, *args: Any, **kwargs: Any
    ) -> None:
        if isinstance(progress, float) and not math.isfinite(progress):
            manager = self.runtime.manager
            if manager is not None:
                await manager.update_progress(task_id, min(max(progress, 0.0), 1.0), None, None)
            return
        await super().update_progress(task_id, progress, *args, **kwargs)

    async def emit_progress(self, task_id: str, progress: float | None = None, *args: Any,
                            **kwargs: Any) -> None:  # fmt: skip
        if isinstance(progress, float) and not math.isfinite(progress):
            progress = min(max(progress, 0.0), 1.0)
        await super().emit_progress(task_id, progress, *args, **kwargs)


class NanProgressStored(ReferenceImplementation):
    name = "broken: non-finite progress is stored"
    runtime_class = runtime_with(tasks_class=_NaiveClampTasks)


class _QuietNonFiniteTasks(Tasks):
    """Drops non-finite progress without a word (the row is safe; the caller never learns)."""

    async def update_progress(
        self, task_id: str, progress: float, *args: Any, **kwargs: Any
    ) -> None:
        if isinstance(progress, float) and not math.isfinite(progress):
            return
        await super().update_progress(task_id, progress, *args, **kwargs)

    async def emit_progress(self, task_id: str, progress: float | None = None, *args: Any,
                            **kwargs: Any) -> None:  # fmt: skip
        if isinstance(progress, float) and not math.isfinite(progress):
            return
        await super().emit_progress(task_id, progress, *args, **kwargs)


class NanProgressIgnored(ReferenceImplementation):
    name = "broken: non-finite progress is ignored quietly"
    runtime_class = runtime_with(tasks_class=_QuietNonFiniteTasks)


class _GlobPrefixStore(SQLiteStore):
    """Matches the prefix as a glob (``fnmatch(key, prefix + "*")``): ``*?[`` are patterns."""

    def find_by_key_prefix(self, prefix: str, organization_id: object) -> list[TaskRecord]:
        every = super().find_by_key_prefix("", organization_id)
        if prefix == "":
            return every
        return [r for r in every if fnmatch.fnmatchcase(r.task_key or "", prefix + "*")]


class KeyPrefixAsGlob(ReferenceImplementation):
    name = "broken: the key prefix is a glob"
    store_class = _GlobPrefixStore


class _TextOwnerManager(TaskManager):
    """Compares the sender with the task's owner as text: user "7" passes for user 7."""

    async def handle_client_message(self, conn: Any, command: str, body: dict[str, Any]) -> None:
        record = self.store.get(body["taskId"])
        if record is not None:
            mine, theirs = record.owner, conn.owner
            if (str(mine.user_id), str(mine.organization_id)) == (
                str(theirs.user_id), str(theirs.organization_id)
            ):  # fmt: skip
                conn = _AsOwner(conn, record.owner)
        await super().handle_client_message(conn, command, body)


class OwnerComparedAsText(ReferenceImplementation):
    name = "broken: the owner is compared as text"
    runtime_class = runtime_with(manager_class=_TextOwnerManager)


class _SigtermRunner(OSProcessRunner):
    """On timeout, asks the process group to stop with SIGTERM, and waits for it."""

    async def run(
        self, argv: list[str], *, cwd: str | None, env: dict[str, str], timeout: float | None,
        capture_output: bool,
    ) -> ProcessResult:  # fmt: skip
        def call() -> ProcessResult:
            pipe = subprocess.PIPE if capture_output else None
            with subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe,
                start_new_session=True,
            ) as proc:  # fmt: skip
                try:
                    out, err = proc.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGTERM)  # polite, and nothing after it
                    out, err = proc.communicate()
                    raise subprocess.TimeoutExpired(argv, timeout or 0.0, out, err) from None
                except BaseException:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise
                return ProcessResult(proc.returncode, out, err)

        return await asyncio.to_thread(call)


class TimeoutOnlySigterm(ReferenceImplementation):
    name = "broken: a timeout only sends SIGTERM"
    runtime_class = runtime_with(process_runner_class=_SigtermRunner)


class _SplittingRunner(OSProcessRunner):
    """Splits a one-item command into words, as a shell would."""

    async def run(self, argv: list[str], **kwargs: Any) -> ProcessResult:
        if len(argv) == 1 and " " in argv[0]:
            argv = shlex.split(argv[0])
        return await super().run(argv, **kwargs)


class OneItemCommandSplit(ReferenceImplementation):
    name = "broken: a one-item command is split into words"
    runtime_class = runtime_with(process_runner_class=_SplittingRunner)


# ---------------------------------------------------------------- one tooth per rule


class _HexIdStore(SQLiteStore):
    """Gives every new task a uuid4 in hex, without dashes (not the UUID4 text BG-1 states)."""

    async def insert_or_get_active(
        self, record: TaskRecord, lease: Lease
    ) -> tuple[TaskRecord, bool]:
        record.id = uuid.uuid4().hex
        return await super().insert_or_get_active(record, lease)


class TaskIdHexOnly(ReferenceImplementation):
    name = "broken: task ids are hex without dashes"
    store_class = _HexIdStore


class _KwargsDroppedRuntime(Runtime):
    """Registers a wrapper that calls the function without its keyword arguments."""

    def register_task(self, name: str, func: Callable[..., Any]) -> None:
        if inspect.iscoroutinefunction(func):

            async def without_kwargs(**kwargs: Any) -> Any:
                return await func()

            super().register_task(name, without_kwargs)
        else:
            super().register_task(name, lambda **kwargs: func())


class RegisteredKwargsDropped(ReferenceImplementation):
    name = "broken: registered functions lose their keyword arguments"
    runtime_class = _KwargsDroppedRuntime


class _UnnamedTasks(Tasks):
    """An unknown task name is refused without saying which."""

    async def run_background(self, target: Any, *args: Any, **kwargs: Any) -> str:
        try:
            return await super().run_background(target, *args, **kwargs)
        except UnknownTaskNameError:
            raise ValueError("unknown task") from None


class UnknownNameNotNamed(ReferenceImplementation):
    name = "broken: an unknown task name is not named"
    runtime_class = runtime_with(tasks_class=_UnnamedTasks)


class _TerseTargetTasks(Tasks):
    """Refuses a wrong target without showing the call that was meant."""

    async def run_background(self, target: Any, *args: Any, **kwargs: Any) -> str:
        try:
            return await super().run_background(target, *args, **kwargs)
        except InvalidSubmissionError as exc:
            if "()" in str(exc):
                raise ValueError("run_background takes a coroutine object") from None
            raise


class WrongTargetWithoutTheFix(ReferenceImplementation):
    name = "broken: a wrong target is refused without the fix"
    runtime_class = runtime_with(tasks_class=_TerseTargetTasks)


class _KeepsProgressStore(SQLiteStore):
    """Completing a task does not set its progress to 1.0."""

    async def update(
        self, task_id: str, changes: dict[str, object], lease: Lease, **keep: Any
    ) -> bool:
        if changes.get("status") == "completed":
            changes = {k: v for k, v in changes.items() if k != "progress"}
        return await super().update(task_id, changes, lease, **keep)


class CompletionKeepsProgress(ReferenceImplementation):
    name = "broken: a completed task keeps its last progress"
    store_class = _KeepsProgressStore


class _PendingCancelIgnoredManager(TaskManager):
    """Ignores a cancel while the task is still pending."""

    async def handle_client_message(self, conn: Any, command: str, body: dict[str, Any]) -> None:
        if command == "backgroundTaskCancel":
            record = self.store.get(body["taskId"])
            if record is not None and record.status == "pending":
                return
        await super().handle_client_message(conn, command, body)


class PendingNotCancelled(ReferenceImplementation):
    name = "broken: a pending task cannot be cancelled"
    runtime_class = runtime_with(manager_class=_PendingCancelIgnoredManager)


class _OnTheLoopRuntime(Runtime):
    """Runs a plain registered function on the event loop, wrapped in a coroutine."""

    def register_task(self, name: str, func: Callable[..., Any]) -> None:
        if not inspect.iscoroutinefunction(func):
            plain = func

            async def on_the_loop(**kwargs: Any) -> Any:
                return plain(**kwargs)

            func = on_the_loop
        super().register_task(name, func)


class SyncRegisteredOnTheLoop(ReferenceImplementation):
    name = "broken: a sync registered function runs on the loop"
    runtime_class = _OnTheLoopRuntime


class _CoercingKeyTasks(Tasks):
    """Turns a task_key that is not a string into one with str()."""

    async def run_background(self, target: Any, *args: Any, **kwargs: Any) -> str:
        key = kwargs.get("task_key")
        if key is not None and not isinstance(key, str):
            kwargs["task_key"] = str(key)
        return await super().run_background(target, *args, **kwargs)


class NonStrKeyCoerced(ReferenceImplementation):
    name = "broken: a non-str task key is coerced to str"
    runtime_class = runtime_with(tasks_class=_CoercingKeyTasks)


class _ManagerFirstTasks(Tasks):
    """Checks for a task manager before it checks the session's user."""

    async def run_background(self, target: Any, *args: Any, **kwargs: Any) -> str:
        if self.runtime.manager is None:
            if inspect.iscoroutine(target):
                target.close()
            raise ManagerNotInitializedError
        return await super().run_background(target, *args, **kwargs)


class ManagerCheckedBeforeUser(ReferenceImplementation):
    name = "broken: the manager is checked before the user"
    runtime_class = runtime_with(tasks_class=_ManagerFirstTasks)


class _WrappingBlockingTasks(Tasks):
    """Wraps func's exception in a RuntimeError."""

    async def run_blocking(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        try:
            return await super().run_blocking(func, *args, **kwargs)
        except TypeError:
            raise
        except Exception as exc:
            raise RuntimeError(f"run_blocking failed: {exc}") from exc


class BlockingExceptionWrapped(ReferenceImplementation):
    name = "broken: run_blocking wraps exceptions"
    runtime_class = runtime_with(tasks_class=_WrappingBlockingTasks)


class _TerseBlockingTasks(Tasks):
    """Refuses a non-callable with a message that does not say what was wrong."""

    async def run_blocking(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if not callable(func) and not _is_async(func):  # async code: BLOCK-6's refusal
            raise TypeError(f"cannot run {func!r}")
        return await super().run_blocking(func, *args, **kwargs)


class BlockingRefusalUnexplained(ReferenceImplementation):
    name = "broken: run_blocking's refusal does not say 'callable'"
    runtime_class = runtime_with(tasks_class=_TerseBlockingTasks)


class _ContextlessBlockingTasks(Tasks):
    """Runs func in a fresh, empty context instead of a copy of the caller's."""

    async def run_blocking(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if not callable(func) or _is_async(func):
            return await super().run_blocking(func, *args, **kwargs)  # the usual refusals
        loop = asyncio.get_running_loop()
        value = await loop.run_in_executor(None, functools.partial(func, *args, **kwargs))
        if inspect.iscoroutine(value):  # refused as the reference refuses it (BLOCK-6)
            value.close()
            raise TypeError("run_blocking: func returned a coroutine; await job(...) instead")
        return value  # run_in_executor runs func in the thread's own context, not a copy


class BlockingWithoutContext(ReferenceImplementation):
    name = "broken: run_blocking drops the context variables"
    runtime_class = runtime_with(tasks_class=_ContextlessBlockingTasks)


class _LenientCommandTasks(Tasks):
    """Takes a tuple for a command, as a list."""

    async def run_subprocess(self, command: Any, **kwargs: Any) -> Any:
        if isinstance(command, tuple):
            command = list(command)
        return await super().run_subprocess(command, **kwargs)


class TupleCommandAccepted(ReferenceImplementation):
    name = "broken: a tuple command is accepted"
    runtime_class = runtime_with(tasks_class=_LenientCommandTasks)


class _BlankDroppingTasks(Tasks):
    """Drops blank arguments instead of refusing them."""

    async def run_subprocess(self, command: Any, **kwargs: Any) -> Any:
        if isinstance(command, list):
            command = [a for a in command if not (isinstance(a, str) and not a.strip())]
        return await super().run_subprocess(command, **kwargs)


class BlankArgumentsDropped(ReferenceImplementation):
    name = "broken: blank arguments are dropped"
    runtime_class = runtime_with(tasks_class=_BlankDroppingTasks)


class _StrArgumentsTasks(Tasks):
    """Turns numbers and None in a command into text."""

    async def run_subprocess(self, command: Any, **kwargs: Any) -> Any:
        if isinstance(command, list):
            command = [str(a) if a is None or isinstance(a, int | float) else a for a in command]
        return await super().run_subprocess(command, **kwargs)


class NumberArgumentsConverted(ReferenceImplementation):
    name = "broken: numbers in a command are converted"
    runtime_class = runtime_with(tasks_class=_StrArgumentsTasks)


class _UnenforcedAccessRuntime(Runtime):
    """Keeps a module's access rules but never limits its working directory."""

    def allowed_paths(self, module: str) -> list[str] | None:
        return None


class CwdNeverChecked(ReferenceImplementation):
    name = "broken: the working directory is never checked"
    runtime_class = _UnenforcedAccessRuntime


class _NoAccessVariableTasks(Tasks):
    """Leaves MODULE_SDK_ACCESS out of a command's environment."""

    def sandbox_variables(self) -> dict[str, str]:
        variables = super().sandbox_variables()
        variables.pop("MODULE_SDK_ACCESS", None)
        return variables


class AccessVariableMissing(ReferenceImplementation):
    name = "broken: MODULE_SDK_ACCESS is missing"
    runtime_class = runtime_with(tasks_class=_NoAccessVariableTasks)


class _DefaultStrCheckpointTasks(Tasks):
    """Stores what JSON cannot hold as its str() (json.dumps(..., default=str))."""

    async def update_progress(
        self, task_id: str, progress: float, checkpoint: Any = None, label: str | None = None
    ) -> None:
        if isinstance(checkpoint, dict):
            checkpoint = json.loads(json.dumps(checkpoint, default=str))
        await super().update_progress(task_id, progress, checkpoint, label)


class CheckpointDefaultStr(ReferenceImplementation):
    name = "broken: a checkpoint is stored with default=str"
    runtime_class = runtime_with(tasks_class=_DefaultStrCheckpointTasks)


class _LoudUnknownProgressTasks(Tasks):
    """update_progress for an id that names no task raises."""

    async def update_progress(self, task_id: str, *args: Any, **kwargs: Any) -> None:
        if self.runtime.manager is not None and self.runtime.store.get(task_id) is None:
            raise ValueError(f"no task {task_id!r}")
        await super().update_progress(task_id, *args, **kwargs)


class ProgressOfUnknownIdRaises(ReferenceImplementation):
    name = "broken: progress of an unknown task raises"
    runtime_class = runtime_with(tasks_class=_LoudUnknownProgressTasks)


class _StoringEmitTasks(Tasks):
    """emit_progress stores the progress it pushes."""

    async def emit_progress(
        self, task_id: str, progress: float | None = None, label: str | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        if progress is not None:
            await self.update_progress(task_id, progress, checkpoint, label)
            return
        await super().emit_progress(task_id, progress, label, checkpoint)


class EmitProgressStores(ReferenceImplementation):
    name = "broken: emit_progress stores"
    runtime_class = runtime_with(tasks_class=_StoringEmitTasks)


class _SurfaceIdChannel(ConnectionRegistry):
    """Names the confirmation surface after the label instead of the task id."""

    def publish(self, owner: Owner, message: dict[str, Any], *, durable: bool) -> None:
        body = message.get("backgroundTaskConfirmation")
        if body is not None:
            message = {"backgroundTaskConfirmation": {**body, "surfaceId": body["label"]}}
        super().publish(owner, message, durable=durable)


class ConfirmationSurfaceIdWrong(ReferenceImplementation):
    name = "broken: the confirmation's surfaceId is not task_confirm_<id>"
    runtime_class = runtime_with(channel_class=_SurfaceIdChannel)


class _WaitingCancelIgnoredManager(TaskManager):
    """Ignores a cancel while the task waits for an answer."""

    async def handle_client_message(self, conn: Any, command: str, body: dict[str, Any]) -> None:
        if command == "backgroundTaskCancel":
            record = self.store.get(body["taskId"])
            if record is not None and record.status == "waiting_confirmation":
                return
        await super().handle_client_message(conn, command, body)


class CancelWhileWaitingIgnored(ReferenceImplementation):
    name = "broken: a cancel while waiting for an answer is ignored"
    runtime_class = runtime_with(manager_class=_WaitingCancelIgnoredManager)


class _LoudQueriesTasks(Tasks):
    """The queries raise when no task manager runs."""

    def _check(self) -> None:
        if self.runtime.manager is None:
            raise ManagerNotInitializedError

    def get_tasks_by_key(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self._check()
        return super().get_tasks_by_key(*args, **kwargs)

    def get_tasks_by_key_prefix(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self._check()
        return super().get_tasks_by_key_prefix(*args, **kwargs)

    def list_user_tasks(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self._check()
        return super().list_user_tasks(*args, **kwargs)


class QueriesRaiseWithoutManager(ReferenceImplementation):
    name = "broken: queries raise without a task manager"
    runtime_class = runtime_with(tasks_class=_LoudQueriesTasks)


class _TaskIdOnlyTasks(Tasks):
    """Serialized rows carry taskId only, not id."""

    @staticmethod
    def _strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k != "id"} for row in rows]

    def get_tasks_by_key(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self._strip(super().get_tasks_by_key(*args, **kwargs))

    def get_tasks_by_key_prefix(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self._strip(super().get_tasks_by_key_prefix(*args, **kwargs))

    def list_user_tasks(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self._strip(super().list_user_tasks(*args, **kwargs))


class _TaskIdOnlyRuntime(Runtime):
    tasks_class = _TaskIdOnlyTasks

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        row = await super().wait(task_id, timeout)
        return {k: v for k, v in row.items() if k != "id"}


class RowsWithoutId(ReferenceImplementation):
    name = "broken: rows carry taskId only"
    runtime_class = _TaskIdOnlyRuntime


class _QuietConfirmationTasks(Tasks):
    """request_confirmation returns None when no task manager runs."""

    async def request_confirmation(self, task_id: str, builder: Any) -> Any:
        if self.runtime.manager is None:
            return None
        return await super().request_confirmation(task_id, builder)


class ConfirmWithoutManagerReturnsNone(ReferenceImplementation):
    name = "broken: confirming without a task manager returns None"
    runtime_class = runtime_with(tasks_class=_QuietConfirmationTasks)


class _AnswerNotStoredStore(SQLiteStore):
    """An answered question puts the task back to running in memory, not in the row."""

    async def update(
        self, task_id: str, changes: dict[str, object], lease: Lease, **keep: Any
    ) -> bool:
        if changes.get("status") == "running":
            row = self.get(task_id)
            if row is not None and row.status == "waiting_confirmation":
                changes = {k: v for k, v in changes.items() if k != "status"}
        return await super().update(task_id, changes, lease, **keep)


class AnsweredRowStaysWaiting(ReferenceImplementation):
    name = "broken: an answered task's row stays waiting_confirmation"
    store_class = _AnswerNotStoredStore


class _NoSyntheticRequestTasks(Tasks):
    """A command of a task submitted outside any request gets no request id."""

    def sandbox_variables(self) -> dict[str, str]:
        variables = super().sandbox_variables()
        if variables.get("MODULE_SDK_REQUEST_ID", "").startswith("task:"):
            del variables["MODULE_SDK_REQUEST_ID"]
        return variables


class SyntheticRequestIdNotPassed(ReferenceImplementation):
    name = "broken: the synthetic request id is not passed to commands"
    runtime_class = runtime_with(tasks_class=_NoSyntheticRequestTasks)


class _NoSessionKeyInSyntheticContextManager(TaskManager):
    """The synthetic context of a task submitted outside any request lacks the submitter's
    session key: its commands get no ``MODULE_SDK_SESSION_KEY``."""

    async def submit(self, work: Any, **kwargs: Any) -> str:
        if kwargs.get("request") is None:
            kwargs["session_key"] = None
        return await super().submit(work, **kwargs)


class SyntheticContextWithoutSessionKey(ReferenceImplementation):
    name = "broken: the synthetic context has no session key"
    runtime_class = runtime_with(manager_class=_NoSessionKeyInSyntheticContextManager)


class _TiesOldestFirstStore(SQLiteStore):
    """Sorts a key's tasks by creation time alone: of two created in the same instant, the
    older comes first."""

    def find_by_key(self, task_key: str, organization_id: object) -> list[TaskRecord]:
        rows = super().find_by_key(task_key, organization_id)[::-1]  # oldest first
        return sorted(rows, key=lambda row: row.created_at, reverse=True)  # stable: ties stay


class SameInstantOldestFirst(ReferenceImplementation):
    name = "broken: tasks created in the same instant come oldest first"
    store_class = _TiesOldestFirstStore


class _TextOwnerRowsTasks(Tasks):
    """Serializes the owner's ids as text: userId "7", organizationId "10"."""

    @staticmethod
    def _text(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [_owner_as_text(row) for row in rows]

    def get_tasks_by_key(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self._text(super().get_tasks_by_key(*args, **kwargs))

    def get_tasks_by_key_prefix(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self._text(super().get_tasks_by_key_prefix(*args, **kwargs))

    def list_user_tasks(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self._text(super().list_user_tasks(*args, **kwargs))


def _owner_as_text(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "userId": None if row["userId"] is None else str(row["userId"]),
        "organizationId": None if row["organizationId"] is None else str(row["organizationId"]),
    }


class _TextOwnerRuntime(Runtime):
    tasks_class = _TextOwnerRowsTasks

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        return _owner_as_text(await super().wait(task_id, timeout))


class RowOwnerIdsAsText(ReferenceImplementation):
    name = "broken: rows carry the owner's ids as text"
    runtime_class = _TextOwnerRuntime
# ---------------------------------------------------------------- WS


class _AnyOriginChannel(WebSocketChannel):
    """Accepts a socket whatever site its page came from."""

    def _process_request(self, connection: Any, request: Any) -> Any:
        if "Origin" in request.headers:
            del request.headers["Origin"]
        return super()._process_request(connection, request)


class SocketOriginNotChecked(ReferenceWebSocketImplementation):
    name = "broken: sockets from any origin are accepted"
    channel_class = _AnyOriginChannel


class _ForgetfulSigner(TokenSigner):
    """Checks signature and expiry, but not whether the token was used before."""

    def verify(self, token: object) -> Owner:
        owner = super().verify(token)
        self._seen.clear()
        return owner


class _ReplayableChannel(WebSocketChannel):
    def __init__(self, runtime: Any, **options: Any) -> None:
        super().__init__(runtime, signer=_ForgetfulSigner(clock=runtime.clock), **options)


class SocketTokenReplayable(ReferenceWebSocketImplementation):
    name = "broken: a token opens any number of sockets"
    channel_class = _ReplayableChannel


class _SequencedConnection(SocketConnection):
    def deliver(self, message: dict[str, Any]) -> None:
        super().deliver({**message, "seq": self.sent + len(self.outbox)})


class _SequencedChannel(WebSocketChannel):
    connection_class = _SequencedConnection


class SocketFrameNotPlatformShape(ReferenceWebSocketImplementation):
    name = "broken: frames carry a sequence number beside the message"
    channel_class = _SequencedChannel


class _ClosesOnBadFrameChannel(WebSocketChannel):
    async def _reply(self, conn: SocketConnection, message: dict[str, Any]) -> None:
        if message.get("type") == "error" and conn.socket is not None:
            await conn.socket.close(1003, "bad frame")
            return
        await super()._reply(conn, message)


class SocketClosedOnBadFrame(ReferenceWebSocketImplementation):
    name = "broken: a bad frame closes the socket"
    channel_class = _ClosesOnBadFrameChannel


# ---------------------------------------------------------------- the tests


def test_the_table_names_real_rules_and_one_implementation_each() -> None:
    assert len({b.id for b in BROKEN}) == len({b.impl for b in BROKEN}) == len(BROKEN)
    for broken in BROKEN:
        assert broken.fails, broken.id
        assert broken.fails <= RULE_IDS, broken.fails - RULE_IDS
        factory = broken.factory
        assert (factory.runtime_class, factory.store_class) != (Runtime, SQLiteStore) or (
            issubclass(factory, ReferenceWebSocketImplementation)
            and factory.channel_class is not WebSocketChannel
        ), broken.impl
    families = {rule.split("-")[0] for broken in BROKEN for rule in broken.fails}
    assert families == {rule.family for rule in RULES}, "a rule family without a broken impl"
    toothed = {rule for broken in BROKEN for rule in broken.fails}
    assert toothed.isdisjoint(NO_TOOTH), toothed & NO_TOOTH
    missing = RULE_IDS - NO_TOOTH - toothed
    assert not missing, f"rules without a tooth: {sorted(missing)}"


def test_the_reference_passes_every_rule() -> None:
    assert failing(ReferenceImplementation) == frozenset()


@pytest.mark.rule("WS-1")
@pytest.mark.rule("WS-2")
@pytest.mark.rule("WS-3")
@pytest.mark.rule("WS-4")
def test_the_reference_over_websocket_passes_every_rule() -> None:
    assert failing(ReferenceWebSocketImplementation) == frozenset()


@pytest.mark.parametrize("broken", BROKEN, ids=[b.id for b in BROKEN])
def test_broken_implementation_is_caught_by_exactly_its_rules(
    broken: Broken, verdicts: Callable[[Broken], dict[str, str]]
) -> None:
    reasons = verdicts(broken)
    failed = frozenset(reasons)
    VERDICTS[broken.id] = failed
    missed, extra = sorted(broken.fails - failed), sorted(failed - broken.fails)
    assert failed == broken.fails, (
        f"{broken.impl}: expected to fail {sorted(broken.fails)}, failed {sorted(failed)} "
        f"(not caught by {missed}; also failed {extra}: "
        + "; ".join(f"{rule}: {reasons[rule]}" for rule in extra)
        + ")"
    )


def test_teeth_summary(
    record_property: Callable[[str, object], None], verdicts: Callable[[Broken], dict[str, str]]
) -> None:
    """Caught / written, over every implementation (those not judged yet are judged here)."""
    for broken in BROKEN:
        if broken.id not in VERDICTS:  # e.g. run alone with -k
            VERDICTS[broken.id] = frozenset(verdicts(broken))
    caught = [b for b in BROKEN if VERDICTS[b.id]]
    exact = [b for b in BROKEN if VERDICTS[b.id] == b.fails]
    summary = (
        f"teeth: {len(caught)}/{len(BROKEN)} broken implementations caught, "
        f"{len(exact)}/{len(BROKEN)} by exactly their rules"
    )
    print(summary)
    record_property("teeth", summary)
    assert len(caught) == len(BROKEN), [b.id for b in BROKEN if b not in caught]
    assert len(exact) == len(BROKEN), [b.id for b in BROKEN if b not in exact]
