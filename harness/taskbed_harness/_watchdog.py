"""The real-time watchdog: a test on virtual time never hangs silently.

Theory of operation
===================

Virtual time makes waiting free, which hides two ways a test can run forever:

* **stuck**: a worker thread, a subprocess or a block of ``external_work()`` never ends.
  The loop holds virtual time still while such work is in flight (a thread is not virtual),
  so it waits in real time, with no timer that could ever fire.
* **spinning**: a job polls forever (``while not done: await asyncio.sleep(1)``). Each poll
  is an instant jump of virtual time, so the loop never idles and never deadlocks; it burns a
  core at 100 %.

Both cost real time, and nothing else in a virtual-time test does. So the loop keeps a budget
of real time for each of its runs (a test body, a fixture's setup or teardown): when a run
has taken longer than ``watchdog`` real seconds, the loop fails it with a ``WatchdogError``
that names what is stuck and where (each thread's name, what it runs and its stack; each
process's pid and command) or, for a spin, how far virtual time ran and where each task
waits. It is delivered like a ``DeadlockError``: the main task is unwound, so cleanup runs.

Then the stuck work is *let go*: the loop stops holding time for it, a stuck process is
killed, and a stuck thread of the harness's ``DaemonThreadPool`` (the pool behind
``run_blocking`` under the harness, and the loop's default executor) is a daemon that
shutdown no longer waits for, so pytest can go on and the interpreter can exit. Python cannot
stop a thread; it can stop waiting for it.

Ctrl-C: the pytest plugin reports a keyboard interrupt here (``interrupted()``), and so does
the loop when ``KeyboardInterrupt`` passes through it. From then on, no loop holds time or
waits for work outside it, and no pool waits for its threads: teardown runs through and the
process ends.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any, Final, TypeVar

__all__ = (
    "DEFAULT_WATCHDOG",
    "DaemonThreadPool",
    "interrupted",
    "is_interrupted",
    "real_monotonic",
)

T = TypeVar("T")

#: Real seconds one run of a virtual loop may take before the watchdog fails it.
DEFAULT_WATCHDOG: Final = 60.0


def real_monotonic(_real: Callable[[], float] = time.monotonic) -> float:
    """The real ``time.monotonic()``, bound at import.

    The harness patches ``time.monotonic`` while a test runs, and freezegun replaces every
    module attribute that *is* the real function; a default argument is out of both's reach.
    """
    return _real()


_DOCS: Final = "(see docs/guides/troubleshooting.md#watchdog)"
_HERE: Final = os.path.dirname(os.path.abspath(__file__))

_INTERRUPTED = threading.Event()


def interrupted() -> None:
    """Ctrl-C was pressed: from now on, nothing waits for work outside a loop."""
    _INTERRUPTED.set()


def is_interrupted() -> bool:
    return _INTERRUPTED.is_set()


def _reset_interrupted() -> None:
    """Test seam: forget an interrupt (the project's own tests simulate them)."""
    _INTERRUPTED.clear()


# ---------------------------------------------------------------- the pool


class DaemonThreadPool(concurrent.futures.ThreadPoolExecutor):
    """A thread pool whose workers are daemon threads, and which can let a stuck one go.

    The standard ``ThreadPoolExecutor`` joins its threads at interpreter exit, so one thread
    blocked forever keeps the process alive forever (and Ctrl-C cannot end it). Here,
    ``abandon(thread)`` tells the pool never to wait for that thread again; shutdown waits
    only for the others, and not at all after Ctrl-C. The API is ``ThreadPoolExecutor``'s
    (it is one, for ``loop.set_default_executor``), written anew over a plain queue.
    """

    def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers, thread_name_prefix)  # attributes only, no thread yet
        self._queue: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Any] | None]
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._workers: set[threading.Thread] = set()
        self._abandoned: set[threading.Thread] = set()
        self._closed = False
        self._names = itertools.count()
        self._prefix = thread_name_prefix or "taskbed-worker"

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.put((future, functools.partial(fn, *args, **kwargs)))
            if self._idle > 0:
                self._idle -= 1
            elif len(self._workers - self._abandoned) < self._max_workers:
                worker = threading.Thread(
                    target=self._work, name=f"{self._prefix}_{next(self._names)}", daemon=True
                )
                self._workers.add(worker)
                worker.start()
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, call = item
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:  # noqa: BLE001 - handed to the future, as TPE does
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                del item, future, call
            with self._lock:
                if threading.current_thread() in self._abandoned:
                    self._workers.discard(threading.current_thread())
                    self._abandoned.discard(threading.current_thread())
                    return  # a replacement was started meanwhile
                self._idle += 1

    def abandon(self, thread: threading.Thread) -> None:
        """Never wait for *thread* again (it is stuck); later calls get other workers."""
        with self._lock:
            if thread in self._workers:
                self._abandoned.add(thread)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in workers:
                self._queue.put(None)
        if not wait:
            return
        for worker in workers:
            # In slices, so that abandoning a stuck worker (the watchdog) or Ctrl-C frees us.
            while worker.is_alive() and worker not in self._abandoned and not is_interrupted():
                worker.join(0.05)


