"""Recorded subprocesses: a ProcessRunner that replays cassettes of real runs.

Theory of operation. ``run_subprocess`` reaches the ProcessRunner port with a validated argv and
the full environment (the sandbox variables already applied). This runner looks the call up
among its recordings — the interactions of a JSON cassette, then the expectations written by
hand with ``register()`` — and replays the first unused one that matches on argv, cwd and the
environment variables that matter. Replaying awaits the injected ``sleep`` for the recorded
duration: on the harness's virtual-time loop that costs nothing and moves the clock, so a
timeout replays exactly as it happened. A call that matches nothing is recorded through the real
runner when the record mode allows it, and raises otherwise, with a message that explains the
miss.

Prior art: vcrpy (record modes ``none``/``once``/``new_episodes``/``all``; a miss lists the
closest requests and which matcher failed) and pytest-subprocess (``fp.register`` and
``fp.any()`` for hand-written expectations). Unlike pytest-subprocess, expectations that are
never used fail the test (``assert_all_used``), as pytest_httpx does.

Secrets never reach a cassette: see ``_Redactor``. A redacted value is stored as
``"<redacted>"``, which matches any value when the cassette is replayed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import difflib
import fnmatch
import functools
import itertools
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from taskbed import OSProcessRunner, ProcessResult, ProcessRunner

__all__ = (
    "ANY",
    "ANY_REST",
    "CASSETTE_VERSION",
    "RECORD_MODES",
    "REDACTED",
    "CassetteError",
    "ProcessCall",
    "RecordedProcessRunner",
    "UnmatchedCommandError",
)

#: What a secret is replaced by in a cassette; when replaying it matches any value.
REDACTED: Final = "<redacted>"
_SYNTHETIC_REQUEST_VAR: Final = "MODULE_SDK_REQUEST_ID"
_SYNTHETIC_REQUEST_ID: Final = re.compile(
    r"task:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)

#: The record modes, as vcrpy names them (``new`` is vcrpy's ``new_episodes``).
RECORD_MODES: Final = ("none", "once", "new", "all")

#: The cassette format this module reads and writes.
CASSETTE_VERSION: Final = 1

_MODE_HELP: Final = {
    "none": "replay only; a call that matches nothing fails",
    "once": "record when the cassette file does not exist, else replay only",
    "new": "replay what matches, record what matches nothing and append it",
    "all": "record every call and overwrite the cassette",
}

_SANDBOX_PREFIX: Final = "MODULE_SDK_"


def _real_perf_counter(_real: Callable[[], float] = time.perf_counter) -> float:
    """Recording measures real durations: the real clock, bound at import, out of reach of
    the virtual ``time.perf_counter`` of a test and of freezegun's patching."""
    return _real()


# Where the message of every harness error points (the lead's guide page).
_DOCS: Final = "(see docs/guides/recording.md)"


# ------------------------------------------------------------------ public names


