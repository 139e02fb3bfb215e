"""The reference runtime judged across a real WebSocket (``taskbed conform --impl reference-ws``).

Every client of the suite (``client``, ``connect(user, org)``) is a ``SocketClient`` that
opened ``ws://127.0.0.1:PORT/ws`` with a signed token: lifecycle messages reach it as frames,
its commands (respond, cancel, get) travel as frames and are handled by the server's task
manager with the ownership rules. Two things happen in process, as ``Runtime.connect()``
promises them there and a test must not depend on timing:

- ``connect()`` registers the server side at once (``WebSocketChannel.prepare``): messages
  published before the socket's handshake completes wait in its outbox and then cross the
  socket, in order;
- ``close()`` unregisters the server side at once, so a durable message published right after
  goes to the offline queue instead of to a socket that is going away.

Needs the ``serve`` extra (``websockets``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from taskbed import Runtime
from taskbed.ws import WebSocketChannel

from ._adapters import CAPABILITIES, ReferenceImplementation
from ._ws_client import SocketClient


class ReferenceWebSocketImplementation(ReferenceImplementation):
    """The reference runtime whose clients connect over loopback WebSocket."""

    name = "reference-ws"
    capabilities = frozenset(CAPABILITIES)
    deviations: Mapping[str, str] = {
        "BG-7": "its check of a cancel before the task's first step needs the cancel to act "
        "within the submitting call's loop iteration; a cancel across a socket arrives after "
        "the task has started (cancelling a running or waiting task is judged by BG-8 and CONF-5)",
    }

    #: The server class (a seam for deliberately broken channels in the suite's own tests).
    channel_class: type[WebSocketChannel] = WebSocketChannel

    def __init__(self, *, postgres: str | None = None) -> None:
        super().__init__(postgres=postgres)
        self._server: WebSocketChannel | None = None
        self._clients: list[SocketClient] = []

    async def _serve(self, runtime: Runtime) -> None:
        self._server = self.channel_class(runtime, ping_interval=None)
        await self._server.start()

    async def start(self) -> None:
        await super().start()
        await self._serve(self.runtime)

    async def stop(self) -> None:
        # As in process, a client stays readable after stop(): what the stopping runtime said
        # (the error of each task it interrupted, MGR-3) crosses the sockets before they close.
        if self._runtime is not None:
            await self._runtime.stop()
        for client in self._clients:
            if not client.closed:
                with contextlib.suppress(Exception):
                    await client.sync()
        server, self._server = self._server, None
        if server is not None:
            await server.stop()  # the sockets close; unsent outcomes go back to the store
        clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                await client.wait_closed()
        await super().stop()

    async def _close_clients(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            client.closed = True
            with contextlib.suppress(Exception):
                await client.aclose()

    async def restart(self, *, crash: bool = False) -> None:
        # The sockets belong to the old server: a client reconnects to the new one.
        await self._close_clients()
        if self._server is not None:
            await self._server.stop()
        await super().restart(crash=crash)
        await self._serve(self.runtime)

    # ------------------------------------------------------------ capability "websocket"

    @property
    def server(self) -> WebSocketChannel:
        if self._server is None:
            raise RuntimeError("the implementation is not started; await start() first")
        return self._server

    @property
    def ws_origin(self) -> str:
        """The server's own origin (what a browser sends from its page)."""
        return self.server.url

    def issue_token(
        self, user_id: Any, organization_id: Any = None, ttl: float | None = None
    ) -> str:
        """A single-use token for one socket of the user."""
        return self.server.signer.issue(user_id, organization_id, ttl=ttl)

    async def open_socket(self, token: str, *, origin: str | None = None) -> SocketClient:
        """Open a raw socket with *token* (raises ``SocketRefusedError`` when refused)."""
        client = SocketClient(self.server.ws_url(token), now=self._now(), origin=origin)
        self._clients.append(client)
        await client.opened()
        return client

    def _now(self) -> Callable[[], float]:
        clock = getattr(asyncio.get_running_loop(), "clock", None)
        return clock.now if clock is not None else self.runtime.clock.now

    def connect(
        self, user_id: Any, organization_id: Any = None, credentials: Any = None
    ) -> SocketClient:
        server = self._server
        if server is None:
            raise RuntimeError("the implementation is not started; await start() first")
        token, conn = server.prepare(user_id, organization_id)
        client = SocketClient(server.ws_url(token), now=self._now(), on_close=conn.close)
        self._clients.append(client)
        return client


def reference_ws() -> ReferenceWebSocketImplementation:
    """``--impl reference-ws``: the reference runtime, its clients over WebSocket."""
    return ReferenceWebSocketImplementation()
