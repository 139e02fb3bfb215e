"""Virtual time: a clock that jumps when the event loop is idle, and the loop that runs on it.

Theory of operation
===================

A test owns its event loop, a ``VirtualEventLoop``, and the loop reads its time from a
``VirtualClock``. Time is kept as integer nanoseconds, so advancing by 0.1 s ten times is
exactly 1.0 s. The clock gives two readings of the same instant: ``monotonic()`` (the loop's
``time()``, 0.0 when the clock is made) and ``now()`` (epoch seconds, the ``taskbed.Clock``
port; 2026-01-01T00:00:00Z unless told otherwise).

Virtual time moves in exactly one place: the loop's selector. ``BaseEventLoop._run_once`` asks
the selector to wait ``timeout`` seconds for I/O, where ``timeout`` is 0 when callbacks are
ready, the distance to the next timer otherwise, and ``None`` when there is no timer at all.
The ``select`` of our selector walks down this ladder and stops at the first rung that holds:

1. Poll real I/O with ``select(0)``. Anything ready, or ``timeout == 0``: return at once,
   time does not move (the loop is busy).
2. The loop is idle. Spend a few no-op cycles first, so that callbacks scheduled by
   callbacks, and I/O that is about to arrive, settle before time moves.
3. A worker thread (any ``run_in_executor`` call, on any executor), a subprocess, or work
   declared with ``external_work()`` is in flight: wait for real, in short slices, with time
   standing still. A thread is not virtual; letting time jump while one runs would make
   timeouts fire early and at random (trio issue #456 is that bug report).
4. Someone awaits ``run_until_idle()``: wake them. Time does not move.
5. Autojump is on, or an ``advance()`` is pending: jump to the next timer and let it run.
6. Otherwise the loop would wait forever (no timer at all; or autojump off and nobody
   advancing). Wait for real, in slices, for a short grace (threads and peers we cannot
   see); when nothing arrives, that is a deadlock.

How a deadlock reaches the test
-------------------------------

``run_until_complete`` runs the loop until an outer future completes; that future follows
the main task (the test). On a deadlock the selector fails the outer future with a
``DeadlockError`` that lists the pending tasks (where each one waits) and the pending
timers, so ``run_until_complete`` returns control to its caller. Before raising, it unwinds
the main task: it cancels it and runs the loop until the task has finished, so the test's
``finally`` blocks and ``async with`` exits run, the tasks it awaited are cancelled with it,
and the loop can be closed cleanly. The loop is never crashed and no exception is thrown
into a task that did not ask for it (a background job would store it as its own failure).
``asyncio.Runner`` and pytest-asyncio drive tests through ``run_until_complete`` too. Only a
bare ``run_forever()`` has no main future: there the error is raised out of ``run_forever``.

How threads are tracked
-----------------------

``run_in_executor`` hands the executor a thin wrapper whose ``submit`` records the
``concurrent.futures.Future`` it returns, next to the asyncio future that wraps it. A call is
in flight until both are done: the first says the thread finished (even when the awaiting
task was cancelled, the thread goes on running), the second says its result reached the
loop (between the two, a wake-up is on its way through the loop's self-pipe). Subprocesses
started with ``asyncio.create_subprocess_*`` are in flight until their return code is known.

Prior art: trio's ``MockClock`` (autojump inside the scheduler, only when nothing is
runnable), looptime (the selector's ``select`` is the hook, ``select(0)`` first, no-op cycles
before a jump, executor futures hold time back), async-solipsism (a loop that raises instead
of waiting forever with nothing ready).

The wall clock
--------------

While the loop runs, and inside ``clock.wall_clock()``, ``time.time()``, ``time.time_ns()``,
``datetime.now()`` and ``date.today()`` read the virtual wall time: a time-machine traveller
(``tick=False``) is started at ``clock.now()`` and shifted by every jump. freezegun active
without ``real_asyncio=True`` is reported with ``FreezegunConflictError``; with
``real_asyncio=True`` freezegun keeps the wall clock and the loop keeps its virtual time.

Limits
------

* ``time.monotonic()``, ``time.perf_counter()`` and their ``_ns`` forms read virtual time
  while the loop runs, on the loop's thread, for callers outside the standard library, taskbed
  and the test tools (those measure real timeouts); worker threads read real time. A name
  bound before with ``from time import monotonic`` stays real. On in taskbed tests (marker
  option ``virtual_monotonic=False`` turns it off), off for a ``VirtualClock()`` made by hand
  (``VirtualClock(virtual_monotonic=True)`` turns it on).
* Work the loop cannot see (a ``threading.Thread`` started by hand, a peer on the network)
  does not hold time back: a pending timeout fires at once. Wrap the wait in
  ``with loop.external_work():``. With no timer pending, the deadlock grace covers short waits.
* A worker thread or subprocess that never ends holds time still; the real-time watchdog
  (``watchdog=`` seconds per run, 60 by default) then fails the run with ``WatchdogError``,
  naming what is stuck, and lets it go (see ``_watchdog.py``).
* A time-machine traveller started inside the test sits on top of the clock's and wins
  until it stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import heapq
import math
import os
import selectors
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, TypeVarTuple, cast

from ._watchdog import (
    DEFAULT_WATCHDOG,
    DaemonThreadPool,
    Work,
    callable_name,
    how_to_change,
    interrupted,
    is_interrupted,
    real_monotonic,
)

if TYPE_CHECKING:
    import time_machine

__all__ = (
    "DEFAULT_START",
    "DeadlockError",
    "FreezegunConflictError",
    "VirtualClock",
    "VirtualEventLoop",
    "WatchdogError",
    "new_virtual_loop",
)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: Where the virtual wall clock starts unless told otherwise.
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)

_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DeadlockError(RuntimeError):
    """The loop is idle and nothing can ever wake it: every task waits, forever.

    The message lists the pending tasks (where each one waits) and the pending timers.
    """


class WatchdogError(DeadlockError):
    """A run of the loop took longer than its real-time budget (``watchdog`` seconds).

    Either work outside the loop is stuck (the message names each thread with its stack, each
    process with its pid and command), or a job spins (the message says how far virtual time
    ran, and where each task is). The stuck work is let go, so the test can end.
    """


class FreezegunConflictError(RuntimeError):
    """freezegun froze ``time.monotonic()`` (no ``real_asyncio=True``) under a virtual loop."""


_FREEZEGUN_MESSAGE = (
    "freezegun's freeze_time() is active without real_asyncio=True. It freezes "
    "time.monotonic(), which asyncio event loops read, so asyncio.sleep() and timeouts hang "
    "under it. Either let asyncio see a running clock:\n"
    '    @freeze_time("2026-01-01", real_asyncio=True)\n'
    "(freezegun then owns time.time() and datetime.now(); the loop keeps its virtual time), or "
    "drop freezegun and use the taskbed clock: time.time(), datetime.now() and date.today() "
    "already follow virtual time, start it where you need it with "
    "VirtualClock(start=datetime(2026, 1, 1, tzinfo=UTC)) and move it with "
    "`await clock.advance(seconds)`."
)


# ---------------------------------------------------------------- conversions


def _seconds_to_ns(seconds: float, what: str) -> int:
    """Exact nanoseconds of a number of seconds as written (``0.1`` is 100_000_000 ns)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"{what} takes a number of seconds, got {seconds!r}")
    if isinstance(seconds, int):
        return seconds * _NS
    if not math.isfinite(seconds):
        raise ValueError(f"{what} takes a finite number of seconds, got {seconds!r}")
    # repr() is the shortest text that reads back as the same float: 0.1, not 0.1000000000000000055
    return int(Decimal(repr(seconds)).scaleb(9).to_integral_value())


