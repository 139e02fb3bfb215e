"""Adapter protocol v2: its hooks are what the suite uses, v1 adapters still work, and a wrong
adapter gets a ProtocolError that says what to fix.

The central test judges the whole suite through an adapter that differs from the reference
the way the released platform does (rows carry ``taskId`` only, no ``wait``, a sandbox
variable it does not have), and checks that the one real deviation, QUERY-6, fails one rule.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest

from taskbed_harness import (
    Adapter,
    Button,
    LegacyAdapter,
    ProtocolError,
    ReferenceImplementation,
    Surface,
    Text,
    as_adapter,
)
from taskbed_harness._adapters import fake
from taskbed_harness._conform import Outcome, run_rule_sync, run_suite
from taskbed_harness._report import Column, root_causes, to_matrix, to_table
from taskbed_harness._spec import load_rules
from test_teeth import InterruptedTaskSilent

RULES = load_rules()
BY_ID = {rule.id: rule for rule in RULES}


def _without_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "id"} for row in rows]


class _TaskIdOnly:
    """A module SDK's ``tasks`` whose rows carry ``taskId`` and no ``id``, as the platform's."""

    def __init__(self, tasks: Any) -> None:
        self._tasks = tasks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tasks, name)

    def get_tasks_by_key(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return _without_id(self._tasks.get_tasks_by_key(*args, **kwargs))

    def get_tasks_by_key_prefix(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return _without_id(self._tasks.get_tasks_by_key_prefix(*args, **kwargs))

    def list_user_tasks(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return _without_id(self._tasks.list_user_tasks(*args, **kwargs))


class _SDK:
    def __init__(self, sdk: Any) -> None:
        self.tasks = _TaskIdOnly(sdk.tasks)
        self.ui = sdk.ui


class PlatformLike(ReferenceImplementation):
    """The reference, seen as the platform is: taskId-only rows, no wait(), no subject kind
    variable, a token per connection; and it records what the suite called."""

    name = "platform-like"
    sandbox_names: ClassVar[dict[str, str | None]] = {
        **ReferenceImplementation.sandbox_names,
        "MODULE_SDK_SUBJECT_KIND": None,  # declared absent
    }
    wait = Adapter.wait  # no wait of its own: the suite polls the observer

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def setup(self, rule: str) -> None:
        self.calls.append(f"setup {rule}")

    async def teardown(self, rule: str) -> None:
        self.calls.append(f"teardown {rule}")

    async def settle(self) -> None:
        self.calls.append("settle")

    def surface(self, surface: Surface) -> Any:
        self.calls.append("surface")
        return super().surface(surface)

    def authenticate(self, user_id: Any, organization_id: Any) -> Any:
        return f"token-{user_id}-{organization_id}"

    def connect(self, user_id: Any, organization_id: Any = None, credentials: Any = None) -> Any:
        assert credentials == f"token-{user_id}-{organization_id}", credentials
        self.calls.append("connect")
        return super().connect(user_id, organization_id)

    @asynccontextmanager
    async def _request(self, **kwargs: Any) -> AsyncIterator[Any]:
        async with super().request(**kwargs) as sdk:
            yield _SDK(sdk)

    def request(self, *, session: dict[str, Any], module: str, request_id: str | None) -> Any:
        return self._request(session=session, module=module, request_id=request_id)

    def sdk(self, *, session: dict[str, Any], module: str) -> Any:
        return _SDK(super().sdk(session=session, module=module))


def test_one_deviation_fails_one_rule() -> None:
    results = run_suite(RULES, PlatformLike)
    failed = {r.rule.id: r.reason for r in results if r.outcome is Outcome.FAIL}
    assert set(failed) == {"QUERY-6"}, failed
    assert "queries.md" in failed["QUERY-6"]


def test_the_hooks_are_called_around_and_inside_a_rule() -> None:
    adapters: list[PlatformLike] = []

    def factory() -> PlatformLike:
        adapters.append(PlatformLike())
        return adapters[-1]

    result = run_rule_sync(BY_ID["CONF-4"], factory)
    assert result.outcome is Outcome.PASS, result.reason
    (adapter,) = adapters
    assert adapter.calls[0] == "setup CONF-4"
    assert adapter.calls[-1] == "teardown CONF-4"
    assert {"settle", "surface", "connect"} <= set(adapter.calls)


def test_the_suite_waits_through_the_observer_when_there_is_no_wait() -> None:
    for rule_id in ("BG-5", "REC-1", "OWN-2"):
        result = run_rule_sync(BY_ID[rule_id], PlatformLike)
        assert result.outcome is Outcome.PASS, (rule_id, result.reason)


class _V1:
    """A protocol v1 adapter: no base class, no protocol attribute, v1 signatures."""

    name = "v1"
    capabilities = frozenset({"registered_tasks"})
    sandbox_names = ReferenceImplementation.sandbox_names
    deviations: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self._impl = ReferenceImplementation()
        self.start = self._impl.start
        self.stop = self._impl.stop
        self.request = self._impl.request
        self.sdk = self._impl.sdk
        self.wait = self._impl.wait
        self.register_task = self._impl.register_task
        self.register_module = self._impl.register_module
        self.restart = self._impl.restart

    def connect(self, user_id: Any, organization_id: Any = None) -> Any:  # no credentials
        return self._impl.connect(user_id, organization_id)


def test_a_v1_adapter_keeps_working() -> None:
    assert isinstance(as_adapter(_V1()), LegacyAdapter)
    for rule_id in ("BG-2", "CONF-1", "OWN-4", "DEDUP-1"):
        result = run_rule_sync(BY_ID[rule_id], _V1)
        assert result.outcome is Outcome.PASS, (rule_id, result.reason)


class _Incomplete(Adapter):
    name = "incomplete"

    async def start(self) -> None: ...


@pytest.mark.parametrize(
    ("adapter", "says"),
    [
        (object(), r"not an adapter: subclass taskbed_harness\.Adapter .*lacks \['name'"),
        (_Incomplete(), r"does not define \['stop', 'request', 'sdk', 'connect'\]"),
        (type("P3", (), {"protocol": 3})(), r"protocol = 3 without subclassing"),
    ],
    ids=["no-adapter", "incomplete", "protocol-3"],
)
def test_a_wrong_adapter_is_a_protocol_error(adapter: object, says: str) -> None:
    with pytest.raises(ProtocolError, match=says) as refused:
        as_adapter(adapter)
    assert "docs/guides/conformance.md" in str(refused.value)


@pytest.mark.parametrize(
    ("attribute", "value", "says"),
    [
        ("capabilities", frozenset({"procesess"}), r"unknown capabilities \['procesess'\]"),
        ("capabilities", ["processes"], r"capabilities must be a frozenset"),
        ("sandbox_names", {"ACME_USER": "ACME_USER"}, r"\['ACME_USER'\] are not reference names"),
        ("task_ids", "uuid", r"task_ids is 'str' or 'int', got 'uuid'"),
    ],
)
def test_wrong_declarations_are_named(attribute: str, value: object, says: str) -> None:
    adapter = ReferenceImplementation()
    setattr(adapter, attribute, value)
    with pytest.raises(ProtocolError, match=says):
        as_adapter(adapter)
    with pytest.raises(ProtocolError, match=says):  # not a verdict on a rule: a wrong adapter
        run_rule_sync(BY_ID["BG-1"], lambda: adapter)


def test_surfaces_are_neutral_until_the_adapter_translates_them() -> None:
    question = Surface(Text("Deploy?"), Button("Yes", value="yes"), Button("No"))
    adapter = ReferenceImplementation()
    shown = adapter.components(question)  # in taskbed.ui's vocabulary, whichever it is
    assert len(shown) == 3
    for text, component in zip(["Deploy?", "Yes", "No"], shown, strict=True):
        assert text in json.dumps(component)
    assert adapter.surface(question).build() == shown
    with pytest.raises(TypeError, match="a Surface holds Text and Button"):
        Surface({"type": "text", "text": "raw"})  # type: ignore[arg-type]


class _HelperBroken(ReferenceImplementation):
    """A task_id hook that fails: every rule reading a row's id fails at that one line."""

    name = "broken task_id"

    def task_id(self, row: Any) -> Any:
        return row["taskIdentifier"]


