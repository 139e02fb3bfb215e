"""Commands (CMD): ``run_subprocess`` validates, never uses a shell, and sandboxes its process.

Validation tests run against a recording ProcessRunner, so "nothing started" is a fact the
test can see; behaviour tests run real (short) processes through the reference runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from conftest import make_session
from taskbed import ModuleSDK, ProcessResult, Runtime

SANDBOX = (
    "MODULE_SDK_MODULE",
    "MODULE_SDK_SUBJECT_KIND",
    "MODULE_SDK_ACCESS",
    "MODULE_SDK_USER_ID",
    "MODULE_SDK_ORGANIZATION_ID",
    "MODULE_SDK_SESSION_KEY",
    "MODULE_SDK_REQUEST_ID",
)

RequestAs = Callable[..., AbstractAsyncContextManager[ModuleSDK]]


class RecordingRunner:
    """A ProcessRunner that starts nothing and records every call it gets."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def run(
        self,
        argv: list[str],
        *,
        cwd: str | None,
        env: dict[str, str],
        timeout: float | None,
        capture_output: bool,
    ) -> ProcessResult:
        self.calls.append(
            {"argv": argv, "cwd": cwd, "env": env, "timeout": timeout, "capture": capture_output}
        )
        return ProcessResult(0, b"", b"")


@pytest.fixture
def recorder() -> RecordingRunner:
    return RecordingRunner()


@contextlib.asynccontextmanager
async def recording_request(
    recorder: RecordingRunner, module: str = "mod", access: list[dict[str, Any]] | None = None
) -> Any:
    async with Runtime(process_runner=recorder) as runtime:
        if access is not None:
            runtime.register_module(module, access=access)
        async with runtime.request(session=make_session(), module=module, request_id="r1") as sdk:
            yield sdk


def parse_env(output: str) -> dict[str, str]:
    """The environment `env -0` printed."""
    return dict(item.split("=", 1) for item in output.split("\0") if item)


async def child_env(sdk: ModuleSDK, **kwargs: Any) -> dict[str, str]:
    done = await sdk.tasks.run_subprocess(["env", "-0"], check=True, **kwargs)
    return parse_env(done.stdout)


