"""The taskbed pytest plugin (entry point ``pytest11: taskbed``).

A lifecycle adapter around ``Harness``: all behaviour lives in objects that also work without
pytest. Imports stay light: this module is loaded in every pytest session of an environment
that has ``taskbed[harness]``, so the harness itself is imported only when a test asks for it.

What it adds:

* fixtures ``taskbed`` (the whole ``Harness``), and one per part: ``taskbed_clock``,
  ``taskbed_client``, ``taskbed_emitted``, ``taskbed_manager``, ``taskbed_processes``,
  ``taskbed_sdk``;
* the marker ``@pytest.mark.taskbed(**options)`` (keyword-only; the closest marker wins per
  option; an unknown option fails the test);
* the options ``--taskbed-record=MODE`` (cassette record mode, overrides markers);
* a fresh virtual-time event loop for every test that uses a taskbed fixture, through
  pytest-asyncio's ``pytest_asyncio_loop_factories`` hook; other tests keep the default loop;
* teardown checks (unused recorded commands) whose messages link to the docs;
* where the platform (``democrai``) is not installed, a stand-in for the platform modules that
  module code imports (``from democrai.sdk.decorators import action``), switched off with the
  ini option ``taskbed_democrai_standin = false``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from taskbed import ModuleSDK

    from ._client import ClientView
    from ._clock import VirtualClock
    from ._emitted import Emitted
    from ._fake import FakeTaskManager
    from ._harness import Harness
    from ._processes import RecordedProcessRunner

FIXTURE = "taskbed"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("taskbed", "taskbed harness")
    group.addoption(
        "--taskbed-record",
        dest="taskbed_record",
        default=None,
        metavar="MODE",
        help="record mode for subprocess cassettes: none (replay only, the default), once, "
        "new, all. Overrides @pytest.mark.taskbed(record=...).",
    )
    group.addoption(
        "--taskbed-watchdog",
        dest="taskbed_watchdog",
        default=None,
        type=float,
        metavar="SECONDS",
        help="real seconds each run of a taskbed test's event loop may take before the test "
        "fails with WatchdogError, naming what is stuck (default 60; 0 turns it off). "
        "Overrides @pytest.mark.taskbed(watchdog=...).",
    )
    parser.addini(
        "taskbed_democrai_standin",
        "make `import democrai...` work with taskbed's stand-in where the platform is not "
        "installed (default true; a real democrai always wins)",
        type="bool",
        default=True,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "taskbed(**options): options of the taskbed harness for this test, e.g. "
        "@pytest.mark.taskbed(user=7, organization=10, hold=True, record='once'); "
        "see taskbed_harness.HarnessOptions",
    )
    if config.getini("taskbed_democrai_standin"):
        from ._standin import install_democrai_standin

        if install_democrai_standin() is not None:
            config.add_cleanup(_remove_standin)
    mode = config.getoption("taskbed_record")
    if mode is None:
        return
    from ._processes import RECORD_MODES

    if mode not in RECORD_MODES:
        raise pytest.UsageError(
            f"--taskbed-record={mode!r} is not a record mode; use one of "
            f"{', '.join(RECORD_MODES)} (e.g. --taskbed-record=once)"
        )


def _remove_standin() -> None:
    from ._standin import uninstall_democrai_standin

    uninstall_democrai_standin()


@pytest.hookimpl(optionalhook=True, wrapper=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Generator[None, Any, Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None]:
    """Tests that use a taskbed fixture run on a fresh virtual-time loop; others as before.

    A wrapper around every other implementation of the hook (a project's conftest, another
    plugin), so that whatever they answer, a taskbed test gets its virtual loop, and a test
    that does not use taskbed gets exactly what they answered. With no other answer,
    pytest-asyncio still needs one from us (it asks every async test once any implementation
    exists): a factory that asks the active event loop policy, which is what it would have
    done with no hook at all, so an ``event_loop_policy`` override keeps working.
    """
    others = yield
    if FIXTURE not in getattr(item, "fixturenames", ()):
        return others if others is not None else {"asyncio": _policy_loop}
    from ._clock import DEFAULT_START, VirtualClock, new_virtual_loop

    def closest(option: str, default: Any) -> Any:
        markers = item.iter_markers("taskbed")  # closest first
        return next((m.kwargs[option] for m in markers if option in m.kwargs), default)

    start = closest("start", None)
    start = DEFAULT_START if start is None else start
    virtual_monotonic = closest("virtual_monotonic", None) is not False  # on unless turned off

    def factory() -> asyncio.AbstractEventLoop:
        return new_virtual_loop(VirtualClock(start, virtual_monotonic=virtual_monotonic))

    # A test that picks factories by name (@pytest.mark.asyncio(loop_factories=[...])) gets
    # the virtual loop under each of those names, instead of a skip for a missing name.
    marker = item.get_closest_marker("asyncio")
    names = marker.kwargs.get("loop_factories") if marker is not None else None
    if isinstance(names, list | tuple) and names and all(isinstance(n, str) for n in names):
        return dict.fromkeys(names, factory)
    return {"taskbed": factory}


def _policy_loop() -> asyncio.AbstractEventLoop:
    """A new loop from the event loop policy in force (pytest-asyncio's default behaviour)."""
    return asyncio.get_event_loop_policy().new_event_loop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A taskbed test fails for every check or SDK call it never awaited.

    Python only warns about a coroutine that never ran, when it is collected (and the warning
    points wherever the collector happened to run), so a forgotten ``await`` would pass.
    """
    if FIXTURE not in getattr(item, "fixturenames", ()):
        return (yield)
    from ._awaits import NeverAwaitedError, collect_forgotten, forgotten_message

    with collect_forgotten() as forgotten:
        try:
            yield
        except BaseException as exc:
            if forgotten:  # often the cause: a wait on what should have been a task id
                exc.add_note(forgotten_message(forgotten))
            raise
    if forgotten:
        raise NeverAwaitedError(forgotten_message(forgotten))
    harness = getattr(item, "funcargs", {}).get(FIXTURE)
    if harness is not None:
        harness.check_awaited()


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Ctrl-C: teardown must not wait for stuck threads or processes (the run ends now)."""
    from ._watchdog import interrupted

    interrupted()


def _cassette_path(node: pytest.Item) -> Path:
    path = Path(str(node.path))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", node.name).strip("_")
    return path.parent / "cassettes" / path.stem / f"{name}.json"


def _options(node: pytest.Item) -> Any:
    from ._harness import HarnessOptions

    layers: list[dict[str, Any]] = []
    for marker in reversed(list(node.iter_markers("taskbed"))):  # farthest first
        if marker.args:
            raise TypeError(
                "@pytest.mark.taskbed takes keyword options only, e.g. "
                f"@pytest.mark.taskbed(hold=True); got positional {marker.args!r}"
            )
        layers.append(dict(marker.kwargs))
    defaults: dict[str, Any] = {"cassette": _cassette_path(node)}
    cli_mode = node.config.getoption("taskbed_record")
    overrides: dict[str, Any] = {"record": cli_mode} if cli_mode is not None else {}
    cli_watchdog = node.config.getoption("taskbed_watchdog")
    if cli_watchdog is not None:
        overrides["watchdog"] = cli_watchdog
    return HarnessOptions.merged([defaults, *layers, overrides])


@pytest_asyncio.fixture
async def taskbed(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """The whole harness: the reference runtime on a virtual clock, with fakes.

    Attributes and methods (see ``taskbed_harness.Harness``):
        clock: virtual time (``await taskbed.clock.advance(60)``).
        manager: the fake task manager (``hold()``, ``release()``, ``fail_next()``,
            ``answer()``, ``cancel()``, ``submissions``).
        processes: recorded subprocesses (``register(argv, stdout=...)``, cassettes).
        request(user=, organization=, module=) -> async context manager yielding the SDK.
        call_action(action_or_name, ctx, *, user=, organization=, module=) -> the response of
            ``action(ctx, session, module_sdk)`` run as one request.
        emitted: the module's effects and UI messages (``expect``, ``toasts``, ``ui_messages``).
        add_media(path, payload), add_translations(language, texts).
        sdk(...), client(user=, organization=), wait(task_id), row(task_id), session(...).

    Teardown: the runtime stops (running tasks end ``interrupted``), then every recorded or
    registered command must have been used (opt out per test with
    ``@pytest.mark.taskbed(assert_all_used=False)``, or per command with ``optional=True``).
    """
    from ._harness import Harness

    harness = Harness(_options(request.node))
    harness._from_pytest = True
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
    harness.check()


@pytest.fixture
def taskbed_clock(taskbed: Harness) -> VirtualClock:
    """The virtual clock of this test (``advance``, ``autojump_disabled()``, ``now()``)."""
    return taskbed.clock


@pytest.fixture
def taskbed_client(taskbed: Harness) -> ClientView:
    """A connected client of the default user (``expect``, ``respond``, ``cancel``, ...)."""
    return taskbed.client()


@pytest.fixture
def taskbed_manager(taskbed: Harness) -> FakeTaskManager:
    """The fake task manager: hold, release, fail, answer, cancel, submissions."""
    return taskbed.manager


@pytest.fixture
def taskbed_processes(taskbed: Harness) -> RecordedProcessRunner:
    """The recorded subprocess runner (``register(...)``, cassettes, ``calls``)."""
    return taskbed.processes


@pytest.fixture
def taskbed_sdk(taskbed: Harness) -> ModuleSDK:
    """A module SDK of the default user and module, outside any request."""
    return taskbed.sdk()


@pytest.fixture
def taskbed_emitted(taskbed: Harness) -> Emitted:
    """What the module emitted: its actions' effects and its UI messages (``expect``)."""
    return taskbed.emitted
