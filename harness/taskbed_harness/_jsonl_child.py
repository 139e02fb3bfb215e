"""The sample child of the JSON-lines protocol: the reference runtime behind stdin and stdout.

``python -m taskbed_harness._jsonl_child`` speaks ``taskbed-jsonl`` version 1
(``docs/guides/jsonl.md``) and runs a ``ReferenceImplementation`` on a virtual-time loop with
autojump off, whose clock only the parent's lines move. It is allowed to use taskbed; the
protocol is what a child in another language implements.

What it does with each line, in brief:

* every parent line carries ``now``: the clock moves there first (never backwards);
* requests (``id``) are answered with ``reply``; the API's synchronous calls at once;
* module code arrives as ``job`` values and becomes proxy objects of the right shape (a
  coroutine named like the original, a function, an awaitable); running a proxy sends
  ``job.start`` and waits for ``job.done``; cancelling it sends ``job.cancel``; a coroutine
  proxy found closed before it ever ran is reported with ``job.discard``;
* when its loop is idle (nothing ready, no thread or subprocess in flight) it reports
  ``idle`` with the lines it has ``seen`` and its ``next`` timer, and waits for the parent.

Test seams: ``--name`` and ``--deviation RULE=REASON`` change the hello; ``--impl
module:Class`` picks another ``ReferenceImplementation`` subclass (a one-bug variant).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import dataclasses
import importlib
import inspect
import itertools
import json
import math
import os
import select
import selectors
import sys
import threading
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from taskbed import current_request

from ._adapters import ReferenceImplementation
from ._clock import VirtualClock, VirtualEventLoop
from ._jsonl import ASYNC_METHODS, SYNC_METHODS
from ._jsonl_values import decode, decode_error, encode, encode_error

PROTOCOL, VERSION = "taskbed-jsonl", 1
CAPABILITIES = ("registered_tasks", "modules", "processes", "restart")
_NS = 1_000_000_000
PAUSING_EVENTS = frozenset({"job.start", "job.cancel"})


class _ChildLoop(VirtualEventLoop):
    """A virtual loop that, once idle, reports it and waits for the parent's next line."""

    on_idle: Callable[[], None] | None = None
    server: Server | None = None

    def _virtual_select(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, int]]:
        server = self.server
        if server is not None and server.paused and not server.done.is_set():
            # Control is with the parent's code: nothing of ours runs until it says resume,
            # but its lines are handled as they come (its queries see the state it left).
            while server.paused and not server.done.is_set():
                server.wait_for_lines()
            self._reset_idle()
            return []  # what those lines scheduled runs now: the loop is not idle
        real = self._real_selector
        ready = real.select(0)
        if ready or (timeout is not None and timeout <= 0):
            self._reset_idle()
            return ready
        if self._noop_left > 0:
            self._noop_left -= 1
            return []
        if self._in_flight():  # a thread or subprocess: real work, wait for it for real
            ready = real.select(self._idle_slice)
            if ready:
                self._reset_idle()
            return ready
        if self.on_idle is not None:
            self.on_idle()
        ready = real.select(None)  # only the parent (or a thread's wake-up) moves us on
        self._reset_idle()
        return ready

    def next_deadline_ns(self) -> int | None:
        """The wall time, in epoch nanoseconds, at which the next timer falls due."""
        head = self._next_timer()
        if head is None:
            return None
        return self.clock.now_ns() - self.clock.monotonic_ns() + math.ceil(head.when() * _NS)


class _Step:
    def __await__(self) -> Generator[None, None, None]:
        yield


class _Awaitable:
    """Stands for an awaitable of the parent (``run_blocking(fut)`` is refused)."""

    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __await__(self) -> Generator[None, None, None]:
        raise RuntimeError("an awaitable of the parent cannot be awaited in the child")
        yield  # pragma: no cover


class _AsyncCallable:
    """Stands for an object of the parent whose ``__call__`` is async."""

    def __init__(self, name: str) -> None:
        self.__name__ = name

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("an async callable of the parent cannot be called in the child")


