"""The conformance runner: judge an implementation rule by rule against the spec pages.

pytest-free (prior art: trio's ``check_*`` stream checkers): ``run_rule`` and ``run_suite``
take a factory, run each rule's checks on a fresh virtual-time loop with a fresh
implementation, and return results; ``taskbed conform`` and our pytest suite both call them.

What a rule's checks see (the suite's objects):

``runtime``  the adapter, seen through the suite (``register_task``, ``register_module``,
             ``wait``, ``request``, ``sdk``, ``connect``, ``restart``, ``peer``)
``sdk``      the module SDK of ``session()`` in module ``"mod"``, inside request ``"req-1"``
``client``   a connected ``ClientView`` of that user (``expect``, ``respond``, ``cancel``, ...)
``clock``    the virtual clock (``now()``, ``await clock.advance(seconds)``)
``session``  ``session(user=7, org=10, key="s1")`` builds a session dict
``connect``  ``connect(user, org)`` opens another ``ClientView``
``sandbox``  ``sandbox["MODULE_SDK_MODULE"]``: the implementation's name for a variable (only
             the variables the implementation has)
``sandbox_view(env)``  a program's environment -> the sandbox variables it holds, under the
             reference's names and in the reference's formats
``id_of(row)``  the id of a serialized row (the adapter's ``task_id``); ``observer()`` the
             tasks API the suite reads rows through; ``unknown_ids`` ids that name no task;
             ``TASK_IDS`` ``"str"`` or ``"int"``
``surface(*components)``  what ``request_confirmation`` takes for ``Text``/``Button``s;
             ``components(*components)`` what the client is shown for them
``asyncio``, ``ui`` (the reference ``taskbed.ui``), ``raises`` (``with raises(E):``)
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import enum
import inspect
import os
import re
import sysconfig
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from taskbed import ui

from ._client import ClientView
from ._clock import VirtualClock, new_virtual_loop
from ._protocol import (
    OBSERVER_MODULE,
    Adapter,
    Button,
    Surface,
    Text,
    as_adapter,
    overrides,
)
from ._spec import Block, Rule

#: Virtual seconds a rule may take before it is judged hung.
RULE_TIMEOUT = 3600.0
DEFAULT_USER, DEFAULT_ORG, DEFAULT_MODULE, DEFAULT_REQUEST = 7, 10, "mod", "req-1"


class Outcome(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - an outcome, not a password
    FAIL = "fail"
    SKIPPED = "skipped"
    DEVIATION = "deviation"


@dataclasses.dataclass(frozen=True)
class Result:
    """The verdict on one rule for one implementation."""

    rule: Rule
    outcome: Outcome
    reason: str = ""
    wall: float = 0.0
    virtual: float = 0.0
    #: Where the failure arose: the deepest frame and the exception type (``root_cause``).
    root: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule.id,
            "level": self.rule.level,
            "title": self.rule.title,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "root": self.root,
            "wall_seconds": round(self.wall, 6),
            "virtual_seconds": round(self.virtual, 6),
        }


class raises:
    """``with raises(ValueError, match="..."):`` for spec blocks, without pytest."""

    def __init__(self, expected: type[BaseException] | tuple[type[BaseException], ...],
                 match: str | None = None) -> None:  # fmt: skip
        self.expected = expected
        self.match = match
        self.value: BaseException | None = None

    def __enter__(self) -> raises:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:  # fmt: skip
        if exc is None:
            raise AssertionError(f"expected {self.expected} to be raised, nothing was")
        if not isinstance(exc, self.expected):
            return False
        if self.match is not None and not re.search(self.match, str(exc)):
            raise AssertionError(
                f"{type(exc).__name__}({str(exc)!r}) does not match {self.match!r}"
            )
        self.value = exc
        return True


def _session(
    user: Any = DEFAULT_USER, org: Any = DEFAULT_ORG, key: str | None = "s1"
) -> dict[str, Any]:
    return {"user": {"id": user, "organization_id": org}, "session_key": key}


async def _run_block(block: Block, namespace: dict[str, Any]) -> None:
    source = "\n" * (block.line - 1) + block.code  # tracebacks point at the page's lines
    code = compile(source, str(block.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # noqa: S307 - the spec pages are code, by design
    if inspect.iscoroutine(result):
        await result


def _reason(exc: BaseException, rule: Rule) -> str:
    """The failure as a reader needs it: the failing line of the page and the message."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(rule.page)]
    where = f"{rule.page.name}:{frames[-1].lineno}: " if frames else ""
    code = f" [{frames[-1].line.strip()}]" if frames and frames[-1].line else ""
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, AssertionError):
        message = f"{type(exc).__name__}: {message}"
    return f"{where}{message}{code}".strip()


