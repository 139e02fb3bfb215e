"""The recorded subprocess runner, driven through the real facade (``run_subprocess``).

Recording tests run real commands once (marked slow); every replay runs with a ``real`` runner
that fails when called, so "offline" is checked, not assumed. An injected ``sleep`` shows how
long each replay "took" on the (virtual) clock.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import make_session
from taskbed import ModuleSDK, ProcessResult, Runtime
from taskbed_harness._processes import (
    ANY,
    ANY_REST,
    REDACTED,
    CassetteError,
    ProcessCall,
    RecordedProcessRunner,
    UnmatchedCommandError,
)

HINT = "tests/test_mod.py::test_it"
SANDBOX = {
    "MODULE_SDK_ACCESS": "[]",
    "MODULE_SDK_MODULE": "mod",
    "MODULE_SDK_ORGANIZATION_ID": "10",
    "MODULE_SDK_REQUEST_ID": "r1",
    "MODULE_SDK_SESSION_KEY": REDACTED,  # a session key is a credential
    "MODULE_SDK_SUBJECT_KIND": "module",
    "MODULE_SDK_USER_ID": "7",
}


class Offline:
    """A ProcessRunner that fails the test if anything tries to run a real process."""

    async def run(self, argv: list[str], **kwargs: Any) -> ProcessResult:
        raise AssertionError(f"a real process was started while replaying: {argv}")


class Scripted:
    """A ProcessRunner that 'runs' commands by looking up canned results (no OS process)."""

    def __init__(self, results: dict[str, ProcessResult]) -> None:
        self.results = results
        self.ran: list[list[str]] = []

    async def run(self, argv: list[str], **kwargs: Any) -> ProcessResult:
        self.ran.append(argv)
        return self.results[" ".join(argv)]


class Sleeps:
    """The injected ``sleep``: records each duration instead of waiting."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.durations.append(seconds)


@asynccontextmanager
async def sdk_for(
    runner: RecordedProcessRunner, request_id: str = "r1"
) -> AsyncIterator[ModuleSDK]:
    async with (
        Runtime(process_runner=runner) as rt,
        rt.request(session=make_session(), module="mod", request_id=request_id) as sdk,
    ):
        yield sdk


def interaction(argv: list[str], **fields: Any) -> dict[str, Any]:
    """A cassette interaction as the recorder writes it, with *fields* overriding."""
    base: dict[str, Any] = {
        "argv": argv,
        "cwd": None,
        "env": dict(SANDBOX),
        "returncode": 0,
        "stdout": "",
        "stderr": "",
        "duration": 0.5,
        "timed_out": False,
        "timeout": None,
        "capture_output": True,
    }
    return base | fields


def write_cassette(path: Path, *interactions: dict[str, Any], version: Any = 1) -> Path:
    path.write_text(json.dumps({"version": version, "interactions": list(interactions)}))
    return path


def replayer(path: Path, **kwargs: Any) -> RecordedProcessRunner:
    kwargs.setdefault("real", Offline())
    kwargs.setdefault("sleep", Sleeps())  # plain loops here: do not really wait
    kwargs.setdefault("rerecord_hint", HINT)
    return RecordedProcessRunner(path, **kwargs)


# ------------------------------------------------------------------ record, then replay


PROGRAM = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"


