"""The ``module_sdk.tasks`` facade: what module code calls.

Each method validates its input, reads the session and the request context, and delegates to
the task manager or a port. Validation comes first and leaves nothing behind: a rejected call
creates no row, sends no message, starts no process and closes the coroutine it was given.
"""

from __future__ import annotations

import functools
import inspect
import json
import locale
import os
import subprocess
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from . import ui
from ._context import RequestContext, current_request, sdk_variable
from ._errors import (
    AsyncFunctionError,
    CoroutineReusedError,
    InvalidCommandError,
    InvalidEnvironmentError,
    InvalidSubmissionError,
    InvalidTaskKeyError,
    InvalidTokenError,
    ManagerNotInitializedError,
    MissingUserError,
    NotSerializableError,
    SandboxViolationError,
    TaskKeyRefusedError,
    UnknownTaskNameError,
    see,
)
from ._host import Host
from ._manager import ACCEPTED, CoroutineWork, TaskManager, Work
from ._model import DEFAULT_LABEL, Owner, clamp_progress, json_copy, serialize
from ._ports import ProcessResult

if TYPE_CHECKING:
    import types

P = ParamSpec("P")
T = TypeVar("T")

#: The sandbox variables, in the reference's names (an adapter maps other implementations').
SANDBOX_PREFIX = "MODULE_SDK_"

#: The longest ``task_key``, in UTF-8 bytes (BG-14): far above any real key, far below what
#: makes a store grow without bound (a 10 MB key once grew a SQLite file by 63 MB).
MAX_TASK_KEY_BYTES = 1024


# (the raw os.environ it was decoded from, that environment less the sandbox variables)
_environ_seen: tuple[dict[bytes, bytes], dict[str, str]] | None = None


def _parent_environment() -> dict[str, str]:
    """A fresh copy of ``os.environ`` without sandbox variables.

    Decoding ``os.environ`` costs more than the rest of ``run_subprocess``'s own work
    (benchmarks/bench_subprocess.py), so the decoded copy is kept while the raw environment
    compares equal to the one it was decoded from. Decoded as ``os.environ`` decodes.
    """
    global _environ_seen  # noqa: PLW0603 - a one-entry cache
    raw = getattr(os.environ, "_data", None)
    if os.name != "posix" or not isinstance(raw, dict):
        return {k: v for k, v in os.environ.items() if not k.startswith(SANDBOX_PREFIX)}
    seen = _environ_seen
    if seen is None or seen[0] != raw:
        snapshot = dict(raw)
        decoded = {os.fsdecode(k): os.fsdecode(v) for k, v in snapshot.items()}
        seen = _environ_seen = (
            snapshot,
            {k: v for k, v in decoded.items() if not k.startswith(SANDBOX_PREFIX)},
        )
    return dict(seen[1])


def session_owner(session: object) -> Owner:
    """The owner a session stands for, or MissingUserError (OWN-1)."""
    if not isinstance(session, dict):
        session = {}
    user = session.get("user")
    user_id = user.get("id") if isinstance(user, dict) else None
    if user_id is None or not isinstance(user, dict):
        raise MissingUserError(
            "the session has no user id, so a task would have no owner; pass a session like "
            '{"user": {"id": 7, "organization_id": 10}} ' + see("ownership", "OWN-1")
        )
    org = user.get("organization_id", session.get("organization_id"))
    return Owner(user_id, org)


