"""The task row, its wire form, and the messages the runtime sends to a client.

Everything that turns a task into JSON for the outside world lives here, once: the serialized
row that queries return, the lifecycle messages, and the timestamp format.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from ._errors import InvalidProgressError, NotSerializableError, see
from ._lifecycle import TaskStatus

JSON = Any
Message = dict[str, Any]

DEFAULT_LABEL: Final = "Background Task"

_encode_str = json.encoder.encode_basestring_ascii  # what json.dumps does to a str


class Owner(NamedTuple):
    """Who a task belongs to: the session's user and organization (``None`` matches ``None``)."""

    user_id: Any
    organization_id: Any


@dataclasses.dataclass(slots=True)
class TaskRecord:
    """One task row as the stores keep it (snake_case; see :func:`serialize` for the wire form)."""

    id: str
    user_id: Any
    organization_id: Any
    module: str
    label: str
    task_key: str | None
    status: str
    progress: float
    checkpoint: dict[str, Any]
    result: JSON
    error: str | None
    created_at: float
    updated_at: float
    runner_id: str | None = None

    @property
    def owner(self) -> Owner:
        return Owner(self.user_id, self.organization_id)


def scope(value: object) -> str:
    """The exact-match key of a user or organization id: ``None``, ``10`` and ``"10"`` differ.

    Equal to ``json.dumps(value, sort_keys=True)``; the usual ids (None, int, str) skip the
    encoder, as several scopes are taken per task (benchmarks/bench_submit.py).
    """
    if type(value) is str:
        return _encode_str(value)
    if type(value) is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return json.dumps(value, sort_keys=True)


# ---------------------------------------------------------------- timestamps


_MILLIS = tuple(f".{n:03d}" for n in range(1000))
_TWO = tuple(f"{n:02d}" for n in range(60))

#: The whole seconds that ``stamps`` formatted last, two at most: second -> (ISO head, label).
#: Messages and rows written close together mostly share their second, so most calls only
#: add the milliseconds; two entries serve a row created and last updated in different
#: seconds. Two and no more: a row of a long history (each in its own second) costs the same
#: at any history size (a big cache made a false "regression" in bench_history.py once).
_recent: dict[int, tuple[str, str]] = {}


