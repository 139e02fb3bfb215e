"""The released platform, ``democrai`` 0.0.1b4, as a taskbed adapter (protocol v2).

It drives the platform's own SDK, task manager, connection registry, offline queue, protocol
handlers, SQLite persistence and recovery, and copies nothing. The verdict: docs/platform.md.
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
from democrai.core.runtime.foundation.app import app_ctx, request_context_scope
from democrai.core.runtime.foundation.registry import task_registry
from democrai.sdk.client import SDK
from democrai.sdk.ui import Builder, ui

from taskbed_harness import SANDBOX_VARIABLES, Adapter, Button

MODES = {"r": ("read",), "rw": ("read", "create", "modify")}  # reference mode -> operations
NAMES = (
    "NETWORK_SUBJECT",
    "NETWORK_SUBJECT_KIND",
    "ACCESS",
    "USER_ID",
    "ORGANIZATION_ID",
    "SESSION_KEY",
    None,
)  # fmt: skip  (the platform exports no request id)


class Bus:
    """The platform's ``BusProvider`` (a WebSocket bus in production): an inbox per client."""

    on_message: Any = None  # the Network sets both callbacks
    on_disconnect: Any = None
    start = stop = broadcast = lambda *_: None

    def __init__(self) -> None:
        self.clients: dict[str, Connection] = {}

    def send(self, client_id: str, message: dict[str, Any]) -> None:
        self.clients[client_id].messages.append(message)
        self.clients[client_id].inbox.put_nowait(message)


class Connection:
    """One client: messages in through the bus, commands out with the connection's JWT."""

    def __init__(self, bus: Bus, user: Any, org: Any, jwt: str) -> None:
        self.bus, self.jwt, self.id, self.closed = bus, jwt, secrets.token_hex(8), False
        self.messages: list[Any] = []
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        bus.clients[self.id] = self
        # What the platform's protocol build_context does for an authenticated client:
        app_ctx().connection_registry.register(user, bus, self.id, org)
        NotificationQueue().flush(user, lambda m: bus.send(self.id, m), org)

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
    sandbox_names: ClassVar = {
        n: d and f"DEMOCRAI_{d}" for n, d in zip(SANDBOX_VARIABLES, NAMES, strict=True)
    }

    async def setup(self, rule: str) -> None:  # the platform is process-global: reset it
        self.dir = tempfile.TemporaryDirectory(prefix="taskbed-democrai-")
        self.modules: dict[str, Any] = {"mod": []}
        self.stopped: list[tuple[Any, list[str]]] = []
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
        """As the platform's shutdown (``Network.stop``): the loop stops, no task is touched."""
        ctx = app_ctx()
        if ctx.task_manager is not None:
            with contextlib.closing(ctx.db.get_session()) as db:
                active = Row.status.in_(("pending", "running", "waiting_confirmation"))
                self.stopped.append(
                    (ctx.task_manager, [r.id for r in db.query(Row.id).filter(active)])
                )
            ctx.task_manager = ctx.connection_registry = None
            ctx.db = SqlitePersistenceProvider(":memory:")  # a gone process writes nothing more

    async def discard(self) -> None:
        """Cancel the tasks of stopped runtimes, which a stopped loop would never resume."""
        for manager, task_ids in self.stopped:
            for task_id in task_ids:
                await manager.cancel(task_id)
        self.stopped.clear()
        await asyncio.sleep(0.001)

    async def teardown(self, rule: str) -> None:  # the suite cancels what stop() left running
        self.dir.cleanup()

    async def restart(self, *, crash: bool = False) -> None:
        await self.stop()  # the platform stops one way only, so clean and crash are the same
        await self.discard()  # (else its tasks would go on talking to the new runtime's clients)
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
        scope = {"request_id": request_id, "user": user.get("id"), "channel": "bus",
                 "organization_id": user.get("organization_id"), "module_name": module,
                 "session_key": session.get("session_key")}  # fmt: skip
        with request_context_scope(scope):  # as the platform's request cycle sets it
            yield self.sdk(session=session, module=module)

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
        return [component.to_dict() for component in self.surface(surface).get_roots()]

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
        for r in (rule["resource"] for rule in json.loads(value)):
            ops.setdefault((r["resource_type"], r["target"]), set()).add(r["operation"])
        mode = {frozenset(v): k for k, v in MODES.items() if k != "r"}
        return json.dumps([{"network": t} if kind == "network" else {"path": t} | (
            {"mode": mode[frozenset(o)]} if frozenset(o) in mode else {})
            for (kind, t), o in ops.items()])  # fmt: skip

    def register_task(self, name: str, func: Any) -> None:
        task_registry.register(name, func)

    def register_module(self, name: str, access: Any) -> None:
        """A manifest per module, discovered anew: the platform reads a manifest only once."""
        self.modules[name] = access
        app_ctx().modules = ModuleManager()
        for module, grants in self.modules.items():
            os.makedirs(folder := os.path.join(self.dir.name, "modules", module), exist_ok=True)
            manifest = {"name": module, "label": module, "allowed_imports": [], "access": grants}
            with open(os.path.join(folder, "manifest.json"), "w", encoding="utf-8") as f:
                json.dump(manifest, f)
        app_ctx().modules.discover_modules(os.path.dirname(folder), is_builtin=False, load_ui=False)


def make() -> Democrai:
    """The ``--impl`` factory: a fresh adapter (``setup()`` and ``start()`` do the work)."""
    return Democrai()
