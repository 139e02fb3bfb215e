"""``taskbed serve MODULE.py``: the reference runtime on SQLite, a module's actions, a live page.

One process, one loopback port: the page (``GET /``), two small JSON endpoints, and the
WebSocket client channel (``/ws``, :mod:`taskbed.ws`) on the same port. The page lets a
person pick a user, call one of the module's actions with a JSON ``ctx``, and follow that
user's tasks as live cards (label, progress bar, status, the confirmation prompt with its
buttons, cancel), fed by the socket as the runtime sends the messages.

Actions are the module's ``@action`` functions (``from democrai.sdk.decorators import
action``: the platform's, or taskbed's stand-in where the platform is not installed) and its
undecorated ``async def name(ctx, session, module_sdk)`` functions. An action runs as one
request of the chosen user, in the module named after the file; its return value (components
serialized as the platform's) is shown as JSON.

Endpoints (GET only, loopback ``Host`` only, so a page of another site cannot use them):

``/``                             the page
``/api/actions``                  ``{"module": NAME, "actions": [NAME, ...]}``
``/api/token?user=7&org=10``      ``{"token": T, "ws": "/ws?token=T"}``: a single-use token
                                  (user and org are read as JSON: ``7`` is an int, ``a`` a str)

This is a development tool: anyone who can reach the loopback port can act as any user.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import itertools
import json
import signal
import sys
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from taskbed import Owner, Runtime, SQLiteStore
from taskbed.ws import WebSocketChannel

from ._standin import install_democrai_standin

#: Hosts ``taskbed serve`` binds to: loopback only.
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ACTION_PARAMETERS = ("ctx", "session", "module_sdk")
#: The page's own action: the user's tasks, newest first.
LIST_TASKS = "taskbed.list_tasks"

Action = Callable[[dict[str, Any], dict[str, Any], Any], Any]


class ModuleLoadError(Exception):
    """The module file could not be loaded, or it has no action."""


def load_module(path: str | Path) -> tuple[str, dict[str, Action], ModuleType]:
    """Import a module file and find its actions: ``async def f(ctx, session, module_sdk)``.

    Returns:
        ``(module name, {action name: function}, the module)``; the name is the file's stem.

    Raises:
        ModuleLoadError: the file is missing, does not import, or has no action.
    """
    file = Path(path)
    if not file.is_file():
        raise ModuleLoadError(f"no module file at {str(file)!r}; run: taskbed serve path/to/mod.py")
    name = file.stem
    spec = importlib.util.spec_from_file_location(f"taskbed_serve_{name}", file)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has one
        raise ModuleLoadError(f"cannot import {str(file)!r}")
    module = importlib.util.module_from_spec(spec)
    install_democrai_standin()  # `from democrai.sdk...` imports work (the platform wins)
    sys.path.insert(0, str(file.parent.resolve()))  # its sibling imports work as in a package
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ModuleLoadError(
            f"importing {str(file)!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        sys.path.remove(str(file.parent.resolve()))
    actions = {
        getattr(func, "action_name", None) or attr: func
        for attr, func in vars(module).items()
        if not attr.startswith("_")
        and inspect.iscoroutinefunction(func)
        and (hasattr(func, "action_name") or _is_action(func))  # @action, or the shape alone
    }
    if not actions:
        raise ModuleLoadError(
            f"{str(file)!r} has no action: write one as "
            "`async def start(ctx, session, module_sdk): ...` (see docs/guides/live-view.md)"
        )
    return name, actions, module


def _is_action(func: Callable[..., Any]) -> bool:
    try:
        names = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins have no action shape
        return False
    return names[:3] == list(ACTION_PARAMETERS)


def _jsonable(value: Any) -> Any:
    """An action's return value as JSON (components and other objects by their dict or repr)."""

    def default(obj: Any) -> Any:
        for method in ("to_dict", "model_dump", "build"):
            if callable(getattr(obj, method, None)):
                return getattr(obj, method)()
        return vars(obj) if hasattr(obj, "__dict__") else repr(obj)

    return json.loads(json.dumps(value, default=default))


