"""taskbed: the reference runtime of the ``module_sdk.tasks`` API (standard library only)."""

from . import ui as ui
from ._auth import TokenSigner as TokenSigner
from ._channel import Connection as Connection
from ._channel import ConnectionRegistry as ConnectionRegistry
from ._context import RequestContext as RequestContext
from ._context import current_request as current_request
from ._context import current_sdk_var as current_sdk_var
from ._effects import Effects as Effects
from ._errors import AsyncFunctionError as AsyncFunctionError
from ._errors import CoroutineReusedError as CoroutineReusedError
from ._errors import InvalidCommandError as InvalidCommandError
from ._errors import InvalidEnvironmentError as InvalidEnvironmentError
from ._errors import InvalidProgressError as InvalidProgressError
from ._errors import InvalidSubmissionError as InvalidSubmissionError
from ._errors import InvalidTaskKeyError as InvalidTaskKeyError
from ._errors import InvalidTokenError as InvalidTokenError
from ._errors import LeaseLostError as LeaseLostError
from ._errors import LifecycleError as LifecycleError
from ._errors import ManagerNotInitializedError as ManagerNotInitializedError
from ._errors import MissingUserError as MissingUserError
from ._errors import NotSerializableError as NotSerializableError
from ._errors import SandboxViolationError as SandboxViolationError
from ._errors import StoreWriteError as StoreWriteError
from ._errors import TaskbedError as TaskbedError
from ._errors import TaskKeyRefusedError as TaskKeyRefusedError
from ._errors import TokenRefusedError as TokenRefusedError
from ._errors import UnknownTaskError as UnknownTaskError
from ._errors import UnknownTaskNameError as UnknownTaskNameError
from ._host import Host as Host
from ._i18n import I18n as I18n
from ._lifecycle import ACTIVE as ACTIVE
from ._lifecycle import TERMINAL as TERMINAL
from ._lifecycle import TRANSITIONS as TRANSITIONS
from ._lifecycle import TaskEvent as TaskEvent
from ._lifecycle import TaskStatus as TaskStatus
from ._lifecycle import transition as transition
from ._manager import TaskManager as TaskManager
from ._manager import Work as Work
from ._media import Media as Media
from ._media import MediaNotFoundError as MediaNotFoundError
from ._memory_store import MemoryStore as MemoryStore
from ._model import Owner as Owner
from ._model import TaskRecord as TaskRecord
from ._model import serialize as serialize
from ._ports import Broadcaster as Broadcaster
from ._ports import ClientChannel as ClientChannel
from ._ports import Clock as Clock
from ._ports import Lease as Lease
from ._ports import ProcessResult as ProcessResult
from ._ports import ProcessRunner as ProcessRunner
from ._ports import TaskStore as TaskStore
from ._ports import WallClock as WallClock
from ._postgres_store import PostgresStore as PostgresStore
from ._process import OSProcessRunner as OSProcessRunner
from ._runtime import Runtime as Runtime
from ._sdk import DEFAULT_NAMESPACES as DEFAULT_NAMESPACES
from ._sdk import ModuleSDK as ModuleSDK
from ._sdk import NamespaceFactory as NamespaceFactory
from ._sdk import current_sdk as current_sdk
from ._sqlite_store import SQLiteStore as SQLiteStore
from ._tasks import Tasks as Tasks

__version__ = "0.1.0.dev0"

__all__ = (
    "ACTIVE",
    "DEFAULT_NAMESPACES",
    "TERMINAL",
    "TRANSITIONS",
    "AsyncFunctionError",
    "Broadcaster",
    "ClientChannel",
    "Clock",
    "Connection",
    "ConnectionRegistry",
    "CoroutineReusedError",
    "Effects",
    "Host",
    "I18n",
    "InvalidCommandError",
    "InvalidEnvironmentError",
    "InvalidProgressError",
    "InvalidSubmissionError",
    "InvalidTaskKeyError",
    "InvalidTokenError",
    "Lease",
    "LeaseLostError",
    "LifecycleError",
    "ManagerNotInitializedError",
    "Media",
    "MediaNotFoundError",
    "MemoryStore",
    "MissingUserError",
    "ModuleSDK",
    "NamespaceFactory",
    "NotSerializableError",
    "OSProcessRunner",
    "Owner",
    "PostgresStore",
    "ProcessResult",
    "ProcessRunner",
    "RequestContext",
    "Runtime",
    "SQLiteStore",
    "SandboxViolationError",
    "StoreWriteError",
    "TaskEvent",
    "TaskKeyRefusedError",
    "TaskManager",
    "TaskRecord",
    "TaskStatus",
    "TaskStore",
    "TaskbedError",
    "Tasks",
    "TokenRefusedError",
    "TokenSigner",
    "UnknownTaskError",
    "UnknownTaskNameError",
    "WallClock",
    "Work",
    "current_request",
    "current_sdk",
    "current_sdk_var",
    "serialize",
    "transition",
    "ui",
)
