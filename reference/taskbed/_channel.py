"""The client channel: connections of users, per-owner delivery, and the offline queue.

A lifecycle message reaches only the connections of the task's owner (same user and same
organization). A durable message (completed, error, confirmation) for an owner with no open
connection is kept in the store and delivered, in order, when the owner connects again; the
started and progress messages are not kept (OWN). Messages from a client go to the task
manager, which ignores those about tasks the sender does not own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ._errors import see
from ._model import Message, Owner, scope
from ._ports import Broadcaster, Clock, Listening, TaskStore

#: Messages a client may send, and the one key each carries.
CLIENT_COMMANDS = frozenset({"backgroundTaskResponse", "backgroundTaskCancel", "backgroundTaskGet"})
#: The commands sent on to other hosts (the one that runs the task acts on them); a Get is
#: answered here, from the store, or its sender would get one answer per host.
FORWARDED = frozenset({"backgroundTaskResponse", "backgroundTaskCancel"})

log = logging.getLogger("taskbed")

Handler = Callable[["Connection", str, dict[str, Any]], Awaitable[None]]


class Connection:
    """One client connection of a user (what a browser tab would hold).

    Attributes:
        messages: every message received, oldest first.
        received: the same messages with the clock time each arrived, ``(time, message)``.
    """

    def __init__(self, registry: ConnectionRegistry, owner: Owner) -> None:
        self._registry = registry
        self.owner = owner
        self.messages: list[Message] = []
        self.received: list[tuple[float, Message]] = []
        self.closed = False
        self._read = 0
        self._waiter: asyncio.Future[None] | None = None

    @property
    def user_id(self) -> Any:
        return self.owner.user_id

    @property
    def organization_id(self) -> Any:
        return self.owner.organization_id

    def deliver(self, message: Message) -> None:
        """Server to client: record *message* and wake a pending ``receive()``."""
        self.messages.append(message)
        self.received.append((self._registry.clock.now(), message))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def unread(self) -> list[Message]:
        """The messages that ``receive()`` has not returned yet, oldest first."""
        return self.messages[self._read :]

    async def receive(self) -> Message:
        """The next message this connection has not yet received through ``receive()``."""
        while self._read >= len(self.messages):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._read += 1
        return self.messages[self._read - 1]

    async def send(self, message: Message) -> None:
        """Client to server: a ``backgroundTaskResponse``, ``Cancel`` or ``Get`` command.

        Raises:
            ValueError: the message is not one of those, in the shape
                ``{"backgroundTaskCancel": {"taskId": "..."}}``.
            RuntimeError: the connection is closed.
        """
        if self.closed:
            raise RuntimeError("this connection is closed; open a new one with rt.connect(...)")
        command, body = _parse(message)
        await self._registry.dispatch(self, command, body)

    def close(self) -> None:
        """Disconnect; later durable messages for this owner are queued if no connection is left."""
        if not self.closed:
            self.closed = True
            self._registry.disconnect(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Connection user={self.user_id!r} org={self.organization_id!r} {state}>"


def _parse(message: object) -> tuple[str, dict[str, Any]]:
    if (
        isinstance(message, dict)
        and len(message) == 1
        and next(iter(message)) in CLIENT_COMMANDS
        and isinstance(body := next(iter(message.values())), dict)
        and isinstance(body.get("taskId"), str)
    ):
        return next(iter(message)), body
    raise ValueError(
        f"not a client command: {message!r}. Send one of "
        '{"backgroundTaskResponse": {"taskId": id, "response": {...}}}, '
        '{"backgroundTaskCancel": {"taskId": id}} or {"backgroundTaskGet": {"taskId": id}} '
        + see("ownership", "OWN-4")
    )


class ConnectionRegistry:
    """The reference ClientChannel: open connections by owner, and the offline queue.

    Over a store that is also a :class:`~taskbed._ports.Broadcaster` (PostgreSQL), every
    message also goes to the store, which sends it to the owner's connections on other hosts
    and keeps a durable one only when the owner is connected nowhere; between ``start()`` and
    ``stop()`` the messages of other hosts reach the connections here.
    """

    def __init__(self, store: TaskStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._by_owner: dict[tuple[str, str], list[Connection]] = {}
        self.handler: Handler | None = None
        self._broadcast: Broadcaster | None = store if isinstance(store, Broadcaster) else None
        self._listening: Listening | None = None
        self._remote_commands: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Receive the messages other hosts send to owners connected here (if they can)."""
        if self._broadcast is not None and self._listening is None:
            self._listening = await self._broadcast.listen(
                self._deliver_remote, self._command_remote, self.deliver_kept
            )

    async def stop(self) -> None:
        listening, self._listening = self._listening, None
        if listening is not None:
            await listening.stop()
        commands, self._remote_commands = self._remote_commands, set()
        for task in commands:
            task.cancel()
        if commands:
            await asyncio.gather(*commands, return_exceptions=True)

    def _command_remote(self, owner: Owner, command: str, body: dict[str, Any]) -> None:
        """A client command an owner sent to another host: act on it if the task runs here."""
        handler = self.handler
        if handler is None:
            return
        proxy = Connection(self, owner)  # never registered: it stands for the remote sender
        proxy.closed = True

        async def act() -> None:
            await handler(proxy, command, body)

        task = asyncio.get_running_loop().create_task(act())
        self._remote_commands.add(task)
        task.add_done_callback(self._remote_command_done)

    def _remote_command_done(self, task: asyncio.Task[None]) -> None:
        self._remote_commands.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("taskbed: a command from another host failed", exc_info=task.exception())

    def _deliver_remote(self, owner: Owner, message: Message, durable: bool) -> None:
        conns = self._by_owner.get(self._slot(owner))
        if conns:
            for conn in list(conns):
                conn.deliver(message)
        elif durable:  # the owner's connection here closed in the meantime: keep it
            self.store.enqueue(owner, message)

    @staticmethod
    def _slot(owner: Owner) -> tuple[str, str]:
        return scope(owner.user_id), scope(owner.organization_id)

    def connect(self, user_id: Any, organization_id: Any = None) -> Connection:
        """Open a connection for a user; deliver what was kept while they were offline."""
        return self.attach(Connection(self, Owner(user_id, organization_id)))

    def attach(self, conn: Connection) -> Connection:
        """Register *conn* (any Connection subclass, e.g. a socket's) and deliver its backlog."""
        conns = self._by_owner.setdefault(self._slot(conn.owner), [])
        conns.append(conn)
        if self._broadcast is not None and len(conns) == 1:
            kept = self._broadcast.join(conn.owner)
        else:
            kept = self.store.drain(conn.owner)
        for message in kept:
            conn.deliver(message)
        return conn

    def deliver_kept(self, owner: Owner) -> None:
        conns = self._by_owner.get(self._slot(owner))
        if conns:
            for message in self.store.drain(owner):
                for conn in list(conns):
                    conn.deliver(message)

    def disconnect(self, conn: Connection) -> None:
        slot = self._slot(conn.owner)
        conns = self._by_owner.get(slot, [])
        if conn in conns:
            conns.remove(conn)
        if not conns and self._by_owner.pop(slot, None) is not None and self._broadcast:
            self._broadcast.leave(conn.owner)

    def is_online(self, owner: Owner) -> bool:
        return self._slot(owner) in self._by_owner

    def wants(self, owner: Owner, *, durable: bool) -> bool:
        return (
            durable
            or (bool(self._by_owner) and self._slot(owner) in self._by_owner)
            or (self._broadcast is not None and self._broadcast.connected_elsewhere(owner))
        )

    def publish(self, owner: Owner, message: Message, *, durable: bool) -> None:
        # With no connection open at all (a batch job, a closed tab) the owner's slot, two
        # scopes, need not be computed.
        conns = self._by_owner.get(self._slot(owner)) if self._by_owner else None
        if conns:
            for conn in list(conns):
                conn.deliver(message)
        if self._broadcast is not None and (
            # Where an undelivered durable message goes is the store's decision, made in the
            # transaction that writes it; the others go only where the owner was last heard of.
            (durable and not conns) or self._broadcast.connected_elsewhere(owner)
        ):
            self._broadcast.broadcast(owner, message, durable=durable, delivered=bool(conns))
        elif durable and not conns:
            self.store.enqueue(owner, message)

    async def dispatch(self, conn: Connection, command: str, body: dict[str, Any]) -> None:
        if self.handler is not None:  # no task manager: nothing can act on it
            await self.handler(conn, command, body)
            if self._broadcast is not None and command in FORWARDED:
                self._broadcast.forward(conn.owner, command, body)
