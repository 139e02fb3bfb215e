"""Every rule ID, level and title, read from the spec pages (specs/*.md), the one source.

Each ID must be named by at least one test in tests/ (``@pytest.mark.rule("DEDUP-3")``)
besides the spec's own checks; ``tests/test_rules_covered.py`` fails otherwise, and when a test
names an ID that no page states.
"""

from taskbed_harness._spec import load_rules

RULES: dict[str, tuple[str, str]] = {rule.id: (rule.level, rule.title) for rule in load_rules()}
