"""Module code as the platform runs it: actions, the SDK's namespaces, what a module emitted.

In-process tests use the harness directly; the stand-in and its switch are tested under
pytester, the way a module author's test session meets them.
"""

# The platform's modules are imported inside the tests, once the stand-in is in place.
# ruff: noqa: PLC0415

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import taskbed
from taskbed import MediaNotFoundError, ModuleSDK, current_request, current_sdk, ui
from taskbed_harness import (
    Harness,
    StandinFinder,
    action,
    install_democrai_standin,
    new_virtual_loop,
    platform_installed,
    resolve_action,
    uninstall_democrai_standin,
)

pytest_plugins = ["pytester"]


# ---------------------------------------------------------------- calling an action


@pytest.mark.asyncio
async def test_call_action_runs_one_request_and_returns_the_response(taskbed: Harness) -> None:
    seen: dict[str, Any] = {}

    async def show(ctx: dict[str, Any], session: dict[str, Any], module_sdk: ModuleSDK) -> Any:
        seen.update(ctx=ctx, session=session, sdk=module_sdk, current=current_sdk())
        seen["request"] = taskbed_request()
        return module_sdk.effects.respond(module_sdk.effects.notify("toast", {"message": "hi"}))

    response = await taskbed.call_action(show, {"row": 3}, user=8, organization=11, module="shop")

    assert response == {
        "effects": [
            {
                "type": "notify",
                "channel": "toast",
                "payload": {"message": "hi"},
                "user_id": None,
                "organization_id": None,
            }
        ]
    }
    assert seen["ctx"] == {"row": 3}
    assert seen["session"]["user"] == {"id": 8, "organization_id": 11}
    assert seen["sdk"] is seen["current"]
    assert seen["sdk"].module_name == "shop"
    assert seen["request"] == ("request-1", 8, 11, "shop")
    assert current_sdk() is None  # the request is over
    assert taskbed.emitted.toasts == [{"message": "hi"}]


def taskbed_request() -> tuple[Any, ...]:
    ctx = current_request()
    assert ctx is not None
    return (ctx.request_id, ctx.user_id, ctx.organization_id, ctx.module)


@pytest.mark.asyncio
async def test_the_action_decorator_passes_parameters_by_name(taskbed: Harness) -> None:
    @action("surface_test.greet")
    async def greet(ctx: dict[str, Any], module_sdk: Any, name: str, punct: str = "!") -> str:
        assert module_sdk is current_sdk()
        return f"hello {name}{punct} ({len(ctx)} keys)"

    assert await taskbed.call_action(greet, {"name": "ada"}) == "hello ada! (1 keys)"
    assert await taskbed.call_action("surface_test.greet", {"name": "bo"}) == "hello bo! (1 keys)"
    assert greet.action_name == "surface_test.greet"  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_an_unknown_action_name_says_what_is_registered(taskbed: Harness) -> None:
    with pytest.raises(LookupError, match=r"^no action is registered under 'nope' \(registered: "):
        await taskbed.call_action("nope")


@pytest.mark.asyncio
async def test_a_called_action_instead_of_the_function_is_refused(taskbed: Harness) -> None:
    async def act(ctx: Any, session: Any, sdk: Any) -> None:
        return None

    coro = act({}, {}, None)
    with pytest.raises(TypeError, match=r"call_action\(my_action, ctx\) and not"):
        await taskbed.call_action(coro)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^an action's ctx is a dict, got str"):
        await taskbed.call_action(act, "row=3")  # type: ignore[arg-type]


def test_action_needs_the_factory_form_and_an_async_function() -> None:
    with pytest.raises(TypeError, match=r"^action is a decorator factory: write @action\(\)"):

        @action  # type: ignore[arg-type]
        async def bare(ctx: Any) -> None: ...

    with pytest.raises(TypeError, match=r"^@action needs an async function"):

        @action()
        def sync(ctx: Any) -> None: ...  # type: ignore[type-var]


def test_resolve_action_by_name_and_module_prefix() -> None:
    namespace: dict[str, Any] = {"__name__": "modules.shop.actions", "action": action}
    # a module under modules.<name>. as the platform lays them out
    exec("@action()\nasync def checkout(ctx, session, sdk):\n    return 'ok'\n", namespace)
    assert resolve_action("shop.checkout") is namespace["checkout"]


# ---------------------------------------------------------------- the namespaces