def root_cause(exc: BaseException) -> str:
    """Where *exc* arose, as ``file:line: ExceptionType``: its deepest frame of interest.

    Failures with the same root cause come from one deviation, however many rules they fail
    (a helper, an adapter method, a missing field); reports group them.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    # The suite's own assertion helpers (ClientView.expect) and the standard library (an
    # asyncio timeout) are where many unrelated failures surface, not where they arise. A
    # rule that hung has only those: it waited at the line of the page its cancellation shows
    # (not deeper, in whatever it awaited: every hang would share that place).
    cause: BaseException | None = exc
    for _ in range(3):
        if cause is None:
            break
        own = [f for f in traceback.extract_tb(cause.__traceback__) if _may_be_root(f.filename)]
        if cause is not exc:
            own = [f for f in own if f.filename.endswith(".md")] or own
        if own:
            return f"{own[-1].filename}:{own[-1].lineno}: {type(exc).__name__}"
        cause = cause.__cause__ or cause.__context__
    return f"{frames[-1].filename}:{frames[-1].lineno}: {type(exc).__name__}"


_HELPERS = tuple(os.path.join(os.path.dirname(__file__), n) for n in ("_client.py", "_conform.py"))
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep
_PACKAGES = tuple({sysconfig.get_paths()[k] + os.sep for k in ("purelib", "platlib")})


def _may_be_root(filename: str) -> bool:
    if filename in _HELPERS:
        return False
    return not filename.startswith(_STDLIB) or filename.startswith(_PACKAGES)


# ---------------------------------------------------------------- the adapter as the checks see it


class _Owners:
    """Who submitted which task: the suite's own ``wait`` finds rows through it."""

    def __init__(self) -> None:
        self.by_task: dict[Any, tuple[Any, Any]] = {}
        self.seen: list[tuple[Any, Any]] = []

    def add(self, task_id: Any, session: Any) -> None:
        user = session.get("user") if isinstance(session, dict) else None
        owner = (user.get("id"), user.get("organization_id")) if isinstance(user, dict) else None
        if owner is not None:
            self.by_task.setdefault(task_id, owner)
            if owner not in self.seen:
                self.seen.append(owner)


class _TrackedTasks:
    """An SDK's ``tasks``, noting who submits which task; everything else passes through."""

    def __init__(self, tasks: Any, session: Any, owners: _Owners) -> None:
        self._tasks = tasks
        self._session = session
        self._owners = owners

    async def run_background(self, *args: Any, **kwargs: Any) -> Any:
        task_id = await self._tasks.run_background(*args, **kwargs)
        self._owners.add(task_id, self._session)
        return task_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tasks, name)


class _TrackedSDK:
    def __init__(self, sdk: Any, session: Any, owners: _Owners) -> None:
        self._sdk = sdk
        self.tasks = _TrackedTasks(sdk.tasks, session, owners)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sdk, name)


