"""The released Democrai platform (``democrai`` 0.0.1b4) as a taskbed conformance adapter.

``taskbed conform --impl taskbed_democrai:make`` judges the platform's own objects: its module
SDK, task manager, connection registry, offline notification queue, protocol handlers behind a
bus, SQLite persistence and recovery. Nothing is copied from the platform; this file only wires
it up (protocol v2: ``taskbed_harness.Adapter``). The verdict, and where in the platform each
failure comes from: docs/platform.md.
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
from democrai.sdk.ui import Builder, ui

from taskbed_harness import Adapter, Button

ACTIVE = ("pending", "running", "waiting_confirmation")
MODES = {"r": ("read",), "rw": ("read", "create", "modify")}  # reference mode -> operations


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
    """One client: messages in through the bus, commands out with the connection's JWT."""

    def __init__(self, bus: Bus, user_id: Any, organization_id: Any, jwt: str) -> None:
        self.bus, self.jwt, self.id, self.closed = bus, jwt, secrets.token_hex(8), False
        self.messages, self.inbox = bus.inboxes.setdefault(self.id, ([], asyncio.Queue()))
        # What the platform's protocol build_context does for an authenticated client:
        app_ctx().connection_registry.register(user_id, bus, self.id, organization_id)
        NotificationQueue().flush(user_id, lambda m: bus.send(self.id, m), organization_id)

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.bus.on_message(self.id, {**message, "jwt": self.jwt})  # handled on the loop, later

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus.on_disconnect(self.id)


