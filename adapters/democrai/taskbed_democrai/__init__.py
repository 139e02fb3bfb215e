"""The released Democrai platform (``democrai`` 0.0.1b4) as a taskbed conformance adapter.

``taskbed conform --impl taskbed_democrai:make`` judges the platform's own objects: its module
SDK, task manager, connection registry, offline notification queue, protocol handlers behind a
bus, SQLite persistence and recovery. Nothing is copied from the platform; this file only wires
it up. The verdict and what each failure comes from: docs/platform.md.
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
from democrai.core.application.tasks.models import BackgroundTaskRecord as Row
from democrai.core.application.tasks.models import PendingNotificationRecord
from democrai.core.application.tasks.notification_queue import NotificationQueue
from democrai.core.infrastructure.database.providers.sqlite import SqlitePersistenceProvider
from democrai.core.infrastructure.modules.manager import ModuleManager
from democrai.core.infrastructure.network.runtime.network import Network
from democrai.core.runtime.foundation.app import RequestContext, app_ctx, reset_req_ctx, set_req_ctx
from democrai.core.runtime.foundation.registry import task_registry
from democrai.sdk.client import SDK

from taskbed_harness import SANDBOX_VARIABLES

NAMES = dict(zip(SANDBOX_VARIABLES, ("DEMOCRAI_NETWORK_SUBJECT", "DEMOCRAI_NETWORK_SUBJECT_KIND",
             "DEMOCRAI_ACCESS", "DEMOCRAI_USER_ID", "DEMOCRAI_ORGANIZATION_ID",
             "DEMOCRAI_SESSION_KEY", "DEMOCRAI_REQUEST_ID"), strict=True))  # fmt: skip


class Bus:
    """The platform's ``BusProvider`` (a WebSocket bus in production): one inbox per client."""

    on_message: Any = None  # the Network sets both callbacks
    on_disconnect: Any = None
    start = stop = broadcast = lambda *_: None

    def __init__(self) -> None:
        self.inboxes: dict[str, tuple[list[Any], asyncio.Queue[Any]]] = {}

    def send(self, client_id: str, message: dict[str, Any]) -> None:
        if client_id in self.inboxes:
            self.inboxes[client_id][0].append(message)
            self.inboxes[client_id][1].put_nowait(message)


class Connection:
    """One user's client: messages in through the bus, commands out with a fresh JWT each."""

    def __init__(self, bus: Bus, user_id: Any, organization_id: Any) -> None:
        self.bus, self.user, self.org = bus, user_id, organization_id
        self.id, self.closed = secrets.token_hex(8), False
        self.messages, self.inbox = bus.inboxes.setdefault(self.id, ([], asyncio.Queue()))
        # What the platform's protocol build_context does for an authenticated client:
        app_ctx().connection_registry.register(user_id, bus, self.id, organization_id)
        NotificationQueue().flush(user_id, lambda m: bus.send(self.id, m), organization_id)

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        jwt = create_access_token({"user_id": self.user, "organization_id": self.org})
        self.bus.on_message(self.id, {**message, "jwt": jwt})
        await asyncio.sleep(0.001)  # virtual time: the loop runs every ready handler first

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus.on_disconnect(self.id)


