"""A client connection over a real WebSocket, in the shape the suite's ``ClientView`` expects.

``SocketClient`` opens ``ws://...`` with a token and keeps every frame it receives in
``messages`` (a reader task appends them as they arrive), so the suite's ``expect``,
``respond``, ``cancel`` and ``get`` work across the socket as they do in process. ``send()``
returns once the server has handled the command: it follows the command with a
``channelSync`` frame and waits for the server's ``channelSynced`` answer, which the server
sends only after every earlier frame (specs/transport.md, WS-4); sync answers are not shown
in ``messages``.

Needs the ``serve`` extra (``websockets``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

Message = dict[str, Any]


class SocketRefusedError(ConnectionRefusedError):
    """The server refused the opening handshake; ``status`` is its HTTP status code."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status
        self.text = text


def _held_time() -> contextlib.AbstractContextManager[None]:
    """On the harness's virtual loop, hold virtual time still (``external_work``)."""
    hold = getattr(asyncio.get_running_loop(), "external_work", None)
    return hold() if hold is not None else contextlib.nullcontext()


#: Real seconds a held wait may last; past that it is an error, never a hang.
HELD_LIMIT = 30.0


async def _held_until(future: asyncio.Future[Any], what: str) -> Any:
    """Await *future* with virtual time held, polling, for at most ``HELD_LIMIT`` real seconds.

    While time is held the loop cannot fire a timeout, so the bound is counted here, on the
    real clock; each ``sleep(0)`` lets the loop poll the socket once.
    """
    if getattr(asyncio.get_running_loop(), "external_work", None) is None:
        return await future  # a plain loop: its own timeouts apply
    deadline = time.monotonic() + HELD_LIMIT
    with _held_time():
        while not future.done():
            if time.monotonic() > deadline:
                future.cancel()
                raise ConnectionError(f"no {what} within {HELD_LIMIT:.0f} s (real time)")
            await asyncio.sleep(0)
    return future.result()


class SocketClient:
    """One user's WebSocket connection to a ``taskbed.ws.WebSocketChannel``.

    Args:
        url: ``ws://HOST:PORT/ws?token=TOKEN``.
        now: where arrival times come from (the loop's virtual clock in the suite).
        on_close: called once by ``close()``, before the socket closes (the adapter
            unregisters the server side there, as an in-process ``close()`` does at once).
        origin: the ``Origin`` header to send, if any (a browser always sends one).
    """

    def __init__(
        self,
        url: str,
        *,
        now: Callable[[], float] = time.time,
        on_close: Callable[[], None] | None = None,
        origin: str | None = None,
    ) -> None:
        self.url = url
        self.messages: list[Message] = []
        self.received: list[tuple[float, Message]] = []
        self.refusals: list[Message] = []
        self.closed = False
        self._now = now
        self._on_close = on_close
        self._origin = origin
        self._read = 0
        self._arrived = asyncio.Event()
        self._sync_ids = itertools.count(1)
        self._synced: dict[int, asyncio.Future[None]] = {}
        self._socket: ClientConnection | None = None
        self._opened: asyncio.Task[ClientConnection] = asyncio.create_task(self._open())
        self._reader: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None

    async def _open(self) -> ClientConnection:
        headers = {"Origin": self._origin} if self._origin else None
        opening = asyncio.ensure_future(
            connect(
                self.url, additional_headers=headers, ping_interval=None, compression=None,
                max_size=None, open_timeout=None,
            )
        )  # fmt: skip
        try:  # the handshake is real I/O: virtual time must not jump over it
            socket: ClientConnection = await _held_until(opening, "the opening handshake")
        except InvalidStatus as exc:
            response = exc.response
            text = response.body.decode("utf-8", "replace").strip() if response.body else ""
            raise SocketRefusedError(response.status_code, text) from None
        self._socket = socket
        self._reader = asyncio.create_task(self._read_loop(socket))
        return socket

    async def _read_loop(self, socket: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in socket:
                message = json.loads(frame)
                synced = message.get("channelSynced") if isinstance(message, dict) else None
                if isinstance(synced, dict) and synced.get("id") in self._synced:
                    waiter = self._synced.pop(synced["id"])
                    if not waiter.done():
                        waiter.set_result(None)
                    continue
                if message.get("type") == "error":
                    self.refusals.append(message)
                self.messages.append(message)
                self.received.append((self._now(), message))
                self._arrived.set()
        self._arrived.set()
        for waiter in self._synced.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("the server closed the socket"))

    async def opened(self) -> None:
        """Wait until the opening handshake is done (raises the refusal, if refused)."""
        await self._opened

    async def receive(self) -> Message:
        """The next message that ``receive()`` has not returned yet.

        Before it waits, it lets everything the server already sent arrive (a ``sync()``
        round trip, with virtual time held): a message in flight on the socket is received,
        not overtaken by a virtual timeout around the wait.
        """
        synced = False
        while self._read >= len(self.messages):
            if self._reader is not None and self._reader.done():
                raise ConnectionError(f"the socket is closed; {len(self.messages)} received")
            await self._opened
            if not synced and not self.closed:
                synced = True
                await self.sync()
                continue
            self._arrived.clear()
            await self._arrived.wait()
        self._read += 1
        return self.messages[self._read - 1]

    async def send_raw(self, frame: str | bytes) -> None:
        """Send one frame as it is (for bad-input tests), without waiting for the server."""
        socket = await self._opened
        await socket.send(frame)

    async def sync(self) -> None:
        """Return once the server has handled every frame sent before."""
        socket = await self._opened
        sync_id = next(self._sync_ids)
        waiter = asyncio.get_running_loop().create_future()
        self._synced[sync_id] = waiter
        try:
            if self._reader is None or self._reader.done():
                raise ConnectionError("the server closed the socket")
            await socket.send(json.dumps({"channelSync": {"id": sync_id}}))
            # the answer is on its way: no virtual timeout may fire first
            await _held_until(waiter, "the server's channelSynced answer")
        except ConnectionClosed as exc:
            raise ConnectionError(f"the server closed the socket: {exc}") from None
        finally:
            self._synced.pop(sync_id, None)

    async def send(self, message: Message) -> None:
        """Send a client command and return once the server has handled it."""
        if self.closed:
            raise RuntimeError("this connection is closed; open a new one with connect(...)")
        socket = await self._opened
        await socket.send(json.dumps(message))
        await self.sync()

    def close(self) -> None:
        """Disconnect: the server side is told at once (``on_close``); the socket follows."""
        if self.closed:
            return
        self.closed = True
        if self._on_close is not None:
            self._on_close()
        if not self._opened.done():
            self._opened.cancel()
        self._closing = asyncio.create_task(self.aclose())

    async def wait_closed(self) -> None:
        """Wait until the socket is closed (by the server); what arrived stays readable."""
        if not self._opened.done():
            self._opened.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._opened
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def aclose(self) -> None:
        """Close the socket and wait for the reader to finish."""
        self.closed = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            socket = await self._opened
            await socket.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<SocketClient {self.url.split('?')[0]} {state} {len(self.messages)} messages>"