class Democrai(Adapter):
    name = "democrai 0.0.1b4"
    capabilities = frozenset({"registered_tasks", "modules", "processes", "restart"})
    sandbox_names: ClassVar[dict[str, str | None]] = {
        "MODULE_SDK_MODULE": "DEMOCRAI_NETWORK_SUBJECT",
        "MODULE_SDK_SUBJECT_KIND": "DEMOCRAI_NETWORK_SUBJECT_KIND",
        "MODULE_SDK_ACCESS": "DEMOCRAI_ACCESS",
        "MODULE_SDK_USER_ID": "DEMOCRAI_USER_ID",
        "MODULE_SDK_ORGANIZATION_ID": "DEMOCRAI_ORGANIZATION_ID",
        "MODULE_SDK_SESSION_KEY": "DEMOCRAI_SESSION_KEY",
        "MODULE_SDK_REQUEST_ID": None,  # the platform exports no request id
    }

    async def setup(self, rule: str) -> None:  # the platform is process-global: reset it
        self.dir = tempfile.TemporaryDirectory(prefix="taskbed-democrai-")
        self.modules: dict[str, Any] = {"mod": []}
        self.frozen: list[tuple[Any, list[str]]] = []
        ctx = app_ctx()
        ctx.logger = logging.getLogger("democrai")  # quiet unless the caller configures logging
        ctx.logger.addHandler(logging.NullHandler())
        ctx.config = {"auth.jwt_secret": secrets.token_hex(32)}

    async def start(self) -> None:
        ctx = app_ctx()
        ctx.db = SqlitePersistenceProvider(os.path.join(self.dir.name, "democrai.db"))
        for table in (Row, PendingNotificationRecord):
            table.__table__.create(ctx.db.engine, checkfirst=True)
        self.register_module("mod", self.modules["mod"])
        self.bus = Bus()
        self.network = Network([self.bus], streams=None)  # sets ctx.task_manager and registry
        self.network._loop = asyncio.get_running_loop()  # its start() would make a thread loop
        self.network.task_manager.recover_from_db()  # what Network.start does

    async def stop(self) -> None:
        """What the platform's shutdown does (``Network.stop``): its loop stops; running tasks
        are not interrupted, and the next start's recovery finds them active."""
        ctx = app_ctx()
        if ctx.task_manager is not None:
            with contextlib.closing(ctx.db.get_session()) as db:
                active = [r.id for r in db.query(Row.id).filter(Row.status.in_(ACTIVE))]
            self.frozen.append((ctx.task_manager, active))
            ctx.task_manager = ctx.connection_registry = None
            ctx.db = SqlitePersistenceProvider(":memory:")  # a gone process writes nothing more

    async def teardown(self, rule: str) -> None:
        await self._discard()
        self.dir.cleanup()

    async def _discard(self) -> None:
        """Cancel the tasks of stopped runtimes: a stopped loop would never resume them."""
        for manager, task_ids in self.frozen:
            for task_id in task_ids:
                await manager.cancel(task_id)
        self.frozen.clear()
        await asyncio.sleep(0.001)

    async def restart(self, *, crash: bool = False) -> None:
        await self.stop()  # the platform has one way to stop, the same clean or not
        await self._discard()  # (else they would talk to the new runtime's clients)
        await self.start()

    async def settle(self) -> None:
        await asyncio.sleep(0.001)  # virtual time moves on only once every handler has run

    def authenticate(self, user_id: Any, organization_id: Any) -> str:
        return str(create_access_token({"user_id": user_id, "organization_id": organization_id}))

    def connect(self, user_id: Any, organization_id: Any = None, credentials: Any = None) -> Any:
        jwt = credentials or self.authenticate(user_id, organization_id)
        return Connection(self.bus, user_id, organization_id, jwt)

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
        return SDK(os.path.join(self.dir.name, "modules", module), module, session=session)

    def surface(self, surface: Any) -> Builder:
        builder = Builder()
        for i, c in enumerate(surface.components):
            builder.add(
                ui.Button(f"c{i}", c.label) if isinstance(c, Button) else ui.Text(f"c{i}", c.text)
            )
        return builder

    def components(self, surface: Any) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.surface(surface)._components]

    def access(self, rules: list[dict[str, Any]]) -> list[dict[str, str]]:
        """Reference rules -> the platform's manifest grants (``"rw"``: read, create, modify)."""
        grants = []
        for r in rules:
            kind, target = ("filesystem", r["path"]) if "path" in r else ("network", r["network"])
            ops = ("connect",) if kind == "network" else MODES[r.get("mode", "r")]
            grants += [{"resource_type": kind, "operation": op, "target": target} for op in ops]
        return grants

    def sandbox_value(self, name: str, value: str) -> str:
        """``DEMOCRAI_ACCESS`` (the platform's rule objects) -> reference rules, one a target."""
        if name != "MODULE_SDK_ACCESS":
            return value
        ops: dict[tuple[str, str], set[str]] = {}
        for rule in json.loads(value):
            r = rule["resource"]
            ops.setdefault((r["resource_type"], r["target"]), set()).add(r["operation"])
        mode = {frozenset(v): k for k, v in MODES.items()}
        return json.dumps([{"network": t} if kind == "network" else
                           {"path": t, **({} if op == {"read"} else {"mode": mode[frozenset(op)]})}
                           for (kind, t), op in ops.items()])  # fmt: skip

    def register_task(self, name: str, func: Any) -> None:
        task_registry.register(name, func)

    def register_module(self, name: str, access: Any) -> None:
        """A manifest per module, discovered anew: the platform reads a manifest only once."""
        self.modules[name] = access
        app_ctx().modules = ModuleManager()
        for module, grants in self.modules.items():
            folder = os.path.join(self.dir.name, "modules", module)
            os.makedirs(folder, exist_ok=True)
            manifest = {"name": module, "label": module, "allowed_imports": [], "access": grants}
            with open(os.path.join(folder, "manifest.json"), "w", encoding="utf-8") as f:
                json.dump(manifest, f)
        app_ctx().modules.discover_modules(os.path.dirname(folder), is_builtin=False, load_ui=False)


def make() -> Democrai:
    """The ``--impl`` factory: a fresh adapter (``setup()`` and ``start()`` do the work)."""
    return Democrai()
