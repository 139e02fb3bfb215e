"""The fake client: a user's connection in a test, with assertions that explain themselves."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from ._awaits import Checked

Message = dict[str, Any]


class ClientConnection(Protocol):
    """What a client connection of any implementation offers (the reference: ``Connection``)."""

    messages: list[Message]
    closed: bool

    async def receive(self) -> Message: ...

    async def send(self, message: Message) -> None: ...

    def close(self) -> None: ...


def _kind(message: Message) -> str:
    return next(iter(message))


def _body(message: Message) -> dict[str, Any]:
    body = next(iter(message.values()))
    return body if isinstance(body, dict) else {"value": body}


class ClientView:
    """One user's client: what their connection received, and what they can send.

    Every message is kept with the (virtual) time it arrived. ``expect`` and
    ``expect_nothing`` consume messages in order, so a test reads like the conversation.

    Methods:
        expect(kind, *, within=None, **fields) -> dict: the next message is *kind* with those
            body fields (camelCase, compared with ==); returns its body.
        expect_nothing(within): no message arrives during *within* seconds of virtual time.
        respond(task_id, response), cancel(task_id): send a client command as this user
            (with ``settle``, the adapter's hook, awaited after each command).
        get(task_id) -> dict: ask for a snapshot of the task and return the reply message.
        settle(): wait until every message already sent to this client has arrived (a
            transport delivers later than a call returns; in process this is at once).
        disconnect(), reconnect(): go offline (durable messages are kept) and come back.
        messages, kinds, bodies(kind), timeline: what was received, over all connections.
    """

    def __init__(
        self,
        connect: Callable[[Any, Any], ClientConnection],
        user_id: Any,
        organization_id: Any,
        *,
        settle: Callable[[], Awaitable[None]] | None = None,
        track: Callable[[Checked[Any]], None] | None = None,
    ) -> None:
        self._connect = connect
        self._settle = settle
        self._track = track  # the harness lists every check, to fail those never awaited
        self.user_id = user_id
        self.organization_id = organization_id
        self._connections: list[ClientConnection] = []
        self._read = 0  # messages of the current connection that expect() has consumed
        self._open()

    def _open(self) -> None:
        self._connections.append(self._connect(self.user_id, self.organization_id))
        self._read = 0

    @property
    def connection(self) -> ClientConnection:
        return self._connections[-1]

    @property
    def online(self) -> bool:
        return not self.connection.closed

    # ------------------------------------------------------------ what was received

    @property
    def timeline(self) -> list[tuple[float, Message]]:
        """``(time, message)`` pairs; the time is NaN where the connection keeps no times."""
        items: list[tuple[float, Message]] = []
        for conn in self._connections:
            stamped = getattr(conn, "received", None)
            items.extend(stamped if stamped is not None else ((math.nan, m) for m in conn.messages))
        return items

    @property
    def unread(self) -> list[Message]:
        """Messages of the current connection that ``expect`` has not consumed yet."""
        return self.connection.messages[self._read :]

    @property
    def messages(self) -> list[Message]:
        return [message for _, message in self.timeline]

    @property
    def kinds(self) -> list[str]:
        return [_kind(m) for m in self.messages]

    def bodies(self, kind: str) -> list[dict[str, Any]]:
        return [_body(m) for m in self.messages if _kind(m) == kind]

    def _transcript(self) -> str:
        lines = [f"messages received by user {self.user_id!r} (org {self.organization_id!r}):"]
        for index, (at, message) in enumerate(self.timeline):
            lines.append(f"  [{index}] t={at:.6f} {_kind(message)} {_json(_body(message))}")
        if len(lines) == 1:
            lines.append("  (none)")
        return "\n".join(lines)

    # ------------------------------------------------------------ assertions

    def _checked(self, coro: Coroutine[Any, Any, Any], what: str) -> Any:
        if self._track is None:
            return coro
        check = Checked(coro, what)
        self._track(check)
        return check

    def expect(self, kind: str, /, *, within: float | None = None, **fields: Any) -> Any:
        """Wait for the next unread message and check that it is *kind* with *fields*.

        Returns an awaitable (``await client.expect(...)``) whose result is the message body.
        Under the harness, one that is never awaited fails the test.
        """
        shown = ", ".join([repr(kind), *(f"{k}={v!r}" for k, v in fields.items())])
        return self._checked(self._expect(kind, within, fields), f"expect({_trim(shown)})")

    def expect_nothing(self, within: float) -> Any:
        """Let *within* seconds of virtual time pass; fail if any message arrives meanwhile.

        Returns an awaitable; under the harness, one that is never awaited fails the test.
        """
        return self._checked(self._expect_nothing(within), f"expect_nothing({within!r})")

    async def _expect(self, kind: str, within: float | None, fields: dict[str, Any]) -> Any:
        if not self.online:
            raise AssertionError("this client is disconnected; call reconnect() first")
        try:
            async with asyncio.timeout(within):
                message = await self.connection.receive()
            self._read += 1
        except TimeoutError:
            raise AssertionError(
                f"expected {kind}{f' {fields}' if fields else ''} within {within} s, "
                "but nothing arrived\n" + self._transcript()
            ) from None
        body = _body(message)
        wrong = mismatch(kind, fields, _kind(message), body)
        if wrong is not None:
            raise AssertionError(wrong + self._transcript())
        return body

    async def _expect_nothing(self, within: float) -> None:
        await asyncio.sleep(within)
        if self.unread:
            shown = "\n".join(f"  {_kind(m)} {_json(_body(m))}" for m in self.unread)
            raise AssertionError(
                f"expected no message within {within} s, but these are unread:\n{shown}"
            )

    # ------------------------------------------------------------ sending

    async def send(self, message: Message) -> None:
        """Send a client command and, on an asynchronous bus, await its effect (``settle``)."""
        await self.connection.send(message)
        if self._settle is not None:
            await self._settle()

    async def respond(self, task_id: Any, response: Any) -> None:
        await self.send({"backgroundTaskResponse": {"taskId": task_id, "response": response}})

    async def cancel(self, task_id: Any) -> None:
        await self.send({"backgroundTaskCancel": {"taskId": task_id}})

    async def get(self, task_id: Any) -> Message | None:
        """Ask for the task's snapshot and return the reply (None for a task this user cannot see).

        The reply also stays in the message stream, where ``expect`` will meet it.
        """
        await self.settle()
        before = len(self.connection.messages)
        await self.send({"backgroundTaskGet": {"taskId": task_id}})
        for message in self.connection.messages[before:]:  # a socket may carry others too
            if _body(message).get("taskId") == task_id:
                return message
        return None

    async def settle(self) -> None:
        """Wait until every message already sent to this client has arrived.

        In process that is at once; a connection across a transport (the WebSocket client)
        offers ``sync()``, a round trip that returns after everything sent before it; an
        adapter on an asynchronous bus gives its own ``settle`` hook.
        """
        sync = getattr(self.connection, "sync", None)
        if sync is not None and self.online:
            await sync()
        elif self._settle is not None:
            await self._settle()
        else:
            await asyncio.sleep(0)

    # ------------------------------------------------------------ presence

    def disconnect(self) -> None:
        self.connection.close()

    def reconnect(self) -> ClientConnection:
        if self.online:
            raise RuntimeError("this client is already connected")
        self._open()
        return self.connection

    def __repr__(self) -> str:
        who = f"user={self.user_id!r} org={self.organization_id!r}"
        return f"<ClientView {who} {len(self.messages)} messages>"


_MISSING = object()


def mismatch(kind: str, fields: dict[str, Any], got_kind: str, body: dict[str, Any]) -> str | None:
    """What differs between the expected *kind* / *fields* and what came, or None if nothing.

    Shared by the client's and the emitted view's ``expect``: fields compare with ``==``. A
    ``backgroundTaskError`` that came instead shows the task's error as raised, line by line.
    """
    wrong = {k: v for k, v in fields.items() if body.get(k, _MISSING) != v}
    if got_kind == kind and not wrong:
        return None
    diff = "\n".join(
        f"    {k}: expected {v!r}, got {body.get(k, '<missing>')!r}" for k, v in wrong.items()
    )
    return (
        f"expected {kind} with {fields}\n"
        f"     got {got_kind} {_json(body)}\n"
        + (f"  differing fields:\n{diff}\n" if diff else "")
        + _failure(got_kind, body)
    )


def _json(body: dict[str, Any]) -> str:
    """A message body on one line, non-ASCII text as it is (``été``, not ``\\u00e9t\\u00e9``)."""
    return json.dumps(body, ensure_ascii=False, default=repr)


def _failure(kind: str, body: dict[str, Any]) -> str:
    """For a ``backgroundTaskError``, the task's error as the task raised it, line by line."""
    if kind != "backgroundTaskError":
        return ""
    error = body.get("error")
    text = error if isinstance(error, str) else repr(error)
    block = "\n".join(f"    {line}" for line in text.splitlines() or [""])
    return f"  the task failed with:\n{block}\n"


def _trim(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
