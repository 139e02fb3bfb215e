"""The parent side of the JSON-lines adapter protocol: judge an implementation in a child process.

``JsonLinesAdapter(command)`` is an ``Adapter`` that starts *command* once per rule and talks
to it over its stdin and stdout, one JSON object per line (``docs/guides/jsonl.md`` documents
every line; ``specs/jsonl.schema.json`` is their schema). The suite's checks run here, in the
parent, unchanged: every SDK call, client connection and command they make becomes a request
line, answered by a reply line with the same ``id``.

Theory of operation
===================

*Module code stays in the parent.* A coroutine or function handed to ``run_background`` or
``run_blocking`` cannot cross a pipe, so it crosses as a *job*: a handle (``{"$": "job"}``) that
the child treats as the task's body. When the child's implementation starts the body it sends
``job.start``; the parent runs the code and answers ``job.done`` with the result or the error.
The child cancelling the body sends ``job.cancel``; a body it drops unstarted (a deduplicated
submission, a refused one) it reports with ``job.discard``, and the parent closes the coroutine.

*Time is the suite's.* The parent's clock drives the child: every parent line carries ``now``
(virtual epoch nanoseconds), and after each line the child runs until it is idle and says so
(``idle``, with the number of lines it has ``seen`` and its ``next`` timer). While the child is
busy the parent holds virtual time still (``loop.external_work()``); when the child is idle with
a timer, the parent sends a ``tick`` at that virtual instant. So timeouts, timestamps and leases
agree on both sides, as in process.

*Synchronous calls* (the queries, ``connect``, ``close``) write their line and read the child's
lines until the reply comes, handling whatever comes first (messages, events) in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import itertools
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from typing import IO, Any

from taskbed import ui

from ._jsonl_values import decode, decode_error, encode, encode_error
from ._protocol import CAPABILITIES, SANDBOX_VARIABLES, TASK_ID_TYPES, Adapter, Inbox

PROTOCOL = "taskbed-jsonl"
VERSION = 1
GUIDE = "docs/guides/jsonl.md"

#: The hello a child must write first (shown in handshake errors).
HELLO_EXAMPLE = (
    '{"event": "hello", "protocol": "taskbed-jsonl", "version": 1, "name": "my-impl", '
    '"capabilities": ["processes"], "task_ids": "str", "sandbox_names": {}, "deviations": {}}'
)

#: Loop iterations the parent lets its code run before it resumes a paused child.
RESUME_HOPS = 3

#: Methods of ``sdk.tasks`` that return at once (no ``await``).
SYNC_METHODS = ("get_tasks_by_key", "get_tasks_by_key_prefix", "list_user_tasks")
ASYNC_METHODS = (
    "run_background",
    "run_blocking",
    "run_subprocess",
    "update_progress",
    "emit_progress",
    "request_confirmation",
)

#: Which scope (a request, a job) the running parent code is in; every call carries it, so the
#: child runs the call in that scope's context (the request context the code sees).
_SCOPE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "taskbed_jsonl_scope", default=None
)


class JsonLinesError(Exception):
    """The child broke the protocol (bad hello, a line that is not JSON, it exited, it hung).

    Deliberately not a ``TypeError`` or ``ValueError``: a check that expects one of those
    must not pass because the child went away.
    """


# ---------------------------------------------------------------- jobs


class _Job:
    """Module code that stays here while the child's implementation runs it as a task body."""

    def __init__(self, job_id: str, kind: str, target: Any, ctx: contextvars.Context) -> None:
        self.id = job_id
        self.kind = kind
        self.target = target  # a coroutine, an awaitable, or a callable
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}
        self.ctx = ctx
        self.task: asyncio.Task[None] | None = None
        self.started = False


