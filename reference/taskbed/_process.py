"""The real ProcessRunner: one OS process per call, in its own process group.

Mechanism, chosen by measuring (see docs/benchmarks.md): ``subprocess.Popen`` plus
``communicate`` in a worker thread costs about what ``subprocess.run`` costs, while asyncio's
``create_subprocess_exec`` adds transports, protocols and a child watcher per call. The thread
only waits; the event loop never blocks.

On timeout or cancellation the whole process group is killed (children of the command too)
and the command is reaped before the call returns or raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

from ._ports import ProcessResult


class _Child:
    """The process of one call, shared by the waiting thread and the loop that may cancel it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.cancelled = False

    def adopt(self, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self.proc = proc
            if self.cancelled:
                _kill_group(proc)

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            if self.proc is not None:
                _kill_group(self.proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


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
        child = _Child()
        loop = asyncio.get_running_loop()
        waiting = loop.run_in_executor(
            self._executor, _run_blocking, child, argv, cwd, env, timeout, capture_output
        )
        try:
            return await asyncio.shield(waiting)
        except asyncio.CancelledError:
            child.cancel()
            # Reap before letting the cancellation through: no stray process survives us.
            with contextlib.suppress(BaseException):
                await waiting
            raise

    def close(self) -> None:
        self._executor.shutdown(wait=False)


def _run_blocking(  # noqa: PLR0917 - called positionally through run_in_executor
    child: _Child,
    argv: list[str],
    cwd: str | None,
    env: dict[str, str],
    timeout: float | None,
    capture_output: bool,
) -> ProcessResult:
    pipe = subprocess.PIPE if capture_output else None
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=pipe,
        stderr=pipe,
        start_new_session=True,  # its own process group, so killpg reaches its children
    ) as proc:
        child.adopt(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(argv, timeout or 0.0, out, err) from None
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        return ProcessResult(proc.returncode, out, err)