def _with_sdk(sdk: Any, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    # In the worker's own copy of the context: current_sdk() is the SDK that called.
    sdk_variable().set(sdk)
    return func(*args, **kwargs)


def _close(obj: object) -> None:
    if inspect.iscoroutine(obj):
        obj.close()


def _check_fresh(coro: Coroutine[Any, Any, Any]) -> None:
    """Refuse a coroutine object that was submitted before or has started (BG-12)."""
    # What inspect.getcoroutinestate() tells of a fresh one, read without its call (on every
    # submission); only a coroutine object gets here (inspect.iscoroutine).
    native = cast("types.CoroutineType[Any, Any, Any]", coro)
    fresh = not native.cr_running and not native.cr_suspended and native.cr_frame is not None
    if fresh and coro not in ACCEPTED:
        return
    state = inspect.getcoroutinestate(coro)
    name = getattr(coro, "__name__", "job")
    how = {
        inspect.CORO_CREATED: "was already submitted",
        inspect.CORO_SUSPENDED: "has already started (it is running somewhere)",
        inspect.CORO_RUNNING: "is the one running this call",
        inspect.CORO_CLOSED: "has already finished or been closed",
    }[state]
    raise CoroutineReusedError(
        f"this coroutine object {how}; a coroutine object runs only once. Call the coroutine "
        f"function again for each submission: run_background({name}(...)), not "
        f"c = {name}(...) then run_background(c) twice. It was left as it is "
        + see("submission", "BG-12")
    )


def _check_key_text(task_key: str) -> None:
    """Refuse a key that some store could not keep as it is (BG-14): too long, a lone
    surrogate, a NUL. Checked here, once, so that every store accepts the same keys."""
    try:
        size = len(task_key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise TaskKeyRefusedError(
            f"task_key holds a lone surrogate {task_key[exc.start]!r} at index {exc.start}, "
            "which is not text any store can keep; build the key from real text, e.g. "
            'task_key=f"reports.{report_id}" ' + see("submission", "BG-14")
        ) from None
    if "\0" in task_key:
        raise TaskKeyRefusedError(
            f"task_key holds a NUL character at index {task_key.index(chr(0))}, which a "
            "PostgreSQL store cannot keep; drop it: task_key=key.replace('\\0', '') "
            + see("submission", "BG-14")
        )
    if size > MAX_TASK_KEY_BYTES:
        raise TaskKeyRefusedError(
            f"task_key is {size} bytes in UTF-8, over the limit of {MAX_TASK_KEY_BYTES}; "
            'key on an id, not on the data: task_key=f"reports.{report_id}" or a digest, '
            "task_key=hashlib.sha256(data).hexdigest() " + see("submission", "BG-14")
        )


def _is_async(func: object) -> bool:
    if inspect.isawaitable(func):
        return True
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        return True
    if callable(func) and not inspect.isroutine(func):  # an object with an async __call__
        return inspect.iscoroutinefunction(type(func).__call__)
    return False


def _async_refusal(func: object, *, returned: bool = False) -> AsyncFunctionError:
    inner = func
    while isinstance(inner, functools.partial):
        inner = inner.func
    name = getattr(inner, "__name__", None) or type(inner).__name__
    if returned:
        what = f"{name} returned a coroutine, which a worker thread cannot run (it was closed)"
        fix = "await the coroutine function directly: await job(x)"
    elif inspect.isawaitable(func):
        what = f"expected a callable, got an awaitable ({type(func).__name__}) that it cannot run"
        fix = (
            "for a blocking function pass it and its arguments, run_blocking(func, arg) and not "
            f"run_blocking(func(arg)); for async code await it directly: await {name}(x)"
        )
    else:
        what = f"{name} is an async function, which a worker thread cannot run"
        fix = (
            f"await it directly: await {name}(x) and not run_blocking({name}, x); "
            "run_blocking is for blocking functions such as run_blocking(time.sleep, 1)"
        )
    return AsyncFunctionError(f"run_blocking {what}; {fix} " + see("blocking", "BLOCK-6"))


def _check_env_entry(name: str, value: str) -> None:
    """Refuse an env entry that no process environment can hold as given (CMD-11)."""
    if not name or "=" in name or "\0" in name:
        why = "is empty" if not name else "holds '='" if "=" in name else "holds a NUL byte"
        raise InvalidEnvironmentError(
            f"env name {name!r} {why}, so it cannot be an environment variable; "
            "names are non-empty, without '=' or NUL: env={'NAME': 'value'} "
            + see("commands", "CMD-11")
        )
    if "\0" in value:
        raise InvalidEnvironmentError(
            f"env value of {name} holds a NUL byte, which no environment can hold; drop it: "
            f"env={{{name!r}: value.replace('\\0', '')}} " + see("commands", "CMD-11")
        )


def _decode(data: bytes | None) -> str | None:
    # As subprocess does in text mode: the locale's encoding, universal newlines.
    if data is None:
        return None
    text = data.decode(locale.getpreferredencoding(do_setlocale=False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


class Tasks:
    """``module_sdk.tasks``: background jobs, blocking calls, subprocesses, progress, queries.

    One instance is bound to a session and a module; ``Runtime.request()`` hands it out as
    ``sdk.tasks``. Work it starts (a background task, a ``run_blocking`` call) runs with its
    SDK as ``current_sdk()``.
    """

    #: The SDK this facade belongs to (set by ``ModuleSDK``); None for a bare facade.
    sdk: Any = None

    def __init__(self, runtime: Host, session: dict[str, Any], module: str) -> None:
        self._runtime = runtime
        self._session = session
        self._module = module

    # ------------------------------------------------------------ helpers

    @property
    def runtime(self) -> Host:
        """The runtime this facade belongs to (its ``manager``, ``store``, ...): a seam for
        adapters and one-bug variants."""
        return self._runtime

    @property
    def _manager(self) -> TaskManager | None:
        return self._runtime.manager

    def _require_manager(self) -> TaskManager:
        manager = self._runtime.manager
        if manager is None:
            raise ManagerNotInitializedError
        return manager

    def _context(self) -> RequestContext | None:
        return current_request()

    # The checks of bad input, one each, as seams (tests/test_teeth.py swaps them out).

    @staticmethod
    def _check_coroutine(coro: Coroutine[Any, Any, Any]) -> None:
        _check_fresh(coro)

    @staticmethod
    def _check_task_key(task_key: str) -> None:
        _check_key_text(task_key)

    @staticmethod
    def _check_env(env: dict[str, str]) -> None:
        for name, value in env.items():
            _check_env_entry(name, value)

    # ------------------------------------------------------------ background work

    async def run_background(
        self,
        coro_or_name: Coroutine[Any, Any, Any] | str,
        label: str = DEFAULT_LABEL,
        *,
        task_key: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Start background work and return its task id at once (BG).

        Args:
            coro_or_name: a coroutine object (``job()``, not ``job``) or the name of a task
                registered with ``Runtime.register_task``.
            label: what the client shows for the task.
            task_key: while a task with this key is active in the session's organization,
                submitting the key again returns that task's id instead of starting another.
            **kwargs: arguments for a registered task.

        Raises:
            ValueError: no user in the session; an unknown task name; something that is
                neither a coroutine nor a name (such as ``job`` instead of ``job()``).
            TypeError: a ``task_key`` that is not a string (also a ValueError).
            RuntimeError: the task manager is not running ("TaskManager not initialized").
        """
        try:
            owner = session_owner(self._session)
            manager = self._require_manager()
            if task_key is not None and not isinstance(task_key, str):
                raise InvalidTaskKeyError(
                    f"task_key must be a string, got {type(task_key).__name__} {task_key!r}; "
                    f'use task_key=f"{self._module}.<job>.{{id}}" ' + see("dedup", "DEDUP-5")
                )
            if task_key:
                self._check_task_key(task_key)
            if not isinstance(label, str):
                raise InvalidSubmissionError(
                    f"label must be a string, got {label!r} " + see("submission", "BG-1")
                )
            work = self._work(coro_or_name, kwargs)
        except CoroutineReusedError:
            raise  # the coroutine belongs to the task that runs it: not ours to close
        except BaseException:
            _close(coro_or_name)
            raise
        ctx = self._context()
        # The task runs in a copy of this context, taken inside submit() once the store answered:
        # set for that call only, the task's current_sdk() is this SDK and the caller's is kept.
        variable = sdk_variable()
        token = variable.set(self.sdk if self.sdk is not None else variable.get())
        try:
            return await manager.submit(
                work,
                owner=owner,
                module=self._module,
                label=label,
                task_key=task_key or None,
                request=ctx,
                session_key=self._session_key(),
            )
        finally:
            variable.reset(token)

    def _work(self, target: object, kwargs: dict[str, Any]) -> Work:
        if inspect.iscoroutine(target):
            self._check_coroutine(target)
            if kwargs:
                raise InvalidSubmissionError(
                    f"keyword arguments {sorted(kwargs)} go to a registered task name, not to a "
                    "coroutine; pass them to the coroutine function instead: "
                    "run_background(job(x=1)) " + see("submission", "BG-2")
                )
            return CoroutineWork(target)
        if isinstance(target, str):
            func = self._runtime.registered_task(target)
            if func is None:
                known = ", ".join(sorted(self._runtime.task_names())) or "none registered"
                raise UnknownTaskNameError(
                    f"no task registered under the name {target!r} (known: {known}); register "
                    f"it first with rt.register_task({target!r}, func) " + see("submission", "BG-3")
                )
            if inspect.iscoroutinefunction(func):
                return Work(start=lambda: func(**kwargs), discard=lambda: None)
            pool = self._runtime.pool
            return Work(start=lambda: pool.run(func, **kwargs), discard=lambda: None)
        # __name__, not __qualname__: "outer.<locals>.job()" is not a call anyone can paste
        name = getattr(target, "__name__", None) or repr(target)
        if callable(target):
            hint = (
                f"pass a coroutine object: run_background({name}()) and not run_background({name})"
            )
        else:
            hint = "pass a coroutine object such as run_background(job()) or a registered name"
        raise InvalidSubmissionError(
            f"run_background expected a coroutine or a registered task name, got "
            f"{type(target).__name__}: {hint} " + see("submission", "BG-4")
        )

    def _session_key(self) -> str | None:
        key = self._session.get("session_key")
        return None if key is None else str(key)

    async def run_blocking(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking function in a worker thread and return its value (BLOCK).

        Its exception is re-raised unchanged. The caller's context variables are visible
        inside; what the function sets stays inside.

        Raises:
            TypeError: *func* is not callable (``run_blocking(f())`` for ``run_blocking(f)``),
                or it is async: a coroutine function, an awaitable, or a function that
                returned a coroutine (``await`` those instead).
        """
        if _is_async(func):
            _close(func)
            raise _async_refusal(func)
        if not callable(func):
            _close(func)
            raise TypeError(
                f"run_blocking expected a callable, got {type(func).__name__}: pass the "
                "function and its arguments, run_blocking(func, arg) and not "
                "run_blocking(func(arg)) " + see("blocking", "BLOCK-4")
            )
        if self.sdk is None or sdk_variable().get() is self.sdk:
            value = await self._runtime.pool.run(func, *args, **kwargs)
        else:
            value = await self._runtime.pool.run(_with_sdk, self.sdk, func, *args, **kwargs)
        if inspect.iscoroutine(value):  # e.g. run_blocking(lambda: job()): it ran nowhere
            value.close()
            raise _async_refusal(func, returned=True)
        return value

    # ------------------------------------------------------------ subprocesses

    async def run_subprocess(
        self,
        command: list[str | os.PathLike[str]],
        *,
        cwd: str | os.PathLike[str] | None = None,
        check: bool = False,
        text: bool = True,
        capture_output: bool = True,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        """Run a command, never through a shell, without blocking the event loop (CMD).

        Behaves as ``subprocess.run`` documents for results, ``check`` and ``timeout``. The
        module's sandbox variables are set last in the environment.

        Raises:
            TypeError: *command* is not a non-empty list, a token is neither str nor
                os.PathLike, or *env* is not a dict of strings.
            ValueError: a token is empty or blank.
            PermissionError: *cwd* is outside the module's allowed paths.
            subprocess.CalledProcessError: ``check=True`` and the command exited non-zero.
            subprocess.TimeoutExpired: the command ran longer than *timeout* (it was killed).
        """
        argv = self._argv(command)
        merged = self._environment(env)
        workdir = None if cwd is None else os.fspath(cwd)
        if workdir is not None:
            self._check_cwd(workdir)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float)
        ):
            raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
        try:
            result: ProcessResult = await self._runtime.processes.run(
                argv, cwd=workdir, env=merged, timeout=timeout, capture_output=capture_output
            )
        except subprocess.TimeoutExpired as exc:
            exc.cmd = command  # as subprocess.run: the command as given, like CompletedProcess
            raise
        out, err = (
            (_decode(result.stdout), _decode(result.stderr))
            if text
            else (result.stdout, result.stderr)
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, command, out, err)
        return subprocess.CompletedProcess(command, result.returncode, out, err)

    @staticmethod
    def _argv(command: object) -> list[str]:
        if not isinstance(command, list) or not command:
            shown = "an empty list" if command == [] else f"{type(command).__name__} {command!r}"
            example = '["ls", "-l", "/tmp"]'
            if isinstance(command, str) and command.strip():
                example = json.dumps(command.split())
            raise InvalidCommandError(
                f"command must be a non-empty list of arguments, got {shown}; write "
                f"run_subprocess({example}) — it never runs through a shell "
                + see("commands", "CMD-1")
            )
        argv = []
        for index, item in enumerate(command):
            token = os.fsdecode(os.fspath(item)) if isinstance(item, os.PathLike) else item
            if not isinstance(token, str):
                raise InvalidCommandError(
                    f"command[{index}] must be a str or os.PathLike, got "
                    f"{type(token).__name__} {token!r}; convert it: str({token!r}) "
                    + see("commands", "CMD-3")
                )
            if not token.strip():
                raise InvalidTokenError(
                    f"command[{index}] is empty or blank ({token!r}); drop it or give it a value "
                    + see("commands", "CMD-2")
                )
            argv.append(token)
        return argv

    def _environment(self, env: object) -> dict[str, str]:
        if env is not None and (
            not isinstance(env, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise TypeError(
                f"env must be a dict of str to str, got {env!r}; write env={{'NAME': 'value'}} "
                + see("commands", "CMD-7")
            )
        if env:
            self._check_env(env)
        merged = _parent_environment()
        if env:
            merged.update((k, v) for k, v in env.items() if not k.startswith(SANDBOX_PREFIX))
        merged.update(self.sandbox_variables())
        return merged

    def sandbox_variables(self) -> dict[str, str]:
        """The sandbox variables a subprocess started here gets (each only when known)."""
        ctx = self._context()
        module = self._module  # the SDK holder is who runs the command, whatever request is active
        owner: Owner | None
        try:
            owner = session_owner(self._session)
        except MissingUserError:
            owner = None
        user_id = ctx.user_id if ctx is not None else owner and owner.user_id
        org_id = ctx.organization_id if ctx is not None else owner and owner.organization_id
        session_key = ctx.session_key if ctx is not None else self._session_key()
        values: dict[str, Any] = {
            "MODULE_SDK_MODULE": module,
            "MODULE_SDK_SUBJECT_KIND": "module",
            "MODULE_SDK_ACCESS": json.dumps(self._runtime.module_access(module)),
            "MODULE_SDK_USER_ID": user_id,
            "MODULE_SDK_ORGANIZATION_ID": org_id,
            "MODULE_SDK_SESSION_KEY": session_key,
            "MODULE_SDK_REQUEST_ID": ctx.request_id if ctx is not None else None,
        }
        return {k: str(v) for k, v in values.items() if v is not None}

    def _check_cwd(self, cwd: str) -> None:
        module = self._module  # the SDK holder runs the command, whatever request is active
        allowed = self._runtime.allowed_paths(module)
        if allowed is None:
            return
        real = os.path.realpath(cwd)
        for root in allowed:
            if os.path.commonpath([real, root]) == root:
                return
        raise SandboxViolationError(
            f"cwd {cwd!r} is outside the paths module {module!r} may use ({allowed}); "
            "pick a cwd inside them or grant access with "
            f"rt.register_module({module!r}, access=[{{'path': ...}}]) " + see("commands", "CMD-9")
        )

    # ------------------------------------------------------------ progress and confirmation

    async def update_progress(
        self,
        task_id: str,
        progress: float,
        checkpoint: dict[str, Any] | None = None,
        label: str | None = None,
    ) -> None:
        """Store and push a task's progress, clamped into [0, 1] (PROG).

        A checkpoint or label replaces the stored one. An unknown id does nothing.

        Raises:
            ValueError: *progress* is not a finite number (the stored value is unchanged).
            TypeError: *checkpoint* is not a JSON-serialisable dict.
        """
        value = clamp_progress(progress)
        if checkpoint is not None:
            if not isinstance(checkpoint, dict):
                raise NotSerializableError(
                    f"checkpoint must be a dict, got {type(checkpoint).__name__}; write "
                    "checkpoint={'done': 10} " + see("progress", "PROG-3")
                )
            checkpoint = json_copy(checkpoint, "checkpoint", "PROG-3")
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a string, got {label!r}")
        manager = self._manager
        if manager is not None:
            await manager.update_progress(task_id, value, checkpoint, label)

    async def emit_progress(
        self,
        task_id: str,
        progress: float | None = None,
        label: str | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        """Push a progress message without storing anything; ``None`` means the stored value."""
        value = None if progress is None else clamp_progress(progress)
        if label is not None and not isinstance(label, str):  # as update_progress checks it
            raise TypeError(f"label must be a string, got {label!r}")
        manager = self._manager
        if manager is not None:
            manager.emit_progress(task_id, value, label, checkpoint=checkpoint is not None)

    async def request_confirmation(
        self, task_id: str, builder: ui.Builder | Sequence[ui.Component | dict[str, Any]]
    ) -> Any:
        """Ask the task's owner to confirm, and wait for their answer (CONF).

        The task is ``waiting_confirmation`` until the answer arrives, then ``running`` again.
        *builder* is a ``ui.Builder`` (as on the platform) or a list of components.

        Raises:
            ValueError: no task has that id.
            RuntimeError: the task manager is not running.
            TypeError: *builder* is neither a builder nor a list of components.
        """
        manager = self._require_manager()
        components = ui.serialize_components(builder)
        return await manager.request_confirmation(task_id, components)

    # ------------------------------------------------------------ queries

    def _query(self, find: Callable[[TaskManager], list[Any]]) -> list[dict[str, Any]]:
        manager = self._manager
        if manager is None:
            return []
        try:
            return [serialize(r) for r in find(manager)]
        except Exception:  # noqa: BLE001 - QUERY: a failing store yields [], never an exception
            return []

    def get_tasks_by_key(self, task_key: str, organization_id: Any = None) -> list[dict[str, Any]]:
        """Tasks with exactly this key in this organization, any user and status, newest first."""
        if not isinstance(task_key, str):
            # None is "no key" and 10 != "10": no task matches (SQLite would match "10" to 10
            # by column affinity, and the memory store None to every keyless task)
            return []
        return self._query(lambda m: m.store.find_by_key(task_key, organization_id))

    def get_tasks_by_key_prefix(
        self, prefix: str, organization_id: Any = None
    ) -> list[dict[str, Any]]:
        """Tasks whose key starts with *prefix* (``_`` and ``%`` are literal), newest first."""
        return self._query(lambda m: m.store.find_by_key_prefix(prefix, organization_id))

    def list_user_tasks(self, user_id: Any, organization_id: Any = None) -> list[dict[str, Any]]:
        """A user's tasks in this organization (exact match, ``None`` only matches ``None``)."""
        return self._query(lambda m: m.store.find_by_user(user_id, organization_id))