def _state(pid: int) -> str | None:
    """The /proc state letter of *pid*, or None when no such process exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead(pid: int, within: float = 1.0) -> bool:
    """Whether *pid* is gone or a zombie (dead, waiting for init to reap it) within *within* s.

    An orphaned grandchild is reaped by init, not by us, and init may take its time: a zombie
    has been killed, which is what the rule asks.
    """
    deadline = time.monotonic() + within
    while True:
        if not _exists(pid) or _state(pid) in {None, "Z", "X"}:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Pids a test saw; any still running at teardown are killed (a failed test leaks none)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _exists(pid) and _state(pid) not in {None, "Z", "X"}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- CMD-1 command type


@pytest.mark.rule("CMD-1")
@pytest.mark.asyncio
@pytest.mark.parametrize("command", ["echo hi", ("echo", "hi"), None, [], "", b"echo"], ids=repr)
async def test_command_must_be_a_non_empty_list(recorder: RecordingRunner, command: Any) -> None:
    async with recording_request(recorder) as sdk:
        with pytest.raises(TypeError, match=r"non-empty list"):
            await sdk.tasks.run_subprocess(command)
    assert recorder.calls == []


@pytest.mark.rule("CMD-1")
@pytest.mark.asyncio
async def test_a_valid_list_reaches_the_runner_unchanged(recorder: RecordingRunner) -> None:
    async with recording_request(recorder) as sdk:
        done = await sdk.tasks.run_subprocess(["echo", "a b", "c"], timeout=3)
    assert [c["argv"] for c in recorder.calls] == [["echo", "a b", "c"]]
    assert recorder.calls[0]["timeout"] == 3
    assert done.returncode == 0


@pytest.mark.rule("CMD-1")
@pytest.mark.asyncio
async def test_a_string_command_error_shows_the_list_form(recorder: RecordingRunner) -> None:
    async with recording_request(recorder) as sdk:
        with pytest.raises(TypeError) as excinfo:
            await sdk.tasks.run_subprocess("ls -l /tmp")  # type: ignore[arg-type]
    assert '["ls", "-l", "/tmp"]' in str(excinfo.value)
    assert recorder.calls == []


# ---------------------------------------------------------------- CMD-2 blank tokens


@pytest.mark.rule("CMD-2")
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "command",
    [["echo", ""], ["echo", "  "], ["", "x"], ["  "], ["echo", "ok", "\t\n"]],
    ids=repr,
)
async def test_empty_or_blank_token_raises_value_error(
    recorder: RecordingRunner, command: list[str]
) -> None:
    async with recording_request(recorder) as sdk:
        with pytest.raises(ValueError, match=r"command\[\d\] is empty or blank"):
            await sdk.tasks.run_subprocess(command)
    assert recorder.calls == []


# ---------------------------------------------------------------- CMD-3 token types


@pytest.mark.rule("CMD-3")
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "command", [["echo", 1], [b"echo", "x"], ["echo", None], ["echo", 1.5]], ids=repr
)
async def test_non_string_token_raises_type_error(
    recorder: RecordingRunner, command: list[Any]
) -> None:
    async with recording_request(recorder) as sdk:
        with pytest.raises(TypeError, match=r"command\[\d\] must be a str or os.PathLike"):
            await sdk.tasks.run_subprocess(command)
    assert recorder.calls == []


@pytest.mark.rule("CMD-3")
@pytest.mark.asyncio
async def test_pathlike_tokens_are_accepted(request_as: RequestAs, tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_text("from a path\n")
    async with request_as() as sdk:
        done = await sdk.tasks.run_subprocess([Path("/bin/cat"), target], check=True)
    assert done.stdout == "from a path\n"


# ---------------------------------------------------------------- CMD-4 no shell


@pytest.mark.rule("CMD-4")
@pytest.mark.asyncio
async def test_shell_metacharacters_stay_literal(request_as: RequestAs, tmp_path: Path) -> None:
    tmp_path = tmp_path / "cwd"
    tmp_path.mkdir()
    async with request_as() as sdk:
        done = await sdk.tasks.run_subprocess(["echo", "$HOME; rm -rf x"])
        assert done.stdout == "$HOME; rm -rf x\n"
        touched = await sdk.tasks.run_subprocess(
            ["echo", "`touch a`; touch b && touch c | $(touch d) > e"], cwd=tmp_path
        )
        argv = await sdk.tasks.run_subprocess(
            [sys.executable, "-c", "import sys; print(sys.argv[1:])", "*", "$HOME; rm -rf x"],
            cwd=tmp_path,
        )
    assert touched.stdout == "`touch a`; touch b && touch c | $(touch d) > e\n"
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was redirected
    assert argv.stdout == "['*', '$HOME; rm -rf x']\n"  # no glob, no split


# ---------------------------------------------------------------- CMD-5 subprocess.run


PROGRAM = [
    sys.executable,
    "-c",
    "import sys; sys.stdout.write('out\\r\\nnext\\rlast\\n'); sys.stderr.write('err\\n');"
    " sys.exit(int(sys.argv[1]))",
]


@pytest.mark.rule("CMD-5")
@pytest.mark.asyncio
@pytest.mark.parametrize("text", [True, False])
@pytest.mark.parametrize("code", ["0", "3"])
async def test_result_matches_subprocess_run(request_as: RequestAs, text: bool, code: str) -> None:
    command = [*PROGRAM, code]
    expected = subprocess.run(command, capture_output=True, text=text, check=False)
    async with request_as() as sdk:
        done = await sdk.tasks.run_subprocess(command, text=text)
    assert isinstance(done, subprocess.CompletedProcess)
    assert (done.args, done.returncode, done.stdout, done.stderr) == (
        expected.args,
        expected.returncode,
        expected.stdout,
        expected.stderr,
    )
    assert type(done.stdout) is (str if text else bytes)


@pytest.mark.rule("CMD-5")
@pytest.mark.asyncio
async def test_check_raises_called_process_error_with_output(request_as: RequestAs) -> None:
    command = [*PROGRAM, "3"]
    with pytest.raises(subprocess.CalledProcessError) as expected:
        subprocess.run(command, capture_output=True, text=True, check=True)
    async with request_as() as sdk:
        with pytest.raises(subprocess.CalledProcessError) as excinfo:
            await sdk.tasks.run_subprocess(command, check=True)
        ok = await sdk.tasks.run_subprocess([*PROGRAM, "0"], check=True)
    got, want = excinfo.value, expected.value
    assert (got.returncode, got.cmd, got.output, got.stderr) == (
        want.returncode,
        want.cmd,
        want.output,
        want.stderr,
    )
    assert got.returncode == 3
    assert got.stdout == "out\nnext\nlast\n"
    assert ok.returncode == 0


@pytest.mark.rule("CMD-5")
@pytest.mark.asyncio
async def test_timeout_raises_timeout_expired_with_output_so_far(request_as: RequestAs) -> None:
    command: list[Any] = [Path("/bin/sh"), "-c", "echo started; exec sleep 30"]
    async with request_as() as sdk:
        began = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired) as excinfo:
            await sdk.tasks.run_subprocess(command, timeout=0.5)
        elapsed = time.monotonic() - began
    exc = excinfo.value
    assert exc.cmd == command  # the command as given, Path and all, as subprocess.run does
    assert exc.timeout == 0.5
    # subprocess.run documents the captured output as bytes, whatever `text` says.
    assert exc.stdout == b"started\n"
    assert 0.5 <= elapsed < 3


@pytest.mark.rule("CMD-5")
@pytest.mark.asyncio
async def test_capture_output_false_and_missing_program(request_as: RequestAs) -> None:
    async with request_as() as sdk:
        done = await sdk.tasks.run_subprocess(["true"], capture_output=False)
        assert (done.returncode, done.stdout, done.stderr) == (0, None, None)
        with pytest.raises(FileNotFoundError):
            subprocess.run(["taskbed-no-such-program"], check=False)
        with pytest.raises(FileNotFoundError):
            await sdk.tasks.run_subprocess(["taskbed-no-such-program"])


# ---------------------------------------------------------------- CMD-6 process group

GROUP = "echo $$; sleep 30 & echo $!; wait"


@pytest.mark.rule("CMD-6")
@pytest.mark.asyncio
async def test_timeout_kills_and_reaps_the_whole_group(
    request_as: RequestAs, reaper: list[int]
) -> None:
    async with request_as() as sdk:
        with pytest.raises(subprocess.TimeoutExpired) as excinfo:
            async with asyncio.timeout(5):  # a runner that leaves the grandchild would hang
                await sdk.tasks.run_subprocess(["sh", "-c", GROUP], timeout=0.5)
    assert isinstance(excinfo.value.stdout, bytes)
    child, grandchild = (int(p) for p in excinfo.value.stdout.split())
    reaper.extend([child, grandchild])
    assert not _exists(child), "the command was not reaped before the call returned"
    assert _dead(grandchild), f"the grandchild {grandchild} survived ({_state(grandchild)})"


@pytest.mark.rule("CMD-6")
@pytest.mark.asyncio
async def test_cancellation_kills_and_reaps_the_whole_group(
    request_as: RequestAs, reaper: list[int], tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = 'sleep 30 & echo $$ $! > "$1.tmp"; mv "$1.tmp" "$1"; wait'
    async with request_as() as sdk:
        waiting = asyncio.create_task(sdk.tasks.run_subprocess(["sh", "-c", script, "sh", pids]))
        async with asyncio.timeout(5):
            while not pids.exists():
                await asyncio.sleep(0.01)
        child, grandchild = (int(p) for p in pids.read_text().split())
        reaper.extend([child, grandchild])
        assert _exists(child)
        assert _state(grandchild) not in {None, "Z", "X"}
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await waiting
    assert waiting.cancelled()
    assert not _exists(child), "the command was not reaped before the cancellation went through"
    assert _dead(grandchild), f"the grandchild {grandchild} survived ({_state(grandchild)})"


# ---------------------------------------------------------------- CMD-7 env


@pytest.mark.rule("CMD-7")
@pytest.mark.asyncio
@pytest.mark.parametrize("env", [["A=1"], "A=1", (("A", "1"),), {"A": 1}, {1: "A"}], ids=repr)
async def test_env_that_is_not_a_dict_of_strings_raises_type_error(
    recorder: RecordingRunner, env: Any
) -> None:
    async with recording_request(recorder) as sdk:
        with pytest.raises(TypeError, match=r"env must be a dict"):
            await sdk.tasks.run_subprocess(["true"], env=env)
    assert recorder.calls == []


@pytest.mark.rule("CMD-7")
@pytest.mark.asyncio
async def test_env_is_merged_over_the_parent_environment(
    request_as: RequestAs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKBED_PARENT_ONLY", "parent")
    monkeypatch.setenv("TASKBED_OVERRIDDEN", "parent")
    async with request_as() as sdk:
        seen = await child_env(
            sdk, env={"TASKBED_CALLER_ONLY": "caller", "TASKBED_OVERRIDDEN": "caller"}
        )
        plain = await child_env(sdk)
    assert seen["TASKBED_PARENT_ONLY"] == "parent"
    assert seen["TASKBED_CALLER_ONLY"] == "caller"
    assert seen["TASKBED_OVERRIDDEN"] == "caller"
    assert seen["PATH"] == os.environ["PATH"]
    assert plain["TASKBED_OVERRIDDEN"] == "parent"
    assert "TASKBED_CALLER_ONLY" not in plain


@pytest.mark.rule("CMD-7")
@pytest.mark.asyncio
async def test_caller_cannot_override_sandbox_variables(
    rt: Runtime, request_as: RequestAs, tmp_path: Path
) -> None:
    rules = [{"path": str(tmp_path)}]
    rt.register_module("mod", access=rules)
    spoof = {
        "MODULE_SDK_MODULE": "admin",
        "MODULE_SDK_SUBJECT_KIND": "user",
        "MODULE_SDK_ACCESS": json.dumps([{"path": "/"}]),
        "MODULE_SDK_USER_ID": "1",
        "MODULE_SDK_ORGANIZATION_ID": "1",
        "MODULE_SDK_SESSION_KEY": "stolen",
        "MODULE_SDK_REQUEST_ID": "forged",
    }
    async with request_as(user=7, org=10, module="mod", request_id="r1", key="s1") as sdk:
        seen = await child_env(sdk, env=spoof)
    assert {k: seen.get(k) for k in SANDBOX} == {
        "MODULE_SDK_MODULE": "mod",
        "MODULE_SDK_SUBJECT_KIND": "module",
        "MODULE_SDK_ACCESS": json.dumps(rules),
        "MODULE_SDK_USER_ID": "7",
        "MODULE_SDK_ORGANIZATION_ID": "10",
        "MODULE_SDK_SESSION_KEY": "s1",
        "MODULE_SDK_REQUEST_ID": "r1",
    }


@pytest.mark.rule("CMD-7")
@pytest.mark.asyncio
async def test_caller_and_parent_cannot_add_sandbox_variables(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODULE_SDK_REQUEST_ID", "from-parent")
    monkeypatch.setenv("MODULE_SDK_SESSION_KEY", "from-parent")
    async with rt.request(session=make_session(org=None, key=None), module="mod") as sdk:
        seen = await child_env(
            sdk,
            env={"MODULE_SDK_ORGANIZATION_ID": "99", "MODULE_SDK_REQUEST_ID": "forged"},
        )
    assert "MODULE_SDK_REQUEST_ID" not in seen
    assert "MODULE_SDK_SESSION_KEY" not in seen
    assert "MODULE_SDK_ORGANIZATION_ID" not in seen
    assert seen["MODULE_SDK_MODULE"] == "mod"


# ---------------------------------------------------------------- CMD-8 loop not blocked


@pytest.mark.rule("CMD-8")
@pytest.mark.asyncio
async def test_the_loop_keeps_running_while_a_command_runs(request_as: RequestAs) -> None:
    ticks = 0
    finished = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not finished.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    async with request_as() as sdk:
        await asyncio.sleep(0)  # the ticker is scheduled before the command starts
        before = ticks
        done = await sdk.tasks.run_subprocess(["sleep", "0.3"])
        during = ticks - before
    finished.set()
    await ticking
    assert done.returncode == 0
    # ~30 when free; a blocked loop cannot tick at all (kept low: a loaded machine is slow)
    assert during >= 3, f"the loop ticked only {during} times in 0.3 s: it was blocked"


@pytest.mark.rule("CMD-8")
@pytest.mark.asyncio
async def test_a_command_can_wait_for_the_loop(request_as: RequestAs, tmp_path: Path) -> None:
    """The command only ends once a coroutine on the loop answers it: load cannot fake this."""
    started, answer = tmp_path / "started", tmp_path / "answer"
    script = 'touch "$1"; while [ ! -e "$2" ]; do sleep 0.01; done; echo answered'

    async def answer_when_started() -> None:
        while not started.exists():
            await asyncio.sleep(0.01)
        answer.touch()

    answering = asyncio.create_task(answer_when_started())
    async with request_as() as sdk:
        done = await sdk.tasks.run_subprocess(
            ["sh", "-c", script, "sh", started, answer], timeout=3
        )
    await answering
    assert done.stdout == "answered\n"


# ---------------------------------------------------------------- CMD-9 cwd sandbox


@pytest.mark.rule("CMD-9")
@pytest.mark.asyncio
async def test_cwd_outside_the_allowed_paths_is_refused(
    recorder: RecordingRunner, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    sibling = tmp_path / "allowedx"  # shares the prefix as a string, not as a path
    sibling.mkdir()
    escape = allowed / "escape"
    escape.symlink_to(tmp_path)
    async with recording_request(recorder, access=[{"path": str(allowed)}]) as sdk:
        for cwd in (tmp_path, sibling, escape, allowed / ".."):
            with pytest.raises(PermissionError, match="outside the paths module 'mod' may use"):
                await sdk.tasks.run_subprocess(["pwd"], cwd=cwd)
        assert recorder.calls == []
        await sdk.tasks.run_subprocess(["pwd"], cwd=allowed)
    assert [c["cwd"] for c in recorder.calls] == [str(allowed)]


@pytest.mark.rule("CMD-9")
@pytest.mark.asyncio
async def test_cwd_inside_the_allowed_paths_runs_there(
    rt: Runtime, request_as: RequestAs, tmp_path: Path
) -> None:
    inner = tmp_path / "work" / "inner"
    inner.mkdir(parents=True)
    rt.register_module("mod", access=[{"path": str(tmp_path / "work")}])
    async with request_as(module="mod") as sdk:
        at_root = await sdk.tasks.run_subprocess(["pwd", "-P"], cwd=tmp_path / "work")
        inside = await sdk.tasks.run_subprocess(["pwd", "-P"], cwd=str(inner))
        with pytest.raises(PermissionError):
            await sdk.tasks.run_subprocess(["pwd"], cwd=tmp_path)
    assert at_root.stdout.strip() == os.path.realpath(tmp_path / "work")
    assert inside.stdout.strip() == os.path.realpath(inner)


@pytest.mark.rule("CMD-9")
@pytest.mark.rule("CMD-10")
@pytest.mark.asyncio
async def test_access_rules_may_name_paths_as_path_objects(
    rt: Runtime, request_as: RequestAs, tmp_path: Path
) -> None:
    rt.register_module("mod", access=[{"path": tmp_path, "mode": "r"}])
    async with request_as(module="mod") as sdk:
        seen = await child_env(sdk, cwd=tmp_path)
        with pytest.raises(PermissionError):
            await sdk.tasks.run_subprocess(["pwd"], cwd=tmp_path.parent)
    assert json.loads(seen["MODULE_SDK_ACCESS"]) == [{"path": str(tmp_path), "mode": "r"}]


@pytest.mark.rule("CMD-9")
@pytest.mark.asyncio
async def test_an_unregistered_module_has_no_cwd_limit(
    request_as: RequestAs, tmp_path: Path
) -> None:
    async with request_as(module="free") as sdk:
        done = await sdk.tasks.run_subprocess(["pwd", "-P"], cwd=tmp_path)
    assert done.stdout.strip() == os.path.realpath(tmp_path)


# ---------------------------------------------------------------- CMD-10 sandbox variables


@pytest.mark.rule("CMD-10")
@pytest.mark.asyncio
async def test_sandbox_variables_describe_the_request(
    rt: Runtime, request_as: RequestAs, tmp_path: Path
) -> None:
    rules = [{"path": str(tmp_path), "mode": "rw"}, {"network": "api.example.com:443"}]
    rt.register_module("mod", access=rules)
    async with request_as(user=7, org=10, module="mod", request_id="req-42", key="sess-9") as sdk:
        seen = await child_env(sdk)
    assert seen["MODULE_SDK_MODULE"] == "mod"
    assert seen["MODULE_SDK_SUBJECT_KIND"] == "module"
    assert json.loads(seen["MODULE_SDK_ACCESS"]) == rules
    assert seen["MODULE_SDK_USER_ID"] == "7"
    assert seen["MODULE_SDK_ORGANIZATION_ID"] == "10"
    assert seen["MODULE_SDK_SESSION_KEY"] == "sess-9"
    assert seen["MODULE_SDK_REQUEST_ID"] == "req-42"


@pytest.mark.rule("CMD-10")
@pytest.mark.asyncio
async def test_sandbox_variables_are_read_by_python_too(request_as: RequestAs) -> None:
    names = list(SANDBOX)
    script = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {names!r}}}))"
    async with request_as(user="u-1", org="o-2", module="other", request_id="r9", key="k") as sdk:
        done = await sdk.tasks.run_subprocess([sys.executable, "-c", script], check=True)
    assert json.loads(done.stdout) == {
        "MODULE_SDK_MODULE": "other",
        "MODULE_SDK_SUBJECT_KIND": "module",
        "MODULE_SDK_ACCESS": "[]",
        "MODULE_SDK_USER_ID": "u-1",
        "MODULE_SDK_ORGANIZATION_ID": "o-2",
        "MODULE_SDK_SESSION_KEY": "k",
        "MODULE_SDK_REQUEST_ID": "r9",
    }


@pytest.mark.rule("CMD-10")
@pytest.mark.asyncio
async def test_unknown_values_are_absent(rt: Runtime, request_as: RequestAs) -> None:
    async with request_as(user=7, org=None, key=None, request_id="r1") as sdk:
        seen = await child_env(sdk)
    assert "MODULE_SDK_ORGANIZATION_ID" not in seen
    assert "MODULE_SDK_SESSION_KEY" not in seen
    assert seen["MODULE_SDK_USER_ID"] == "7"
    assert seen["MODULE_SDK_REQUEST_ID"] == "r1"
    async with rt.request(session=make_session(key=None), module="mod") as sdk:
        seen = await child_env(sdk)
    assert "MODULE_SDK_REQUEST_ID" not in seen
    assert seen["MODULE_SDK_ORGANIZATION_ID"] == "10"
