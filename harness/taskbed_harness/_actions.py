"""Actions: the platform's ``@action`` decorator as the stand-in provides it, and finding one.

On the platform, ``@action("name")`` registers an async function under its name (prefixed by
the module, for code under ``modules.<module>.``) and wraps it so that a call
``fn(ctx, session, sdk)`` passes each parameter by its name: ``ctx``, ``session``, the SDK as
``sdk`` / ``module_sdk`` / ``democrai_sdk``, any other parameter from the ``ctx`` keys or its
default, with the SDK as ``current_sdk`` for the call. The stand-in's decorator behaves the
same (our code), and registers in ``REGISTRY``; ``resolve_action`` finds an action by name
there or, where the real platform is installed, in the platform's own registry.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from taskbed import current_sdk_var

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: name -> the wrapped action, for every ``@action`` of the stand-in in this process.
REGISTRY: dict[str, Callable[..., Awaitable[Any]]] = {}

_SDK_NAMES = ("sdk", "module_sdk", "democrai_sdk")


def _module_prefix(func: Callable[..., Any]) -> str:
    # modules.<name>.actions... -> <name>, as the platform qualifies a module's actions
    parts = (getattr(func, "__module__", "") or "").split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "modules" else ""


def _arguments(
    func: Callable[..., Any], ctx: dict[str, Any], session: Any, sdk: Any
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, param in inspect.signature(func).parameters.items():
        if name == "ctx":
            values[name] = ctx
        elif name == "session":
            values[name] = session
        elif name in _SDK_NAMES:
            values[name] = sdk
        elif name in ctx:
            values[name] = ctx[name]
        elif param.default is not inspect.Parameter.empty:
            values[name] = param.default
    return values


def action(name: str | None = None) -> Callable[[F], F]:
    """Register an async function as an action (``from democrai.sdk.decorators import action``).

    Args:
        name: the action's name; the function's name by default. Code under
            ``modules.<module>.`` gets ``<module>.`` in front, as on the platform.
    """
    if callable(name):
        raise TypeError(
            "action is a decorator factory: write @action() or @action('preview_manifest') "
            f"above the function, not @action (got {name!r})"
        )

    def decorator(func: F) -> F:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(
                f"@action needs an async function, got {func!r}; write "
                f"`async def {getattr(func, '__name__', 'my_action')}(ctx, session, module_sdk):`"
            )
        prefix = _module_prefix(func)
        raw = name or func.__name__
        qualified = f"{prefix}.{raw}" if prefix and not raw.startswith(prefix + ".") else raw

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) >= 3 and isinstance(args[0], dict) and not kwargs:
                ctx, session, sdk = args[0], args[1], args[2]
                token = current_sdk_var.set(sdk)
                try:
                    return await func(**_arguments(func, ctx, session, sdk))
                finally:
                    current_sdk_var.reset(token)
            return await func(*args, **kwargs)

        wrapper.action_name = qualified  # type: ignore[attr-defined]
        REGISTRY[qualified] = wrapper
        return wrapper  # type: ignore[return-value]

    return decorator


def _platform_action(name: str) -> Callable[..., Awaitable[Any]] | None:
    """The real platform's action of that name, when the platform is installed."""
    try:
        registry = importlib.import_module("democrai.core.runtime.foundation.registry")
    except ImportError:  # the stand-in (or nothing) provides democrai: no core registry
        return None
    found: Callable[..., Awaitable[Any]] | None = registry.action_registry.get_action(name)
    return found


def resolve_action(target: object) -> Callable[..., Awaitable[Any]]:
    """The action to call: *target* itself when callable, else the action of that name.

    Raises:
        LookupError: no action has that name.
        TypeError: *target* is neither.
    """
    if isinstance(target, str):
        found = REGISTRY.get(target) or _platform_action(target)
        if found is None:
            known = ", ".join(sorted(REGISTRY)) or "none"
            raise LookupError(
                f"no action is registered under {target!r} (registered: {known}); import the "
                "module that defines it before the call (its @action registers it), or pass "
                "the function: await taskbed.call_action(preview_manifest, ctx) "
                "(see docs/guides/testing-modules.md#calling-an-action)"
            )
        return found
    if callable(target):
        return target
    if inspect.iscoroutine(target):
        target.close()
    raise TypeError(
        f"call_action takes the action function or its registered name, got "
        f"{type(target).__name__}: write await taskbed.call_action(my_action, ctx) and not "
        "await taskbed.call_action(my_action(ctx, session, sdk), ...) "
        "(see docs/guides/testing-modules.md#calling-an-action)"
    )