def _start_ns(start: float | datetime) -> int:
    if isinstance(start, datetime):
        if start.tzinfo is None:
            raise ValueError(
                f"VirtualClock(start=...) needs an aware datetime, got the naive {start!r}; "
                f"e.g. VirtualClock(start=datetime(2026, 1, 1, tzinfo=UTC))"
            )
        return (start - _EPOCH) // timedelta(microseconds=1) * 1000
    return _seconds_to_ns(start, "VirtualClock(start=...)")


def _freezegun_state() -> Literal["off", "real_asyncio", "frozen"]:
    """Whether freezegun is freezing time now, and whether asyncio loops were spared."""
    api = sys.modules.get("freezegun.api")
    if api is None or not getattr(api, "freeze_factories", None):
        return "off"
    # freeze_time(real_asyncio=True) patches `time` on the class of asyncio's default loop.
    patched = asyncio.SelectorEventLoop.time is not asyncio.BaseEventLoop.time
    return "real_asyncio" if patched else "frozen"


# ---------------------------------------------------------------- the clock


class VirtualClock:
    """Virtual time for one test: a ``taskbed.Clock`` that a ``VirtualEventLoop`` runs on.

    Args:
        start: the wall time at the clock's origin: epoch seconds, or an aware datetime.
        autojump: jump to the next timer whenever the loop is idle (the default). Off, time
            moves only by ``await clock.advance(seconds)``.
        virtual_monotonic: while the loop runs, ``time.monotonic()``, ``time.perf_counter()``
            and their ``_ns`` forms read virtual time, as ``loop.time()`` does, when called on
            the loop's thread by code outside the standard library and the test tools. The
            pytest plugin turns it on for taskbed tests; off (the default here), they stay
            real, so code that drives a virtual loop itself (a benchmark, a conformance run)
            measures real time as before.

    Example:
        >>> clock = VirtualClock()
        >>> clock.now(), clock.monotonic()
        (1767225600.0, 0.0)
    """

    def __init__(
        self,
        start: float | datetime = DEFAULT_START,
        *,
        autojump: bool = True,
        virtual_monotonic: bool = False,
    ) -> None:
        self._start_ns = _start_ns(start)
        self._mono_ns = 0
        self._autojump = bool(autojump)
        self.virtual_monotonic = bool(virtual_monotonic)
        self._loop_thread: int | None = None  # the thread the loop runs on, while it runs
        self._unpatch: Callable[[], None] | None = None
        self._loop: VirtualEventLoop | None = None  # the loop running on this clock, if any
        self._wall_depth = 0
        self._travel: time_machine.travel | None = None
        self._traveller: time_machine.Traveller | None = None

    # ------------------------------------------------------------ readings

    def now(self) -> float:
        """Virtual wall time in seconds since the epoch (the ``taskbed.Clock`` port)."""
        return (self._start_ns + self._mono_ns) / _NS

    def now_ns(self) -> int:
        """Virtual wall time in integer nanoseconds since the epoch."""
        return self._start_ns + self._mono_ns

    def monotonic(self) -> float:
        """Virtual loop time in seconds since the clock was made (the loop's ``time()``)."""
        return self._mono_ns / _NS

    def monotonic_ns(self) -> int:
        """Virtual loop time in integer nanoseconds."""
        return self._mono_ns

    def now_datetime(self) -> datetime:
        """Virtual wall time as an aware UTC datetime (microsecond precision)."""
        return _EPOCH + timedelta(microseconds=self.now_ns() // 1000)

    # ------------------------------------------------------------ autojump

    @property
    def autojump(self) -> bool:
        """Whether time jumps to the next timer when the loop is idle."""
        return self._autojump

    @autojump.setter
    def autojump(self, value: bool) -> None:
        self._autojump = bool(value)

    @contextmanager
    def autojump_disabled(self) -> Iterator[None]:
        """Within the block, time moves only by ``await clock.advance(seconds)``.

        Prior art: temporalio's ``auto_time_skipping_disabled()``.
        """
        previous, self._autojump = self._autojump, False
        try:
            yield
        finally:
            self._autojump = previous

    # ------------------------------------------------------------ moving time

    async def advance(self, seconds: float) -> None:
        """Move time forward by exactly *seconds*, running every timer that falls due, in order.

        Each timer runs at its own deadline (``loop.time()`` inside it reads that deadline).
        Returns once time has reached the target and the loop is idle again. Works with
        autojump on or off; worker threads in flight still hold time back until they finish.

        Raises:
            ValueError: *seconds* is negative (``time can't go backwards``) or not finite.
            RuntimeError: not awaited on the ``VirtualEventLoop`` of this clock.
        """
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds < 0:
            raise ValueError("time can't go backwards")
        ns = _seconds_to_ns(seconds, "advance()")
        await self._running_loop("advance").advance_ns(ns)

    async def run_until_idle(self) -> None:
        """Run the loop until nothing is runnable, without moving time.

        Work in flight outside the loop (worker threads, subprocesses) is waited for.

        Raises:
            RuntimeError: not awaited on the ``VirtualEventLoop`` of this clock.
        """
        await self._running_loop("run_until_idle").run_until_idle()

    def _running_loop(self, what: str) -> VirtualEventLoop:
        loop = asyncio.get_running_loop()
        if not isinstance(loop, VirtualEventLoop) or loop.clock is not self:
            raise RuntimeError(
                f"clock.{what}() must be awaited on the virtual event loop of this clock, "
                f"not on {loop!r}; run the code with "
                "`new_virtual_loop(clock).run_until_complete(main())` (the taskbed pytest "
                "fixtures do this for you)"
            )
        return loop

    def _move_to(self, mono_ns: int) -> None:
        """Set the virtual time (forward only) and carry the wall clock along."""
        delta = mono_ns - self._mono_ns
        if delta <= 0:
            return
        self._mono_ns = mono_ns
        if self._traveller is not None:
            _shift(self._traveller, delta)

    # ------------------------------------------------------------ the wall clock

    @contextmanager
    def wall_clock(self) -> Iterator[None]:
        """Within the block, ``time.time()``, ``datetime.now()`` & co. read virtual wall time.

        Reentrant. The loop enters it around every run, so code on the loop and in its
        worker threads sees virtual wall time; use it directly in synchronous code.

        Raises:
            FreezegunConflictError: freezegun is active (it and time-machine cannot both
                own the wall clock).
        """
        if _freezegun_state() != "off":
            raise FreezegunConflictError(
                "freezegun is active, and time-machine (which the taskbed clock moves the "
                "wall clock with) cannot patch time.time() while freezegun does. Either leave "
                "the wall clock to freezegun (with freeze_time(..., real_asyncio=True) the "
                "loop keeps its virtual time), or drop freezegun: the taskbed clock moves "
                "time.time(), datetime.now() and date.today() with virtual time."
            )
        with self._wall_clock():
            yield

    @contextmanager
    def _wall_clock(self) -> Iterator[None]:
        """``wall_clock()`` for the loop: leaves the wall clock to freezegun when it is on."""
        if self._wall_depth == 0 and _freezegun_state() == "off":
            import time_machine  # noqa: PLC0415 - the harness's only heavy import, kept lazy

            ns = self.now_ns()
            self._travel = time_machine.travel(ns // _NS, tick=False)
            self._traveller = self._travel.start()
            _shift(self._traveller, ns % _NS)
            self._unpatch = _patch_monotonic(self)
        self._wall_depth += 1
        try:
            yield
        finally:
            self._wall_depth -= 1
            if self._wall_depth == 0:
                if self._unpatch is not None:
                    unpatch, self._unpatch = self._unpatch, None
                    unpatch()
                if self._travel is not None:
                    travel, self._travel, self._traveller = self._travel, None, None
                    travel.stop()

    def _reads_virtual(self, caller: Any) -> bool:
        """Whether a ``time.monotonic()`` call from frame *caller* gets virtual time."""
        if not self.virtual_monotonic or self._loop is None:
            return False
        if threading.get_ident() != self._loop_thread:
            return False  # a worker thread is not virtual: its deadlines pass in real time
        name = caller.f_globals.get("__name__") or ""
        return name.partition(".")[0] not in _REAL_TIME_CALLERS

    def __repr__(self) -> str:
        stamp = self.now_datetime().isoformat(timespec="microseconds")
        state = "on" if self._autojump else "off"
        return f"<VirtualClock monotonic={self.monotonic()!r} wall={stamp} autojump={state}>"


# The real clocks, bound at import (in a tuple: freezegun replaces module attributes that
# *are* the real functions, and would swap these for its fakes).
_REAL_CLOCKS: Final = (time.monotonic, time.monotonic_ns, time.perf_counter, time.perf_counter_ns)

# Callers that always read real time: the standard library (asyncio, threading, subprocess,
# concurrent.futures and sqlite3 measure real timeouts with these clocks), taskbed itself
# (the reference's busy-wait deadlines, the harness's measurements), and the test tools.
_REAL_TIME_CALLERS: Final = frozenset(sys.stdlib_module_names) | {
    "taskbed",
    "taskbed_harness",
    "_pytest",
    "pytest",
    "pluggy",
    "pytest_asyncio",
    "hypothesis",
    "time_machine",
    "freezegun",
    "coverage",
}


def _patch_monotonic(clock: VirtualClock) -> Callable[[], None]:
    """Point ``time.monotonic`` & co. at *clock* (where ``_reads_virtual`` says so).

    Only the ``time`` module's attributes change: a name bound earlier with
    ``from time import monotonic`` keeps the real clock. Returns the undo.
    """
    real_mono, real_mono_ns, real_perf, real_perf_ns = _REAL_CLOCKS

    def monotonic() -> float:
        return clock.monotonic() if clock._reads_virtual(sys._getframe(1)) else real_mono()

    def monotonic_ns() -> int:
        return clock.monotonic_ns() if clock._reads_virtual(sys._getframe(1)) else real_mono_ns()

    def perf_counter() -> float:
        return clock.monotonic() if clock._reads_virtual(sys._getframe(1)) else real_perf()

    def perf_counter_ns() -> int:
        return clock.monotonic_ns() if clock._reads_virtual(sys._getframe(1)) else real_perf_ns()

    ours = {
        "monotonic": monotonic,
        "monotonic_ns": monotonic_ns,
        "perf_counter": perf_counter,
        "perf_counter_ns": perf_counter_ns,
    }
    before = {name: getattr(time, name) for name in ours}
    for name, function in ours.items():
        setattr(time, name, function)

    def undo() -> None:
        for name, function in ours.items():
            if getattr(time, name) is function:  # someone patched over us: leave theirs
                setattr(time, name, before[name])

    return undo


def _shift(traveller: time_machine.Traveller, delta_ns: int) -> None:
    """Shift a time-machine traveller by exactly *delta_ns* (its float shift rounds)."""
    seconds, rest = divmod(delta_ns, _NS)
    if seconds:
        traveller.shift(seconds)  # an int shifts by whole seconds, exactly
    if rest:
        traveller.shift(rest / _NS)  # below 1 s, the float round-trips to the nanosecond


# ---------------------------------------------------------------- the loop


class _TrackingExecutor(concurrent.futures.Executor):
    """Test seam around an executor: hands every future it returns to ``record``, with a
    ``Work`` that learns which thread runs the call (for the watchdog's messages)."""

    def __init__(
        self,
        inner: concurrent.futures.Executor,
        record: Callable[[concurrent.futures.Future[Any], Work], None],
    ) -> None:
        self._inner = inner
        self._record = record

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        work = Work("thread", callable_name(fn))
        work.pool = self._inner
        if isinstance(self._inner, concurrent.futures.ThreadPoolExecutor):
            # Only thread pools: a process pool must pickle fn, and a closure does not pickle.
            fn = functools.partial(_run_as, work, fn)
        future = self._inner.submit(fn, *args, **kwargs)
        work.future = future
        self._record(future, work)
        return future


def _run_as(work: Work, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    work.thread = threading.current_thread()
    return fn(*args, **kwargs)


class _VirtualSelector(selectors.BaseSelector):
    """The loop's selector: real I/O, with ``select`` deciding when virtual time moves."""

    def __init__(
        self, real: selectors.BaseSelector, select: Callable[[float | None], list[Any]]
    ) -> None:
        self.real = real
        self._select = select

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self.real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return self._select(timeout)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self.real.get_key(fileobj)

    def get_map(self) -> Any:
        return self.real.get_map()

    def close(self) -> None:
        self.real.close()


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose time is a ``VirtualClock``: idle time costs nothing.

    Everything else is the standard loop: real sockets, pipes, subprocesses, signals.

    Args:
        clock: the clock to run on (a fresh ``VirtualClock()`` by default).
        noop_cycles: idle loop iterations to spend before time moves (prior art: looptime).
        idle_slice: the real wait, in seconds, of one slice while work is in flight outside
            the loop (threads, subprocesses).
        deadlock_grace: how long, in real seconds, a loop that would wait forever waits for
            something outside (a thread or a peer it cannot see) before ``DeadlockError``.
        watchdog: the real seconds one run of the loop (``run_until_complete``) may take
            before it fails with ``WatchdogError`` (stuck thread or process, or a job that
            polls forever); None or 0 turns the watchdog off.
    """

    def __init__(
        self,
        clock: VirtualClock | None = None,
        *,
        noop_cycles: int = 3,
        idle_slice: float = 0.001,
        deadlock_grace: float = 0.1,
        watchdog: float | None = DEFAULT_WATCHDOG,
    ) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        self.watchdog = watchdog or None
        self._run_started = real_monotonic()
        self._run_virtual_ns = 0
        self._jumps = 0
        self._watchdog_fired = False
        self._noop_cycles = noop_cycles
        self._idle_slice = idle_slice
        self._grace_slices = max(1, round(deadlock_grace / idle_slice))
        self._noop_left = noop_cycles
        self._grace_left = self._grace_slices
        self._timer_seq = 0
        # asyncio runs a timer once loop.time() + resolution passes its deadline; we jump
        # to the nanosecond nearest the deadline, which must be close enough for that.
        self._resolution = time.get_clock_info("monotonic").resolution
        # (thread's future, loop's future) of every executor call not yet finished
        self._executor_calls: list[
            tuple[concurrent.futures.Future[Any], asyncio.Future[Any], Work]
        ] = []
        self._processes: list[tuple[asyncio.SubprocessTransport, Work]] = []
        self._external: list[Work] = []  # open external_work() blocks
        self._let_go: set[Work] = set()  # stuck work the watchdog stopped holding time for
        self._advancing = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._default_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._default_pool_shut = False
        self._main: asyncio.Future[Any] | None = None
        self._unwinding = False
        self._conflict_reported = False
        self._real_selector = selectors.DefaultSelector()
        super().__init__(_VirtualSelector(self._real_selector, self._virtual_select))

    # ------------------------------------------------------------ time

    def time(self) -> float:
        """The clock's virtual monotonic time."""
        return self.clock.monotonic()

    def call_at(
        self,
        when: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        """Schedule like asyncio, but timers due at the same instant fire in the order made.

        asyncio's heap compares deadlines only, so equal deadlines (common in virtual time,
        where the clock stands still between calls) would fire in heap order: repeatable, yet
        not the order the program asked for.
        """
        self._check_closed()  # type: ignore[attr-defined]
        self._timer_seq += 1
        timer = _OrderedTimer(when, callback, args, self, context, self._timer_seq)
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    async def advance_ns(self, ns: int) -> None:
        """Move time forward by exactly *ns* nanoseconds (``clock.advance`` in integers)."""
        if ns < 0:
            raise ValueError("time can't go backwards")
        target = self.clock.monotonic_ns() + ns
        arrived: asyncio.Future[None] = self.create_future()
        self._advancing += 1
        # A timer at the target: jumps never pass it, and every earlier timer runs first.
        handle = self.call_at(target / _NS, _resolve, arrived)
        try:
            await arrived
            await self.run_until_idle()
        finally:
            handle.cancel()
            self._advancing -= 1

    async def run_until_idle(self) -> None:
        """Run until nothing is runnable (threads, subprocesses done), time standing still."""
        waiter: asyncio.Future[None] = self.create_future()
        self._idle_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._idle_waiters:
                self._idle_waiters.remove(waiter)

    @contextmanager
    def external_work(self) -> Iterator[None]:
        """Within the block, time stands still: something outside the loop is working.

        For work the loop cannot see (a thread started by hand, a peer process) that will
        wake it: the loop waits for it in real time instead of jumping or reporting a
        deadlock. Executor calls and asyncio subprocesses are tracked without this.
        """
        frame = sys._getframe(2)  # the caller of the `with` (contextmanager adds one frame)
        work = Work("external", "", f"{_short(frame.f_code.co_filename)}:{frame.f_lineno}")
        self._external.append(work)
        try:
            yield
        finally:
            self._external.remove(work)
            self._let_go.discard(work)

    # ------------------------------------------------------------ the select ladder

    def _virtual_select(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, int]]:
        real = self._real_selector
        if (
            self.watchdog is not None
            and not self._watchdog_fired
            and real_monotonic() - self._run_started > self.watchdog
        ):
            self._watchdog_fired = True
            self._fire_watchdog()
            return []
        ready = real.select(0)
        if ready or (timeout is not None and timeout <= 0):
            self._reset_idle()
            return ready
        # Idle: no callback is ready and no I/O arrived. The no-op cycles give real I/O from
        # outside a moment to arrive; with only the loop's own wake-up pipe registered there is
        # no such I/O, and each cycle would just cost a syscall per jump.
        if self._noop_left > 0 and len(real.get_map()) > 1:
            self._noop_left -= 1
            return []
        if self._in_flight():
            # Prior art: trio issue #456. A thread is not virtual: hold time still for it.
            ready = real.select(self._idle_slice)
            if ready:
                self._reset_idle()
            return ready
        if not self._unwinding and not self._conflict_reported and _freezegun_state() == "frozen":
            self._conflict_reported = True
            self._deliver(FreezegunConflictError(_FREEZEGUN_MESSAGE))
            return []
        if self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                _resolve(waiter)
            self._reset_idle()
            return []
        if timeout is not None and (self.clock.autojump or self._advancing):
            self._jumps += 1
            self.clock._move_to(self._next_deadline_ns(timeout))
            self._reset_idle()
            return []
        # Nothing will ever happen from inside the loop; give the outside a short grace.
        if self._grace_left > 0:
            self._grace_left -= 1
            ready = real.select(self._idle_slice)
            if ready:
                self._reset_idle()
            return ready
        self._reset_idle()
        self._deliver(DeadlockError(self._describe_deadlock()))
        return []

    def _reset_idle(self) -> None:
        self._noop_left = self._noop_cycles
        self._grace_left = self._grace_slices

    def _next_deadline_ns(self, timeout: float) -> int:
        """The nanosecond of the next timer (exact), not ``now + timeout`` (float noise)."""
        now = self.clock.monotonic_ns()
        head = self._next_timer()
        when = head.when() if head is not None else self.time() + timeout
        target = max(now, round(when * _NS))
        if target / _NS + self._resolution <= when:  # coarse clocks: land past the deadline
            target += 1
        return target

    def _scheduled_timers(self) -> list[asyncio.TimerHandle]:
        """asyncio's own timer heap, ``BaseEventLoop._scheduled`` (there since Python 3.4).

        Read only: the loop is the one source of truth about its timers. ``[]`` if it ever
        goes away (then jumps fall back to the select timeout).
        """
        scheduled: list[asyncio.TimerHandle] = getattr(self, "_scheduled", [])
        return scheduled

    def _next_timer(self) -> asyncio.TimerHandle | None:
        scheduled = self._scheduled_timers()
        if scheduled and not scheduled[0].cancelled():
            return scheduled[0]  # the heap's head; _run_once drops cancelled heads first
        return min((h for h in scheduled if not h.cancelled()), key=_when, default=None)

    def _timers(self) -> list[asyncio.TimerHandle]:
        """The pending timers, soonest first (for messages)."""
        return sorted((h for h in self._scheduled_timers() if not h.cancelled()), key=_when)

    def _in_flight(self) -> bool:
        if is_interrupted():  # Ctrl-C: wait for nothing outside the loop any more
            self._let_go_of(self._stuck())
            return False
        if any(w not in self._let_go for w in self._external):
            return True
        self._in_flight_prune()
        return bool(self._executor_calls or self._processes)

    def _stuck(self) -> list[Work]:
        """The work outside the loop that holds time still now, oldest first."""
        self._in_flight_prune()
        work = [w for w in self._external if w not in self._let_go]
        work += [w for _, _, w in self._executor_calls]
        work += [w for _, w in self._processes]
        return sorted(work, key=lambda w: w.since)

    def _in_flight_prune(self) -> None:
        self._executor_calls = [
            (cf, af, w)
            for cf, af, w in self._executor_calls
            if not (cf.done() and af.done()) and w not in self._let_go
        ]
        self._processes = [
            (p, w)
            for p, w in self._processes
            if p.get_returncode() is None and w not in self._let_go
        ]

    def _let_go_of(self, stuck: list[Work]) -> None:
        """Stop holding time for *stuck*: kill its processes, abandon its pool threads."""
        for work in stuck:
            self._let_go.add(work)
            if work.thread is not None and isinstance(work.pool, DaemonThreadPool):
                work.pool.abandon(work.thread)
        for transport, work in self._processes:
            if work in self._let_go:
                with contextlib.suppress(ProcessLookupError, OSError):
                    transport.close()  # kills the process if it still runs, closes its pipes
        self._in_flight_prune()

    def _fire_watchdog(self) -> None:
        """The run took longer than the watchdog allows: fail it, naming what is stuck."""
        assert self.watchdog is not None
        now = real_monotonic()
        stuck = self._stuck()
        took = now - self._run_started
        if stuck:
            lines = [
                f"taskbed watchdog: this run of the event loop took more than {self.watchdog:g} "
                f"s of real time ({took:.1f} s), and virtual time cannot advance: it waits for "
                f"work outside the loop that has not finished. Stuck ({len(stuck)}):"
            ]
            for work in stuck:
                lines += [f"  {line}" for line in work.describe(now)]
        else:
            moved = (self.clock.monotonic_ns() - self._run_virtual_ns) / _NS
            lines = [
                f"taskbed watchdog: this run of the event loop took more than {self.watchdog:g} "
                f"s of real time ({took:.1f} s) without finishing, while virtual time ran "
                f"{moved:.9g} s ({self._jumps} jumps): a job that polls forever, or a loop that "
                "never waits for anything? Where each task is:"
            ]
        tasks = sorted(asyncio.all_tasks(self), key=lambda t: t.get_name())
        lines.append(f"Pending tasks ({len(tasks)}):")
        lines += [f"  - {_describe_task(task)}" for task in tasks[:20]]
        if len(tasks) > 20:
            lines.append(f"  ... and {len(tasks) - 20} more")
        lines.append(how_to_change(self.watchdog))
        self._let_go_of(stuck)
        self._deliver(WatchdogError("\n".join(lines)))

    def _deliver(self, error: Exception) -> None:
        """Fail the main future of ``run_until_complete``; without one, raise out of the loop."""
        main = self._main
        if main is None or main.done():
            raise error
        main.set_exception(error)

    def _describe_deadlock(self) -> str:
        if self.clock.autojump:
            why = (
                "the event loop is idle and nothing can wake it: every task waits, no timer "
                "is pending, and no worker thread, subprocess or I/O is in flight"
            )
        else:
            why = (
                "the event loop is idle and nothing can wake it: autojump is disabled and "
                "no `await clock.advance(...)` is pending, so the timers below never fall "
                "due (advance the clock, or leave autojump on)"
            )
        stamp = f"{self.clock.now_datetime():%Y-%m-%d %H:%M:%S.%f} UTC"
        lines = [f"{why}. Virtual time: {self.time():.9g} s ({stamp})."]
        tasks = sorted(asyncio.all_tasks(self), key=lambda t: t.get_name())
        lines.append(f"Pending tasks ({len(tasks)}):")
        lines += [f"  - {_describe_task(task)}" for task in tasks[:20]]
        if len(tasks) > 20:
            lines.append(f"  ... and {len(tasks) - 20} more")
        timers = self._timers()
        lines.append(f"Pending timers ({len(timers)}):" if timers else "Pending timers: none")
        now = self.time()
        lines += [f"  - in {h.when() - now:.9g} s: {h!r}" for h in timers[:20]]
        if len(timers) > 20:
            lines.append(f"  ... and {len(timers) - 20} more")
        lines.append(
            "Look for a future, event or queue that is never set, a confirmation never "
            "answered, or a lock never released."
        )
        return "\n".join(lines)

    # ------------------------------------------------------------ running

    def run_until_complete(self, future: Awaitable[T] | Generator[Any, None, T]) -> T:
        """Run until *future* is done; a deadlock raises ``DeadlockError`` here.

        The main task is cancelled and run to its end before the error is raised, so its
        cleanup runs and the loop can be closed.
        """
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        new_task = not asyncio.isfuture(future)
        main = asyncio.ensure_future(cast(Awaitable[T], future), loop=self)
        if not self._conflict_reported and _freezegun_state() == "frozen":
            # Cancelled before its first step: the test's body never runs under the conflict.
            self._conflict_reported = True
            conflict = FreezegunConflictError(_FREEZEGUN_MESSAGE)
            self._unwind(main, conflict)
            raise conflict
        try:
            return self._run_main(main)
        except (DeadlockError, FreezegunConflictError) as error:
            self._unwind(main, error)
            raise
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                interrupted()  # Ctrl-C: from now on nothing waits for stuck work
            if new_task and main.done() and not main.cancelled():
                main.exception()  # retrieved: the caller never saw the task
            raise

    def _run_main(self, main: asyncio.Future[T]) -> T:
        outer: asyncio.Future[T] = self.create_future()

        def relay(done: asyncio.Future[T]) -> None:
            if outer.done():
                return
            if done.cancelled():
                outer.cancel()
            elif (exc := done.exception()) is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(done.result())

        main.add_done_callback(relay)
        self._main = outer
        try:
            return super().run_until_complete(outer)
        finally:
            self._main = None
            main.remove_done_callback(relay)

    def _unwind(self, main: asyncio.Future[Any], error: Exception) -> None:
        """Cancel the main task and run it to its end (a few tries), after *error*."""
        self._unwinding = True
        try:
            for _ in range(3):
                if main.done():
                    break
                main.cancel(msg=f"taskbed: cancelled to unwind after {type(error).__name__}")
                # Whatever the unwinding raises is reported as a note on *error*, below.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    self._run_main(main)
        finally:
            self._unwinding = False
        if not main.done():
            error.add_note("The main task ignored cancellation and is still pending.")
        elif not main.cancelled() and (exc := main.exception()) is not None:
            error.add_note(f"While unwinding, the main task raised {exc!r}.")

    def run_forever(self) -> None:
        clock = self.clock
        if clock._loop is not None and clock._loop is not self:
            raise RuntimeError(
                f"{clock!r} already runs another event loop; give each loop its own clock"
            )
        clock._loop = self
        clock._loop_thread = threading.get_ident()
        self._run_started = real_monotonic()  # the watchdog's budget is per run
        self._run_virtual_ns = clock.monotonic_ns()
        self._jumps = 0
        self._watchdog_fired = False
        try:
            with clock._wall_clock():
                super().run_forever()
        finally:
            clock._loop = None
            clock._loop_thread = None

    # ------------------------------------------------------------ work outside the loop

    def run_in_executor(
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[[*Ts], T],
        *args: *Ts,
    ) -> asyncio.Future[T]:
        if executor is None:
            executor = self._default_pool_for_calls()
        submitted: list[tuple[concurrent.futures.Future[Any], Work]] = []
        tracking = _TrackingExecutor(executor, lambda f, w: submitted.append((f, w)))
        future = super().run_in_executor(tracking, func, *args)
        self._executor_calls += [(inner, future, work) for inner, work in submitted]
        return future

    def _default_pool_for_calls(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._default_pool_shut:
            raise RuntimeError("Executor shutdown has been called")
        if self._default_pool is None:
            # daemon threads: a stuck one cannot keep the interpreter from exiting
            self.set_default_executor(DaemonThreadPool(thread_name_prefix="asyncio"))
        assert self._default_pool is not None
        return self._default_pool

    def set_default_executor(self, executor: concurrent.futures.ThreadPoolExecutor) -> None:  # type: ignore[override]
        super().set_default_executor(executor)
        self._default_pool = executor

    async def shutdown_default_executor(self, *args: Any, **kwargs: Any) -> None:
        # The shutdown waits on a thread of its own: hold time still for it.
        self._default_pool_shut = True
        with self.external_work():
            await super().shutdown_default_executor(*args, **kwargs)

    async def subprocess_exec(self, *args: Any, **kwargs: Any) -> Any:
        transport, protocol = await super().subprocess_exec(*args, **kwargs)
        self._processes.append((transport, Work("process", _describe_process(transport))))
        return transport, protocol

    async def subprocess_shell(self, *args: Any, **kwargs: Any) -> Any:
        transport, protocol = await super().subprocess_shell(*args, **kwargs)
        self._processes.append((transport, Work("process", _describe_process(transport))))
        return transport, protocol

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "closed" if self.is_closed() else "idle"
        return f"<VirtualEventLoop {state} {self.clock!r}>"


def new_virtual_loop(
    clock: VirtualClock | None = None, *, watchdog: float | None = DEFAULT_WATCHDOG
) -> VirtualEventLoop:
    """A fresh virtual-time event loop on *clock* (a new ``VirtualClock()`` by default).

    *watchdog* is the loop's real-time budget per run (see ``VirtualEventLoop``).

    Example:
        >>> loop = new_virtual_loop()
        >>> loop.run_until_complete(asyncio.sleep(3600))
        >>> loop.time()
        3600.0
        >>> loop.close()
    """
    return VirtualEventLoop(clock, watchdog=watchdog)


# ---------------------------------------------------------------- helpers


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _when(handle: asyncio.TimerHandle) -> float:
    return handle.when()


def _describe_task(task: asyncio.Task[Any]) -> str:
    """``'name' outer() at file:line -> inner() at file:line, waiting for <...>``."""
    chain: list[str] = []
    obj: Any = task.get_coro()
    for _ in range(64):
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        frame = frame or getattr(obj, "ag_frame", None)
        if frame is None:
            break
        code = frame.f_code
        chain.append(f"{code.co_qualname}() at {_short(code.co_filename)}:{frame.f_lineno}")
        obj = (
            getattr(obj, "cr_await", None)
            or getattr(obj, "gi_yieldfrom", None)
            or getattr(obj, "ag_await", None)
        )
        if obj is None:
            break
    where = " -> ".join(chain) or repr(task.get_coro())
    text = f"{task.get_name()!r} {where}"
    waiting = getattr(task, "_fut_waiter", None)  # asyncio internals, read only
    if waiting is not None:
        text += f", waiting for {_trim(repr(waiting))}"
    return text


def _describe_process(transport: asyncio.SubprocessTransport) -> str:
    """``pid 4242: ['sleep', '3600']``: asyncio keeps the Popen on its transport."""
    popen = getattr(transport, "_proc", None)  # asyncio internals, read only
    args = getattr(popen, "args", None)
    shown = f": {_trim(repr(list(args)))}" if isinstance(args, list | tuple) else ""
    return f"pid {transport.get_pid()}{shown}"


def _short(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if relative.startswith("..") else relative


def _trim(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _OrderedTimer(asyncio.TimerHandle):
    """A timer that breaks deadline ties by creation order (see ``VirtualEventLoop.call_at``)."""

    __slots__ = ("_seq",)

    def __init__(  # noqa: PLR0917 - TimerHandle's positional signature, plus the sequence
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context | None,
        seq: int,
    ) -> None:
        super().__init__(when, callback, args, loop, context)
        self._seq = seq

    def __lt__(self, other: object) -> bool:
        if isinstance(other, _OrderedTimer):
            return (self.when(), self._seq) < (other.when(), other._seq)
        return super().__lt__(other)  # type: ignore[operator]
