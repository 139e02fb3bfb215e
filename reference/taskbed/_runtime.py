"""The Runtime: wires the ports, owns the task manager's life, hands out module SDKs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

from ._channel import Connection, ConnectionRegistry
from ._context import RequestContext, current_sdk_var, reset_request, set_request
from ._manager import TaskManager
from ._memory_store import MemoryStore
from ._model import serialize
from ._ports import Clock, ProcessRunner, TaskStore, WallClock
from ._process import OSProcessRunner
from ._sdk import DEFAULT_NAMESPACES, ModuleSDK, NamespaceFactory, check_namespaces
from ._tasks import Tasks, session_owner
from ._threads import WorkerPool


class Runtime:
    """The reference runtime of ``module_sdk.tasks``.

    Use it as ``async with Runtime() as rt:`` (or ``await rt.start()`` / ``await rt.stop()``).
    Before ``start()`` and after ``stop()`` the SDK behaves as "TaskManager not initialized".

    Args:
        store: where task rows live; ``MemoryStore()`` by default, ``SQLiteStore(path)`` to
            persist them (and to recover after a crash).
        clock: where timestamps come from (the harness passes a virtual clock).
        process_runner: how ``run_subprocess`` starts processes (the harness records them).
        max_workers: size of the worker-thread pool of ``run_blocking``.
        lease_seconds: how long this runtime's lease on a shared store lasts without a
            heartbeat; another runtime recovers its tasks after that.
        namespaces: name -> factory called with every SDK this runtime builds (``factory(sdk)``);
            adds a namespace or replaces ``ui``, ``i18n``, ``media`` or ``effects`` (e.g. by
            the platform's own ``Effects`` class, which takes the SDK).
        translations: the catalog of ``i18n.t``: language -> key -> text.
        media: the blobs of ``media.view``: storage path -> bytes.
        default_language: the language of ``i18n.t`` when the session names none.
    """

    #: The task manager class; the harness's runtime swaps in a subclass with test controls.
    manager_class: type[TaskManager] = TaskManager
    #: The SDK object and its ``tasks`` facade (seams for adapters and deliberately broken
    #: implementations in the conformance suite's own tests).
    sdk_class: type[ModuleSDK] = ModuleSDK
    tasks_class: type[Tasks] = Tasks
    #: The client channel, built as ``channel_class(store, clock)``, and the process runner
    #: used when none is passed, built as ``process_runner_class()`` (the same seams).
    channel_class: type[ConnectionRegistry] = ConnectionRegistry
    process_runner_class: type[OSProcessRunner] = OSProcessRunner

    def __init__(
        self,
        store: TaskStore | None = None,
        *,
        clock: Clock | None = None,
        process_runner: ProcessRunner | None = None,
        max_workers: int | None = None,
        lease_seconds: float = 30.0,
        namespaces: Mapping[str, NamespaceFactory] | None = None,
        translations: Mapping[str, Mapping[str, str]] | None = None,
        media: Mapping[str, bytes] | None = None,
        default_language: str = "en",
    ) -> None:
        self.store: TaskStore = store if store is not None else MemoryStore()
        self.clock: Clock = clock if clock is not None else WallClock()
        self.channel = self.channel_class(self.store, self.clock)
        self.processes: ProcessRunner = (
            process_runner if process_runner is not None else self.process_runner_class()
        )
        self.pool = WorkerPool(max_workers)
        self.lease_seconds = lease_seconds
        self.manager: TaskManager | None = None
        self._registered: dict[str, Callable[..., Any]] = {}
        self._modules: dict[str, list[dict[str, Any]]] = {}
        self.namespaces: dict[str, NamespaceFactory] = {
            **DEFAULT_NAMESPACES,
            **check_namespaces(namespaces or {}),
        }
        self.translations: dict[str, dict[str, str]] = {
            lang: dict(texts) for lang, texts in (translations or {}).items()
        }
        self.default_language = default_language
        self.media_blobs: dict[str, bytes] = {k: bytes(v) for k, v in (media or {}).items()}
        #: Called with ``(stream_id, data)`` for every ``effects.publish_*`` of any SDK.
        self.stream_listeners: list[Callable[[str, Any], None]] = []

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        """Start the task manager and recover the tasks of runtimes that are gone."""
        if self.manager is not None:
            return
        manager = self.manager_class(
            store=self.store, clock=self.clock, channel=self.channel,
            lease_seconds=self.lease_seconds,
        )  # fmt: skip
        await self.channel.start()  # listen first: no message of another host is missed
        try:
            await manager.start()
        except BaseException:
            await self.channel.stop()
            raise
        self.manager = manager
        self.channel.handler = manager.handle_client_message

    async def stop(self) -> None:
        """Interrupt running tasks, give up the lease, and stop the task manager."""
        manager, self.manager = self.manager, None
        self.channel.handler = None
        if manager is not None:
            await manager.stop()
            await self.channel.stop()
        self.pool.shutdown()

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.stop()

    # ------------------------------------------------------------ SDK objects

    def sdk(self, *, session: dict[str, Any], module: str) -> ModuleSDK:
        """A module SDK for a session, outside any request (tasks get a synthetic context)."""
        return self.sdk_class(self, session, module)

    @asynccontextmanager
    async def request(
        self, *, session: dict[str, Any], module: str, request_id: str | None = None
    ) -> AsyncIterator[ModuleSDK]:
        """Run a block as one request: sets the request context and yields the module SDK.

        Raises:
            TypeError: *session* is not a dict.
        """
        if not isinstance(session, dict):
            raise TypeError(
                f"session must be a dict such as {{'user': {{'id': 7}}}}, got {session!r}"
            )
        try:
            owner = session_owner(session)
            user_id, org_id = owner.user_id, owner.organization_id
        except ValueError:
            user_id = org_id = None
        key = session.get("session_key")
        ctx = RequestContext(request_id, user_id, org_id, module, None if key is None else str(key))
        sdk = self.sdk_class(self, session, module)
        token = set_request(ctx)
        sdk_token = current_sdk_var.set(sdk)
        try:
            yield sdk
        finally:
            current_sdk_var.reset(sdk_token)
            reset_request(token)

    def publish(self, stream_id: str, data: Any) -> None:
        """Send *data* on a client stream: to every listener in ``stream_listeners``."""
        for listener in list(self.stream_listeners):
            listener(stream_id, data)

    def connect(self, user_id: Any, organization_id: Any = None) -> Connection:
        """Open a client connection for a user; messages kept while offline arrive at once."""
        return self.channel.connect(user_id, organization_id)

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the task is terminal and return its serialized row.

        Raises:
            RuntimeError: the runtime is not started.
            ValueError: no task has that id.
            TimeoutError: *timeout* seconds passed first.
        """
        manager = self.manager
        if manager is None:
            raise RuntimeError("the runtime is not started; use `async with Runtime() as rt:`")
        if timeout is None:  # asyncio.timeout(None) never fires: skip setting one up
            return serialize(await manager.wait(task_id))
        async with asyncio.timeout(timeout):
            return serialize(await manager.wait(task_id))

    # ------------------------------------------------------------ registration

    def register_task(self, name: str, func: Callable[..., Any]) -> None:
        """Register *func* under *name* for ``run_background(name, **kwargs)``.

        An async function runs on the loop; a sync one runs in a worker thread.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a task name must be a non-empty string, got {name!r}")
        if not callable(func):
            raise TypeError(f"register_task({name!r}, func) needs a callable, got {func!r}")
        self._registered[name] = func

    def registered_task(self, name: str) -> Callable[..., Any] | None:
        return self._registered.get(name)

    def task_names(self) -> Iterable[str]:
        return self._registered.keys()

    def register_module(self, name: str, access: Iterable[dict[str, Any]] = ()) -> None:
        """Declare a module's sandbox rules.

        Args:
            name: the module name used in ``rt.request(module=...)``.
            access: rules such as ``{"path": "/srv/data"}`` (filesystem; ``"mode"`` optional)
                or ``{"network": "api.example.com:443"}``. A registered module's subprocesses
                may only use a ``cwd`` inside its filesystem paths.
        """
        rules = []
        for rule in access:
            if not isinstance(rule, dict) or not ({"path", "network"} & rule.keys()):
                raise ValueError(
                    f"an access rule is a dict with 'path' or 'network', got {rule!r}; e.g. "
                    '{"path": "/srv/data", "mode": "rw"} or {"network": "api.example.com:443"}'
                )
            copy = dict(rule)
            if "path" in copy:  # a str, so MODULE_SDK_ACCESS stays JSON (a Path is welcome)
                copy["path"] = os.fsdecode(copy["path"])
            rules.append(copy)
        self._modules[name] = rules

    def module_access(self, module: str) -> list[dict[str, Any]]:
        return list(self._modules.get(module, ()))

    def allowed_paths(self, module: str) -> list[str] | None:
        """The filesystem roots a module may use, or None when the module declared no rules."""
        if module not in self._modules:
            return None
        return [
            os.path.realpath(os.fspath(rule["path"]))
            for rule in self._modules[module]
            if "path" in rule
        ]