@pytest.mark.asyncio
@pytest.mark.slow
async def test_record_once_then_replay_offline_gives_the_recorded_result(tmp_path: Path) -> None:
    cassette = tmp_path / "cassettes" / "deep" / "test_x.json"  # directories are created
    command = [sys.executable, "-c", PROGRAM]
    recorder = RecordedProcessRunner(cassette, mode="once")
    async with sdk_for(recorder) as sdk:
        recorded = await sdk.tasks.run_subprocess(command)
    recorder.close()
    assert (recorded.returncode, recorded.stdout, recorded.stderr) == (3, "out\n", "err\n")

    saved = json.loads(cassette.read_text())
    assert saved["version"] == 1
    [entry] = saved["interactions"]
    assert entry["argv"] == command
    assert entry["env"] == SANDBOX
    assert entry["stdout"] == "out\n"
    assert entry["returncode"] == 3
    assert entry["duration"] > 0
    assert (entry["timed_out"], entry["optional"], entry["repeat"]) == (False, False, False)

    for mode in ("none", "once"):  # "once" with an existing file replays, strictly
        sleeps = Sleeps()
        runner = replayer(cassette, mode=mode, sleep=sleeps)
        async with sdk_for(runner) as sdk:
            replayed = await sdk.tasks.run_subprocess(command)
            with pytest.raises(UnmatchedCommandError):
                await sdk.tasks.run_subprocess([*command, "again"])
        assert (replayed.args, replayed.returncode, replayed.stdout, replayed.stderr) == (
            recorded.args,
            recorded.returncode,
            recorded.stdout,
            recorded.stderr,
        )
        assert sleeps.durations == [entry["duration"]]
        runner.assert_all_used()


@pytest.mark.asyncio
async def test_replay_returns_bytes_and_honours_text_check_and_capture(tmp_path: Path) -> None:
    cassette = write_cassette(
        tmp_path / "c.json",
        interaction(["tool"], returncode=2, stdout={"base64": "AP8="}, stderr="bad\n", repeat=True),
    )
    runner = replayer(cassette)
    async with sdk_for(runner) as sdk:
        raw = await sdk.tasks.run_subprocess(["tool"], text=False)
        assert (raw.returncode, raw.stdout, raw.stderr) == (2, b"\x00\xff", b"bad\n")
        quiet = await sdk.tasks.run_subprocess(["tool"], capture_output=False)
        assert (quiet.stdout, quiet.stderr) == (None, None)
        with pytest.raises(subprocess.CalledProcessError) as info:
            await sdk.tasks.run_subprocess(["tool"], check=True, text=False)
    assert info.value.returncode == 2


# ------------------------------------------------------------------ time and timeouts


@pytest.mark.asyncio
@pytest.mark.slow
async def test_a_recorded_timeout_replays_as_timeout_expired(tmp_path: Path) -> None:
    cassette = tmp_path / "t.json"
    recorder = RecordedProcessRunner(cassette, mode="once")
    async with sdk_for(recorder) as sdk:
        with pytest.raises(subprocess.TimeoutExpired):
            await sdk.tasks.run_subprocess(["sleep", "5"], timeout=0.2)
    recorder.close()
    [entry] = json.loads(cassette.read_text())["interactions"]
    assert (entry["timed_out"], entry["timeout"], entry["returncode"]) == (True, 0.2, None)

    for _ in range(2):  # deterministic: the same every time
        sleeps = Sleeps()
        async with sdk_for(replayer(cassette, sleep=sleeps)) as sdk:
            with pytest.raises(subprocess.TimeoutExpired) as info:
                await sdk.tasks.run_subprocess(["sleep", "5"], timeout=0.2)
        assert (info.value.cmd, info.value.timeout) == (["sleep", "5"], 0.2)
        assert sleeps.durations == [0.2]


@pytest.mark.asyncio
async def test_a_shorter_timeout_than_the_recorded_duration_times_out(tmp_path: Path) -> None:
    cassette = write_cassette(
        tmp_path / "c.json",
        interaction(["build"], duration=3.0, stdout="half\n", repeat=True),
    )
    sleeps = Sleeps()
    async with sdk_for(replayer(cassette, sleep=sleeps)) as sdk:
        with pytest.raises(subprocess.TimeoutExpired) as info:
            await sdk.tasks.run_subprocess(["build"], timeout=1.0)
        done = await sdk.tasks.run_subprocess(["build"], timeout=3.0)
        await sdk.tasks.run_subprocess(["build"])
    assert (info.value.timeout, info.value.output) == (1.0, b"half\n")
    assert done.stdout == "half\n"
    assert sleeps.durations == [1.0, 3.0, 3.0]


