"""taskbed_harness: the deterministic test harness of taskbed.

The reference runtime on fakes: a virtual clock that owns the event loop, the reference task
manager with test controls, a recorded subprocess runner, and a client that captures messages.
The pytest plugin (entry point ``taskbed``) wraps these objects in fixtures; everything here
also works without pytest. Hypothesis strategies live in ``taskbed_harness.strategies``.
"""

from ._adapters import CAPABILITIES as CAPABILITIES
from ._adapters import SANDBOX_VARIABLES as SANDBOX_VARIABLES
from ._adapters import FakeImplementation as FakeImplementation
from ._adapters import Implementation as Implementation
from ._adapters import ReferenceImplementation as ReferenceImplementation
from ._adapters import fake as fake_implementation
from ._adapters import reference as reference_implementation
from ._client import ClientView as ClientView
from ._clock import DEFAULT_START as DEFAULT_START
from ._clock import DeadlockError as DeadlockError
from ._clock import FreezegunConflictError as FreezegunConflictError
from ._clock import VirtualClock as VirtualClock
from ._clock import VirtualEventLoop as VirtualEventLoop
from ._clock import new_virtual_loop as new_virtual_loop
from ._conform import Outcome as Outcome
from ._conform import Result as Result
from ._conform import run_rule as run_rule
from ._conform import run_suite as run_suite
from ._fake import FakeTaskManager as FakeTaskManager
from ._fake import HarnessRuntime as HarnessRuntime
from ._fake import InjectedFailure as InjectedFailure
from ._fake import Submission as Submission
from ._harness import Harness as Harness
from ._harness import HarnessOptions as HarnessOptions
from ._processes import ANY as ANY
from ._processes import ANY_REST as ANY_REST
from ._processes import RECORD_MODES as RECORD_MODES
from ._processes import CassetteError as CassetteError
from ._processes import ProcessCall as ProcessCall
from ._processes import RecordedProcessRunner as RecordedProcessRunner
from ._processes import UnmatchedCommandError as UnmatchedCommandError
from ._spec import Rule as Rule
from ._spec import load_rules as load_rules

__all__ = (
    "ANY",
    "ANY_REST",
    "CAPABILITIES",
    "DEFAULT_START",
    "RECORD_MODES",
    "SANDBOX_VARIABLES",
    "CassetteError",
    "ClientView",
    "DeadlockError",
    "FakeImplementation",
    "FakeTaskManager",
    "FreezegunConflictError",
    "Harness",
    "HarnessOptions",
    "HarnessRuntime",
    "Implementation",
    "InjectedFailure",
    "Outcome",
    "ProcessCall",
    "RecordedProcessRunner",
    "ReferenceImplementation",
    "Result",
    "Rule",
    "Submission",
    "UnmatchedCommandError",
    "VirtualClock",
    "VirtualEventLoop",
    "fake_implementation",
    "load_rules",
    "new_virtual_loop",
    "reference_implementation",
    "run_rule",
    "run_suite",
)
