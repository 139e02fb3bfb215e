"""The protocol's helpers for foreign adapters: ``Inbox`` and ``Surface.build``."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from taskbed import ui
from taskbed_harness import Adapter, Button, Inbox, Surface, Text


def test_an_inbox_is_a_client_connection_fed_by_the_implementation() -> None:
    sent: list[Any] = []
    closed: list[bool] = []
    inbox = Inbox(sent.append, lambda: closed.append(True))

    async def conversation() -> list[Any]:
        waiting = asyncio.ensure_future(inbox.receive())
        await asyncio.sleep(0)
        inbox.deliver({"backgroundTaskStarted": {"taskId": "t1"}})
        inbox.deliver({"backgroundTaskCompleted": {"taskId": "t1"}})
        await inbox.send({"backgroundTaskGet": {"taskId": "t1"}})
        return [await waiting, await inbox.receive()]

    received = asyncio.run(conversation())
    assert received == inbox.messages
    assert [next(iter(m)) for m in received] == ["backgroundTaskStarted", "backgroundTaskCompleted"]
    assert sent == [{"backgroundTaskGet": {"taskId": "t1"}}]
    inbox.close()
    inbox.close()
    assert inbox.closed
    assert closed == [True]  # once


def test_an_inbox_awaits_an_asynchronous_send() -> None:
    handled: list[Any] = []

    async def send(message: Any) -> None:
        await asyncio.sleep(0)
        handled.append(message)

    inbox = Inbox(send)
    asyncio.run(inbox.send({"backgroundTaskCancel": {"taskId": "t1"}}))
    assert handled == [{"backgroundTaskCancel": {"taskId": "t1"}}]
    inbox.close()  # no close callable: nothing to call
    assert inbox.closed


def test_a_surface_builds_with_any_namespace_of_the_platform_names() -> None:
    question = Surface(Text("Deploy?"), Button("Yes", value="yes"))
    assert question.build().build() == Adapter().components(question)
    assert question.build().build() == [
        ui.Text("text-0", "Deploy?").to_dict(),
        ui.Button("button-1", "Yes").to_dict(),
    ]

    class Builder(list[Any]):
        add = list.append

    made = question.build(SimpleNamespace(Builder=Builder, Text=lambda *a: a, Button=lambda *a: a))
    assert made == [("text-0", "Deploy?"), ("button-1", "Yes")]
