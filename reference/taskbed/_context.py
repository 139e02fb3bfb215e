"""The request context: who asked, from which module, in which request.

``Runtime.request()`` sets it for the duration of a request. ``run_background`` runs the task in
a copy of the caller's context, so the task sees the request that submitted it even after that
request has ended, and concurrent requests' tasks each see their own (CTX).
"""

from __future__ import annotations

import contextvars
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class RequestContext:
    """What the runtime knows about the request a piece of module code runs for."""

    request_id: str | None
    user_id: Any
    organization_id: Any
    module: str
    session_key: str | None


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "taskbed_request", default=None
)


def current_request() -> RequestContext | None:
    """The request context of the running code, or None outside any request and task."""
    return _current.get()


def set_request(ctx: RequestContext | None) -> contextvars.Token[RequestContext | None]:
    return _current.set(ctx)


def reset_request(token: contextvars.Token[RequestContext | None]) -> None:
    _current.reset(token)


# The SDK of the running code (typed loosely here: _sdk.py, which defines ModuleSDK, reads it
# through current_sdk() with its real type; this module stays a leaf of the import graph).
#: The context variable behind ``taskbed.current_sdk()`` (``.get()``, ``.set(sdk)``), as the
#: platform's ``democrai.sdk.client.current_sdk`` is one.
current_sdk_var: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "taskbed_current_sdk", default=None
)


def sdk_variable() -> contextvars.ContextVar[Any]:
    return current_sdk_var
