"""The client channel over WebSocket: the reference runtime's real transport (``taskbed[serve]``).

This module needs the ``serve`` extra (the ``websockets`` library); ``import taskbed`` never
imports it. It fills the same ClientChannel port as the in-process registry: a socket is one
more kind of :class:`~taskbed.Connection`, registered in the runtime's ``ConnectionRegistry``,
so ownership, the offline queue and client commands follow exactly the rules of the in-process
connections (specs/ownership.md), and the transport's own rules are on specs/transport.md.

Theory of operation
===================

A client asks the server for a token (``issue_token(user, org)``, signed with HMAC, short
lived, single use) and opens ``ws://HOST:PORT/ws?token=TOKEN``. The opening handshake is
refused with an HTTP error before any WebSocket exists when the ``Origin`` header names a
site other than the server's own (WS-1) or the token is missing, forged, expired or used
(WS-2). Once open, the socket is registered for the token's owner: lifecycle messages of
that owner's tasks go out as text frames, one JSON object each, in the platform's shapes
(``{"backgroundTaskProgress": {...}}``); durable messages kept while the owner was offline
go out first, in order (WS-3).

Frames from the client are the platform's client commands (``backgroundTaskResponse``,
``backgroundTaskCancel``, ``backgroundTaskGet``), handled by the task manager with the
ownership rules of every connection, and ``userAction`` when the server has actions
(``taskbed serve``). A frame that is not JSON, not an object, or not a known command gets a
refusal in the platform's error shape, ``{"type": "error", "error": CODE, "detail": TEXT}``,
and changes nothing; a frame over ``max_frame`` bytes closes that socket with code 1009;
either way the server goes on serving everyone else (WS-4). ``{"channelSync": {"id": N}}``
is answered by ``{"channelSynced": {"id": N}}`` once every frame before it was handled: a
client that must know its command took effect (the conformance adapter) sends it after.

Each socket has a bounded outbox and a writer task, so a slow client never blocks the task
manager: when the outbox is full, progress messages (which are never kept for later) are
dropped first; a client that falls behind on durable messages too is disconnected, and its
unsent durable messages return to the offline queue. A client that sends frames without
reading the answers is closed the same way (code 1008).

Prior art: the platform's network layer (token authentication before registration, the
offline queue flushed on registration, ``{"type": "error"}`` refusals); Starlette's and
websockets' origin checks against cross-site WebSocket hijacking.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

try:
    from websockets.asyncio.server import Server, ServerConnection, serve
    from websockets.datastructures import Headers
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Request, Response
except ImportError as exc:  # pragma: no cover - exercised by hand without the extra
    raise ImportError(
        "taskbed.ws needs the serve extra: python -m pip install '<path to taskbed>[serve]'"
    ) from exc

from ._auth import TokenSigner
from ._channel import CLIENT_COMMANDS, Connection, ConnectionRegistry
from ._errors import TokenRefusedError, see
from ._model import Message, Owner

__all__ = ("ActionHandler", "HttpHandler", "SocketConnection", "WebSocketChannel")

logger = logging.getLogger("taskbed.ws")

#: Messages that the offline queue keeps (the rest are only worth something live).
DURABLE = frozenset(
    {"backgroundTaskCompleted", "backgroundTaskError", "backgroundTaskConfirmation"}
)
#: The path of the WebSocket endpoint.
WS_PATH = "/ws"

#: ``userAction`` handler: (owner, action name, ctx dict) -> a JSON-safe result.
ActionHandler = Callable[[Owner, str, dict[str, Any]], Awaitable[Any]]
#: Plain GET handler for other paths: (path, query) -> (status, content type, body) or None.
HttpHandler = Callable[[str, dict[str, list[str]]], tuple[int, str, bytes] | None]


def _error(code: str, detail: str, request_id: Any = None) -> Message:
    return {"type": "error", "error": code, "detail": detail, "request_id": request_id}


class SocketConnection(Connection):
    """A connection whose messages go out over a WebSocket, through a bounded outbox.

    Unlike the in-process ``Connection`` it keeps no history (``messages`` stays empty), so a
    long-lived socket costs a bounded amount of memory.
    """

    def __init__(self, registry: ConnectionRegistry, owner: Owner, *, limit: int) -> None:
        super().__init__(registry, owner)
        self.limit = limit
        self.outbox: deque[Message] = deque()
        self.sent = 0
        self.dropped = 0
        self.socket: ServerConnection | None = None
        self._ready = asyncio.Event()
        self._overflowed = False
        self._closing: asyncio.Future[None] | None = None

    def deliver(self, message: Message) -> None:
        if self.closed:
            return
        if len(self.outbox) >= self.limit:
            self._make_room()
        if len(self.outbox) >= self.limit:  # only durable messages left: this client is stuck
            self.outbox.append(message)  # requeued with the rest
            self.overflow("too slow: outcomes piled up unread; reconnect")
            return
        self.outbox.append(message)
        self._ready.set()

    def overflow(self, reason: str) -> None:
        """Give up on a client that does not read: unregister, keep its outcomes, close it."""
        self._overflowed = True
        self.close()
        self._requeue()
        if self.socket is not None:
            self._closing = asyncio.ensure_future(self.socket.close(1008, reason[:120]))

    def _make_room(self) -> None:
        for index, queued in enumerate(self.outbox):
            if next(iter(queued)) not in DURABLE:
                del self.outbox[index]
                self.dropped += 1
                return

    def close(self) -> None:
        """Unregister now (later durable messages are kept for the owner); the writer stops."""
        if self.closed:
            return
        super().close()
        self._ready.set()
        if self.socket is None or self._overflowed:
            self._requeue()

    def _requeue(self) -> None:
        """Give unsent durable messages back to the offline queue, if the owner is offline."""
        durable = [m for m in self.outbox if next(iter(m)) in DURABLE]
        self.outbox.clear()
        if durable and not self._registry.is_online(self.owner):
            for message in durable:
                self._registry.store.enqueue(self.owner, message)

    async def write_loop(self, socket: ServerConnection) -> None:
        """Send the outbox in order until the connection closes."""
        try:
            while True:
                while self.outbox and not self.closed:
                    message = self.outbox[0]
                    await socket.send(json.dumps(message, separators=(",", ":")))
                    if self.outbox and self.outbox[0] is message:
                        self.outbox.popleft()
                    self.sent += 1
                if self.closed:
                    return
                self._ready.clear()
                await self._ready.wait()
        except ConnectionClosed:
            self.close()
        finally:
            self._requeue()


class WebSocketChannel:
    """Serves a runtime's client channel over WebSocket on one loopback port.

    Use it as ``async with WebSocketChannel(rt) as channel:`` (or ``await channel.start()`` /
    ``await channel.stop()``) with a started ``Runtime``.

    Args:
        runtime: the runtime whose ``channel`` (ConnectionRegistry) the sockets join.
        host: the interface to bind; loopback by default (and by design of ``taskbed serve``).
        port: 0 picks a free port; read the real one from ``channel.port``.
        signer: issues and checks tokens; a fresh secret and the runtime's clock by default.
        origins: extra ``Origin`` values to accept besides the server's own
            ``http://127.0.0.1:PORT`` and ``http://localhost:PORT``. A request without an
            ``Origin`` header (not a browser) is accepted: the token is the authentication.
        max_frame: the largest client frame, in bytes; a larger one closes that socket (1009).
        max_actions: ``userAction`` calls one socket may have running at once; more are
            answered ``action_busy``.
        outbox_limit: messages waiting for a slow client before progress is dropped.
        actions: handles ``userAction`` frames (``taskbed serve``); refused when None.
        http: answers plain GET requests on other paths (``taskbed serve``'s page).
        ping_interval: keepalive pings, in seconds (None: off).
    """

    #: The connection of one socket (a seam for deliberately broken channels in our tests).
    connection_class: type[SocketConnection] = SocketConnection

    def __init__(
        self,
        runtime: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        signer: TokenSigner | None = None,
        origins: tuple[str, ...] = (),
        max_frame: int = 64 * 1024,
        max_actions: int = 8,
        outbox_limit: int = 256,
        actions: ActionHandler | None = None,
        http: HttpHandler | None = None,
        ping_interval: float | None = 20.0,
    ) -> None:
        self.runtime = runtime
        self.registry: ConnectionRegistry = runtime.channel
        self.host = host
        self.port = port
        self.signer = signer if signer is not None else TokenSigner(clock=runtime.clock)
        self.extra_origins = origins
        self.max_frame = max_frame
        self.max_actions = max_actions
        self.outbox_limit = outbox_limit
        self.actions = actions
        self.http = http
        self.ping_interval = ping_interval
        self.refusals = 0
        self._server: Server | None = None
        # the owner each accepted handshake authenticated (weak: a failed handshake leaves none)
        # the prepared connection each accepted handshake opens (by socket: no scan per socket)
        self._bound: weakref.WeakKeyDictionary[ServerConnection, SocketConnection] = (
            weakref.WeakKeyDictionary()
        )
        self._owners: weakref.WeakKeyDictionary[ServerConnection, Owner] = (
            weakref.WeakKeyDictionary()
        )
        self._prepared: dict[str, SocketConnection] = {}  # token -> registered connection
        self._expiries: dict[str, asyncio.TimerHandle] = {}  # token -> its prepared expiry
        self._sockets: set[SocketConnection] = set()

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        """Bind the port and start serving."""
        if self._server is not None:
            return
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.max_frame,
            ping_interval=self.ping_interval,
            compression=None,  # small JSON frames; per-message deflate costs more than it saves
            logger=logger,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every socket and stop listening."""
        server, self._server = self._server, None
        for conn in list(self._prepared.values()):
            conn.close()
        self._prepared.clear()
        for handle in self._expiries.values():
            handle.cancel()
        self._expiries.clear()
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> WebSocketChannel:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the server (its page, when ``http`` is set)."""
        return f"http://{self.host}:{self.port}"

    def ws_url(self, token: str) -> str:
        """The address a client opens with *token*."""
        return f"ws://{self.host}:{self.port}{WS_PATH}?token={token}"

    @property
    def connections(self) -> list[SocketConnection]:
        """The open socket connections."""
        return [c for c in self._sockets if not c.closed]

    # ------------------------------------------------------------ tokens

    def issue_token(self, user_id: Any, organization_id: Any = None) -> str:
        """A single-use token for one socket of *user_id* in *organization_id*."""
        return self.signer.issue(user_id, organization_id)

    def prepare(self, user_id: Any, organization_id: Any = None) -> tuple[str, SocketConnection]:
        """Register a connection now and return the token its socket will open it with.

        Messages for the owner from this moment on wait in the connection's outbox until the
        socket arrives, so a client that subscribes before the work starts misses nothing (what
        ``Runtime.connect()`` promises in process; the conformance adapter relies on it). If
        no socket comes before the token expires, the connection closes and durable messages
        return to the offline queue.
        """
        token = self.signer.issue(user_id, organization_id)
        conn = self.connection_class(
            self.registry, Owner(user_id, organization_id), limit=self.outbox_limit
        )
        self.registry.attach(conn)
        self._prepared[token] = conn
        self._sockets.add(conn)

        def expire() -> None:
            self._expiries.pop(token, None)
            if self._prepared.pop(token, None) is conn:
                conn.close()

        self._expiries[token] = asyncio.get_running_loop().call_later(self.signer.ttl, expire)
        return token, conn

    # ------------------------------------------------------------ handshake

    def _own_hosts(self) -> set[str]:
        return {f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"{self.host}:{self.port}"}

    def _own_origins(self) -> set[str]:
        return {f"http://{host}" for host in self._own_hosts()} | set(self.extra_origins)

    def _refuse(self, connection: ServerConnection, status: int, text: str) -> Response:
        self.refusals += 1
        logger.info("refused %s: %s", connection.remote_address, text)
        return connection.respond(status, text + "\n")

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        if url.path != WS_PATH:
            return self._serve_http(connection, url.path, query)
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self._own_origins():
            return self._refuse(
                connection,
                http.HTTPStatus.FORBIDDEN,
                f"origin {origin!r} is not allowed; open the page from {self.url} "
                f"{see('transport', 'WS-1')}",
            )
        tokens = query.get("token", [])
        try:
            owner = self.signer.verify(tokens[0] if len(tokens) == 1 else None)
        except TokenRefusedError as exc:
            return self._refuse(connection, http.HTTPStatus.UNAUTHORIZED, str(exc))
        prepared = self._prepared.pop(tokens[0], None)
        expiry = self._expiries.pop(tokens[0], None)
        if expiry is not None:
            expiry.cancel()
        if prepared is not None:
            if prepared.closed:  # closed (or expired) before its socket came
                return self._refuse(
                    connection,
                    http.HTTPStatus.GONE,
                    "this connection was closed before its socket opened; ask for a new token",
                )
            prepared.socket = connection
            self._bound[connection] = prepared
        self._owners[connection] = owner
        return None

    def _serve_http(
        self, connection: ServerConnection, path: str, query: dict[str, list[str]]
    ) -> Response:
        host = connection.request.headers.get("Host") if connection.request else None
        if self.http is not None and host not in self._own_hosts():
            # A page of another site that resolves its own name to 127.0.0.1 (DNS rebinding)
            # sends its own name as Host: it gets nothing from the plain endpoints.
            return self._refuse(
                connection, http.HTTPStatus.MISDIRECTED_REQUEST,
                f"host {host!r} is not this server; open {self.url}",
            )  # fmt: skip
        answer = self.http(path, query) if self.http is not None else None
        if answer is None:
            return connection.respond(
                http.HTTPStatus.NOT_FOUND, f"no such page: {path}; WebSocket clients use /ws\n"
            )
        status, content_type, body = answer
        response = connection.respond(status, "")
        headers = Headers(response.headers)
        for name, value in (
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ):
            if name in headers:  # Headers is a multidict: replace, do not add
                del headers[name]
            headers[name] = value
        return Response(response.status_code, response.reason_phrase, headers, body)

    # ------------------------------------------------------------ one socket

    async def _handle(self, socket: ServerConnection) -> None:
        owner = self._owners.pop(socket)
        conn = self._bound.pop(socket, None)
        if conn is None:
            conn = self.connection_class(self.registry, owner, limit=self.outbox_limit)
            conn.socket = socket
            self._sockets.add(conn)
            self.registry.attach(conn)
        writer = asyncio.create_task(conn.write_loop(socket))
        actions: set[asyncio.Task[None]] = set()
        try:
            async for frame in socket:
                await self._on_frame(conn, socket, frame, actions)
        except ConnectionClosed:
            pass
        finally:
            conn.close()
            self._sockets.discard(conn)
            for task in (*actions, writer):
                task.cancel()
            for task in (*actions, writer):
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task

    async def _on_frame(
        self,
        conn: SocketConnection,
        socket: ServerConnection,
        frame: str | bytes,
        actions: set[asyncio.Task[None]],
    ) -> None:
        try:
            message = json.loads(frame)
        except (ValueError, UnicodeDecodeError) as exc:
            await self._reply(
                conn, _error("invalid_json", f"a frame must be one JSON object: {exc}")
            )
            return
        if not isinstance(message, dict) or not message:
            await self._reply(conn, _error("invalid_message", _SHAPES))
            return
        request_id = message.get("request_id")
        if "channelSync" in message:
            body = message["channelSync"]
            await self._reply(conn, {"channelSynced": body if isinstance(body, dict) else {}})
            return
        if "userAction" in message:
            if len(actions) >= self.max_actions:  # the platform's answer to a busy action
                await self._reply(
                    conn,
                    {"ok": False, "type": "action_busy", "error": "action_busy",
                     "request_id": request_id},
                )  # fmt: skip
                return
            task = asyncio.create_task(self._run_action(conn, message))
            actions.add(task)
            task.add_done_callback(actions.discard)
            return
        command = next((k for k in message if k in CLIENT_COMMANDS), None)
        if command is None:
            await self._reply(conn, _error("unknown_message", _SHAPES, request_id))
            return
        try:
            await conn.send({command: message[command]})
        except ValueError as exc:
            await self._reply(conn, _error("invalid_command", str(exc), request_id))
        except RuntimeError:  # closed meanwhile: nothing to answer
            return

    async def _reply(self, conn: SocketConnection, message: Message) -> None:
        """An answer to this socket only; it goes through the outbox, after what is queued.

        A client that sends frames without reading the answers would grow the outbox without
        end: past its limit, the socket is closed (1008) instead.
        """
        if len(conn.outbox) >= conn.limit:
            conn.overflow("too many unread answers; read the socket")
            return
        conn.outbox.append(message)
        conn._ready.set()

    async def _run_action(self, conn: SocketConnection, message: Message) -> None:
        body = message["userAction"]
        request_id = message.get("request_id")
        if self.actions is None:
            await self._reply(conn, _error("no_actions", "this server has no actions", request_id))
            return
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            await self._reply(
                conn,
                _error(
                    "invalid_action",
                    'send {"userAction": {"name": "module.action", "context": {...}}}',
                    request_id,
                ),
            )
            return
        ctx = body.get("context", {})
        try:
            result = await self.actions(
                conn.owner, body["name"], ctx if isinstance(ctx, dict) else {}
            )
            json.dumps(result)
        except Exception as exc:  # noqa: BLE001 - an action's failure is the client's answer
            await self._reply(
                conn, _error("action_failed", f"{type(exc).__name__}: {exc}", request_id)
            )
            return
        await self._reply(
            conn,
            {"type": "actionResult", "ok": True, "name": body["name"], "result": result,
             "request_id": request_id},
        )  # fmt: skip


_SHAPES = (
    'send one JSON object such as {"backgroundTaskResponse": {"taskId": ID, "response": VALUE}}, '
    '{"backgroundTaskCancel": {"taskId": ID}}, {"backgroundTaskGet": {"taskId": ID}} or '
    '{"userAction": {"name": "module.action", "context": {...}}} ' + see("transport", "WS-4")
)
