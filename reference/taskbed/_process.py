"""The real ProcessRunner: one OS process per call, in its own process group.

Mechanism, chosen by measuring (see docs/benchmarks.md): ``subprocess.Popen`` on the event
loop's thread, with the read ends of its pipes and a pidfd of the process as loop readers; no
thread is involved while a command runs and ends on its own. Waiting in a worker thread, as
earlier versions did, cost a thread hop each way, about 0.1 ms a call, a sixth of running
``true``. The price: the loop waits for the spawn itself. ``Popen`` uses vfork, which returns
once the child has exec'd (about 0.1 ms for a local program; as long as the exec takes for a
program on a slow network filesystem). CPython drops the GIL around that vfork (gh-104372), so
a worker thread would spare the loop that moment; this runner does not (CMD-8 says so).
asyncio's ``create_subprocess_exec`` adds transports, protocols and a child watcher per call,
and measured slower still. ``process_group=0`` rather than ``start_new_session`` or a
``preexec_fn``: the same isolation for ``killpg``, and it keeps the vfork path.
``os.posix_spawn`` would save ~130 us a call (it encodes the environment in C), but it holds
the GIL until the child has exec'd. A timeout is real time, kept by a timer thread (a loop on
virtual time stands still while a process runs). The pidfd leaves the exited command a zombie
until it is reaped, so its pid and group id cannot be reused meanwhile. Without pidfds (not
Linux, or a kernel before 5.3) a worker thread waits for the exit.

Ending a command (timeout or cancellation, CMD-6 and CMD-12) — theory of operation:

1. ``killpg(SIGKILL)`` ends the command and every descendant still in its process group.
2. A descendant can leave the group (``setsid``, ``setpgid``) and be orphaned (a double
   fork), so it is neither in the group nor a child of anyone we know. Every command gets an
   environment marker, ``TASKBED_PROCESS_TAG=<random>``, which its descendants inherit. On
   Linux the sweep reads ``/proc``: every process carrying the marker, and every descendant
   of one (by parent id, which catches a child that cleared its environment while its parent
   lives), gets SIGKILL through a pidfd, once its start time is checked against the scan's,
   so a recycled pid is never hit. Sweeps repeat until one finds nothing alive (a forking
   descendant cannot outrun it).
   This costs nothing while commands end on their own: it only runs to end one.
3. Pipes are drained for at most ``PIPE_GRACE`` seconds afterwards: a descendant that escaped
   the sweep (it cleared its environment *and* was orphaned, or ``/proc`` is missing) may hold
   the command's stdout, and the call must not wait for it. Output so far is kept.

Where this holds (specs/commands.md, CMD-12): Linux with ``/proc`` readable (the marker and the
parent links); elsewhere only the process group. A cgroup would catch even a descendant that
cleared its environment after being orphaned, but needs a writable cgroup tree, which a
runtime inside a container rarely has; it is not used. Prior art: systemd's ``KillMode=``
(cgroup), ``prctl(PR_SET_CHILD_SUBREAPER)`` (tini, ``docker --init``) — a subreaper would make
the whole runtime process the parent of every orphan, so it would have to reap processes
that asyncio and ``subprocess`` know nothing of; the marker needs no such change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ._ports import ProcessResult

#: The environment variable that marks every process a command starts (see the module doc).
TAG_VARIABLE = "TASKBED_PROCESS_TAG"
#: How long the output of a killed command is drained before its pipes are abandoned.
PIPE_GRACE = 0.25
#: The sweep gives up after this long (a descendant forking faster than we can kill).
_SWEEP_LIMIT = 1.0
#: How many scans in a row must find nothing before the sweep believes it.
_CLEAN_SCANS = 3

_PROC = "/proc"
_HAS_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


class _Child:
    """The process of one call, shared by the waiting thread and the loop that may cancel it."""

    def __init__(self, tag: str) -> None:
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.reaped = False  # once reaped, its pid (and group id) may name another process
        self.cancelled = False
        self.swept = False  # the escapees were looked for after the group was killed
        self.tag = tag

    def adopt(self, pid: int) -> None:
        with self.lock:
            self.pid = pid
            if self.cancelled:
                self._kill()

    def reap(self, wait: Callable[[], object]) -> None:
        """Reap the command with *wait*; from then on it is never signalled."""
        wait()
        with self.lock:
            self.reaped = True

    def cancel(self) -> None:
        # The group and the command itself (should it have left the group), at once; the
        # waiting thread sweeps for the rest (a few milliseconds the loop should not wait).
        with self.lock:
            self.cancelled = True
            self._kill()

    def kill(self) -> None:
        with self.lock:
            self._kill()

    def _kill(self) -> None:
        if self.pid is None or self.reaped:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)  # not reaped (the lock says), so still its pid


# ---------------------------------------------------------------- the sweep


def _environ(pid: str) -> bytes | None:
    try:
        with open(f"{_PROC}/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:  # gone, a kernel thread, or not ours to read
        return None


def _stat(pid: str) -> tuple[str, bytes] | None:
    """(parent pid, start time) of a live process; None for one gone or a zombie."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The name, in parentheses, may hold spaces and parentheses: split after the last one.
    fields = stat.rsplit(b")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):  # a zombie is dead already
        return None
    return fields[1].decode(), fields[19]  # ppid (field 4), starttime (field 22)


def tagged_processes(tag: str, root: int | None = None) -> dict[int, bytes]:
    """The live processes that carry *tag*, descend from one or from *root*: pid -> start time.

    Read from /proc; empty where there is none.
    """
    marker = f"{TAG_VARIABLE}={tag}\0".encode()
    try:
        names = [name for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return {}
    me = str(os.getpid())
    stats: dict[str, tuple[str, bytes]] = {}
    found: set[str] = set() if root is None else {str(root)}
    for pid in names:
        if pid == me:
            continue
        stat = _stat(pid)
        if stat is None:
            continue
        stats[pid] = stat
        environ = _environ(pid)
        if environ is not None and (environ.startswith(marker) or b"\0" + marker in environ):
            found.add(pid)
    # Descendants of a found process, whatever their environment: repeat until stable.
    grown = True
    while grown:
        grown = False
        for pid, (parent, _) in stats.items():
            if parent in found and pid not in found:
                found.add(pid)
                grown = True
    return {int(pid): stats[pid][1] for pid in found if pid in stats}


def _kill(pid: int, started: bytes) -> None:
    """SIGKILL *pid* if it is still the process that started at *started* (not a reused pid)."""
    if not _HAS_PIDFD:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone already (or pidfds unsupported by this kernel)
        return
    try:
        # The pidfd pins one process: if its start time is the one scanned, the pid was not
        # reused between the scan and now, and the signal reaches the process we found.
        stat = _stat(str(pid))
        if stat is not None and stat[1] == started:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)


def sweep(tag: str, root: int | None = None, limit: float = _SWEEP_LIMIT) -> int:
    """Kill every live process that carries *tag* or descends from one (or from *root*).

    Repeats until a scan finds none alive, for at most *limit* seconds; returns how many
    processes were signalled. Does nothing without /proc.
    """
    killed = 0
    deadline = time.monotonic() + limit
    clean = 0
    while True:
        alive = tagged_processes(tag, root)
        if not alive:
            # One clean scan is not enough: a process in the middle of an exec shows no
            # environment for a moment, so it would be missed. Three in a row, 2 ms apart.
            clean += 1
            if clean >= _CLEAN_SCANS or time.monotonic() > deadline:
                return killed
            time.sleep(0.002)
            continue
        clean = 0
        for pid, started in alive.items():
            _kill(pid, started)
        killed += len(alive)
        if time.monotonic() > deadline:
            return killed
        time.sleep(0.001)  # let the killed become zombies before looking again


# ---------------------------------------------------------------- the runner


class _Output:
    """A command's stdout and stderr as they come: read by the loop (``feed``, on readiness)
    while the command runs, and by a worker thread (``drain``) once it has been killed."""

    def __init__(self, capture: bool) -> None:
        self.readers: tuple[int, int] | None = None
        self.writers: tuple[int, int] | None = None
        if capture:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(out_r, False)
            os.set_blocking(err_r, False)
            self.readers, self.writers = (out_r, err_r), (out_w, err_w)
        self.chunks: dict[int, list[bytes]] = {fd: [] for fd in self.readers or ()}
        self.open = set(self.chunks)
        self.closed = False

    def feed(self, fd: int) -> bool:
        """Read what *fd* has; False once it is closed (every writer is gone)."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:  # a spurious wake-up
            return True
        if data:
            self.chunks[fd].append(data)
            return True
        self.open.discard(fd)
        return False

    def drain(self, deadline: float) -> None:
        """Read until both pipes close or *deadline* (monotonic) passes: a descendant that
        escaped every kill may hold them open, and the call must not wait for it."""
        with selectors.PollSelector() as selector:
            for fd in self.open:
                selector.register(fd, selectors.EVENT_READ)
            while self.open and (left := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(left):
                    if not self.feed(key.fd):
                        selector.unregister(key.fd)

    def result(self) -> tuple[bytes | None, bytes | None]:
        if self.readers is None:
            return None, None
        out, err = self.readers
        return b"".join(self.chunks[out]), b"".join(self.chunks[err])

    def close_writers(self) -> None:
        """Once the child has its copies: the pipes close when the last descendant's do."""
        writers, self.writers = self.writers, None
        for fd in writers or ():
            os.close(fd)

    def close(self) -> None:
        self.close_writers()
        if not self.closed:
            self.closed = True
            for fd in self.chunks:
                os.close(fd)


class _Run:
    """One command, waited for on the event loop: its pipes and its pidfd are loop readers.

    ``ended`` resolves once the pipes are closed and the command has exited (the pidfd is
    readable: a zombie, not yet reaped, so neither its pid nor its process group id can be
    reused before ``reap``), or when the deadline passes (``expired``).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        proc: subprocess.Popen[bytes],
        output: _Output,
        child: _Child,
    ) -> None:
        self.loop = loop
        self.proc = proc
        self.output = output
        self.ended: asyncio.Future[None] = loop.create_future()
        self.expired = False
        self.exited = False
        self.pidfd: int | None = None
        self.waiter: asyncio.Future[None] | None = None
        for fd in output.open:
            loop.add_reader(fd, self._on_output, fd)
        if _HAS_PIDFD:
            with contextlib.suppress(OSError):  # a kernel without pidfds: wait in a thread
                self.pidfd = os.pidfd_open(proc.pid)
        if self.pidfd is not None:
            loop.add_reader(self.pidfd, self._on_exit)
        else:
            self.waiter = loop.run_in_executor(None, child.reap, proc.wait)
            self.waiter.add_done_callback(lambda _: self._on_exit())

    def _on_output(self, fd: int) -> None:
        if not self.output.feed(fd):
            self.loop.remove_reader(fd)
            self._check()

    def _on_exit(self) -> None:
        if self.pidfd is not None:
            self.loop.remove_reader(self.pidfd)
        self.exited = True
        self._check()

    def _check(self) -> None:
        if self.exited and not self.output.open and not self.ended.done():
            self.ended.set_result(None)

    def expire(self) -> None:
        """The deadline passed (the timer's thread calls this through the loop)."""
        if not self.ended.done():
            self.expired = True
            self.ended.set_result(None)

    def detach(self) -> None:
        """Stop watching on the loop: what is left is a worker thread's (``drain``)."""
        for fd in self.output.open:
            self.loop.remove_reader(fd)
        if self.pidfd is not None and not self.exited:
            self.loop.remove_reader(self.pidfd)

    def close(self) -> None:
        self.output.close()
        pidfd, self.pidfd = self.pidfd, None
        if pidfd is not None:
            os.close(pidfd)


def _tracked(loop: asyncio.AbstractEventLoop) -> contextlib.AbstractContextManager[object]:
    """Tell a loop that keeps virtual time that a process runs outside it: taskbed_harness's
    loop offers ``external_work()``, and must neither move time nor call it a deadlock while
    the process runs. Any other loop has nothing to be told."""
    external_work = getattr(loop, "external_work", None)
    return external_work() if external_work is not None else contextlib.nullcontext()


class OSProcessRunner:
    """Runs commands as OS processes (the reference runtime's ProcessRunner).

    Args:
        max_concurrent: how many commands may run at once; more wait for a free slot.
    """

    def __init__(self, max_concurrent: int = 64) -> None:
        self.max_concurrent = max_concurrent
        self._slots: asyncio.Semaphore | None = None
        # For what blocks, and only then: ending a killed command (sweep, drain, reap).
        self._executor = ThreadPoolExecutor(max_concurrent, "taskbed-process")

    async def run(
        self,
        argv: list[str],
        *,
        cwd: str | None,
        env: dict[str, str],
        timeout: float | None,
        capture_output: bool,
    ) -> ProcessResult:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        async with self._slots:
            loop = asyncio.get_running_loop()
            with _tracked(loop):
                return await self._run(loop, argv, cwd, env, timeout, capture_output)

    def close(self) -> None:
        self._executor.shutdown(wait=False)

    # Test seam (tests/test_teeth.py): how the rest of a command's processes are ended once
    # its group has been killed (*root*: the command, while it is not reaped).
    def _end_escapees(self, child: _Child, root: int | None) -> None:
        child.swept = True
        sweep(child.tag, root)

    async def _run(  # noqa: PLR0917 - the arguments of run(), passed on
        self,
        loop: asyncio.AbstractEventLoop,
        argv: list[str],
        cwd: str | None,
        env: dict[str, str],
        timeout: float | None,
        capture_output: bool,
    ) -> ProcessResult:
        child = _Child(os.urandom(8).hex())
        output = _Output(capture_output)
        out_w, err_w = output.writers or (None, None)
        try:
            # On the loop's thread, as subprocess.run would: the loop waits for the vfork and
            # exec (about 0.1 ms for a local program; see the module's docstring).
            proc = subprocess.Popen(  # noqa: ASYNC220 - on purpose, see above
                argv,
                cwd=cwd,
                env={**env, TAG_VARIABLE: child.tag},
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                process_group=0,  # its own process group, so killpg reaches its children
            )
        except BaseException:
            output.close()
            raise
        output.close_writers()
        child.adopt(proc.pid)
        run = _Run(loop, proc, output, child)
        timer = None
        if timeout is not None:
            # Real time, as the command's: a loop on virtual time stands still meanwhile.
            timer = threading.Timer(max(timeout, 0.0), _call_soon, (loop, run.expire))
            timer.daemon = True
            timer.start()
        try:
            await run.ended
        except asyncio.CancelledError:
            child.cancel()
            await self._ending(run, child)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if run.expired:
            await self._ending(run, child)
            out, err = output.result()
            raise subprocess.TimeoutExpired(argv, timeout or 0.0, out, err)
        try:
            child.reap(proc.wait)  # it has exited: this does not wait
        finally:
            run.close()
        out, err = output.result()
        return ProcessResult(proc.returncode, out, err)

    async def _ending(self, run: _Run, child: _Child) -> None:
        """End what is left of a command (timeout or cancel) in a worker thread, and wait for
        that even when cancelled meanwhile: no stray process outlives the call."""
        run.detach()
        ending = run.loop.run_in_executor(self._executor, self._end, run, child)
        cancelled = False
        while not ending.done():
            try:
                await asyncio.shield(ending)
            except asyncio.CancelledError:
                cancelled = True
        ending.result()
        if cancelled:
            raise asyncio.CancelledError

    def _end(self, run: _Run, child: _Child) -> None:
        try:
            child.kill()
            self._end_escapees(child, None if child.reaped else run.proc.pid)
            run.output.drain(time.monotonic() + PIPE_GRACE)
            if run.waiter is None:
                child.reap(run.proc.wait)
        finally:
            run.close()


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed as the timer fired
        loop.call_soon_threadsafe(callback)
