"""The WebSocket client channel (taskbed.ws) on a real loopback socket and the real clock.

The spec page specs/transport.md states the rules and is judged through the reference-ws
adapter (tests/test_teeth.py); these tests pin what the page cannot reach: the exact refusals,
tokens on their own, slow clients, the prepared connection's expiry, actions, and a server
that keeps serving after each kind of bad input.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from taskbed import MemoryStore, Owner, Runtime, TokenRefusedError, TokenSigner
from taskbed.ws import SocketConnection, WebSocketChannel
from taskbed_harness import SocketClient, SocketRefusedError


class StepClock:
    """A clock the test moves by hand (expiry without sleeping)."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def now(self) -> float:
        return self.t


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[Runtime, WebSocketChannel]]:
    async with Runtime(store=MemoryStore()) as rt:
        channel = WebSocketChannel(rt, ping_interval=None, max_frame=4096, outbox_limit=8)
        async with channel:
            yield rt, channel


async def opened(channel: WebSocketChannel, user: Any, org: Any = None) -> SocketClient:
    client = SocketClient(channel.ws_url(channel.issue_token(user, org)))
    await client.opened()
    return client


async def wait_until(predicate: Any, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.005)


# ---------------------------------------------------------------- tokens


@pytest.mark.rule("WS-2")
def test_a_token_names_its_owner_once() -> None:
    signer = TokenSigner(b"k" * 32)
    token = signer.issue(7, "org-a")
    assert signer.verify(token) == Owner(7, "org-a")
    with pytest.raises(TokenRefusedError, match=r"^token refused: already used"):
        signer.verify(token)


@pytest.mark.rule("WS-2")
def test_tokens_expire_and_other_servers_tokens_are_refused() -> None:
    clock = StepClock()
    signer = TokenSigner(b"k" * 32, clock=clock, ttl=10)
    token = signer.issue(7)
    clock.t += 10
    with pytest.raises(TokenRefusedError, match=r"^token refused: expired"):
        signer.verify(token)
    foreign = TokenSigner(b"z" * 32, clock=clock).issue(7)
    with pytest.raises(TokenRefusedError, match="signature does not match"):
        signer.verify(foreign)
    for bad in (None, "", "x", "a.", ".b", "a" * 5000, 42):
        with pytest.raises(TokenRefusedError, match="malformed"):
            signer.verify(bad)


def test_a_token_needs_a_user_and_a_real_secret() -> None:
    with pytest.raises(ValueError, match=r"^a token needs a user id"):
        TokenSigner().issue(None)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        TokenSigner(b"short")


def test_used_nonces_are_forgotten_once_expired() -> None:
    clock = StepClock()
    signer = TokenSigner(clock=clock, ttl=1)
    for _ in range(3000):
        signer.verify(signer.issue(1))
        clock.t += 0.01
    assert len(signer._seen) < 1200  # bounded by the tokens alive, not by all ever used


# ---------------------------------------------------------------- the handshake


@pytest.mark.asyncio
@pytest.mark.rule("WS-1")
async def test_a_foreign_origin_is_refused_with_403_and_the_fix(
    served: tuple[Runtime, WebSocketChannel],
) -> None:
    _, channel = served
    client = SocketClient(channel.ws_url(channel.issue_token(7)), origin="http://evil.example")
    with pytest.raises(SocketRefusedError) as refused:
        await client.opened()
    assert refused.value.status == 403
    assert "'http://evil.example' is not allowed" in refused.value.text
    assert channel.url in refused.value.text
    assert channel.refusals == 1
    assert channel.connections == []
    for origin in (channel.url, f"http://localhost:{channel.port}"):
        ok = SocketClient(channel.ws_url(channel.issue_token(7)), origin=origin)
        await ok.opened()
        await ok.aclose()