class RuntimeView:
    """The adapter as the checks' ``runtime``: its own members, plus what the protocol
    translates (``register_module`` through ``access()``) or provides when the adapter does
    not (``wait``, by polling the observer's queries on virtual time)."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self._owners = _Owners()
        self._track = not overrides(adapter, "wait")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.adapter, name)

    def _sdk(self, sdk: Any, session: Any) -> Any:
        return _TrackedSDK(sdk, session, self._owners) if self._track else sdk

    def sdk(self, *, session: dict[str, Any], module: str) -> Any:
        return self._sdk(self.adapter.sdk(session=session, module=module), session)

    @contextlib.asynccontextmanager
    async def request(self, *, session: dict[str, Any], module: str, request_id: str | None) -> Any:
        async with self.adapter.request(
            session=session, module=module, request_id=request_id
        ) as sdk:
            yield self._sdk(sdk, session)

    def register_module(self, name: str, access: list[dict[str, Any]]) -> None:
        self.adapter.register_module(name, self.adapter.access(access))

    async def peer(self) -> Any:
        return _PeerView(await self.adapter.peer(), self)

    async def wait(self, task_id: Any, timeout: float | None = None) -> dict[str, Any]:
        if not self._track:
            return await self.adapter.wait(task_id, timeout)
        async with asyncio.timeout(timeout):
            return await self._poll(task_id)

    async def _poll(self, task_id: Any) -> dict[str, Any]:
        """Until the task is terminal: read its owner's rows through the observer, backing
        off from 10 ms to 1 s of (virtual) time between reads."""
        delay = 0.01
        while True:
            owners = [self._owners.by_task[task_id]] if task_id in self._owners.by_task else []
            tasks = self.adapter.observer().tasks
            for user, org in owners or self._owners.seen:
                for row in tasks.list_user_tasks(user, org):
                    if self.adapter.task_id(row) == task_id and row["status"] in TERMINAL:
                        return dict(row)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class _PeerView:
    def __init__(self, peer: Any, view: RuntimeView) -> None:
        self._peer = peer
        self._view = view

    def __getattr__(self, name: str) -> Any:
        return getattr(self._peer, name)

    def sdk(self, *, session: dict[str, Any], module: str) -> Any:
        return self._view._sdk(self._peer.sdk(session=session, module=module), session)

    @contextlib.asynccontextmanager
    async def request(self, *, session: dict[str, Any], module: str, request_id: str | None) -> Any:
        async with self._peer.request(session=session, module=module, request_id=request_id) as sdk:
            yield self._view._sdk(sdk, session)


TERMINAL = frozenset({"completed", "failed", "interrupted"})


def _sandbox_view(adapter: Adapter) -> Callable[[Mapping[str, str]], dict[str, str]]:
    names = {ref: real for ref, real in adapter.sandbox_names.items() if real}

    def sandbox_view(env: Mapping[str, str]) -> dict[str, str]:
        """The sandbox variables in a program's environment, as the reference names them."""
        return {
            ref: adapter.sandbox_value(ref, env[real]) for ref, real in names.items() if real in env
        }

    return sandbox_view


def namespace_for(rule: Rule, adapter: Adapter, view: RuntimeView) -> dict[str, Any]:
    """The names a rule's checks run against (see the module docstring)."""
    loop = asyncio.get_running_loop()

    def connect(user: Any = DEFAULT_USER, org: Any = DEFAULT_ORG) -> ClientView:
        def open_connection(user_id: Any, organization_id: Any) -> Any:
            credentials = adapter.authenticate(user_id, organization_id)
            return adapter.connect(user_id, organization_id, credentials)

        return ClientView(open_connection, user, org, settle=adapter.settle)

    def surface(*components: Text | Button) -> Any:
        return adapter.surface(Surface(*components))

    def components(*components: Text | Button) -> list[dict[str, Any]]:
        return adapter.components(Surface(*components))

    return {
        "__name__": f"spec_{rule.family.lower()}",
        "asyncio": asyncio,
        "runtime": view,
        "clock": getattr(loop, "clock", None),
        "session": _session,
        "connect": connect,
        "client": connect(),
        "sandbox": {ref: real for ref, real in adapter.sandbox_names.items() if real},
        "sandbox_view": _sandbox_view(adapter),
        "id_of": adapter.task_id,
        "observer": lambda: adapter.observer().tasks,
        "unknown_ids": adapter.unknown_ids(),
        "TASK_IDS": adapter.task_ids,
        "OBSERVER_MODULE": OBSERVER_MODULE,
        "Text": Text,
        "Button": Button,
        "surface": surface,
        "components": components,
        "ui": ui,
        "raises": raises,
    }