@pytest.mark.taskbed(
    translations={"en": {"shop.title": "Shop: {name}"}, "it": {"shop.title": "Negozio: {name}"}}
)
@pytest.mark.asyncio
async def test_i18n_t_has_the_platform_signature(taskbed: Harness) -> None:
    async with taskbed.request() as sdk:
        t = sdk.i18n.t
        assert t("shop.title", {"name": "Ada"}) == "Shop: Ada"
        assert t("shop.title", {"name": "Ada"}, lang="it") == "Negozio: Ada"
        assert t("shop.title", context={"name": "Ada"}, lang="de") == "Shop: Ada"  # en fallback
        assert t("shop.missing") == "shop.missing"  # the key itself
        assert t("shop.title") == "Shop: {name}"  # no context: not formatted
        assert t("shop.title", {"other": 1}) == "Shop: {name}"  # as the platform: kept
    sdk.session["user_language"] = "it"
    assert sdk.i18n.t("shop.title", {"name": "Bo"}) == "Negozio: Bo"
    assert sdk.i18n.get_user_language() == "it"


@pytest.mark.asyncio
@pytest.mark.taskbed(language="it", translations={"it": {"k": "ciao"}, "en": {"k": "hi"}})
async def test_the_language_option_and_a_session_of_ones_own(taskbed: Harness) -> None:
    async with taskbed.request() as sdk:
        assert sdk.i18n.t("k") == "ciao"
    english = {**taskbed.session(user=3), "user_language": "en"}
    async with taskbed.request(session=english) as sdk:
        assert sdk.session is english
        assert sdk.i18n.t("k") == "hi"
    taskbed.add_translations("fr", {"k": "salut"})
    assert (
        await taskbed.call_action(
            lambda ctx, session, module_sdk: _t(module_sdk, "k"), session={"user_language": "fr"}
        )
        == "salut"
    )


async def _t(sdk: ModuleSDK, key: str) -> str:
    return sdk.i18n.t(key)


@pytest.mark.asyncio
async def test_media_view_reads_registered_blobs_and_names_an_unknown_ref(
    taskbed: Harness,
) -> None:
    taskbed.add_media("uploads/m.json", b'{"a": 1}')
    async with taskbed.request() as sdk:
        assert sdk.media.view("uploads/m.json") == b'{"a": 1}'
        assert sdk.media.add("uploads/n.bin", b"\x00") == "uploads/n.bin"
        with pytest.raises(MediaNotFoundError, match=r"^no media is stored at 'uploads/x'") as err:
            sdk.media.view("uploads/x")
        assert isinstance(err.value, FileNotFoundError)
        assert "taskbed.add_media('uploads/x', b'...')" in str(err.value)
        with pytest.raises(ValueError, match=r"^path is required"):
            sdk.media.view("  ")
        sdk.media.delete("uploads/n.bin")
    async with taskbed.request(user=99) as other:  # every SDK of the runtime sees the blobs
        assert other.media.view("uploads/m.json") == b'{"a": 1}'
        with pytest.raises(FileNotFoundError):
            other.media.view("uploads/n.bin")


@pytest.mark.asyncio
async def test_effects_have_the_platform_shapes(taskbed: Harness) -> None:
    async with taskbed.request() as sdk:
        fx = sdk.effects
        payload = sdk.ui.Builder.build_state_update_payload({"/p": 1}, scope="page")
        card = sdk.ui.BackgroundTask("card", task_id="t-1")
        assert fx.respond(fx.ui_messages([payload]), {"type": "x", "c": card}, "dropped") == {
            "effects": [
                {"type": "ui_messages", "messages": [payload]},
                {"type": "x", "c": card.to_dict()},
            ]
        }
        assert fx.navigate("/shop") == {"type": "navigate", "path": "/shop", "render": True}
        assert fx.pipeline("t", "L")["module"] == "mod"
        assert fx.open_url("https://x", download=True)["op"] == "open_url"
        assert fx.ui_state_patch("/rows", "append", 1) == {
            "statePatch": {"scope": "page", "path": "/rows", "action": "append", "value": 1}
        }


@pytest.mark.asyncio
async def test_the_module_sdk_names_a_missing_namespace_and_how_to_add_it(
    taskbed: Harness,
) -> None:
    async with taskbed.request() as sdk:
        with pytest.raises(AttributeError, match=r"^module_sdk has no namespace 'database' here"):
            _ = sdk.database
        assert "namespaces={'database': factory}" in _error(lambda: sdk.database)


def _error(get: Any) -> str:
    try:
        get()
    except AttributeError as exc:
        return str(exc)
    raise AssertionError("no AttributeError")


class Database:
    """A namespace taking the SDK, as the platform's classes do."""

    def __init__(self, sdk: ModuleSDK) -> None:
        self.module = sdk.module_name


class LoudI18n(taskbed.I18n):
    def t(self, key: str, context: dict[str, Any] | None = None, lang: str | None = None) -> str:
        return key.upper()


