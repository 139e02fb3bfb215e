"""The conformance runner: judge an implementation rule by rule against the spec pages.

pytest-free (prior art: trio's ``check_*`` stream checkers): ``run_rule`` and ``run_suite``
take a factory, run each rule's checks on a fresh virtual-time loop with a fresh
implementation, and return results; ``taskbed conform`` and our pytest suite both call them.

What a rule's checks see (the suite's objects):

``runtime``  the implementation's adapter (``register_task``, ``register_module``, ``wait``,
             ``request``, ``sdk``, ``connect``, ``restart``)
``sdk``      the module SDK of ``session()`` in module ``"mod"``, inside request ``"req-1"``
``client``   a connected ``ClientView`` of that user (``expect``, ``respond``, ``cancel``, ...)
``clock``    the virtual clock (``now()``, ``await clock.advance(seconds)``)
``session``  ``session(user=7, org=10, key="s1")`` builds a session dict
``connect``  ``connect(user, org)`` opens another ``ClientView``
``sandbox``  ``sandbox["MODULE_SDK_MODULE"]``: the implementation's name for a variable
``asyncio``, ``ui`` (the reference ``taskbed.ui``), ``pytest_raises`` (``with raises(E):``)
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import enum
import inspect
import re
import time
import traceback
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from taskbed import ui

from ._adapters import Implementation
from ._client import ClientView
from ._clock import VirtualClock, new_virtual_loop
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

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule.id,
            "level": self.rule.level,
            "title": self.rule.title,
            "outcome": self.outcome.value,
            "reason": self.reason,
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


async def check_rule(rule: Rule, impl: Implementation) -> None:
    """Run *rule*'s setup and checks against a started *impl*; raise on the first failure."""
    loop = asyncio.get_running_loop()
    clock = getattr(loop, "clock", None)

    def connect(user: Any = DEFAULT_USER, org: Any = DEFAULT_ORG) -> ClientView:
        return ClientView(impl.connect, user, org)

    namespace: dict[str, Any] = {
        "__name__": f"spec_{rule.family.lower()}",
        "asyncio": asyncio,
        "runtime": impl,
        "clock": clock,
        "session": _session,
        "connect": connect,
        "client": connect(),
        "sandbox": dict(impl.sandbox_names),
        "ui": ui,
        "raises": raises,
    }
    async with impl.request(
        session=_session(), module=DEFAULT_MODULE, request_id=DEFAULT_REQUEST
    ) as sdk:
        namespace["sdk"] = sdk
        for block in (*rule.setup, *rule.blocks):
            await _run_block(block, namespace)


async def run_rule(rule: Rule, factory: Callable[[], Implementation]) -> Result:
    """Judge one rule on the running loop with a fresh implementation from *factory*."""
    impl = factory()
    missing = rule.requires - impl.capabilities
    if missing:
        return Result(rule, Outcome.SKIPPED, f"needs capabilities {sorted(missing)}")
    loop = asyncio.get_running_loop()
    clock = getattr(loop, "clock", None)
    v0, w0 = (clock.monotonic() if clock else 0.0), time.perf_counter()
    failure: BaseException | None = None
    await impl.start()
    deadline = asyncio.timeout(RULE_TIMEOUT)
    try:
        async with deadline:
            await check_rule(rule, impl)
    except TimeoutError as exc:
        failure = exc
        if deadline.expired():  # the rule hung; a timeout inside a check speaks for itself
            failure = AssertionError(f"did not finish within {RULE_TIMEOUT:.0f} s of virtual time")
            failure.__traceback__ = exc.__traceback__
    except Exception as exc:  # noqa: BLE001 - every failure is a verdict
        failure = exc
    finally:
        with contextlib.suppress(Exception):
            await impl.stop()
    wall = time.perf_counter() - w0
    virtual = (clock.monotonic() if clock else 0.0) - v0
    if failure is None:
        return Result(rule, Outcome.PASS, "", wall, virtual)
    reason = _reason(failure, rule)
    if rule.id in impl.deviations:
        return Result(rule, Outcome.DEVIATION, impl.deviations[rule.id], wall, virtual)
    return Result(rule, Outcome.FAIL, reason, wall, virtual)


def run_rule_sync(rule: Rule, factory: Callable[[], Implementation]) -> Result:
    """Judge one rule on its own fresh virtual-time loop.

    ``time.monotonic()`` stays real there: the spec pages bound a broken implementation's hang
    with real-time deadlines (their ``until()`` helper), which virtual time would never reach.
    """
    loop = new_virtual_loop(VirtualClock(virtual_monotonic=False))
    try:
        return loop.run_until_complete(run_rule(rule, factory))
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def run_suite(
    rules: Iterable[Rule],
    factory: Callable[[], Implementation],
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