def stamps(ts: float) -> tuple[str, str]:
    """``(iso(ts), label_of(ts))`` from one datetime.

    The same text as ``isoformat(timespec="milliseconds")`` and ``strftime`` give, built with
    one ``%`` format: a third of their cost, and every message and serialized row carries
    timestamps (benchmarks/bench_submit.py). A float in one of the seconds formatted last
    skips the datetime and the format altogether.
    """
    if type(ts) is float and ts >= 1.0:
        second = int(ts)
        cached = _recent.get(second)
        if cached is not None:
            # ts - second is exact (Sterbenz: second >= 1, second <= ts < 2 * second): the
            # fraction datetime.fromtimestamp rounds to microseconds, half to even.
            micros = round((ts - second) * 1e6)
            if micros < 1_000_000:  # else it carries into the next second
                return cached[0] + _MILLIS[micros // 1000] + "+00:00", cached[1]
    moment = datetime.fromtimestamp(ts, UTC)
    if moment.year < 1000:  # strftime's %Y does not pad; keep its exact output
        return (
            moment.isoformat(timespec="milliseconds"),
            moment.strftime("%Y-%m-%d %H:%M:%S UTC"),
        )
    # Two-digit fields from a table: a third of the cost of a "%02d" format. The year has
    # four digits here (1000-9999).
    head = (
        f"{moment.year}-{_TWO[moment.month]}-{_TWO[moment.day]}"
        f"T{_TWO[moment.hour]}:{_TWO[moment.minute]}:{_TWO[moment.second]}"
    )
    label = head.replace("T", " ") + " UTC"
    # Keep it unless the microseconds rounded up into the next second (then the moment's
    # second is not int(ts)). Replacing the dict's content is safe between threads: a reader
    # finds a correct entry or none.
    if type(ts) is float and ts >= 1.0 and (moment.microsecond or ts - int(ts) < 0.5):
        if len(_recent) > 1:
            _recent.clear()
        _recent[int(ts)] = (head, label)
    return head + _MILLIS[moment.microsecond // 1000] + "+00:00", label


def iso(ts: float) -> str:
    """A Clock timestamp (seconds since the epoch) as ISO 8601 in UTC, millisecond precision."""
    return stamps(ts)[0]


def label_of(ts: float) -> str:
    """A Clock timestamp as the short human label clients show (``2026-11-28 18:35:53 UTC``)."""
    return stamps(ts)[1]


# ---------------------------------------------------------------- validation


class _MergedKeys(ValueError):
    """Two keys of one mapping became the same JSON string (found while reading it back)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        merged = ""
        for key, _ in pairs:
            if key in seen:
                merged = key
                break
            seen.add(key)
        raise _MergedKeys(
            f"two keys of one mapping both become the JSON key {json.dumps(merged)} (a key "
            'that is not a string and one that is, such as 1 and "1"), so one value '
            "would be lost"
        )
    return obj


def json_copy(value: object, what: str, rule: str) -> Any:
    """What JSON gives back for *value*, or NotSerializableError if JSON cannot hold it exactly.

    Refused: what ``json.dumps`` refuses (sets, datetimes, ``nan``, cycles), nesting too deep
    for the encoder, and mappings whose keys merge once JSON turns them into strings
    (``{1: "a", "1": "b"}`` would silently read back as ``{"1": "b"}``; BG-13). What JSON does
    keep, it gives back as JSON types: a tuple reads back as a list, ``{1: "a"}`` as
    ``{"1": "a"}``.
    """
    try:
        return json.loads(json.dumps(value, allow_nan=False), object_pairs_hook=_unique_keys)
    except (TypeError, ValueError, RecursionError) as exc:
        if isinstance(exc, _MergedKeys):
            rule = "BG-13"
            hint = "Give every key its own string, e.g. {str(k): v for k, v in value.items()}."
        elif isinstance(exc, RecursionError):
            exc = RecursionError("nested too deeply for the JSON encoder")
            hint = "Flatten it, or store a reference to the data instead of the data."
        else:
            hint = "Convert it first, e.g. str(value) or value.isoformat()."
        page = "progress" if rule.startswith("PROG") else "submission"
        raise NotSerializableError(
            f"{what} must be JSON-serialisable, exactly (dicts with distinct keys, lists, str, "
            f"int, finite float, bool, None): {exc}. {hint} " + see(page, rule)
        ) from None


def clamp_progress(progress: object) -> float:
    """Clamp a progress value into [0, 1]; reject what is not a finite real number."""
    if isinstance(progress, bool) or not isinstance(progress, int | float):
        raise InvalidProgressError(
            f"progress must be a number between 0.0 and 1.0, got {progress!r}; "
            "call update_progress(task_id, 0.5) " + see("progress", "PROG-2")
        )
    try:
        value = float(progress)
    except OverflowError:  # an int beyond float's range: JSON cannot hold it as a number
        digits = int(int(progress).bit_length() * math.log10(2)) + 1  # str() may refuse to convert
        raise InvalidProgressError(
            f"progress must be a number between 0.0 and 1.0, got an int of about {digits} digits "
            "that no float can hold; pass a fraction, update_progress(task_id, done / total) "
            + see("progress", "PROG-6")
        ) from None
    if not math.isfinite(value):
        raise InvalidProgressError(
            f"progress must be finite, got {value!r}; the stored progress is unchanged "
            + see("progress", "PROG-2")
        )
    return min(1.0, max(0.0, value))


# ---------------------------------------------------------------- wire forms


def serialize(record: TaskRecord) -> dict[str, Any]:
    """The row as queries and ``Runtime.wait`` return it (camelCase, plus ``id``)."""
    created, created_label = stamps(record.created_at)
    updated, updated_label = stamps(record.updated_at)
    return {
        "id": record.id,
        "taskId": record.id,
        "userId": record.user_id,
        "organizationId": record.organization_id,
        "taskKey": record.task_key,
        "module": record.module,
        "label": record.label,
        "status": record.status,
        "progress": record.progress,
        "checkpoint": record.checkpoint,
        "result": record.result,
        "error": record.error,
        "createdAt": created,
        "updatedAt": updated,
        "createdAtLabel": created_label,
        "updatedAtLabel": updated_label,
    }


def started_message(record: TaskRecord) -> Message:
    return {
        "backgroundTaskStarted": {
            "taskId": record.id,
            "label": record.label,
            "module": record.module,
        }
    }


def progress_message(
    record: TaskRecord, progress: float, label: str, *, checkpoint: bool, at: float
) -> Message:
    updated, updated_label = stamps(at)
    return {
        "backgroundTaskProgress": {
            "taskId": record.id,
            "progress": progress,
            "label": label,
            "checkpoint": checkpoint,
            "updatedAt": updated,
            "updatedAtLabel": updated_label,
        }
    }


def confirmation_message(record: TaskRecord, components: list[dict[str, Any]]) -> Message:
    updated, updated_label = stamps(record.updated_at)
    return {
        "backgroundTaskConfirmation": {
            "taskId": record.id,
            "label": record.label,
            "surfaceId": f"task_confirm_{record.id}",
            "components": components,
            "updatedAt": updated,
            "updatedAtLabel": updated_label,
        }
    }


def outcome_message(record: TaskRecord) -> Message:
    """The message for a task's current state: what the client is told, or gets on request."""
    updated, updated_label = stamps(record.updated_at)
    if record.status == TaskStatus.COMPLETED:
        return {
            "backgroundTaskCompleted": {
                "taskId": record.id,
                "label": record.label,
                "result": record.result,
                "updatedAt": updated,
                "updatedAtLabel": updated_label,
            }
        }
    if record.status in (TaskStatus.FAILED, TaskStatus.INTERRUPTED):
        return {
            "backgroundTaskError": {
                "taskId": record.id,
                "label": record.label,
                "error": record.error,
                "updatedAt": updated,
                "updatedAtLabel": updated_label,
            }
        }
    return progress_message(
        record, record.progress, record.label, checkpoint=False, at=record.updated_at
    )
