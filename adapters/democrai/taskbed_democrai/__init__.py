"""The released Democrai platform (``democrai`` 0.0.1b4) as a taskbed conformance adapter.

``taskbed conform --impl taskbed_democrai:make`` judges the platform's own objects: its module
SDK (``democrai.sdk.client.SDK``), task manager, connection registry, offline notification
queue, protocol handlers behind a bus, SQLite persistence and recovery. Nothing is copied
from the platform; this file only wires it up (see docs/platform.md for the verdict).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import tempfile
from typing import Any, ClassVar

from democrai.core.application.auth.jwt import create_access_token
from democrai.core.application.tasks.models import BackgroundTaskRecord, PendingNotificationRecord
from democrai.core.infrastructure.database.providers.sqlite import SqlitePersistenceProvider
from democrai.core.infrastructure.modules.manager import ModuleManager
from democrai.core.infrastructure.network.runtime.network import Network
from democrai.core.runtime.foundation.app import RequestContext, app_ctx, reset_req_ctx, set_req_ctx
from democrai.core.runtime.foundation.registry import task_registry
from democrai.sdk.client import SDK

from taskbed_harness import SANDBOX_VARIABLES

ACTIVE = ("pending", "running", "waiting_confirmation")
TERMINAL = ("completed", "failed", "interrupted")
NAMES = dict(zip(SANDBOX_VARIABLES, ("DEMOCRAI_NETWORK_SUBJECT", "DEMOCRAI_NETWORK_SUBJECT_KIND",
             "DEMOCRAI_ACCESS", "DEMOCRAI_USER_ID", "DEMOCRAI_ORGANIZATION_ID",
             "DEMOCRAI_SESSION_KEY", "DEMOCRAI_REQUEST_ID"), strict=True))  # fmt: skip


class Bus:
    """The platform's ``BusProvider``: one client connection per id, as a WebSocket bus has."""

    on_message: Any = None
    on_disconnect: Any = None

    def __init__(self) -> None:
        self.inboxes: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.sent: dict[str, list[dict[str, Any]]] = {}

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def broadcast(self, message: dict[str, Any]) -> None: ...

    def send(self, client_id: str, message: dict[str, Any]) -> None:
        if client_id in self.inboxes:
            self.sent[client_id].append(message)
            self.inboxes[client_id].put_nowait(message)


class Connection:
    """One user's client: messages in through the bus, commands out with a fresh JWT each."""

    def __init__(self, impl: Democrai, user_id: Any, organization_id: Any) -> None:
        self.impl, self.user_id, self.organization_id = impl, user_id, organization_id
        self.client_id, self.closed = secrets.token_hex(8), False
        bus = impl.bus
        bus.inboxes[self.client_id], bus.sent[self.client_id] = asyncio.Queue(), []
        self.messages = bus.sent[self.client_id]
        # What the platform does for an authenticated client (protocol build_context):
        app_ctx().connection_registry.register(user_id, bus, self.client_id, organization_id)
        impl.network._notification_queue.flush(
            user_id, lambda m: bus.send(self.client_id, m), organization_id
        )

    async def receive(self) -> dict[str, Any]:
        return await self.impl.bus.inboxes[self.client_id].get()

    async def send(self, message: dict[str, Any]) -> None:
        token = create_access_token(
            {"user_id": self.user_id, "organization_id": self.organization_id}
        )
        self.impl.bus.on_message(self.client_id, {**message, "jwt": token})
        await asyncio.sleep(0.001)  # virtual time: the loop runs every ready handler first

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.impl.bus.on_disconnect(self.client_id)