@pytest.mark.asyncio
async def test_a_timed_out_recording_cannot_replay_a_call_without_timeout(tmp_path: Path) -> None:
    cassette = write_cassette(
        tmp_path / "c.json",
        interaction(["serve"], timed_out=True, timeout=2.0, returncode=None, duration=2.0),
    )
    async with sdk_for(replayer(cassette)) as sdk:
        with pytest.raises(UnmatchedCommandError, match=r"timed out after 2.0 s, but this call"):
            await sdk.tasks.run_subprocess(["serve"])


# ------------------------------------------------------------------ misses


@pytest.mark.asyncio
async def test_a_miss_shows_the_call_the_closest_recordings_and_how_to_record(
    tmp_path: Path,
) -> None:
    cassette = write_cassette(
        tmp_path / "c.json",
        interaction(["git", "log", "--oneline"]),
        interaction(["git", "status", "--short"]),
        interaction(["git", "status", "--long"], cwd="/repo"),
        interaction(["ls"]),
    )
    runner = replayer(cassette)
    async with sdk_for(runner) as sdk:
        with pytest.raises(UnmatchedCommandError) as info:
            await sdk.tasks.run_subprocess(["git", "status", "--long"])
    message = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert "  argv: ['git', 'status', '--long']\n  cwd:  None\n" in message
    assert "MODULE_SDK_MODULE='mod'" in message
    # Ranked: the cwd-only difference first, then the one-token difference; three at most.
    closest = message.split("closest recordings:\n", 1)[1]
    assert re.search(
        r"1\. recording #2 \['git', 'status', '--long'\]\n\s+cwd: recorded '/repo', called None\n"
        r"\s+2\. recording #1 \['git', 'status', '--short'\]\n"
        r"\s+argv\[2\]: recorded '--short', called '--long'\n",
        closest,
    )
    assert "recording #3" not in closest
    assert f"to record it: pytest --taskbed-record=new {HINT}\n" in message
    assert runner.misses == [info.value]


@pytest.mark.asyncio
async def test_a_miss_names_the_differing_env_variable(tmp_path: Path) -> None:
    cassette = write_cassette(tmp_path / "c.json", interaction(["make"]))
    async with sdk_for(replayer(cassette), request_id="r2") as sdk:
        with pytest.raises(
            UnmatchedCommandError,
            match=r"recording #0 \['make'\]\n\s+env MODULE_SDK_REQUEST_ID: recorded 'r1', "
            r"called 'r2'\n",
        ):
            await sdk.tasks.run_subprocess(["make"])


@pytest.mark.asyncio
async def test_recordings_are_used_once_in_order_unless_marked_repeat(tmp_path: Path) -> None:
    cassette = write_cassette(
        tmp_path / "c.json",
        interaction(["date"], stdout="monday\n"),
        interaction(["date"], stdout="tuesday\n"),
        interaction(["uptime"], stdout="up\n", repeat=True),
    )
    runner = replayer(cassette)
    async with sdk_for(runner) as sdk:
        days = [(await sdk.tasks.run_subprocess(["date"])).stdout for _ in range(2)]
        ups = [(await sdk.tasks.run_subprocess(["uptime"])).stdout for _ in range(3)]
        with pytest.raises(UnmatchedCommandError, match=r"already used 1 time\(s\)") as info:
            await sdk.tasks.run_subprocess(["date"])
    assert days == ["monday\n", "tuesday\n"]
    assert ups == ["up\n"] * 3
    assert '"repeat": true' in str(info.value)
    runner.assert_all_used()


@pytest.mark.asyncio
async def test_a_missing_cassette_replays_nothing_and_says_so(tmp_path: Path) -> None:
    runner = replayer(tmp_path / "absent.json")
    async with sdk_for(runner) as sdk:
        with pytest.raises(UnmatchedCommandError, match=r"absent\.json, which does not exist yet"):
            await sdk.tasks.run_subprocess(["ls"])
    runner.assert_all_used()  # no cassette, nothing to use up
    assert not (tmp_path / "absent.json").exists()


