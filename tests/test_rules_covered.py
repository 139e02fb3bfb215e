"""Every rule the spec pages state is named by a test, and every named ID exists."""

import re
from pathlib import Path

from rules import RULES

MARK = re.compile(r"""rule\(\s*["']([A-Z]+-\d+)["']""")


def _named() -> set[str]:
    here = Path(__file__).parent
    found: set[str] = set()
    for path in here.rglob("test_*.py"):
        if path.name != Path(__file__).name:
            found.update(MARK.findall(path.read_text()))
    return found


def test_every_rule_has_a_test() -> None:
    missing = sorted(set(RULES) - _named(), key=lambda r: (r.split("-")[0], int(r.split("-")[1])))
    assert not missing, f"rules without a test naming them: {missing}"


def test_every_named_rule_exists() -> None:
    unknown = sorted(_named() - set(RULES))
    assert not unknown, f"tests name rules that no spec page states: {unknown}"
