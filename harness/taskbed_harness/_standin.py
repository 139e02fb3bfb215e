"""A stand-in for the platform's ``democrai`` package, for module code tested without it.

Module files import from the platform (``from democrai.sdk.decorators import action``). Where
the platform is installed, those imports get it, unchanged. Where it is not (it needs Python
3.12+ and brings a large dependency tree), the pytest plugin appends ``StandinFinder`` to the
**end** of ``sys.meta_path``, so it answers only for names no other finder knows: a real
``democrai`` always wins. Switch it off with the ini option ``taskbed_democrai_standin =
false``; outside pytest, ``install_democrai_standin()`` / ``uninstall_democrai_standin()``.

The stand-in modules hold the names module code uses, as the reference provides them:

================================  ==========================================================
``democrai.sdk``                  ``current_sdk`` (a context variable), ``active_sdk`` proxy
``democrai.sdk.client``           the same two
``democrai.sdk.decorators``       ``action(name=None)``, ``public``
``democrai.sdk.ui``               ``Builder``, ``Component``, ``ui`` (the components)
``democrai.sdk.components.base``  ``Component``
``democrai.sdk.effects``          ``Effects``
``democrai.sdk.i18n``             ``I18n``
``democrai.sdk.media``            ``Media``
``democrai.sdk.tasks``            ``Tasks``
================================  ==========================================================

Every stand-in module has ``__taskbed_standin__ = True``, so a test can tell which it got.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Sequence
from types import ModuleType, SimpleNamespace
from typing import Any

# The plugin installs the finder in every pytest session: this module imports the standard
# library only, and each stand-in module imports taskbed when it is itself imported.


class _ActiveSDK:
    """``active_sdk``: attributes of the current SDK (the platform's proxy, without a default)."""

    def __getattr__(self, name: str) -> Any:
        import taskbed

        sdk = taskbed.current_sdk()
        if sdk is None:
            raise RuntimeError(
                "active_sdk is used outside any request, action or task: there is no current "
                "SDK; call the code through taskbed.call_action(...) or taskbed.request()"
            )
        return getattr(sdk, name)


def _public(func: Any) -> Any:
    func._public_action = True
    return func


def _client() -> dict[str, Any]:
    import taskbed

    return {"current_sdk": taskbed.current_sdk_var, "active_sdk": _ActiveSDK()}


def _decorators() -> dict[str, Any]:
    from ._actions import action

    return {"action": action, "public": _public}


def _ui() -> dict[str, Any]:
    from taskbed import ui

    classes = {n: getattr(ui, n) for n in ui.__all__ if n[0].isupper() and n != "Builder"}
    return {"Builder": ui.Builder, "Component": ui.Component, "ui": SimpleNamespace(**classes)}


def _named(name: str) -> Callable[[], dict[str, Any]]:
    def contents() -> dict[str, Any]:
        import taskbed

        if name == "Component":
            return {name: taskbed.ui.Component}
        return {name: getattr(taskbed, name)}

    return contents


#: module name -> (is a package, what the module holds)
MODULES: dict[str, tuple[bool, Callable[[], dict[str, Any]]]] = {
    "democrai": (True, lambda: {"__version__": "0.0.1b4+taskbed-standin"}),
    "democrai.sdk": (True, _client),
    "democrai.sdk.client": (False, _client),
    "democrai.sdk.decorators": (False, _decorators),
    "democrai.sdk.ui": (False, _ui),
    "democrai.sdk.components": (True, dict),
    "democrai.sdk.components.base": (False, _named("Component")),
    "democrai.sdk.effects": (False, _named("Effects")),
    "democrai.sdk.i18n": (False, _named("I18n")),
    "democrai.sdk.media": (False, _named("Media")),
    "democrai.sdk.tasks": (False, _named("Tasks")),
}


class StandinFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads the stand-in modules of ``MODULES`` (and nothing else)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        entry = MODULES.get(fullname)
        if entry is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=entry[0])

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        _, contents = MODULES[module.__name__]
        module.__dict__.update(contents())
        module.__dict__["__taskbed_standin__"] = True
        module.__dict__["__getattr__"] = _missing(module.__name__, sorted(module.__dict__))
        module.__doc__ = "taskbed's stand-in for the platform module of this name"


def _missing(module: str, names: list[str]) -> Callable[[str], Any]:
    """A module ``__getattr__``: a name the stand-in lacks is an ImportError that says so."""
    have = ", ".join(n for n in names if not n.startswith("_")) or "no names"

    def __getattr__(name: str) -> Any:
        if name.startswith("_"):  # private and special names: as any module answers
            raise AttributeError(name)
        # An ImportError, not an AttributeError: `from module import name` shows it as it is.
        raise ImportError(
            f"taskbed's stand-in for {module} has no {name!r} (it has {have}); install the "
            "platform (democrai, Python 3.12+) to use it, or leave it out of the code under "
            "test (see docs/guides/testing-modules.md#the-platform-stand-in)",
            name=module,
        )

    return __getattr__


def platform_installed() -> bool:
    """Whether the real ``democrai`` is what ``import democrai`` gets (not the stand-in)."""
    module = sys.modules.get("democrai")
    if module is not None:
        return not getattr(module, "__taskbed_standin__", False)
    return any(_finds(f, "democrai") for f in sys.meta_path if not isinstance(f, StandinFinder))


def _finds(finder: Any, name: str) -> bool:
    find = getattr(finder, "find_spec", None)
    return find is not None and find(name, None) is not None


def install_democrai_standin() -> StandinFinder | None:
    """Append the stand-in finder to ``sys.meta_path`` unless the platform is installed.

    Returns the finder, or None when the real platform is importable (then nothing changes).
    """
    for finder in sys.meta_path:
        if isinstance(finder, StandinFinder):
            return finder
    if importlib.util.find_spec("democrai") is not None:
        return None
    finder = StandinFinder()
    sys.meta_path.append(finder)
    return finder


def uninstall_democrai_standin() -> None:
    """Remove the stand-in finder and forget the stand-in modules already imported."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, StandinFinder)]
    for name in list(sys.modules):
        if name in MODULES and getattr(sys.modules[name], "__taskbed_standin__", False):
            del sys.modules[name]