def _callable_kind(obj: object) -> str | None:
    if inspect.iscoroutine(obj):
        return "coroutine"
    if inspect.isawaitable(obj):
        return "awaitable"
    if not callable(obj):
        return None
    if inspect.iscoroutinefunction(obj) or inspect.isasyncgenfunction(obj):
        return "coroutine_function"
    if not inspect.isroutine(obj) and inspect.iscoroutinefunction(type(obj).__call__):
        return "async_callable"
    return "function"


def _coroutine_state(coro: Any) -> str:
    return str(inspect.getcoroutinestate(coro)).removeprefix("CORO_").lower()


# ---------------------------------------------------------------- client connections


class JsonLinesConnection(Inbox):
    """A client connection held by the child's implementation (``ClientConnection``)."""

    def __init__(self, adapter: JsonLinesAdapter, client_id: str) -> None:
        super().__init__(self._send_to_child, self._close_in_child)
        self._adapter = adapter
        self.id = client_id
        self.received: list[tuple[float, dict[str, Any]]] = []

    def deliver(self, message: dict[str, Any]) -> None:
        self.received.append((self._adapter.now(), message))
        super().deliver(message)

    async def _send_to_child(self, message: dict[str, Any]) -> None:
        await self._adapter.call_async("client.send", client=self.id, message=encode(message))

    def _close_in_child(self) -> None:
        with contextlib.suppress(JsonLinesError):
            self._adapter.call_sync("client.close", client=self.id)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<JsonLinesConnection {self.id} {state} {len(self.messages)} messages>"


# ---------------------------------------------------------------- the SDK, as the parent sees it


