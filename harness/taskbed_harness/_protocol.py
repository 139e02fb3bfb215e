"""Adapter protocol v2: how a foreign implementation plugs into the conformance suite.

An implementer subclasses :class:`Adapter`, fills in the few abstract methods (``start``,
``stop``, ``request``, ``sdk``, ``connect``) and overrides a hook only where their
implementation differs from the reference. Each hook answers one assumption the suite would
otherwise make about the implementation (issue 10, points 1-9):

==========================  ============================================================
hook                        what it translates or provides (neutral default)
==========================  ============================================================
``task_id(row)``            the id of a serialized row (``taskId``, else ``id``)
``task_ids``                ``"str"`` or ``"int"``: the type of task ids
``surface(s)``              a neutral :class:`Surface` -> what ``request_confirmation``
                            takes (a ``taskbed.ui.Builder``)
``components(s)``           a neutral :class:`Surface` -> the ``components`` the client
                            receives (the reference's plain dicts)
``sandbox_names``           reference variable name -> yours, or ``None``: absent in yours
``sandbox_value(n, v)``     your variable's value -> the reference's format
``access(rules)``           reference access rules -> what your ``register_module`` takes
``connect(u, o, c)``        a client connection; :class:`Inbox` is one for an in-process
                            implementation that pushes its messages
``wait(id, timeout)``       optional: the suite polls ``observer()``'s queries otherwise
``settle()``                awaited after every client command, until it took effect
``setup(rule)``,            per rule, before ``start()`` and after ``stop()`` (always)
``teardown(rule)``
``observer()``              the SDK the suite reads rows through (not module code)
``authenticate(u, o)``      credentials for one connection, passed to ``connect``
``peer()``                  capability ``peer``: a second live runtime on the same store
==========================  ============================================================

Adapters written for protocol v1 (``taskbed_harness.Implementation``, no ``protocol``
attribute) keep working: :func:`as_adapter` wraps them in :class:`LegacyAdapter`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Protocol

from taskbed import ui

from ._client import ClientConnection

GUIDE = "docs/guides/conformance.md"

#: Every capability a rule may require. An adapter declares the ones it supports; rules that
#: need others are reported as skipped, not failed.
CAPABILITIES: Mapping[str, str] = {
    "registered_tasks": "run_background accepts names registered with register_task",
    "modules": "register_module declares a module's sandbox access rules",
    "processes": "run_subprocess starts real OS processes (POSIX: sh, echo, sleep, env)",
    "restart": "restart(crash=...) replaces the runtime by a new one over the same store",
    "peer": "peer() starts a second live runtime on the same store, beside the first",
    "leases": (
        "pause() and resume() stop and restart the runtime as SIGSTOP/SIGCONT would; "
        "lease(), lease_lost() and leases() tell the claims on the store; peer() takes "
        "clock_skew= and its peer offers the same (specs/leases.md)"
    ),
    "store_faults": (
        "break_store() makes every store write fail (an I/O error), heal_store() ends it; "
        "lock_store() holds the store's write lock from outside (specs/leases.md)"
    ),
    "websocket": "clients connect over WebSocket; the adapter offers issue_token(user, org, "
    "ttl=None), await open_socket(token, origin=None) and ws_origin (specs/transport.md)",
}

#: The reference's sandbox variable names; an adapter maps them to its implementation's names.
SANDBOX_VARIABLES = (
    "MODULE_SDK_MODULE",
    "MODULE_SDK_SUBJECT_KIND",
    "MODULE_SDK_ACCESS",
    "MODULE_SDK_USER_ID",
    "MODULE_SDK_ORGANIZATION_ID",
    "MODULE_SDK_SESSION_KEY",
    "MODULE_SDK_REQUEST_ID",
)

TASK_ID_TYPES = ("str", "int")

#: The session of the suite's observer (see ``Adapter.observer``).
OBSERVER_SESSION: Mapping[str, Any] = {
    "user": {"id": "taskbed-observer", "organization_id": None},
    "session_key": None,
}
OBSERVER_MODULE = "taskbed-observer"


class ProtocolError(TypeError):
    """An adapter that does not follow the adapter protocol; the message says what to fix."""


# ---------------------------------------------------------------- neutral confirmation surfaces


@dataclasses.dataclass(frozen=True)
class Text:
    """A paragraph of a confirmation surface (neutral: the adapter translates it)."""

    text: str


@dataclasses.dataclass(frozen=True)
class Button:
    """A button; pressing it answers the question with *value* (the label when None)."""

    label: str
    value: Any = None


@dataclasses.dataclass(frozen=True)
class Surface:
    """A confirmation surface as the suite means it: components in order."""

    components: tuple[Text | Button, ...]

    def __init__(self, *components: Text | Button) -> None:
        for component in components:
            if not isinstance(component, (Text, Button)):
                raise TypeError(f"a Surface holds Text and Button, got {component!r}")
        object.__setattr__(self, "components", tuple(components))

    def build(self, namespace: Any = ui) -> Any:
        """This surface as module code builds it with a ``ui`` namespace that has the
        platform's names: ``namespace.Builder()``, ``Text(id, text)``, ``Button(id, label)``
        (``taskbed.ui`` by default; an adapter passes its module SDK's ``ui``). The ids are
        the components' positions: ``text-0``, ``button-1``, ...
        """
        builder = namespace.Builder()
        for n, component in enumerate(self.components):
            if isinstance(component, Text):
                builder.add(namespace.Text(f"text-{n}", component.text))
            else:
                builder.add(namespace.Button(f"button-{n}", component.label))
        return builder


def reference_builder(surface: Surface) -> ui.Builder:
    """The default of ``Adapter.surface``: the reference's ``taskbed.ui.Builder``."""
    return surface.build(ui)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- an in-process client


class Inbox:
    """A client connection (``ClientConnection``) for an implementation that pushes its
    messages in process: it calls ``deliver(message)``; the client's ``send(message)`` goes
    to *send* (awaited when it returns an awaitable), and the first ``close()`` calls *close*.
    """

    def __init__(
        self, send: Callable[[dict[str, Any]], object], close: Callable[[], object] = lambda: None
    ) -> None:
        self.messages: list[dict[str, Any]] = []
        self.closed = False
        self._send = send
        self._close = close
        self._unread: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def deliver(self, message: dict[str, Any]) -> None:
        """Server to client: keep *message* and hand it to a waiting ``receive()``."""
        self.messages.append(message)
        self._unread.put_nowait(message)

    async def receive(self) -> dict[str, Any]:
        """The next message that ``receive()`` has not returned yet, waiting for it."""
        return await self._unread.get()

    async def send(self, message: dict[str, Any]) -> None:
        """Client to server: a command, handed to *send*."""
        result = self._send(message)
        if inspect.isawaitable(result):
            await result

    def close(self) -> None:
        """Disconnect (*close* is called once)."""
        if not self.closed:
            self.closed = True
            self._close()


# ---------------------------------------------------------------- the protocol


class Peer(Protocol):
    """A second live runtime on the adapter's store (``Adapter.peer()``)."""

    def request(
        self, *, session: dict[str, Any], module: str, request_id: str | None
    ) -> AbstractAsyncContextManager[Any]: ...

    def sdk(self, *, session: dict[str, Any], module: str) -> Any: ...

    def connect(self, user_id: Any, organization_id: Any = None) -> ClientConnection: ...

    async def stop(self) -> None: ...


class Adapter:
    """Base class of a protocol v2 adapter: subclass it and override what differs.

    The abstract members (``start``, ``stop``, ``request``, ``sdk``, ``connect``) raise
    ``NotImplementedError``; every hook has the neutral default that the reference needs.
    The suite calls the factory once per rule, so ``__init__`` builds nothing costly.
    """

    #: The protocol version this adapter speaks.
    protocol: ClassVar[int] = 2
    name: str = "unnamed implementation"
    capabilities: frozenset[str] = frozenset()
    deviations: Mapping[str, str] = {}
    #: Reference name -> this implementation's name; ``None`` declares the variable absent.
    sandbox_names: Mapping[str, str | None] = {name: name for name in SANDBOX_VARIABLES}
    #: The type of task ids: ``"str"`` (any string, the reference's UUID4) or ``"int"``.
    task_ids: str = "str"

    # ------------------------------------------------------------ life

    async def setup(self, rule: str) -> None:
        """Before ``start()``, once per rule (a process-global implementation resets here)."""

    async def start(self) -> None:
        """Start the task manager on the running loop."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop it: every running task is interrupted and has ended (MGR-3) before this
        returns (MGR-4); later SDK calls behave as "TaskManager not initialized". Called
        again at the end of a rule that stopped already: then it does nothing."""
        raise NotImplementedError

    async def teardown(self, rule: str) -> None:
        """After ``stop()``, once per rule, whatever happened."""

    # ------------------------------------------------------------ module side

    def request(
        self, *, session: dict[str, Any], module: str, request_id: str | None
    ) -> AbstractAsyncContextManager[Any]:
        """A block running as one request; yields the module SDK (``.tasks``)."""
        raise NotImplementedError

    def sdk(self, *, session: dict[str, Any], module: str) -> Any:
        """A module SDK outside any request."""
        raise NotImplementedError

    def connect(
        self, user_id: Any, organization_id: Any = None, credentials: Any = None
    ) -> ClientConnection:
        """A client connection of a user, authenticated with *credentials* (see
        ``authenticate``): ``messages``, ``closed``, ``receive()``, ``send()``, ``close()``."""
        raise NotImplementedError

    def register_task(self, name: str, func: Callable[..., Any]) -> None:
        """Capability ``registered_tasks``: register *func* for ``run_background(name)``."""
        raise NotImplementedError(f"{self.name} declares no 'registered_tasks' capability")

    def register_module(self, name: str, access: Any) -> None:
        """Capability ``modules``: declare a module's access rules (as ``access()`` made them)."""
        raise NotImplementedError(f"{self.name} declares no 'modules' capability")

    async def restart(self, *, crash: bool = False) -> None:
        """Capability ``restart``: a new runtime over the same store (see the guide)."""
        raise NotImplementedError(f"{self.name} declares no 'restart' capability")

    async def peer(self) -> Peer:
        """Capability ``peer``: start a second live runtime on the same store, beside this
        one, and return it; ``stop()`` stops it too."""
        raise NotImplementedError(f"{self.name} declares no 'peer' capability")

    # ------------------------------------------------------------ hooks with neutral defaults

    def task_id(self, row: Mapping[str, Any]) -> Any:
        """The task id of a serialized row."""
        return row["taskId"] if "taskId" in row else row["id"]

    def unknown_ids(self) -> tuple[Any, ...]:
        """Ids that name no task, of this implementation's id type."""
        if self.task_ids == "int":
            return (987_654_321, 2**31 - 1)
        return ("no-such-task", "", "00000000-0000-4000-8000-000000000000")

    def surface(self, surface: Surface) -> Any:
        """What ``request_confirmation`` takes for *surface*."""
        return reference_builder(surface)

    def components(self, surface: Surface) -> list[dict[str, Any]]:
        """The ``components`` of the ``backgroundTaskConfirmation`` that shows *surface*."""
        return reference_builder(surface).build()

    def sandbox_value(self, name: str, value: str) -> str:
        """Your value of the sandbox variable *name* (a reference name), in the reference's
        format (``MODULE_SDK_ACCESS``: a JSON list of access rules)."""
        return value

    def access(self, rules: list[dict[str, Any]]) -> Any:
        """Reference access rules (``{"path": ..., "mode": ...}``, ``{"network": ...}``) ->
        what your ``register_module`` takes."""
        return rules

    async def wait(self, task_id: Any, timeout: float | None = None) -> dict[str, Any]:
        """Optional. Wait until the task is terminal; its serialized row. Not overridden: the
        suite polls ``observer()``'s queries on virtual time instead."""
        raise NotImplementedError

    async def settle(self) -> None:
        """Awaited after every client command the suite sends: return once the command took
        effect or was answered (an asynchronous bus awaits its acknowledgement here)."""

    def observer(self) -> Any:
        """The SDK through which the suite reads task rows for its own bookkeeping, apart from
        the module code under test."""
        return self.sdk(session=dict(OBSERVER_SESSION), module=OBSERVER_MODULE)

    def authenticate(self, user_id: Any, organization_id: Any) -> Any:
        """Credentials for one connection of this user (a token, a cookie); the suite passes
        them to ``connect`` and never authenticates per message."""
        return None


def overrides(adapter: object, member: str) -> bool:
    """Whether *adapter* provides its own *member* rather than ``Adapter``'s default."""
    mine = getattr(type(adapter), member, None)
    return mine is not None and mine is not getattr(Adapter, member, None)


# ---------------------------------------------------------------- v1 adapters and checks

#: Protocol v1: every member, data and methods (``dir()`` of a Protocol misses the data).
V1_MEMBERS = (
    "name",
    "capabilities",
    "sandbox_names",
    "deviations",
    "start",
    "stop",
    "request",
    "sdk",
    "connect",
    "wait",
    "register_task",
    "register_module",
    "restart",
)
#: What a v2 adapter must define itself (the rest has defaults in ``Adapter``).
V2_REQUIRED = ("name", "start", "stop", "request", "sdk", "connect")


class LegacyAdapter(Adapter):
    """A protocol v1 adapter seen through protocol v2: every hook at its neutral default."""

    def __init__(self, legacy: Any) -> None:
        self.legacy = legacy
        self.name = legacy.name
        if not isinstance(legacy.capabilities, (set, frozenset)):
            raise ProtocolError(
                f"{legacy!r}: capabilities must be a frozenset such as "
                f"frozenset({{'processes'}}), got {legacy.capabilities!r} (see {GUIDE})"
            )
        self.capabilities = frozenset(legacy.capabilities)
        self.deviations = dict(legacy.deviations)
        self.sandbox_names = dict(legacy.sandbox_names)

    async def start(self) -> None:
        await self.legacy.start()

    async def stop(self) -> None:
        await self.legacy.stop()

    def request(
        self, *, session: dict[str, Any], module: str, request_id: str | None
    ) -> AbstractAsyncContextManager[Any]:
        return self.legacy.request(  # type: ignore[no-any-return]
            session=session, module=module, request_id=request_id
        )

    def sdk(self, *, session: dict[str, Any], module: str) -> Any:
        return self.legacy.sdk(session=session, module=module)

    def connect(
        self, user_id: Any, organization_id: Any = None, credentials: Any = None
    ) -> ClientConnection:
        return self.legacy.connect(user_id, organization_id)  # type: ignore[no-any-return]

    async def wait(self, task_id: Any, timeout: float | None = None) -> dict[str, Any]:
        return await self.legacy.wait(task_id, timeout)  # type: ignore[no-any-return]

    def register_task(self, name: str, func: Callable[..., Any]) -> None:
        self.legacy.register_task(name, func)

    def register_module(self, name: str, access: Any) -> None:
        self.legacy.register_module(name, access)

    async def restart(self, *, crash: bool = False) -> None:
        await self.legacy.restart(crash=crash)


def _missing(obj: object, members: Iterable[str]) -> list[str]:
    return [name for name in members if not hasattr(obj, name)]


def check_adapter(adapter: Adapter, where: str = "the adapter") -> Adapter:
    """Raise ProtocolError naming what is wrong with a v2 adapter's declarations."""
    if adapter.protocol != 2:
        raise ProtocolError(
            f"{where} declares protocol = {adapter.protocol!r}; taskbed speaks protocol 2 "
            f"(subclass taskbed_harness.Adapter; see {GUIDE})"
        )
    caps = adapter.capabilities
    if not isinstance(caps, (set, frozenset)):
        raise ProtocolError(
            f"{where}: capabilities must be a frozenset such as frozenset({{'processes'}}), "
            f"got {caps!r} (see {GUIDE})"
        )
    unknown = sorted(set(caps) - set(CAPABILITIES))
    if unknown:
        raise ProtocolError(
            f"{where} declares unknown capabilities {unknown}; the known ones are "
            f"{sorted(CAPABILITIES)} (see {GUIDE})"
        )
    names = set(adapter.sandbox_names)
    strange = sorted(names - set(SANDBOX_VARIABLES))
    if strange:
        raise ProtocolError(
            f"{where}: sandbox_names maps reference names to yours, and {strange} are not "
            f"reference names; they are {list(SANDBOX_VARIABLES)} (map a name to None when "
            f"your implementation has no such variable; see {GUIDE})"
        )
    if adapter.task_ids not in TASK_ID_TYPES:
        raise ProtocolError(
            f"{where}: task_ids is 'str' or 'int', got {adapter.task_ids!r} (see {GUIDE})"
        )
    return adapter


def as_adapter(obj: object, where: str = "the adapter") -> Adapter:
    """*obj* as a protocol v2 adapter: itself, a v1 adapter wrapped, or a ProtocolError."""
    if isinstance(obj, Adapter):
        missing = [n for n in V2_REQUIRED if n != "name" and not overrides(obj, n)]
        if missing:
            raise ProtocolError(
                f"{where} ({type(obj).__name__}) subclasses taskbed_harness.Adapter but does not "
                f"define {missing}; each is where the suite reaches your implementation "
                f"(see {GUIDE})"
            )
        return check_adapter(obj, where)
    version = getattr(obj, "protocol", None)
    if version is None and not _missing(obj, V1_MEMBERS):
        return check_adapter(LegacyAdapter(obj), where)
    if version is None:
        raise ProtocolError(
            f"{where}: {obj!r} is not an adapter: subclass taskbed_harness.Adapter "
            f"(protocol 2) and define {list(V2_REQUIRED)}; as a protocol 1 adapter it lacks "
            f"{_missing(obj, V1_MEMBERS)} (see {GUIDE})"
        )
    raise ProtocolError(
        f"{where} declares protocol = {version!r} without subclassing taskbed_harness.Adapter; "
        f"subclass it, so every hook has its default (see {GUIDE})"
    )