class LiveServer:
    """The runtime, the module's actions and the WebSocket channel of ``taskbed serve``.

    Use ``async with LiveServer(path, db=...) as server:`` and read ``server.url``.
    """

    def __init__(self, module_path: str | Path, *, db: str | Path, host: str = "127.0.0.1",
                 port: int = 0) -> None:  # fmt: skip
        if host not in LOOPBACK:
            raise ValueError(
                f"taskbed serve listens on loopback only (127.0.0.1, localhost, ::1), not {host!r}"
            )
        self.module_name, self.actions, self.module = load_module(module_path)
        self.db = str(db)
        self.host = host
        self.port = port
        self.runtime: Runtime | None = None
        self.channel: WebSocketChannel | None = None
        self._requests = itertools.count(1)

    async def start(self) -> None:
        if self.runtime is not None:
            return
        # One server on its own file: a short lease, so that after a crash the restarted
        # server recovers the old run's tasks within seconds (liveness is the lease alone).
        self.runtime = Runtime(store=SQLiteStore(self.db), lease_seconds=5.0)
        await self.runtime.start()
        self.channel = WebSocketChannel(
            self.runtime, host=self.host, port=self.port, actions=self._call, http=self._http
        )
        await self.channel.start()
        self.port = self.channel.port

    async def stop(self) -> None:
        channel, self.channel = self.channel, None
        runtime, self.runtime = self.runtime, None
        if channel is not None:
            await channel.stop()
        if runtime is not None:
            await runtime.stop()
            runtime.store.close()

    async def __aenter__(self) -> LiveServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    # ------------------------------------------------------------ actions

    async def _call(self, owner: Owner, name: str, ctx: dict[str, Any]) -> Any:
        runtime = self.runtime
        assert runtime is not None
        user: dict[str, Any] = {"id": owner.user_id, "organization_id": owner.organization_id}
        session = {"user": user, "session_key": f"serve-{owner.user_id}"}
        if name == LIST_TASKS:
            sdk = runtime.sdk(session=session, module=self.module_name)
            return sdk.tasks.list_user_tasks(owner.user_id, owner.organization_id)
        action = self.actions.get(name) or self.actions.get(
            name.removeprefix(f"{self.module_name}.")
        )
        if action is None:
            raise LookupError(f"no action {name!r}; this module has {sorted(self.actions)}")
        request_id = f"serve-{next(self._requests)}"
        async with runtime.request(
            session=session, module=self.module_name, request_id=request_id
        ) as sdk:
            return _jsonable(await action(ctx, session, sdk))

    # ------------------------------------------------------------ plain GET

    def _http(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes] | None:
        if path == "/":
            page = resources.files("taskbed_harness").joinpath("_live_page.html").read_bytes()
            return HTTPStatus.OK, "text/html; charset=utf-8", page
        if path == "/api/actions":
            body = {"module": self.module_name, "actions": sorted(self.actions)}
            return HTTPStatus.OK, "application/json", json.dumps(body).encode()
        if path == "/api/token":
            try:
                user = _read_id(query.get("user", [""])[0])
                org = _read_id(query.get("org", [""])[0])
                if user is None:
                    raise ValueError("a user is needed")
                assert self.channel is not None
                token = self.channel.issue_token(user, org)
            except (ValueError, TypeError) as exc:
                text = f"{exc}: ask /api/token?user=7&org=10 (org may be empty)"
                return HTTPStatus.BAD_REQUEST, "text/plain; charset=utf-8", text.encode()
            body = {"token": token, "ws": f"/ws?token={token}"}
            return HTTPStatus.OK, "application/json", json.dumps(body).encode()
        return None


def _read_id(text: str) -> Any:
    """``7`` -> 7, ``"a"`` or ``a`` -> "a", empty -> None."""
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(value, int | str) and not isinstance(value, bool):
        return value
    raise ValueError(f"an id is an int or a string, got {text!r}")


async def serve_forever(module_path: str, *, db: str, host: str, port: int) -> int:
    """What ``taskbed serve`` runs: until Ctrl-C or SIGTERM."""
    try:
        server = LiveServer(module_path, db=db, host=host, port=port)
    except (ModuleLoadError, ValueError) as exc:
        print(f"taskbed serve: {exc}", file=sys.stderr)  # noqa: T201 - a CLI speaks
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
    except OSError as exc:  # the port is taken, most often
        await server.stop()
        print(  # noqa: T201 - a CLI speaks
            f"taskbed serve: cannot listen on {host}:{port}: {exc.strerror or exc}; "
            "pick another port with --port N (0 picks a free one)",
            file=sys.stderr,
        )
        return 2
    async with server:
        actions = ", ".join(sorted(server.actions))
        print(  # noqa: T201 - a CLI speaks
            f"taskbed serve: module {server.module_name!r} ({actions}); tasks in {db}\n"
            f"open {server.url}  (Ctrl-C stops)",
            flush=True,
        )
        await stop.wait()
    return 0