class _RemoteTasks:
    """``sdk.tasks`` whose every call is a ``call`` request to the child."""

    def __init__(self, adapter: JsonLinesAdapter, sdk_id: str) -> None:
        self._adapter = adapter
        self._sdk = sdk_id

    def _sync(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._adapter.call_sync(
            "call", sdk=self._sdk, scope=_SCOPE.get(), method=method,
            args=self._adapter.encode(list(args)), kwargs=self._adapter.encode(kwargs),
        )  # fmt: skip

    async def _async(self, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return await self._adapter.call_async(
            "call", sdk=self._sdk, scope=_SCOPE.get(), method=method,
            args=args, kwargs=kwargs,
        )  # fmt: skip

    def get_tasks_by_key(self, *args: Any, **kwargs: Any) -> Any:
        return self._sync("get_tasks_by_key", args, kwargs)

    def get_tasks_by_key_prefix(self, *args: Any, **kwargs: Any) -> Any:
        return self._sync("get_tasks_by_key_prefix", args, kwargs)

    def list_user_tasks(self, *args: Any, **kwargs: Any) -> Any:
        return self._sync("list_user_tasks", args, kwargs)

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Encoded now, at the call: a coroutine argument becomes a job with this context.
        encoded = self._adapter.encode(list(args)), self._adapter.encode(kwargs)
        return self._async(method, *encoded)

    def run_background(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return self._call("run_background", args, kwargs)  # type: ignore[no-any-return]

    def run_blocking(self, func: Any, /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        # The function's arguments stay here with it: the child sees the function as a job.
        handle = self._adapter.encode(func)
        job = self._adapter.job_of(handle)
        if job is not None and job.kind == "function":
            job.args, job.kwargs = args, kwargs
            return self._async("run_blocking", [handle], {})
        return self._call("run_blocking", (func, *args), kwargs)  # type: ignore[no-any-return]

    def run_subprocess(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return self._call("run_subprocess", args, kwargs)  # type: ignore[no-any-return]

    def update_progress(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return self._call("update_progress", args, kwargs)  # type: ignore[no-any-return]

    def emit_progress(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return self._call("emit_progress", args, kwargs)  # type: ignore[no-any-return]

    def request_confirmation(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return self._call("request_confirmation", args, kwargs)  # type: ignore[no-any-return]


class _RemoteSDK:
    """A module SDK held by the child (``.tasks``, ``.session``, ``.module_name``)."""

    def __init__(self, adapter: JsonLinesAdapter, sdk_id: str, session: Any, module: str) -> None:
        self.tasks = _RemoteTasks(adapter, sdk_id)
        self.session = session
        self.module_name = module
        self.ui = ui

    def __repr__(self) -> str:
        return f"<JsonLinesSDK module={self.module_name!r}>"


# ---------------------------------------------------------------- the adapter


_HELLOS: dict[tuple[str, ...], dict[str, Any]] = {}


class JsonLinesAdapter(Adapter):
    """An implementation in a child process, judged over the JSON-lines protocol.

    Args:
        command: the child's argv (``[sys.executable, "-m", "my_impl"]``); one child runs
            per rule, started by ``start()`` and killed by ``teardown()``.
        env: extra environment variables for the child.
        cwd: the child's working directory.
        timeout: real seconds the child may take to write its hello, to answer a
            synchronous call, or to exit when told; past that it is a ``JsonLinesError``.

    What the child declares in its hello (name, capabilities, task id type, sandbox variable
    names, deviations) is read once per command, by starting it and reading its hello, and
    becomes this adapter's declaration.
    """

    def __init__(
        self,
        command: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(part, str) for part in command)
        ):
            raise TypeError(f"command must be a non-empty list of str, got {command!r}")
        self.command = list(command)
        self.env = dict(env or {})
        self.cwd = cwd
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._buffer = b""
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._sync_replies: dict[int, dict[str, Any]] = {}
        self._jobs: dict[str, _Job] = {}
        self._job_of: dict[int, str] = {}
        self._values: dict[str, Any] = {}
        self._clients: dict[str, JsonLinesConnection] = {}
        # Messages to clients, held until the child's next other line: what one step of the
        # child sent to several connections becomes visible to the suite at once.
        self._held: list[tuple[JsonLinesConnection, dict[str, Any]]] = []
        self._registered: dict[str, Callable[..., Any]] = {}
        self._observer: Any = None
        self._sent = 0
        self._seen = 0
        self._hold: contextlib.AbstractContextManager[None] | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dead: str | None = None
        self._started = False
        #: Every line exchanged with the child, in order: ``(direction, object)`` with
        #: direction ``"parent"`` or ``"child"`` (the schema test reads it).
        self.transcript: list[tuple[str, dict[str, Any]]] = []
        self.record = False
        hello = self._declaration()
        self.name = str(hello["name"])
        self.capabilities = frozenset(hello.get("capabilities", ()))
        self.task_ids = str(hello.get("task_ids", "str"))
        names = hello.get("sandbox_names") or {}
        self.sandbox_names = {n: names.get(n, n) for n in SANDBOX_VARIABLES}
        self.deviations = dict(hello.get("deviations") or {})

    # ------------------------------------------------------------ the hello

    def _declaration(self) -> dict[str, Any]:
        key = tuple(self.command)
        if key not in _HELLOS:
            proc, stderr = self._spawn()
            try:
                _HELLOS[key] = self._read_hello(proc, stderr)
            finally:
                self._kill(proc, stderr)
        return _HELLOS[key]

    def _spawn(self) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _kill
        env = {**os.environ, **self.env}
        try:
            proc = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                env=env, cwd=self.cwd, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            stderr.close()
            raise JsonLinesError(
                f"cannot start the child {self.command!r}: {exc} (see {GUIDE})"
            ) from None
        return proc, stderr

    def _read_hello(self, proc: subprocess.Popen[bytes], stderr: IO[bytes]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = _read_line_blocking(proc.stdout, self.timeout)
        where = f"the child {self.command!r}"
        if line is None:
            try:
                code: int | None = proc.wait(1.0)
            except subprocess.TimeoutExpired:
                code = None
            ended = f"exited with code {code}" if code is not None else "wrote nothing"
            raise JsonLinesError(
                f"{where} {ended} before its hello line (within {self.timeout:g} s); it must "
                f"first write one line such as {HELLO_EXAMPLE} (see {GUIDE}#hello)"
                + _stderr_tail(stderr)
            )
        try:
            hello = json.loads(line)
        except ValueError:
            raise JsonLinesError(
                f"{where} wrote {_show(line)} as its first line, which is not JSON; the first "
                f"line must be a hello such as {HELLO_EXAMPLE} (see {GUIDE}#hello)"
            ) from None
        return check_hello(hello, where)

    # ------------------------------------------------------------ life

    def now(self) -> float:
        return self.now_ns() / 1e9

    def now_ns(self) -> int:
        loop = self._loop
        clock = getattr(loop, "clock", None) if loop is not None else None
        if clock is not None:
            return int(clock.now_ns())
        return time.time_ns()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._proc is None:
            self._proc, self._stderr = self._spawn()
            hello = self._read_hello(self._proc, self._stderr)
            if hello != self._declaration():
                raise JsonLinesError(
                    f"the child {self.command!r} declared {hello!r} this time, and "
                    f"{self._declaration()!r} before; a child's hello must not change"
                )
            assert self._proc.stdout is not None
            os.set_blocking(self._proc.stdout.fileno(), False)
            self._loop.add_reader(self._proc.stdout.fileno(), self._on_readable)
        await self.call_async("start")
        self._started = True

    async def stop(self) -> None:
        if self._proc is None or self._dead is not None or not self._started:
            return
        await self.call_async("stop")

    async def teardown(self, rule: str) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the child (``exit``, then a kill), its jobs and every wait on it."""
        proc, stderr = self._proc, self._stderr
        if proc is not None and self._dead is None:
            with contextlib.suppress(Exception):
                self._write({"op": "exit"})
        self._give_up("the adapter was closed")
        if proc is not None:
            self._kill(proc, stderr, grace=self.timeout)
        for job in list(self._jobs.values()):
            if job.task is not None and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(BaseException):
                    await job.task
            if job.kind == "coroutine" and _coroutine_state(job.target) == "created":
                job.target.close()  # it never ran, and nothing will run it now
        self._jobs.clear()
        self._job_of.clear()

    def _kill(
        self, proc: subprocess.Popen[bytes], stderr: IO[bytes] | None, grace: float = 0.0
    ) -> None:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, 9)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if stderr is not None and not stderr.closed:
            stderr.close()

    # ------------------------------------------------------------ the module side

    @contextlib.asynccontextmanager
    async def _request(
        self, session: dict[str, Any], module: str, request_id: str | None
    ) -> AsyncIterator[_RemoteSDK]:
        scope = f"r{next(self._ids)}"
        await self.call_async(
            "request.open", scope=scope, session=self.encode(session), module=module,
            request_id=request_id,
        )  # fmt: skip
        token = _SCOPE.set(scope)
        try:
            yield _RemoteSDK(self, scope, session, module)
        finally:
            _SCOPE.reset(token)
            if self._dead is None:
                await self.call_async("request.close", scope=scope)

    def request(
        self, *, session: dict[str, Any], module: str, request_id: str | None
    ) -> AbstractAsyncContextManager[Any]:
        return self._request(session, module, request_id)

    def sdk(self, *, session: dict[str, Any], module: str) -> Any:
        sdk_id = f"s{next(self._ids)}"
        self.call_sync("sdk.open", sdk=sdk_id, session=self.encode(session), module=module)
        return _RemoteSDK(self, sdk_id, session, module)

    def connect(
        self, user_id: Any, organization_id: Any = None, credentials: Any = None
    ) -> JsonLinesConnection:
        client_id = f"c{next(self._ids)}"
        conn = JsonLinesConnection(self, client_id)
        self._clients[client_id] = conn
        self.call_sync(
            "connect", client=client_id, user=self.encode(user_id),
            organization=self.encode(organization_id),
        )  # fmt: skip
        return conn

    def observer(self) -> Any:
        """One observer SDK per child (the suite asks for it at every poll)."""
        if self._observer is None:
            self._observer = super().observer()
        return self._observer

    def register_task(self, name: str, func: Callable[..., Any]) -> None:
        self._registered[name] = func
        self.call_sync("register_task", name=name, kind=_callable_kind(func) or "function")

    def register_module(self, name: str, access: Any) -> None:
        self.call_sync("register_module", name=name, access=self.encode(access))

    async def restart(self, *, crash: bool = False) -> None:
        self._observer = None  # an SDK belongs to the runtime it was made on
        await self.call_async("restart", crash=crash)

    # ------------------------------------------------------------ values

    def encode(self, value: Any) -> Any:
        """*value* for the wire; module code in it becomes jobs (see the module docstring)."""
        return encode(value, self._encode_hook)

    def _encode_hook(self, value: Any) -> Any:
        if isinstance(value, ui.Builder):
            return {"$": "ui", "components": value.build()}
        if isinstance(value, ui.Component):
            return {"$": "ui", "component": value.to_dict()}
        kind = _callable_kind(value)
        if kind is None:
            return None
        # A coroutine object is one job however often it is submitted (BG-12 judges that);
        # a function is a new job per call, with the caller's context of that call.
        job_id = self._job_of.get(id(value)) if kind == "coroutine" else None
        if job_id is None or self._jobs[job_id].target is not value:
            job_id = f"j{next(self._ids)}"
            self._jobs[job_id] = _Job(job_id, kind, value, contextvars.copy_context())
            if kind == "coroutine":
                self._job_of[id(value)] = job_id
        name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
        inner = value
        while isinstance(inner, functools.partial):
            inner = inner.func
        if name is None:
            name = getattr(inner, "__name__", None) or type(inner).__name__
        out = {"$": "job", "job": job_id, "kind": kind, "name": str(name)}
        if kind == "coroutine":
            out["state"] = _coroutine_state(value)
        return out

    def job_of(self, encoded: Any) -> _Job | None:
        if isinstance(encoded, dict) and encoded.get("$") == "job":
            return self._jobs.get(encoded["job"])
        return None

    def decode(self, data: Any) -> Any:
        return decode(data, self._decode_hook)

    def _decode_hook(self, data: dict[str, Any]) -> Any:
        if data["$"] == "ref":
            return self._values[data["ref"]]
        if data["$"] == "job":
            job = self._jobs.get(data["job"])
            return job.target if job is not None else NotImplemented
        return NotImplemented

    def _keep(self, value: Any) -> str:
        ref = f"v{next(self._ids)}"
        self._values[ref] = value
        return ref

    # ------------------------------------------------------------ the wire

    def _write(self, line: dict[str, Any]) -> None:
        proc = self._proc
        if self._dead is not None:
            raise JsonLinesError(self._dead)
        if proc is None or proc.stdin is None:
            raise JsonLinesError("the child is not started; await start() first")
        line.setdefault("now", self.now_ns())
        if self.record:
            self.transcript.append(("parent", dict(line)))
        data = json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n"
        try:
            proc.stdin.write(data.encode())
            proc.stdin.flush()
        except OSError as exc:
            self._on_eof(f"writing to it failed ({exc})")
            raise JsonLinesError(self._dead or str(exc)) from None
        self._sent += 1
        self._busy()

    def _busy(self) -> None:
        loop = self._loop
        if self._hold is None and loop is not None and hasattr(loop, "external_work"):
            hold: contextlib.AbstractContextManager[None] = loop.external_work()
            hold.__enter__()
            self._hold = hold

    def _release(self) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.__exit__(None, None, None)

    def call_sync(self, op: str, **fields: Any) -> Any:
        """Send a request and read lines until its reply (for the API's synchronous calls)."""
        call_id = next(self._ids)
        self._write({"op": op, "id": call_id, **fields})
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        deadline = time.monotonic() + self.timeout
        while call_id not in self._sync_replies:
            if self._dead is not None:
                raise JsonLinesError(self._dead)
            left = deadline - time.monotonic()
            if left <= 0:
                self._protocol_error(
                    f"no reply to its {op!r} request (id {call_id}) within {self.timeout:g} s"
                )
                raise JsonLinesError(self._dead or "")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                self._on_readable()
        return self._result(self._sync_replies.pop(call_id))

    async def call_async(self, op: str, **fields: Any) -> Any:
        """Send a request and await its reply; a cancelled wait cancels the child's call too."""
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[call_id] = future
        try:
            self._write({"op": op, "id": call_id, **fields})
        except BaseException:
            self._pending.pop(call_id, None)
            raise
        try:
            # Shielded: a cancelled wait leaves the reply to come, which ends the loop below.
            return self._result(await asyncio.shield(future))
        except asyncio.CancelledError:
            if self._dead is None and not future.done():
                with contextlib.suppress(JsonLinesError):
                    self._write({"op": "cancel", "call": call_id})
                # The child's call ends (and its effect is stored) before this one does.
                while not future.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(future)
            raise
        finally:
            self._pending.pop(call_id, None)

    def _result(self, reply: dict[str, Any]) -> Any:
        if "error" in reply:
            raise self._error(reply["error"])
        return self.decode(reply.get("result"))

    def _error(self, data: dict[str, Any]) -> BaseException:
        if "ref" in data and data["ref"] in self._values:
            exc: BaseException = self._values[data["ref"]]
            return exc
        return decode_error(data, self._decode_hook)

    def _on_readable(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None or self._dead is not None:
            return
        try:
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            self._on_eof(f"reading from it failed ({exc})")
            return
        if not chunk:
            self._on_eof("it closed its stdout")
            return
        self._buffer += chunk
        while b"\n" in self._buffer and self._dead is None:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            if raw.strip():
                self._dispatch(raw)

    def _dispatch(self, raw: bytes) -> None:
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        if not isinstance(line, dict):
            self._protocol_error(f"wrote {_show(raw)}, which is not a JSON object")
            return
        if self.record:
            self.transcript.append(("child", line))
        try:
            self._handle(line)
        except (KeyError, TypeError, ValueError) as exc:
            self._protocol_error(f"wrote {_show(raw)}, which breaks the protocol ({exc!r})")

    def _handle(self, line: dict[str, Any]) -> None:  # noqa: PLR0912 - a branch per line
        if line.get("event") == "message":
            conn = self._clients.get(line["client"])
            if conn is not None:
                self._held.append((conn, line["message"]))
            return
        self._deliver_held()
        if "reply" in line or line.get("event") in ("job.start", "job.cancel"):
            self._resume_later()
        if "reply" in line:
            call_id = line["reply"]
            future = self._pending.get(call_id)
            if future is not None:
                if not future.done():
                    future.set_result(line)
            else:
                self._sync_replies[call_id] = line
            return
        event = line["event"]
        if event == "idle":
            self._on_idle(int(line["seen"]), line.get("next"))
        elif event == "job.start":
            self._start_job(line)
        elif event == "job.cancel":
            job = self._jobs.get(line["job"])
            if job is not None and job.task is not None:
                job.task.cancel()
        elif event == "job.discard":
            job = self._jobs.get(line["job"])
            if job is not None and job.kind == "coroutine" and not job.started:
                job.target.close()
        else:
            raise ValueError(f"unknown event {event!r}")

    def _deliver_held(self) -> None:
        held, self._held = self._held, []
        for conn, message in held:
            conn.deliver(message)

    def _resume_later(self, hops: int = RESUME_HOPS) -> None:
        """The child paused, handing control to our code: let that code run up to its next
        wait (a few loop iterations, so tasks woken through another task run too), then
        send ``resume``."""
        loop = self._loop
        if loop is None:
            return
        if hops > 0:
            loop.call_soon(self._resume_later, hops - 1)
        elif self._dead is None:
            with contextlib.suppress(JsonLinesError):
                self._write({"op": "resume"})

    def _on_idle(self, seen: int, next_ns: int | None) -> None:
        self._seen = max(self._seen, seen)
        if self._seen < self._sent:
            return  # lines are on their way to it: it will be busy again
        self._release()
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        loop = self._loop
        if next_ns is None or loop is None:
            return
        delay = max(0, int(next_ns) - self.now_ns()) / 1e9
        self._tick = loop.call_at(loop.time() + delay, self._send_tick, int(next_ns))

    def _send_tick(self, due_ns: int) -> None:
        self._tick = None
        if self._dead is None and self._seen >= self._sent:
            # A jump lands within a nanosecond of the deadline, maybe before it: the tick
            # says the deadline itself then, so the child's timer is due.
            with contextlib.suppress(JsonLinesError):
                self._write({"op": "tick", "now": max(self.now_ns(), due_ns)})

    # ------------------------------------------------------------ running jobs

    def _start_job(self, line: dict[str, Any]) -> None:
        loop = self._loop
        assert loop is not None
        job_id = line["job"]
        job = self._jobs.get(job_id)
        if job is None and "registered" in line:
            func = self._registered[line["registered"]]
            kwargs = self.decode(line.get("kwargs") or {})
            kind = "coroutine" if inspect.iscoroutinefunction(func) else "function"
            job = _Job(job_id, kind, func, contextvars.Context())
            job.kwargs = kwargs
            self._jobs[job_id] = job
        if job is None:
            raise ValueError(f"job.start names the unknown job {job_id!r}")
        job.started = True
        job.ctx.run(_SCOPE.set, job_id)
        if job.kind == "function" or (
            job.kind == "coroutine" and not inspect.iscoroutine(job.target)
        ):
            if job.kind == "coroutine":  # a registered coroutine function: call it here
                job.target = job.target(**job.kwargs)
                job.task = loop.create_task(self._run_coroutine(job), context=job.ctx)
                return
            call = functools.partial(job.ctx.run, job.target, *job.args, **job.kwargs)
            future = loop.run_in_executor(None, call)
            future.add_done_callback(functools.partial(self._function_done, job))
            return
        job.task = loop.create_task(self._run_coroutine(job), context=job.ctx)

    async def _run_coroutine(self, job: _Job) -> None:
        try:
            value = await job.target
        except asyncio.CancelledError:
            self._job_done(job, {"cancelled": True})
            raise
        except Exception as exc:  # noqa: BLE001 - the job's outcome, reported to the child
            self._job_done(job, {"error": self._encode_exc(exc)})
        else:
            self._job_done(job, {"result": self.encode(value), "ref": self._keep(value)})

    def _function_done(self, job: _Job, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._job_done(job, {"cancelled": True})
        elif (exc := future.exception()) is not None:
            self._job_done(job, {"error": self._encode_exc(exc)})
        else:
            value = future.result()
            self._job_done(job, {"result": self.encode(value), "ref": self._keep(value)})

    def _encode_exc(self, exc: BaseException) -> dict[str, Any]:
        data = encode_error(exc, self._encode_hook)
        data["ref"] = self._keep(exc)
        return data

    def _job_done(self, job: _Job, outcome: dict[str, Any]) -> None:
        if self._dead is None:
            with contextlib.suppress(JsonLinesError):
                self._write({"op": "job.done", "job": job.id, **outcome})

    # ------------------------------------------------------------ failures

    def _protocol_error(self, what: str) -> None:
        self._give_up(f"the child {self.command!r} {what} (see {GUIDE})")
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, 9)

    def _on_eof(self, why: str) -> None:
        self._deliver_held()  # what it said before it went away
        proc = self._proc
        code = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(self.timeout)
        tail = _stderr_tail(self._stderr) if self._stderr is not None else ""
        self._give_up(
            f"the child {self.command!r} went away ({why}; exit code {code}) while the suite "
            f"still talked to it{tail}"
        )

    def _give_up(self, why: str) -> None:
        if self._dead is None:
            self._dead = why
        loop = self._loop
        if loop is not None and self._proc is not None and self._proc.stdout is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._proc.stdout.fileno())
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self._release()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(JsonLinesError(self._dead))
        for job in self._jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()


def check_hello(hello: Any, where: str = "the child") -> dict[str, Any]:
    """Raise ``JsonLinesError`` naming what is wrong with a hello line; return it."""
    fix = f"the first line must be a hello such as {HELLO_EXAMPLE} (see {GUIDE}#hello)"
    if not isinstance(hello, dict) or hello.get("event") != "hello":
        raise JsonLinesError(f"{where} began with {_show(hello)}, not a hello; {fix}")
    if hello.get("protocol") != PROTOCOL:
        raise JsonLinesError(
            f"{where} speaks protocol {hello.get('protocol')!r}, not {PROTOCOL!r}; {fix}"
        )
    if hello.get("version") != VERSION:
        raise JsonLinesError(
            f"{where} speaks {PROTOCOL} version {hello.get('version')!r}; this taskbed speaks "
            f"version {VERSION} only; {fix}"
        )
    if not isinstance(hello.get("name"), str) or not hello["name"]:
        raise JsonLinesError(f"{where}: the hello has no name; {fix}")
    caps = hello.get("capabilities", [])
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise JsonLinesError(f"{where}: capabilities must be a list of names; {fix}")
    unknown = sorted(set(caps) - set(CAPABILITIES))
    if unknown:
        raise JsonLinesError(
            f"{where} declares unknown capabilities {unknown}; the known ones are "
            f"{sorted(CAPABILITIES)} (see {GUIDE}#hello)"
        )
    if hello.get("task_ids", "str") not in TASK_ID_TYPES:
        raise JsonLinesError(f"{where}: task_ids is 'str' or 'int'; {fix}")
    names = hello.get("sandbox_names", {})
    if not isinstance(names, dict) or set(names) - set(SANDBOX_VARIABLES):
        raise JsonLinesError(
            f"{where}: sandbox_names maps reference names {list(SANDBOX_VARIABLES)} to the "
            f"child's names (or null); {fix}"
        )
    deviations = hello.get("deviations", {})
    if not isinstance(deviations, dict) or not all(isinstance(v, str) for v in deviations.values()):
        raise JsonLinesError(f"{where}: deviations maps rule IDs to reasons; {fix}")
    return hello


def _read_line_blocking(stream: IO[bytes], timeout: float) -> bytes | None:
    """One line from *stream* within *timeout* real seconds; None at EOF or timeout."""
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 1)  # byte by byte: what follows the hello stays in the pipe
        if not chunk:
            return data or None
        data += chunk
    return data.rstrip(b"\n")


def _show(raw: Any, limit: int = 120) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else repr(raw)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _stderr_text(stderr: IO[bytes]) -> str:
    with contextlib.suppress(OSError, ValueError):
        stderr.seek(0)
        return stderr.read().decode("utf-8", "replace")
    return ""


def _stderr_tail(stderr: IO[bytes] | None, lines: int = 12) -> str:
    if stderr is None:
        return ""
    text = _stderr_text(stderr).strip()
    if not text:
        return ""
    tail = "\n".join(f"    {line}" for line in text.splitlines()[-lines:])
    return f"; its stderr ends:\n{tail}"


def sample_command() -> list[str]:
    """The argv of the sample child: the reference runtime behind the protocol."""
    return [sys.executable, "-m", "taskbed_harness._jsonl_child"]


def reference_jsonl() -> JsonLinesAdapter:
    """``--impl reference-jsonl``: the reference runtime in a child process, over JSON lines."""
    return JsonLinesAdapter(sample_command())


__all__ = ("JsonLinesAdapter", "JsonLinesError", "encode_error", "reference_jsonl")
