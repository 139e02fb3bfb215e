"""The bounded worker-thread pool behind ``run_blocking`` and sync registered tasks."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class WorkerPool:
    """Runs sync callables in worker threads, each call in a copy of the caller's context.

    The copy is what makes context both visible and contained (BLOCK): the function sees the
    caller's context variables, and what it sets stays in its copy, so it reaches neither the
    caller nor a later call that lands on the same pool thread. Prior art: ``asyncio.to_thread``.
    """

    #: The executor each pool makes (a seam: the harness swaps in one whose stuck threads it
    #: can let go, so a hung test cannot keep the interpreter from exiting).
    executor_class: type[ThreadPoolExecutor] = ThreadPoolExecutor

    def __init__(self, max_workers: int | None = None) -> None:
        self._max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            self._executor = self.executor_class(self._max_workers, "taskbed-worker")
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    def shutdown(self) -> None:
        """Let running calls finish in the background; later calls start a fresh pool."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
