"""What a module emitted: its actions' effects and the UI messages it published, in order.

``taskbed.emitted`` collects, as they happen, every effect of every response that
``taskbed.call_action`` returned and every message the module's code sent with
``effects.publish_*`` (from an action, a background task or a thread). Like the client's,
``expect(kind, **fields)`` consumes them in order, so a test reads like what the user saw.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any

from ._awaits import Checked
from ._client import mismatch


@dataclasses.dataclass(frozen=True, slots=True)
class Emission:
    """One thing a module emitted.

    Attributes:
        kind: an effect's ``type`` (``"notify"``, ``"ui_messages"``, ``"navigate"``...) or a UI
            message's key (``"stateUpdate"``, ``"propertyUpdate"``...).
        body: the effect dict, or the UI message's body.
        source: ``"response"`` (returned by an action) or ``"stream"`` (published live).
        stream_id: the stream of a published message (None for a response's effect).
    """

    kind: str
    body: dict[str, Any]
    source: str
    stream_id: str | None = None


def _kind_and_body(item: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(item, dict) and isinstance(item.get("type"), str):
        return item["type"], item
    if isinstance(item, dict) and len(item) == 1:
        key, body = next(iter(item.items()))
        return str(key), body if isinstance(body, dict) else {"value": body}
    return type(item).__name__, {"value": item}


class Emitted:
    """The effects and UI messages a module emitted in this test.

    Methods and attributes:
        expect(kind, *, within=None, **fields) -> dict: the next unread emission is *kind*
            with those fields (compared with ==); returns its body.
        expect_nothing(): nothing unread is left.
        items: every ``Emission``, in order; ``responses``: every action response.
        effects: the response effects; ``notifications``, ``toasts``: its ``notify`` effects
            (toasts: channel ``"toast"``); ``ui_messages``: every UI message, whether inside a
            ``ui_messages`` effect or published live.
    """

    def __init__(self, *, track: Callable[[Checked[Any]], None] | None = None) -> None:
        self._track = track  # the harness lists every expect(), to fail those never awaited
        self.items: list[Emission] = []
        self.responses: list[Any] = []
        self._read = 0
        self._arrived: asyncio.Event | None = None

    # ------------------------------------------------------------ recording

    def _add(self, emission: Emission) -> None:
        self.items.append(emission)
        if self._arrived is not None:
            self._arrived.set()

    def add_response(self, response: Any) -> None:
        """Record an action's response (``{"effects": [...]}``; anything else is kept as is)."""
        self.responses.append(response)
        effects = response.get("effects") if isinstance(response, dict) else None
        for effect in effects if isinstance(effects, list) else ():
            kind, body = _kind_and_body(effect)
            self._add(Emission(kind, body, "response"))

    def add_published(self, stream_id: str, data: Any) -> None:
        """Record a message published on a stream (``Runtime.stream_listeners`` calls it)."""
        kind, body = _kind_and_body(data)
        self._add(Emission(kind, body, "stream", stream_id))

    # ------------------------------------------------------------ views

    @property
    def effects(self) -> list[dict[str, Any]]:
        return [e.body for e in self.items if e.source == "response"]

    @property
    def notifications(self) -> list[dict[str, Any]]:
        return [e.body for e in self.items if e.kind == "notify"]

    @property
    def toasts(self) -> list[dict[str, Any]]:
        """The payloads of the ``notify("toast", payload)`` effects."""
        return [n.get("payload", {}) for n in self.notifications if n.get("channel") == "toast"]

    @property
    def ui_messages(self) -> list[dict[str, Any]]:
        """Every UI message (``{"stateUpdate": {...}}``...), from effects and from streams."""
        messages: list[dict[str, Any]] = []
        for e in self.items:
            if e.kind == "ui_messages" and isinstance(e.body.get("messages"), list):
                messages.extend(e.body["messages"])
            elif e.source == "stream":
                messages.append({e.kind: e.body})
        return messages

    @property
    def unread(self) -> list[Emission]:
        return self.items[self._read :]

    def _transcript(self) -> str:
        lines = ["what the module emitted:"]
        for index, e in enumerate(self.items):
            where = f"stream {e.stream_id!r}" if e.source == "stream" else "response"
            mark = "  " if index >= self._read else "x "
            lines.append(f"  {mark}[{index}] {where}: {e.kind} {json.dumps(e.body, default=repr)}")
        if len(lines) == 1:
            lines.append("  (nothing)")
        return "\n".join(lines)

    # ------------------------------------------------------------ assertions

    def expect(self, kind: str, /, *, within: float | None = None, **fields: Any) -> Any:
        """The next unread emission must be *kind* with *fields*; returns its body.

        With *within*, waits up to that many (virtual) seconds for it to be emitted (by a
        background task, say). Returns an awaitable; under the harness, one that is never
        awaited fails the test.
        """
        coro = self._expect(kind, within, fields)
        if self._track is None:
            return coro
        shown = ", ".join([repr(kind), *(f"{k}={v!r}" for k, v in fields.items())])
        check = Checked(coro, f"emitted.expect({shown[:110]})")
        self._track(check)
        return check

    async def _expect(self, kind: str, within: float | None, fields: dict[str, Any]) -> Any:
        if self._read >= len(self.items) and within is not None:
            self._arrived = asyncio.Event()
            try:
                async with asyncio.timeout(within):
                    await self._arrived.wait()
            except TimeoutError:
                pass
            finally:
                self._arrived = None
        if self._read >= len(self.items):
            raise AssertionError(
                f"expected the module to emit {kind}{f' {fields}' if fields else ''}"
                f"{f' within {within} s' if within is not None else ''}, but nothing more was "
                "emitted\n" + self._transcript()
            )
        emission = self.items[self._read]
        wrong = mismatch(kind, fields, emission.kind, emission.body)
        if wrong is not None:
            raise AssertionError(wrong + self._transcript())
        self._read += 1
        return emission.body

    def expect_nothing(self) -> None:
        """Fail if anything emitted is still unread."""
        if self.unread:
            raise AssertionError("expected nothing more to be emitted\n" + self._transcript())

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"<Emitted {len(self.items)} items, {len(self.unread)} unread>"