# ------------------------------------------------------------------ unused recordings


@pytest.mark.asyncio
async def test_unused_recordings_fail_assert_all_used_unless_optional(tmp_path: Path) -> None:
    cassette = write_cassette(
        tmp_path / "c.json",
        interaction(["git", "fetch"]),
        interaction(["git", "gc"], optional=True),
        interaction(["git", "pull"]),
    )
    runner = replayer(cassette)
    runner.register(["notify", ANY_REST])
    runner.register(["cleanup"], optional=True)
    async with sdk_for(runner) as sdk:
        await sdk.tasks.run_subprocess(["git", "pull"])
    with pytest.raises(AssertionError) as info:
        runner.assert_all_used()
    message = str(info.value)
    assert message.startswith("2 recorded command(s) were never run (cassette ")
    assert "  recording #0 ['git', 'fetch']\n" in message
    assert "  registered expectation #0 ['notify', ANY_REST]\n" in message
    assert "gc" not in message
    assert "cleanup" not in message
    assert '"optional": true in the cassette, or register(..., optional=True)' in message
    assert f"re-record: pytest --taskbed-record=all {HINT}" in message


# ------------------------------------------------------------------ secrets


GITHUB_TOKEN = "ghp_" + "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lm"
OPENAI_KEY = "sk-" + "proj-Abc123Def456Ghi789Jkl"
AWS_KEY_ID = "AKIA" + "IOSFODNN7EXAMPLE"
JWT = (
    "eyJhbGciOiJIUzI1NiJ9."
    + "eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
RANDOM_SECRET = "q8Vn2Lx7Rt4Kp9Wm3Zs6Yb1Hc5Jd0FgT2uE5wQ1"  # 40 random characters
DB_PASS = "hunter22"  # short and plain: only known as a secret through redact_keys


@pytest.mark.asyncio
@pytest.mark.slow
async def test_secrets_never_reach_the_cassette(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", GITHUB_TOKEN)
    monkeypatch.setenv("DB_PASS", DB_PASS)
    script = (
        "import os, sys; print(os.environ['API_TOKEN'], os.environ['DB_PASS'], sys.argv[1:]); "
        f"print('aws {AWS_KEY_ID} jwt {JWT} random {RANDOM_SECRET}', file=sys.stderr)"
    )
    command = [
        sys.executable, "-c", script, OPENAI_KEY, f"--password={DB_PASS}", "--token", "plainpass",
        "https://bob:s3cr3tpw@example.com/x", "git-sha-1f0e3dad99908345f7439f8ffabdffc4",
    ]  # fmt: skip
    cassette = tmp_path / "secret.json"
    recorder = RecordedProcessRunner(
        cassette, mode="once", env_keys=["API_TOKEN", "DB_PASS"], redact_keys=["DB_PASS"]
    )
    async with sdk_for(recorder) as sdk:
        live = await sdk.tasks.run_subprocess(command)
    recorder.close()
    assert GITHUB_TOKEN in live.stdout  # while recording, the caller sees the real output

    text = cassette.read_text()
    for secret in (GITHUB_TOKEN, OPENAI_KEY, AWS_KEY_ID, JWT, RANDOM_SECRET, DB_PASS, "plainpass"):
        assert secret not in text, secret
    assert "s3cr3tpw" not in text
    [entry] = json.loads(text)["interactions"]
    assert entry["env"]["API_TOKEN"] == entry["env"]["DB_PASS"] == REDACTED
    assert entry["argv"][3:] == [
        REDACTED, f"--password={REDACTED}", "--token", REDACTED,
        f"https://bob:{REDACTED}@example.com/x", "git-sha-1f0e3dad99908345f7439f8ffabdffc4",
    ]  # fmt: skip
    assert entry["stderr"] == f"aws {REDACTED} jwt {REDACTED} random {REDACTED}\n"

    # Replaying with other secret values still matches: "<redacted>" matches any value.
    monkeypatch.setenv("API_TOKEN", "ghp_another")
    monkeypatch.setenv("DB_PASS", "other-pass")
    other = [*command[:3], "sk-other", "--password=x", "--token", "y", *command[7:]]
    other[7] = "https://bob:changed@example.com/x"
    async with sdk_for(replayer(cassette, env_keys=["API_TOKEN", "DB_PASS"])) as sdk:
        replayed = await sdk.tasks.run_subprocess(other)
    assert replayed.stdout.startswith(f"{REDACTED} {REDACTED} ")


@pytest.mark.asyncio
async def test_ordinary_output_is_not_taken_for_a_secret(tmp_path: Path) -> None:
    ordinary = (
        "commit 1f0e3dad99908345f7439f8ffabdffc4aa0b1c2d\n"
        "id 123e4567-e89b-12d3-a456-426614174000\n"
        "/Users/John2/Library/ApplicationSupport/taskbed\n"
        "ThisIsAVeryLongCamelCaseIdentifier2024 x86_64-linux-gnu-Gcc12-Release\n"
        "author: Ada <ada@example.com>\n"
    )
    real = Scripted({"git show --author=Ada": ProcessResult(0, ordinary.encode(), b"")})
    cassette = tmp_path / "c.json"
    runner = RecordedProcessRunner(cassette, mode="once", real=real, env_keys=["GIT_AUTHOR_*"])
    async with sdk_for(runner) as sdk:
        await sdk.tasks.run_subprocess(
            ["git", "show", "--author=Ada"], env={"GIT_AUTHOR_NAME": "Ada"}
        )
    [entry] = json.loads(cassette.read_text())["interactions"]
    assert entry["stdout"] == ordinary
    assert entry["argv"] == ["git", "show", "--author=Ada"]
    assert entry["env"]["GIT_AUTHOR_NAME"] == "Ada"


@pytest.mark.asyncio
async def test_concurrent_identical_calls_consume_recordings_in_call_order(
    tmp_path: Path,
) -> None:
    cassette = write_cassette(
        tmp_path / "c.json",
        interaction(["next"], stdout="1\n", duration=2.0),
        interaction(["next"], stdout="2\n", duration=1.0),
    )
    async with sdk_for(replayer(cassette)) as sdk:
        results = await asyncio.gather(*(sdk.tasks.run_subprocess(["next"]) for _ in range(2)))
    assert [r.stdout for r in results] == ["1\n", "2\n"]


@pytest.mark.asyncio
async def test_a_miss_message_redacts_the_call_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVICE_SECRET", RANDOM_SECRET)
    runner = replayer(tmp_path / "c.json", env_keys=["SERVICE_*"])
    async with sdk_for(runner) as sdk:
        with pytest.raises(UnmatchedCommandError) as info:
            await sdk.tasks.run_subprocess(["deploy", GITHUB_TOKEN, RANDOM_SECRET])
    message = str(info.value)
    assert GITHUB_TOKEN not in message
    assert RANDOM_SECRET not in message
    assert f"SERVICE_SECRET='{REDACTED}'" in message


# ------------------------------------------------------------------ malformed cassettes and modes


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", r"it is not valid JSON"),
        ('{"version": 2, "interactions": []}', r"version 2 is not supported"),
        ('{"interactions": []}', r'it has no "version"'),
        ('{"version": 1, "interactions": [{"argv": ["ls"]}]}', r"interaction #0 has no 'cwd'"),
        ('{"version": 1, "interactions": {}}', r'"interactions" must be a list'),
    ],
)
def test_a_malformed_cassette_names_file_problem_and_fix(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CassetteError, match=r"^cassette .*bad\.json is malformed: ") as info:
        RecordedProcessRunner(path, rerecord_hint=HINT)
    assert re.search(problem, str(info.value))
    assert str(info.value).endswith(f"&& pytest --taskbed-record=once {HINT}")
    assert f"rm {path}" in str(info.value)