@pytest.mark.taskbed(namespaces={"database": Database, "i18n": LoudI18n})
@pytest.mark.asyncio
async def test_namespaces_are_added_or_replaced_on_every_sdk(taskbed: Harness) -> None:
    async with taskbed.request(module="shop") as sdk:
        assert sdk.database.module == "shop"
        assert sdk.i18n.t("a.b") == "A.B"

        async def job() -> tuple[str, str]:
            inner = current_sdk()
            assert inner is not None
            return inner.database.module, inner.i18n.t("x")

        task_id = await sdk.tasks.run_background(job(), "Job")
    assert (await taskbed.wait(task_id))["result"] == ["shop", "X"]
    assert taskbed.sdk().database.module == "mod"  # outside a request too


def test_a_namespace_is_built_once_per_sdk_when_first_read() -> None:
    built: list[ModuleSDK] = []

    def counted(sdk: ModuleSDK) -> object:
        built.append(sdk)
        return object()

    rt = taskbed.Runtime(namespaces={"db": counted})
    sdk = rt.sdk(session={"user": {"id": 1}}, module="m")
    assert built == []  # nothing built for an SDK that never reads it
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(sdk.db)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == [sdk]
    assert all(r is results[0] for r in results)
    assert rt.sdk(session={}, module="m").db is not results[0]  # one per SDK


def test_namespace_names_and_factories_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^'tasks' is part of the SDK itself"):
        taskbed.Runtime(namespaces={"tasks": Database})
    with pytest.raises(TypeError, match=r"^namespace 'db' needs a factory called with the SDK"):
        taskbed.Runtime(namespaces={"db": object()})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"^a namespace name is a public identifier"):
        taskbed.Runtime(namespaces={"_db": Database})


# ---------------------------------------------------------------- current_sdk everywhere


@pytest.mark.asyncio
async def test_background_tasks_and_threads_see_the_submitting_sdk(taskbed: Harness) -> None:
    seen: dict[str, Any] = {}

    def in_thread() -> Any:
        seen["thread"] = threading.current_thread().name
        return current_sdk()

    async with taskbed.request() as sdk:

        async def job() -> None:
            seen["task"] = current_sdk()
            seen["task_thread"] = await sdk.tasks.run_blocking(in_thread)

        task_id = await sdk.tasks.run_background(job(), "Job")
        seen["blocking"] = await sdk.tasks.run_blocking(in_thread)
    await taskbed.wait(task_id)
    assert seen["task"] is sdk
    assert seen["task_thread"] is sdk
    assert seen["blocking"] is sdk
    assert seen["thread"].startswith("taskbed-worker")


@pytest.mark.asyncio
async def test_an_sdk_outside_any_request_is_current_in_what_it_starts(taskbed: Harness) -> None:
    sdk = taskbed.sdk()
    assert current_sdk() is None

    async def job() -> bool:
        return current_sdk() is sdk

    task_id = await sdk.tasks.run_background(job(), "Job")
    assert current_sdk() is None  # set for the submission only
    assert (await taskbed.wait(task_id))["result"] is True
    assert await sdk.tasks.run_blocking(lambda: current_sdk() is sdk) is True


# ---------------------------------------------------------------- what a module emitted


@pytest.mark.asyncio
async def test_emitted_effects_and_live_messages_in_order(taskbed: Harness) -> None:
    async def act(ctx: Any, session: Any, module_sdk: ModuleSDK) -> Any:
        async def job() -> None:
            await asyncio.sleep(30)
            await module_sdk.effects.publish_property_update("s-1", "bar", "value", 50)
            await module_sdk.effects.publish_collection_remove("s-1", "list", "items", 3)

        await module_sdk.tasks.run_background(job(), "Job")
        fx = module_sdk.effects
        return fx.respond(
            fx.ui_messages([ui.Builder.build_state_update_payload({"/a": 1})]),
            fx.notify("toast", {"level": "success", "message": "Started"}),
        )

    await taskbed.call_action(act)
    emitted = taskbed.emitted
    await emitted.expect("ui_messages")
    await emitted.expect("notify", channel="toast")
    with pytest.raises(AssertionError, match="nothing more was emitted"):
        await emitted.expect("propertyUpdate")
    body = await emitted.expect("propertyUpdate", within=60, componentId="bar", value=50)
    assert body["propertyName"] == "value"
    removed = await emitted.expect("propertyUpdate", action="remove", value=3)
    emitted.expect_nothing()
    assert emitted.items[-1].stream_id == "s-1"
    assert emitted.ui_messages == [
        {"stateUpdate": {"scope": "page", "values": {"/a": 1}}},
        {"propertyUpdate": body},
        {"propertyUpdate": removed},
    ]
    assert emitted.toasts == [{"level": "success", "message": "Started"}]


