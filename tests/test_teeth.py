"""The teeth of the conformance suite: deliberately broken implementations must be caught.

DESIGN §5: "deliberately broken implementations (each breaking one rule) must be caught by
exactly the rules they break." Each implementation here is the reference runtime with ONE
component swapped for a subclass that gets ONE behaviour wrong, plugged in through the
runtime's own seams (``Runtime.tasks_class``, ``Runtime.manager_class``, and a store, client
channel or process runner built by a ``Runtime`` subclass; nothing is monkeypatched). The whole
suite runs against each, and the set of failing rules must equal the expected set in
``BROKEN`` exactly: a rule missing from it means the suite lost a tooth; an extra rule means a
check is broader than its statement (or the breakage was not the one intended).

The implementations are importable adapters too (``taskbed conform --impl
test_teeth:DedupIgnoresOrganization``); ``tests/test_conform_cli.py`` uses them that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import inspect
import json
import subprocess
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from taskbed import (
    ACTIVE,
    ConnectionRegistry,
    ManagerNotInitializedError,
    OSProcessRunner,
    Owner,
    ProcessResult,
    RequestContext,
    Runtime,
    SQLiteStore,
    TaskEvent,
    TaskManager,
    TaskRecord,
    Tasks,
)
from taskbed._auth import TokenSigner
from taskbed._manager import same_owner
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
    # duplicate coroutine is not closed, the registered function is called) and DEDUP-6 (of
    # 25 racing submissions, more than one coroutine runs) both state "closed, not run".
    _broken("duplicate-starts-second-task", "DuplicateStartsSecondTask", "DEDUP-1", "DEDUP-6"),
    # -- OWN
    _broken("messages-sent-to-another-user", "MessagesToOrganizationMates", "OWN-3"),
    # Answer, cancel and get from anyone act on the task. CONF-4 states the same for the
    # answer and the cancel of a confirmation; OWN-6's stranger gets an answer for a task that
    # exists and none for an unknown id, which tells existence outright.
    _broken("non-owner-command-obeyed", "NonOwnerCommandObeyed", "OWN-4", "CONF-4", "OWN-6"),
    # The owner's get about a task waiting for an answer returns a progress message, not the
    # question. (Added to OWN-4's check of the owner's own get, which saw ended tasks only.)
    _broken("get-snapshot-hides-open-question", "GetSnapshotHidesOpenQuestion", "OWN-4"),
    # Durable messages for an offline owner are dropped. REC-3 states that they are kept
    # across a restart, so it needs them kept in the first place.
    _broken("offline-messages-dropped", "OfflineMessagesDropped", "OWN-5", "REC-3"),
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
    # -- MGR
    _broken("no-manager-progress-raises", "NoManagerProgressRaises", "MGR-2"),
    # -- REC
    # No recovery at all: orphans stay active (REC-1), and the error message of a recovered
    # task, which REC-3 expects in the offline queue, is never produced.
    _broken("recovery-skipped", "RecoverySkipped", "REC-1", "REC-3"),
    # -- BG
    # error = "task failed: <str(exc)>". REC-3 expects the queued error of a failed task to
    # be str(exc) as well.
    _broken("failed-error-not-str-exc", "FailedErrorNotStrExc", "BG-6", "REC-3"),
    _broken("interrupted-task-silent", "InterruptedTaskSilent", "BG-8"),  # a SHOULD rule only
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
# table since no run of the suite can fail for them). tests/test_manager.py covers the first
# two with real second runtimes:
# - recovery that ignores leases and takes over the tasks of a runtime that is still alive
#   (REC-2's two-live-runtimes case: the adapter cannot start a second runtime);
# - a heartbeat that never refreshes the lease (same reason);
# - no recovery at start, only in the later sweeps: after restart(crash=True) the crashed
#   runtime's lease is still fresh and its process (ours) alive, so only the sweeps can act.

RULES = load_rules()
RULE_IDS = {rule.id for rule in RULES}
VERDICTS: dict[str, frozenset[str]] = {}  # Broken.id -> the rules that failed, as judged


def failing(factory: Callable[[], Any]) -> frozenset[str]:
    """Run the whole suite against *factory*; the IDs of the rules that failed.

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
    return frozenset(r.rule.id for r in results if r.outcome is Outcome.FAIL)


