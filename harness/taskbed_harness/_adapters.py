"""How an implementation plugs into the conformance suite: one small adapter Protocol.

An implementer writes a factory returning an object with this shape and runs
``taskbed conform --impl their_package.adapter:make``. The suite calls the factory once per
rule (a fresh implementation every time), on a fresh virtual-time event loop.

The reference runtime and the harness's fake task manager are adapted here, so the suite
judges both the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

from taskbed import Clock, PostgresStore, Runtime, SQLiteStore, TaskStore, WallClock

from ._client import ClientConnection
from ._fake import HarnessRuntime
from ._protocol import CAPABILITIES, SANDBOX_VARIABLES, V1_MEMBERS, Adapter

__all__ = ("CAPABILITIES", "SANDBOX_VARIABLES")  # still importable from here (protocol v1)


@runtime_checkable
class Implementation(Protocol):
    """Protocol v1 of the adapter (still accepted; new adapters subclass ``Adapter``).

    Attributes:
        name: shown in reports.
        capabilities: which of ``CAPABILITIES`` it supports.
        sandbox_names: reference sandbox variable name -> this implementation's name.
        deviations: rule ID -> why this implementation knowingly differs. Such a rule still
            runs; a failure is reported as a known deviation instead of a failure.
    """

    name: str
    capabilities: frozenset[str]
    sandbox_names: Mapping[str, str]
    deviations: Mapping[str, str]

    async def start(self) -> None:
        """Start the task manager (on the running loop)."""
        ...

    async def stop(self) -> None:
        """Stop it; tasks still running end ``interrupted``."""
        ...

    def request(
        self, *, session: dict[str, Any], module: str, request_id: str | None
    ) -> AbstractAsyncContextManager[Any]:
        """A block running as one request; yields the module SDK (``.tasks``, ``.ui``)."""
        ...

    def sdk(self, *, session: dict[str, Any], module: str) -> Any:
        """A module SDK outside any request."""
        ...

    def connect(self, user_id: Any, organization_id: Any = None) -> ClientConnection:
        """A client connection of a user: ``messages``, ``receive()``, ``send()``, ``close()``."""
        ...

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the task is terminal; its serialized row."""
        ...

    def register_task(self, name: str, func: Callable[..., Any]) -> None: ...

    def register_module(self, name: str, access: list[dict[str, Any]]) -> None: ...

    async def restart(self, *, crash: bool = False) -> None:
        """Replace the runtime by a new one over the same persisted store (``restart``).

        With ``crash=True`` the old runtime vanishes as a killed process would: nothing more
        is written for its tasks and its lease is left to expire.
        """
        ...


#: Every member of protocol v1 (kept for adapters and tools written against it).
PROTOCOL_MEMBERS = V1_MEMBERS