class _Wildcard:
    """The type of the ``ANY`` and ``ANY_REST`` sentinels of ``register()``."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:  # copies and pickles stay the same singleton
        return self._name


#: In ``register()``: matches exactly one argv token (or, as ``cwd=``, any working directory).
ANY: Final = _Wildcard("ANY")
#: In ``register()``, as the last token only: matches all remaining tokens (zero or more).
ANY_REST: Final = _Wildcard("ANY_REST")


class CassetteError(ValueError):
    """A cassette file that cannot be read: bad JSON, another version, a missing field."""


class UnmatchedCommandError(AssertionError):
    """A call that no recording or registered expectation matches (and may not be recorded)."""


@dataclass(frozen=True)
class ProcessCall:
    """One call the runner received, as the ProcessRunner port got it (for test assertions).

    ``argv`` and ``env`` are the objects the port received (the facade builds fresh ones for
    every call), not copies; ``env`` is the full environment, unredacted, kept in memory only.
    """

    argv: list[str]
    cwd: str | None
    env: dict[str, str]
    timeout: float | None
    capture_output: bool


# ------------------------------------------------------------------ redaction


# Values that look like credentials wherever they appear (argv, env values, output).
_TOKEN_PATTERNS: Final = tuple(
    re.compile(p)
    for p in (
        r"\bgh[pousr]_[A-Za-z0-9]{20,}",  # GitHub tokens
        r"\bgithub_pat_[A-Za-z0-9_]{20,}",  # GitHub fine-grained tokens
        r"\bsk-[A-Za-z0-9_-]{16,}",  # sk-..., sk-proj-..., sk-ant-... API keys
        r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe keys
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack tokens
        r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab tokens
        r"\bAIza[0-9A-Za-z_-]{35}",  # Google API keys
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",  # JWTs
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    )
)
# A word that makes a field, parameter or header name secret (case-insensitive): password,
# passwd, pass, pwd, secret, token, api_key / apikey / x-api-key, access_key, private_key,
# auth and authorization (not author), credential(s), cookie.
_CREDENTIAL_WORD: Final = (
    r"(?:passw(?:or)?d|passphrase|secret|token|api[-_]?key|access[-_]?key|private[-_]?key"
    r"|auth(?!or(?!i))|credential|cookie|(?<![a-z])pass(?![a-z])|(?<![a-z])pwd(?![a-z]))"
)
# Secrets that follow a marker: keep the marker, drop the value.
_MARKED_PATTERNS: Final = tuple(
    re.compile(p)
    for p in (
        r"(?i)(\bauthorization:\s*(?:bearer|token|basic)?\s*)\S+",
        r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/-]{8,}=*",
        r"(://[^/\s:@]+:)[^/\s@]+(?=@)",  # the password of scheme://user:password@host
        r"(://)[^/\s:@<>]{16,}(?=@)",  # a token as the user: https://TOKEN@host
        r"(\b[A-Z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|API_?KEY|PRIVATE_KEY)"
        r"[A-Z0-9_]*=)[^\s\"']+",  # NAME_TOKEN=value, as `env` prints it
        # ?access_token=... &api_key=... &X-Amz-Signature=... in a URL's query
        rf"(?i)([?&;][\w.-]*(?:{_CREDENTIAL_WORD}|sig|signature)[\w.-]*=)[^&#\s\"'<>]+",
    )
)
# "password": "...", password=..., api_key: ..., X-API-Key: ... (JSON, YAML, INI, headers):
# the value, quoted or not, after a secret-named field.
_SECRET_FIELD: Final = re.compile(
    rf"(?i)([\"']?\b[\w.-]*{_CREDENTIAL_WORD}[\w.-]*[\"']?\s*[:=]\s*)"
    r"(\"(?:[^\"\\]|\\.)*\"|'[^']*'|(?!<redacted>)[^\s,;&\"'}<>\]]+)"
)
# Programs whose short option -pSECRET (attached) is a password (and -p alone prompts).
_PASSWORD_P_PROGRAMS: Final = frozenset(
    {"mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlshow", "mysqlcheck", "mariadb"}
)
# Programs whose -u/--user/--proxy-user take user:password (curl's basic auth).
_USER_COLON_PROGRAMS: Final = frozenset({"curl"})
_USER_FLAGS: Final = frozenset({"-u", "--user", "-U", "--proxy-user"})
# Candidates for the entropy test: long runs of base64 / URL-safe characters.
_HIGH_ENTROPY_CANDIDATE: Final = re.compile(r"[A-Za-z0-9+/_=-]{32,}")
# Measured on random strings of 32 characters (alphanumeric or base64url), about 1% of which
# escape these thresholds; camel-case identifiers and paths stay below the class switches.
_MIN_ENTROPY_BITS: Final = 4.0  # Shannon entropy per character; random text: 4.5 and up
_MIN_CLASS_SWITCHES: Final = 0.4  # random text changes case/digit class at ~60% of positions

# Names of environment variables (and command-line flags) whose values are secrets.
# ``auth(?!or(?!i))``: AUTH, AUTH_TOKEN, AUTHORIZATION, but not GIT_AUTHOR_NAME.
_SECRET_NAME: Final = re.compile(
    r"(?i)token|secret|passw(?:or)?d|passphrase|credential|private|cookie|key|auth(?!or(?!i))"
)
_SECRET_FLAG: Final = re.compile(
    r"(?i)^--?[\w.-]*(?:token|secret|passw(?:or)?d|passphrase|credential|"
    r"api[-_]?key|access[-_]?key|secret[-_]?key|private[-_]?key|auth(?!or(?!i)))[\w.-]*$"
)
_SECRET_OPTION: Final = re.compile(
    r"(?i)^(--?[\w.-]*(?:token|secret|passw(?:or)?d|passphrase|credential|"
    r"api[-_]?key|access[-_]?key|secret[-_]?key|private[-_]?key|auth(?!or(?!i)))[\w.-]*=).+$"
)
# Exact values of secret variables are scrubbed from argv and output only from this length
# on: shorter ones ("1", "none") would shred unrelated text.
_MIN_SCRUBBED_VALUE: Final = 6


def _looks_random(word: str) -> bool:
    if not (
        any(c.isupper() for c in word)
        and any(c.islower() for c in word)
        and any(c.isdigit() for c in word)
    ):
        return False  # hex digests, paths and identifiers lack one of the classes
    counts = collections.Counter(word)
    n = len(word)
    entropy = -sum(k / n * math.log2(k / n) for k in counts.values())
    switches = sum(_char_class(a) != _char_class(b) for a, b in itertools.pairwise(word))
    return entropy >= _MIN_ENTROPY_BITS and switches / (n - 1) >= _MIN_CLASS_SWITCHES


def _char_class(c: str) -> int:
    return 0 if c.isupper() else 1 if c.islower() else 2 if c.isdigit() else 3


class _Redactor:
    """Replaces secrets by ``REDACTED`` before anything is written to a cassette.

    A secret is: the value of an environment variable named in ``redact_keys`` or whose name
    looks secret (TOKEN, SECRET, PASSWORD, KEY, AUTH, ...), wherever that value appears; a
    value that looks like a credential (known token prefixes, JWTs, private keys,
    ``user:password@`` in URLs, long high-entropy strings); the argument after a flag such as
    ``--token`` and the value of ``--password=...``.
    """

    def __init__(self, redact_keys: Iterable[str]) -> None:
        self._keys = _NameSet(redact_keys)

    def secret_name(self, name: str) -> bool:
        if name in self._keys or _SECRET_NAME.search(name) is not None:
            return True
        # DB_PASS, SMTP_PW, MYSQL_PWD; but not PWD and OLDPWD, the working directories
        parts = re.split(r"[_.-]", name.upper())
        return name.upper() not in ("PWD", "OLDPWD") and bool({"PASS", "PW", "PWD"} & set(parts))

    def secret_values(self, env: Mapping[str, str], argv: Sequence[str] = ()) -> list[str]:
        """The values to scrub from argv and output: longest first, so none hides another."""
        found = {v for k, v in env.items() if self.secret_name(k)}
        found.update(value for _, _, value in _flagged(argv))
        return sorted((v for v in found if len(v) >= _MIN_SCRUBBED_VALUE), key=len, reverse=True)

    @staticmethod
    def text(value: str, secrets: Sequence[str]) -> str:
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        for pattern in _TOKEN_PATTERNS:
            value = pattern.sub(REDACTED, value)
        for pattern in _MARKED_PATTERNS:
            value = pattern.sub(lambda m: m.group(1) + REDACTED, value)
        value = _SECRET_FIELD.sub(_redact_field, value)
        return _HIGH_ENTROPY_CANDIDATE.sub(
            lambda m: REDACTED if _looks_random(m.group()) else m.group(), value
        )

    def data(self, value: bytes | None, secrets: Sequence[str]) -> bytes | None:
        if value is None:
            return None
        try:
            return self.text(value.decode(), secrets).encode()
        except UnicodeDecodeError:
            # Binary output: latin-1 maps every byte to one character and back, so the
            # (ASCII) patterns apply and the other bytes survive unchanged.
            latin = [s.encode().decode("latin-1") for s in secrets]
            return self.text(value.decode("latin-1"), latin).encode("latin-1")

    def argv(self, argv: Sequence[str], secrets: Sequence[str]) -> list[str]:
        out = [self.text(token, secrets) for token in argv]
        for index, prefix, _ in _flagged(argv):
            out[index] = prefix + REDACTED
        return out

    def env(self, env: Mapping[str, str], secrets: Sequence[str]) -> dict[str, str]:
        return {
            k: REDACTED if self.secret_name(k) else self.text(v, secrets) for k, v in env.items()
        }


def _redact_field(match: re.Match[str]) -> str:
    value = match.group(2)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group(1)}{quote}{REDACTED}{quote}"


def _flagged(argv: Sequence[str]) -> Iterator[tuple[int, str, str]]:
    """Secrets given on a command line: ``--token VALUE``, ``--password=VALUE``, and the
    password of ``mysql -pSECRET`` and ``curl -u user:SECRET``.

    Yields (index, what to keep of the token, the secret value).
    """
    program = os.path.basename(argv[0]) if argv else ""
    after_flag = after_user = False
    for index, token in enumerate(argv):
        option = _SECRET_OPTION.match(token)
        if after_flag and not token.startswith("-"):
            yield index, "", token
        elif after_user and ":" in token:
            user, _, secret = token.partition(":")
            yield index, user + ":", secret
        elif option:
            yield index, option.group(1), token[option.end(1) :]
        elif program in _PASSWORD_P_PROGRAMS and token.startswith("-p") and len(token) > 2:
            yield index, "-p", token[2:]
        elif program in _USER_COLON_PROGRAMS and ":" in token:
            for flag in _USER_FLAGS:
                glued = flag + "=" if flag.startswith("--") else flag
                if token.startswith(glued) and len(token) > len(glued):
                    user, _, secret = token[len(glued) :].partition(":")
                    yield index, glued + user + ":", secret
                    break
        after_flag = _SECRET_FLAG.match(token) is not None
        after_user = program in _USER_COLON_PROGRAMS and token in _USER_FLAGS


class _NameSet:
    """Environment variable names: exact names, or fnmatch patterns such as ``GIT_*``."""

    def __init__(self, names: Iterable[str]) -> None:
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if not isinstance(name, str) or not name:
                raise TypeError(
                    f"environment variable names must be non-empty strings, got {name!r}; "
                    "write env_keys=('HOME', 'GIT_*')"
                )
        self._exact = frozenset(n for n in names if not _is_pattern(n))
        self._patterns = tuple(n for n in names if _is_pattern(n))
        self._chosen: dict[tuple[str, ...], tuple[str, ...]] = {}

    def __contains__(self, name: object) -> bool:
        if name in self._exact:
            return True
        return isinstance(name, str) and any(fnmatch.fnmatchcase(name, p) for p in self._patterns)

    def select(self, env: Mapping[str, str], prefix: str) -> dict[str, str]:
        """The variables of *env* named here or starting with *prefix*.

        This runs once per replayed call over the whole environment (``os.environ`` and
        more), and the names rarely change from one call to the next: the chosen names are
        kept per set of names, so the common case is one tuple, one lookup and a few reads.
        """
        names = tuple(env)
        chosen = self._chosen.get(names)
        if chosen is None:
            if len(self._chosen) >= 16:
                self._chosen.clear()
            chosen = tuple(k for k in names if k.startswith(prefix) or k in self)
            self._chosen[names] = chosen
        return {k: env[k] for k in chosen}


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


# ------------------------------------------------------------------ recordings


@dataclass(eq=False)
class _Recording:
    """One recorded interaction (from the cassette, recorded now, or registered by hand)."""

    argv: list[str | _Wildcard]
    cwd: str | _Wildcard | None
    env: dict[str, str] | None  # None: any environment (register() without env=)
    returncode: int | None  # None only when timed out
    stdout: bytes | None
    stderr: bytes | None
    duration: float
    timed_out: bool
    timeout: float | None
    capture_output: bool
    optional: bool = False
    repeat: bool = False
    registered: bool = False
    number: int = 0  # position in the cassette, or among the registered expectations
    uses: int = 0
    # Fast path: the argv when it holds no wildcard and no redaction (compared with ==).
    plain_argv: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if all(isinstance(t, str) and REDACTED not in t for t in self.argv):
            self.plain_argv = [t for t in self.argv if isinstance(t, str)]

    @property
    def label(self) -> str:
        kind = "registered expectation" if self.registered else "recording"
        used = " (already used)" if self.uses and not self.repeat else ""
        return f"{kind} #{self.number} {_show_argv(self.argv)}{used}"

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": list(self.argv),
            "cwd": self.cwd,
            "env": self.env,
            "returncode": self.returncode,
            "stdout": _encode_output(self.stdout),
            "stderr": _encode_output(self.stderr),
            "duration": self.duration,
            "timed_out": self.timed_out,
            "timeout": self.timeout,
            "capture_output": self.capture_output,
            "optional": self.optional,
            "repeat": self.repeat,
        }


def _show_argv(argv: Sequence[object]) -> str:
    return "[" + ", ".join(repr(t) for t in argv) + "]"


def _encode_output(data: bytes | None) -> str | dict[str, str] | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


@functools.lru_cache(maxsize=1024)
def _redacted_pattern(recorded: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in recorded.split(REDACTED)), re.DOTALL)


def _value_matches(recorded: str, actual: str) -> bool:
    if recorded == actual:
        return True
    return REDACTED in recorded and _redacted_pattern(recorded).fullmatch(actual) is not None


def _token_matches(recorded: str | _Wildcard, actual: str) -> bool:
    return recorded is ANY or (isinstance(recorded, str) and _value_matches(recorded, actual))


def _argv_matches(recorded: Sequence[str | _Wildcard], actual: Sequence[str]) -> bool:
    if recorded and recorded[-1] is ANY_REST:
        head = recorded[:-1]
        if len(actual) < len(head):
            return False
        actual = actual[: len(head)]
        recorded = head
    elif len(recorded) != len(actual):
        return False
    return all(_token_matches(r, a) for r, a in zip(recorded, actual, strict=True))


# ------------------------------------------------------------------ cassette files


_REQUIRED: Final = (
    "argv",
    "cwd",
    "env",
    "returncode",
    "stdout",
    "stderr",
    "duration",
    "timed_out",
    "timeout",
    "capture_output",
)
_OPTIONAL_FLAGS: Final = ("optional", "repeat")


class _Problem(Exception):
    """What is wrong with one interaction of a cassette (becomes a CassetteError)."""


def _load_cassette(path: Path, fix: str) -> list[_Recording]:
    def bad(problem: str) -> CassetteError:
        return CassetteError(f"cassette {path} is malformed: {problem}. {fix}")

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"it is not UTF-8 text ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"it is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise bad(f"the top level must be an object, got {type(data).__name__}")
    if "version" not in data:
        raise bad(f'it has no "version" (expected {CASSETTE_VERSION})')
    if data["version"] != CASSETTE_VERSION:
        raise bad(
            f"version {data['version']!r} is not supported (this taskbed reads version "
            f"{CASSETTE_VERSION})"
        )
    interactions = data.get("interactions")
    if not isinstance(interactions, list):
        raise bad('"interactions" must be a list')
    unknown = sorted(set(data) - {"version", "interactions"})
    if unknown:
        raise bad(f"unknown top-level keys {unknown}")
    recordings = []
    for number, item in enumerate(interactions):
        try:
            recordings.append(_parse_interaction(item, number))
        except _Problem as exc:
            raise bad(f"interaction #{number} {exc}") from None
    return recordings


def _parse_interaction(item: object, number: int) -> _Recording:
    if not isinstance(item, dict):
        raise _Problem(f"must be an object, got {type(item).__name__}")
    missing = [k for k in _REQUIRED if k not in item]
    if missing:
        raise _Problem(f"has no {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(item) - set(_REQUIRED) - set(_OPTIONAL_FLAGS))
    if unknown:
        raise _Problem(
            f"has unknown keys {unknown} (known: {', '.join(_REQUIRED + _OPTIONAL_FLAGS)})"
        )
    argv = item["argv"]
    if not isinstance(argv, list) or not argv or not all(isinstance(t, str) for t in argv):
        raise _Problem(f'"argv" must be a non-empty list of strings, got {argv!r}')
    cwd = item["cwd"]
    if cwd is not None and not isinstance(cwd, str):
        raise _Problem(f'"cwd" must be a string or null, got {cwd!r}')
    env = item["env"]
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise _Problem(f'"env" must be an object of strings, got {env!r}')
    timed_out = item["timed_out"]
    if not isinstance(timed_out, bool):
        raise _Problem(f'"timed_out" must be true or false, got {timed_out!r}')
    returncode = item["returncode"]
    if not (returncode is None and timed_out) and (
        not isinstance(returncode, int) or isinstance(returncode, bool)
    ):
        raise _Problem(
            f'"returncode" must be an integer (null only when timed out), got {returncode!r}'
        )
    duration = _number(item["duration"], "duration")
    if duration is None:
        raise _Problem('"duration" must be a number of seconds, got null')
    timeout = _number(item["timeout"], "timeout")
    if timed_out and timeout is None:
        raise _Problem('"timeout" must be a number when "timed_out" is true')
    capture = item["capture_output"]
    flags = {k: item.get(k, False) for k in ("capture_output", *_OPTIONAL_FLAGS)}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise _Problem(f'"{key}" must be true or false, got {value!r}')
    return _Recording(
        argv=list(argv),
        cwd=cwd,
        env=dict(env),
        returncode=returncode,
        stdout=_decode_output(item["stdout"], "stdout"),
        stderr=_decode_output(item["stderr"], "stderr"),
        duration=duration,
        timed_out=timed_out,
        timeout=timeout,
        capture_output=capture,
        optional=flags["optional"],
        repeat=flags["repeat"],
        number=number,
    )


def _number(value: object, key: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise _Problem(f'"{key}" must be a non-negative number of seconds, got {value!r}')
    return float(value)


def _decode_output(value: object, key: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except binascii.Error as exc:
            raise _Problem(f'"{key}" holds invalid base64 ({exc})') from None
    raise _Problem(f'"{key}" must be a string, null or {{"base64": "..."}}, got {value!r}')


def _write_cassette(path: Path, recordings: Sequence[_Recording]) -> None:
    data = {"version": CASSETTE_VERSION, "interactions": [r.to_json() for r in recordings]}
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".tmp")
    # Owner-only (0600), from the first byte: a cassette may hold what redaction missed.
    with contextlib.suppress(FileNotFoundError):
        scratch.unlink()
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(scratch, path)  # readers never see half a cassette


# ------------------------------------------------------------------ the runner


class RecordedProcessRunner:
    """A ProcessRunner that replays recorded runs, records real ones, and checks expectations.

    Pass it to the runtime (``Runtime(process_runner=runner)``); ``run_subprocess`` then goes
    through it. It works without pytest; the taskbed pytest plugin wraps it in a fixture.

    Args:
        cassette: the JSON cassette file, or None for hand-written expectations only.
        mode: ``"none"`` (default: replay only, a miss fails), ``"once"`` (record when the
            file does not exist, else replay only), ``"new"`` (replay matches, record and
            append the rest), ``"all"`` (record everything, overwrite the file).
        real: the runner that records; ``taskbed.OSProcessRunner()`` when None.
        env_keys: environment variables that are recorded and matched besides the
            ``MODULE_SDK_*`` sandbox variables (exact names or patterns like ``"GIT_*"``).
        redact_keys: environment variables whose values are secrets besides those whose
            names look secret (TOKEN, SECRET, PASSWORD, KEY, ...); their values become
            ``"<redacted>"`` in the cassette, in env, argv and output alike.
        sleep: awaited with the recorded duration on replay. The default ``asyncio.sleep``
            is instant on the harness's virtual-time loop and moves its clock.
        rerecord_hint: what follows ``pytest --taskbed-record=new`` in messages (a test
            node id); the current test from ``PYTEST_CURRENT_TEST`` when None.

    Raises:
        ValueError: an unknown mode, or a recording mode without a cassette.
        CassetteError: the cassette exists but cannot be read.

    Example:
        >>> runner = RecordedProcessRunner(None)
        >>> runner.register(["git", "rev-parse", ANY], stdout="abc123\\n")
        >>> # async with Runtime(process_runner=runner) as rt: ...
    """

    def __init__(
        self,
        cassette: str | os.PathLike[str] | None,
        *,
        mode: str = "none",
        real: ProcessRunner | None = None,
        env_keys: Iterable[str] = (),
        redact_keys: Iterable[str] = (),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rerecord_hint: str | None = None,
    ) -> None:
        if mode not in RECORD_MODES:
            listed = "; ".join(f"{m!r} ({_MODE_HELP[m]})" for m in RECORD_MODES)
            raise ValueError(f"unknown record mode {mode!r}; use one of: {listed}")
        if cassette is None and mode != "none":
            raise ValueError(
                f"record mode {mode!r} writes a cassette, but cassette is None; pass a path "
                "such as RecordedProcessRunner('tests/cassettes/test_x.json', mode='once')"
            )
        self.mode: Final = mode
        self.cassette: Final = None if cassette is None else Path(cassette)
        #: Every call the runner received, in order.
        self.calls: list[ProcessCall] = []
        #: Every miss raised, in order (a miss inside a background task only fails that task).
        self.misses: list[UnmatchedCommandError] = []
        self._real = real
        self._owns_real = False
        self._env_keys = _NameSet(env_keys)
        self._redactor = _Redactor(redact_keys)
        self._sleep = sleep
        self._hint = rerecord_hint
        self._recordings: list[_Recording] = []
        self._registered: list[_Recording] = []
        path = self.cassette
        existed = path is not None and path.exists()
        self._records = mode in ("new", "all") or (mode == "once" and not existed)
        if path is not None and existed and mode != "all":
            self._recordings = _load_cassette(path, self._fix_malformed())

    # -------------------------------------------------------------- the port

    async def run(
        self,
        argv: list[str],
        *,
        cwd: str | None,
        env: dict[str, str],
        timeout: float | None,
        capture_output: bool,
    ) -> ProcessResult:
        """Replay the first unused recording that matches the call, or record the call.

        Raises:
            subprocess.TimeoutExpired: the recording timed out, or ran longer than *timeout*
                (after awaiting ``sleep(timeout)``).
            UnmatchedCommandError: nothing matches and the mode does not record.
        """
        call = ProcessCall(argv, cwd, env, timeout, capture_output)
        self.calls.append(call)
        relevant = self._relevant(env)
        recording = self._find(call, relevant)
        if recording is not None:
            recording.uses += 1
            return await self._replay(recording, call)
        if self._records:
            return await self._record(call, relevant)
        error = UnmatchedCommandError(self._miss_message(call, relevant))
        self.misses.append(error)
        raise error

    def close(self) -> None:
        """Release the real runner if this runner created it."""
        if self._owns_real and isinstance(self._real, OSProcessRunner):
            self._real.close()

    # -------------------------------------------------------------- expectations

    def register(
        self,
        argv: Sequence[str | os.PathLike[str] | _Wildcard],
        *,
        returncode: int = 0,
        stdout: str | bytes = "",
        stderr: str | bytes = "",
        duration: float = 0.0,
        cwd: str | os.PathLike[str] | _Wildcard | None = ANY,
        env: Mapping[str, str] | None = None,
        optional: bool = False,
        repeat: bool = False,
    ) -> None:
        """Expect a call, without a cassette: it replays like a recording.

        Args:
            argv: the command; a token may be ``ANY`` (one token), the last may be
                ``ANY_REST`` (all remaining tokens, zero or more).
            returncode: the exit status to return.
            stdout: the output to return (str is encoded as UTF-8).
            stderr: the error output to return.
            duration: how long the command "runs": replay awaits ``sleep(duration)``, and a
                call whose timeout is shorter raises ``subprocess.TimeoutExpired``.
            cwd: the working directory to expect; ``ANY`` (default) accepts every one.
            env: variables the call's environment must hold with these values (others are
                not looked at); None accepts every environment.
            optional: ``assert_all_used()`` accepts this expectation staying unused.
            repeat: replay it for every matching call instead of once.

        Raises:
            TypeError: an argv that is not a non-empty list of tokens.
            ValueError: ``ANY_REST`` before the last token, or a negative duration.
        """
        tokens = _expected_argv(argv)
        expected_cwd = cwd if cwd is None or isinstance(cwd, str | _Wildcard) else os.fspath(cwd)
        if isinstance(returncode, bool) or not isinstance(returncode, int):
            raise TypeError(f"returncode must be an int, got {returncode!r}")
        if not (isinstance(duration, int | float) and math.isfinite(duration) and duration >= 0):
            raise ValueError(f"duration must be a non-negative number of seconds, got {duration!r}")
        self._registered.append(
            _Recording(
                argv=tokens,
                cwd=expected_cwd,
                env=None if env is None else dict(env),
                returncode=returncode,
                stdout=_as_bytes(stdout, "stdout"),
                stderr=_as_bytes(stderr, "stderr"),
                duration=float(duration),
                timed_out=False,
                timeout=None,
                capture_output=True,
                optional=optional,
                repeat=repeat,
                registered=True,
                number=len(self._registered),
            )
        )

    def assert_all_used(self) -> None:
        """Fail if a recording or registered expectation was never used (unless optional).

        Raises:
            AssertionError: listing each unused one and how to mark one optional.
        """
        unused = [
            r for r in (*self._recordings, *self._registered) if r.uses == 0 and not r.optional
        ]
        if not unused:
            return
        where = f" (cassette {self.cassette})" if self._recordings else ""
        lines = [
            f"{len(unused)} recorded command(s) were never run{where}:",
            *(f"  {r.label}" for r in unused),
            "The code under test no longer runs them, or runs something else (a miss would "
            "have said so). If one may legitimately stay unused, mark it optional: "
            '"optional": true in the cassette, or register(..., optional=True).',
        ]
        if any(not r.registered for r in unused):
            lines.append(f"To drop stale recordings, re-record: {self._rerecord('all')}")
        raise AssertionError("\n".join([*lines, _DOCS]))

    # -------------------------------------------------------------- matching

    def _relevant(self, env: Mapping[str, str]) -> dict[str, str]:
        relevant = self._env_keys.select(env, _SANDBOX_PREFIX)
        # A task submitted outside any request gets the synthetic request id "task:<its id>",
        # a fresh uuid every run: record and match it as a placeholder, or it never replays.
        request_id = relevant.get(_SYNTHETIC_REQUEST_VAR)
        if request_id is not None and _SYNTHETIC_REQUEST_ID.fullmatch(request_id):
            relevant[_SYNTHETIC_REQUEST_VAR] = "task:<task-id>"
        return relevant

    def _candidates(self) -> Iterable[_Recording]:
        if self.mode != "all":
            yield from self._recordings
        yield from self._registered

    def _find(self, call: ProcessCall, relevant: dict[str, str]) -> _Recording | None:
        for rec in self._candidates():
            if (rec.uses == 0 or rec.repeat) and _matches(rec, call, relevant):
                return rec
        return None

    # -------------------------------------------------------------- replay and record

    async def _replay(self, rec: _Recording, call: ProcessCall) -> ProcessResult:
        out, err = (rec.stdout, rec.stderr) if call.capture_output else (None, None)
        timeout = call.timeout
        if timeout is not None and (rec.timed_out or timeout < rec.duration):
            await self._sleep(timeout)
            raise subprocess.TimeoutExpired(call.argv, timeout, out, err)
        await self._sleep(rec.duration)
        assert rec.returncode is not None  # a timed-out recording needs a timeout to match
        return ProcessResult(rec.returncode, out, err)

    async def _record(self, call: ProcessCall, relevant: dict[str, str]) -> ProcessResult:
        """Run the call for real, store it, then let virtual time pass as replay will.

        The rule, the same in both modes: a recorded command takes its recorded duration of
        virtual time (a timed-out one, its timeout). While it really runs, virtual time stands
        still (a process is in flight); once it is stored, the clock moves on by the stored
        duration, exactly as a replay of the cassette does.
        """
        real = self._real_runner()
        start = _real_perf_counter()
        try:
            result = await real.run(
                call.argv, cwd=call.cwd, env=call.env, timeout=call.timeout,
                capture_output=call.capture_output,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            self._append(
                call, relevant, _real_perf_counter() - start,
                ProcessResult(-1, _bytes(exc.output), _bytes(exc.stderr)), timed_out=True,
            )  # fmt: skip
            assert call.timeout is not None  # only a call with a timeout times out
            await self._sleep(call.timeout)
            raise
        stored = self._append(call, relevant, _real_perf_counter() - start, result, timed_out=False)
        await self._sleep(stored.duration)
        return result  # the caller gets the real, unredacted result while recording

    def _append(
        self,
        call: ProcessCall,
        relevant: dict[str, str],
        duration: float,
        result: ProcessResult,
        *,
        timed_out: bool,
    ) -> _Recording:
        redact = self._redactor
        secrets = redact.secret_values(call.env, call.argv)
        duration = round(duration, 3)
        if call.timeout is not None and not timed_out:
            duration = min(duration, call.timeout)  # rounding must not make a replay time out
        recording = _Recording(
            argv=list[str | _Wildcard](redact.argv(call.argv, secrets)),
            cwd=None if call.cwd is None else redact.text(call.cwd, secrets),
            env=redact.env(relevant, secrets),
            returncode=None if timed_out else result.returncode,
            stdout=redact.data(result.stdout, secrets),
            stderr=redact.data(result.stderr, secrets),
            duration=duration,
            timed_out=timed_out,
            timeout=None if call.timeout is None else float(call.timeout),
            capture_output=call.capture_output,
            number=len(self._recordings),
            uses=1,  # the call that recorded it used it
        )
        self._recordings.append(recording)
        assert self.cassette is not None  # recording modes require a cassette
        _write_cassette(self.cassette, self._recordings)
        return recording

    def _real_runner(self) -> ProcessRunner:
        if self._real is None:
            self._real = OSProcessRunner()
            self._owns_real = True
        return self._real

    # -------------------------------------------------------------- messages

    def _current_test(self) -> str:
        if self._hint is not None:
            return self._hint
        current = os.environ.get("PYTEST_CURRENT_TEST")
        return current.rsplit(" (", 1)[0] if current else "<test node id>"

    def _rerecord(self, mode: str) -> str:
        return f"pytest --taskbed-record={mode} {self._current_test()}"

    def _fix_malformed(self) -> str:
        return (
            "Fix it by hand, or delete it and record it again: "
            f"rm {self.cassette} && {self._rerecord('once')}"
        )

    def _miss_message(self, call: ProcessCall, relevant: dict[str, str]) -> str:
        # The message lands in CI logs: show the call with its secrets redacted too.
        redact = self._redactor
        secrets = redact.secret_values(call.env, call.argv)
        shown_env = redact.env(relevant, secrets)
        cwd = None if call.cwd is None else redact.text(call.cwd, secrets)
        lines = [
            "no recorded command matches this call:",
            f"  argv: {_show_argv(redact.argv(call.argv, secrets))}",
            f"  cwd:  {cwd!r}",
            "  env:  " + (", ".join(f"{k}={v!r}" for k, v in sorted(shown_env.items())) or "{}"),
        ]
        if self.cassette is not None:
            state = "" if self.cassette.exists() else ", which does not exist yet"
            lines.append(
                f"cassette: {self.cassette}{state} (mode {self.mode!r}: {_MODE_HELP[self.mode]})"
            )
        ranked = self._closest(call, relevant, secrets)
        if ranked:
            lines.append("closest recordings:")
            for place, (rec, diffs) in enumerate(ranked, 1):
                lines.append(f"  {place}. {rec.label}")
                lines.extend(f"       {d}" for d in diffs)
        else:
            lines.append("closest recordings: none (nothing is recorded or registered)")
        if self.cassette is not None:
            # `once` records only into a cassette that does not exist yet; `new` appends.
            mode = "new" if self.cassette.exists() else "once"
            lines.append(f"to record it: {self._rerecord(mode)}")
        else:
            lines.append(
                f"to expect it: runner.register({_show_argv(call.argv)}, returncode=0, "
                "stdout='...')"
            )
        return "\n".join([*lines, _DOCS])

    def _closest(
        self, call: ProcessCall, relevant: dict[str, str], secrets: Sequence[str]
    ) -> list[tuple[_Recording, list[str]]]:
        scored = []
        for order, rec in enumerate(self._candidates()):
            score, diffs = _differences(rec, call, relevant, self._redactor, secrets)
            if not diffs:  # it matches: it was used up
                diffs = [
                    f"matches, but was already used {rec.uses} time(s); a recording replays "
                    'once: record the call again, or mark it "repeat": true '
                    "(register(..., repeat=True))"
                ]
            scored.append((score, order, rec, diffs))
        scored.sort(key=lambda s: (s[0], s[1]))
        return [(rec, diffs) for _, _, rec, diffs in scored[:3]]


# ------------------------------------------------------------------ helpers


def _matches(rec: _Recording, call: ProcessCall, relevant: dict[str, str]) -> bool:
    if rec.plain_argv is not None:
        if rec.plain_argv != call.argv:
            return False
    elif not _argv_matches(rec.argv, call.argv):
        return False
    if rec.cwd is not ANY and not _optional_matches(rec.cwd, call.cwd):
        return False
    if rec.timed_out and call.timeout is None:
        return False  # when would it end? The recording does not know
    if call.capture_output and not rec.capture_output:
        return False  # no output was recorded to give back
    return _env_matches(rec, relevant)


def _optional_matches(recorded: object, actual: str | None) -> bool:
    if recorded is None or actual is None:
        return recorded is actual
    return isinstance(recorded, str) and _value_matches(recorded, actual)


def _env_matches(rec: _Recording, relevant: Mapping[str, str]) -> bool:
    env = rec.env
    if env is None:
        return True
    if rec.registered:  # a hand-written env= names the variables it cares about
        return all(k in relevant and _value_matches(v, relevant[k]) for k, v in env.items())
    if env.keys() != relevant.keys():
        return False
    return all(_value_matches(v, relevant[k]) for k, v in env.items())


def _differences(
    rec: _Recording,
    call: ProcessCall,
    relevant: dict[str, str],
    redactor: _Redactor,
    secrets: Sequence[str],
) -> tuple[float, list[str]]:
    """Per-field differences between a recording and a call, and a distance to rank them."""
    diffs: list[str] = []
    score = 0.0
    argv, cwd = call.argv, call.cwd
    if not _argv_matches(rec.argv, argv):
        aligned, labels = _align(rec.argv, argv)
        matcher = difflib.SequenceMatcher(a=aligned, b=argv, autojunk=False)
        score += 4 * (1 - matcher.ratio())
        diffs.extend(_argv_diffs(matcher, labels, redactor.argv(argv, secrets)))
    if rec.cwd is not ANY and not _optional_matches(rec.cwd, cwd):
        score += 1
        shown = None if cwd is None else redactor.text(cwd, secrets)
        diffs.append(f"cwd: recorded {rec.cwd!r}, called {shown!r}")
    if rec.timed_out and call.timeout is None:
        score += 1
        diffs.append(
            f"timeout: the recording timed out after {rec.timeout} s, but this call has no "
            "timeout, so when it would end is unknown; pass timeout= or record it again"
        )
    if call.capture_output and not rec.capture_output:
        score += 1
        diffs.append(
            "capture_output: recorded without capturing output, called with capture_output=True"
        )
    if rec.env is not None and not _env_matches(rec, relevant):
        shown_env = redactor.env(relevant, secrets)
        keys = rec.env.keys() if rec.registered else rec.env.keys() | relevant.keys()
        for key in sorted(keys):
            recorded, actual = rec.env.get(key), relevant.get(key)
            if recorded is not None and actual is not None and _value_matches(recorded, actual):
                continue
            score += 0.5
            if actual is None:
                diffs.append(f"env {key}: recorded {recorded!r}, not set in the call")
            elif recorded is None:
                diffs.append(f"env {key}: called {shown_env[key]!r}, not in the recording")
            else:
                diffs.append(f"env {key}: recorded {recorded!r}, called {shown_env[key]!r}")
    return score, diffs


def _align(
    recorded: Sequence[str | _Wildcard], actual: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The recorded argv for difflib, and the same tokens as they are shown.

    For difflib, each token the call satisfies at its position (a wildcard, a redacted value)
    is replaced by the call's token, so that only tokens that really differ are reported. The
    shown list keeps the recorded tokens: a call's secret never appears on the recorded side.
    """
    aligned: list[str] = []
    shown: list[str] = []
    for index, token in enumerate(recorded):
        label = repr(token) if isinstance(token, _Wildcard) else token
        if token is ANY_REST:
            rest = list(actual[index:])
            aligned.extend(rest)
            shown.extend([label] * len(rest))
        elif index < len(actual) and _token_matches(token, actual[index]):
            aligned.append(actual[index])
            shown.append(label)
        else:
            aligned.append(label)
            shown.append(label)
    return aligned, shown


