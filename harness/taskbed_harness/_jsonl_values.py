"""Values and errors on the wire of the JSON-lines adapter protocol (``docs/guides/jsonl.md``).

Both sides of the protocol use this module: the parent (``JsonLinesAdapter``) and the sample
child (``_jsonl_child``). A child in another language implements the same few rules.

A value is plain JSON when JSON holds it exactly: ``null``, booleans, numbers (finite),
strings, arrays, and objects whose keys are strings other than ``"$"``. Everything else is an
object with a ``"$"`` tag:

==================  ==============================================================
``{"$": ...}``      what it stands for
==================  ==============================================================
``tuple``           ``items``: the values (a tuple, which JSON would make a list)
``dict``            ``items``: ``[key, value]`` pairs (keys that are not strings)
``float``           ``value``: ``"nan"``, ``"inf"`` or ``"-inf"``
``bytes``           ``base64``: the bytes
``path``            ``value``: an ``os.PathLike``'s path
``ui``              ``components``: a confirmation surface, as the client is shown it
``job``             module code that stays in the parent (see the guide): ``job``, ``kind``,
                    ``name``, and ``state`` for a coroutine
``ref``             ``ref``: the very object the parent handed over earlier (identity)
``completed``       a finished subprocess: ``args``, ``returncode``, ``stdout``, ``stderr``
``opaque``          ``type``, ``repr``: an object JSON cannot carry at all
==================  ==============================================================

An error is ``{"type": T, "message": str, "args": [...], "also": [...], "ref": ...}``, where
``T`` comes from ``ERROR_TYPES`` (the nearest one in the exception's class hierarchy), ``also``
lists the other types of ``ERROR_TYPES`` it is an instance of, and the subprocess errors add
their fields (``cmd``, ``returncode``, ``timeout``, ``output``, ``stderr``).
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import subprocess
from collections.abc import Callable
from typing import Any

#: The error types the protocol names, each with the Python class it stands for.
ERROR_TYPES: dict[str, type[BaseException]] = {
    "CancelledError": asyncio.CancelledError,
    "TimeoutExpired": subprocess.TimeoutExpired,
    "CalledProcessError": subprocess.CalledProcessError,
    "TimeoutError": TimeoutError,
    "FileNotFoundError": FileNotFoundError,
    "PermissionError": PermissionError,
    "ConnectionError": ConnectionError,
    "OSError": OSError,
    "KeyError": KeyError,
    "IndexError": IndexError,
    "LookupError": LookupError,
    "ValueError": ValueError,
    "TypeError": TypeError,
    "NotImplementedError": NotImplementedError,
    "RuntimeError": RuntimeError,
    "AssertionError": AssertionError,
    "Exception": Exception,
}

Hook = Callable[[Any], Any]


def _is_plain_key(key: object) -> bool:
    return isinstance(key, str) and key != "$"


def encode(value: Any, hook: Hook | None = None) -> Any:  # noqa: PLR0912 - a branch per tag
    """*value* as JSON. *hook* is asked first about every value that is not plain JSON and
    returns its encoding, or None to leave it to the rules above."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$": "float", "value": "nan" if math.isnan(value) else str(value)}
    if hook is not None:
        encoded = hook(value)
        if encoded is not None:
            return encoded
    if isinstance(value, list):
        return [encode(item, hook) for item in value]
    if isinstance(value, tuple):
        return {"$": "tuple", "items": [encode(item, hook) for item in value]}
    if isinstance(value, dict):
        if all(_is_plain_key(k) for k in value):
            return {k: encode(v, hook) for k, v in value.items()}
        return {
            "$": "dict",
            "items": [[encode(k, hook), encode(v, hook)] for k, v in value.items()],
        }
    if isinstance(value, (bytes, bytearray)):
        return {"$": "bytes", "base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, os.PathLike):
        return {"$": "path", "value": os.fsdecode(os.fspath(value))}
    if isinstance(value, subprocess.CompletedProcess):
        return {
            "$": "completed",
            "args": encode(value.args, hook),
            "returncode": value.returncode,
            "stdout": encode(value.stdout, hook),
            "stderr": encode(value.stderr, hook),
        }
    return {"$": "opaque", "type": type(value).__name__, "repr": repr(value)[:500]}


class Opaque:
    """An object that JSON could not carry: only its type name and ``repr`` crossed."""

    def __init__(self, type_name: str, shown: str) -> None:
        self.type_name = type_name
        self.shown = shown

    def __repr__(self) -> str:
        return self.shown


def decode(data: Any, hook: Hook | None = None) -> Any:
    """The value *data* encodes. *hook* decodes the tags this module leaves to its side
    (``job``, ``ref``, ``ui``); it returns ``NotImplemented`` for the others."""
    if isinstance(data, list):
        return [decode(item, hook) for item in data]
    if not isinstance(data, dict):
        return data
    tag = data.get("$")
    if tag is None:
        return {k: decode(v, hook) for k, v in data.items()}
    if hook is not None:
        decoded = hook(data)
        if decoded is not NotImplemented:
            return decoded
    if tag == "tuple":
        return tuple(decode(item, hook) for item in data["items"])
    if tag == "dict":
        return {decode(k, hook): decode(v, hook) for k, v in data["items"]}
    if tag == "float":
        return float(data["value"])
    if tag == "bytes":
        return base64.b64decode(data["base64"])
    if tag == "path":
        import pathlib  # noqa: PLC0415 - rare

        return pathlib.Path(data["value"])
    if tag == "completed":
        return subprocess.CompletedProcess(
            decode(data["args"], hook),
            data["returncode"],
            decode(data["stdout"], hook),
            decode(data["stderr"], hook),
        )
    if tag == "opaque":
        return Opaque(str(data.get("type")), str(data.get("repr")))
    raise ValueError(f"unknown value tag {tag!r} in {data!r}")


# ---------------------------------------------------------------- errors


def error_type(exc: BaseException) -> tuple[str, list[str]]:
    """The protocol's name for *exc*'s type, and the other names it is an instance of."""
    names = [name for name, cls in ERROR_TYPES.items() if isinstance(exc, cls)]
    if not names:
        return "Exception", []
    first = names[0]
    also = [n for n in names[1:] if not issubclass(ERROR_TYPES[first], ERROR_TYPES[n])]
    return first, also


def encode_error(exc: BaseException, hook: Hook | None = None) -> dict[str, Any]:
    """*exc* as a protocol error (see the module docstring)."""
    name, also = error_type(exc)
    out: dict[str, Any] = {"type": name, "message": str(exc)}
    if also:
        out["also"] = also
    try:
        out["args"] = encode(list(exc.args), hook)
    except Exception:  # noqa: BLE001 - args are a courtesy; the message is enough
        out["args"] = [str(exc)]
    if isinstance(exc, subprocess.TimeoutExpired):
        out.update(cmd=encode(exc.cmd, hook), timeout=exc.timeout)
        out.update(output=encode(exc.output, hook), stderr=encode(exc.stderr, hook))
    elif isinstance(exc, subprocess.CalledProcessError):
        out.update(cmd=encode(exc.cmd, hook), returncode=exc.returncode)
        out.update(output=encode(exc.output, hook), stderr=encode(exc.stderr, hook))
    return out


_MIXED: dict[tuple[str, ...], type[BaseException]] = {}


def _error_class(name: str, also: list[str]) -> type[BaseException]:
    base = ERROR_TYPES.get(name, Exception)
    extra = tuple(ERROR_TYPES[n] for n in also if n in ERROR_TYPES)
    if not extra:
        return base
    key = (name, *also)
    if key not in _MIXED:
        _MIXED[key] = type(f"Remote{name}", (base, *extra), {})
    return _MIXED[key]


def decode_error(data: dict[str, Any], hook: Hook | None = None) -> BaseException:
    """The exception a protocol error stands for (the nearest type the protocol names)."""
    name = str(data.get("type", "Exception"))
    message = str(data.get("message", ""))
    if name == "TimeoutExpired":
        return subprocess.TimeoutExpired(
            decode(data.get("cmd"), hook),
            data.get("timeout") or 0.0,
            decode(data.get("output"), hook),
            decode(data.get("stderr"), hook),
        )
    if name == "CalledProcessError":
        return subprocess.CalledProcessError(
            int(data.get("returncode", 1)),
            decode(data.get("cmd"), hook),
            decode(data.get("output"), hook),
            decode(data.get("stderr"), hook),
        )
    if name == "CancelledError":
        return asyncio.CancelledError(message) if message else asyncio.CancelledError()
    cls = _error_class(name, [str(n) for n in data.get("also", [])])
    args = data.get("args")
    if isinstance(args, list):
        try:
            return cls(*decode(args, hook))
        except Exception:  # noqa: BLE001, S110 - fall back to the message
            pass
    return cls(message)
