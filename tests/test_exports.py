"""The public surface is pinned: a change to it is a deliberate change to this list."""

import taskbed
import taskbed_harness


def test_all_names_exist_and_are_sorted_stably() -> None:
    for name in taskbed.__all__:
        assert hasattr(taskbed, name), name
    assert len(set(taskbed.__all__)) == len(taskbed.__all__)


def test_pinned_public_names() -> None:
    pinned = {"Runtime", "SQLiteStore", "MemoryStore", "ui", "TaskStatus", "TRANSITIONS"}
    pinned |= {"ModuleSDK", "current_sdk", "current_sdk_var", "I18n", "Media", "Effects", "Work"}
    assert pinned <= set(taskbed.__all__)


def test_private_modules_are_not_exported() -> None:
    assert not [n for n in taskbed.__all__ if n.startswith("_")]


def test_harness_exports_exist() -> None:
    for name in taskbed_harness.__all__:
        assert hasattr(taskbed_harness, name), name
    pinned = {"Harness", "VirtualClock", "RecordedProcessRunner", "Implementation", "run_suite"}
    pinned |= {"Emitted", "action", "install_democrai_standin", "uninstall_democrai_standin"}
    assert pinned <= set(taskbed_harness.__all__)
