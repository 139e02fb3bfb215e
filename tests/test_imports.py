"""The import graph: no circle inside either package, and the harness uses public names only.

Imports under ``if TYPE_CHECKING:`` count too: a circle there still ties two files together
(issue 9 ended the one between ``_runtime.py`` and ``_tasks.py`` with ``_host.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "taskbed": ROOT / "reference" / "taskbed",
    "taskbed_harness": ROOT / "harness" / "taskbed_harness",
}


def graph(package: Path) -> dict[str, set[str]]:
    """module stem -> the stems of the same package it imports (relative imports)."""
    edges: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        targets = edges.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    targets.add(node.module.split(".")[0])
                else:
                    targets.update(alias.name for alias in node.names)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found = []
    for start in sorted(edges):
        if start == "__init__":
            continue
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(edges.get(node, ())):
                if nxt == start:
                    found.append([*path, start])
                elif nxt not in path and nxt != "__init__":
                    stack.append((nxt, [*path, nxt]))
    return found


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_no_import_circle(name: str) -> None:
    assert cycles(graph(PACKAGES[name])) == []


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"], ["b", "a", "b"]]


def test_the_harness_imports_no_private_taskbed_module() -> None:
    private = []
    for path in PACKAGES["taskbed_harness"].glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("taskbed._"):
                private.append(f"{path.name}: from {node.module} import ...")
            if isinstance(node, ast.Import):
                private += [f"{path.name}: import {a.name}" for a in node.names
                            if a.name.startswith("taskbed._")]  # fmt: skip
    assert private == []