# ---------------------------------------------------------------- how the parts are swapped


class PartsRuntime(Runtime):
    """The reference runtime, with its store, client channel or process runner replaced.

    ``ReferenceImplementation`` hands the runtime a ``SQLiteStore`` over its file; a
    ``store_class`` reopens that file as the broken store instead (restarts and recovery
    keep working: each new runtime reopens it the same way).
    """

    store_class: type[SQLiteStore] | None = None
    channel_class: type[ConnectionRegistry] | None = None
    runner_class: type[OSProcessRunner] | None = None

    def __init__(self, store: Any = None, **kwargs: Any) -> None:
        if self.store_class is not None and isinstance(store, SQLiteStore):
            path = store.path
            store.close()
            store = self.store_class(path)
        if self.runner_class is not None:
            kwargs.setdefault("process_runner", self.runner_class())
        super().__init__(store, **kwargs)
        if self.channel_class is not None:
            self.channel = self.channel_class(self.store, self.clock)


def runtime_with(**parts: type) -> type[Runtime]:
    """A Runtime subclass with the given parts: ``tasks_class``, ``manager_class``,
    ``store_class``, ``channel_class``, ``runner_class``."""
    name = "".join(part.__name__.strip("_") for part in parts.values()) + "Runtime"
    return type(name, (PartsRuntime,), dict(parts))


# ---------------------------------------------------------------- DEDUP


class _CrossOrganizationDedupStore(SQLiteStore):
    """Finds the active holder of a key in any organization, not just the submitter's."""

    def insert_or_get_active(self, record: TaskRecord) -> tuple[TaskRecord, bool]:
        if record.task_key is not None:
            holders = self._query(
                f"SELECT {_COLUMNS} FROM tasks WHERE task_key = ? AND status IN ({_ACTIVE_SQL}) "
                "ORDER BY seq",
                (record.task_key,),
            )
            if holders:
                return holders[0], False
        return super().insert_or_get_active(record)


class DedupIgnoresOrganization(ReferenceImplementation):
    name = "broken: dedup ignores the organization"
    runtime_class = runtime_with(store_class=_CrossOrganizationDedupStore)


class _TerminalHoldsKeyStore(SQLiteStore):
    """Any task with the key, whatever its status, holds it."""

    def insert_or_get_active(self, record: TaskRecord) -> tuple[TaskRecord, bool]:
        if record.task_key is not None:
            holders = self.find_by_key(record.task_key, record.organization_id)
            if holders:
                return holders[0], False
        return super().insert_or_get_active(record)


class DedupBlocksOnTerminal(ReferenceImplementation):
    name = "broken: terminal tasks block their key"
    runtime_class = runtime_with(store_class=_TerminalHoldsKeyStore)


class _RunsDuplicatesManager(TaskManager):
    """Returns the holder's id for a duplicate, and runs the duplicate's work anyway."""

    def submit(self, work: Any, *, owner: Owner, task_key: str | None, **kwargs: Any) -> str:
        holders = [
            row
            for row in (self.store.find_by_key(task_key, owner.organization_id) if task_key else [])
            if row.status in ACTIVE
        ]
        if not holders:
            return super().submit(work, owner=owner, task_key=task_key, **kwargs)

        async def stray() -> None:
            await work.start()

        strays = self.__dict__.setdefault("strays", [])
        strays.append((asyncio.ensure_future(stray()), work))
        return holders[0].id

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

    def submit(self, work: Any, *, request: RequestContext | None, **kwargs: Any) -> str:
        return super().submit(work, request=None, **kwargs)


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
    runtime_class = runtime_with(runner_class=_ShellRunner)


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
    runtime_class = runtime_with(runner_class=_ChildOnlyRunner)