class Server:
    """One child's state: the implementation, its SDKs, scopes, clients and jobs."""

    def __init__(self, impl: ReferenceImplementation, loop: _ChildLoop) -> None:
        self.impl = impl
        self.loop = loop
        self.seen = 0
        self.sdks: dict[str, Any] = {}
        self.contexts: dict[str, contextvars.Context] = {}
        self.requests: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self.clients: dict[str, list[Any]] = {}
        self.calls: dict[int, asyncio.Task[None]] = {}
        self.proxies: dict[str, Any] = {}
        self.fresh: dict[str, Coroutine[Any, Any, Any]] = {}
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.threads: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self.refs: dict[int, tuple[str, Any]] = {}
        self.job_ids = itertools.count(1)
        self.lock = threading.Lock()
        self.done = asyncio.Event()
        self.closing = False
        self.paused = False
        self.die_on: str | None = None
        self.garbage_on: str | None = None
        self.buffer = b""
        self.tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ the wire

    def write(self, line: dict[str, Any]) -> None:
        data = (json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self.lock, contextlib.suppress(OSError, ValueError):
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    def write_raw(self, data: bytes) -> None:
        with self.lock:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    def emit(self, line: dict[str, Any]) -> None:
        """A line from the loop's thread: what it holds for the parent goes first.

        A reply, ``job.start`` and ``job.cancel`` hand control to the parent's code, as the
        return of a call, the first step of a task's body or a cancellation would in process:
        the loop pauses until the parent's ``resume``."""
        self.flush()
        self.write(line)
        if "reply" in line or line.get("event") in PAUSING_EVENTS:
            self.paused = True

    def wait_for_lines(self) -> None:
        select.select([0], [], [])
        self.on_readable()

    def flush(self) -> None:
        for client_id, entry in self.clients.items():
            conn = entry[0]
            while entry[1] < len(conn.messages):
                message = conn.messages[entry[1]]
                entry[1] += 1
                self.write({"event": "message", "client": client_id, "message": self.enc(message)})
        for job, proxy in list(self.fresh.items()):
            if inspect.getcoroutinestate(proxy) == inspect.CORO_CLOSED:
                del self.fresh[job]
                self.write({"event": "job.discard", "job": job})

    def idle(self) -> None:
        self.flush()
        self.write({"event": "idle", "seen": self.seen, "next": self.loop.next_deadline_ns()})

    def on_readable(self) -> None:
        try:
            chunk = os.read(0, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            self.loop.remove_reader(0)
            self.done.set()
            return
        self.buffer += chunk
        while b"\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\n", 1)
            if raw.strip():
                self.seen += 1
                self.handle(json.loads(raw))

    # ------------------------------------------------------------ values

    def enc(self, value: Any) -> Any:
        return encode(value, self._enc_hook)

    def _enc_hook(self, value: Any) -> Any:
        known = self.refs.get(id(value))
        if known is not None and known[1] is value:
            return {"$": "ref", "ref": known[0]}
        return None

    def enc_error(self, exc: BaseException) -> dict[str, Any]:
        data = encode_error(exc, self._enc_hook)
        known = self.refs.get(id(exc))
        if known is not None and known[1] is exc:
            data["ref"] = known[0]
        return data

    def dec(self, data: Any) -> Any:
        return decode(data, self._dec_hook)

    def _dec_hook(self, data: dict[str, Any]) -> Any:
        tag = data["$"]
        if tag == "job":
            return self.proxy(data)
        if tag == "ui":
            if "components" in data:
                return [dict(c) for c in data["components"]]
            return dict(data["component"])
        return NotImplemented

    def proxy(self, data: dict[str, Any]) -> Any:
        job, kind = str(data["job"]), data["kind"]
        if job in self.proxies:
            return self.proxies[job]
        name = str(data.get("name") or "job")
        short = name.rsplit(".", 1)[-1]
        proxy: Any
        if kind == "coroutine":
            state = data.get("state", "created")
            if state in ("suspended", "running"):
                proxy = self._suspended()
            else:
                proxy = self.body(job)
                if state == "closed":
                    proxy.close()
                else:
                    self.fresh[job] = proxy
            proxy.__name__, proxy.__qualname__ = short, name
        elif kind == "function":

            def proxy(*args: Any, **kwargs: Any) -> Any:
                return self.in_thread(job)

            proxy.__name__, proxy.__qualname__ = short, name
        elif kind == "coroutine_function":

            async def proxy(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError(f"{name} stays in the parent; it cannot be called here")

            proxy.__name__, proxy.__qualname__ = short, name
        elif kind == "async_callable":
            proxy = _AsyncCallable(short)
        else:
            proxy = _Awaitable(short)
        self.proxies[job] = proxy
        return proxy

    @staticmethod
    def _suspended() -> Coroutine[Any, Any, Any]:
        async def started() -> None:
            await _Step()

        coro = started()
        coro.send(None)
        return coro

    # ------------------------------------------------------------ jobs

    def _context(self) -> dict[str, Any]:
        ctx = current_request()
        return {} if ctx is None else self.enc(dataclasses.asdict(ctx))

    def _task_id(self) -> Any:
        manager = self.impl.runtime.manager if self.impl._runtime is not None else None
        current = asyncio.current_task()
        for task_id, local in getattr(manager, "_local", {}).items():
            if local.task is current:
                return task_id
        return None

    async def body(
        self, job: str, registered: str | None = None, kwargs: dict[str, Any] | None = None
    ) -> Any:
        """A task's body whose code runs in the parent."""
        self.fresh.pop(job, None)
        self.contexts[job] = contextvars.copy_context()
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.waiting[job] = future
        start: dict[str, Any] = {"event": "job.start", "job": job}
        task_id = self._task_id()
        if task_id is not None:
            start["task"] = task_id
        start["context"] = self._context()
        if registered is not None:
            start.update(registered=registered, kwargs=self.enc(kwargs or {}))
        self.emit(start)
        try:
            try:
                outcome = await asyncio.shield(future)
            except asyncio.CancelledError:
                if self.closing:
                    raise
                self.emit({"event": "job.cancel", "job": job})
                while not future.done():  # the parent's code handles the cancel, then ends
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(future)
                outcome = future.result()
        finally:
            self.waiting.pop(job, None)
        return self.outcome(outcome)

    def in_thread(
        self, job: str, registered: str | None = None, kwargs: dict[str, Any] | None = None
    ) -> Any:
        """A function's body in a worker thread: its code runs in the parent."""
        event, box = threading.Event(), list[dict[str, Any]]()
        self.threads[job] = (event, box)
        self.contexts[job] = contextvars.copy_context()
        start: dict[str, Any] = {"event": "job.start", "job": job}
        if registered is not None:
            start.update(registered=registered, kwargs=self.enc(kwargs or {}))
        self.write(start)
        event.wait()
        self.threads.pop(job, None)
        return self.outcome(box[0])

    def outcome(self, line: dict[str, Any]) -> Any:
        if line.get("cancelled"):
            raise asyncio.CancelledError
        if "error" in line:
            exc = decode_error(line["error"], self._dec_hook)
            if "ref" in line["error"]:
                self.refs[id(exc)] = (line["error"]["ref"], exc)
            raise exc
        value = self.dec(line.get("result"))
        if "ref" in line:
            self.refs[id(value)] = (line["ref"], value)
        return value

    def job_done(self, line: dict[str, Any]) -> None:
        job = line["job"]
        future = self.waiting.get(job)
        if future is not None and not future.done():
            future.set_result(line)
        waiting = self.threads.get(job)
        if waiting is not None:
            waiting[1].append(line)
            waiting[0].set()

    # ------------------------------------------------------------ requests

    def handle(self, line: dict[str, Any]) -> None:
        now = line.get("now")
        if isinstance(now, int):
            clock = self.loop.clock
            clock._move_to(now - (clock.now_ns() - clock.monotonic_ns()))
        op = line["op"]
        if op == "resume":
            self.paused = False
            return
        if op == "tick":
            return
        if op == "exit":
            self.done.set()
            return
        if op == "job.done":
            self.job_done(line)
            return
        if op == "cancel":
            call = self.calls.get(line["call"])
            if call is not None:
                call.cancel()
            return
        call_id = line["id"]
        try:
            work = self.dispatch(op, line)
        except Exception as exc:  # noqa: BLE001 - every failure is the reply
            self.emit({"reply": call_id, "error": self.enc_error(exc)})
            return
        if not isinstance(work, _Async):
            self.emit({"reply": call_id, "result": self.enc(work)})
            return
        task = self.loop.create_task(self.run_call(call_id, work.start), context=work.context)
        self.calls[call_id] = task

    async def run_call(self, call_id: int, start: Callable[[], Any]) -> None:
        try:
            result = await start()
        except asyncio.CancelledError:
            self.emit({"reply": call_id, "error": {"type": "CancelledError", "message": ""}})
        except Exception as exc:  # noqa: BLE001 - the reply carries it
            self.emit({"reply": call_id, "error": self.enc_error(exc)})
        else:
            self.emit({"reply": call_id, "result": self.enc(result)})
        finally:
            self.calls.pop(call_id, None)

    def scope(self, name: Any) -> contextvars.Context:
        ctx = self.contexts.get(name) if isinstance(name, str) else None
        return ctx.copy() if ctx is not None else contextvars.Context()

    def dispatch(self, op: str, line: dict[str, Any]) -> Any:
        impl = self.impl
        if op == "start":
            return _Async(impl.start)
        if op == "stop":
            return _Async(impl.stop)
        if op == "restart":
            return _Async(lambda: impl.restart(crash=bool(line.get("crash"))))
        if op == "register_task":
            impl.register_task(line["name"], self.registered(line["name"], line["kind"]))
            return None
        if op == "register_module":
            impl.register_module(line["name"], self.dec(line["access"]))
            return None
        if op == "sdk.open":
            session, module = self.dec(line["session"]), line["module"]
            self.sdks[line["sdk"]] = impl.sdk(session=session, module=module)
            return None
        if op == "request.open":
            return _Async(lambda: self.open_request(line))
        if op == "request.close":
            return _Async(lambda: self.close_request(line["scope"]))
        if op == "connect":
            conn = impl.connect(self.dec(line["user"]), self.dec(line["organization"]))
            self.clients[line["client"]] = [conn, 0]
            return None
        if op == "client.send":
            conn = self.clients[line["client"]][0]
            return _Async(lambda: conn.send(self.dec(line["message"])))
        if op == "client.close":
            self.clients[line["client"]][0].close()
            return None
        if op == "call":
            return self.call(line)
        raise ValueError(f"unknown op {op!r}")

    def call(self, line: dict[str, Any]) -> Any:
        method = line["method"]
        if method == self.die_on:  # test seam: a child that dies mid-rule
            os._exit(3)
        if method == self.garbage_on:  # test seam: a child that breaks the protocol
            self.write_raw(b"this is not JSON\n")
        if method not in (*SYNC_METHODS, *ASYNC_METHODS):
            raise ValueError(f"sdk.tasks has no method {method!r} in {PROTOCOL}")
        func = getattr(self.sdks[line["sdk"]].tasks, method)
        args, kwargs = self.dec(line["args"]), self.dec(line["kwargs"])
        ctx = self.scope(line.get("scope"))
        if method in SYNC_METHODS:
            return ctx.run(func, *args, **kwargs)
        return _Async(lambda: func(*args, **kwargs), ctx)

    def registered(self, name: str, kind: str) -> Callable[..., Any]:
        if kind in ("coroutine_function", "async_callable"):

            async def run(**kwargs: Any) -> Any:
                return await self.body(f"k{next(self.job_ids)}", name, kwargs)

            return run

        def call(**kwargs: Any) -> Any:
            return self.in_thread(f"k{next(self.job_ids)}", name, kwargs)

        return call

    async def open_request(self, line: dict[str, Any]) -> None:
        scope = line["scope"]
        entered: asyncio.Future[None] = self.loop.create_future()
        leave = asyncio.Event()

        async def hold() -> None:
            try:
                async with self.impl.request(
                    session=self.dec(line["session"]), module=line["module"],
                    request_id=line.get("request_id"),
                ) as sdk:  # fmt: skip
                    self.sdks[scope] = sdk
                    self.contexts[scope] = contextvars.copy_context()
                    entered.set_result(None)
                    await leave.wait()
            except BaseException as exc:
                if not entered.done():
                    entered.set_exception(exc)
                    return
                raise

        task = self.loop.create_task(hold())
        self.requests[scope] = (leave, task)
        await entered

    async def close_request(self, scope: str) -> None:
        leave, task = self.requests.pop(scope)
        leave.set()
        await task

    # ------------------------------------------------------------ life

    async def serve(self, first: dict[str, Any]) -> None:
        os.set_blocking(0, False)
        self.loop.add_reader(0, self.on_readable)
        self.loop.on_idle = self.idle
        self.loop.server = self
        self.seen += 1
        self.handle(first)
        await self.done.wait()
        self.loop.on_idle = None
        self.loop.server = None
        with contextlib.suppress(Exception):
            self.loop.remove_reader(0)
        self.closing = True
        for future in self.waiting.values():
            future.cancel()
        for event, box in list(self.threads.values()):
            box.append({"cancelled": True})
            event.set()
        for task in list(self.calls.values()):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.impl.stop()


@dataclasses.dataclass
class _Async:
    start: Callable[[], Any]
    context: contextvars.Context | None = None


def hello(name: str, deviations: dict[str, str]) -> dict[str, Any]:
    return {
        "event": "hello",
        "protocol": PROTOCOL,
        "version": VERSION,
        "name": name,
        "capabilities": list(CAPABILITIES),
        "task_ids": "str",
        "sandbox_names": {},
        "deviations": deviations,
    }


#: What the sample declares: each a protocol limit, never a rule it could pass.
DEVIATIONS: dict[str, str] = {
    "CMD-7": "its check sets variables in the suite's own os.environ and expects the program "
    "to inherit them; across the protocol the runtime is another process, whose environment "
    "was fixed when it was spawned (env= merging and the sandbox variables are judged by the "
    "rest of the rule and by CMD-10)",
}


def _read_first_line() -> bytes | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            return None
        data += chunk
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskbed_harness._jsonl_child")
    parser.add_argument("--name", default="reference-jsonl")
    parser.add_argument("--impl", help="module:Class, a ReferenceImplementation subclass")
    parser.add_argument("--deviation", action="append", default=[], metavar="RULE=REASON")
    parser.add_argument("--die-on", metavar="METHOD", help="test seam: exit at this call")
    parser.add_argument("--garbage-on", metavar="METHOD", help="test seam: write non-JSON")
    args = parser.parse_args(argv)
    deviations = dict(DEVIATIONS)
    for item in args.deviation:
        rule, _, reason = item.partition("=")
        deviations[rule] = reason
    impl_class: type[ReferenceImplementation] = ReferenceImplementation
    if args.impl:
        module, _, attr = args.impl.partition(":")
        impl_class = getattr(importlib.import_module(module), attr)
    out = sys.stdout.buffer
    out.write((json.dumps(hello(args.name, deviations)) + "\n").encode())
    out.flush()
    raw = _read_first_line()
    if raw is None:
        return 0  # the parent only wanted the hello
    first = json.loads(raw)
    clock = VirtualClock(autojump=False)
    clock._start_ns = int(first["now"])  # the parent's virtual time is the origin
    loop = _ChildLoop(clock, watchdog=None)
    server = Server(impl_class(), loop)
    server.die_on, server.garbage_on = args.die_on, args.garbage_on
    try:
        loop.run_until_complete(server.serve(first))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