# ---------------------------------------------------------------- what is stuck


class Work:
    """One piece of work outside the loop that holds virtual time still (for messages)."""

    __slots__ = ("future", "kind", "pool", "since", "thread", "what", "where")

    def __init__(self, kind: str, what: str, where: str = "") -> None:
        self.kind = kind  # "thread", "process", "external"
        self.what = what
        self.where = where
        self.since = real_monotonic()
        self.thread: threading.Thread | None = None
        self.pool: concurrent.futures.Executor | None = None
        self.future: concurrent.futures.Future[Any] | None = None

    def describe(self, now: float) -> list[str]:
        took = f"{now - self.since:.1f} s"
        if self.kind == "thread":
            if self.thread is None:
                return [f"- a call of {self.what} queued for a worker thread for {took}"]
            lines = [f"- worker thread {self.thread.name!r} running {self.what} for {took}:"]
            frame = sys._current_frames().get(self.thread.ident or -1)
            lines += [f"    {line}" for line in _stack(frame)]
            return lines
        if self.kind == "process":
            return [f"- subprocess {self.what} running for {took}"]
        return [f"- `with loop.external_work():` at {self.where}, open for {took}"]


def callable_name(fn: Any) -> str:
    """``Event.wait()`` for ``partial(Context.run, event.wait)`` and the like."""
    for _ in range(8):
        if isinstance(fn, functools.partial):
            inner = fn.func
            fn = fn.args[0] if getattr(inner, "__name__", "") == "run" and fn.args else inner
        else:
            break
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{name}()"


def _stack(frame: FrameType | None, limit: int = 12) -> list[str]:
    if frame is None:
        return ["(its stack is gone: the thread just ended)"]
    lines: list[str] = []
    entries = [
        e
        for e in traceback.extract_stack(frame)
        if not e.filename.startswith(_HERE)  # the pool's and the loop's own frames
        and not (e.filename == threading.__file__ and e.name.startswith(("_bootstrap", "run")))
    ]
    for entry in entries[-limit:]:
        lines.append(f'File "{_short(entry.filename)}", line {entry.lineno}, in {entry.name}')
        if entry.line:
            lines.append(f"  {entry.line}")
    return lines


def _short(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if relative.startswith("..") else relative


def how_to_change(limit: float) -> str:
    return (
        f"The watchdog allows {limit:g} real seconds per run of the loop: change it with "
        "@pytest.mark.taskbed(watchdog=SECONDS) or --taskbed-watchdog=SECONDS (0 turns it "
        f"off), or VirtualEventLoop(watchdog=SECONDS) {_DOCS}"
    )