def test_a_typo_in_an_interaction_key_is_an_error(tmp_path: Path) -> None:
    path = write_cassette(tmp_path / "c.json", interaction(["ls"], optinal=True))
    with pytest.raises(CassetteError, match=r"interaction #0 has unknown keys \['optinal'\]"):
        RecordedProcessRunner(path)


def test_a_mode_typo_lists_the_valid_modes(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"^unknown record mode 'new_episodes'; use one of: 'none' \(replay only; .*\); "
        r"'once' \(.*\); 'new' \(.*\); 'all' \(.*\)$",
    ):
        RecordedProcessRunner(tmp_path / "c.json", mode="new_episodes")


def test_recording_needs_a_cassette() -> None:
    with pytest.raises(ValueError, match=r"^record mode 'once' writes a cassette, but cassette"):
        RecordedProcessRunner(None, mode="once")


# ------------------------------------------------------------------ hand-written expectations


@pytest.mark.asyncio
async def test_register_with_any_and_any_rest() -> None:
    sleeps = Sleeps()
    runner = RecordedProcessRunner(None, sleep=sleeps)
    runner.register(["git", "rev-parse", ANY], stdout="abc123\n", duration=0.25)
    runner.register(["pip", "install", ANY_REST], returncode=1, stderr=b"no network\n")
    runner.register(["du", ANY], cwd="/srv", env={"MODULE_SDK_MODULE": "mod"}, repeat=True)
    async with sdk_for(runner) as sdk:
        head = await sdk.tasks.run_subprocess(["git", "rev-parse", "HEAD"])
        pip = await sdk.tasks.run_subprocess(["pip", "install", "-U", "taskbed"])
        for _ in range(2):
            await sdk.tasks.run_subprocess(["du", "-s"], cwd="/srv")
        with pytest.raises(UnmatchedCommandError) as info:
            await sdk.tasks.run_subprocess(["git", "rev-parse", "HEAD", "--short"])
    assert head.stdout == "abc123\n"
    assert (pip.returncode, pip.stderr) == (1, "no network\n")
    assert sleeps.durations == [0.25, 0.0, 0.0, 0.0]
    message = str(info.value)
    assert "registered expectation #0 ['git', 'rev-parse', ANY] (already used)" in message
    assert "argv[3]: called '--short', not in the recording" in message
    assert "to expect it: runner.register(['git', 'rev-parse', 'HEAD', '--short']" in message
    runner.assert_all_used()
    first = runner.calls[0]
    assert first == ProcessCall(["git", "rev-parse", "HEAD"], None, first.env, None, True)  # noqa: FBT003
    assert [c.argv[0] for c in runner.calls] == ["git", "pip", "du", "du", "git"]
    assert runner.calls[2].cwd == "/srv"


