"""Edges a new user meets first: ``taskbed --version``, ``conform --list | head``, the extras.

Issue 12, point 7.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "taskbed_harness._cli"]


def test_version_prints_the_installed_version() -> None:
    done = subprocess.run(
        [*CLI, "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"taskbed {version('taskbed')}\n"


def test_a_closed_pipe_ends_quietly() -> None:
    read, write = os.pipe()
    os.close(read)  # the reader (`head`) is gone before the first line is written
    try:
        done = subprocess.run(
            [*CLI, "conform", "--list"],
            check=False,
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write)
    assert done.returncode == 141
    assert done.stderr == b""


# Run in a fresh interpreter: only the standard library, taskbed itself, and the
# distributions the docs extra lists (with their own requirements) may be imported.
_ONLY_DOCS_EXTRA = textwrap.dedent(
    """
    import sys, importlib.metadata as md, re
    from packaging.requirements import Requirement

    def closure(names):
        seen, todo = set(), list(names)
        while todo:
            name = todo.pop()
            key = re.sub(r"[-_.]+", "-", name).lower()
            if key in seen:
                continue
            seen.add(key)
            for text in md.requires(name) or ():
                req = Requirement(text)
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    todo.append(req.name)
        return seen

    docs = [Requirement(r) for r in md.requires("taskbed")]
    docs = [r for r in docs if r.marker is not None and r.marker.evaluate({"extra": "docs"})]
    allowed_dists = closure(r.name for r in docs)
    allowed = {"taskbed", "taskbed_harness", "docs", "_hooks"} | set(sys.stdlib_module_names)
    for module, dists in md.packages_distributions().items():
        if any(re.sub(r"[-_.]+", "-", d).lower() in allowed_dists for d in dists):
            allowed.add(module)

    class Hide:
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top not in allowed and not top.startswith("_"):
                raise ModuleNotFoundError(f"No module named {top!r} (not in the docs extra)")
            return None

    sys.meta_path.insert(0, Hide())
    sys.path.insert(0, "docs")
    import _hooks
    from taskbed_harness._adapters import reference
    from taskbed_harness._conform import run_suite
    from taskbed_harness._spec import load_rules

    results = run_suite([r for r in load_rules() if r.id == "BG-1"], reference)
    print(results[0].outcome.value)
    """
)


def test_the_docs_extra_is_enough_for_the_sites_hooks() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _ONLY_DOCS_EXTRA],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pass"