def _argv_diffs(
    matcher: difflib.SequenceMatcher[str], recorded: Sequence[str], shown: Sequence[str]
) -> list[str]:
    diffs: list[str] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        old, new = list(recorded[i1:i2]), list(shown[j1:j2])
        if tag == "replace" and len(old) == len(new):
            diffs.extend(
                f"argv[{j1 + k}]: recorded {o!r}, called {n!r}"
                for k, (o, n) in enumerate(zip(old, new, strict=True))
            )
        elif tag == "replace":
            diffs.append(f"argv[{j1}:{j2}]: recorded {old!r}, called {new!r}")
        elif tag == "delete":
            diffs.append(f"argv[{j1}]: recorded {_one(old)}, missing from the call")
        elif tag == "insert":
            diffs.append(f"argv[{j1}]: called {_one(new)}, not in the recording")
    return diffs


def _one(tokens: list[str]) -> str:
    return repr(tokens[0]) if len(tokens) == 1 else repr(tokens)


def _expected_argv(argv: object) -> list[str | _Wildcard]:
    if not isinstance(argv, list | tuple) or not argv:
        raise TypeError(
            f"register() needs the command as a non-empty list, got {argv!r}; write "
            "runner.register(['git', 'status', ANY_REST], stdout='...')"
        )
    tokens: list[str | _Wildcard] = []
    for index, token in enumerate(argv):
        if token is ANY_REST and index != len(argv) - 1:
            raise ValueError(
                f"ANY_REST matches the remaining tokens, so it must come last; got it at "
                f"position {index} of {_show_argv(argv)}; use ANY for a single token"
            )
        if isinstance(token, _Wildcard):
            tokens.append(token)
        elif isinstance(token, str | os.PathLike):
            tokens.append(os.fsdecode(os.fspath(token)))
        else:
            raise TypeError(
                f"argv[{index}] must be a str, os.PathLike, ANY or ANY_REST, got {token!r}"
            )
    return tokens


def _as_bytes(value: object, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"{name} must be str or bytes, got {type(value).__name__} {value!r}")


def _bytes(value: object) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"process output must be bytes, got {type(value).__name__}")
