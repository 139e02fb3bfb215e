"""Cassettes: secrets never reach the file, the file is private, and time is the same whether a
command is recorded or replayed.

Issue 12, points 4 and 6 and the miss hint of point 7.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import make_session
from taskbed import ProcessResult, Runtime
from taskbed_harness import RecordedProcessRunner, UnmatchedCommandError, new_virtual_loop
from taskbed_harness._processes import REDACTED, _Redactor


class Canned:
    """A real runner stand-in: answers from a function of argv, taking *seconds* of real time
    in a worker thread (so the virtual loop holds time still meanwhile, as for a process)."""

    def __init__(
        self, answer: Callable[[list[str], dict[str, str]], bytes], seconds: float = 0.0
    ) -> None:
        self.answer = answer
        self.seconds = seconds

    async def run(
        self, argv: list[str], *, timeout: float | None, env: dict[str, str], **_: Any
    ) -> ProcessResult:
        await asyncio.get_running_loop().run_in_executor(None, time.sleep, self.seconds)
        if timeout is not None and self.seconds > timeout:
            raise subprocess.TimeoutExpired(argv, timeout, b"partial", b"")
        return ProcessResult(0, self.answer(argv, env), b"")


def on_virtual_loop(main: Callable[[], Any]) -> Any:
    loop = new_virtual_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


async def run_one(
    runner: RecordedProcessRunner,
    argv: list[str],
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> tuple[Any, float]:
    """Run *argv* through the facade; (result or exception, virtual seconds it took)."""
    async with (
        Runtime(process_runner=runner) as rt,
        rt.request(session=make_session(), module="mod", request_id="r1") as sdk,
    ):
        loop = asyncio.get_running_loop()
        before = loop.time()
        try:
            outcome: Any = await sdk.tasks.run_subprocess(argv, env=env, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            outcome = exc
        return outcome, loop.time() - before


# ------------------------------------------------------------------ redaction


SECRETS = {
    "mysql": "Myq-pw-771",
    "curl": "curl-pw-5521",
    "query": "qtok_81f2a0c9",
    "hex": "9f86d081884c7d659a2feaa0c55ad015",
    "json": "hunter2-json",
    "db_pass": "db-pass-value-1",
    "listed": "cust-884213",
    "userinfo": "a1b2c3d4e5f6a7b8c9d0",
    "header": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
}


def test_every_common_credential_shape_is_redacted_and_the_file_is_private(
    tmp_path: Path,
) -> None:
    def output(argv: list[str], env: dict[str, str]) -> bytes:
        return (
            f"connected with {argv}\n"
            f"GET https://api.example.com/v1/items?page=2&access_token={SECRETS['query']}\n"
            f"api_key: {SECRETS['hex']}\n"
            f'{{"user": "bob", "password": "{SECRETS["json"]}", "page": 2}}\n'
            f"db {env['DB_PASS']} customer {env['CUSTOMER_REF']}\n"
            f"remote https://{SECRETS['userinfo']}@git.example.com/repo.git\n"
        ).encode()

    cassette = tmp_path / "c.json"
    runner = RecordedProcessRunner(
        cassette,
        mode="once",
        real=Canned(output),
        env_keys=["DB_PASS", "CUSTOMER_REF"],
        redact_keys=["CUSTOMER_REF"],
    )
    env = {"DB_PASS": SECRETS["db_pass"], "CUSTOMER_REF": SECRETS["listed"]}

    async def main() -> None:
        for argv in (
            ["mysql", "-uroot", f"-p{SECRETS['mysql']}", "shop"],
            ["curl", "-u", f"bob:{SECRETS['curl']}", "https://example.com"],
            ["curl", f"--user=bob:{SECRETS['curl']}", "-H", f"X-API-Key: {SECRETS['header']}"],
        ):
            await run_one(runner, argv, env=env)

    on_virtual_loop(main)
    text = cassette.read_text()
    for shape, secret in SECRETS.items():
        assert secret not in text, shape
    entries = json.loads(text)["interactions"]
    assert [e["argv"] for e in entries] == [
        ["mysql", "-uroot", f"-p{REDACTED}", "shop"],
        ["curl", "-u", f"bob:{REDACTED}", "https://example.com"],
        ["curl", f"--user=bob:{REDACTED}", "-H", f"X-API-Key: {REDACTED}"],
    ]
    assert entries[0]["env"] == entries[0]["env"] | {"DB_PASS": REDACTED, "CUSTOMER_REF": REDACTED}
    out = entries[0]["stdout"]
    assert f"?page=2&access_token={REDACTED}\n" in out
    assert f'"password": "{REDACTED}", "page": 2' in out
    assert f"https://{REDACTED}@git.example.com" in out
    assert stat.S_IMODE(cassette.stat().st_mode) == 0o600


def test_working_directory_and_author_are_not_secrets() -> None:
    redactor = _Redactor(())
    assert not redactor.secret_name("PWD")
    assert not redactor.secret_name("OLDPWD")
    assert not redactor.secret_name("GIT_AUTHOR_NAME")
    assert redactor.secret_name("SMTP_PW")
    assert redactor.text("author: Ada, 3 passed, key: task.1", []) == (
        "author: Ada, 3 passed, key: task.1"
    )
    # a docker-style uid:gid after -u is not curl's user:password
    assert redactor.argv(["docker", "run", "-u", "1000:1000"], []) == [
        "docker", "run", "-u", "1000:1000",
    ]  # fmt: skip


# ------------------------------------------------------------------ time while recording


@pytest.mark.parametrize("timeout", [None, 0.05])
def test_virtual_time_during_a_command_is_the_same_recording_and_replaying(
    tmp_path: Path, timeout: float | None
) -> None:
    cassette = tmp_path / "c.json"
    argv = ["build"]

    async def record() -> tuple[Any, float]:
        runner = RecordedProcessRunner(
            cassette, mode="once", real=Canned(lambda *_: b"ok", seconds=0.2)
        )
        return await run_one(runner, argv, timeout=timeout)

    async def replay() -> tuple[Any, float]:
        return await run_one(RecordedProcessRunner(cassette), argv, timeout=timeout)

    recorded, recording_took = on_virtual_loop(record)
    replayed, replay_took = on_virtual_loop(replay)
    [entry] = json.loads(cassette.read_text())["interactions"]
    if timeout is None:
        assert entry["duration"] >= 0.2
        assert recording_took == replay_took == entry["duration"]
        assert recorded.stdout == replayed.stdout == "ok"
    else:
        assert entry["timed_out"]
        assert recording_took == replay_took == timeout
        assert isinstance(recorded, subprocess.TimeoutExpired)
        assert isinstance(replayed, subprocess.TimeoutExpired)


# ------------------------------------------------------------------ the miss hint


def test_a_miss_hints_once_without_a_cassette_and_new_with_one(tmp_path: Path) -> None:
    cassette = tmp_path / "c.json"

    async def miss() -> str:
        runner = RecordedProcessRunner(cassette, rerecord_hint="t.py::test_x")
        with pytest.raises(UnmatchedCommandError) as info:
            await run_one(runner, ["ls"])
        return str(info.value)

    assert "to record it: pytest --taskbed-record=once t.py::test_x\n" in on_virtual_loop(miss)
    cassette.write_text('{"version": 1, "interactions": []}')
    assert "to record it: pytest --taskbed-record=new t.py::test_x\n" in on_virtual_loop(miss)
