"""taskbed_harness: the deterministic test harness of taskbed.

The reference runtime on fakes: a virtual clock that owns the event loop, the reference task
manager with test controls, a recorded subprocess runner, and a client that captures messages.
The pytest plugin (entry point ``taskbed``) wraps these objects in fixtures; everything here
also works without pytest. Hypothesis strategies live in ``taskbed_harness.strategies``.
"""

from ._client import ClientView as ClientView
from ._clock import DEFAULT_START as DEFAULT_START
from ._clock import DeadlockError as DeadlockError
from ._clock import FreezegunConflictError as FreezegunConflictError
from ._clock import VirtualClock as VirtualClock
from ._clock import VirtualEventLoop as VirtualEventLoop
from ._clock import new_virtual_loop as new_virtual_loop
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

__all__ = (
    "ANY",
    "ANY_REST",
    "DEFAULT_START",
    "RECORD_MODES",
    "CassetteError",
    "ClientView",
    "DeadlockError",
    "FakeTaskManager",
    "FreezegunConflictError",
    "Harness",
    "HarnessOptions",
    "HarnessRuntime",
    "InjectedFailure",
    "ProcessCall",
    "RecordedProcessRunner",
    "Submission",
    "UnmatchedCommandError",
    "VirtualClock",
    "VirtualEventLoop",
    "new_virtual_loop",
)