class ReferencePeer:
    """A second reference runtime over the adapter's SQLite file, alive beside the first."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.stopped = False

    def request(
        self, *, session: dict[str, Any], module: str, request_id: str | None
    ) -> AbstractAsyncContextManager[Any]:
        return self.runtime.request(session=session, module=module, request_id=request_id)

    def sdk(self, *, session: dict[str, Any], module: str) -> Any:
        return self.runtime.sdk(session=session, module=module)

    def connect(self, user_id: Any, organization_id: Any = None) -> ClientConnection:
        return self.runtime.connect(user_id, organization_id)

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        return await self.runtime.wait(task_id, timeout)

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runtime.stop()
            self.runtime.store.close()


class ReferenceImplementation(Adapter):
    """The reference runtime as a conformance adapter (``taskbed conform`` by default).

    Each started instance owns a SQLite file in a temporary directory, so restart, recovery
    and peers are real; timestamps follow the loop's virtual clock when there is one.
    Creating an instance costs nothing; ``start()`` makes the file and the runtime.

    Args:
        postgres: a PostgreSQL DSN: each started instance then owns a new schema on that
            server (dropped at ``stop()``) and its runtimes use ``PostgresStore``
            (``taskbed conform --postgres DSN``).
    """

    name = "reference"
    capabilities = frozenset(CAPABILITIES) - {"websocket"}  # its clients are in process
    deviations: Mapping[str, str] = {}
    runtime_class: type[Runtime] = Runtime
    #: The store each runtime opens on the instance's file (a seam for broken stores in tests).
    store_class: type[SQLiteStore] = SQLiteStore
    #: How long (real seconds) a failing store write is retried before its caller hears of it;
    #: short, so that the write-path rules (store_faults) run fast.
    retry_for: float = 0.05

    def __init__(self, *, postgres: str | None = None) -> None:
        self.postgres = postgres
        self._schema: str | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._registered: dict[str, Callable[..., Any]] = {}
        self._modules: dict[str, list[dict[str, Any]]] = {}
        self._abandoned: list[Runtime] = []
        self._runtime: Runtime | None = None
        self._peers: list[ReferenceImplementation] = []
        self._clock_skew = 0.0
        self._shares_dir = False  # a peer: the first runtime owns the directory

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("the implementation is not started; await start() first")
        return self._runtime

    def _new_store(self, clock: Clock | None) -> TaskStore:
        if self.postgres is not None:
            if self._schema is None:
                self._schema = _create_schema(self.postgres)
            dsn = f"{self.postgres} options=-csearch_path={self._schema}"
            return PostgresStore(dsn, clock=clock, retry_for=self.retry_for)
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="taskbed-conform-")
        return self.store_class(
            os.path.join(self._dir.name, "tasks.db"), clock=clock, retry_for=self.retry_for
        )

    def _new_runtime(self) -> Runtime:
        clock = None
        with contextlib.suppress(RuntimeError):  # on a virtual loop, timestamps are virtual
            clock = getattr(asyncio.get_running_loop(), "clock", None)
        # The store's clock decides lease expiry (LEASE-5); on a virtual loop it is virtual.
        store = self._new_store(clock)
        runtime_clock: Clock | None = clock
        if self._clock_skew:
            base: Clock = clock if clock is not None else WallClock()
            runtime_clock = _SkewedClock(base, self._clock_skew)
        runtime = self.runtime_class(store=store, clock=runtime_clock)
        for name, func in self._registered.items():
            runtime.register_task(name, func)
        for name, access in self._modules.items():
            runtime.register_module(name, access)
        return runtime

    async def start(self) -> None:
        self._runtime = self._new_runtime()
        await self._runtime.start()

    async def stop(self) -> None:
        for peer in self._peers:
            await peer.stop()
        self._peers.clear()
        if self._runtime is not None:
            await self._runtime.stop()
            self._runtime.store.close()
        for old in self._abandoned:
            await _discard(old)
        self._abandoned.clear()
        if self._dir is not None and not self._shares_dir:
            self._dir.cleanup()
        self._dir = None
        if self._schema is not None and self.postgres is not None and not self._shares_dir:
            _drop_schema(self.postgres, self._schema)
        self._schema = None

    def request(
        self, *, session: dict[str, Any], module: str, request_id: str | None
    ) -> AbstractAsyncContextManager[Any]:
        return self.runtime.request(session=session, module=module, request_id=request_id)

    def sdk(self, *, session: dict[str, Any], module: str) -> Any:
        return self.runtime.sdk(session=session, module=module)

    def connect(
        self, user_id: Any, organization_id: Any = None, credentials: Any = None
    ) -> ClientConnection:
        return self.runtime.connect(user_id, organization_id)

    async def wait(self, task_id: Any, timeout: float | None = None) -> dict[str, Any]:
        return await self.runtime.wait(task_id, timeout)

    def register_task(self, name: str, func: Callable[..., Any]) -> None:
        self._registered[name] = func  # kept, so a restarted runtime knows it too
        if self._runtime is not None:
            self._runtime.register_task(name, func)
        for peer in self._peers:
            peer.runtime.register_task(name, func)

    def register_module(self, name: str, access: Any) -> None:
        self._modules[name] = access
        if self._runtime is not None:
            self._runtime.register_module(name, access)
        for peer in self._peers:
            peer.runtime.register_module(name, access)

    async def restart(self, *, crash: bool = False) -> None:
        old = self.runtime
        if crash:
            _freeze(old)
            self._abandoned.append(old)
        else:
            await old.stop()
            old.store.close()
        self._runtime = self._new_runtime()
        await self._runtime.start()

    # ------------------------------------------------------------ leases (specs/leases.md)

    async def peer(self, *, clock_skew: float = 0.0) -> ReferenceImplementation:
        """A second live runtime on the same store (``peer``), stopped with this one.

        It is a ``Peer`` and more: an implementation of its own, so the lease rules can
        pause it and read its claim (``leases``).

        *clock_skew*: seconds the peer runtime's clock runs ahead of this one's (its
        timestamps and its own idea of "now"; the store's clock is shared, as it is for
        processes on one database).
        """
        self.runtime  # noqa: B018 - a peer joins a started implementation's store
        # A subclass may take no arguments: pass the DSN only where there is one.
        other = type(self)() if self.postgres is None else type(self)(postgres=self.postgres)
        other._schema = self._schema
        other._dir = self._dir
        other._registered = self._registered
        other._modules = self._modules
        other._clock_skew = clock_skew
        other._shares_dir = True
        await other.start()
        self._peers.append(other)
        return other

    async def pause(self) -> None:
        """Stop the runtime's heartbeat, as SIGSTOP stops its process (``leases``).

        Its tasks stay where they are; the suite's checks park them on events, so nothing
        of theirs runs until ``resume()``.
        """
        manager = self.runtime.manager
        if manager is not None and manager._heartbeat is not None:
            manager._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await manager._heartbeat
            manager._heartbeat = None

    async def resume(self) -> None:
        """Resume after ``pause()``: the overdue heartbeat runs at once (SIGCONT)."""
        manager = self.runtime.manager
        if manager is not None and manager._heartbeat is None and not manager.lost:
            loop = asyncio.get_running_loop()
            manager._heartbeat = loop.create_task(manager._keep_lease(first=0.0))
            await asyncio.sleep(0)

    def lease(self) -> dict[str, Any] | None:
        """This runtime's claim: ``{"runtime": id, "token": n}``, or None (``leases``)."""
        manager = self.runtime.manager
        if manager is None or manager.lease is None or manager.lost:
            return None
        return {"runtime": manager.lease.runtime_id, "token": manager.lease.token}

    def lease_lost(self) -> bool:
        """True once the runtime found that it lost its lease (``leases``)."""
        return self.runtime.lease_lost

    def leases(self) -> list[dict[str, Any]]:
        """Every claim the store holds: ``[{"runtime": id, "token": n}]`` (``leases``)."""
        return [
            {"runtime": lease.runtime_id, "token": lease.token}
            for lease in self.runtime.store.leases()
        ]

    # ------------------------------------------------------------ store faults

    def break_store(self) -> None:
        """From now on every store write fails with a disk I/O error (``store_faults``)."""
        store = self.runtime.store
        if isinstance(store, PostgresStore):
            store.inject_fault(OSError(5, "could not write block: Input/output error"))
            return
        self._store().inject_fault(sqlite3.OperationalError("disk I/O error"))

    def heal_store(self) -> None:
        """The fault clears (``store_faults``)."""
        store = self.runtime.store
        if isinstance(store, PostgresStore):
            store.inject_fault(None)
            return
        self._store().inject_fault(None)

    @contextlib.asynccontextmanager
    async def lock_store(self) -> AsyncIterator[None]:
        """Hold the store's write lock from outside for the block (``store_faults``)."""
        store = self.runtime.store
        if isinstance(store, PostgresStore):
            async with _locked_tables(store.dsn):
                yield
            return
        other = sqlite3.connect(self._store().path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            yield
            other.execute("ROLLBACK")
        finally:
            other.close()

    def _store(self) -> SQLiteStore:
        store = self.runtime.store
        if not isinstance(store, SQLiteStore):  # pragma: no cover - a wiring error
            raise TypeError("store_faults needs the reference SQLiteStore")
        return store


class _SkewedClock:
    """A runtime clock *skew* seconds ahead of *base*."""

    def __init__(self, base: Clock, skew: float) -> None:
        self._base = base
        self._skew = skew

    def now(self) -> float:
        return self._base.now() + self._skew


class FakeImplementation(ReferenceImplementation):
    """The harness's fake task manager as a conformance adapter: it must pass the same rules."""

    name = "fake"
    runtime_class = HarnessRuntime


def _freeze(runtime: Runtime) -> None:
    """Make *runtime* vanish as a killed process would: it writes nothing more, ever."""
    manager = runtime.manager
    if manager is not None and manager._heartbeat is not None:
        manager._heartbeat.cancel()
    runtime.store.close()  # later writes of its tasks go nowhere, as after SIGKILL


async def _discard(runtime: Runtime) -> None:
    """Cancel what a frozen runtime still runs, without letting it report anything."""
    logger = logging.getLogger("taskbed")
    previous = logger.disabled
    logger.disabled = True  # its writes fail against the closed store; that is the point
    try:
        runtime.channel.handler = None
        await runtime.channel.stop()  # a frozen host hears nothing more from the others
        manager = runtime.manager
        if manager is not None:
            for local in list(manager._local.values()):
                if local.task is not None:
                    local.task.cancel()
                    with contextlib.suppress(BaseException):
                        await local.task
            # Its writes failed against the closed store: nothing is left to retry.
            for task in (manager._retrier, *manager._background):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        runtime.pool.shutdown()
    finally:
        logger.disabled = previous


@contextlib.asynccontextmanager
async def _locked_tables(dsn: str) -> AsyncIterator[None]:
    """Another session holds the task and lease tables against writes (reads go on)."""
    import psycopg  # noqa: PLC0415 - only conformance runs on PostgreSQL need it

    with psycopg.connect(dsn) as other:
        other.execute("LOCK TABLE taskbed_tasks, taskbed_leases IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            other.rollback()


def _create_schema(dsn: str) -> str:
    """A new schema on the server at *dsn*, for one conformance instance."""
    import psycopg  # noqa: PLC0415 - only conformance runs on PostgreSQL need it

    name = f"taskbed_conform_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")
    return name


def _drop_schema(dsn: str, name: str) -> None:
    import psycopg  # noqa: PLC0415 - only conformance runs on PostgreSQL need it

    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def reference() -> Adapter:
    """The default ``--impl``: the reference runtime."""
    return ReferenceImplementation()


def fake() -> Adapter:
    """``--impl taskbed_harness:fake``: the harness's fake task manager."""
    return FakeImplementation()