class Democrai:
    name = "democrai 0.0.1b4"
    capabilities = frozenset({"registered_tasks", "modules", "processes", "restart"})
    sandbox_names = NAMES
    deviations: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="taskbed-democrai-")
        self.modules: dict[str, list[dict[str, Any]]] = {"mod": [], "other": []}

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        ctx = app_ctx()
        ctx.logger = logging.getLogger("democrai")  # quiet unless the caller configures logging
        ctx.logger.addHandler(logging.NullHandler())
        ctx.config = {"auth.jwt_secret": secrets.token_hex(32)}
        ctx.db = SqlitePersistenceProvider(os.path.join(self.dir.name, "democrai.db"))
        for table in (BackgroundTaskRecord, PendingNotificationRecord):
            table.__table__.create(ctx.db.engine, checkfirst=True)
        ctx.modules = ModuleManager()
        for name, access in self.modules.items():
            self._install(name, access)
        self.bus = Bus()
        self.network = Network([self.bus], streams=None)  # sets ctx.task_manager, registry
        self.network._loop = asyncio.get_running_loop()  # its own start() makes a thread loop
        self.network.task_manager.recover_from_db()  # as Network.start does

    async def stop(self) -> None:
        await self._cancel_active()
        app_ctx().task_manager = None
        with contextlib.suppress(Exception):
            self.dir.cleanup()

    async def restart(self, *, crash: bool = False) -> None:
        ctx = app_ctx()
        if crash:  # a killed process writes nothing more: its last writes go nowhere
            real, ctx.db = ctx.db, SqlitePersistenceProvider(":memory:")
            await self._cancel_active(ids=self._active_ids(real))
        else:
            await self._cancel_active()
        await self.start()

    def _active_ids(self, db: Any = None) -> list[str]:
        session = (db or app_ctx().db).get_session()
        try:
            rows = session.query(BackgroundTaskRecord.id).filter(
                BackgroundTaskRecord.status.in_(ACTIVE)
            )
            return [row.id for row in rows]
        finally:
            session.close()

    async def _cancel_active(self, ids: list[str] | None = None) -> None:
        manager = app_ctx().task_manager
        if manager is None:
            return
        for task_id in self._active_ids() if ids is None else ids:
            await manager.cancel(task_id)
        await asyncio.sleep(0.001)

    # ---------------------------------------------------------------- the SDK
    @contextlib.asynccontextmanager
    async def request(self, *, session: dict[str, Any], module: str, request_id: str | None):
        user = session.get("user") or {}
        token = set_req_ctx(RequestContext(
            request_id=request_id, user=user.get("id"), role=None,
            organization_id=user.get("organization_id"), access_level=None, channel="bus",
            app=app_ctx(), session_key=session.get("session_key"), module_name=module,
        ))  # fmt: skip
        try:
            yield self.sdk(session=session, module=module)
        finally:
            reset_req_ctx(token)

    def sdk(self, *, session: dict[str, Any], module: str) -> Any:
        sdk = SDK(os.path.join(self.dir.name, module), module, session=session)
        confirm = sdk.tasks.request_confirmation

        async def request_confirmation(task_id: str, builder: Any) -> Any:  # taskbed ui -> its ui
            return await confirm(task_id, _surface(sdk, builder))

        sdk.tasks.request_confirmation = request_confirmation
        return sdk

    def connect(self, user_id: Any, organization_id: Any = None) -> Connection:
        return Connection(self, user_id, organization_id)

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                task = app_ctx().task_manager and app_ctx().task_manager.get_task(task_id)
                if task is not None and task.status in TERMINAL:
                    return task.to_dict()
                await asyncio.sleep(0.01)

    def register_task(self, name: str, func: Any) -> None:
        task_registry.register(name, func)

    def register_module(self, name: str, access: list[dict[str, Any]]) -> None:
        self.modules[name] = access
        app_ctx().modules = ModuleManager()  # a module's manifest is read once, at discovery
        for known, rules in self.modules.items():
            self._install(known, rules)

    def _install(self, name: str, access: list[dict[str, Any]]) -> None:
        folder = os.path.join(self.dir.name, "modules", name)
        os.makedirs(folder, exist_ok=True)
        manifest = {"name": name, "label": name, "allowed_imports": [], "access": [
            {"resource_type": "filesystem", "operation": "read", "target": r["path"]}
            if "path" in r else {"resource_type": "network", "operation": "connect",
                                 "target": r["network"]} for r in access]}  # fmt: skip
        with open(os.path.join(folder, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f)
        app_ctx().modules.discover_modules(os.path.dirname(folder), is_builtin=False, load_ui=False)


def _surface(sdk: Any, builder: Any) -> Any:
    """A taskbed ``ui.Builder`` as the platform's own ``Builder`` of the same components."""
    surface = sdk.ui.Builder()
    for i, c in enumerate(builder.build()):
        ui = sdk.ui
        surface.add(
            ui.Text(f"c{i}", c["text"]) if c["type"] == "text" else ui.Button(f"c{i}", c["label"])
        )
    return surface


def make() -> Democrai:
    """The ``--impl`` factory."""
    return Democrai()