@pytest.mark.asyncio
async def test_register_checks_cwd_and_env_when_given() -> None:
    runner = RecordedProcessRunner(None)
    runner.register(["du"], cwd="/srv")
    runner.register(["id"], env={"MODULE_SDK_MODULE": "other"})
    async with sdk_for(runner) as sdk:
        with pytest.raises(UnmatchedCommandError, match=r"cwd: recorded '/srv', called '/tmp'"):
            await sdk.tasks.run_subprocess(["du"], cwd="/tmp")
        with pytest.raises(
            UnmatchedCommandError,
            match=r"env MODULE_SDK_MODULE: recorded 'other', called 'mod'",
        ):
            await sdk.tasks.run_subprocess(["id"])


def test_register_rejects_misplaced_any_rest_and_bad_argv() -> None:
    runner = RecordedProcessRunner(None)
    with pytest.raises(ValueError, match=r"ANY_REST matches the remaining tokens, so it must"):
        runner.register(["git", ANY_REST, "x"])
    with pytest.raises(TypeError, match=r"non-empty list"):
        runner.register("git status")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"argv\[1\] must be a str"):
        runner.register(["sleep", 1])  # type: ignore[list-item]


# ------------------------------------------------------------------ record modes new and all


@pytest.mark.asyncio
async def test_mode_new_replays_matches_and_appends_new_calls(tmp_path: Path) -> None:
    cassette = write_cassette(tmp_path / "c.json", interaction(["old"], stdout="from tape\n"))
    real = Scripted({"fresh": ProcessResult(0, b"live\n", b"")})
    runner = RecordedProcessRunner(cassette, mode="new", real=real, sleep=Sleeps())
    async with sdk_for(runner) as sdk:
        old = await sdk.tasks.run_subprocess(["old"])
        fresh = await sdk.tasks.run_subprocess(["fresh"])
    assert (old.stdout, fresh.stdout) == ("from tape\n", "live\n")
    assert real.ran == [["fresh"]]
    saved = json.loads(cassette.read_text())["interactions"]
    assert [(i["argv"], i["stdout"]) for i in saved] == [
        (["old"], "from tape\n"),
        (["fresh"], "live\n"),
    ]
    runner.assert_all_used()

    # The appended call now replays offline.
    again = replayer(cassette)
    async with sdk_for(again) as sdk:
        assert (await sdk.tasks.run_subprocess(["fresh"])).stdout == "live\n"
        await sdk.tasks.run_subprocess(["old"])
    again.assert_all_used()