@pytest.mark.asyncio
async def test_a_wrong_emission_shows_the_differing_fields(taskbed: Harness) -> None:
    async def act(ctx: Any, session: Any, module_sdk: ModuleSDK) -> Any:
        return module_sdk.effects.respond(module_sdk.effects.notify("toast", {"m": 1}))

    await taskbed.call_action(act)
    with pytest.raises(AssertionError, match=r"(?s)differing fields:\n    channel: expected 'x'"):
        await taskbed.emitted.expect("notify", channel="x")
    with pytest.raises(AssertionError, match="expected nothing more to be emitted"):
        taskbed.emitted.expect_nothing()


# ---------------------------------------------------------------- the stand-in


@pytest.fixture
def no_standin() -> Iterator[None]:
    """This session's stand-in set aside for one test, and put back after it."""
    had = any(isinstance(f, StandinFinder) for f in sys.meta_path)
    uninstall_democrai_standin()
    yield
    uninstall_democrai_standin()
    if had:
        install_democrai_standin()


def test_the_standin_provides_the_platform_imports(no_standin: None) -> None:
    if importlib_find("democrai"):
        pytest.skip("the real platform is installed here; the stand-in stays out of its way")
    finder = install_democrai_standin()
    assert finder is not None
    assert sys.meta_path[-1] is finder
    from democrai.sdk import current_sdk as platform_current  # type: ignore[import-not-found]
    from democrai.sdk.decorators import action as platform_action  # type: ignore[import-not-found]
    from democrai.sdk.ui import Builder  # type: ignore[import-not-found]
    from democrai.sdk.ui import ui as components

    assert platform_action is action
    assert platform_current is taskbed.current_sdk_var
    assert Builder is taskbed.ui.Builder
    assert components.Text("t", "Replace?").to_dict()["component"] == {
        "Text": {"text": {"literalString": "Replace?"}}
    }
    assert sys.modules["democrai"].__taskbed_standin__ is True
    with pytest.raises(ImportError, match=r"^taskbed's stand-in for democrai\.sdk\.decorators "):
        from democrai.sdk.decorators import validate  # type: ignore[import-not-found] # noqa: F401
    assert not platform_installed()
    assert install_democrai_standin() is finder  # once
    uninstall_democrai_standin()
    assert "democrai" not in sys.modules
    with pytest.raises(ImportError):
        import democrai  # noqa: F401


def importlib_find(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def test_active_sdk_outside_a_request_says_why(no_standin: None) -> None:
    if install_democrai_standin() is None:
        pytest.skip("the real platform is installed here")
    from democrai.sdk import active_sdk  # type: ignore[import-not-found]

    with pytest.raises(RuntimeError, match=r"^active_sdk is used outside any request"):
        _ = active_sdk.tasks

    async def inside() -> str:
        async with Harness() as tb, tb.request(module="shop"):
            return str(active_sdk.module_name)

    loop = new_virtual_loop()
    try:
        assert loop.run_until_complete(inside()) == "shop"
    finally:
        loop.close()


MODULE_FILE = """
from democrai.sdk.decorators import action


@action("hello")
async def hello(ctx: dict, session: dict, module_sdk):
    return module_sdk.effects.respond(
        module_sdk.effects.notify("toast", {"message": module_sdk.i18n.t("demo.hi")})
    )
"""

TEST_FILE = """
import pytest
import democrai
from my_module import hello

@pytest.mark.asyncio
@pytest.mark.taskbed(translations={"en": {"demo.hi": "Hi!"}})
@pytest.mark.asyncio
async def test_hello(taskbed):
    await taskbed.call_action("hello")
    assert taskbed.emitted.toasts == [{"message": "Hi!"}]
    print("STANDIN", getattr(democrai, "__taskbed_standin__", False))
"""


def _session(pytester: pytest.Pytester, ini_extra: str = "") -> pytest.RunResult:
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n" + ini_extra
    )
    pytester.makepyfile(my_module=MODULE_FILE, test_hello=TEST_FILE)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")


def test_a_module_file_imports_the_platform_unchanged(pytester: pytest.Pytester) -> None:
    result = _session(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*STANDIN True*"])


def test_the_standin_can_be_switched_off(pytester: pytest.Pytester) -> None:
    result = _session(pytester, "taskbed_democrai_standin = false\n")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*No module named 'democrai'*"])


def test_a_real_platform_wins_over_the_standin(pytester: pytest.Pytester) -> None:
    # A package named democrai on sys.path stands for the installed platform.
    pkg = pytester.mkpydir("democrai")
    (pkg / "sdk").mkdir()
    (pkg / "sdk" / "__init__.py").write_text("")
    (pkg / "sdk" / "decorators.py").write_text(
        "from taskbed_harness import action  # the test's platform: same behaviour\n"
    )
    result = _session(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*STANDIN False*"])