class Democrai:
    name = "democrai 0.0.1b4"
    capabilities = frozenset({"registered_tasks", "modules", "processes", "restart"})
    sandbox_names = NAMES
    deviations: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self.dir: tempfile.TemporaryDirectory[str] | None = None
        self.modules: dict[str, list[dict[str, Any]]] = {"mod": [], "other": []}

    async def start(self) -> None:  # the platform is process-global: reset all it holds
        self.dir = self.dir or tempfile.TemporaryDirectory(prefix="taskbed-democrai-")
        ctx = app_ctx()
        ctx.logger = logging.getLogger("democrai")  # quiet unless the caller configures logging
        ctx.logger.addHandler(logging.NullHandler())
        ctx.config = {"auth.jwt_secret": secrets.token_hex(32)}
        ctx.db = SqlitePersistenceProvider(os.path.join(self.dir.name, "democrai.db"))
        for table in (Row, PendingNotificationRecord):
            table.__table__.create(ctx.db.engine, checkfirst=True)
        self.register_module("mod", self.modules["mod"])
        self.bus = Bus()
        self.network = Network([self.bus], streams=None)  # sets ctx.task_manager and registry
        self.network._loop = asyncio.get_running_loop()  # its start() would make a thread loop
        self.network.task_manager.recover_from_db()  # as Network.start does

    async def stop(self) -> None:
        await self._cancel(self._active())
        app_ctx().task_manager = None
        if self.dir is not None:
            self.dir.cleanup()

    async def restart(self, *, crash: bool = False) -> None:
        active = self._active()
        if crash:  # a killed process writes nothing more: its last writes go to a scratch db
            app_ctx().db = SqlitePersistenceProvider(":memory:")
        await self._cancel(active)
        await self.start()

    def _active(self) -> list[str]:
        with contextlib.closing(app_ctx().db.get_session()) as db:
            active = Row.status.in_(("pending", "running", "waiting_confirmation"))
            return [row.id for row in db.query(Row.id).filter(active)]

    async def _cancel(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            await self.network.task_manager.cancel(task_id)
        await asyncio.sleep(0.001)

    @contextlib.asynccontextmanager
    async def request(self, *, session: dict[str, Any], module: str, request_id: str | None):
        user = session.get("user") or {}
        token = set_req_ctx(RequestContext(
            request_id=request_id, user=user.get("id"), role=None, channel="bus",
            organization_id=user.get("organization_id"), access_level=None, app=app_ctx(),
            session_key=session.get("session_key"), module_name=module,
        ))  # fmt: skip
        try:
            yield self.sdk(session=session, module=module)
        finally:
            reset_req_ctx(token)

    def sdk(self, *, session: dict[str, Any], module: str) -> Any:
        assert self.dir is not None, "start() first"
        sdk = SDK(os.path.join(self.dir.name, "modules", module), module, session=session)
        confirm, ui = sdk.tasks.request_confirmation, sdk.ui

        async def request_confirmation(task_id: str, builder: Any) -> Any:  # taskbed ui -> its ui
            surface = ui.Builder()
            for i, c in enumerate(builder.build()):
                text = c["type"] == "text"
                surface.add(ui.Text(f"c{i}", c["text"]) if text else ui.Button(f"c{i}", c["label"]))
            return await confirm(task_id, surface)

        sdk.tasks.request_confirmation = request_confirmation
        return sdk

    def connect(self, user_id: Any, organization_id: Any = None) -> Connection:
        return Connection(self.bus, user_id, organization_id)

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                task = app_ctx().task_manager and app_ctx().task_manager.get_task(task_id)
                if task is not None and task.status in ("completed", "failed", "interrupted"):
                    return dict(task.to_dict())
                await asyncio.sleep(0.01)

    def register_task(self, name: str, func: Any) -> None:
        task_registry.register(name, func)

    def register_module(self, name: str, access: list[dict[str, Any]]) -> None:
        """A manifest per module, discovered anew: the platform reads a manifest only once."""
        assert self.dir is not None, "start() first"
        self.modules[name] = access
        app_ctx().modules = ModuleManager()
        for module, rules in self.modules.items():
            folder = os.path.join(self.dir.name, "modules", module)
            os.makedirs(folder, exist_ok=True)
            grants = [{"resource_type": "filesystem", "operation": "read", "target": r["path"]}
                      if "path" in r else {"resource_type": "network", "operation": "connect",
                                           "target": r["network"]} for r in rules]  # fmt: skip
            with open(os.path.join(folder, "manifest.json"), "w", encoding="utf-8") as f:
                json.dump(
                    {"name": module, "label": module, "allowed_imports": [], "access": grants}, f
                )
        app_ctx().modules.discover_modules(os.path.dirname(folder), is_builtin=False, load_ui=False)


def make() -> Democrai:
    """The ``--impl`` factory: a fresh adapter (``start()`` does the work)."""
    return Democrai()
