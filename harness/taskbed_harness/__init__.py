"""taskbed_harness: the deterministic test harness of taskbed.

The reference runtime on fakes: a virtual clock that owns the event loop, the reference task
manager with test controls, a recorded subprocess runner, and a client that captures messages.
The pytest plugin (entry point ``taskbed``) wraps these objects in fixtures; everything here
also works without pytest. Hypothesis strategies live in ``taskbed_harness.strategies``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The pytest plugin (taskbed_harness._plugin) loads with every pytest session of an environment
# that has taskbed[harness]; importing it runs this file. Names resolve lazily (PEP 562) so that
# costs nothing until a test uses the harness; type checkers see the plain imports below.
if TYPE_CHECKING:
    from ._actions import action as action
    from ._actions import resolve_action as resolve_action
    from ._adapters import FakeImplementation as FakeImplementation
    from ._adapters import Implementation as Implementation
    from ._adapters import ReferenceImplementation as ReferenceImplementation
    from ._adapters import ReferencePeer as ReferencePeer
    from ._adapters import fake as fake_implementation
    from ._adapters import reference as reference_implementation
    from ._awaits import NeverAwaitedError as NeverAwaitedError
    from ._client import ClientView as ClientView
    from ._clock import DEFAULT_START as DEFAULT_START
    from ._clock import DeadlockError as DeadlockError
    from ._clock import FreezegunConflictError as FreezegunConflictError
    from ._clock import VirtualClock as VirtualClock
    from ._clock import VirtualEventLoop as VirtualEventLoop
    from ._clock import WatchdogError as WatchdogError
    from ._clock import new_virtual_loop as new_virtual_loop
    from ._conform import Outcome as Outcome
    from ._conform import Result as Result
    from ._conform import RuntimeView as RuntimeView
    from ._conform import run_rule as run_rule
    from ._conform import run_suite as run_suite
    from ._emitted import Emission as Emission
    from ._emitted import Emitted as Emitted
    from ._fake import FakeTaskManager as FakeTaskManager
    from ._fake import HarnessRuntime as HarnessRuntime
    from ._fake import InjectedFailure as InjectedFailure
    from ._fake import Submission as Submission
    from ._harness import Harness as Harness
    from ._harness import HarnessOptions as HarnessOptions
    from ._jsonl import JsonLinesAdapter as JsonLinesAdapter
    from ._jsonl import JsonLinesError as JsonLinesError
    from ._jsonl import reference_jsonl as reference_jsonl_implementation
    from ._processes import ANY as ANY
    from ._processes import ANY_REST as ANY_REST
    from ._processes import RECORD_MODES as RECORD_MODES
    from ._processes import CassetteError as CassetteError
    from ._processes import ProcessCall as ProcessCall
    from ._processes import RecordedProcessRunner as RecordedProcessRunner
    from ._processes import UnmatchedCommandError as UnmatchedCommandError
    from ._protocol import CAPABILITIES as CAPABILITIES
    from ._protocol import SANDBOX_VARIABLES as SANDBOX_VARIABLES
    from ._protocol import Adapter as Adapter
    from ._protocol import Button as Button
    from ._protocol import Inbox as Inbox
    from ._protocol import LegacyAdapter as LegacyAdapter
    from ._protocol import Peer as Peer
    from ._protocol import ProtocolError as ProtocolError
    from ._protocol import Surface as Surface
    from ._protocol import Text as Text
    from ._protocol import as_adapter as as_adapter
    from ._spec import Rule as Rule
    from ._spec import load_rules as load_rules
    from ._standin import StandinFinder as StandinFinder
    from ._standin import install_democrai_standin as install_democrai_standin
    from ._standin import platform_installed as platform_installed
    from ._standin import uninstall_democrai_standin as uninstall_democrai_standin
    from ._ws_adapter import ReferenceWebSocketImplementation as ReferenceWebSocketImplementation
    from ._ws_adapter import reference_ws as reference_ws_implementation
    from ._ws_client import SocketClient as SocketClient
    from ._ws_client import SocketRefusedError as SocketRefusedError

_WHERE: dict[str, tuple[str, str]] = {
    "CAPABILITIES": ("._protocol", "CAPABILITIES"),
    "SANDBOX_VARIABLES": ("._protocol", "SANDBOX_VARIABLES"),
    "Adapter": ("._protocol", "Adapter"),
    "Button": ("._protocol", "Button"),
    "Inbox": ("._protocol", "Inbox"),
    "LegacyAdapter": ("._protocol", "LegacyAdapter"),
    "Peer": ("._protocol", "Peer"),
    "ProtocolError": ("._protocol", "ProtocolError"),
    "Surface": ("._protocol", "Surface"),
    "Text": ("._protocol", "Text"),
    "as_adapter": ("._protocol", "as_adapter"),
    "ReferencePeer": ("._adapters", "ReferencePeer"),
    "RuntimeView": ("._conform", "RuntimeView"),
    "action": ("._actions", "action"),
    "resolve_action": ("._actions", "resolve_action"),
    "FakeImplementation": ("._adapters", "FakeImplementation"),
    "Implementation": ("._adapters", "Implementation"),
    "ReferenceImplementation": ("._adapters", "ReferenceImplementation"),
    "fake_implementation": ("._adapters", "fake"),
    "reference_implementation": ("._adapters", "reference"),
    "NeverAwaitedError": ("._awaits", "NeverAwaitedError"),
    "ClientView": ("._client", "ClientView"),
    "DEFAULT_START": ("._clock", "DEFAULT_START"),
    "DeadlockError": ("._clock", "DeadlockError"),
    "FreezegunConflictError": ("._clock", "FreezegunConflictError"),
    "VirtualClock": ("._clock", "VirtualClock"),
    "VirtualEventLoop": ("._clock", "VirtualEventLoop"),
    "WatchdogError": ("._clock", "WatchdogError"),
    "new_virtual_loop": ("._clock", "new_virtual_loop"),
    "Outcome": ("._conform", "Outcome"),
    "Result": ("._conform", "Result"),
    "run_rule": ("._conform", "run_rule"),
    "run_suite": ("._conform", "run_suite"),
    "Emission": ("._emitted", "Emission"),
    "Emitted": ("._emitted", "Emitted"),
    "FakeTaskManager": ("._fake", "FakeTaskManager"),
    "HarnessRuntime": ("._fake", "HarnessRuntime"),
    "InjectedFailure": ("._fake", "InjectedFailure"),
    "Submission": ("._fake", "Submission"),
    "Harness": ("._harness", "Harness"),
    "HarnessOptions": ("._harness", "HarnessOptions"),
    "ANY": ("._processes", "ANY"),
    "ANY_REST": ("._processes", "ANY_REST"),
    "RECORD_MODES": ("._processes", "RECORD_MODES"),
    "CassetteError": ("._processes", "CassetteError"),
    "ProcessCall": ("._processes", "ProcessCall"),
    "RecordedProcessRunner": ("._processes", "RecordedProcessRunner"),
    "UnmatchedCommandError": ("._processes", "UnmatchedCommandError"),
    "Rule": ("._spec", "Rule"),
    "JsonLinesAdapter": ("._jsonl", "JsonLinesAdapter"),
    "JsonLinesError": ("._jsonl", "JsonLinesError"),
    "reference_jsonl_implementation": ("._jsonl", "reference_jsonl"),
    "load_rules": ("._spec", "load_rules"),
    # needs the serve extra (websockets); resolved lazily like the rest
    "ReferenceWebSocketImplementation": ("._ws_adapter", "ReferenceWebSocketImplementation"),
    "reference_ws_implementation": ("._ws_adapter", "reference_ws"),
    "SocketClient": ("._ws_client", "SocketClient"),
    "SocketRefusedError": ("._ws_client", "SocketRefusedError"),
    "StandinFinder": ("._standin", "StandinFinder"),
    "install_democrai_standin": ("._standin", "install_democrai_standin"),
    "platform_installed": ("._standin", "platform_installed"),
    "uninstall_democrai_standin": ("._standin", "uninstall_democrai_standin"),
}

__all__ = (
    "ANY",
    "ANY_REST",
    "CAPABILITIES",
    "DEFAULT_START",
    "RECORD_MODES",
    "SANDBOX_VARIABLES",
    "Adapter",
    "Button",
    "CassetteError",
    "ClientView",
    "DeadlockError",
    "Emission",
    "Emitted",
    "FakeImplementation",
    "FakeTaskManager",
    "FreezegunConflictError",
    "Harness",
    "HarnessOptions",
    "HarnessRuntime",
    "Implementation",
    "Inbox",
    "InjectedFailure",
    "JsonLinesAdapter",
    "JsonLinesError",
    "LegacyAdapter",
    "NeverAwaitedError",
    "Outcome",
    "Peer",
    "ProcessCall",
    "ProtocolError",
    "RecordedProcessRunner",
    "ReferenceImplementation",
    "ReferencePeer",
    "ReferenceWebSocketImplementation",
    "Result",
    "Rule",
    "RuntimeView",
    "SocketClient",
    "SocketRefusedError",
    "StandinFinder",
    "Submission",
    "Surface",
    "Text",
    "UnmatchedCommandError",
    "VirtualClock",
    "VirtualEventLoop",
    "WatchdogError",
    "action",
    "as_adapter",
    "fake_implementation",
    "install_democrai_standin",
    "load_rules",
    "new_virtual_loop",
    "platform_installed",
    "reference_implementation",
    "reference_jsonl_implementation",
    "reference_ws_implementation",
    "resolve_action",
    "run_rule",
    "run_suite",
    "uninstall_democrai_standin",
)


def __getattr__(name: str) -> Any:
    try:
        module, attr = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'taskbed_harness' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
