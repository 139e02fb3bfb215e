"""The module SDK object and ``current_sdk()``: what module code receives, and where it finds it.

An SDK is built from namespace factories: each namespace (``ui``, ``i18n``, ``media``,
``effects`` and any a runtime adds) is ``factory(sdk)``, so the platform's own classes, which
take the SDK as their only argument (``I18n(sdk)``, ``Effects(sdk)``), plug in unchanged.
``tasks`` is the reference facade and is not a namespace one can replace.

``current_sdk()`` is the SDK of the running code. A request sets it for its block; a
background task, a ``run_blocking`` thread and anything they call see the SDK that submitted
them, as on the platform (whose ``current_sdk`` is a context variable that its action wrapper
and task runner set).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import ui as _ui
from ._context import sdk_variable
from ._effects import Effects
from ._i18n import I18n
from ._media import Media

if TYPE_CHECKING:
    from ._host import Host
    from ._tasks import Tasks

#: A namespace is built per SDK: ``factory(sdk)``.
NamespaceFactory = Callable[["ModuleSDK"], Any]

#: The platform's namespaces that module code uses, as the reference provides them.
DEFAULT_NAMESPACES: Mapping[str, NamespaceFactory] = {
    "ui": lambda sdk: _ui,
    "i18n": I18n,
    "media": Media,
    "effects": Effects,
}

_building = threading.RLock()  # reentrant: a factory may read another namespace of its SDK

#: Attributes of the SDK itself, which no namespace may replace.
RESERVED = frozenset({"tasks", "session", "module_name", "module_path", "current_path", "host"})


def check_namespaces(namespaces: Mapping[str, NamespaceFactory]) -> dict[str, NamespaceFactory]:
    """Validated namespace factories (a copy).

    Raises:
        ValueError: a name is reserved or not an identifier.
        TypeError: a factory is not callable.
    """
    checked: dict[str, NamespaceFactory] = {}
    for name, factory in namespaces.items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ValueError(
                f"a namespace name is a public identifier such as 'i18n', got {name!r}"
            )
        if name in RESERVED:
            raise ValueError(
                f"{name!r} is part of the SDK itself, not a namespace; namespaces are "
                f"{sorted(DEFAULT_NAMESPACES)} and any new name "
                "(see docs/guides/testing-modules.md#namespaces)"
            )
        if not callable(factory):
            raise TypeError(
                f"namespace {name!r} needs a factory called with the SDK, got {factory!r}; "
                f"write namespaces={{{name!r}: lambda sdk: obj}} or pass a class taking the SDK "
                "(see docs/guides/testing-modules.md#namespaces)"
            )
        checked[name] = factory
    return checked


class ModuleSDK:
    """What module code receives as ``module_sdk``: the platform's namespaces, one object.

    Attributes:
        tasks: the ``module_sdk.tasks`` facade.
        ui: components and ``Builder`` (``taskbed.ui``).
        i18n: ``t(key, context=None, lang=None)``.
        media: ``view(path)`` and ``add(path, payload)``.
        effects: ``respond(...)``, ``ui_messages(...)``, ``notify(...)``, ``publish_*``.
        session, module_name, module_path, current_path: as on the platform's SDK.
        host: the runtime that built it.

    Every other namespace the runtime was given (``Runtime(namespaces=...)``) is an attribute
    too, built by its factory when first read; reading one that is not there raises an
    AttributeError that says how to add it.
    """

    ui: ModuleType
    i18n: I18n
    media: Media
    effects: Effects

    def __init__(self, runtime: Host, session: dict[str, Any], module: str) -> None:
        self.host = runtime
        self.session = session
        self.module_name = module
        self.module_path = ""
        self.current_path = ""
        self.tasks: Tasks = runtime.tasks_class(runtime, session, module)
        self.tasks.sdk = self

    def __getattr__(self, name: str) -> Any:
        # Reached only for attributes not set yet: a namespace is built on first use (most
        # requests touch one or two), once per SDK, then it is a plain attribute.
        host = vars(self).get("host")
        if name.startswith("_") or host is None:  # not built by __init__ (a copy, a pickle)
            raise AttributeError(name)
        factory = host.namespaces.get(name)
        if factory is not None:
            with _building:  # threads reading it first at once get one and the same object
                if name not in vars(self):
                    setattr(self, name, factory(self))
            return vars(self)[name]
        have = ", ".join(sorted(host.namespaces))
        raise AttributeError(
            f"module_sdk has no namespace {name!r} here (it has tasks, {have}); "
            f"add one for every SDK with Runtime(namespaces={{{name!r}: factory}}) or, in "
            f"tests, @pytest.mark.taskbed(namespaces={{{name!r}: factory}}) "
            "(see docs/guides/testing-modules.md#namespaces)"
        )

    def __repr__(self) -> str:
        return f"<ModuleSDK module={self.module_name!r}>"


# ---------------------------------------------------------------- the current SDK


def current_sdk() -> ModuleSDK | None:
    """The SDK of the running code: its request's or action's, or the one that submitted it.

    Code in a background task, a ``run_blocking`` thread or a callback they make gets the SDK
    whose ``tasks`` started it, with the same namespaces. None outside all of these.
    """
    sdk: ModuleSDK | None = sdk_variable().get()
    return sdk
