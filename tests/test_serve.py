"""``taskbed serve``'s parts without a browser: module loading, the endpoints, an action's job.

The browser test (tests/test_live_view.py) drives the page; these pin the server's answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from taskbed_harness import SocketClient
from taskbed_harness._cli import main
from taskbed_harness._serve import LiveServer, ModuleLoadError, load_module

EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "live_export.py"


def _get(url: str, host: str | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read()


async def get(url: str, host: str | None = None) -> tuple[int, str, bytes]:
    return await asyncio.to_thread(_get, url, host)


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with LiveServer(EXAMPLE, db=tmp_path / "tasks.db") as live:
        yield live


# ---------------------------------------------------------------- loading


def test_the_actions_are_the_async_functions_of_the_platform_shape(tmp_path: Path) -> None:
    module = tmp_path / "shop.py"
    module.write_text(
        "async def checkout(ctx, session, module_sdk): return 1\n"
        "async def _private(ctx, session, module_sdk): return 2\n"
        "def sync_one(ctx, session, module_sdk): return 3\n"
        "async def helper(x): return 4\n"
    )
    name, actions, _ = load_module(module)
    assert (name, sorted(actions)) == ("shop", ["checkout"])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (None, r"^no module file at '.*nothing\.py'; run: taskbed serve path/to/mod\.py$"),
        ("raise KeyError('x')", r"importing '.*nothing\.py' failed: KeyError: 'x'"),
        ("x = 1", r"has no action: write one as `async def start\(ctx, session, module_sdk\)"),
    ],
)
def test_a_module_that_cannot_serve_says_why(
    tmp_path: Path, source: str | None, message: str
) -> None:
    module = tmp_path / "nothing.py"
    if source is not None:
        module.write_text(source)
    with pytest.raises(ModuleLoadError, match=message):
        load_module(module)


def test_serve_refuses_a_non_loopback_host_and_a_bad_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="loopback only"):
        LiveServer(EXAMPLE, db=tmp_path / "t.db", host="0.0.0.0")
    assert main(["serve", str(tmp_path / "missing.py"), "--db", str(tmp_path / "t.db")]) == 2
    assert "taskbed serve: no module file at" in capsys.readouterr().err


def test_a_taken_port_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", str(EXAMPLE), "--db", str(tmp_path / "t.db"), "--port", str(port)]
        assert main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "pick another port with --port N" in err


# ---------------------------------------------------------------- endpoints


@pytest.mark.asyncio
async def test_the_page_and_its_endpoints(server: LiveServer) -> None:
    base = server.url.rstrip("/")
    status, kind, body = await get(base + "/")
    assert (status, kind) == (200, "text/html; charset=utf-8")
    assert b"taskbed live view" in body
    status, _, body = await get(base + "/api/actions")
    assert json.loads(body) == {"module": "live_export", "actions": ["fail_fast", "start_export"]}
    status, _, body = await get(base + "/api/token?user=7&org=10")
    token = json.loads(body)
    assert status == 200
    assert token["ws"] == f"/ws?token={token['token']}"
    assert server.channel is not None
    assert server.channel.signer.verify(token["token"]) == (7, 10)
    status, _, body = await get(base + "/api/token?user=%22ana%22&org=")
    assert server.channel.signer.verify(json.loads(body)["token"]) == ("ana", None)
    for query in ("", "?user=", "?user=[1]", "?user=true"):
        status, _, body = await get(base + "/api/token" + query)
        assert status == 400, query
        assert b"ask /api/token?user=7&org=10" in body
    assert (await get(base + "/nope"))[0] == 404


@pytest.mark.asyncio
async def test_a_foreign_host_name_gets_nothing(server: LiveServer) -> None:
    status, _, body = await get(server.url + "api/token?user=7", host="evil.example:80")
    assert status == 421
    assert b"host 'evil.example:80' is not this server" in body


# ---------------------------------------------------------------- an action's job


async def _next(client: SocketClient, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            message = await client.receive()
            if kind in message or message.get("type") == kind:
                return message


@pytest.mark.asyncio
async def test_an_action_starts_a_job_that_the_socket_follows_to_its_end(
    server: LiveServer,
) -> None:
    assert server.channel is not None
    client = SocketClient(server.channel.ws_url(server.channel.issue_token(7, 10)))
    await client.opened()
    ctx = {"steps": 3, "delay": 0.01, "rows": 5}
    await client.send_raw(
        json.dumps({"userAction": {"name": "start_export", "context": ctx}, "request_id": "r"})
    )
    result = (await _next(client, "actionResult"))["result"]
    task_id = result["taskId"]
    assert result["card"]["id"] == "export"
    assert result["card"]["component"] == {"BackgroundTask": {"task_id": task_id}}
    progress = [
        (await _next(client, "backgroundTaskProgress"))["backgroundTaskProgress"]["progress"]
        for _ in range(3)
    ]
    assert progress == pytest.approx([1 / 3, 2 / 3, 1.0])
    question = (await _next(client, "backgroundTaskConfirmation"))["backgroundTaskConfirmation"]
    assert [c["id"] for c in question["components"]] == ["question", "publish", "discard"]
    await client.send({"backgroundTaskResponse": {"taskId": task_id, "response": "publish"}})
    done = (await _next(client, "backgroundTaskCompleted"))["backgroundTaskCompleted"]
    assert done["result"] == {"rows": 5, "published": True}

    await client.send_raw(json.dumps({"userAction": {"name": "taskbed.list_tasks"}}))
    (row,) = (await _next(client, "actionResult"))["result"]
    assert (row["id"], row["status"], row["userId"]) == (task_id, "completed", 7)

    await client.send_raw(json.dumps({"userAction": {"name": "nope"}, "request_id": "x"}))
    refusal = await _next(client, "error")
    assert refusal["error"] == "action_failed"
    assert "no action 'nope'; this module has ['fail_fast', 'start_export']" in refusal["detail"]
    await client.aclose()


# ---------------------------------------------------------------- a real crash


async def _start_serve(db: Path, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    with log.open("a") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "taskbed_harness._cli", "serve", str(EXAMPLE),
            "--db", str(db), "--port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        banner = (await proc.stdout.readline() + await proc.stdout.readline()).decode()
    found = re.search(r"open (http://127\.0\.0\.1:\d+)/", banner)
    assert found, f"{banner!r}: {log.read_text()}"
    return proc, found[1]


async def _socket_of(base: str, user: int, org: int) -> SocketClient:
    _, _, body = await get(f"{base}/api/token?user={user}&org={org}")
    client = SocketClient(base.replace("http", "ws", 1) + json.loads(body)["ws"])
    await client.opened()
    return client


@pytest.mark.slow
@pytest.mark.rule("REC-3")
@pytest.mark.asyncio
async def test_a_killed_server_tells_the_owner_on_their_next_socket_once(tmp_path: Path) -> None:
    db, log = tmp_path / "tasks.db", tmp_path / "serve.stderr"
    proc, base = await _start_serve(db, log)
    try:
        client = await _socket_of(base, 7, 10)
        ctx = {"steps": 1000, "delay": 0.05}
        await client.send_raw(json.dumps({"userAction": {"name": "start_export", "context": ctx}}))
        task_id = (await _next(client, "actionResult"))["result"]["taskId"]
        await _next(client, "backgroundTaskProgress")
        await client.aclose()
    finally:
        proc.kill()  # SIGKILL: no clean stop, the task is left running in the file
        await proc.wait()
    proc, base = await _start_serve(db, log)  # recovery interrupts it; the owner is offline
    try:
        again = await _socket_of(base, 7, 10)
        error = (await _next(again, "backgroundTaskError"))["backgroundTaskError"]
        assert error["taskId"] == task_id
        assert "restart" in error["error"]
        await again.send({"backgroundTaskGet": {"taskId": task_id}})  # the row agrees
        assert again.messages[-1]["backgroundTaskError"]["taskId"] == task_id
        await again.aclose()
        once_more = await _socket_of(base, 7, 10)
        await once_more.sync()
        assert once_more.messages == []  # delivered once
        await once_more.aclose()
    finally:
        proc.terminate()
        assert await proc.wait() == 0
        if proc.stdout is not None:
            await proc.stdout.read()
