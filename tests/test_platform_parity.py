"""Against the real platform: taskbed's ui and effects give the platform's dicts, and the docs'
module files pass their tests with the platform's own ``@action``.

The platform (``democrai`` 0.0.1b4) needs Python 3.12+, so it lives in another environment.
Point ``TASKBED_DEMOCRAI_PYTHON`` at an interpreter that has ``democrai==0.0.1b4`` and
``taskbed[harness]`` installed to run these; without it they are skipped, and say so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
PYTHON = os.environ.get("TASKBED_DEMOCRAI_PYTHON")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not PYTHON, reason="TASKBED_DEMOCRAI_PYTHON is not set (no interpreter with democrai)"
    ),
]

PARITY = textwrap.dedent(
    """
    from types import SimpleNamespace

    from democrai.sdk.effects import Effects as TheirEffects
    from democrai.sdk.ui import Builder as TheirBuilder, ui as theirs

    import taskbed
    from taskbed import ui as ours

    CASES = [
        ("Text", ("t", "Replace?"), {}),
        ("Text", ("t", {"type": "store", "path": "/x"}), {}),
        ("Button", ("yes", "Yes"), {}),
        ("Button", ("go", "Go"), {"action": "m.go", "params": {"r": 1}, "icon": "play",
                                  "appearance": "outline"}),
        ("BackgroundTask", ("card",), {"task_id": "t1", "on_completed": "m.refresh"}),
        ("Progress", ("p", 40), {}),
        ("Alert", ("a", "Done"), {"variant": "success"}),
        ("Badge", ("b", "new"), {}),
        ("Title", ("h", "M", 2), {}),
        ("Column", ("c", ["a", "b"]), {}),
        ("Row", ("r",), {}),
    ]
    for name, args, kwargs in CASES:
        a = getattr(ours, name)(*args, **kwargs).to_dict()
        b = getattr(theirs, name)(*args, **kwargs).to_dict()
        assert a == b, (name, a, b)

    for method, args, kwargs in [
        ("build_state_update_payload", ({"/m": 1},), {"scope": "page"}),
        ("build_state_patch_payload", ("/r", "append", 1), {}),
        ("build_data_model_update_payload", ("main",), {"data": {"a": 1}}),
        ("build_property_update_payload", ("c", "text", "x"), {}),
        ("build_collection_append_payload", ("c", "rows", 1), {}),
        ("build_collection_replace_payload", ("c", "rows", [1]), {}),
    ]:
        a = getattr(ours.Builder, method)(*args, **kwargs)
        b = getattr(TheirBuilder, method)(*args, **kwargs)
        assert a == b, (method, a, b)

    theirs_b = TheirBuilder().add(theirs.Text("q", "Go?"))
    ours_b = ours.Builder().add(ours.Text("q", "Go?"))
    assert ours_b.build_surface_update_payload() == theirs_b.build_surface_update_payload()

    sdk = SimpleNamespace(module_name="mod", ui=SimpleNamespace(Builder=TheirBuilder))
    mine = taskbed.Effects(SimpleNamespace(module_name="mod"))
    real = TheirEffects(sdk)
    card = ours.BackgroundTask("card", task_id="t1")
    for method, args, kwargs in [
        ("notify", ("toast", {"level": "success"}), {}),
        ("ui_messages", ([{"stateUpdate": {}}],), {}),
        ("navigate", ("/x",), {}),
        ("render", (), {}),
        ("confirm", (), {"path": "/p"}),
        ("pipeline", ("t", "L"), {}),
        ("open_url", ("https://x",), {"download": True}),
        ("ui_property_update", ("c", "v", 1), {}),
        ("ui_state_patch", ("/r", "append", 1), {}),
    ]:
        a = getattr(mine, method)(*args, **kwargs)
        b = getattr(real, method)(*args, **kwargs)
        assert a == b, (method, a, b)
    assert mine.respond(mine.notify("toast", {}), {"type": "x", "c": card}) == real.respond(
        real.notify("toast", {}), {"type": "x", "c": theirs.BackgroundTask("card", task_id="t1")}
    )
    print("parity ok")
    """
)


# The extension point with the platform's own class: its Effects builds the response.
REAL_NAMESPACE = textwrap.dedent(
    """
    import pytest
    from democrai.sdk.effects import Effects

    from manifest_preview import preview_manifest


    @pytest.mark.asyncio
    @pytest.mark.taskbed(namespaces={"effects": Effects})
    async def test_the_platforms_effects_as_the_namespace(taskbed):
        taskbed.add_media("m.json", b'{"a": 1}')
        response = await taskbed.call_action(preview_manifest, {"storage_ref": "m.json"})
        assert type(taskbed.sdk().effects) is Effects
        values = {"/manifest_preview": {"a": 1}}
        assert response == {
            "effects": [
                {"type": "ui_messages",
                 "messages": [{"stateUpdate": {"scope": "page", "values": values}}]}
            ]
        }
    """
)


STOP_AFTER_A_WRITE = textwrap.dedent(
    """
    import asyncio

    from taskbed_harness import Harness, new_virtual_loop


    async def main():
        async with Harness() as tb, tb.request() as sdk:
            first = await sdk.tasks.run_background(asyncio.sleep(60), "Import", task_key="k")
            await tb.wait(first)
            await sdk.tasks.run_background(asyncio.sleep(60), "Import", task_key="k")
        # leaving stops the runtime while the write of the first task's end has just finished


    loop = new_virtual_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    print("stopped")
    """
)


def test_stop_ends_on_the_platforms_python() -> None:
    """On Python 3.12 a gather of tasks that are all done returns without yielding; stop()
    once spun forever there on a just-finished background write (3.11 never showed it)."""
    assert PYTHON is not None
    done = subprocess.run(
        [PYTHON, "-c", STOP_AFTER_A_WRITE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"


def test_ui_and_effects_give_the_platforms_dicts() -> None:
    assert PYTHON is not None
    done = subprocess.run(
        [PYTHON, "-c", PARITY], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("parity ok")


def test_the_module_files_pass_with_the_platforms_own_decorator(tmp_path: Path) -> None:
    assert PYTHON is not None
    for path in EXAMPLES.glob("*.py"):
        if path.name != "my_adapter.py":
            shutil.copy(path, tmp_path / path.name)
    shutil.copytree(EXAMPLES / "cassettes", tmp_path / "cassettes")
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    (tmp_path / "test_is_real.py").write_text(
        "import democrai.sdk.decorators as d\n\n"
        "def test_the_platform_is_real():\n"
        "    assert not getattr(d, '__taskbed_standin__', False)\n"
    )
    (tmp_path / "test_real_namespace.py").write_text(REAL_NAMESPACE)
    done = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
