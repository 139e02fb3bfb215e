"""The Harness: the reference runtime wired to fakes, with everything a test needs in one object.

It works without pytest (``async with Harness() as tb:`` on a virtual loop); the pytest
fixtures are thin lifecycle adapters around it (prior art: respx's plugin).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import Any

from taskbed import MemoryStore, ModuleSDK, SQLiteStore, TaskStore, serialize

from ._actions import resolve_action
from ._awaits import Checked, NeverAwaitedError, coroutine_instead_of_id, unawaited_message
from ._client import ClientView
from ._clock import VirtualClock, VirtualEventLoop
from ._emitted import Emitted
from ._fake import FakeTaskManager, HarnessRuntime
from ._processes import RecordedProcessRunner

_UNSET: Any = object()


@dataclasses.dataclass(frozen=True, kw_only=True)
class HarnessOptions:
    """Options of a harness (``@pytest.mark.taskbed(...)`` takes the same keywords).

    Attributes:
        user, organization, module, session_key: who the default SDK and client are.
        hold: hold every submission ``pending`` until ``tb.manager.release()``.
        autojump: let virtual time jump to the next timer when the loop is idle.
        record: cassette record mode: ``none`` (replay only), ``once``, ``new``, ``all``.
        cassette: the cassette file (the pytest plugin names one per test).
        assert_all_used: fail at teardown when a recorded or registered command went unused.
        env_keys: environment variables that matter when matching recorded commands.
        redact_keys: environment variables whose values never reach a cassette.
        store: ``"memory"`` or ``"sqlite"`` (an in-memory SQLite database).
        start: where the virtual clock starts (a timezone-aware ``datetime`` or epoch
            seconds; default 2026-01-01T00:00:00Z). The pytest plugin reads it from the marker
            when it makes the test's loop.
        watchdog: real seconds each run of the loop may take before it fails with
            ``WatchdogError`` (a stuck thread or process, or a job that polls forever); 0
            turns it off; None keeps the loop's own (60 s unless told otherwise).
            ``--taskbed-watchdog=SECONDS`` overrides it.
        virtual_monotonic: ``False`` keeps ``time.monotonic()`` and ``time.perf_counter()``
            real in this test, ``True`` makes them read virtual time, as ``loop.time()``
            does; None keeps the clock's own setting (on in taskbed pytest tests, off for a
            ``VirtualClock()`` made by hand).
        namespaces: name -> factory called with every SDK the harness builds (``factory(sdk)``):
            adds a namespace or replaces ``ui``, ``i18n``, ``media``, ``effects`` (e.g. by the
            platform's own classes, which take the SDK).
        translations: the ``i18n.t`` catalog, language -> key -> text (none: keys as is).
        media: the ``media.view`` blobs, storage path -> bytes.
        language: the language ``i18n.t`` uses when the session names none.
    """

    user: Any = 7
    organization: Any = 10
    module: str = "mod"
    session_key: str | None = "session-1"
    hold: bool = False
    autojump: bool = True
    record: str = "none"
    cassette: str | os.PathLike[str] | None = None
    assert_all_used: bool = True
    env_keys: tuple[str, ...] = ()
    redact_keys: tuple[str, ...] = ()
    store: str = "memory"
    start: datetime | float | None = None
    watchdog: float | None = None
    virtual_monotonic: bool | None = None
    namespaces: Mapping[str, Callable[[ModuleSDK], Any]] | None = None
    translations: Mapping[str, Mapping[str, str]] | None = None
    media: Mapping[str, bytes] | None = None
    language: str = "en"

    def __post_init__(self) -> None:
        if self.store not in ("memory", "sqlite"):
            raise ValueError(f"store must be 'memory' or 'sqlite', got {self.store!r}")
        w = self.watchdog
        if w is not None and (isinstance(w, bool) or not isinstance(w, int | float) or w < 0):
            raise ValueError(
                f"watchdog takes a number of real seconds (0 turns it off), got {w!r}; "
                "e.g. @pytest.mark.taskbed(watchdog=120)"
            )

    @classmethod
    def merged(cls, layers: Iterable[dict[str, Any]]) -> HarnessOptions:
        """Options from keyword layers, later layers winning; an unknown keyword is an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for layer in layers:
            unknown = sorted(set(layer) - known)
            if unknown:
                raise TypeError(
                    f"unknown taskbed option(s) {unknown}; valid options: {sorted(known)} "
                    "(see docs/guides/harness.md#options)"
                )
            values.update(layer)
        for name in ("env_keys", "redact_keys"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


class Harness:
    """The reference runtime on fakes: virtual clock, fake task manager, recorded processes.

    Attributes:
        clock: the ``VirtualClock`` (``await tb.clock.advance(60)``).
        runtime: the ``Runtime`` (reference rules, fake manager).
        processes: the ``RecordedProcessRunner`` (``tb.processes.register([...], stdout=...)``).
        manager: the running ``FakeTaskManager`` (hold, release, fail, answer, cancel).
        emitted: the ``Emitted`` effects and UI messages of the module (``expect``, ``toasts``).
        options: the ``HarnessOptions`` in force.
    """

    def __init__(
        self, options: HarnessOptions | None = None, *, clock: VirtualClock | None = None
    ) -> None:
        self.options = options if options is not None else HarnessOptions()
        self._clock = clock
        self.processes = RecordedProcessRunner(
            self.options.cassette,
            mode=self.options.record,
            env_keys=self.options.env_keys,
            redact_keys=self.options.redact_keys,
        )
        self.store: TaskStore = MemoryStore() if self.options.store == "memory" else SQLiteStore()
        self._runtime: HarnessRuntime | None = None
        self._clients: list[ClientView] = []
        self._checks: list[Checked[Any]] = []  # every expect() of its clients
        self._from_pytest = False  # set by the pytest plugin: shapes the wrong-loop message
        self.emitted = Emitted(track=self._checks.append)

    # ------------------------------------------------------------ life

    @property
    def clock(self) -> VirtualClock:
        if self._clock is None:
            raise RuntimeError("the harness is not started; use `async with Harness() as tb:`")
        return self._clock

    @property
    def runtime(self) -> HarnessRuntime:
        if self._runtime is None:
            raise RuntimeError("the harness is not started; use `async with Harness() as tb:`")
        return self._runtime

    @property
    def manager(self) -> FakeTaskManager:
        return self.runtime.fake

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._clock is None:
            if not isinstance(loop, VirtualEventLoop):
                raise RuntimeError(self._wrong_loop_message(loop))
            self._clock = loop.clock
        if self.options.virtual_monotonic is not None:
            self._clock.virtual_monotonic = self.options.virtual_monotonic
        if isinstance(loop, VirtualEventLoop) and self.options.watchdog is not None:
            loop.watchdog = self.options.watchdog or None
        self._clock.autojump = self.options.autojump
        o = self.options
        self._runtime = HarnessRuntime(
            store=self.store,
            clock=self._clock,
            process_runner=self.processes,
            namespaces=o.namespaces,
            translations=o.translations,
            media=o.media,
            default_language=o.language,
        )
        self._runtime.stream_listeners.append(self.emitted.add_published)
        await self._runtime.start()
        if self.options.hold:
            self.manager.hold()

    def _wrong_loop_message(self, loop: asyncio.AbstractEventLoop) -> str:
        if self._from_pytest:
            return (
                f"this test uses the taskbed fixtures, but it runs on {loop!r}, not on the "
                "virtual-time loop the plugin gives taskbed tests. The plugin chooses the loop "
                "when the test is collected, from the fixtures it names: name `taskbed` (or "
                "`taskbed_client`, `taskbed_clock`, ...) as an argument of the test or of one "
                "of its fixtures, instead of calling request.getfixturevalue('taskbed') "
                "(see docs/guides/troubleshooting.md#wrong-loop)"
            )
        return (
            f"the taskbed harness needs its virtual-time event loop, not {loop!r}: run the "
            "test with the taskbed pytest fixtures, or the code with "
            "taskbed_harness.new_virtual_loop().run_until_complete(...) "
            "(see docs/guides/virtual-time.md)"
        )

    async def stop(self) -> None:
        if self._runtime is not None:
            await self._runtime.stop()
        self.store.close()

    async def __aenter__(self) -> Harness:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def check(self) -> None:
        """The teardown checks: every check was awaited, every recorded command was used.

        Raises:
            NeverAwaitedError: an ``expect(...)`` of a client was never awaited.
            AssertionError: a recorded or registered command went unused.
        """
        self.check_awaited()
        if self.options.assert_all_used:
            self.processes.assert_all_used()

    def check_awaited(self) -> None:
        """Fail for every ``expect(...)`` / ``expect_nothing(...)`` nobody awaited (so far).

        Raises:
            NeverAwaitedError: naming each one, with the line and the fix.
        """
        forgotten = [c for c in self._checks if not c.awaited]
        self._checks.clear()
        if forgotten:
            raise NeverAwaitedError(unawaited_message(forgotten))

    # ------------------------------------------------------------ SDK objects

    def session(
        self, user: Any = _UNSET, organization: Any = _UNSET, session_key: Any = _UNSET
    ) -> dict[str, Any]:
        """A session dict for a user (the options' user and organization by default)."""
        o = self.options
        return {
            "user": {
                "id": o.user if user is _UNSET else user,
                "organization_id": o.organization if organization is _UNSET else organization,
            },
            "session_key": o.session_key if session_key is _UNSET else session_key,
        }

    @asynccontextmanager
    async def request(
        self,
        *,
        user: Any = _UNSET,
        organization: Any = _UNSET,
        module: str | None = None,
        request_id: str | None = "request-1",
        session: dict[str, Any] | None = None,
    ) -> AsyncIterator[ModuleSDK]:
        """``async with tb.request() as sdk:``: one request of a user to a module.

        *session* replaces the session built from *user* and *organization* (e.g. to add
        ``"user_language": "it"`` to ``tb.session()``).
        """
        async with self.runtime.request(
            session=self.session(user, organization) if session is None else session,
            module=module or self.options.module,
            request_id=request_id,
        ) as sdk:
            yield sdk

    async def call_action(
        self,
        action: Callable[..., Any] | str,
        ctx: dict[str, Any] | None = None,
        *,
        user: Any = _UNSET,
        organization: Any = _UNSET,
        module: str | None = None,
        request_id: str | None = "request-1",
        session: dict[str, Any] | None = None,
    ) -> Any:
        """Call an action as the platform does: ``action(ctx, session, module_sdk)``, one request.

        The action runs as one request of *user* to *module* (the options' by default); its
        SDK is ``current_sdk()`` meanwhile. Its response is returned and its effects are
        recorded in ``emitted``.

        Args:
            action: the action function (``@action`` or a plain ``async def f(ctx, session,
                module_sdk)``), or the name it was registered under with ``@action``.
            ctx: the action's context (``{"storage_ref": ...}``); ``{}`` by default.
            session: the session, instead of the one *user* and *organization* make.

        Raises:
            LookupError: no action is registered under that name.
            TypeError: *action* is neither a function nor a name, or *ctx* is not a dict.
        """
        func = resolve_action(action)
        if ctx is None:
            ctx = {}
        if not isinstance(ctx, dict):
            raise TypeError(
                f"an action's ctx is a dict, got {type(ctx).__name__} {ctx!r}; write "
                "await taskbed.call_action(my_action, {'storage_ref': 'uploads/m.json'}) "
                "(see docs/guides/testing-modules.md#calling-an-action)"
            )
        async with self.request(
            user=user,
            organization=organization,
            module=module,
            request_id=request_id,
            session=session,
        ) as sdk:
            response = await func(ctx, sdk.session, sdk)
        self.emitted.add_response(response)
        return response

    def add_media(self, path: str, payload: bytes) -> str:
        """Store bytes for ``media.view(path)`` of every SDK; returns *path*."""
        if not isinstance(payload, bytes | bytearray) or not payload:
            raise TypeError(f"media is non-empty bytes, got {payload!r}; e.g. b'{{}}'")
        self.runtime.media_blobs[str(path)] = bytes(payload)
        return str(path)

    def add_translations(self, language: str, texts: Mapping[str, str]) -> None:
        """Add ``i18n.t`` texts of one language (``{"mod.title": "Models"}``)."""
        self.runtime.translations.setdefault(language, {}).update(texts)

    def sdk(
        self, *, user: Any = _UNSET, organization: Any = _UNSET, module: str | None = None
    ) -> ModuleSDK:
        """A module SDK outside any request (its tasks get a synthetic request context)."""
        return self.runtime.sdk(
            session=self.session(user, organization), module=module or self.options.module
        )

    def client(self, *, user: Any = _UNSET, organization: Any = _UNSET) -> ClientView:
        """Connect a client of a user (the options' user by default)."""
        o = self.options
        view = ClientView(
            self.runtime.connect,
            o.user if user is _UNSET else user,
            o.organization if organization is _UNSET else organization,
            track=self._checks.append,
        )
        self._clients.append(view)
        return view

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait (in virtual time) until the task is terminal; its serialized row.

        Raises:
            TypeError: *task_id* is a coroutine (a ``run_background`` call without ``await``).
            TimeoutError: *timeout* seconds of virtual time passed first; the message says
                where the task stands.
        """
        if (wrong := coroutine_instead_of_id(task_id, "taskbed.wait()")) is not None:
            raise wrong
        try:
            return await self.runtime.wait(task_id, timeout)
        except TimeoutError:
            raise TimeoutError(self._timeout_message(task_id, timeout)) from None

    def _timeout_message(self, task_id: str, timeout: float | None) -> str:
        record = self.store.get(task_id)
        if record is None:
            where = "no row exists for it"
        else:
            row = serialize(record)
            where = (
                f"it is still {row['status']!r} (label {row['label']!r}, progress "
                f"{row['progress']!r})"
            )
            if task_id in self.manager.held:
                where += ", held by the fake task manager: call taskbed.manager.release()"
        return (
            f"taskbed.wait({task_id!r}, timeout={timeout!r}): the task did not end within "
            f"{timeout!r} s of virtual time; {where}. Wait longer, or look at what the task "
            "awaits (see docs/guides/troubleshooting.md#wait-timeout)"
        )

    def row(self, task_id: str) -> dict[str, Any]:
        """The task's serialized row as it is now."""
        if (wrong := coroutine_instead_of_id(task_id, "taskbed.row()")) is not None:
            raise wrong
        record = self.store.get(task_id)
        if record is None:
            raise LookupError(f"no task with id {task_id!r}")
        return serialize(record)