class _GroupOnlyRunner(OSProcessRunner):
    """Kills the process group and nothing else: no sweep for descendants that left it."""

    def _end_escapees(self, child: Any, root: int | None) -> None:
        child.swept = True


class EscapedDescendantsSurvive(ReferenceImplementation):
    name = "broken: descendants that left the process group survive"
    runtime_class = runtime_with(runner_class=_GroupOnlyRunner)


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
            manager.update_progress(task_id, float(progress), checkpoint, label)


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
    runtime_class = runtime_with(store_class=_OldestFirstStore)


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
    runtime_class = runtime_with(store_class=_UpdatedFirstStore)


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
    runtime_class = runtime_with(store_class=_LikePrefixStore)


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

    def recover(self) -> list[TaskRecord]:
        return []


class RecoverySkipped(ReferenceImplementation):
    name = "broken: recovery is skipped"
    runtime_class = runtime_with(manager_class=_NoRecoveryManager)


# ---------------------------------------------------------------- BG


class _DecoratedErrorManager(TaskManager):
    """A failed task's error is "task failed: <str(exc)>" instead of str(exc)."""

    def _finish(self, record: TaskRecord, event: TaskEvent, **fields: Any) -> None:
        if event is TaskEvent.FAIL:
            fields["error"] = f"task failed: {fields.get('error')}"
        super()._finish(record, event, **fields)


class FailedErrorNotStrExc(ReferenceImplementation):
    name = "broken: a failed task's error is not str(exc)"
    runtime_class = runtime_with(manager_class=_DecoratedErrorManager)


class _SilentInterruptManager(TaskManager):
    """An interrupted task ends without telling its owner."""

    def _finish(self, record: TaskRecord, event: TaskEvent, **fields: Any) -> None:
        if event is TaskEvent.INTERRUPT:
            self._change(record, event, **fields)
            return
        super()._finish(record, event, **fields)


class InterruptedTaskSilent(ReferenceImplementation):
    name = "broken: an interrupted task tells nobody"
    runtime_class = runtime_with(manager_class=_SilentInterruptManager)


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
        assert factory.runtime_class is not Runtime or (
            issubclass(factory, ReferenceWebSocketImplementation)
            and factory.channel_class is not WebSocketChannel
        ), broken.impl
    families = {rule.split("-")[0] for broken in BROKEN for rule in broken.fails}
    assert families == {rule.family for rule in RULES}, "a rule family without a broken impl"


def test_the_reference_passes_every_rule() -> None:
    assert failing(ReferenceImplementation) == frozenset()


@pytest.mark.rule("WS-1")
@pytest.mark.rule("WS-2")
@pytest.mark.rule("WS-3")
@pytest.mark.rule("WS-4")
def test_the_reference_over_websocket_passes_every_rule() -> None:
    assert failing(ReferenceWebSocketImplementation) == frozenset()


@pytest.mark.parametrize("broken", BROKEN, ids=[b.id for b in BROKEN])
def test_broken_implementation_is_caught_by_exactly_its_rules(broken: Broken) -> None:
    failed = failing(broken.factory)
    VERDICTS[broken.id] = failed
    missed, extra = sorted(broken.fails - failed), sorted(failed - broken.fails)
    assert failed == broken.fails, (
        f"{broken.impl}: expected to fail {sorted(broken.fails)}, failed {sorted(failed)} "
        f"(not caught by {missed}; also failed {extra})"
    )


def test_teeth_summary(record_property: Callable[[str, object], None]) -> None:
    """Caught / written, over every implementation (those not judged yet are judged here)."""
    for broken in BROKEN:
        if broken.id not in VERDICTS:  # e.g. run alone with -k
            VERDICTS[broken.id] = failing(broken.factory)
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
