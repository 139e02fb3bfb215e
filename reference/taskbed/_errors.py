"""Error types of the reference runtime.

The conformance suite judges every implementation by the platform's built-in types
(``ValueError``, ``TypeError``, ``RuntimeError``, ``PermissionError``), so each error here
subclasses the built-in one the platform raises. The subclasses exist for their messages:
each says what was wrong, shows the correct call and names the spec page that states the rule.
"""

from __future__ import annotations


def see(page: str, rule: str) -> str:
    """The pointer every error message ends with: the spec page and the rule ID."""
    return f"(see specs/{page}.md, rule {rule})"


class TaskbedError(Exception):
    """Base of every error the reference runtime raises on purpose."""


class ManagerNotInitializedError(TaskbedError, RuntimeError):
    """The SDK was used while no task manager runs (before ``start()`` or after ``stop()``)."""

    def __init__(self) -> None:
        super().__init__(
            "TaskManager not initialized: start the runtime first "
            "(`async with Runtime() as rt:` or `await rt.start()`) " + see("manager", "MGR-1")
        )


class MissingUserError(TaskbedError, ValueError):
    """The session has no ``user.id``, so the task would have no owner."""


class InvalidSubmissionError(TaskbedError, ValueError):
    """``run_background`` was given something that is neither a coroutine nor a task name."""


class CoroutineReusedError(InvalidSubmissionError):
    """``run_background`` was given a coroutine object that was already submitted or started.

    A coroutine object runs once; it is left as it is (it belongs to the task that runs it).
    """


class UnknownTaskNameError(TaskbedError, ValueError):
    """``run_background`` was given a name that no ``register_task`` call registered."""


class InvalidTaskKeyError(TaskbedError, TypeError, ValueError):
    """A ``task_key`` that is not a string (both a TypeError and a ValueError)."""


class TaskKeyRefusedError(TaskbedError, ValueError):
    """A ``task_key`` string that some store cannot keep as it is: too long, a lone surrogate,
    a NUL character."""


class InvalidCommandError(TaskbedError, TypeError):
    """A ``run_subprocess`` command of the wrong type (a string, a tuple, None, an empty list)."""


class InvalidTokenError(TaskbedError, ValueError):
    """A ``run_subprocess`` command with an empty or blank token."""


class InvalidEnvironmentError(TaskbedError, ValueError):
    """A ``run_subprocess`` env entry no environment can hold: an empty name, ``=`` or NUL."""


class InvalidProgressError(TaskbedError, ValueError):
    """A progress value that is not a finite number."""


class NotSerializableError(TaskbedError, TypeError):
    """A checkpoint or result that JSON cannot represent."""


class AsyncFunctionError(TaskbedError, TypeError):
    """``run_blocking`` was given something async (a coroutine function, an awaitable)."""


class UnknownTaskError(TaskbedError, ValueError):
    """A task id that the store does not know."""


class SandboxViolationError(TaskbedError, PermissionError):
    """A ``cwd`` outside the paths the module's access rules allow."""


class LifecycleError(TaskbedError, RuntimeError):
    """A status change that the lifecycle table does not allow (an internal invariant)."""


class LeaseLostError(TaskbedError, RuntimeError):
    """This runtime's lease on a shared store was lost: another runtime recovered its tasks.

    It happens when the runtime could not renew its lease for longer than ``lease_seconds``
    (its process was paused, its event loop blocked, the store unreachable). The runtime
    has cancelled its tasks and writes nothing more; start a new ``Runtime``.
    """


class StoreWriteError(TaskbedError, RuntimeError):
    """The task store could not be written within its retry window (I/O error, full disk,
    a lock held elsewhere). The change it carried was not made."""


class TokenRefusedError(TaskbedError, PermissionError):
    """A client token that is malformed, wrongly signed, expired or already used."""
