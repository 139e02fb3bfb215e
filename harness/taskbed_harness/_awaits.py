"""Forgotten ``await``s: a check that is never awaited checks nothing, and must not pass.

Two kinds of forgotten ``await`` reach a test:

* an assertion of the harness (``taskbed_client.expect(...)``, ``expect_nothing(...)``)
  called without ``await``. Python only warns about it, when the coroutine is collected, so
  the test passes without having checked anything. These calls return a ``Checked``
  coroutine that knows whether anyone awaited it; the pytest plugin fails the test for each
  one that nobody did, naming the line.
* an SDK call (``sdk.tasks.run_background(...)``, ``update_progress(...)``) called without
  ``await``: nothing happens, and the warning points wherever the garbage collector ran.
  While a taskbed test runs, ``collect_forgotten()`` takes over CPython's "coroutine ... was
  never awaited" warning (``warnings._warn_unawaited_coroutine``, which the interpreter looks
  up on every such warning) and the plugin turns each one into a failure that names the call
  and shows the line with the ``await`` added.

Prior art: trio's ``coroutine_or_error`` (an error that shows the incorrect and the correct
line); pytest-asyncio's strict mode (an un-run coroutine is an error, not a pass).
"""

from __future__ import annotations

import collections.abc
import linecache
import os
import re
import sys
import warnings
from collections.abc import Callable, Coroutine, Generator, Iterator
from contextlib import contextmanager
from types import CoroutineType
from typing import Any, TypeVar

__all__ = ("Checked", "NeverAwaitedError", "collect_forgotten", "forgotten_message")

T = TypeVar("T")

_DOCS = "(see docs/guides/troubleshooting.md#never-awaited)"
_HARNESS_DIR = os.path.dirname(os.path.abspath(__file__))


class NeverAwaitedError(AssertionError):
    """A check or SDK call of a taskbed test was never awaited, so it did nothing."""


def _caller() -> tuple[str, int, str]:
    """(file, line, function) of the first frame outside the harness."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_HARNESS_DIR):
        frame = frame.f_back
    return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name


class Checked(collections.abc.Coroutine[Any, Any, T]):
    """A coroutine that remembers whether it was awaited (or run as a task).

    It behaves as the coroutine it wraps: ``await``, ``asyncio.create_task()`` and
    ``asyncio.wait_for()`` all accept it.
    """

    __slots__ = ("_coro", "awaited", "what", "where")

    def __init__(self, coro: Coroutine[Any, Any, T], what: str) -> None:
        self._coro = coro
        self.what = what
        self.where = _caller()
        self.awaited = False

    def __await__(self) -> Generator[Any, None, T]:
        self.awaited = True
        return self._coro.__await__()

    def send(self, value: Any) -> Any:
        self.awaited = True
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        self.awaited = True
        return self._coro.throw(*args)

    def close(self) -> None:
        self._coro.close()

    def __repr__(self) -> str:
        return f"<Checked {self.what} awaited={self.awaited}>"


def unawaited_message(checks: list[Checked[Any]]) -> str:
    """The failure for assertions that were never awaited (they are closed here)."""
    lines = [f"{len(checks)} check(s) of this test were never awaited, so they checked nothing:"]
    for check in checks:
        check.close()
        file, line, func = check.where
        lines.append(f"  {_short(file)}:{line} in {func}: {check.what}")
        source = linecache.getline(file, line).strip()
        if source:
            lines.append(f"      write: {_with_await(source, check.what.split('(')[0])}")
    lines.append(_DOCS)
    return "\n".join(lines)


# ---------------------------------------------------------------- forgotten SDK calls


@contextmanager
def collect_forgotten() -> Iterator[list[Coroutine[Any, Any, Any]]]:
    """Within the block, coroutines collected without having run are listed, not warned about.

    Origin tracking is on meanwhile, so each one knows the line that created it.
    """
    found: list[Coroutine[Any, Any, Any]] = []
    original: Callable[[Any], None] | None = getattr(warnings, "_warn_unawaited_coroutine", None)
    if original is None:  # pragma: no cover - an interpreter without the hook: plain warnings
        yield found
        return

    passed_on: set[int] = set()  # coroutines handed to one that never ran: not theirs to await

    def record(coro: Any) -> None:
        if id(coro) in passed_on:
            passed_on.discard(id(coro))
            return
        passed_on.update(_coroutine_arguments(coro))
        found.append(coro)

    depth = sys.get_coroutine_origin_tracking_depth()
    sys.set_coroutine_origin_tracking_depth(max(depth, 8))
    warnings._warn_unawaited_coroutine = record  # type: ignore[attr-defined]
    try:
        yield found
    finally:
        warnings._warn_unawaited_coroutine = original  # type: ignore[attr-defined]
        sys.set_coroutine_origin_tracking_depth(depth)


def forgotten_message(coros: list[Coroutine[Any, Any, Any]]) -> str:
    """The failure for coroutines (SDK calls, mostly) that were created and never awaited."""
    lines = [f"{len(coros)} coroutine(s) were never awaited, so they never ran:"]
    for coro in coros:
        lines.extend(_describe(coro))
    lines.append(_DOCS)
    return "\n".join(lines)


def _describe(coro: Any) -> list[str]:
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    code = getattr(coro, "cr_code", None)
    sdk = code is not None and "taskbed" in code.co_filename.replace(os.sep, "/")
    what = f"the SDK call {name}()" if sdk else f"{name}()"
    origin = getattr(coro, "cr_origin", None) or ()
    if not origin:
        return [f"  {what} (created where origin tracking was off)"]
    file, line, func = origin[0]  # most recent first: the line that called it
    out = [f"  {what} at {_short(file)}:{line} in {func}"]
    source = linecache.getline(file, line).strip()
    if source:
        out.append(f"      write: {_with_await(source, getattr(coro, '__name__', ''))}")
    return out


def coroutine_instead_of_id(value: object, where: str) -> TypeError | None:
    """The error for a coroutine passed where a task id belongs (a forgotten ``await``)."""
    if not isinstance(value, CoroutineType | Checked):
        return None
    name = getattr(value, "__qualname__", type(value).__name__)
    for argument in _coroutine_arguments(value, objects=True):
        argument.close()  # e.g. the job passed to the run_background call that never ran
    value.close()  # reported here: no "never awaited" warning later
    return TypeError(
        f"{where} got a coroutine object ({name}), not a task id: the call that made it was "
        f"not awaited. Write `task_id = await sdk.tasks.run_background(...)` {_DOCS}"
    )


# ---------------------------------------------------------------- helpers


def _coroutine_arguments(coro: Any, *, objects: bool = False) -> list[Any]:
    """The coroutines among the arguments of a coroutine that has not started (ids, or them)."""
    frame = getattr(coro, "cr_frame", None)
    if frame is None or getattr(coro, "cr_running", False):
        return []
    found = [v for v in frame.f_locals.values() if isinstance(v, CoroutineType | Checked)]
    return found if objects else [id(v) for v in found]


def _with_await(source: str, name: str) -> str:
    """*source* with ``await`` put in front of the call of *name* (the line as it should be)."""
    if name:
        match = re.search(rf"[\w.\[\]'\"]*\b{re.escape(name)}\(", source)
        if match and not source[: match.start()].rstrip().endswith("await"):
            return source[: match.start()] + "await " + source[match.start() :]
    return source


def _short(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if relative.startswith("..") else relative