@pytest.mark.asyncio
@pytest.mark.rule("WS-2")
async def test_a_bad_token_is_refused_with_401_and_the_server_goes_on(
    served: tuple[Runtime, WebSocketChannel],
) -> None:
    rt, channel = served
    good = await opened(channel, 7)
    for url in (
        f"ws://127.0.0.1:{channel.port}/ws",
        f"ws://127.0.0.1:{channel.port}/ws?token=abc.def",
        f"ws://127.0.0.1:{channel.port}/ws?token=a&token=b",
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 401
        assert b"token refused" in (refused.value.response.body or b"")
    sdk = rt.sdk(session={"user": {"id": 7}}, module="m")
    task_id = await sdk.tasks.run_background(asyncio.sleep(0, "still"), "After")
    await rt.wait(task_id)
    await good.sync()
    assert [next(iter(m)) for m in good.messages][-1] == "backgroundTaskCompleted"
    await good.aclose()


@pytest.mark.asyncio
async def test_other_paths_are_404_without_a_page(
    served: tuple[Runtime, WebSocketChannel],
) -> None:
    _, channel = served
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://127.0.0.1:{channel.port}/elsewhere"):
            pass
    assert refused.value.response.status_code == 404


# ---------------------------------------------------------------- frames


@pytest.mark.asyncio
@pytest.mark.rule("WS-4")
async def test_bad_frames_get_refusals_in_the_platform_error_shape(
    served: tuple[Runtime, WebSocketChannel],
) -> None:
    _, channel = served
    client = await opened(channel, 7)
    await client.send_raw("nope")
    await client.send_raw(json.dumps({"backgroundTaskGet": {"taskId": 5}, "request_id": "r1"}))
    await client.send_raw(json.dumps({"userAction": {"name": "m.a"}, "request_id": "r2"}))
    await client.sync()
    assert [(m["type"], m["error"], m["request_id"]) for m in client.messages] == [
        ("error", "invalid_json", None),
        ("error", "invalid_command", "r1"),
        ("error", "no_actions", "r2"),
    ]
    assert "specs/ownership.md" in client.messages[1]["detail"]
    await client.aclose()


@pytest.mark.asyncio
@pytest.mark.rule("WS-4")
async def test_a_huge_frame_closes_only_its_socket(
    served: tuple[Runtime, WebSocketChannel],
) -> None:
    _rt, channel = served
    other = await opened(channel, 7)
    async with connect(channel.ws_url(channel.issue_token(7))) as socket:
        await socket.send("x" * 10_000)
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    await other.send({"backgroundTaskGet": {"taskId": "unknown"}})
    assert other.messages == []  # served, and nothing leaked about an unknown id
    assert len(channel.connections) == 1
    await other.aclose()


@pytest.mark.asyncio
@pytest.mark.rule("OWN-4")
async def test_commands_for_another_users_task_change_nothing_and_tell_nothing(
    served: tuple[Runtime, WebSocketChannel],
) -> None:
    rt, channel = served
    gate = asyncio.Event()
    sdk = rt.sdk(session={"user": {"id": 7}}, module="m")
    task_id = await sdk.tasks.run_background(gate.wait(), "Mine")
    intruder = await opened(channel, 8)
    for command in ("backgroundTaskCancel", "backgroundTaskGet"):
        await intruder.send({command: {"taskId": task_id}})
    await intruder.send({"backgroundTaskResponse": {"taskId": task_id, "response": "x"}})
    assert intruder.messages == []
    assert sdk.tasks.list_user_tasks(7, None)[0]["status"] == "running"
    gate.set()
    assert (await rt.wait(task_id))["status"] == "completed"
    await intruder.aclose()


# ---------------------------------------------------------------- delivery


@pytest.mark.asyncio
@pytest.mark.rule("OWN-5")
async def test_the_offline_queue_crosses_the_socket_in_order_once(
    served: tuple[Runtime, WebSocketChannel],
) -> None:
    rt, channel = served
    sdk = rt.sdk(session={"user": {"id": 7, "organization_id": 3}}, module="m")
    ids = [await sdk.tasks.run_background(asyncio.sleep(0.01 * n, n), f"T{n}") for n in (3, 1, 2)]
    for task_id in ids:
        await rt.wait(task_id)
    first = await opened(channel, 7, 3)
    await first.sync()
    results = [m["backgroundTaskCompleted"]["result"] for m in first.messages]
    assert results == [1, 2, 3]  # the order they ended in
    second = await opened(channel, 7, 3)
    await second.sync()
    assert second.messages == []
    await first.aclose()
    await second.aclose()


@pytest.mark.asyncio
@pytest.mark.rule("WS-3")
async def test_a_slow_client_costs_a_bounded_outbox_and_loses_no_outcome(
    served: tuple[Runtime, WebSocketChannel],
) -> None:
    _rt, channel = served
    conn = SocketConnection(channel.registry, Owner(7, None), limit=4)
    channel.registry.attach(conn)  # registered, but no socket ever drains it: a stuck client
    for n in range(100):
        conn.deliver({"backgroundTaskProgress": {"taskId": "t", "progress": n / 100}})
    assert len(conn.outbox) == 4
    assert conn.dropped == 96
    for n in range(4):
        conn.deliver({"backgroundTaskCompleted": {"taskId": f"d{n}", "result": n}})
    assert len(conn.outbox) == 4
    assert not conn.closed
    conn.deliver({"backgroundTaskError": {"taskId": "e", "error": "boom"}})
    assert conn.closed  # stuck on outcomes: disconnected, and its outcomes kept for later
    later = await opened(channel, 7)
    await later.sync()
    assert [next(iter(m.values()))["taskId"] for m in later.messages] == [
        "d0", "d1", "d2", "d3", "e",
    ]  # fmt: skip
    await later.aclose()


@pytest.mark.asyncio
async def test_a_prepared_connection_expires_and_keeps_its_outcomes() -> None:
    clock = StepClock()
    async with Runtime(store=MemoryStore(), clock=clock) as rt:
        channel = WebSocketChannel(
            rt, ping_interval=None, signer=TokenSigner(clock=clock, ttl=0.05)
        )
        async with channel:
            token, conn = channel.prepare(7)
            conn.deliver({"backgroundTaskCompleted": {"taskId": "a", "result": 1}})
            await wait_until(lambda: conn.closed)
            clock.t += 1
            with pytest.raises(SocketRefusedError) as refused:
                await SocketClient(channel.ws_url(token)).opened()
            assert refused.value.status == 401  # expired
            assert rt.store.drain(Owner(7, None)) == [
                {"backgroundTaskCompleted": {"taskId": "a", "result": 1}}
            ]


@pytest.mark.asyncio
async def test_a_prepared_connection_closed_before_its_socket_is_gone(
    served: tuple[Runtime, WebSocketChannel],
) -> None:
    _, channel = served
    token, conn = channel.prepare(7)
    conn.close()
    with pytest.raises(SocketRefusedError) as refused:
        await SocketClient(channel.ws_url(token)).opened()
    assert refused.value.status == 410


@pytest.mark.asyncio
async def test_user_actions_run_as_their_owner() -> None:
    seen: list[tuple[Owner, str, dict[str, Any]]] = []

    async def actions(owner: Owner, name: str, ctx: dict[str, Any]) -> Any:
        seen.append((owner, name, ctx))
        if name == "m.fail":
            raise ValueError("no such thing")
        return {"ok": name}

    async with (
        Runtime(store=MemoryStore()) as rt,
        WebSocketChannel(rt, ping_interval=None, actions=actions) as channel,
    ):
            client = await opened(channel, 7, 10)
            for name in ("m.go", "m.fail"):
                await client.send_raw(
                    json.dumps({"userAction": {"name": name, "context": {"n": 1}},
                                "request_id": name})
                )  # fmt: skip
            await wait_until(lambda: len(client.messages) == 2)
            by_id = {m["request_id"]: m for m in client.messages}
            assert by_id["m.go"] == {
                "type": "actionResult", "ok": True, "name": "m.go", "result": {"ok": "m.go"},
                "request_id": "m.go",
            }  # fmt: skip
            assert by_id["m.fail"]["error"] == "action_failed"
            assert "ValueError: no such thing" in by_id["m.fail"]["detail"]
            assert seen[0] == (Owner(7, 10), "m.go", {"n": 1})
            await client.aclose()


@pytest.mark.asyncio
async def test_too_many_running_actions_are_answered_busy() -> None:
    release = asyncio.Event()

    async def slow(owner: Owner, name: str, ctx: dict[str, Any]) -> Any:
        await release.wait()
        return name

    async with (
        Runtime(store=MemoryStore()) as rt,
        WebSocketChannel(rt, ping_interval=None, actions=slow, max_actions=2) as channel,
    ):
        client = await opened(channel, 7)
        for n in range(3):
            await client.send_raw(json.dumps({"userAction": {"name": f"a{n}"}, "request_id": n}))
        await wait_until(lambda: len(client.messages) == 1)
        assert client.messages[0] == {
            "ok": False, "type": "action_busy", "error": "action_busy", "request_id": 2,
        }  # fmt: skip
        release.set()
        await wait_until(lambda: len(client.messages) == 3)
        assert sorted(m["result"] for m in client.messages[1:]) == ["a0", "a1"]
        await client.aclose()


@pytest.mark.asyncio
async def test_a_client_that_never_reads_its_answers_is_closed(
    served: tuple[Runtime, WebSocketChannel],
) -> None:
    _, channel = served
    async with connect(channel.ws_url(channel.issue_token(7))) as socket:
        await wait_until(lambda: len(channel.connections) == 1)
        (conn,) = channel.connections
        for _ in range(conn.limit):  # answers the client has not read yet (as if TCP were full)
            conn.outbox.append({"type": "error", "error": "x"})
        await socket.send("not json")
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()  # the writer never sent the fake backlog: the close comes first
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert "too many unread answers" in closed.value.rcvd.reason
    assert channel.connections == []
