"""The Quickstart's setup, as a new user copies it, runs without a warning (issue 12, point 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SNIPPETS = Path(__file__).resolve().parents[2] / "docs" / "snippets" / "quickstart"
PAGE = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"


def test_the_quickstart_runs_green_and_quiet(pytester: pytest.Pytester) -> None:
    for name in ("my_module.py", "test_my_module.py", "pyproject.toml"):
        assert f'--8<-- "docs/snippets/quickstart/{name}"' in PAGE.read_text(), name
        (pytester.path / name).write_text((SNIPPETS / name).read_text())
    pytester.syspathinsert()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "default", timeout=300)
    result.assert_outcomes(passed=1)
    output = result.stdout.str() + result.stderr.str()
    assert "Warning" not in output, output
