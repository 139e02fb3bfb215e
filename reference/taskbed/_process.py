"""The real ProcessRunner: one OS process per call, in its own process group.

Mechanism, chosen by measuring (see docs/benchmarks.md): ``subprocess.Popen`` in a worker
thread, which reads the pipes and waits for the exit; the event loop never blocks. asyncio's
``create_subprocess_exec`` adds transports, protocols and a child watcher per call, and
measured slower. ``process_group=0`` rather than ``start_new_session`` or a ``preexec_fn``:
the same isolation for ``killpg``, and it keeps the vfork path of ``_posixsubprocess``.
``os.posix_spawn`` would save ~130 us a call (it encodes the environment in C), but it holds
the GIL until the child has exec'd (a file action blocked on a FIFO froze every other thread):
a slow exec, a program on a network filesystem, would freeze the event loop. Not used.

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
#: How often a waiting thread looks whether its call was cancelled, should a descendant that
#: escaped the process group keep the pipes open after the group was killed.
_CANCEL_POLL = 0.1
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
    """A command's stdout and stderr, read as they come, for as long as we choose to wait."""

    def __init__(self, out: int | None, err: int | None) -> None:
        self.fds = (out, err)
        self.chunks: dict[int, list[bytes]] = {fd: [] for fd in self.fds if fd is not None}
        self.selector = selectors.PollSelector()
        for fd in self.chunks:
            self.selector.register(fd, selectors.EVENT_READ)

    def read(self, deadline: float | None, child: _Child | None) -> bool:
        """Read until both pipes close (True), or *deadline* passes, or *child* is cancelled
        (False). Slices of ``_CANCEL_POLL``, so a cancellation is seen even while an escaped
        descendant holds the pipes open after the group was killed."""
        selector = self.selector
        while selector.get_map():
            left = _CANCEL_POLL if deadline is None else deadline - time.monotonic()
            if left <= 0 or (child is not None and child.cancelled):
                return False
            for key, _ in selector.select(min(left, _CANCEL_POLL)):
                data = os.read(key.fd, 32768)
                if data:
                    self.chunks[key.fd].append(data)
                else:
                    selector.unregister(key.fd)
        return child is None or not child.cancelled

    def result(self) -> tuple[bytes | None, bytes | None]:
        out, err = (None if fd is None else b"".join(self.chunks[fd]) for fd in self.fds)
        return out, err

    def close(self) -> None:
        self.selector.close()


class OSProcessRunner:
    """Runs commands as OS processes (the reference runtime's ProcessRunner).

    Args:
        max_concurrent: how many commands may run at once; more wait for a free slot.
    """

    def __init__(self, max_concurrent: int = 64) -> None:
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
        child = _Child(os.urandom(8).hex())
        loop = asyncio.get_running_loop()
        waiting = loop.run_in_executor(
            self._executor, self._run_blocking, child, argv, cwd, env, timeout, capture_output
        )
        try:
            return await asyncio.shield(waiting)
        except asyncio.CancelledError:
            child.cancel()
            # Reap before letting the cancellation through: no stray process survives us.
            with contextlib.suppress(BaseException):
                await waiting
            if not child.swept:  # the command had ended already: its escapees may not have
                with contextlib.suppress(BaseException):
                    await loop.run_in_executor(None, self._end_escapees, child, None)
            raise

    def close(self) -> None:
        self._executor.shutdown(wait=False)

    # Test seam (tests/test_teeth.py): how the rest of a command's processes are ended once
    # its group has been killed (*root*: the command, while it is not reaped).
    def _end_escapees(self, child: _Child, root: int | None) -> None:
        child.swept = True
        sweep(child.tag, root)

    def _run_blocking(  # noqa: PLR0917 - called positionally through run_in_executor
        self,
        child: _Child,
        argv: list[str],
        cwd: str | None,
        env: dict[str, str],
        timeout: float | None,
        capture_output: bool,
    ) -> ProcessResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        env = {**env, TAG_VARIABLE: child.tag}
        returncode, output = self._run_process(child, argv, cwd, env, deadline, capture_output)
        out, err = output.result()
        if returncode is not None:
            return ProcessResult(returncode, out, err)
        if child.cancelled:
            raise _Cancelled
        raise subprocess.TimeoutExpired(argv, timeout or 0.0, out, err)

    def _run_process(  # noqa: PLR0917
        self,
        child: _Child,
        argv: list[str],
        cwd: str | None,
        env: dict[str, str],
        deadline: float | None,
        capture_output: bool,
    ) -> tuple[int | None, _Output]:
        """Run through ``subprocess.Popen``; the output read as it comes, the exit awaited."""
        pipe = subprocess.PIPE if capture_output else None
        with subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=pipe,
            stderr=pipe,
            process_group=0,  # its own process group, so killpg reaches its children
        ) as proc:
            child.adopt(proc.pid)
            output = _Output(
                None if proc.stdout is None else proc.stdout.fileno(),
                None if proc.stderr is None else proc.stderr.fileno(),
            )
            try:
                done = False
                try:
                    done = output.read(deadline, child) and self._wait(proc, deadline, child)
                finally:
                    if not done:
                        child.kill()
                        self._end_escapees(child, proc.pid)
                        output.read(time.monotonic() + PIPE_GRACE, None)
                    child.reap(proc.wait)
            finally:
                output.close()
            return (proc.returncode if done else None), output

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], deadline: float | None, child: _Child) -> bool:
        """Wait for the command to exit (True), unless the deadline passes or it is cancelled.

        Without a deadline, a blocking wait, as subprocess.run's (a timed wait polls with
        sleeps, which would add to every call); a cancellation kills the command, ending it.
        """
        if deadline is None:
            proc.wait()
            return not child.cancelled
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return not child.cancelled


class _Cancelled(Exception):
    """The waiting thread's way of saying its call was cancelled (the loop re-raises)."""