@pytest.mark.asyncio
async def test_mode_all_records_everything_and_overwrites(tmp_path: Path) -> None:
    cassette = write_cassette(
        tmp_path / "c.json",
        interaction(["stale"]),
        interaction(["kept"], stdout="old answer\n"),
    )
    real = Scripted({"kept": ProcessResult(0, b"new answer\n", b"")})
    runner = RecordedProcessRunner(cassette, mode="all", real=real)
    async with sdk_for(runner) as sdk:
        kept = await sdk.tasks.run_subprocess(["kept"])
    assert kept.stdout == "new answer\n"
    assert real.ran == [["kept"]]
    saved = json.loads(cassette.read_text())["interactions"]
    assert [(i["argv"], i["stdout"]) for i in saved] == [(["kept"], "new answer\n")]
    runner.assert_all_used()


@pytest.mark.asyncio
async def test_the_written_cassette_is_sorted_and_pretty(tmp_path: Path) -> None:
    cassette = tmp_path / "c.json"
    real = Scripted({"a": ProcessResult(0, b"\xff\x00", None)})
    runner = RecordedProcessRunner(cassette, mode="once", real=real)
    async with sdk_for(runner) as sdk:
        await sdk.tasks.run_subprocess(["a"], text=False)
    text = cassette.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    [entry] = data["interactions"]
    assert entry["stdout"] == {"base64": "/wA="}
    assert entry["stderr"] is None


@pytest.mark.asyncio
async def test_a_task_outside_any_request_replays_despite_its_fresh_request_id(
    tmp_path: Path,
) -> None:
    # Such a task's request id is "task:<its uuid>", new every run; it is recorded as a
    # placeholder so the next run, with another task id, still matches.
    cassette = tmp_path / "outside.json"
    results = {"git status": ProcessResult(0, b"clean\n", b"")}

    async def run_once(runner: RecordedProcessRunner) -> str:
        async with Runtime(process_runner=runner) as rt:
            sdk = rt.sdk(session=make_session(), module="mod")  # no request context

            async def job() -> str:
                done = await sdk.tasks.run_subprocess(["git", "status"])
                return str(done.stdout)

            task_id = await sdk.tasks.run_background(job())
            row = await rt.wait(task_id)
        assert row["status"] == "completed", row["error"]
        return str(row["result"])

    recorder = RecordedProcessRunner(cassette, mode="once", real=Scripted(results), sleep=Sleeps())
    assert await run_once(recorder) == "clean\n"
    recorded = json.loads(cassette.read_text())["interactions"][0]["env"]
    assert recorded["MODULE_SDK_REQUEST_ID"] == "task:<task-id>"
    assert await run_once(replayer(cassette)) == "clean\n"