def test_failures_with_one_root_cause_are_grouped() -> None:
    chosen = [BY_ID[i] for i in ("BG-1", "DEDUP-1", "QUERY-1", "BLOCK-1")]
    results = run_suite(chosen, _HelperBroken)
    (group,) = root_causes(results)
    assert group.rules == ["BG-1", "DEDUP-1", "QUERY-1"]
    assert group.where.startswith("test_protocol.py:")
    assert group.where.endswith(": KeyError")
    table = to_table(results, "broken task_id")
    assert "3 rules failed at the same place (test_protocol.py:" in table
    assert "rules: BG-1, DEDUP-1, QUERY-1" in table


def test_the_matrix_shows_one_row_per_rule_and_a_note_per_root_cause() -> None:
    chosen = [BY_ID[i] for i in ("BG-1", "DEDUP-1", "QUERY-1", "BLOCK-1", "WS-1")]
    broken = run_suite(chosen, _HelperBroken)
    matrix = to_matrix([Column("Reference", "R", run_suite(chosen, ReferenceImplementation)),
                        Column("Broken", "B", broken),
                        Column("Fake", "F", run_suite(chosen, fake))], "specs")  # fmt: skip
    rows = [line for line in matrix.splitlines() if line.startswith("| [")]
    assert [row.split("]")[0][3:] for row in rows] == [r.id for r in chosen]
    assert rows[0].endswith("| MUST | pass | **fail** B1 | pass |")  # BG-1
    assert rows[2].endswith("| MUST | pass | **fail** B1 | pass |")  # QUERY-1, the same cause
    assert rows[3].endswith("| MUST | pass | pass | pass |")  # BLOCK-1
    assert rows[4].endswith("| MUST | skipped | skipped | skipped |")  # WS-1: no socket
    assert "- **B1** fail: 3 rules failed at the same place (test_protocol.py:" in matrix
    assert "(BG-1, DEDUP-1, QUERY-1)" in matrix
    assert matrix.count("- skipped, 1 rule (needs capabilities ['websocket']): WS-1") == 3
    assert "| MUST pass / fail / skipped | 4 / 0 / 1 | 1 / 3 / 1 | 4 / 0 / 1 |" in matrix


def test_failures_that_only_surface_in_the_same_helper_are_not_grouped() -> None:
    # fails BG-8 (hangs in ClientView.expect) and MGR-3 (fails in it)
    results = run_suite([BY_ID["BG-8"], BY_ID["MGR-3"]], InterruptedTaskSilent)
    assert [r.outcome for r in results] == [Outcome.FAIL, Outcome.FAIL]
    assert [r.root.rsplit("/", 1)[-1].split(":")[0] for r in results] == [
        "submission.md", "manager.md",
    ]  # fmt: skip
    assert root_causes(results) == []