async def check_rule(rule: Rule, impl: Any) -> None:
    """Run *rule*'s setup and checks against a started implementation; raise on the first
    failure. *impl* is a protocol v2 adapter (or a v1 one, wrapped by ``as_adapter``)."""
    adapter = as_adapter(impl)
    view = RuntimeView(adapter)
    namespace = namespace_for(rule, adapter, view)
    async with view.request(
        session=_session(), module=DEFAULT_MODULE, request_id=DEFAULT_REQUEST
    ) as sdk:
        namespace["sdk"] = sdk
        for block in (*rule.setup, *rule.blocks):
            await _run_block(block, namespace)


async def run_rule(rule: Rule, factory: Callable[[], Any]) -> Result:
    """Judge one rule on the running loop with a fresh adapter from *factory*.

    The adapter's ``setup(rule)`` comes first and its ``teardown(rule)`` last, whatever
    happened; in between ``start()``, the checks, and ``stop()``.
    """
    adapter = as_adapter(factory(), f"the adapter of {getattr(factory, '__name__', factory)!r}")
    missing = rule.requires - adapter.capabilities
    if missing:
        return Result(rule, Outcome.SKIPPED, f"needs capabilities {sorted(missing)}")
    loop = asyncio.get_running_loop()
    clock = getattr(loop, "clock", None)
    v0, w0 = (clock.monotonic() if clock else 0.0), time.perf_counter()
    failure: BaseException | None = None
    await adapter.setup(rule.id)
    try:
        await adapter.start()
        deadline = asyncio.timeout(RULE_TIMEOUT)
        try:
            async with deadline:
                await check_rule(rule, adapter)
        except TimeoutError as exc:
            failure = exc
            if deadline.expired():  # the rule hung; a timeout inside a check speaks for itself
                failure = AssertionError(
                    f"did not finish within {RULE_TIMEOUT:.0f} s of virtual time"
                )
                failure.__traceback__ = exc.__traceback__
                failure.__cause__ = exc  # where it waited (root_cause reads it)
        except Exception as exc:  # noqa: BLE001 - every failure is a verdict
            failure = exc
        finally:
            with contextlib.suppress(Exception):
                await adapter.stop()
    except Exception as exc:  # noqa: BLE001 - a start() that fails is a verdict too
        failure = exc
        with contextlib.suppress(Exception):
            await adapter.stop()
    finally:
        with contextlib.suppress(Exception):
            await adapter.teardown(rule.id)
    wall = time.perf_counter() - w0
    virtual = (clock.monotonic() if clock else 0.0) - v0
    if failure is None:
        return Result(rule, Outcome.PASS, "", wall, virtual)
    reason = _reason(failure, rule)
    if rule.id in adapter.deviations:
        return Result(rule, Outcome.DEVIATION, adapter.deviations[rule.id], wall, virtual)
    return Result(rule, Outcome.FAIL, reason, wall, virtual, root_cause(failure))


def run_rule_sync(rule: Rule, factory: Callable[[], Any]) -> Result:
    """Judge one rule on its own fresh virtual-time loop.

    ``time.monotonic()`` stays real there: the spec pages bound a broken implementation's hang
    with real-time deadlines (their ``until()`` helper), which virtual time would never reach.
    """
    loop = new_virtual_loop(VirtualClock(virtual_monotonic=False))
    try:
        return loop.run_until_complete(run_rule(rule, factory))
    finally:
        # What an implementation left running (a stop() that abandons its tasks: MGR-3/4 judge
        # that) is cancelled and awaited here, as asyncio.run does, so that it cannot fail
        # later, at garbage collection, in whatever runs next.
        with contextlib.suppress(Exception):
            left = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.wait(left, timeout=RULE_TIMEOUT))
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def run_suite(
    rules: Iterable[Rule],
    factory: Callable[[], Any],
    *,
    progress: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Judge every rule; *progress* is called after each one."""
    results = []
    for rule in rules:
        result = run_rule_sync(rule, factory)
        results.append(result)
        if progress is not None:
            progress(result)
    return results
