"""The released platform, ``democrai`` 0.0.1b4, as a taskbed adapter (protocol v2).

It drives the platform's own SDK, task manager, connection registry, offline queue, protocol
handlers, SQLite persistence and recovery, and copies nothing. The verdict: docs/platform.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from democrai.core.application.auth.jwt import create_access_token
from democrai.core.application.tasks import models
from democrai.core.application.tasks.notification_queue import NotificationQueue
from democrai.core.infrastructure.database.providers.sqlite import SqlitePersistenceProvider
from democrai.core.infrastructure.modules.manager import ModuleManager
from democrai.core.infrastructure.network import Network
from democrai.core.infrastructure.network.contracts import BusProvider
from democrai.core.runtime.foundation.app import app_ctx, request_context_scope
from democrai.core.runtime.foundation.registry import task_registry
from democrai.sdk import SDK
from democrai.sdk.ui import Builder

from taskbed_harness import SANDBOX_VARIABLES, Adapter, Inbox, Surface

Row = models.BackgroundTaskRecord
MODES = {"r": ("read",), "rw": ("read", "create", "modify")}  # reference mode -> operations
# The platform's names of the reference's sandbox variables, in order; it has no request id.
NAMES = "NETWORK_SUBJECT NETWORK_SUBJECT_KIND ACCESS USER_ID ORGANIZATION_ID SESSION_KEY"
logging.getLogger("democrai").addHandler(logging.NullHandler())  # quiet unless configured


class Bus(BusProvider):
    """The platform's bus (a WebSocket one in production), in process: a client's id is its
    inbox, which the platform keys its registry and handlers by and sends to."""

    start = stop = broadcast = lambda *_: None  # the Network sets on_message, on_disconnect

    def send(self, client_id: Inbox, message: dict[str, Any]) -> None:
        client_id.deliver(message)


class Democrai(Adapter):
    name = "democrai 0.0.1b4"
    capabilities = frozenset({"registered_tasks", "modules", "processes", "restart"})
    sandbox_names: ClassVar = dict(
        zip(SANDBOX_VARIABLES, [*(f"DEMOCRAI_{n}" for n in NAMES.split()), None], strict=True)
    )

    async def setup(self, rule: str) -> None:  # the platform is process-global: reset it
        self.dir = tempfile.TemporaryDirectory(prefix="taskbed-democrai-")
        app_ctx().logger = logging.getLogger("democrai")
        app_ctx().config = {"auth.jwt_secret": secrets.token_hex(32)}
        self.register_module("mod", [])  # ModuleManager is process-global too: kept by restart

    async def start(self) -> None:
        ctx = app_ctx()
        ctx.db = SqlitePersistenceProvider(str(Path(self.dir.name, "democrai.db")))
        for table in (Row, models.PendingNotificationRecord):
            table.__table__.create(ctx.db.engine, checkfirst=True)
        self.bus = Bus()
        self.network = Network([self.bus], streams=None)  # sets ctx.task_manager and registry
        # The one private name left: Network.start() would run its own loop, in a thread.
        self.network._loop = asyncio.get_running_loop()
        self.network.task_manager.recover_from_db()  # what Network.start does

    async def stop(self) -> None:
        """As the platform's shutdown (``Network.stop``): the loop stops, no task is touched."""
        ctx = app_ctx()
        if ctx.task_manager is not None:  # a second stop() does nothing
            with contextlib.closing(ctx.db.get_session()) as db:
                active = Row.status.in_(("pending", "running", "waiting_confirmation"))
                self.stopped = ctx.task_manager, [r.id for r in db.query(Row.id).filter(active)]
            ctx.task_manager = ctx.connection_registry = None
            ctx.db = SqlitePersistenceProvider(":memory:")  # a gone process writes nothing more

    async def restart(self, *, crash: bool = False) -> None:
        await self.stop()  # the platform stops one way only, so clean and crash are the same
        manager, active = self.stopped
        for task_id in active:  # a stopped loop never resumes them: cancelled, they cannot
            await manager.cancel(task_id)  # talk to the new runtime's clients
        await asyncio.sleep(0.001)
        await self.start()

    async def teardown(self, rule: str) -> None:  # the suite cancels what stop() left running
        self.dir.cleanup()

    async def settle(self) -> None:
        await asyncio.sleep(0.001)  # virtual time moves on only once every handler has run

    def authenticate(self, user_id: Any, organization_id: Any) -> str:
        return str(create_access_token({"user_id": user_id, "organization_id": organization_id}))

    def connect(self, user_id: Any, organization_id: Any = None, credentials: Any = None) -> Inbox:
        """A client whose commands carry its JWT (handled on the loop, later), registered and
        sent its queued messages as the platform's ``build_context`` does for a client."""
        bus = self.bus

        def send(message: dict[str, Any]) -> None:
            bus.on_message(inbox, {**message, "jwt": credentials})

        inbox = Inbox(send, lambda: bus.on_disconnect(inbox))
        app_ctx().connection_registry.register(user_id, bus, inbox, organization_id)
        NotificationQueue().flush(user_id, inbox.deliver, organization_id)
        return inbox

    @contextlib.asynccontextmanager
    async def request(self, *, session: dict[str, Any], module: str, request_id: str | None):
        user = session.get("user") or {}
        scope = {
            "request_id": request_id,
            "user": user.get("id"),
            "organization_id": user.get("organization_id"),
            "module_name": module,
            "session_key": session.get("session_key"),
            "channel": "bus",
        }
        with request_context_scope(scope):  # as the platform's request cycle sets it
            yield self.sdk(session=session, module=module)

    def sdk(self, *, session: dict[str, Any], module: str) -> Any:
        return SDK(str(Path(self.dir.name, "modules", module)), module, session=session)

    def surface(self, surface: Surface) -> Builder:  # as module code builds it, with the SDK's
        return surface.build(self.observer().ui)  # ui; the default components are its dicts

    def sandbox_value(self, name: str, value: str) -> str:
        """``DEMOCRAI_ACCESS`` (the platform's rule objects) -> reference rules, one a target."""
        if name != "MODULE_SDK_ACCESS":
            return value
        rules: dict[tuple[str, str], dict[str, str]] = {}
        for r in (rule["resource"] for rule in json.loads(value)):
            key = "network" if r["resource_type"] == "network" else "path"
            rule = rules.setdefault((key, r["target"]), {key: r["target"]})
            if r["operation"] in ("create", "modify"):
                rule["mode"] = "rw"
        return json.dumps(list(rules.values()))

    register_task = staticmethod(task_registry.register)

    def register_module(self, name: str, access: list[dict[str, Any]]) -> None:
        """A manifest per module, its access rules as the platform's grants, all discovered
        anew (the platform reads a manifest once)."""
        grants = []
        for r in access:  # reference mode "rw": the platform's read, create and modify
            kind, target = ("filesystem", r["path"]) if "path" in r else ("network", r["network"])
            ops = ("connect",) if kind == "network" else MODES[r.get("mode", "r")]
            grants += [{"resource_type": kind, "operation": op, "target": target} for op in ops]
        (folder := Path(self.dir.name, "modules", name)).mkdir(parents=True, exist_ok=True)
        manifest = {"name": name, "label": name, "allowed_imports": [], "access": grants}
        (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        app_ctx().modules = ModuleManager()
        app_ctx().modules.discover_modules(str(folder.parent), is_builtin=False, load_ui=False)


make = Democrai  # the ``--impl`` factory: a fresh adapter (``setup()``, ``start()`` do the work)
