"""The executable spec, run as our tests: every rule against the reference and the fake.

Test ids name the rule and the implementation (``test_rule[reference-DEDUP-3]``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from taskbed_harness._adapters import Implementation, fake, reference
from taskbed_harness._conform import Outcome, run_rule_sync
from taskbed_harness._spec import Rule, load_rules, rules_index, spec_dir
from taskbed_harness._ws_adapter import reference_ws

RULES = load_rules()
SPECS = Path(__file__).parents[1] / "specs"


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
@pytest.mark.parametrize(
    "factory", [reference, fake, reference_ws], ids=["reference", "fake", "reference-ws"]
)
def test_rule(factory: Callable[[], Implementation], rule: Rule) -> None:
    impl = factory()
    result = run_rule_sync(rule, factory)
    if rule.requires - impl.capabilities:  # the socket rules, for the in-process adapters
        assert result.outcome is Outcome.SKIPPED, result
    elif rule.id in impl.deviations:  # declared, with its reason, by the adapter
        assert result.outcome in (Outcome.PASS, Outcome.DEVIATION), result
    else:
        assert result.outcome is Outcome.PASS, f"{rule.id} ({rule.level}): {result.reason}"


def test_specs_are_read_from_the_repository() -> None:
    assert spec_dir().resolve() == SPECS.resolve()


def test_every_rule_has_an_executable_check() -> None:
    unchecked = [r.id for r in RULES if not r.blocks]
    assert not unchecked, f"rules without a python check: {unchecked}"


def test_rules_index_is_generated_from_the_pages() -> None:
    committed = SPECS / "rules.json"
    assert committed.exists(), "run: taskbed conform --index specs/rules.json"
    assert json.loads(committed.read_text()) == json.loads(rules_index(RULES)), (
        "specs/rules.json is stale; regenerate it with: taskbed conform --index specs/rules.json"
    )
